//! The store's public row types: what goes into a commit and what queries return. They
//! own the storage-facing shape of the domain (instants as `DateTime<Utc>`, amounts as
//! i64 µcr with `_ucr` names, domain payloads as JSON text produced by the core's serde)
//! and never carry business rules: deciding what a batch contains is the core's job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, corrupt};

/// A wallet row as loaded: the snapshot of the state at `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWallet {
    pub id: String,
    pub owner_id: String,
    /// Set when the wallet is a team's pool.
    pub team_id: Option<String>,
    pub timezone: String,
    pub plan_id: String,
    pub created_at: DateTime<Utc>,
    /// The fence: pass it back as [`WalletBatch::expected_version`].
    pub version: i64,
    /// A team pool's members version: moved (with `version`) by every change to a member's
    /// limits or membership. Spends are decided only on limits read at this version.
    pub members_version: i64,
    /// Last ledger seq applied to the snapshot.
    pub seq: u64,
    /// The serialized core `Wallet`.
    pub snapshot_json: String,
    pub next_due_at: Option<DateTime<Utc>>,
}

/// A wallet to create, with its creation ledger record (seq 0).
#[derive(Clone, Debug)]
pub struct NewWallet {
    pub id: String,
    pub owner_id: String,
    pub team_id: Option<String>,
    pub timezone: String,
    pub plan_id: String,
    /// The billing interval it opens with (`MONTHLY`/`ANNUAL`): creation fails if its plan's
    /// stored interval differs (an interval change won the race).
    pub interval: String,
    /// The daily and subscription credits it opens with: creation fails if its plan did
    /// not give them then (an edit on another node won the race).
    pub daily_ucr: i64,
    pub subscription_ucr: i64,
    pub created_at: DateTime<Utc>,
    pub snapshot_json: String,
    pub next_due_at: Option<DateTime<Utc>>,
    /// The CREATED record; its seq is the wallet's initial seq.
    pub creation: LedgerRecord,
    /// createWallet's optional idempotency key, scoped to `owner_id`.
    pub idempotency_key: Option<CreationKey>,
}

/// A createWallet idempotency key and the canonical input it is recorded with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationKey {
    pub key: String,
    /// The caller's canonical input (opaque to the store; compared on a retry).
    pub request: String,
}

/// The wallet a recorded createWallet key created, and the input it was recorded with
/// (`None` for keys recorded before inputs were kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCreation {
    pub wallet_id: String,
    pub request: Option<String>,
}

/// What `create_wallet` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The wallet was created at version 0.
    New,
    /// The owner's key was already recorded: what it created.
    Existing(KeyedCreation),
}

/// One ledger record: one operation or one due event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// The SPEC 8 cause name (`USAGE`, `GRANT`, …, or `CREATED`).
    pub cause: String,
    /// The key of the key-carrying mutation this record is, if any. Unique per wallet.
    pub idempotency_key: Option<String>,
    /// The serialized core `Entry`.
    pub entry_json: String,
    /// The serialized balance after this record, for re-publishing the event.
    pub balance_json: String,
}

/// Which bucket paid part of a cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BucketKind {
    Daily,
    Subscription,
    Bonus,
}

/// One entry of a usage event's `charged` list (burn-down order, no zero entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargedPart {
    pub bucket: BucketKind,
    /// Set exactly on BONUS parts.
    pub grant_id: Option<String>,
    pub amount_ucr: i64,
}

/// A usage event (from recordUsage or a settlement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub id: String,
    pub wallet_id: String,
    /// Seq of the ledger record that produced it.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub thread_id: String,
    pub model: String,
    pub member_id: Option<String>,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub cost_ucr: i64,
    pub uncollected_ucr: i64,
    pub tier: String,
    /// `<tier>@<pluginVersion>`.
    pub priced_by: String,
    pub charged: Vec<ChargedPart>,
    pub reservation_id: Option<String>,
}

/// A grant lot with its running totals. Committed as an upsert: the first commit inserts
/// it, later ones replace `spent`, `held` and `expired` (the rest never changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRow {
    pub id: String,
    pub wallet_id: String,
    /// Seq of the granting record: the lot's place in spend order.
    pub seq: u64,
    /// `ADMIN`, `PROMOTION`, `COMMUNITY`, `COMPENSATION` or `PURCHASE`.
    pub kind: String,
    pub reason: Option<String>,
    pub amount_ucr: i64,
    pub spent_ucr: i64,
    pub held_ucr: i64,
    pub expired_ucr: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub payment_reference: Option<String>,
    pub bundle_id: Option<String>,
    pub review_id: Option<String>,
    pub granted_at: DateTime<Utc>,
}

