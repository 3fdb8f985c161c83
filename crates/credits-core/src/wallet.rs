//! One wallet's state and the rules that change it (SPEC 3–5). Every change is decided here
//! as a ledger record and then applied through `Wallet::apply`, the same function replay
//! uses, so a live wallet and a replayed one cannot differ. Nothing here reads a clock or
//! does I/O: time arrives as an argument to `advance_to`, plans through `Plans`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::calendar::{self, BillingInterval};
use crate::ledger::{
    Charge, Created, Entry, EntryKind, GrantKind, ReleaseReason, Request, Source, Tokens,
    UsageRecord,
};
use crate::plan::{GrantId, Plan, PlanId, Plans, ReservationId, UsageId, WalletId};

/// Longest free text a caller may attach (reason, task description, note).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest thread id, idempotency key, payment reference or user id.
pub const MAX_KEY_CHARS: usize = 128;
/// Reservation time-to-live bounds in seconds (SPEC 4).
pub const RESERVATION_TTL_SECONDS: std::ops::RangeInclusive<u32> = 1..=3600;

/// The daily allowance, reset at local midnight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyBucket {
    pub allowance: Credits,
    pub remaining: Credits,
    /// When the current day began for this wallet: its last reset, or its creation.
    pub day_start: DateTime<Utc>,
    pub next_reset: DateTime<Utc>,
}

/// The subscription allowance of the current billing period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionBucket {
    pub allowance: Credits,
    pub remaining: Credits,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// Where a purchased or compensating lot came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LotOrigin {
    Bundle {
        bundle_id: String,
        payment_reference: String,
    },
    Review {
        review_id: String,
    },
}

/// What a lot with an origin is the one lot for: a payment buys one lot (SPEC 5), a
/// review is compensated once (SPEC 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnceFor<'a> {
    Payment(&'a str),
    Review(&'a str),
}

impl LotOrigin {
    pub fn once_for(&self) -> OnceFor<'_> {
        match self {
            LotOrigin::Bundle {
                payment_reference, ..
            } => OnceFor::Payment(payment_reference),
            LotOrigin::Review { review_id } => OnceFor::Review(review_id),
        }
    }
}

/// One bonus lot. `amount = remaining + held + spent + expired` always.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub id: GrantId,
    pub kind: GrantKind,
    pub amount: Credits,
    pub remaining: Credits,
    pub held: Credits,
    pub spent: Credits,
    pub expired: Credits,
    pub reason: Option<String>,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set by the lot's expiry record; held credits of an expired lot expire when freed.
    pub expiry_applied: bool,
    pub origin: Option<LotOrigin>,
}

/// Credits taken out of one source into a reservation. `epoch` names the day (its start) or
/// the period (its start) the credits came from, so they return only to that same day or period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub source: Source,
    pub amount: Credits,
    pub epoch: DateTime<Utc>,
}

/// An ACTIVE reservation. Finished ones live only in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub key: String,
    pub amount: Credits,
    pub member: Option<String>,
    /// In burn-down order.
    pub parts: Vec<Hold>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A pool member's spend in the pool's current day and period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpend {
    pub today: Credits,
    pub period: Credits,
}

/// A spending pool member and their limits (`None` = no limit, zero forbids spending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub daily_limit: Option<Credits>,
    pub period_limit: Option<Credits>,
    /// The pool's members version these limits were read at (0 where nothing stores
    /// members). The core ignores it; a wallet actor decides no spend on limits older than
    /// the version it loaded, since they have changed since (on another node, maybe).
    pub limits_version: i64,
}

/// The whole state of one wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    pub id: WalletId,
    pub owner_id: String,
    /// A team pool: every spend names a member.
    pub pool: bool,
    pub timezone: Tz,
    pub plan_id: PlanId,
    pub scheduled_plan_id: Option<PlanId>,
    pub interval: BillingInterval,
    pub billing_anchor: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The wallet's own time: the latest instant applied. Never moves backwards.
    pub now: DateTime<Utc>,
    /// Seq of the last record applied.
    pub seq: u64,
    pub daily: DailyBucket,
    pub subscription: SubscriptionBucket,
    /// Lots with credits left or held, in grant order.
    pub lots: Vec<Lot>,
    /// Active reservations in creation order.
    pub reservations: Vec<Reservation>,
    pub members: BTreeMap<String, MemberSpend>,
}

/// The balance as clients see it (SPEC 8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub total: Credits,
    pub reserved: Credits,
    pub daily: DailyBucket,
    pub subscription: SubscriptionBucket,
    pub bonus_remaining: Credits,
    /// Unexpired lots with credits left, in spend order.
    pub grants: Vec<Lot>,
}

/// A refused operation. It changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("plan {plan} does not allow the {tier} tier")]
    ModelNotAllowed { tier: String, plan: PlanId },
    #[error("member {member} would exceed their {which} limit")]
    MemberLimitExceeded { member: String, which: &'static str },
    #[error("insufficient credits: {needed} needed, {available} spendable")]
    InsufficientCredits { needed: Credits, available: Credits },
    #[error("reservation is not active")]
    ReservationNotActive,
    #[error("idempotency key already used for another operation")]
    IdempotencyConflict,
}

fn invalid(msg: impl Into<String>) -> OpError {
    OpError::InvalidInput(msg.into())
}

/// A new wallet.
#[derive(Clone, Debug)]
pub struct NewWallet {
    pub id: WalletId,
    pub owner_id: String,
    pub pool: bool,
    pub timezone: Tz,
    pub plan_id: PlanId,
    pub billing_anchor: Option<DateTime<Utc>>,
}

