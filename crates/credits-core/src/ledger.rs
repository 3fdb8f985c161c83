//! The ledger: one append-only record per operation or due event, numbered by a per-wallet
//! sequence. A record carries every amount it moved and every instant it set, so applying
//! records in order rebuilds a wallet exactly without reading plans or calendars. This
//! module owns the record types and replay; it must never decide anything (that is
//! `wallet`'s job) — it only applies what was decided.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::calendar::BillingInterval;
use crate::plan::{GrantId, PlanId, ReservationId, UsageId, WalletId};
use crate::wallet::{DailyBucket, Lot, Reservation, SubscriptionBucket, Wallet};

/// Where credits sit: a bucket or one bonus lot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Source {
    Daily,
    Subscription,
    Lot(GrantId),
}

/// An amount taken from (or returned to) one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub source: Source,
    pub amount: Credits,
}

/// Token counts of one AI interaction (`cached ≤ input`, all ≥ 0, checked at the edge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
}

/// The canonical input of a key-carrying operation: two calls with one key are the same
/// operation exactly when their requests are equal (SPEC 4, idempotency).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    RecordUsage {
        thread_id: String,
        model: String,
        tokens: Tokens,
        member: Option<String>,
    },
    Reserve {
        amount: Credits,
        ttl_seconds: u32,
        member: Option<String>,
    },
    Grant {
        amount: Credits,
        kind: GrantKind,
        reason: String,
        expires_at: Option<DateTime<Utc>>,
    },
    Settle {
        thread_id: String,
        model: String,
        tokens: Tokens,
    },
}

/// The kinds of bonus lot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GrantKind {
    Admin,
    Promotion,
    Community,
    Compensation,
    Purchase,
}

impl GrantKind {
    /// PURCHASE and COMPENSATION lots never expire (SPEC 3).
    pub fn may_expire(self) -> bool {
        matches!(
            self,
            GrantKind::Admin | GrantKind::Promotion | GrantKind::Community
        )
    }
}

/// One debit for an AI interaction, as the usage history shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: UsageId,
    pub key: String,
    pub thread_id: String,
    pub model: String,
    pub tier: String,
    pub member: Option<String>,
    pub tokens: Tokens,
    pub cost: Credits,
    /// One entry per source that paid, in burn-down order, no zero entries.
    pub charged: Vec<Charge>,
    /// Cost a settle could not collect; written off (SPEC 4).
    pub uncollected: Credits,
    pub priced_by: String,
    pub reservation_id: Option<ReservationId>,
    pub at: DateTime<Utc>,
}

/// What a wallet looked like when it was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub wallet_id: WalletId,
    pub owner_id: String,
    pub pool: bool,
    pub timezone: Tz,
    pub plan_id: PlanId,
    pub interval: BillingInterval,
    pub billing_anchor: DateTime<Utc>,
    pub daily: DailyBucket,
    pub subscription: SubscriptionBucket,
}

/// Why a reservation's held credits were freed without a settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    Released,
    Expired,
}

/// The change one record makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Created(Box<Created>),
    Usage {
        request: Request,
        usage: Box<UsageRecord>,
    },
    Reserved {
        request: Request,
        reservation: Reservation,
    },
    Settled {
        request: Request,
        usage: Box<UsageRecord>,
        /// Parts of the charge paid from the held credits (the rest came from the balance).
        from_held: Vec<Charge>,
        returned: Vec<Charge>,
        expired: Vec<Charge>,
    },
    Released {
        reservation_id: ReservationId,
        reason: ReleaseReason,
        returned: Vec<Charge>,
        expired: Vec<Charge>,
    },
    Granted {
        request: Option<Request>,
        key: Option<String>,
        lot: Lot,
    },
    LotExpired {
        grant_id: GrantId,
        amount: Credits,
    },
    Renewed {
        expired: Credits,
        allowance: Credits,
        period_start: DateTime<Utc>,
        period_end: DateTime<Utc>,
        /// A scheduled plan taking effect with this renewal.
        plan: Option<(PlanId, BillingInterval)>,
    },
    DailyReset {
        expired: Credits,
        allowance: Credits,
        day_start: DateTime<Utc>,
        next_reset: DateTime<Utc>,
    },
    PlanChanged {
        plan_id: PlanId,
        daily_added: Credits,
        subscription_added: Credits,
        daily_allowance: Credits,
        subscription_allowance: Credits,
    },
    PlanScheduled {
        plan_id: Option<PlanId>,
    },
    TimezoneChanged {
        timezone: Tz,
        next_reset: DateTime<Utc>,
    },
}

/// What a record means to a subscriber (SPEC 8, `BalanceCause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cause {
    Created,
    Usage,
    Reservation,
    Settlement,
    Release,
    Grant,
    DailyReset,
    Renewal,
    Expiry,
    PlanChange,
    TimezoneChange,
}

/// One ledger record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
}

impl Entry {
    /// Whether the wallet made this record by itself as time passed (a reset, a renewal,
    /// an expiry), not in answer to a call.
    pub fn fell_due(&self) -> bool {
        matches!(
            self.kind,
            EntryKind::DailyReset { .. }
                | EntryKind::Renewed { .. }
                | EntryKind::LotExpired { .. }
                | EntryKind::Released {
                    reason: ReleaseReason::Expired,
                    ..
                }
        )
    }

