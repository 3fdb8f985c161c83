//! Wallet rows and fenced commits. This module owns the only code that writes a wallet's
//! per-wallet rows (wallet, ledger, usage, grants, reservations): creation, and commits
//! that move `version` by one under `WHERE version = expected` in the same transaction as
//! every row of the batch. It must never write a batch whose fence failed, and never
//! commit two wallets' batches so that one's conflict undoes the other's.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, IsolationLevel,
    PaginatorTrait, QueryFilter, QuerySelect, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

use crate::entity::{grants, ledger, plans, reservations, reviews, usage_events, wallets};
use crate::error::{CommitError, StoreError};
use crate::feed::notify;
use crate::rows::*;
use crate::sql::Sql;
use crate::time::{from_us, opt_from_us, seq_from_db, seq_to_db, to_us};
use crate::{INSERT_CHUNK, MAX_BATCH_RECORDS, MAX_GROUP_BATCHES, MAX_LIST, Store, bound};

impl Store {
    /// Opens a write transaction. On SQLite it takes the write lock at BEGIN (IMMEDIATE):
    /// a deferred transaction that reads and then writes can fail with SQLITE_BUSY at
    /// once, without waiting for the busy timeout, when another writer got in between.
    pub(crate) async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        let options = TransactionOptions {
            isolation_level: None::<IsolationLevel>,
            access_mode: None::<AccessMode>,
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        };
        self.db
            .begin_with_options(options)
            .await
            .map_err(StoreError::Db)
    }

    /// Creates a wallet (version 0) with its creation record, atomically with the
    /// owner's createWallet key when there is one. A key already recorded returns the
    /// wallet it created and writes nothing.
    pub async fn create_wallet(&self, wallet: &NewWallet) -> Result<Created, StoreError> {
        let txn = self.begin_write().await?;
        match create_in(&txn, self, wallet).await {
            Ok(Created::New) => {
                txn.commit().await.map_err(StoreError::from_db)?;
                Ok(Created::New)
            }
            Ok(existing) => {
                txn.rollback().await.map_err(StoreError::Db)?;
                Ok(existing)
            }
            Err(err) => {
                // The transaction is dropped (rolled back); the original error matters.
                drop(txn);
                Err(err)
            }
        }
    }

    /// Loads a wallet's snapshot row and its version.
    pub async fn load_wallet(&self, wallet_id: &str) -> Result<Option<StoredWallet>, StoreError> {
        wallets::Entity::find_by_id(wallet_id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(stored_wallet)
            .transpose()
    }

    /// Moves a wallet's version on by one and loads it, in one write transaction, so that
    /// a commit still in flight for it (one whose outcome its writer could not learn: a
    /// connection lost during COMMIT) either is in what this returns or can no longer land:
    /// on PostgreSQL the UPDATE waits for that transaction's row lock, and a commit that
    /// reaches the server later fails its fence. Writes no ledger row and sends no notice.
    pub async fn fence_and_load_wallet(
        &self,
        wallet_id: &str,
    ) -> Result<Option<StoredWallet>, StoreError> {
        let txn = self.begin_write().await?;
        wallets::Entity::update_many()
            .col_expr(
                wallets::Column::Version,
                Expr::col(wallets::Column::Version).add(1),
            )
            .filter(wallets::Column::Id.eq(wallet_id))
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        let row = wallets::Entity::find_by_id(wallet_id.to_owned())
            .one(&txn)
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::from_db)?;
        row.map(stored_wallet).transpose()
    }

    /// The seq of a wallet's last durable record (`None`: no such wallet), one indexed
    /// column read: what a node checks its state against before refusing a call on it.
    pub async fn wallet_seq(&self, wallet_id: &str) -> Result<Option<u64>, StoreError> {
        self.wallet_column(wallet_id, wallets::Column::Seq)
            .await?
            .map(seq_from_db)
            .transpose()
    }

    /// The version of a pool wallet's members and their limits (`None`: no such wallet).
    pub async fn members_version(&self, wallet_id: &str) -> Result<Option<i64>, StoreError> {
        self.wallet_column(wallet_id, wallets::Column::MembersVersion)
            .await
    }

    /// One BIGINT column of a wallet's row (`None`: no such wallet).
    async fn wallet_column(
        &self,
        wallet_id: &str,
        column: wallets::Column,
    ) -> Result<Option<i64>, StoreError> {
        wallets::Entity::find_by_id(wallet_id.to_owned())
            .select_only()
            .column(column)
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(StoreError::Db)
    }

    /// Commits one wallet's batch in one transaction behind the fence. Returns the new
    /// version. On [`CommitError::Conflict`] or [`CommitError::PlanChanged`] nothing was
    /// written.
    pub async fn commit(&self, batch: &WalletBatch) -> Result<i64, CommitError> {
        check_batch(batch)?;
        let txn = self.begin_write().await?;
        let written = async {
            let version = write_batch(&txn, batch).await?;
            let moved = [(batch.wallet_id.as_str(), batch.seq)];
            notify(&txn, self.backend(), &moved).await?;
            Ok(version)
        }
        .await;
        match written {
            Ok(version) => {
                txn.commit().await?;
                Ok(version)
            }
            Err(err) => {
                // The batch's error is what the caller acts on; a failed rollback ends
                // the same way (the connection drops the transaction).
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }

    /// Commits several wallets' batches in one transaction, so that one wallet's fence
    /// conflict (or taken key) leaves out only that wallet's part. Returns one result per
    /// batch, in order. `Err` means the transaction as a whole failed: then no batch is
    /// known to be durable.
    ///
    /// Fast path: every wallet's fenced UPDATE first (a conflict writes nothing, so it
    /// needs no savepoint), then all fenced wallets' rows in shared multi-row INSERTs. If
    /// those fail (a unique key, a row the database refuses), the transaction is rolled
    /// back and redone with one savepoint per wallet, which pins the refusal on the wallet
    /// that earned it.
    pub async fn commit_many(
        &self,
        batches: &[WalletBatch],
    ) -> Result<Vec<Result<i64, CommitError>>, StoreError> {
        bound(
            "batches in a group commit",
            batches.len(),
            MAX_GROUP_BATCHES,
        )?;
        let txn = self.begin_write().await?;
        let mut results = Vec::with_capacity(batches.len());
        let mut valid = Vec::with_capacity(batches.len());
        for batch in batches {
            match check_batch(batch) {
                Ok(()) => {
                    valid.push(batch);
                    results.push(Ok(0));
                }
                Err(err) => results.push(Err(err.into())),
            }
        }
        // A batch decided on plans that changed meanwhile (an interval, the credits of a
        // reset, renewal or plan change) is fenced out.
        let stale = stale_plans(&txn, &valid).await?;
        if !stale.is_empty() {
            for (result, batch) in results.iter_mut().filter(|r| r.is_ok()).zip(&valid) {
                if stale.contains(&batch.wallet_id) {
                    *result = Err(CommitError::PlanChanged(batch.wallet_id.clone()));
                }
            }
            valid.retain(|b| !stale.contains(&b.wallet_id));
        }
        let mut fences = fence_many(&txn, self.db_backend(), &valid)
            .await?
            .into_iter();
        let mut fenced = Vec::with_capacity(valid.len());
        for (result, batch) in results.iter_mut().filter(|r| r.is_ok()).zip(&valid) {
            *result = fences.next().expect("one fence per valid batch");
            if result.is_ok() {
                fenced.push(*batch);
            }
        }
        match write_rows(&txn, &fenced).await {
            Ok(()) => {
                let moved: Vec<(&str, u64)> = fenced
                    .iter()
                    .map(|b| (b.wallet_id.as_str(), b.seq))
                    .collect();
                notify(&txn, self.backend(), &moved)
                    .await
                    .map_err(StoreError::Db)?;
                txn.commit().await.map_err(StoreError::Db)?;
                Ok(results)
            }
            // A taken key, or a row the database refuses: nothing is written yet, so redo
            // it with one savepoint per wallet, which pins the refusal on the wallet that
            // earned it (a broken connection fails again there, for all).
            Err(CommitError::Store(_)) => {
                txn.rollback().await.map_err(StoreError::Db)?;
                self.commit_many_savepoints(batches).await
            }
            Err(other) => Err(StoreError::InvalidBatch(other.to_string())),
        }
    }

    /// The slow path of [`Store::commit_many`]: one savepoint per wallet batch.
    async fn commit_many_savepoints(
        &self,
        batches: &[WalletBatch],
    ) -> Result<Vec<Result<i64, CommitError>>, StoreError> {
        let txn = self.begin_write().await?;
        let mut results: Vec<Option<Result<i64, CommitError>>> =
            batches.iter().map(|_| None).collect();
        let mut moved = Vec::with_capacity(batches.len());
        // Wallet rows are locked in id order, as the fast path locks them (found by review:
        // in arrival order, two nodes' groups could each hold one wallet the other wants,
        // and PostgreSQL aborted one group whole, as UNAVAILABLE).
        let mut order: Vec<usize> = (0..batches.len()).collect();
        order.sort_by(|&a, &b| batches[a].wallet_id.cmp(&batches[b].wallet_id));
        // Plan rows too, all at once in id order before any wallet, as the fast path does:
        // one wallet at a time, they would be locked out of order.
        let all: Vec<&WalletBatch> = batches.iter().collect();
        locked_plans(&txn, plan_ids(&all)).await?;
        for i in order {
            let batch = &batches[i];
            if let Err(err) = check_batch(batch) {
                results[i] = Some(Err(err.into()));
                continue;
            }
            let savepoint = txn.begin().await.map_err(StoreError::Db)?;
            match write_batch(&savepoint, batch).await {
                Ok(version) => {
                    savepoint.commit().await.map_err(StoreError::Db)?;
                    moved.push((batch.wallet_id.as_str(), batch.seq));
                    results[i] = Some(Ok(version));
                }
                Err(err) => {
                    savepoint.rollback().await.map_err(StoreError::Db)?;
                    results[i] = Some(Err(err));
                }
            }
        }
        notify(&txn, self.backend(), &moved)
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::Db)?;
        Ok(results
            .into_iter()
            .map(|r| r.expect("every batch has a result"))
            .collect())
    }

    /// Wallets whose next due instant is at or before `before`, soonest first, at most
    /// `limit` (≤ [`MAX_LIST`]).
    pub async fn wallets_due(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<(chrono::DateTime<chrono::Utc>, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        bound("due wallets", limit, MAX_LIST)?;
        let statement = due_statement(self.db_backend(), before, after, limit);
        let rows = self
            .db
            .query_all_raw(statement)
            .await
            .map_err(StoreError::Db)?;
        rows.into_iter()
            .map(|row| {
                let id: String = row.try_get("", "id").map_err(StoreError::Db)?;
                let due: i64 = row.try_get("", "next_due_us").map_err(StoreError::Db)?;
                Ok((id, from_us(due)?))
            })
            .collect()
    }

    /// The database's plan for a page of due wallets (the index tests).
    pub async fn explain_due(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<(chrono::DateTime<chrono::Utc>, &str)>,
    ) -> Result<Vec<String>, StoreError> {
        let statement = due_statement(self.db_backend(), before, after, MAX_LIST);
        self.explain(vec![statement]).await
    }

    /// A personal owner's wallets (never pools), in creation order, at most [`MAX_LIST`].
    pub async fn wallets_of_owner(&self, owner_id: &str) -> Result<Vec<StoredWallet>, StoreError> {
        use sea_orm::{QueryOrder, QuerySelect};
        wallets::Entity::find()
            .filter(wallets::Column::OwnerId.eq(owner_id))
            .filter(wallets::Column::TeamId.is_null())
            .order_by_asc(wallets::Column::CreatedUs)
            .order_by_asc(wallets::Column::Id)
            .limit(MAX_LIST as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(stored_wallet)
            .collect()
    }

    /// The ledger records of a wallet with seq > `after_seq`, in seq order, at most
    /// `limit` (≤ [`MAX_LIST`]): what a node re-publishes after a NOTIFY.
    pub async fn events_after(
        &self,
        wallet_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        use sea_orm::{QueryOrder, QuerySelect};
        bound("ledger records", limit, MAX_LIST)?;
        ledger::Entity::find()
            .filter(ledger::Column::WalletId.eq(wallet_id))
            .filter(ledger::Column::Seq.gt(seq_to_db(after_seq)?))
            .order_by_asc(ledger::Column::Seq)
            .limit(limit as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(ledger_record)
            .collect()
    }

    /// Number of ledger records of a wallet (for checks and tests).
    pub async fn ledger_len(&self, wallet_id: &str) -> Result<u64, StoreError> {
        ledger::Entity::find()
            .filter(ledger::Column::WalletId.eq(wallet_id))
            .count(&self.db)
            .await
            .map_err(StoreError::Db)
    }
}

async fn create_in(
    txn: &DatabaseTransaction,
    store: &Store,
    wallet: &NewWallet,
) -> Result<Created, StoreError> {
    if let Some(key) = &wallet.idempotency_key {
        // ON CONFLICT DO NOTHING rather than catching the error: on PostgreSQL a failed
        // statement would abort the whole transaction.
        let mut sql = Sql::new(store.db_backend());
        sql.push(
            "INSERT INTO wallet_creations (owner_id, idempotency_key, wallet_id, request) VALUES (",
        )
        .bind(wallet.owner_id.clone())
        .push(", ")
        .bind(key.key.clone())
        .push(", ")
        .bind(wallet.id.clone())
        .push(", ")
        .bind(key.request.clone())
        .push(") ON CONFLICT DO NOTHING");
        let inserted = txn
            .execute_raw(sql.build())
            .await
            .map_err(StoreError::from_db)?
            .rows_affected();
        if inserted == 0 {
            let existing = store
                .wallet_for_creation_key_in(txn, &wallet.owner_id, &key.key)
                .await?
                .ok_or_else(|| crate::error::corrupt("creation key vanished"))?;
            return Ok(Created::Existing(existing));
        }
    }
    insert_wallet(txn, wallet).await?;
    Ok(Created::New)
}

pub(crate) async fn insert_wallet<C: ConnectionTrait>(
    conn: &C,
    wallet: &NewWallet,
) -> Result<(), StoreError> {
    // A wallet never opens on an interval its plan no longer has (a plan never changes the
    // interval of a wallet on it), nor with other credits than its plan gave as it opened
    // (edited on another node that this node had not heard of yet).
    let plan = wallet.plan_id.as_str();
    let plans = PlansAt::read(conn, vec![plan], &[(plan, wallet.created_at)]).await?;
    let opening = PlanCredits {
        plan_id: wallet.plan_id.clone(),
        at: wallet.created_at,
        daily_ucr: Some(wallet.daily_ucr),
        subscription_ucr: Some(wallet.subscription_ucr),
    };
    if plans.other_interval(plan, &wallet.interval) || plans.took_other(&opening) {
        return Err(StoreError::PlanChanged(wallet.plan_id.clone()));
    }
    let row = wallets::Model {
        id: wallet.id.clone(),
        owner_id: wallet.owner_id.clone(),
        team_id: wallet.team_id.clone(),
        timezone: wallet.timezone.clone(),
        plan_id: wallet.plan_id.clone(),
        created_us: to_us(wallet.created_at),
        version: 0,
        seq: seq_to_db(wallet.creation.seq)?,
        snapshot: wallet.snapshot_json.clone(),
        next_due_us: wallet.next_due_at.map(to_us),
        members_version: 0,
        // A wallet opens with no plan scheduled.
        scheduled_plan_id: None,
    };
    wallets::Entity::insert_many(crate::entity::active([row]))
        .exec_without_returning(conn)
        .await
        .map_err(StoreError::from_db)?;
    let record = ledger_model(&wallet.id, &wallet.creation)?;
    ledger::Entity::insert_many(crate::entity::active([record]))
        .exec_without_returning(conn)
        .await
        .map_err(StoreError::from_db)?;
    Ok(())
}

fn check_batch(batch: &WalletBatch) -> Result<(), StoreError> {
    for (what, n) in [
        ("ledger records in a batch", batch.entries.len()),
        ("usage rows in a batch", batch.usage.len()),
        ("grant rows in a batch", batch.grants.len()),
        ("reservation rows in a batch", batch.reservations.len()),
    ] {
        bound(what, n, MAX_BATCH_RECORDS)?;
    }
    // The ledger's seq rises by exactly one per record (SPEC 8); a gap here is a caller
    // bug that would surface later as a missing event.
    let contiguous = batch.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
    let ends_at_seq = batch.entries.last().is_none_or(|e| e.seq == batch.seq);
    if !contiguous || !ends_at_seq {
        return Err(StoreError::InvalidBatch(format!(
            "ledger seqs of wallet {} are not contiguous up to {}",
            batch.wallet_id, batch.seq
        )));
    }
    let foreign = batch.usage.iter().map(|u| &u.wallet_id);
    let foreign = foreign
        .chain(batch.grants.iter().map(|g| &g.wallet_id))
        .chain(batch.reservations.iter().map(|r| &r.wallet_id))
        .any(|id| *id != batch.wallet_id);
    if foreign {
        return Err(StoreError::InvalidBatch(format!(
            "a row of wallet {}'s batch names another wallet",
            batch.wallet_id
        )));
    }
    Ok(())
}

/// Checks a batch's bounds and shape, then writes it behind the fence.
pub(crate) async fn write_checked<C: ConnectionTrait>(
    conn: &C,
    batch: &WalletBatch,
) -> Result<i64, CommitError> {
    check_batch(batch)?;
    write_batch(conn, batch).await
}

async fn write_batch<C: ConnectionTrait>(
    conn: &C,
    batch: &WalletBatch,
) -> Result<i64, CommitError> {
    if !stale_plans(conn, &[batch]).await?.is_empty() {
        return Err(CommitError::PlanChanged(batch.wallet_id.clone()));
    }
    let version = fence(conn, batch).await?;
    write_rows(conn, &[batch]).await?;
    Ok(version)
}

/// The wallets of `batches` decided on plans that changed meanwhile, fenced out with
/// [`CommitError::PlanChanged`] (they read the plans again, reload and decide again): a move onto a plan whose
/// stored interval is not the one the move was decided with (an interval change won the
/// race); a reset, renewal or upgrade that took other credits than its plan gave at its
/// instant, by the plan's credit history (an edit on another node that this node had not
/// heard of yet, or one it knows without its history); and a change scheduled onto a plan
/// that by then gave more than the wallet's allowance (an upgrade, applied at once).
async fn stale_plans<C: ConnectionTrait>(
    conn: &C,
    batches: &[&WalletBatch],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let instants: Vec<(&str, DateTime<Utc>)> = batches
        .iter()
        .flat_map(|b| {
            let credits = b.credits_used.iter().map(|u| (u.plan_id.as_str(), u.at));
            credits.chain(b.scheduled.iter().map(|s| (s.plan_id.as_str(), s.at)))
        })
        .collect();
    let plans = PlansAt::read(conn, plan_ids(batches), &instants).await?;
    let stale = |b: &WalletBatch| {
        let moved_off = b
            .moves_to
            .as_ref()
            .is_some_and(|(plan, interval)| plans.other_interval(plan, interval));
        let edited = b.credits_used.iter().any(|used| plans.took_other(used));
        // Scheduled on credits that made it no upgrade, which it was by then.
        let an_upgrade = b.scheduled.iter().any(|change| {
            plans.stored.get(&change.plan_id).is_some_and(|p| {
                p.interval == change.interval
                    && plans
                        .given(p, change.at)
                        .iter()
                        .all(|(_, subscription)| *subscription > change.allowance_ucr)
            })
        });
        // A renewal kept for later a scheduled plan that is stored: the node did not know
        // it (found by review: the wallet renewed on its old plan for a whole period).
        let kept = b
            .kept_schedule
            .as_ref()
            .is_some_and(|plan| plans.stored.contains_key(plan));
        moved_off || edited || an_upgrade || kept
    };
    Ok(batches
        .iter()
        .filter(|b| stale(b))
        .map(|b| b.wallet_id.clone())
        .collect())
}

/// What plans gave at given instants: their stored rows, share-locked (see
/// [`locked_plans`]), and their credit edits since the earliest of those instants.
struct PlansAt {
    stored: std::collections::HashMap<String, plans::Model>,
    history: std::collections::HashMap<String, Vec<credits_core::EarlierCredits>>,
}

impl PlansAt {
    async fn read<C: ConnectionTrait>(
        conn: &C,
        ids: Vec<&str>,
        instants: &[(&str, DateTime<Utc>)],
    ) -> Result<PlansAt, StoreError> {
        let stored = locked_plans(conn, ids).await?;
        let history = match instants.iter().map(|(_, at)| to_us(*at)).min() {
            Some(first) => {
                let ids = instants.iter().map(|(plan, _)| *plan).collect();
                crate::catalogue::credit_history_from(conn, ids, first).await?
            }
            None => Default::default(),
        };
        Ok(PlansAt { stored, history })
    }

    /// Whether `plan` is stored with another interval than `interval` (an interval change
    /// won the race).
    fn other_interval(&self, plan: &str, interval: &str) -> bool {
        self.stored
            .get(plan)
            .is_some_and(|p| p.interval != interval)
    }

    /// What a plan gave at an instant (daily, subscription): its credits up to the first
    /// edit at or after it, or (none) its current credits. At an edit's own instant, either
    /// those before or those after it: a record there is concurrent with the edit (a reset
    /// then takes the earlier ones, a plan change on a node that has the edit the new ones).
    fn given(&self, plan: &plans::Model, at: DateTime<Utc>) -> [(i64, i64); 2] {
        let earlier = self.history.get(&plan.id).map_or(&[][..], Vec::as_slice);
        let of = |e: Option<&credits_core::EarlierCredits>| {
            e.map_or((plan.daily_ucr, plan.subscription_ucr), |e| {
                (e.daily.micro(), e.subscription.micro())
            })
        };
        [
            of(credits_core::EarlierCredits::in_force(earlier, at)),
            of(earlier.iter().find(|e| at < e.until)),
        ]
    }

    /// Whether `used` took other credits than its plan gave at its instant.
    fn took_other(&self, used: &PlanCredits) -> bool {
        self.stored.get(&used.plan_id).is_some_and(|p| {
            !self.given(p, used.at).iter().any(|(daily, subscription)| {
                used.daily_ucr.is_none_or(|d| d == *daily)
                    && used.subscription_ucr.is_none_or(|s| s == *subscription)
            })
        })
    }
}

/// The plans `batches` were decided on and lock: those moved onto, those scheduled (locked
/// whatever their interval, see `WalletBatch::schedules`) and those resets, renewals and
/// upgrades took credits from.
fn plan_ids<'a>(batches: &[&'a WalletBatch]) -> Vec<&'a str> {
    let moves = batches.iter().filter_map(|b| b.moves_to.as_ref());
    moves
        .map(|(plan, _)| plan.as_str())
        .chain(batches.iter().filter_map(|b| b.schedules.as_deref()))
        .chain(
            batches
                .iter()
                .flat_map(|b| &b.credits_used)
                .map(|c| c.plan_id.as_str()),
        )
        .chain(
            batches
                .iter()
                .flat_map(|b| &b.scheduled)
                .map(|s| s.plan_id.as_str()),
        )
        .chain(batches.iter().filter_map(|b| b.kept_schedule.as_deref()))
        .collect()
}