/// An interaction to pay for, already priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageOp {
    pub id: UsageId,
    pub key: String,
    pub thread_id: String,
    pub model: String,
    pub tier: String,
    pub tokens: Tokens,
    pub cost: Credits,
    pub priced_by: String,
    pub member: Option<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveOp {
    pub id: ReservationId,
    pub key: String,
    pub amount: Credits,
    pub ttl_seconds: u32,
    pub member: Option<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleOp {
    pub reservation_id: ReservationId,
    pub usage_id: UsageId,
    pub thread_id: String,
    pub model: String,
    pub tier: String,
    pub tokens: Tokens,
    pub cost: Credits,
    pub priced_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantOp {
    pub id: GrantId,
    /// Idempotency key; purchases are keyed by their payment reference instead.
    pub key: Option<String>,
    pub amount: Credits,
    pub kind: GrantKind,
    pub reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub origin: Option<LotOrigin>,
}

/// Every operation a caller can ask of a wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Usage(UsageOp),
    Reserve(ReserveOp),
    Settle(SettleOp),
    Release(ReservationId),
    Grant(GrantOp),
    ChangePlan(PlanId),
    SetTimezone(Tz),
}

impl Op {
    /// The canonical input compared on an idempotent retry (SPEC 4).
    pub fn request(&self) -> Option<Request> {
        match self {
            Op::Usage(u) => Some(Request::RecordUsage {
                thread_id: u.thread_id.clone(),
                model: u.model.clone(),
                tokens: u.tokens,
                member: u.member.as_ref().map(|m| m.id.clone()),
            }),
            Op::Reserve(r) => Some(Request::Reserve {
                amount: r.amount,
                ttl_seconds: r.ttl_seconds,
                member: r.member.as_ref().map(|m| m.id.clone()),
            }),
            Op::Settle(s) => Some(Request::Settle {
                thread_id: s.thread_id.clone(),
                model: s.model.clone(),
                tokens: s.tokens,
            }),
            Op::Grant(g) if g.key.is_some() => Some(Request::Grant {
                amount: g.amount,
                kind: g.kind,
                reason: g.reason.clone().unwrap_or_default(),
                expires_at: g.expires_at,
            }),
            _ => None,
        }
    }

    /// The wallet-scoped idempotency key the operation carries.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Usage(u) => Some(&u.key),
            Op::Reserve(r) => Some(&r.key),
            Op::Grant(g) => g.key.as_deref(),
            _ => None,
        }
    }

    /// The pool member spending, with their limits.
    pub fn member(&self) -> Option<&Member> {
        match self {
            Op::Usage(u) => u.member.as_ref(),
            Op::Reserve(r) => r.member.as_ref(),
            _ => None,
        }
    }

    /// Replaces the pool member spending (and their limits).
    pub fn set_member(&mut self, member: Option<Member>) {
        match self {
            Op::Usage(u) => u.member = member,
            Op::Reserve(r) => r.member = member,
            _ => {}
        }
    }
}

/// What a recorded key says about a new call carrying it.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck<'a> {
    /// The key is unused: run the operation.
    Fresh,
    /// Same operation, same input: answer with the original record.
    Replay(&'a Entry),
    /// The key names another operation.
    Conflict,
}

/// Tells a replay from a conflict for a call whose key may already be recorded.
pub fn check_key<'a>(recorded: Option<&'a Entry>, request: Option<&Request>) -> KeyCheck<'a> {
    match recorded {
        None => KeyCheck::Fresh,
        Some(entry) if entry.request().is_some() && entry.request() == request => {
            KeyCheck::Replay(entry)
        }
        Some(_) => KeyCheck::Conflict,
    }
}

fn check_text(name: &str, value: &str, max: usize, allow_empty: bool) -> Result<(), OpError> {
    let n = value.chars().count();
    if (!allow_empty && n == 0) || n > max {
        let min = if allow_empty { 0 } else { 1 };
        return Err(invalid(format!("{name} must be {min} to {max} characters")));
    }
    if value.contains('\0') {
        // PostgreSQL cannot store it in text; SQLite would: the stores would differ.
        return Err(invalid(format!("{name} must not contain U+0000 (NUL)")));
    }
    Ok(())
}

impl Wallet {
    /// Opens a wallet with its plan's full daily and subscription allowance.
    pub fn create(
        new: NewWallet,
        plans: &(impl Plans + ?Sized),
        now: DateTime<Utc>,
    ) -> Result<(Wallet, Entry), OpError> {
        check_text("ownerId", &new.owner_id, MAX_KEY_CHARS, false)?;
        let anchor = new.billing_anchor.unwrap_or(now);
        if anchor > now {
            return Err(invalid("billingAnchor must not be after now"));
        }
        let plan = plans.plan(&new.plan_id).ok_or(OpError::NotFound("plan"))?;
        plan.check_offered().map_err(invalid)?;
        let (period_start, period_end) = calendar::billing_period(anchor, plan.interval, now);
        // By the instant, as a plan change takes them, so that a node whose clock is behind
        // the node that edited the plan opens the wallet as the commit check expects
        // (found by review: it opened with the edit's credits before the edit's instant,
        // and was refused until its clock passed it).
        let (daily, subscription) = plan.credits_after(now);
        let created = Created {
            wallet_id: new.id,
            owner_id: new.owner_id,
            pool: new.pool,
            timezone: new.timezone,
            plan_id: plan.id.clone(),
            interval: plan.interval,
            billing_anchor: anchor,
            daily: DailyBucket {
                allowance: daily,
                remaining: daily,
                day_start: now,
                next_reset: calendar::next_daily_reset(new.timezone, now),
            },
            subscription: SubscriptionBucket {
                allowance: subscription,
                remaining: subscription,
                period_start,
                period_end,
            },
        };
        let entry = Entry {
            seq: 0,
            at: now,
            kind: EntryKind::Created(Box::new(created)),
        };
        let EntryKind::Created(c) = &entry.kind else {
            unreachable!()
        };
        let wallet = Wallet::from_created(0, now, c);
        Ok((wallet, entry))
    }