    pub fn cause(&self) -> Cause {
        match &self.kind {
            EntryKind::Created(_) => Cause::Created,
            EntryKind::Usage { .. } => Cause::Usage,
            EntryKind::Reserved { .. } => Cause::Reservation,
            EntryKind::Settled { .. } => Cause::Settlement,
            EntryKind::Released { .. } => Cause::Release,
            EntryKind::Granted { .. } => Cause::Grant,
            EntryKind::LotExpired { .. } => Cause::Expiry,
            EntryKind::Renewed { .. } => Cause::Renewal,
            EntryKind::DailyReset { .. } => Cause::DailyReset,
            EntryKind::PlanChanged { .. } | EntryKind::PlanScheduled { .. } => Cause::PlanChange,
            EntryKind::TimezoneChanged { .. } => Cause::TimezoneChange,
        }
    }

    /// The wallet-scoped idempotency key this record consumed, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        match &self.kind {
            EntryKind::Usage { usage, .. } => Some(&usage.key),
            EntryKind::Reserved { reservation, .. } => Some(&reservation.key),
            EntryKind::Granted { key, .. } => key.as_deref(),
            _ => None,
        }
    }

    /// The canonical input stored with a keyed record, to tell a replay from a conflict.
    pub fn request(&self) -> Option<&Request> {
        match &self.kind {
            EntryKind::Usage { request, .. }
            | EntryKind::Reserved { request, .. }
            | EntryKind::Settled { request, .. } => Some(request),
            EntryKind::Granted { request, .. } => request.as_ref(),
            _ => None,
        }
    }

    /// The usage event of a USAGE or SETTLEMENT record.
    pub fn usage(&self) -> Option<&UsageRecord> {
        match &self.kind {
            EntryKind::Usage { usage, .. } | EntryKind::Settled { usage, .. } => Some(usage),
            _ => None,
        }
    }

    /// The lot a GRANT record created.
    pub fn grant(&self) -> Option<&Lot> {
        match &self.kind {
            EntryKind::Granted { lot, .. } => Some(lot),
            _ => None,
        }
    }

    /// Net flows of this record, for the conservation check (SPEC 11).
    pub fn flows(&self) -> Flows {
        let sum = |charges: &[Charge]| charges.iter().map(|c| c.amount).sum::<Credits>();
        let mut f = Flows::default();
        match &self.kind {
            EntryKind::Created(c) => f.granted = c.daily.remaining + c.subscription.remaining,
            EntryKind::Usage { usage, .. } => f.debited = usage.cost - usage.uncollected,
            EntryKind::Reserved { reservation, .. } => f.held = reservation.amount,
            EntryKind::Settled {
                usage,
                from_held,
                returned,
                expired,
                ..
            } => {
                let held_total = sum(from_held) + sum(returned) + sum(expired);
                f.held = Credits::ZERO - held_total;
                f.debited = usage.cost - usage.uncollected;
                f.expired = sum(expired);
            }
            EntryKind::Released {
                returned, expired, ..
            } => {
                f.held = Credits::ZERO - (sum(returned) + sum(expired));
                f.expired = sum(expired);
            }
            EntryKind::Granted { lot, .. } => f.granted = lot.amount,
            EntryKind::LotExpired { amount, .. } => f.expired = *amount,
            EntryKind::Renewed {
                expired, allowance, ..
            }
            | EntryKind::DailyReset {
                expired, allowance, ..
            } => {
                f.granted = *allowance;
                f.expired = *expired;
            }
            EntryKind::PlanChanged {
                daily_added,
                subscription_added,
                ..
            } => {
                f.granted = *daily_added + *subscription_added;
            }
            EntryKind::PlanScheduled { .. } | EntryKind::TimezoneChanged { .. } => {}
        }
        f
    }
}

/// Credits a record moved: into the wallet, out by debit or expiry, and into holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flows {
    pub granted: Credits,
    pub debited: Credits,
    pub expired: Credits,
    /// Change in held (reserved) credits.
    pub held: Credits,
}

impl std::ops::Add for Flows {
    type Output = Flows;
    fn add(self, o: Flows) -> Flows {
        Flows {
            granted: self.granted + o.granted,
            debited: self.debited + o.debited,
            expired: self.expired + o.expired,
            held: self.held + o.held,
        }
    }
}

/// Why a list of records does not rebuild a wallet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the ledger is empty")]
    Empty,
    #[error("the first record is not a wallet creation")]
    NotCreated,
    #[error("record {found} follows record {previous}: sequence numbers must rise by one")]
    Gap { previous: u64, found: u64 },
}

/// Rebuilds a wallet from its whole ledger.
pub fn replay<'a, I: IntoIterator<Item = &'a Entry>>(entries: I) -> Result<Wallet, ReplayError> {
    let mut entries = entries.into_iter();
    let first = entries.next().ok_or(ReplayError::Empty)?;
    let EntryKind::Created(created) = &first.kind else {
        return Err(ReplayError::NotCreated);
    };
    let mut wallet = Wallet::from_created(first.seq, first.at, created);
    for entry in entries {
        if entry.seq != wallet.seq + 1 {
            return Err(ReplayError::Gap {
                previous: wallet.seq,
                found: entry.seq,
            });
        }
        wallet.apply(entry);
    }
    Ok(wallet)
}