impl GrantRow {
    /// SPEC 5: remaining = amount − spent − held − expired.
    pub fn remaining_ucr(&self) -> i64 {
        self.amount_ucr - self.spent_ucr - self.held_ucr - self.expired_ucr
    }
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Result<Self, StoreError> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(corrupt(format!("{} {other:?}", stringify!($name)))),
                }
            }
        }
    };
}

string_enum!(
    /// SPEC 4 reservation states.
    ReservationStatus { Active = "ACTIVE", Settled = "SETTLED", Released = "RELEASED", Expired = "EXPIRED" }
);
string_enum!(
    /// SPEC 7 review states.
    ReviewStatus { Submitted = "SUBMITTED", Credited = "CREDITED", Rejected = "REJECTED" }
);
string_enum!(
    /// SPEC 6 member roles.
    MemberRole { Admin = "ADMIN", Member = "MEMBER" }
);
string_enum!(
    /// SPEC 10 token roles.
    TokenRole { Admin = "ADMIN", Service = "SERVICE", User = "USER" }
);

/// A reservation. Committed as an upsert: the first commit inserts it, later ones replace
/// `status`, `settle_input`, `settle_result` and `resolved_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRow {
    pub id: String,
    pub wallet_id: String,
    /// Seq of the RESERVATION record.
    pub seq: u64,
    pub status: ReservationStatus,
    pub amount_ucr: i64,
    pub member_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Canonical settle input (JSON), compared on a repeated settle.
    pub settle_input: Option<String>,
    /// The settle receipt (JSON), returned on a replayed settle.
    pub settle_result: Option<String>,
    /// Seq of the SETTLEMENT or RELEASE record.
    pub resolved_seq: Option<u64>,
}

/// A review's resolution, committed together with the COMPENSATION grant (or alone, for
/// a rejection) so the two never disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewResolution {
    pub review_id: String,
    pub status: ReviewStatus,
    pub credited_ucr: Option<i64>,
    pub note: Option<String>,
    pub grant_id: Option<String>,
    pub resolved_at: DateTime<Utc>,
}

/// Everything one wallet's batch writes, committed atomically behind the fence.
#[derive(Clone, Debug)]
pub struct WalletBatch {
    pub wallet_id: String,
    /// The version the batch was built on; the commit fails with a conflict otherwise.
    pub expected_version: i64,
    /// The last seq after the batch (= the last entry's seq).
    pub seq: u64,
    /// The serialized core `Wallet` after the batch.
    pub snapshot_json: String,
    pub next_due_at: Option<DateTime<Utc>>,
    pub timezone: String,
    pub plan_id: String,
    /// The plan the wallet moves to at its next renewal, if any.
    pub scheduled_plan_id: Option<String>,
    /// Set when the batch schedules a plan the wallet had not scheduled: its row is
    /// share-locked like a move's, so an interval change either sees the schedule or
    /// comes first (PostgreSQL; SQLite has one writer).
    pub schedules: Option<String>,
    /// Set when the batch moves its wallet onto another plan: that plan's id and the
    /// interval the move was decided with. The commit is fenced out if the plan's stored
    /// interval differs (it changed meanwhile).
    pub moves_to: Option<(String, String)>,
    /// The credits each reset or renewal of the batch took from its plan. The commit is
    /// fenced out if the stored plan had other credits by that record's instant: an edit,
    /// maybe on another node, that this node's plans did not have yet.
    pub credits_used: Vec<PlanCredits>,
    /// The plan changes the batch scheduled for the next renewal on its wallet's interval
    /// (SPEC 5: not upgrades). The commit is fenced out if the stored plan gave more than
    /// the wallet's allowance by then: the change was an upgrade, applied at once.
    pub scheduled: Vec<ScheduledChange>,
    /// Set when a renewal of the batch kept the wallet's scheduled plan for later instead
    /// of moving onto it, as a node does that does not know that plan (created on another
    /// node a moment ago): fenced out if the plan is stored.
    pub kept_schedule: Option<String>,
    /// In seq order, contiguous after the stored seq.
    pub entries: Vec<LedgerRecord>,
    pub usage: Vec<UsageRow>,
    pub grants: Vec<GrantRow>,
    pub reservations: Vec<ReservationRow>,
    pub review: Option<ReviewResolution>,
}

/// A change to plan `plan_id` at `at`, scheduled because that plan gave at most
/// `allowance_ucr` a period on `interval`, the wallet's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledChange {
    pub plan_id: String,
    pub at: DateTime<Utc>,
    pub interval: String,
    pub allowance_ucr: i64,
}

