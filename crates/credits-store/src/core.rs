//! Conversion between the core's wallet and ledger and the store's rows. This module owns
//! the mapping (which entry yields which usage, grant and reservation rows; cause names;
//! JSON payloads) and must never decide anything about credits: it only records what the
//! core applied, by re-applying the batch's entries to the state before it.

use std::collections::BTreeMap;

use credits_core::{
    Cause, Credits, Entry, EntryKind, GrantKind, Lot, LotOrigin, Request, Source, UsageRecord,
    Wallet, replay,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait};

use crate::entity::{ledger, wallets};
use crate::error::{StoreError, corrupt};
use crate::rows::*;
use crate::{MAX_LIST, Store};

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::InvalidBatch(e.to_string()))
}

/// SPEC 8 cause names (`CREATED` for the creation record).
pub fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::Created => "CREATED",
        Cause::Usage => "USAGE",
        Cause::Reservation => "RESERVATION",
        Cause::Settlement => "SETTLEMENT",
        Cause::Release => "RELEASE",
        Cause::Grant => "GRANT",
        Cause::DailyReset => "DAILY_RESET",
        Cause::Renewal => "RENEWAL",
        Cause::Expiry => "EXPIRY",
        Cause::PlanChange => "PLAN_CHANGE",
        Cause::TimezoneChange => "TIMEZONE_CHANGE",
    }
}

/// The kind a grant row names (`ADMIN`, `PROMOTION`, …).
pub fn grant_kind(name: &str) -> Option<GrantKind> {
    use GrantKind::*;
    [Admin, Promotion, Community, Compensation, Purchase]
        .into_iter()
        .find(|k| grant_kind_name(*k) == name)
}

fn grant_kind_name(kind: GrantKind) -> &'static str {
    match kind {
        GrantKind::Admin => "ADMIN",
        GrantKind::Promotion => "PROMOTION",
        GrantKind::Community => "COMMUNITY",
        GrantKind::Compensation => "COMPENSATION",
        GrantKind::Purchase => "PURCHASE",
    }
}

fn record(entry: &Entry, after: &Wallet) -> Result<LedgerRecord, StoreError> {
    Ok(LedgerRecord {
        seq: entry.seq,
        at: entry.at,
        cause: cause_name(entry.cause()).to_owned(),
        idempotency_key: entry.idempotency_key().map(str::to_owned),
        entry_json: json(entry)?,
        balance_json: json(&after.balance())?,
    })
}

fn tokens(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::InvalidBatch(format!("token count {n}")))
}

fn usage_row(wallet_id: &str, seq: u64, u: &UsageRecord) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        id: u.id.0.clone(),
        wallet_id: wallet_id.to_owned(),
        seq,
        at: u.at,
        idempotency_key: Some(u.key.clone()),
        thread_id: u.thread_id.clone(),
        model: u.model.clone(),
        member_id: u.member.clone(),
        input_tokens: tokens(u.tokens.input)?,
        cached_tokens: tokens(u.tokens.cached)?,
        output_tokens: tokens(u.tokens.output)?,
        cost_ucr: u.cost.micro(),
        uncollected_ucr: u.uncollected.micro(),
        tier: u.tier.clone(),
        priced_by: u.priced_by.clone(),
        charged: u
            .charged
            .iter()
            .map(|c| {
                let (bucket, grant_id) = match &c.source {
                    Source::Daily => (BucketKind::Daily, None),
                    Source::Subscription => (BucketKind::Subscription, None),
                    Source::Lot(id) => (BucketKind::Bonus, Some(id.0.clone())),
                };
                ChargedPart {
                    bucket,
                    grant_id,
                    amount_ucr: c.amount.micro(),
                }
            })
            .collect(),
        reservation_id: u.reservation_id.as_ref().map(|r| r.0.clone()),
    })
}

/// `seq` is the granting record's seq, or 0 for a lot that already has a row (the upsert
/// keeps the stored one, and refuses a new lot, seq > 0, whose id is stored).
fn grant_row(wallet_id: &str, seq: u64, lot: &Lot) -> GrantRow {
    let (payment_reference, bundle_id, review_id) = match &lot.origin {
        Some(LotOrigin::Bundle {
            bundle_id,
            payment_reference,
        }) => (
            Some(payment_reference.clone()),
            Some(bundle_id.clone()),
            None,
        ),
        Some(LotOrigin::Review { review_id }) => (None, None, Some(review_id.clone())),
        None => (None, None, None),
    };
    GrantRow {
        id: lot.id.0.clone(),
        wallet_id: wallet_id.to_owned(),
        seq,
        kind: grant_kind_name(lot.kind).to_owned(),
        reason: lot.reason.clone(),
        amount_ucr: lot.amount.micro(),
        spent_ucr: lot.spent.micro(),
        held_ucr: lot.held.micro(),
        expired_ucr: lot.expired.micro(),
        expires_at: lot.expires_at,
        payment_reference,
        bundle_id,
        review_id,
        granted_at: lot.granted_at,
    }
}