    pub(crate) fn from_created(seq: u64, at: DateTime<Utc>, c: &Created) -> Wallet {
        Wallet {
            id: c.wallet_id.clone(),
            owner_id: c.owner_id.clone(),
            pool: c.pool,
            timezone: c.timezone,
            plan_id: c.plan_id.clone(),
            scheduled_plan_id: None,
            interval: c.interval,
            billing_anchor: c.billing_anchor,
            created_at: at,
            now: at,
            seq,
            daily: c.daily.clone(),
            subscription: c.subscription.clone(),
            lots: Vec::new(),
            reservations: Vec::new(),
            members: BTreeMap::new(),
        }
    }

    // ---- reading -------------------------------------------------------------------------

    /// Credits that can be spent now: daily + subscription + unexpired bonus remaining.
    pub fn spendable(&self) -> Credits {
        self.daily.remaining + self.subscription.remaining + self.bonus_remaining()
    }

    fn bonus_remaining(&self) -> Credits {
        self.lots
            .iter()
            .filter(|l| !l.expiry_applied)
            .map(|l| l.remaining)
            .sum()
    }

    pub fn reserved(&self) -> Credits {
        self.reservations.iter().map(|r| r.amount).sum()
    }

    pub fn balance(&self) -> Balance {
        Balance {
            total: self.spendable(),
            reserved: self.reserved(),
            daily: self.daily.clone(),
            subscription: self.subscription.clone(),
            bonus_remaining: self.bonus_remaining(),
            grants: self
                .lots_in_spend_order()
                .into_iter()
                .map(|i| &self.lots[i])
                .filter(|l| !l.expiry_applied && l.remaining.is_positive())
                .cloned()
                .collect(),
        }
    }

    pub fn lot(&self, id: &GrantId) -> Option<&Lot> {
        self.lots.iter().find(|l| &l.id == id)
    }

    pub fn reservation(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.iter().find(|r| &r.id == id)
    }

    /// A member's spend today, this period, and their active reservations.
    pub fn member_usage(&self, member: &str) -> (Credits, Credits, Credits) {
        let spend = self.members.get(member).cloned().unwrap_or_default();
        let held = self
            .reservations
            .iter()
            .filter(|r| r.member.as_deref() == Some(member))
            .map(|r| r.amount)
            .sum();
        (spend.today, spend.period, held)
    }

    /// Whether something due at or before `t` is not applied yet (see
    /// [`Wallet::advance_at_most`]).
    pub fn behind(&self, t: DateTime<Utc>) -> bool {
        // A step may have stopped inside an instant past `t` (a clock behind the wallet's).
        self.now < t || self.next_due() <= t.max(self.now)
    }

    /// The next instant at which something falls due: a reservation or lot expiry, a
    /// renewal or a daily reset.
    pub fn next_due(&self) -> DateTime<Utc> {
        let reservations = self.reservations.iter().map(|r| r.expires_at);
        let lots = self
            .lots
            .iter()
            .filter(|l| !l.expiry_applied)
            .filter_map(|l| l.expires_at);
        reservations
            .chain(lots)
            .chain([self.subscription.period_end, self.daily.next_reset])
            .min()
            .expect("a wallet always has a next reset")
    }

