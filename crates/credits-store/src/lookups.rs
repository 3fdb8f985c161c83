//! Point look-ups a wallet actor needs before it decides: idempotency keys, createWallet
//! keys, reservations, grant lots. Read-only; it must never be used to decide a write
//! that the fence does not also protect (a look-up may be stale by the time of a commit).

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::entity::{grants, ledger, reservations, usage_events, wallet_creations};
use crate::error::StoreError;
use crate::rows::*;
use crate::wallet::{grant_row, ledger_record, reservation_row, usage_row};
use crate::{MAX_LIST, Store};

impl Store {
    /// The ledger record that recorded `key` on `wallet_id`, if any (SPEC 4).
    pub async fn entry_by_key(
        &self,
        wallet_id: &str,
        key: &str,
    ) -> Result<Option<LedgerRecord>, StoreError> {
        ledger::Entity::find()
            .filter(ledger::Column::WalletId.eq(wallet_id))
            .filter(ledger::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(ledger_record)
            .transpose()
    }

    /// The usage event recorded under `key` on `wallet_id`, if any: a replayed receipt
    /// carries it.
    pub async fn usage_by_key(
        &self,
        wallet_id: &str,
        key: &str,
    ) -> Result<Option<UsageRow>, StoreError> {
        usage_events::Entity::find()
            .filter(usage_events::Column::WalletId.eq(wallet_id))
            .filter(usage_events::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(usage_row)
            .transpose()
    }

    /// The wallet a createWallet call with `key` by `owner_id` created, if any.
    pub async fn wallet_for_creation_key(
        &self,
        owner_id: &str,
        key: &str,
    ) -> Result<Option<KeyedCreation>, StoreError> {
        self.wallet_for_creation_key_in(&self.db, owner_id, key)
            .await
    }

    pub(crate) async fn wallet_for_creation_key_in<C: ConnectionTrait>(
        &self,
        conn: &C,
        owner_id: &str,
        key: &str,
    ) -> Result<Option<KeyedCreation>, StoreError> {
        Ok(
            wallet_creations::Entity::find_by_id((owner_id.to_owned(), key.to_owned()))
                .one(conn)
                .await
                .map_err(StoreError::Db)?
                .map(|row| KeyedCreation {
                    wallet_id: row.wallet_id,
                    request: row.request,
                }),
        )
    }

    /// A reservation by id, with its status and stored settle input and receipt.
    pub async fn reservation(&self, id: &str) -> Result<Option<ReservationRow>, StoreError> {
        reservations::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(reservation_row)
            .transpose()
    }

    /// A grant lot by id.
    pub async fn grant(&self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        grants::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(grant_row)
            .transpose()
    }

    /// The lot bought with `payment_reference`, on any wallet (SPEC 5: unique).
    pub async fn grant_by_payment_reference(
        &self,
        payment_reference: &str,
    ) -> Result<Option<GrantRow>, StoreError> {
        grants::Entity::find()
            .filter(grants::Column::PaymentReference.eq(payment_reference))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(grant_row)
            .transpose()
    }

    /// The lot that compensated a review, on any wallet (SPEC 7: one per review).
    pub async fn grant_by_review(&self, review_id: &str) -> Result<Option<GrantRow>, StoreError> {
        grants::Entity::find()
            .filter(grants::Column::ReviewId.eq(review_id))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(grant_row)
            .transpose()
    }

    /// Every lot of a wallet in grant (ledger) order, at most [`MAX_LIST`].
    pub async fn grants_of_wallet(&self, wallet_id: &str) -> Result<Vec<GrantRow>, StoreError> {
        grants::Entity::find()
            .filter(grants::Column::WalletId.eq(wallet_id))
            .order_by_asc(grants::Column::Seq)
            .order_by_asc(grants::Column::Id)
            .limit(MAX_LIST as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(grant_row)
            .collect()
    }
}