/// The totals of a lot that `entry` emptied (the core then drops it): nothing remains or
/// is held, what the record expired from it is expired, and the rest of it was spent.
fn final_lot(mut lot: Lot, entry: &Entry) -> Lot {
    let on_lot = |charges: &[credits_core::Charge]| {
        charges
            .iter()
            .filter(|c| c.source == Source::Lot(lot.id.clone()))
            .map(|c| c.amount)
            .sum::<credits_core::Credits>()
    };
    let expired_now = match &entry.kind {
        EntryKind::LotExpired { grant_id, amount } if *grant_id == lot.id => *amount,
        EntryKind::Settled { expired, .. } | EntryKind::Released { expired, .. } => on_lot(expired),
        _ => credits_core::Credits::ZERO,
    };
    lot.expired += expired_now;
    lot.remaining = credits_core::Credits::ZERO;
    lot.held = credits_core::Credits::ZERO;
    lot.spent = lot.amount - lot.expired;
    lot
}

fn reservation_row(wallet_id: &str, seq: u64, r: &credits_core::Reservation) -> ReservationRow {
    ReservationRow {
        id: r.id.0.clone(),
        wallet_id: wallet_id.to_owned(),
        seq,
        status: ReservationStatus::Active,
        amount_ucr: r.amount.micro(),
        member_id: r.member.clone(),
        idempotency_key: Some(r.key.clone()),
        created_at: r.created_at,
        expires_at: r.expires_at,
        settle_input: None,
        settle_result: None,
        resolved_seq: None,
    }
}

impl NewWallet {
    /// The rows of a wallet the core just created (`Wallet::create`).
    pub fn from_core(
        wallet: &Wallet,
        creation: &Entry,
        team_id: Option<String>,
        idempotency_key: Option<CreationKey>,
    ) -> Result<NewWallet, StoreError> {
        Ok(NewWallet {
            id: wallet.id.0.clone(),
            owner_id: wallet.owner_id.clone(),
            team_id,
            timezone: wallet.timezone.name().to_owned(),
            plan_id: wallet.plan_id.0.clone(),
            interval: wallet.interval.as_str().to_owned(),
            daily_ucr: wallet.daily.allowance.micro(),
            subscription_ucr: wallet.subscription.allowance.micro(),
            created_at: wallet.created_at,
            snapshot_json: json(wallet)?,
            next_due_at: Some(wallet.next_due()),
            creation: record(creation, wallet)?,
            idempotency_key,
        })
    }
}