/// The stored rows of plans `ids`, share-locked in id order, by id: an edit of one, which
/// locks its row for update (and, for an interval change, then looks for wallets on the
/// plan), either waits for this transaction or is seen by it.
async fn locked_plans<C: ConnectionTrait>(
    conn: &C,
    ids: Vec<&str>,
) -> Result<std::collections::HashMap<String, plans::Model>, StoreError> {
    Ok(lock_plans(conn, ids, PlanLock::Read)
        .await?
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect())
}

/// How [`lock_plans`] locks plan rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanLock {
    /// Shared: a commit decided on the plans.
    Read,
    /// For update: an edit of the plans.
    Write,
}

/// The stored rows of plans `ids`, in id order, locked (PostgreSQL; SQLite has one
/// writer). Every path locks plan rows through here, in id order and before any wallet
/// row, so plan edits and commits never wait for each other in a cycle.
pub(crate) async fn lock_plans<C: ConnectionTrait>(
    conn: &C,
    mut ids: Vec<&str>,
    lock: PlanLock,
) -> Result<Vec<plans::Model>, StoreError> {
    use sea_orm::QueryOrder;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let mut stored = plans::Entity::find()
        .filter(plans::Column::Id.is_in(ids))
        .order_by_asc(plans::Column::Id);
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        stored = match lock {
            PlanLock::Read => stored.lock_shared(),
            PlanLock::Write => stored.lock_exclusive(),
        };
    }
    stored.all(conn).await.map_err(StoreError::Db)
}

