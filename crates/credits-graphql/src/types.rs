//! Output and input types of the contract that are plain data, converted from core types
//! with `From`. Objects whose fields need the service (wallets, teams, reviews) live with
//! their resolvers.

use async_graphql::{Enum, ID, InputObject, SimpleObject};
use credits_core::{
    self as core, BillingInterval as CoreInterval, GrantKind as CoreGrantKind, Source,
};

use crate::scalars::{Credits, DateTime};

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BillingInterval {
    Monthly,
    Annual,
}

impl From<CoreInterval> for BillingInterval {
    fn from(i: CoreInterval) -> Self {
        match i {
            CoreInterval::Monthly => BillingInterval::Monthly,
            CoreInterval::Annual => BillingInterval::Annual,
        }
    }
}

impl From<BillingInterval> for CoreInterval {
    fn from(i: BillingInterval) -> Self {
        match i {
            BillingInterval::Monthly => CoreInterval::Monthly,
            BillingInterval::Annual => CoreInterval::Annual,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketKind {
    Daily,
    Subscription,
    Bonus,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    Admin,
    Promotion,
    Community,
    Compensation,
    Purchase,
}

impl From<CoreGrantKind> for GrantKind {
    fn from(k: CoreGrantKind) -> Self {
        match k {
            CoreGrantKind::Admin => GrantKind::Admin,
            CoreGrantKind::Promotion => GrantKind::Promotion,
            CoreGrantKind::Community => GrantKind::Community,
            CoreGrantKind::Compensation => GrantKind::Compensation,
            CoreGrantKind::Purchase => GrantKind::Purchase,
        }
    }
}

impl From<GrantKind> for CoreGrantKind {
    fn from(k: GrantKind) -> Self {
        match k {
            GrantKind::Admin => CoreGrantKind::Admin,
            GrantKind::Promotion => CoreGrantKind::Promotion,
            GrantKind::Community => CoreGrantKind::Community,
            GrantKind::Compensation => CoreGrantKind::Compensation,
            GrantKind::Purchase => CoreGrantKind::Purchase,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceCause {
    Snapshot,
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

impl From<credits_actors::EventKind> for BalanceCause {
    fn from(k: credits_actors::EventKind) -> Self {
        use core::Cause as C;
        match k {
            credits_actors::EventKind::Snapshot => BalanceCause::Snapshot,
            credits_actors::EventKind::Change(c) => match c {
                // A creation is never streamed (nobody can subscribe before it); as a
                // snapshot it is the wallet's first state.
                C::Created => BalanceCause::Snapshot,
                C::Usage => BalanceCause::Usage,
                C::Reservation => BalanceCause::Reservation,
                C::Settlement => BalanceCause::Settlement,
                C::Release => BalanceCause::Release,
                C::Grant => BalanceCause::Grant,
                C::DailyReset => BalanceCause::DailyReset,
                C::Renewal => BalanceCause::Renewal,
                C::Expiry => BalanceCause::Expiry,
                C::PlanChange => BalanceCause::PlanChange,
                C::TimezoneChange => BalanceCause::TimezoneChange,
            },
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreviewStatus {
    Ok,
    Failing,
    ErrorLoop,
    Unknown,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewStatus {
    Submitted,
    Credited,
    Rejected,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewDecision {
    Approve,
    Reject,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroupBy {
    Model,
    Thread,
    Day,
    Member,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Service,
    User,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeamRole {
    Admin,
    Member,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationStatus {
    Active,
    Settled,
    Released,
    Expired,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Plan {
    pub id: ID,
    pub name: String,
    pub daily_credits: Credits,
    pub subscription_credits: Credits,
    pub interval: BillingInterval,
    pub model_tiers: Vec<String>,
    pub custom: bool,
}

impl From<&core::Plan> for Plan {
    fn from(p: &core::Plan) -> Self {
        Plan {
            id: ID(p.id.0.clone()),
            name: p.name.clone(),
            daily_credits: p.daily_credits.into(),
            subscription_credits: p.subscription_credits.into(),
            interval: p.interval.into(),
            model_tiers: p.model_tiers.clone(),
            custom: p.custom,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Model {
    pub id: ID,
    pub tier: String,
    pub plugin_version: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Bundle {
    pub id: ID,
    pub credits: Credits,
    pub price_cents: i32,
    pub currency: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Grant {
    pub id: ID,
    pub kind: GrantKind,
    pub amount: Credits,
    pub remaining: Credits,
    pub reason: Option<String>,
    pub granted_at: DateTime,
    pub expires_at: Option<DateTime>,
}

impl From<&core::Lot> for Grant {
    fn from(l: &core::Lot) -> Self {
        Grant {
            id: ID(l.id.0.clone()),
            kind: l.kind.into(),
            amount: l.amount.into(),
            remaining: l.remaining.into(),
            reason: l.reason.clone(),
            granted_at: l.granted_at.into(),
            expires_at: l.expires_at.map(Into::into),
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct DailyBucket {
    pub remaining: Credits,
    pub allowance: Credits,
    pub next_reset_at: DateTime,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct SubscriptionBucket {
    pub remaining: Credits,
    pub allowance: Credits,
    pub period_start: DateTime,
    pub period_end: DateTime,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct BonusBucket {
    pub remaining: Credits,
    pub grants: Vec<Grant>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Balance {
    /// Spendable now: daily + subscription + bonus remaining. Held credits are in no bucket; they show in reserved.
    pub total: Credits,
    pub reserved: Credits,
    pub daily: DailyBucket,
    pub subscription: SubscriptionBucket,
    pub bonus: BonusBucket,
}

impl From<&core::Balance> for Balance {
    fn from(b: &core::Balance) -> Self {
        Balance {
            total: b.total.into(),
            reserved: b.reserved.into(),
            daily: DailyBucket {
                remaining: b.daily.remaining.into(),
                allowance: b.daily.allowance.into(),
                next_reset_at: b.daily.next_reset.into(),
            },
            subscription: SubscriptionBucket {
                remaining: b.subscription.remaining.into(),
                allowance: b.subscription.allowance.into(),
                period_start: b.subscription.period_start.into(),
                period_end: b.subscription.period_end.into(),
            },
            bonus: BonusBucket {
                remaining: b.bonus_remaining.into(),
                grants: b.grants.iter().map(Grant::from).collect(),
            },
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct BucketCharge {
    pub bucket: BucketKind,
    pub grant_id: Option<ID>,
    pub amount: Credits,
}

impl From<&core::Charge> for BucketCharge {
    fn from(c: &core::Charge) -> Self {
        let (bucket, grant_id) = match &c.source {
            Source::Daily => (BucketKind::Daily, None),
            Source::Subscription => (BucketKind::Subscription, None),
            Source::Lot(id) => (BucketKind::Bonus, Some(ID(id.0.clone()))),
        };
        BucketCharge {
            bucket,
            grant_id,
            amount: c.amount.into(),
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UsageEvent {
    pub id: ID,
    pub idempotency_key: String,
    pub thread_id: String,
    pub model: String,
    pub member_id: Option<String>,
    pub input_tokens: i32,
    pub cached_tokens: i32,
    pub output_tokens: i32,
    pub cost: Credits,
    pub charged: Vec<BucketCharge>,
    pub uncollected: Credits,
    pub priced_by: String,
    pub at: DateTime,
}

/// Token counts beyond `Int` (2^31 − 1) are shown saturated; the ledger keeps them exactly.
fn int(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl From<&core::UsageRecord> for UsageEvent {
    fn from(u: &core::UsageRecord) -> Self {
        UsageEvent {
            id: ID(u.id.0.clone()),
            idempotency_key: u.key.clone(),
            thread_id: u.thread_id.clone(),
            model: u.model.clone(),
            member_id: u.member.clone(),
            input_tokens: int(u.tokens.input),
            cached_tokens: int(u.tokens.cached),
            output_tokens: int(u.tokens.output),
            cost: u.cost.into(),
            charged: u.charged.iter().map(BucketCharge::from).collect(),
            uncollected: u.uncollected.into(),
            priced_by: u.priced_by.clone(),
            at: u.at.into(),
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UsageEdge {
    pub node: UsageEvent,
    pub cursor: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UsageConnection {
    pub edges: Vec<UsageEdge>,
    pub page_info: PageInfo,
}

#[derive(InputObject, Clone, Debug, Default)]
pub struct UsageFilter {
    pub thread_id: Option<String>,
    pub model: Option<String>,
    pub member_id: Option<String>,
    pub from: Option<DateTime>,
    pub to: Option<DateTime>,
}

/// With thenBy: one group per (key, subKey), ordered by key then subKey.
#[derive(SimpleObject, Clone, Debug)]
pub struct UsageGroup {
    pub key: String,
    pub sub_key: Option<String>,
    pub credits: Credits,
    pub events: i32,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UsageReceipt {
    pub usage: UsageEvent,
    pub balance: Balance,
    pub replayed: bool,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Reservation {
    pub id: ID,
    pub wallet_id: ID,
    pub amount: Credits,
    pub status: ReservationStatus,
    pub expires_at: DateTime,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ApiToken {
    pub token: String,
    pub role: Role,
    pub owner_id: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct BalanceEvent {
    pub wallet_id: ID,
    pub seq: crate::scalars::Seq,
    pub cause: BalanceCause,
    pub balance: Balance,
    pub at: DateTime,
}

impl From<&credits_actors::BalanceEvent> for BalanceEvent {
    fn from(e: &credits_actors::BalanceEvent) -> Self {
        BalanceEvent {
            wallet_id: ID(e.wallet_id.0.clone()),
            seq: crate::scalars::Seq(e.seq),
            cause: e.kind.into(),
            balance: (&e.balance).into(),
            at: e.at.into(),
        }
    }
}

#[derive(InputObject, Clone, Debug)]
pub struct CreateWalletInput {
    pub owner_id: String,
    pub plan_id: ID,
    pub timezone: String,
    /// Start of the first billing period; defaults to now; never after now.
    pub billing_anchor: Option<DateTime>,
    /// Optional; scoped to ownerId: a retried call returns the wallet it created.
    pub idempotency_key: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct RecordUsageInput {
    pub wallet_id: ID,
    pub idempotency_key: String,
    pub thread_id: String,
    pub model: String,
    pub input_tokens: i32,
    pub cached_tokens: Option<i32>,
    pub output_tokens: i32,
    /// Required on a team wallet: the member spending.
    pub member_id: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct ReserveInput {
    pub wallet_id: ID,
    pub idempotency_key: String,
    pub amount: Credits,
    pub ttl_seconds: i32,
    pub member_id: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct SettleInput {
    pub reservation_id: ID,
    pub thread_id: String,
    pub model: String,
    pub input_tokens: i32,
    pub cached_tokens: Option<i32>,
    pub output_tokens: i32,
}

#[derive(InputObject, Clone, Debug)]
pub struct GrantInput {
    pub wallet_id: ID,
    pub idempotency_key: String,
    pub amount: Credits,
    pub kind: GrantKind,
    pub reason: String,
    pub expires_at: Option<DateTime>,
}

#[derive(InputObject, Clone, Debug)]
pub struct PurchaseBundleInput {
    pub wallet_id: ID,
    pub bundle_id: ID,
    pub payment_reference: String,
}

#[derive(InputObject, Clone, Debug)]
pub struct PlanInput {
    pub id: ID,
    pub name: String,
    pub daily_credits: Credits,
    pub subscription_credits: Credits,
    pub interval: BillingInterval,
    pub model_tiers: Vec<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct CreateTeamInput {
    pub name: String,
    pub plan_id: ID,
    pub timezone: String,
    pub admin_user_ids: Vec<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct HighUsageReportInput {
    pub wallet_id: ID,
    pub thread_id: String,
    pub task_description: String,
    pub model: Option<String>,
    pub preview_status: PreviewStatus,
    pub thread_length: Option<i32>,
    pub context_size: Option<i32>,
}

#[derive(InputObject, Clone, Debug)]
pub struct ResolveReviewInput {
    pub review_id: ID,
    pub decision: ReviewDecision,
    pub amount: Option<Credits>,
    pub note: Option<String>,
}