impl WalletBatch {
    /// The batch that records `entries` (already applied by the core, in seq order) on
    /// top of `before`, the durable state at `expected_version`, giving `after`. The
    /// entries are applied again to a copy of `before`, which yields each record's
    /// balance; the snapshot is `after` itself (its clock may have moved without a
    /// record, which replay cannot see).
    pub fn from_core(
        before: &Wallet,
        expected_version: i64,
        entries: &[Entry],
        after: &Wallet,
    ) -> Result<WalletBatch, StoreError> {
        let wallet_id = before.id.0.as_str();
        let mut state = before.clone();
        let mut records = Vec::with_capacity(entries.len());
        let mut usage = Vec::new();
        let mut credits_used = Vec::new();
        let mut scheduled = Vec::new();
        let mut kept_schedule = None;
        let mut holds: BTreeMap<String, ReservationRow> = BTreeMap::new();
        let mut granted_seq: BTreeMap<String, u64> = BTreeMap::new();
        let mut dropped: BTreeMap<String, Lot> = BTreeMap::new();
        for entry in entries {
            if entry.seq != state.seq + 1 {
                return Err(StoreError::InvalidBatch(format!(
                    "entry {} does not follow seq {} of wallet {wallet_id}",
                    entry.seq, state.seq
                )));
            }
            // The reservation as it stood before this record, for settle and release rows.
            let active_before = |id: &credits_core::ReservationId| {
                state
                    .reservation(id)
                    .map(|r| reservation_row(wallet_id, 0, r))
            };
            match &entry.kind {
                EntryKind::Reserved { reservation, .. } => {
                    holds.insert(
                        reservation.id.0.clone(),
                        reservation_row(wallet_id, entry.seq, reservation),
                    );
                }
                EntryKind::Settled {
                    request, usage: u, ..
                } => {
                    let id = u.reservation_id.as_ref().ok_or_else(|| {
                        StoreError::InvalidBatch("settle without reservation".into())
                    })?;
                    let mut row = match holds.remove(&id.0) {
                        Some(row) => row,
                        None => active_before(id).ok_or_else(|| {
                            StoreError::InvalidBatch(format!("settle of unknown {}", id.0))
                        })?,
                    };
                    row.status = ReservationStatus::Settled;
                    row.settle_input = Some(json(request)?);
                    row.settle_result = Some(json(u)?);
                    row.resolved_seq = Some(entry.seq);
                    holds.insert(id.0.clone(), row);
                }
                EntryKind::Released {
                    reservation_id,
                    reason,
                    ..
                } => {
                    let mut row = match holds.remove(&reservation_id.0) {
                        Some(row) => row,
                        None => active_before(reservation_id).ok_or_else(|| {
                            StoreError::InvalidBatch(format!(
                                "release of unknown {}",
                                reservation_id.0
                            ))
                        })?,
                    };
                    row.status = match reason {
                        credits_core::ledger::ReleaseReason::Released => {
                            ReservationStatus::Released
                        }
                        credits_core::ledger::ReleaseReason::Expired => ReservationStatus::Expired,
                    };
                    row.resolved_seq = Some(entry.seq);
                    holds.insert(reservation_id.0.clone(), row);
                }
                EntryKind::Granted { lot, .. }
                    if granted_seq.insert(lot.id.0.clone(), entry.seq).is_some() =>
                {
                    return Err(StoreError::InvalidBatch(format!(
                        "lot {} is granted twice in one batch",
                        lot.id.0
                    )));
                }
                _ => {}
            }
            if let Some(u) = entry.usage() {
                usage.push(usage_row(wallet_id, entry.seq, u)?);
            }
            let lots_before = state.lots.clone();
            state.apply(entry);
            // After the record: a renewal that switches plans took the new plan's credits.
            let used = |daily: Option<Credits>, subscription: Option<Credits>| PlanCredits {
                plan_id: state.plan_id.0.clone(),
                at: entry.at,
                daily_ucr: daily.map(Credits::micro),
                subscription_ucr: subscription.map(Credits::micro),
            };
            match &entry.kind {
                EntryKind::DailyReset { allowance, .. } => {
                    credits_used.push(used(Some(*allowance), None));
                }
                EntryKind::Renewed {
                    allowance, plan, ..
                } => {
                    credits_used.push(used(None, Some(*allowance)));
                    if plan.is_none() {
                        kept_schedule = kept_schedule.or(state.scheduled_plan_id.clone());
                    }
                }
                EntryKind::PlanChanged {
                    daily_allowance,
                    subscription_allowance,
                    ..
                } => credits_used.push(used(Some(*daily_allowance), Some(*subscription_allowance))),
                EntryKind::PlanScheduled {
                    plan_id: Some(plan),
                } => scheduled.push(ScheduledChange {
                    plan_id: plan.0.clone(),
                    at: entry.at,
                    interval: state.interval.as_str().to_owned(),
                    allowance_ucr: state.subscription.allowance.micro(),
                }),
                _ => {}
            }
            // The core drops a lot once nothing is left in it or held from it; its row
            // still needs its final totals.
            for lot in lots_before {
                if state.lot(&lot.id).is_none() {
                    dropped.insert(lot.id.0.clone(), final_lot(lot, entry));
                }
            }
            records.push(record(entry, &state)?);
        }
        // The batch must be exactly what turned `before` into `after`, or the ledger and
        // the snapshot would disagree after a reload.
        state.now = after.now;
        if &state != after {
            return Err(StoreError::InvalidBatch(format!(
                "the entries do not turn wallet {wallet_id} at seq {} into the state after them",
                before.seq
            )));
        }
        // Every lot whose totals moved, or that is new, or that the core dropped.
        let grants = after
            .lots
            .iter()
            .filter(|lot| before.lot(&lot.id) != Some(*lot))
            .chain(dropped.values())
            .map(|lot| {
                grant_row(
                    wallet_id,
                    granted_seq.get(&lot.id.0).copied().unwrap_or(0),
                    lot,
                )
            })
            .collect();
        Ok(WalletBatch {
            wallet_id: wallet_id.to_owned(),
            expected_version,
            seq: after.seq,
            snapshot_json: json(after)?,
            next_due_at: Some(after.next_due()),
            timezone: after.timezone.name().to_owned(),
            plan_id: after.plan_id.0.clone(),
            scheduled_plan_id: after.scheduled_plan_id.as_ref().map(|p| p.0.clone()),
            schedules: after
                .scheduled_plan_id
                .as_ref()
                .filter(|p| before.scheduled_plan_id.as_ref() != Some(*p))
                .map(|p| p.0.clone()),
            moves_to: (before.plan_id != after.plan_id)
                .then(|| (after.plan_id.0.clone(), after.interval.as_str().to_owned())),
            credits_used,
            scheduled,
            kept_schedule: kept_schedule.map(|p| p.0),
            entries: records,
            usage,
            grants,
            reservations: holds.into_values().collect(),
            review: None,
        })
    }
}