/// The fenced UPDATE of one wallet row. On a conflict it has written nothing.
async fn fence<C: ConnectionTrait>(conn: &C, batch: &WalletBatch) -> Result<i64, CommitError> {
    let new_version = batch.expected_version + 1;
    // The fence first: if it fails, nothing else is attempted.
    let fenced = wallets::Entity::update_many()
        .col_expr(wallets::Column::Version, Expr::value(new_version))
        .col_expr(wallets::Column::Seq, Expr::value(seq_to_db(batch.seq)?))
        .col_expr(
            wallets::Column::Snapshot,
            Expr::value(batch.snapshot_json.clone()),
        )
        .col_expr(
            wallets::Column::NextDueUs,
            Expr::value(batch.next_due_at.map(to_us)),
        )
        .col_expr(
            wallets::Column::Timezone,
            Expr::value(batch.timezone.clone()),
        )
        .col_expr(wallets::Column::PlanId, Expr::value(batch.plan_id.clone()))
        .col_expr(
            wallets::Column::ScheduledPlanId,
            Expr::value(batch.scheduled_plan_id.clone()),
        )
        .filter(wallets::Column::Id.eq(batch.wallet_id.as_str()))
        .filter(wallets::Column::Version.eq(batch.expected_version))
        .exec(conn)
        .await?;
    if fenced.rows_affected == 0 {
        let exists = wallets::Entity::find_by_id(batch.wallet_id.clone())
            .count(conn)
            .await?
            > 0;
        return Err(if exists {
            CommitError::Conflict {
                wallet_id: batch.wallet_id.clone(),
                expected_version: batch.expected_version,
            }
        } else {
            CommitError::NotFound(batch.wallet_id.clone())
        });
    }
    Ok(new_version)
}

