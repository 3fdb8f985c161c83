//! Plans and bundles. This module owns their rows and the listing order (catalogue plans
//! in file order, then custom plans by id). Of the edit rules it enforces only those a
//! concurrent write could break between a check and the write: a custom plan's upsert never
//! replaces a catalogue plan, nor changes the interval of a plan a wallet is on.

use credits_core::{Credits, EarlierCredits};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::entity::{bundles, plan_credit_history, plans, wallets};
use crate::error::{StoreError, corrupt};
use crate::rows::*;
use crate::time::{from_us, to_us};
use crate::wallet::PlanLock;
use crate::{MAX_LIST, Store};

fn plan_model(p: &PlanRow) -> Result<plans::Model, StoreError> {
    Ok(plans::Model {
        id: p.id.clone(),
        name: p.name.clone(),
        daily_ucr: p.daily_ucr,
        subscription_ucr: p.subscription_ucr,
        interval: p.interval.clone(),
        model_tiers: serde_json::to_string(&p.model_tiers).map_err(corrupt)?,
        custom: p.custom,
        retired: p.retired,
        position: p.position,
        updated_us: to_us(p.updated_at),
    })
}

fn plan_row(m: plans::Model) -> Result<PlanRow, StoreError> {
    Ok(PlanRow {
        model_tiers: serde_json::from_str(&m.model_tiers)
            .map_err(|e| corrupt(format!("tiers of plan {}: {e}", m.id)))?,
        updated_at: from_us(m.updated_us)?,
        id: m.id,
        name: m.name,
        daily_ucr: m.daily_ucr,
        subscription_ucr: m.subscription_ucr,
        interval: m.interval,
        custom: m.custom,
        retired: m.retired,
        position: m.position,
    })
}

fn bundle_model(b: &BundleRow) -> bundles::Model {
    bundles::Model {
        id: b.id.clone(),
        credits_ucr: b.credits_ucr,
        price_cents: b.price_cents,
        currency: b.currency.clone(),
        position: b.position,
    }
}

fn bundle_row(m: bundles::Model) -> BundleRow {
    BundleRow {
        id: m.id,
        credits_ucr: m.credits_ucr,
        price_cents: m.price_cents,
        currency: m.currency,
        position: m.position,
    }
}