impl LedgerRecord {
    /// The core entry this record stores.
    pub fn entry(&self) -> Result<Entry, StoreError> {
        serde_json::from_str(&self.entry_json)
            .map_err(|e| corrupt(format!("ledger entry {}: {e}", self.seq)))
    }

    /// The wallet's balance right after this record.
    pub fn balance(&self) -> Result<credits_core::Balance, StoreError> {
        serde_json::from_str(&self.balance_json)
            .map_err(|e| corrupt(format!("ledger balance {}: {e}", self.seq)))
    }
}

impl ReservationRow {
    /// What a settled reservation recorded: the canonical input of its settle, compared
    /// on a repeated settle, and the usage it returns then. `None` before it is settled.
    pub fn settlement(&self) -> Result<Option<(Request, UsageRecord)>, StoreError> {
        let (Some(input), Some(result)) = (&self.settle_input, &self.settle_result) else {
            return Ok(None);
        };
        let read = |what: &str, e: serde_json::Error| {
            corrupt(format!("settle {what} of reservation {}: {e}", self.id))
        };
        let request = serde_json::from_str(input).map_err(|e| read("input", e))?;
        let usage = serde_json::from_str(result).map_err(|e| read("receipt", e))?;
        Ok(Some((request, usage)))
    }
}

impl StoredWallet {
    /// The core state this row stores.
    pub fn state(&self) -> Result<Wallet, StoreError> {
        let wallet: Wallet = serde_json::from_str(&self.snapshot_json)
            .map_err(|e| corrupt(format!("snapshot of {}: {e}", self.id)))?;
        if wallet.seq != self.seq {
            return Err(corrupt(format!(
                "snapshot of {} is at seq {}, row at {}",
                self.id, wallet.seq, self.seq
            )));
        }
        Ok(wallet)
    }
}

/// Ledger records read per query while replaying a wallet.
const REPLAY_PAGE: usize = MAX_LIST;

impl Store {
    /// A wallet's state (from its snapshot) and its version.
    pub async fn load_state(&self, wallet_id: &str) -> Result<Option<(Wallet, i64)>, StoreError> {
        match self.load_wallet(wallet_id).await? {
            Some(row) => Ok(Some((row.state()?, row.version))),
            None => Ok(None),
        }
    }