/// What a daily reset (`daily_ucr`), a renewal (`subscription_ucr`) or an upgrade (both)
/// at `at` took from plan `plan_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanCredits {
    pub plan_id: String,
    pub at: DateTime<Utc>,
    pub daily_ucr: Option<i64>,
    pub subscription_ucr: Option<i64>,
}

/// Usage history and summary filters; they combine with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub thread_id: Option<String>,
    pub model: Option<String>,
    pub member_id: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
}

/// One page of usage history, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsagePage {
    pub events: Vec<UsageRow>,
    /// Cursor of the last event of the page, to continue after it.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

/// Summary grouping keys (SPEC 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Thread,
    /// `""` for usage without a member.
    Member,
    /// Local date `YYYY-MM-DD` in the given zone.
    Day,
}

/// One non-empty summary group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub key: String,
    pub sub_key: Option<String>,
    pub credits_ucr: i64,
    pub events: i64,
}

/// Where a thread's total stands among the platform's threads of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadRank {
    /// The ranked thread and the other threads (wallet, thread id) with usage of the model
    /// in the window.
    pub threads: u64,
    /// Of those, the ones whose total cost is ≤ the given cost (the ranked thread always).
    pub at_or_below: u64,
}

/// A plan (catalogue or custom).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRow {
    pub id: String,
    pub name: String,
    pub daily_ucr: i64,
    pub subscription_ucr: i64,
    /// `MONTHLY` or `ANNUAL`.
    pub interval: String,
    pub model_tiers: Vec<String>,
    pub custom: bool,
    /// A catalogue plan the current catalogue no longer lists (set by `upsert_catalogue`).
    pub retired: bool,
    /// Catalogue file order (ignored for custom plans, which list by id).
    pub position: i64,
    pub updated_at: DateTime<Utc>,
}

/// A purchasable bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRow {
    pub id: String,
    pub credits_ucr: i64,
    pub price_cents: i64,
    pub currency: String,
    pub position: i64,
}

/// A team; its pool is `wallet_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamRow {
    pub id: String,
    pub name: String,
    pub wallet_id: String,
    pub created_at: DateTime<Utc>,
}

/// A team member with spend limits (None = no limit, 0 forbids spending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    pub team_id: String,
    pub user_id: String,
    pub role: MemberRole,
    pub daily_limit_ucr: Option<i64>,
    pub period_limit_ucr: Option<i64>,
    pub added_at: DateTime<Utc>,
}

/// A high-usage review with its findings (JSON written by the review analysis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewRow {
    pub id: String,
    pub wallet_id: String,
    pub thread_id: String,
    pub reporter_id: String,
    pub task_description: String,
    pub model: Option<String>,
    pub preview_status: String,
    pub thread_length: Option<i64>,
    pub context_size: Option<i64>,
    pub status: ReviewStatus,
    pub findings_json: String,
    pub suggested_refund_ucr: i64,
    pub credited_ucr: Option<i64>,
    pub note: Option<String>,
    pub grant_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// What `insert_review` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewInsert {
    New,
    /// SPEC 7: the thread already has a SUBMITTED review; here it is.
    Open(Box<ReviewRow>),
}

/// An API token as stored: its hash, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub hash: TokenHash,
    pub role: TokenRole,
    pub owner_id: Option<String>,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Hex SHA-256 of a token secret. The only form in which a token reaches the database.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

/// Hex digits of a token's hash shown as its id.
pub const TOKEN_ID_CHARS: usize = 16;

impl TokenHash {
    pub fn of_secret(secret: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(secret.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push_str(&format!("{byte:02x}"));
        }
        TokenHash(hex)
    }

    pub fn as_hex(&self) -> &str {
        &self.0
    }

    /// The token's id as the operator sees it (`token list`, `token revoke --id`): the
    /// first 16 hex digits of its hash, which tell nothing of the secret.
    pub fn id(&self) -> &str {
        &self.0[..TOKEN_ID_CHARS.min(self.0.len())]
    }

    pub(crate) fn from_stored(hex: String) -> Self {
        TokenHash(hex)
    }
}

impl std::fmt::Debug for TokenHash {
    // A hash is not a secret, but a short form keeps logs readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.0[..self.0.len().min(8)])
    }
}

/// What [`crate::Store::add_member`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberAdded {
    Added,
    AlreadyMember,
    /// Refused: the team has [`crate::MAX_LIST`] members. Nothing changed.
    TeamFull,
}

/// What [`crate::Store::remove_member`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRemoval {
    Removed,
    NotAMember,
    /// Refused: they are the team's only ADMIN. Nothing changed.
    LastAdmin,
}