    /// Lot indices in the order they are spent: soonest expiry first, no expiry last, then
    /// grant order (their position in the ledger, never a timestamp or id).
    fn lots_in_spend_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lots.len()).collect();
        order.sort_by_key(|&i| {
            (
                self.lots[i].expires_at.is_none(),
                self.lots[i].expires_at,
                i,
            )
        });
        order
    }

    /// Position of a source in burn-down order.
    fn burn_rank(&self, source: &Source) -> (u8, usize) {
        match source {
            Source::Daily => (0, 0),
            Source::Subscription => (1, 0),
            Source::Lot(id) => {
                let idx = self
                    .lots
                    .iter()
                    .position(|l| &l.id == id)
                    .unwrap_or(usize::MAX);
                let rank = self
                    .lots_in_spend_order()
                    .iter()
                    .position(|&i| i == idx)
                    .unwrap_or(usize::MAX);
                (2, rank)
            }
        }
    }

    /// Takes up to `amount` from the spendable balance in burn-down order.
    fn take(&self, amount: Credits) -> Vec<Charge> {
        let mut left = amount;
        let mut charges = Vec::new();
        let mut take_from = |source: Source, available: Credits, left: &mut Credits| {
            let n = available.min(*left);
            if n.is_positive() {
                charges.push(Charge { source, amount: n });
                *left -= n;
            }
        };
        take_from(Source::Daily, self.daily.remaining, &mut left);
        take_from(Source::Subscription, self.subscription.remaining, &mut left);
        for i in self.lots_in_spend_order() {
            let lot = &self.lots[i];
            if !lot.expiry_applied {
                take_from(Source::Lot(lot.id.clone()), lot.remaining, &mut left);
            }
        }
        charges
    }

    fn epoch_of(&self, source: &Source) -> DateTime<Utc> {
        match source {
            Source::Daily => self.daily.day_start,
            Source::Subscription => self.subscription.period_start,
            Source::Lot(_) => self.now,
        }
    }

    /// Splits freed held credits into those that go back to their source and those that
    /// expire because their day, period or lot is gone.
    fn free_holds<'a>(
        &self,
        parts: impl IntoIterator<Item = &'a Hold>,
    ) -> (Vec<Charge>, Vec<Charge>) {
        let (mut returned, mut expired) = (Vec::new(), Vec::new());
        for part in parts {
            let still_valid = match &part.source {
                Source::Daily => part.epoch == self.daily.day_start,
                Source::Subscription => part.epoch == self.subscription.period_start,
                Source::Lot(id) => self.lot(id).is_some_and(|l| !l.expiry_applied),
            };
            if part.amount.is_positive() {
                let charge = Charge {
                    source: part.source.clone(),
                    amount: part.amount,
                };
                if still_valid {
                    returned.push(charge)
                } else {
                    expired.push(charge)
                }
            }
        }
        (returned, expired)
    }

    fn plan<'p>(&self, plans: &'p (impl Plans + ?Sized)) -> Result<&'p Plan, OpError> {
        plans.plan(&self.plan_id).ok_or(OpError::NotFound("plan"))
    }

    /// MODEL_NOT_ALLOWED unless the wallet's plan allows the tier (quote runs this too).
    pub fn check_tier(&self, tier: &str, plans: &(impl Plans + ?Sized)) -> Result<(), OpError> {
        let plan = self.plan(plans)?;
        if plan.allows_tier(tier) {
            Ok(())
        } else {
            Err(OpError::ModelNotAllowed {
                tier: tier.to_owned(),
                plan: plan.id.clone(),
            })
        }
    }

    fn check_member_presence(&self, member: Option<&Member>) -> Result<(), OpError> {
        match (self.pool, member) {
            (true, None) => Err(invalid("memberId is required on a team wallet")),
            (false, Some(_)) => Err(invalid("memberId is only allowed on a team wallet")),
            _ => Ok(()),
        }
    }

    fn check_member_limits(&self, member: Option<&Member>, amount: Credits) -> Result<(), OpError> {
        let Some(m) = member else { return Ok(()) };
        let (today, period, held) = self.member_usage(&m.id);
        let exceeds = |spent: Credits, limit: Option<Credits>| {
            limit.is_some_and(|limit| {
                i128::from(spent.micro()) + i128::from(held.micro()) + i128::from(amount.micro())
                    > i128::from(limit.micro())
            })
        };
        if exceeds(today, m.daily_limit) {
            return Err(OpError::MemberLimitExceeded {
                member: m.id.clone(),
                which: "daily",
            });
        }
        if exceeds(period, m.period_limit) {
            return Err(OpError::MemberLimitExceeded {
                member: m.id.clone(),
                which: "period",
            });
        }
        Ok(())
    }

    fn check_funds(&self, amount: Credits) -> Result<(), OpError> {
        let available = self.spendable();
        if amount > available {
            return Err(OpError::InsufficientCredits {
                needed: amount,
                available,
            });
        }
        Ok(())
    }

    // ---- time ----------------------------------------------------------------------------

    /// Applies, in time order, every reservation expiry, lot expiry, renewal and daily reset
    /// due at or before `t`, each as its own record at its due instant, then moves the
    /// wallet's time to `t` (never backwards). The result does not depend on how often this
    /// is called.
    pub fn advance_to(&mut self, t: DateTime<Utc>, plans: &(impl Plans + ?Sized)) -> Vec<Entry> {
        self.advance_to_with_balances(t, plans)
            .into_iter()
            .map(|(entry, _)| entry)
            .collect()
    }

    /// [`Wallet::advance_to`], with the balance right after each record: what a live
    /// subscriber must see with that record's event (SPEC 8), not the state after the last.
    pub fn advance_to_with_balances(
        &mut self,
        t: DateTime<Utc>,
        plans: &(impl Plans + ?Sized),
    ) -> Vec<(Entry, Balance)> {
        self.advance_at_most(t, plans, usize::MAX)
    }

    /// [`Wallet::advance_to_with_balances`] in bounded steps, for a caller that writes what
    /// falls due in batches of bounded size (a wallet left idle for years has a reset a
    /// day; thousands of lots may expire at one instant): at most `max` records are
    /// applied, stopping inside a due instant if need be. The wallet is then still behind
    /// `t` ([`Wallet::behind`]: nothing may be decided on it yet); calling again continues
    /// exactly where it stopped, so the records are the same as from one call.
    pub fn advance_at_most(
        &mut self,
        t: DateTime<Utc>,
        plans: &(impl Plans + ?Sized),
        max: usize,
    ) -> Vec<(Entry, Balance)> {
        // The wallet's time never goes back: an instant a step stopped inside is finished
        // even when `t` is earlier (a clock behind the wallet's).
        let t = t.max(self.now);
        let mut entries = Vec::new();
        loop {
            let due = self.next_due();
            if due > t {
                break;
            }
            if entries.len() >= max {
                return entries;
            }
            self.now = self.now.max(due);
            // SPEC 3: at one instant, reservation expiries, lot expiries, renewal, daily reset.
            let expiring: Vec<ReservationId> = self
                .reservations
                .iter()
                .filter(|r| r.expires_at <= due)
                .map(|r| r.id.clone())
                .collect();
            for id in expiring {
                if entries.len() >= max {
                    return entries;
                }
                let kind = self
                    .release_kind(&id, ReleaseReason::Expired)
                    .expect("reservation is active");
                let entry = self.commit(due, kind);
                entries.push((entry, self.balance()));
            }
            let lots: Vec<(GrantId, Credits)> = self
                .lots
                .iter()
                .filter(|l| !l.expiry_applied && l.expires_at.is_some_and(|e| e <= due))
                .map(|l| (l.id.clone(), l.remaining))
                .collect();
            for (grant_id, amount) in lots {
                if entries.len() >= max {
                    return entries;
                }
                let entry = self.commit(due, EntryKind::LotExpired { grant_id, amount });
                entries.push((entry, self.balance()));
            }
            if self.subscription.period_end <= due {
                if entries.len() >= max {
                    return entries;
                }
                let kind = self.renewal_kind(due, plans);
                let entry = self.commit(due, kind);
                entries.push((entry, self.balance()));
            }
            if self.daily.next_reset <= due {
                if entries.len() >= max {
                    return entries;
                }
                let allowance = self
                    .plan(plans)
                    .map(|p| p.daily_credits_at(due))
                    .unwrap_or(self.daily.allowance);
                let kind = EntryKind::DailyReset {
                    expired: self.daily.remaining,
                    allowance,
                    day_start: due,
                    next_reset: calendar::next_daily_reset(self.timezone, due),
                };
                let entry = self.commit(due, kind);
                entries.push((entry, self.balance()));
            }
        }
        self.now = self.now.max(t);
        entries
    }

    fn renewal_kind(&self, at: DateTime<Utc>, plans: &(impl Plans + ?Sized)) -> EntryKind {
        let scheduled = self
            .scheduled_plan_id
            .as_ref()
            .and_then(|id| plans.plan(id));
        let (plan, change) = match scheduled {
            Some(p) => (Some(p), Some((p.id.clone(), p.interval))),
            None => (plans.plan(&self.plan_id), None),
        };
        let interval = plan.map_or(self.interval, |p| p.interval);
        let allowance = plan.map_or(self.subscription.allowance, |p| {
            p.subscription_credits_at(at)
        });
        // The new period starts at the renewal; with another interval it ends at that
        // interval's next boundary from the same anchor.
        let (_, period_end) = calendar::billing_period(self.billing_anchor, interval, at);
        EntryKind::Renewed {
            expired: self.subscription.remaining,
            allowance,
            period_start: at,
            period_end,
            plan: change,
        }
    }

    // ---- operations ----------------------------------------------------------------------

    /// Runs one operation at the wallet's current time (call `advance_to` first).
    pub fn execute(&mut self, op: &Op, plans: &(impl Plans + ?Sized)) -> Result<Entry, OpError> {
        let kind = self.decide(op, plans)?;
        Ok(self.commit(self.now, kind))
    }

    /// The INVALID_INPUT checks of an operation: they come before every other check,
    /// idempotent replay included (SPEC 10), and depend only on the input and the clock.
    pub fn validate(&self, op: &Op) -> Result<(), OpError> {
        match op {
            Op::Usage(u) => {
                check_text("idempotencyKey", &u.key, MAX_KEY_CHARS, false)?;
                check_text("threadId", &u.thread_id, MAX_KEY_CHARS, false)?;
                check_tokens(u.tokens)?;
                self.check_member_presence(u.member.as_ref())?;
                check_price(u.cost)
            }
            Op::Reserve(r) => {
                check_text("idempotencyKey", &r.key, MAX_KEY_CHARS, false)?;
                if !RESERVATION_TTL_SECONDS.contains(&r.ttl_seconds) {
                    return Err(invalid("ttlSeconds must be 1 to 3600"));
                }
                r.amount
                    .positive()
                    .map_err(|e| invalid(format!("amount: {e}")))?;
                self.check_member_presence(r.member.as_ref())
            }
            Op::Settle(s) => {
                check_text("threadId", &s.thread_id, MAX_KEY_CHARS, false)?;
                check_tokens(s.tokens)?;
                check_price(s.cost)
            }
            Op::Grant(g) => {
                if let Some(key) = &g.key {
                    check_text("idempotencyKey", key, MAX_KEY_CHARS, false)?;
                }
                if let Some(reason) = &g.reason {
                    check_text("reason", reason, MAX_TEXT_CHARS, true)?;
                }
                g.amount
                    .positive()
                    .map_err(|e| invalid(format!("amount: {e}")))?;
                if g.kind == GrantKind::Purchase
                    && !matches!(g.origin, Some(LotOrigin::Bundle { .. }))
                {
                    return Err(invalid("PURCHASE lots come only from purchaseBundle"));
                }
                match g.expires_at {
                    Some(_) if !g.kind.may_expire() => {
                        Err(invalid("PURCHASE and COMPENSATION grants never expire"))
                    }
                    Some(expires_at) if expires_at <= self.now => {
                        Err(invalid("expiresAt must be in the future"))
                    }
                    _ => Ok(()),
                }
            }
            Op::Release(_) | Op::ChangePlan(_) | Op::SetTimezone(_) => Ok(()),
        }
    }

    /// Decides what an operation would record, without changing anything.
    pub fn decide(&self, op: &Op, plans: &(impl Plans + ?Sized)) -> Result<EntryKind, OpError> {
        self.validate(op)?;
        match op {
            Op::Usage(u) => self.decide_usage(u, plans),
            Op::Reserve(r) => self.decide_reserve(r),
            Op::Settle(s) => self.decide_settle(s, plans),
            Op::Release(id) => self.release_kind(id, ReleaseReason::Released),
            Op::Grant(g) => self.decide_grant(g),
            Op::ChangePlan(id) => self.decide_change_plan(id, plans),
            // The zone it already has is no change: the wallet keeps resetting at every
            // local date (the 23-hour rule would skip one after a short day or a new
            // wallet's first evening).
            Op::SetTimezone(tz) if *tz == self.timezone => Ok(EntryKind::TimezoneChanged {
                timezone: *tz,
                next_reset: self.daily.next_reset,
            }),
            Op::SetTimezone(tz) => Ok(EntryKind::TimezoneChanged {
                timezone: *tz,
                next_reset: calendar::first_reset_after_zone_change(
                    *tz,
                    self.now,
                    self.daily.day_start,
                ),
            }),
        }
    }

    fn decide_usage(
        &self,
        u: &UsageOp,
        plans: &(impl Plans + ?Sized),
    ) -> Result<EntryKind, OpError> {
        self.check_tier(&u.tier, plans)?;
        self.check_member_limits(u.member.as_ref(), u.cost)?;
        self.check_funds(u.cost)?;
        let usage = UsageRecord {
            id: u.id.clone(),
            key: u.key.clone(),
            thread_id: u.thread_id.clone(),
            model: u.model.clone(),
            tier: u.tier.clone(),
            member: u.member.as_ref().map(|m| m.id.clone()),
            tokens: u.tokens,
            cost: u.cost,
            charged: self.take(u.cost),
            uncollected: Credits::ZERO,
            priced_by: u.priced_by.clone(),
            reservation_id: None,
            at: self.now,
        };
        let request = Op::Usage(u.clone()).request().expect("usage has a request");
        Ok(EntryKind::Usage {
            request,
            usage: Box::new(usage),
        })
    }

    fn decide_reserve(&self, r: &ReserveOp) -> Result<EntryKind, OpError> {
        self.check_member_limits(r.member.as_ref(), r.amount)?;
        self.check_funds(r.amount)?;
        // Checked arithmetic (SPEC 1): held credits outlive the day, period or lot they came
        // from (lots expiring while held, grants after them), so what reservations hold is
        // bounded on its own, at what the wallet's three sources can hold at once.
        let most = 3 * i128::from(Credits::MAX_HOLDING.micro());
        if i128::from(self.reserved().micro()) + i128::from(r.amount.micro()) > most {
            return Err(invalid(format!(
                "a wallet's reservations may hold at most {} credits",
                Credits::from_micro(i64::try_from(most).expect("3 × MAX_HOLDING fits in i64"))
            )));
        }
        let parts = self
            .take(r.amount)
            .into_iter()
            .map(|c| Hold {
                epoch: self.epoch_of(&c.source),
                source: c.source,
                amount: c.amount,
            })
            .collect();
        let reservation = Reservation {
            id: r.id.clone(),
            key: r.key.clone(),
            amount: r.amount,
            member: r.member.as_ref().map(|m| m.id.clone()),
            parts,
            created_at: self.now,
            expires_at: self.now + chrono::Duration::seconds(i64::from(r.ttl_seconds)),
        };
        let request = Op::Reserve(r.clone())
            .request()
            .expect("reserve has a request");
        Ok(EntryKind::Reserved {
            request,
            reservation,
        })
    }

    fn decide_settle(
        &self,
        s: &SettleOp,
        plans: &(impl Plans + ?Sized),
    ) -> Result<EntryKind, OpError> {
        let res = self
            .reservation(&s.reservation_id)
            .ok_or(OpError::ReservationNotActive)?;
        self.check_tier(&s.tier, plans)?;

        // Pay from the held parts first, in their burn-down order.
        let mut left = s.cost;
        let mut from_held = Vec::new();
        let mut unused = Vec::new();
        for part in &res.parts {
            let used = part.amount.min(left);
            left -= used;
            if used.is_positive() {
                from_held.push(Charge {
                    source: part.source.clone(),
                    amount: used,
                });
            }
            unused.push(Hold {
                amount: part.amount - used,
                ..part.clone()
            });
        }
        let direct = self.take(left);
        let uncollected = left - direct.iter().map(|c| c.amount).sum();
        let (returned, expired) = self.free_holds(&unused);

        // One charge per source, in burn-down order.
        let mut merged: Vec<Charge> = Vec::new();
        for c in from_held.iter().chain(&direct) {
            match merged.iter_mut().find(|m| m.source == c.source) {
                Some(m) => m.amount += c.amount,
                None => merged.push(c.clone()),
            }
        }
        merged.sort_by_key(|c| self.burn_rank(&c.source));

        let usage = UsageRecord {
            id: s.usage_id.clone(),
            key: res.key.clone(),
            thread_id: s.thread_id.clone(),
            model: s.model.clone(),
            tier: s.tier.clone(),
            member: res.member.clone(),
            tokens: s.tokens,
            cost: s.cost,
            charged: merged,
            uncollected,
            priced_by: s.priced_by.clone(),
            reservation_id: Some(res.id.clone()),
            at: self.now,
        };
        let request = Op::Settle(s.clone())
            .request()
            .expect("settle has a request");
        Ok(EntryKind::Settled {
            request,
            usage: Box::new(usage),
            from_held,
            returned,
            expired,
        })
    }

    fn release_kind(
        &self,
        id: &ReservationId,
        reason: ReleaseReason,
    ) -> Result<EntryKind, OpError> {
        let res = self.reservation(id).ok_or(OpError::ReservationNotActive)?;
        let (returned, expired) = self.free_holds(&res.parts);
        Ok(EntryKind::Released {
            reservation_id: id.clone(),
            reason,
            returned,
            expired,
        })
    }

    fn decide_grant(&self, g: &GrantOp) -> Result<EntryKind, OpError> {
        // One payment buys one lot, one review is compensated once: a second lot for the
        // same (decided before the first was stored, so the caller's lookup missed it) is
        // a conflict.
        if let Some(once) = g.origin.as_ref().map(LotOrigin::once_for)
            && self
                .lots
                .iter()
                .any(|l| l.origin.as_ref().map(LotOrigin::once_for) == Some(once))
        {
            return Err(OpError::IdempotencyConflict);
        }
        // Lot ids are the store's keys and the ledger's references: one lot per id, ever.
        // A lot spent or expired to nothing has left `lots`; the store refuses its id
        // (and its payment or review) again.
        if self.lots.iter().any(|l| l.id == g.id) {
            return Err(invalid(format!("grant id {} is already taken", g.id)));
        }
        // Checked arithmetic (SPEC 1): the wallet's lots stay within what its sum can hold.
        let outstanding = self
            .lots
            .iter()
            .filter(|l| !l.expiry_applied)
            .map(|l| i128::from(l.remaining.micro()) + i128::from(l.held.micro()))
            .sum::<i128>();
        if outstanding + i128::from(g.amount.micro()) > i128::from(Credits::MAX_HOLDING.micro()) {
            return Err(invalid(format!(
                "a wallet's grants may hold at most {} credits",
                Credits::MAX_HOLDING
            )));
        }
        let lot = Lot {
            id: g.id.clone(),
            kind: g.kind,
            amount: g.amount,
            remaining: g.amount,
            held: Credits::ZERO,
            spent: Credits::ZERO,
            expired: Credits::ZERO,
            reason: g.reason.clone(),
            granted_at: self.now,
            expires_at: g.expires_at,
            expiry_applied: false,
            origin: g.origin.clone(),
        };
        let request = Op::Grant(g.clone()).request();
        Ok(EntryKind::Granted {
            request,
            key: g.key.clone(),
            lot,
        })
    }

    fn decide_change_plan(
        &self,
        id: &PlanId,
        plans: &(impl Plans + ?Sized),
    ) -> Result<EntryKind, OpError> {
        let new = plans.plan(id).ok_or(OpError::NotFound("plan"))?;
        if *id == self.plan_id {
            return Ok(EntryKind::PlanScheduled { plan_id: None });
        }
        new.check_offered().map_err(invalid)?;
        let (new_daily, new_subscription) = new.credits_after(self.now);
        // "Higher" than the allowance this period runs on, the same `old` as the amount
        // below: an edit of the current (custom) plan counts only from the next renewal.
        if new.interval != self.interval || new_subscription <= self.subscription.allowance {
            return Ok(EntryKind::PlanScheduled {
                plan_id: Some(id.clone()),
            });
        }
        // Upgrade now: the unused part of the period gets the difference, rounded down.
        let remaining_seconds = (self.subscription.period_end - self.now)
            .num_seconds()
            .max(0);
        let period_seconds = (self.subscription.period_end - self.subscription.period_start)
            .num_seconds()
            .max(1);
        let delta =
            i128::from(new_subscription.micro()) - i128::from(self.subscription.allowance.micro());
        let prorated = (delta * i128::from(remaining_seconds))
            .div_euclid(i128::from(period_seconds))
            .max(0);
        let subscription_added =
            Credits::from_micro(i64::try_from(prorated).expect("prorated ≤ delta fits in i64"));
        // Upgrades on one day may each add to the daily bucket (from a plan with a smaller
        // daily allowance to one with a larger): it never grows past what one part of a
        // wallet may hold, so the wallet's sums stay within i64 (SPEC 1). Today's daily
        // credits held by reservations count: they go back to the bucket (SPEC 4).
        let held_today: i128 = self
            .reservations
            .iter()
            .flat_map(|r| &r.parts)
            .filter(|p| p.source == Source::Daily && p.epoch == self.daily.day_start)
            .map(|p| i128::from(p.amount.micro()))
            .sum();
        let daily_room = Credits::from_micro(
            i64::try_from(
                (i128::from(Credits::MAX_HOLDING.micro())
                    - i128::from(self.daily.remaining.micro())
                    - held_today)
                    .max(0),
            )
            .expect("room ≤ MAX_HOLDING fits in i64"),
        );
        let daily_added = (new_daily.checked_sub(self.daily.allowance))
            .unwrap_or(Credits::ZERO)
            .max(Credits::ZERO)
            .min(daily_room);
        Ok(EntryKind::PlanChanged {
            plan_id: id.clone(),
            daily_added,
            subscription_added,
            daily_allowance: new_daily,
            subscription_allowance: new_subscription,
        })
    }

    // ---- applying records ----------------------------------------------------------------

    fn commit(&mut self, at: DateTime<Utc>, kind: EntryKind) -> Entry {
        let entry = Entry {
            seq: self.seq + 1,
            at,
            kind,
        };
        self.apply(&entry);
        entry
    }

    fn source_mut(&mut self, source: &Source) -> SourceMut<'_> {
        match source {
            Source::Daily => SourceMut::Bucket(&mut self.daily.remaining),
            Source::Subscription => SourceMut::Bucket(&mut self.subscription.remaining),
            Source::Lot(id) => SourceMut::Lot(
                self.lots
                    .iter_mut()
                    .find(|l| &l.id == id)
                    .expect("ledger names a known lot"),
            ),
        }
    }

    /// Spendable credits leave a source (debit, or into a hold when `hold`).
    fn take_from(&mut self, c: &Charge, hold: bool) {
        match self.source_mut(&c.source) {
            SourceMut::Bucket(r) => *r -= c.amount,
            SourceMut::Lot(l) => {
                l.remaining -= c.amount;
                if hold {
                    l.held += c.amount
                } else {
                    l.spent += c.amount
                }
            }
        }
    }

    /// Held credits leave their hold: spent, returned to the source, or expired.
    fn unhold(&mut self, c: &Charge, to: Unhold) {
        match (self.source_mut(&c.source), to) {
            (SourceMut::Bucket(r), Unhold::Return) => *r += c.amount,
            (SourceMut::Bucket(_), _) => {}
            (SourceMut::Lot(l), to) => {
                l.held -= c.amount;
                match to {
                    Unhold::Spend => l.spent += c.amount,
                    Unhold::Return => l.remaining += c.amount,
                    Unhold::Expire => l.expired += c.amount,
                }
            }
        }
    }

    fn add_member_spend(&mut self, member: Option<&String>, cost: Credits) {
        if let Some(m) = member {
            // Saturating: a settle's cost (the price, uncollected part included) has no
            // bound but i64, and these only meet limits.
            let spend = self.members.entry(m.clone()).or_default();
            spend.today = spend.today.saturating_add(cost);
            spend.period = spend.period.saturating_add(cost);
        }
    }

    /// Applies one record. Live operations and replay both come through here.
    pub fn apply(&mut self, entry: &Entry) {
        debug_assert_eq!(entry.seq, self.seq + 1, "records apply in sequence");
        match &entry.kind {
            EntryKind::Created(_) => debug_assert!(false, "a wallet is created once"),
            EntryKind::Usage { usage, .. } => {
                for c in &usage.charged {
                    self.take_from(c, false);
                }
                self.add_member_spend(usage.member.as_ref(), usage.cost);
            }
            EntryKind::Reserved { reservation, .. } => {
                for part in &reservation.parts {
                    self.take_from(
                        &Charge {
                            source: part.source.clone(),
                            amount: part.amount,
                        },
                        true,
                    );
                }
                self.reservations.push(reservation.clone());
            }
            EntryKind::Settled {
                usage,
                from_held,
                returned,
                expired,
                ..
            } => {
                for c in from_held {
                    self.unhold(c, Unhold::Spend);
                }
                // Whatever the charge has beyond the held parts came from the balance.
                for c in &usage.charged {
                    let held: Credits = from_held
                        .iter()
                        .filter(|h| h.source == c.source)
                        .map(|h| h.amount)
                        .sum();
                    let direct = c.amount - held;
                    if direct.is_positive() {
                        self.take_from(
                            &Charge {
                                source: c.source.clone(),
                                amount: direct,
                            },
                            false,
                        );
                    }
                }
                self.finish_hold(
                    usage
                        .reservation_id
                        .as_ref()
                        .expect("a settle names its reservation"),
                    returned,
                    expired,
                );
                self.add_member_spend(usage.member.as_ref(), usage.cost);
            }
            EntryKind::Released {
                reservation_id,
                returned,
                expired,
                ..
            } => {
                self.finish_hold(reservation_id, returned, expired);
            }
            EntryKind::Granted { lot, .. } => self.lots.push(lot.clone()),
            EntryKind::LotExpired { grant_id, amount } => {
                let lot = self
                    .lots
                    .iter_mut()
                    .find(|l| &l.id == grant_id)
                    .expect("ledger names a known lot");
                lot.remaining -= *amount;
                lot.expired += *amount;
                lot.expiry_applied = true;
            }
            EntryKind::Renewed {
                allowance,
                period_start,
                period_end,
                plan,
                ..
            } => {
                self.subscription = SubscriptionBucket {
                    allowance: *allowance,
                    remaining: *allowance,
                    period_start: *period_start,
                    period_end: *period_end,
                };
                if let Some((plan_id, interval)) = plan {
                    self.plan_id = plan_id.clone();
                    self.interval = *interval;
                    self.scheduled_plan_id = None;
                }
                self.members
                    .values_mut()
                    .for_each(|m| m.period = Credits::ZERO);
            }
            EntryKind::DailyReset {
                allowance,
                day_start,
                next_reset,
                ..
            } => {
                self.daily = DailyBucket {
                    allowance: *allowance,
                    remaining: *allowance,
                    day_start: *day_start,
                    next_reset: *next_reset,
                };
                self.members
                    .values_mut()
                    .for_each(|m| m.today = Credits::ZERO);
            }
            EntryKind::PlanChanged {
                plan_id,
                daily_added,
                subscription_added,
                daily_allowance,
                subscription_allowance,
            } => {
                self.plan_id = plan_id.clone();
                self.scheduled_plan_id = None;
                self.daily.remaining += *daily_added;
                self.daily.allowance = *daily_allowance;
                self.subscription.remaining += *subscription_added;
                self.subscription.allowance = *subscription_allowance;
            }
            EntryKind::PlanScheduled { plan_id } => self.scheduled_plan_id = plan_id.clone(),
            EntryKind::TimezoneChanged {
                timezone,
                next_reset,
            } => {
                self.timezone = *timezone;
                self.daily.next_reset = *next_reset;
            }
        }
        self.seq = entry.seq;
        self.now = self.now.max(entry.at);
        self.lots
            .retain(|l| l.remaining.is_positive() || l.held.is_positive());
        self.members
            .retain(|_, m| !m.today.is_zero() || !m.period.is_zero());
        debug_assert!(
            self.is_consistent(),
            "wallet invariants broken by record {}",
            entry.seq
        );
    }

    fn finish_hold(&mut self, id: &ReservationId, returned: &[Charge], expired: &[Charge]) {
        for c in returned {
            self.unhold(c, Unhold::Return);
        }
        for c in expired {
            self.unhold(c, Unhold::Expire);
        }
        self.reservations.retain(|r| &r.id != id);
    }

    /// No bucket or lot is negative and every lot adds up (SPEC 11).
    pub fn is_consistent(&self) -> bool {
        let lots_ok = self.lots.iter().all(|l| {
            [l.remaining, l.held, l.spent, l.expired]
                .iter()
                .all(|c| c.micro() >= 0)
                && l.remaining
                    .checked_add(l.held)
                    .and_then(|s| s.checked_add(l.spent))
                    .and_then(|s| s.checked_add(l.expired))
                    == Some(l.amount)
                && (!l.expiry_applied || l.remaining.is_zero())
        });
        lots_ok
            && self.daily.remaining.micro() >= 0
            && self.subscription.remaining.micro() >= 0
            && self
                .reservations
                .iter()
                .all(|r| r.parts.iter().map(|p| p.amount).sum::<Credits>() == r.amount)
    }
}

enum SourceMut<'a> {
    Bucket(&'a mut Credits),
    Lot(&'a mut Lot),
}

#[derive(Clone, Copy)]
enum Unhold {
    Spend,
    Return,
    Expire,
}

fn check_price(cost: Credits) -> Result<(), OpError> {
    if cost.micro() < 0 {
        return Err(invalid("a price must not be negative"));
    }
    Ok(())
}

fn check_tokens(t: Tokens) -> Result<(), OpError> {
    if t.cached > t.input {
        return Err(invalid("cachedTokens must not exceed inputTokens"));
    }
    Ok(())
}