async fn upsert_plans<C: ConnectionTrait>(conn: &C, rows: &[PlanRow]) -> Result<(), StoreError> {
    use plans::Column as C;
    let models = rows.iter().map(plan_model).collect::<Result<Vec<_>, _>>()?;
    for chunk in models.chunks(crate::INSERT_CHUNK) {
        plans::Entity::insert_many(crate::entity::active(chunk.iter().cloned()))
            .on_conflict(
                OnConflict::column(C::Id)
                    .update_columns([
                        C::Name,
                        C::DailyUcr,
                        C::SubscriptionUcr,
                        C::Interval,
                        C::ModelTiers,
                        C::Custom,
                        C::Retired,
                        C::Position,
                        C::UpdatedUs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(StoreError::from_db)?;
    }
    Ok(())
}

/// Keeps the credits of each `stored` plan whose credits `rows` change, as they were up to
/// the edit (the new row's `updated_at`, taken after what fell due by then was applied). Two edits at one instant keep the first's credits:
/// the one between applied for no time.
async fn record_credit_edits<C: ConnectionTrait>(
    conn: &C,
    stored: &[plans::Model],
    rows: &[PlanRow],
) -> Result<(), StoreError> {
    let edits: Vec<plan_credit_history::Model> = stored
        .iter()
        .filter_map(|old| {
            let new = rows.iter().find(|r| r.id == old.id)?;
            let changed =
                new.daily_ucr != old.daily_ucr || new.subscription_ucr != old.subscription_ucr;
            changed.then(|| plan_credit_history::Model {
                plan_id: old.id.clone(),
                until_us: to_us(new.updated_at),
                daily_ucr: old.daily_ucr,
                subscription_ucr: old.subscription_ucr,
            })
        })
        .collect();
    for chunk in edits.chunks(crate::INSERT_CHUNK) {
        plan_credit_history::Entity::insert_many(crate::entity::active(chunk.iter().cloned()))
            .on_conflict_do_nothing()
            .exec_without_returning(conn)
            .await
            .map_err(StoreError::from_db)?;
    }
    Ok(())
}

/// The credit history of `plan_ids` from `from_us` on, by plan, oldest first.
pub(crate) async fn credit_history_from<C: ConnectionTrait>(
    conn: &C,
    plan_ids: Vec<&str>,
    from_us: i64,
) -> Result<std::collections::HashMap<String, Vec<EarlierCredits>>, StoreError> {
    let rows = plan_credit_history::Entity::find()
        .filter(plan_credit_history::Column::PlanId.is_in(plan_ids))
        .filter(plan_credit_history::Column::UntilUs.gte(from_us))
        .order_by_asc(plan_credit_history::Column::UntilUs)
        .limit(MAX_HISTORY as u64)
        .all(conn)
        .await
        .map_err(StoreError::Db)?;
    by_plan(rows)
}

fn by_plan(
    rows: Vec<plan_credit_history::Model>,
) -> Result<std::collections::HashMap<String, Vec<EarlierCredits>>, StoreError> {
    let mut history = std::collections::HashMap::<String, Vec<EarlierCredits>>::new();
    for r in rows {
        history.entry(r.plan_id).or_default().push(EarlierCredits {
            until: from_us(r.until_us)?,
            daily: Credits::from_micro(r.daily_ucr),
            subscription: Credits::from_micro(r.subscription_ucr),
        });
    }
    for earlier in history.values_mut() {
        earlier.sort_by_key(|e| e.until);
    }
    Ok(history)
}

/// Most credit edits of plans read at once: the newest are kept (an older reset falls back
/// to the oldest edit kept).
pub const MAX_HISTORY: usize = 100_000;

async fn upsert_bundles<C: ConnectionTrait>(
    conn: &C,
    rows: &[BundleRow],
) -> Result<(), StoreError> {
    use bundles::Column as C;
    for chunk in rows.chunks(crate::INSERT_CHUNK) {
        bundles::Entity::insert_many(crate::entity::active(chunk.iter().map(bundle_model)))
            .on_conflict(
                OnConflict::column(C::Id)
                    .update_columns([C::CreditsUcr, C::PriceCents, C::Currency, C::Position])
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(StoreError::from_db)?;
    }
    Ok(())
}

/// What [`Store::upsert_plan`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanUpsert {
    Written,
    /// The id is a catalogue plan's: nothing written.
    Catalogue,
    /// The interval would change while a wallet is on the plan: nothing written.
    IntervalInUse,
}

/// The stored rows of the plans `ids`, in id order, locked for the write that follows.
async fn locked_plans<C: ConnectionTrait>(
    conn: &C,
    ids: impl IntoIterator<Item = String>,
) -> Result<Vec<plans::Model>, StoreError> {
    let ids: Vec<String> = ids.into_iter().collect();
    let ids = ids.iter().map(String::as_str).collect();
    crate::wallet::lock_plans(conn, ids, PlanLock::Write).await
}

/// The first plan of `plans` that would change the interval of its `stored` row while a
/// wallet is on it (SPEC 5: never).
async fn interval_in_use<C: ConnectionTrait>(
    conn: &C,
    stored: &[plans::Model],
    plans: &[PlanRow],
) -> Result<Option<String>, StoreError> {
    for row in stored {
        let moved = plans
            .iter()
            .any(|p| p.id == row.id && p.interval != row.interval);
        if moved && on_plan(conn, &row.id).await? {
            return Ok(Some(row.id.clone()));
        }
    }
    Ok(None)
}

async fn on_plan<C: ConnectionTrait>(conn: &C, plan_id: &str) -> Result<bool, StoreError> {
    Ok(wallets::Entity::find()
        .select_only()
        .column(wallets::Column::Id)
        .filter(
            sea_orm::Condition::any()
                .add(wallets::Column::PlanId.eq(plan_id))
                .add(wallets::Column::ScheduledPlanId.eq(plan_id)),
        )
        .into_tuple::<String>()
        .one(conn)
        .await
        .map_err(StoreError::Db)?
        .is_some())
}

impl Store {
    /// Creates or replaces one custom plan (`upsertPlan`), announcing it to the other nodes
    /// (PostgreSQL), which read the plans again. Refused, writing nothing, over a catalogue
    /// plan, or when it changes the interval of a plan a wallet is on: checked against the
    /// stored rows in the same transaction, with the plan's row locked (PostgreSQL; SQLite
    /// has one writer), so no wallet opens on the old interval meanwhile (see
    /// `insert_wallet`).
    pub async fn upsert_plan(&self, plan: &PlanRow) -> Result<PlanUpsert, StoreError> {
        let txn = self.begin_write().await?;
        let stored = locked_plans(&txn, [plan.id.clone()]).await?;
        if stored.iter().any(|row| !row.custom) {
            return Ok(PlanUpsert::Catalogue);
        }
        let plans = std::slice::from_ref(plan);
        if interval_in_use(&txn, &stored, plans).await?.is_some() {
            return Ok(PlanUpsert::IntervalInUse);
        }
        record_credit_edits(&txn, &stored, plans).await?;
        upsert_plans(&txn, plans).await?;
        crate::feed::notify_plans(&txn, self.backend())
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(PlanUpsert::Written)
    }

    /// Upserts the catalogue's plans and bundles in one transaction (each start). Bundles
    /// it does not list are no longer sold (a purchase keeps its bundle id); catalogue plans
    /// it does not list are marked retired, not deleted, since wallets may be on them.
    pub async fn upsert_catalogue(
        &self,
        plans: &[PlanRow],
        bundles: &[BundleRow],
    ) -> Result<(), StoreError> {
        crate::bound("catalogue entries", plans.len() + bundles.len(), MAX_LIST)?;
        let txn = self.begin_write().await?;
        // Every row this writes is locked first, in id order, as commits lock plans (found
        // by review: marking the retired ones locked them later, out of order, which could
        // deadlock with a commit holding a retired plan and waiting for a listed one).
        let catalogue: Vec<String> = plans::Entity::find()
            .select_only()
            .column(plans::Column::Id)
            .filter(plans::Column::Custom.eq(false))
            .into_tuple()
            .all(&txn)
            .await
            .map_err(StoreError::Db)?;
        let ids = plans.iter().map(|p| p.id.clone()).chain(catalogue);
        let locked = locked_plans(&txn, ids).await?;
        // An interval never changes under wallets on the plan, whichever way it is edited.
        let stored: Vec<plans::Model> = locked
            .into_iter()
            .filter(|row| plans.iter().any(|p| p.id == row.id))
            .collect();
        if let Some(custom) = stored.iter().find(|row| row.custom) {
            return Err(StoreError::CustomPlanInCatalogue(custom.id.clone()));
        }
        if let Some(id) = interval_in_use(&txn, &stored, plans).await? {
            return Err(StoreError::IntervalInUse(id));
        }
        record_credit_edits(&txn, &stored, plans).await?;
        upsert_plans(&txn, plans).await?;
        plans::Entity::update_many()
            .col_expr(plans::Column::Retired, Expr::value(true))
            .filter(plans::Column::Custom.eq(false))
            .filter(plans::Column::Id.is_not_in(plans.iter().map(|p| p.id.clone())))
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        bundles::Entity::delete_many()
            .filter(bundles::Column::Id.is_not_in(bundles.iter().map(|b| b.id.clone())))
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        upsert_bundles(&txn, bundles).await?;
        // Nodes already running read the plans again (a retired plan refuses new wallets).
        crate::feed::notify_plans(&txn, self.backend())
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::from_db)
    }

    pub async fn plan(&self, id: &str) -> Result<Option<PlanRow>, StoreError> {
        plans::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(plan_row)
            .transpose()
    }

    /// Catalogue plans in file order, then custom plans by id, at most [`MAX_LIST`].
    pub async fn plans(&self) -> Result<Vec<PlanRow>, StoreError> {
        let mut rows = plans::Entity::find()
            .order_by_asc(plans::Column::Custom)
            .order_by_asc(plans::Column::Position)
            .limit(MAX_LIST as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(plan_row)
            .collect::<Result<Vec<_>, _>>()?;
        // Ids sorted by bytes here, not by the database's collation.
        rows.sort_by(|a, b| {
            (a.custom, if a.custom { 0 } else { a.position }, &a.id).cmp(&(
                b.custom,
                if b.custom { 0 } else { b.position },
                &b.id,
            ))
        });
        Ok(rows)
    }

    /// Every plan's credits before each edit of them, by plan, oldest first (the newest
    /// [`MAX_HISTORY`] edits).
    pub async fn plan_credit_history(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<EarlierCredits>>, StoreError> {
        let rows = plan_credit_history::Entity::find()
            .order_by_desc(plan_credit_history::Column::UntilUs)
            .limit(MAX_HISTORY as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?;
        by_plan(rows)
    }

    /// Whether any wallet is on `plan_id` (an interval change is refused then).
    pub async fn plan_in_use(&self, plan_id: &str) -> Result<bool, StoreError> {
        on_plan(&self.db, plan_id).await
    }

    pub async fn upsert_bundle(&self, bundle: &BundleRow) -> Result<(), StoreError> {
        upsert_bundles(&self.db, std::slice::from_ref(bundle)).await
    }

    pub async fn bundle(&self, id: &str) -> Result<Option<BundleRow>, StoreError> {
        Ok(bundles::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(bundle_row))
    }

    /// Bundles in catalogue order, at most [`MAX_LIST`].
    pub async fn bundles(&self) -> Result<Vec<BundleRow>, StoreError> {
        Ok(bundles::Entity::find()
            .order_by_asc(bundles::Column::Position)
            .order_by_asc(bundles::Column::Id)
            .limit(MAX_LIST as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(bundle_row)
            .collect())
    }
}