/// Wallets fenced per UPDATE statement in a group commit (8 bound values each).
const FENCE_CHUNK: usize = 256;

/// The fenced UPDATE of many wallets in one statement per [`FENCE_CHUNK`]: one result per
/// batch, in order. A conflict writes nothing for that wallet. With the same wallet twice
/// (a caller bug the statement could not fence), it fences one by one.
async fn fence_many<C: ConnectionTrait>(
    conn: &C,
    backend: sea_orm::DbBackend,
    batches: &[&WalletBatch],
) -> Result<Vec<Result<i64, CommitError>>, StoreError> {
    let ids: std::collections::HashSet<&str> =
        batches.iter().map(|b| b.wallet_id.as_str()).collect();
    if ids.len() < batches.len() || batches.len() == 1 {
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            match fence(conn, batch).await {
                Err(CommitError::Store(err)) => return Err(err),
                other => results.push(other),
            }
        }
        return Ok(results);
    }
    // In id order across chunks too (see `locked` below).
    let mut ordered = batches.to_vec();
    ordered.sort_unstable_by(|a, b| a.wallet_id.cmp(&b.wallet_id));
    let mut fenced = std::collections::HashSet::new();
    for chunk in ordered.chunks(FENCE_CHUNK) {
        let mut sql = Sql::new(backend);
        sql.push(
            "WITH v (id, expected, seq, snapshot, next_due_us, timezone, plan_id, \
             scheduled_plan_id) AS (VALUES ",
        );
        for (i, b) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" })
                .bind(b.wallet_id.clone())
                .push(", ")
                .bind(b.expected_version)
                .push(", ")
                .bind(seq_to_db(b.seq)?)
                .push(", ")
                .bind(b.snapshot_json.clone())
                .push(", ")
                .bind(b.next_due_at.map(to_us))
                .push(", ")
                .bind(b.timezone.clone())
                .push(", ")
                .bind(b.plan_id.clone())
                .push(", ")
                .bind(b.scheduled_plan_id.clone())
                .push(")");
        }
        sql.push(")");
        // PostgreSQL locks rows in the order its plan meets them (the VALUES' order in a
        // nested loop, the table's in a hash join), so two group commits over the same
        // wallets could each hold one the other waits for: a deadlock, and one of them
        // aborted. Locking them first, in id order, makes every writer queue the same way.
        // (SQLite has one writer at a time.)
        let locked = if backend == sea_orm::DbBackend::Postgres {
            sql.push(
                ", locked AS MATERIALIZED (SELECT wallets.id FROM wallets JOIN v \
                 ON wallets.id = v.id ORDER BY wallets.id FOR UPDATE OF wallets)",
            );
            ", locked"
        } else {
            ""
        };
        sql.push(
            " UPDATE wallets SET version = wallets.version + 1, seq = v.seq, \
             snapshot = v.snapshot, next_due_us = v.next_due_us, timezone = v.timezone, \
             plan_id = v.plan_id, scheduled_plan_id = v.scheduled_plan_id FROM v",
        )
        .push(locked)
        .push(" WHERE wallets.id = v.id AND wallets.version = v.expected");
        if !locked.is_empty() {
            sql.push(" AND locked.id = v.id");
        }
        sql.push(" RETURNING wallets.id");
        for row in conn
            .query_all_raw(sql.build())
            .await
            .map_err(StoreError::Db)?
        {
            fenced.insert(row.try_get_by_index::<String>(0).map_err(StoreError::Db)?);
        }
    }
    let missing: Vec<&str> = batches
        .iter()
        .map(|b| b.wallet_id.as_str())
        .filter(|id| !fenced.contains(*id))
        .collect();
    // Only after a conflict: which of the unfenced wallets exist at all.
    let existing: std::collections::HashSet<String> = if missing.is_empty() {
        Default::default()
    } else {
        wallets::Entity::find()
            .select_only()
            .column(wallets::Column::Id)
            .filter(wallets::Column::Id.is_in(missing.iter().copied()))
            .into_tuple::<String>()
            .all(conn)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .collect()
    };
    Ok(batches
        .iter()
        .map(|b| {
            if fenced.contains(&b.wallet_id) {
                Ok(b.expected_version + 1)
            } else if existing.contains(&b.wallet_id) {
                Err(CommitError::Conflict {
                    wallet_id: b.wallet_id.clone(),
                    expected_version: b.expected_version,
                })
            } else {
                Err(CommitError::NotFound(b.wallet_id.clone()))
            }
        })
        .collect())
}