    /// Commits `entries` (already applied by the core) that turned the stored state at
    /// `expected_version` into `after`, for callers that do not keep the state before the
    /// batch (e.g. an actor holding only its speculative state): the stored snapshot is
    /// read in the same transaction as the fenced write. Costs one read and one
    /// snapshot decode more than [`Store::commit`].
    pub async fn commit_entries(
        &self,
        expected_version: i64,
        entries: &[Entry],
        after: &Wallet,
    ) -> Result<i64, crate::CommitError> {
        let wallet_id = after.id.0.as_str();
        let txn = self.begin_write().await?;
        let outcome = async {
            let row = crate::entity::wallets::Entity::find_by_id(wallet_id.to_owned())
                .one(&txn)
                .await?
                .ok_or_else(|| crate::CommitError::NotFound(wallet_id.to_owned()))?;
            if row.version != expected_version {
                return Err(crate::CommitError::Conflict {
                    wallet_id: wallet_id.to_owned(),
                    expected_version,
                });
            }
            let before = crate::wallet::stored_wallet(row)?.state()?;
            let batch = WalletBatch::from_core(&before, expected_version, entries, after)?;
            crate::wallet::write_checked(&txn, &batch).await
        }
        .await;
        match outcome {
            Ok(version) => {
                txn.commit().await?;
                Ok(version)
            }
            Err(err) => {
                // As in `commit`: the batch's error is the one the caller acts on.
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }

    /// Rebuilds a wallet from its whole ledger (the check behind every snapshot; see
    /// docs for its cost), reading it in pages of [`MAX_LIST`] records.
    pub async fn replay_wallet(&self, wallet_id: &str) -> Result<Option<Wallet>, StoreError> {
        self.replay_to(wallet_id, i64::MAX).await
    }

    /// Whether a wallet's ledger, replayed up to its snapshot's seq, gives its snapshot
    /// (the clock aside: it moves without records); `None` when there is no such wallet.
    /// The records up to that seq were written with the snapshot, so a commit landing
    /// meanwhile changes nothing read.
    pub async fn replays_to_snapshot(&self, wallet_id: &str) -> Result<Option<bool>, StoreError> {
        let Some((stored, _)) = self.load_state(wallet_id).await? else {
            return Ok(None);
        };
        let seq = crate::time::seq_to_db(stored.seq)?;
        let Some(mut replayed) = self.replay_to(wallet_id, seq).await? else {
            return Ok(Some(false));
        };
        replayed.now = stored.now;
        if replayed != stored {
            return Ok(Some(false));
        }
        // Records past the snapshot's seq, with the row still at it (a commit meanwhile
        // moves the row too): the wallet's next commit could never land.
        let last: Option<Option<i64>> = ledger::Entity::find()
            .select_only()
            .column_as(ledger::Column::Seq.max(), "last")
            .filter(ledger::Column::WalletId.eq(wallet_id))
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?;
        let beyond = last.flatten().is_some_and(|last| last > seq);
        Ok(Some(
            !beyond || self.wallet_seq(wallet_id).await? != Some(stored.seq),
        ))
    }

    /// Every wallet id after `after` (in id order), at most `limit` (≤ [`MAX_LIST`]).
    pub async fn wallet_ids_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        crate::bound("wallet ids", limit, MAX_LIST)?;
        wallets::Entity::find()
            .select_only()
            .column(wallets::Column::Id)
            .apply_if(after, |q, a| q.filter(wallets::Column::Id.gt(a)))
            .order_by_asc(wallets::Column::Id)
            .limit(limit as u64)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(StoreError::Db)
    }

    async fn replay_to(&self, wallet_id: &str, last: i64) -> Result<Option<Wallet>, StoreError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut after: i64 = -1;
        loop {
            let page = ledger::Entity::find()
                .select_only()
                .column(ledger::Column::Seq)
                .column(ledger::Column::Entry)
                .filter(ledger::Column::WalletId.eq(wallet_id))
                .filter(ledger::Column::Seq.gt(after))
                .filter(ledger::Column::Seq.lte(last))
                .order_by_asc(ledger::Column::Seq)
                .limit(REPLAY_PAGE as u64)
                .into_tuple::<(i64, String)>()
                .all(&self.db)
                .await
                .map_err(StoreError::Db)?;
            let n = page.len();
            for (seq, text) in page {
                after = seq;
                entries.push(
                    serde_json::from_str(&text)
                        .map_err(|e| corrupt(format!("ledger entry {seq}: {e}")))?,
                );
            }
            if n < REPLAY_PAGE {
                break;
            }
        }
        if entries.is_empty() {
            return Ok(None);
        }
        // A ledger the service did not write (edited by hand, a bug) may name what replay
        // cannot find: refused as corrupt, not a panic of the caller's.
        match std::panic::catch_unwind(|| replay(&entries)) {
            Ok(replayed) => replayed
                .map(Some)
                .map_err(|e| corrupt(format!("replay of {wallet_id}: {e}"))),
            Err(_) => Err(corrupt(format!(
                "replay of {wallet_id}: a record names what the records before it did not make"
            ))),
        }
    }

    /// Ledger records of a wallet with seq in (after, after + limit], as core entries.
    pub async fn entries_after(
        &self,
        wallet_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.events_after(wallet_id, after_seq, limit)
            .await?
            .iter()
            .map(LedgerRecord::entry)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A settle recorded unreadably is the store's fault (UNAVAILABLE to the caller), not
    /// the caller's input (it was INVALID_INPUT, from the façade's own parse).
    #[test]
    fn an_unreadable_settlement_is_corrupt_data() {
        let mut row = ReservationRow {
            id: "res_1".into(),
            wallet_id: "wal_1".into(),
            seq: 2,
            status: ReservationStatus::Settled,
            amount_ucr: 1,
            member_id: None,
            idempotency_key: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            expires_at: chrono::DateTime::UNIX_EPOCH,
            settle_input: None,
            settle_result: None,
            resolved_seq: Some(3),
        };
        assert!(matches!(row.settlement(), Ok(None)));
        row.settle_input = Some("{".into());
        row.settle_result = Some("{}".into());
        assert!(matches!(row.settlement(), Err(StoreError::Corrupt(m)) if m.contains("res_1")));
    }
}
