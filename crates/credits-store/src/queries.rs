//! Small read helpers the GraphQL layer needs beside the store's main queries.

use sea_orm::ColumnTrait;

use crate::Store;
use crate::entity::reviews;
use crate::error::StoreError;
use crate::rows::{ReviewRow, ReviewStatus, UsageRow};
use crate::time::to_us;

/// The opaque cursor naming one usage event's position, for a connection's edges.
pub fn cursor_of(row: &UsageRow) -> String {
    crate::usage::encode_cursor(to_us(row.at), i64::try_from(row.seq).unwrap_or(i64::MAX))
}

/// Whether `cursor` is one [`cursor_of`] made, without a query.
pub fn check_cursor(cursor: &str) -> Result<(), StoreError> {
    crate::usage::decode_cursor(cursor).map(|_| ())
}

impl Store {
    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::Db)
    }

    /// Reviews filed on a wallet, optionally of one status: the newest `limit`, newest
    /// first.
    pub async fn reviews_of_wallet(
        &self,
        wallet_id: &str,
        status: Option<ReviewStatus>,
        limit: usize,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let wanted = sea_orm::Condition::all()
            .add(reviews::Column::WalletId.eq(wallet_id))
            .add_option(status.map(|s| reviews::Column::Status.eq(s.as_str())));
        self.reviews_where(wanted, limit, true).await
    }
}