/// The rows of fenced batches, several wallets' rows sharing each multi-row INSERT.
async fn write_rows<C: ConnectionTrait>(
    conn: &C,
    batches: &[&WalletBatch],
) -> Result<(), CommitError> {
    let records = batches
        .iter()
        .flat_map(|b| b.entries.iter().map(|e| ledger_model(&b.wallet_id, e)))
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in records.chunks(INSERT_CHUNK) {
        ledger::Entity::insert_many(crate::entity::active(chunk.iter().cloned()))
            .exec_without_returning(conn)
            .await?;
    }

    let usage = batches
        .iter()
        .flat_map(|b| b.usage.iter())
        .map(usage_model)
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in usage.chunks(INSERT_CHUNK) {
        usage_events::Entity::insert_many(crate::entity::active(chunk.iter().cloned()))
            .exec_without_returning(conn)
            .await?;
    }

    let lots = batches
        .iter()
        .flat_map(|b| b.grants.iter())
        .map(grant_model)
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in lots.chunks(INSERT_CHUNK) {
        let written = grants::Entity::insert_many(crate::entity::active(chunk.iter().cloned()))
            .on_conflict(
                OnConflict::column(grants::Column::Id)
                    .update_columns([
                        grants::Column::SpentUcr,
                        grants::Column::HeldUcr,
                        grants::Column::ExpiredUcr,
                    ])
                    // A lot granted by this batch (seq > 0) is new: its id already
                    // stored is a second grant of it, refused like another wallet's id.
                    .action_and_where(Expr::cust(
                        "grants.wallet_id = excluded.wallet_id AND excluded.seq = 0",
                    ))
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await?;
        same_wallet_upsert("grant", written, chunk.len())?;
    }

    let holds = batches
        .iter()
        .flat_map(|b| b.reservations.iter())
        .map(reservation_model)
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in holds.chunks(INSERT_CHUNK) {
        let written =
            reservations::Entity::insert_many(crate::entity::active(chunk.iter().cloned()))
                .on_conflict(
                    OnConflict::column(reservations::Column::Id)
                        .update_columns([
                            reservations::Column::Status,
                            reservations::Column::SettleInput,
                            reservations::Column::SettleResult,
                            reservations::Column::ResolvedSeq,
                        ])
                        .action_and_where(Expr::cust("reservations.wallet_id = excluded.wallet_id"))
                        .to_owned(),
                )
                .exec_without_returning(conn)
                .await?;
        same_wallet_upsert("reservation", written, chunk.len())?;
    }

    for (batch, resolution) in batches
        .iter()
        .filter_map(|b| b.review.as_ref().map(|r| (b, r)))
    {
        let resolved = reviews::Entity::update_many()
            .col_expr(
                reviews::Column::Status,
                Expr::value(resolution.status.as_str()),
            )
            .col_expr(
                reviews::Column::CreditedUcr,
                Expr::value(resolution.credited_ucr),
            )
            .col_expr(reviews::Column::Note, Expr::value(resolution.note.clone()))
            .col_expr(
                reviews::Column::GrantId,
                Expr::value(resolution.grant_id.clone()),
            )
            .col_expr(
                reviews::Column::ResolvedUs,
                Expr::value(to_us(resolution.resolved_at)),
            )
            .filter(reviews::Column::Id.eq(resolution.review_id.as_str()))
            .filter(reviews::Column::WalletId.eq(batch.wallet_id.as_str()))
            .filter(reviews::Column::Status.eq(ReviewStatus::Submitted.as_str()))
            .exec(conn)
            .await?;
        if resolved.rows_affected == 0 {
            // Resolved by someone else first: the caller answers from the stored review.
            return Err(CommitError::Store(StoreError::Duplicate(format!(
                "review {} is not SUBMITTED",
                resolution.review_id
            ))));
        }
    }
    Ok(())
}

/// An upsert keyed by id must never touch another wallet's row (nor, for grants, a row
/// that a new lot would overwrite): the conflict update is conditioned, and a skipped row
/// means the id was not this batch's to update.
fn same_wallet_upsert(what: &str, written: u64, rows: usize) -> Result<(), CommitError> {
    if written == rows as u64 {
        Ok(())
    } else {
        Err(CommitError::Store(StoreError::Duplicate(format!(
            "a {what} id of this batch is another wallet's, or not this batch's to update"
        ))))
    }
}

pub(crate) fn stored_wallet(row: wallets::Model) -> Result<StoredWallet, StoreError> {
    Ok(StoredWallet {
        created_at: from_us(row.created_us)?,
        seq: seq_from_db(row.seq)?,
        next_due_at: opt_from_us(row.next_due_us)?,
        id: row.id,
        owner_id: row.owner_id,
        team_id: row.team_id,
        timezone: row.timezone,
        plan_id: row.plan_id,
        version: row.version,
        members_version: row.members_version,
        snapshot_json: row.snapshot,
    })
}

fn ledger_model(wallet_id: &str, e: &LedgerRecord) -> Result<ledger::Model, StoreError> {
    Ok(ledger::Model {
        wallet_id: wallet_id.to_owned(),
        seq: seq_to_db(e.seq)?,
        at_us: to_us(e.at),
        cause: e.cause.clone(),
        idempotency_key: e.idempotency_key.clone(),
        entry: e.entry_json.clone(),
        balance: e.balance_json.clone(),
    })
}

pub(crate) fn ledger_record(row: ledger::Model) -> Result<LedgerRecord, StoreError> {
    Ok(LedgerRecord {
        seq: seq_from_db(row.seq)?,
        at: from_us(row.at_us)?,
        cause: row.cause,
        idempotency_key: row.idempotency_key,
        entry_json: row.entry,
        balance_json: row.balance,
    })
}

fn usage_model(u: &UsageRow) -> Result<usage_events::Model, StoreError> {
    Ok(usage_events::Model {
        id: u.id.clone(),
        wallet_id: u.wallet_id.clone(),
        seq: seq_to_db(u.seq)?,
        at_us: to_us(u.at),
        idempotency_key: u.idempotency_key.clone(),
        thread_id: u.thread_id.clone(),
        model: u.model.clone(),
        member_id: u.member_id.clone(),
        input_tokens: u.input_tokens,
        cached_tokens: u.cached_tokens,
        output_tokens: u.output_tokens,
        cost_ucr: u.cost_ucr,
        uncollected_ucr: u.uncollected_ucr,
        tier: u.tier.clone(),
        priced_by: u.priced_by.clone(),
        charged: serde_json::to_string(&u.charged)
            .map_err(|e| StoreError::InvalidBatch(e.to_string()))?,
        reservation_id: u.reservation_id.clone(),
    })
}

pub(crate) fn usage_row(m: usage_events::Model) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        seq: seq_from_db(m.seq)?,
        at: from_us(m.at_us)?,
        charged: serde_json::from_str(&m.charged)
            .map_err(|e| crate::error::corrupt(format!("charged of {}: {e}", m.id)))?,
        id: m.id,
        wallet_id: m.wallet_id,
        idempotency_key: m.idempotency_key,
        thread_id: m.thread_id,
        model: m.model,
        member_id: m.member_id,
        input_tokens: m.input_tokens,
        cached_tokens: m.cached_tokens,
        output_tokens: m.output_tokens,
        cost_ucr: m.cost_ucr,
        uncollected_ucr: m.uncollected_ucr,
        tier: m.tier,
        priced_by: m.priced_by,
        reservation_id: m.reservation_id,
    })
}

fn grant_model(g: &GrantRow) -> Result<grants::Model, StoreError> {
    Ok(grants::Model {
        id: g.id.clone(),
        wallet_id: g.wallet_id.clone(),
        seq: seq_to_db(g.seq)?,
        kind: g.kind.clone(),
        reason: g.reason.clone(),
        amount_ucr: g.amount_ucr,
        spent_ucr: g.spent_ucr,
        held_ucr: g.held_ucr,
        expired_ucr: g.expired_ucr,
        expires_us: g.expires_at.map(to_us),
        payment_reference: g.payment_reference.clone(),
        bundle_id: g.bundle_id.clone(),
        review_id: g.review_id.clone(),
        granted_us: to_us(g.granted_at),
    })
}

pub(crate) fn grant_row(m: grants::Model) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        seq: seq_from_db(m.seq)?,
        expires_at: opt_from_us(m.expires_us)?,
        granted_at: from_us(m.granted_us)?,
        id: m.id,
        wallet_id: m.wallet_id,
        kind: m.kind,
        reason: m.reason,
        amount_ucr: m.amount_ucr,
        spent_ucr: m.spent_ucr,
        held_ucr: m.held_ucr,
        expired_ucr: m.expired_ucr,
        payment_reference: m.payment_reference,
        bundle_id: m.bundle_id,
        review_id: m.review_id,
    })
}

fn reservation_model(r: &ReservationRow) -> Result<reservations::Model, StoreError> {
    Ok(reservations::Model {
        id: r.id.clone(),
        wallet_id: r.wallet_id.clone(),
        seq: seq_to_db(r.seq)?,
        status: r.status.as_str().to_owned(),
        amount_ucr: r.amount_ucr,
        member_id: r.member_id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        created_us: to_us(r.created_at),
        expires_us: to_us(r.expires_at),
        settle_input: r.settle_input.clone(),
        settle_result: r.settle_result.clone(),
        resolved_seq: r.resolved_seq.map(seq_to_db).transpose()?,
    })
}

pub(crate) fn reservation_row(m: reservations::Model) -> Result<ReservationRow, StoreError> {
    Ok(ReservationRow {
        seq: seq_from_db(m.seq)?,
        status: ReservationStatus::parse(&m.status)?,
        created_at: from_us(m.created_us)?,
        expires_at: from_us(m.expires_us)?,
        resolved_seq: m.resolved_seq.map(seq_from_db).transpose()?,
        id: m.id,
        wallet_id: m.wallet_id,
        amount_ucr: m.amount_ucr,
        member_id: m.member_id,
        idempotency_key: m.idempotency_key,
        settle_input: m.settle_input,
        settle_result: m.settle_result,
    })
}

/// A page of wallets due by `before`, in (due instant, id) order, after `after`: read from
/// the index on that pair, with no sort.
fn due_statement(
    backend: sea_orm::DbBackend,
    before: chrono::DateTime<chrono::Utc>,
    after: Option<(chrono::DateTime<chrono::Utc>, &str)>,
    limit: usize,
) -> sea_orm::Statement {
    use sea_orm::{Condition, QueryOrder, QuerySelect, QueryTrait};
    let later = after.map(|(at, id)| {
        let (due, key) = (wallets::Column::NextDueUs, wallets::Column::Id);
        crate::after_in_order(due, key, to_us(at), id)
    });
    wallets::Entity::find()
        .select_only()
        .column(wallets::Column::Id)
        .column(wallets::Column::NextDueUs)
        .filter(wallets::Column::NextDueUs.lte(to_us(before)))
        .filter(Condition::all().add_option(later))
        .order_by_asc(wallets::Column::NextDueUs)
        .order_by_asc(wallets::Column::Id)
        .limit(limit as u64)
        .build(backend)
}
