//! The service facade the GraphQL layer calls: it turns a request into core operations —
//! idempotency look-ups first, then pricing (outside any actor, so a slow plugin never
//! holds a wallet), then the wallet's actor — and reads history from the store. It does no
//! authorization: callers check who may do what before they call.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use credits_core::{
    Credits, Entry, EntryKind, GrantId, GrantKind, GrantOp, KeyCheck, Lot, LotOrigin, Member,
    NewWallet, Op, OpError, Plan, PlanId, Request, ReservationId, ReserveOp, SettleOp, Tokens,
    UsageId, UsageOp, UsageRecord, Wallet, WalletId, check_key,
};
use credits_pricing::{PricingError, PricingRegistry};
use credits_store::{
    GrantRow, MemberAdded, MemberRemoval, MemberRole, MemberRow, PlanUpsert, ReservationStatus,
    ReviewRow, Store, StoreError, TeamRow,
};

use crate::directory::Directory;
use crate::events::{BalanceEvent, Subscription};
use crate::wallet::{Applied, ExecError};

/// Why a facade call failed; the GraphQL layer maps each to its code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Pricing(#[from] PricingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
}

/// A refusal as RESERVATION_NOT_ACTIVE.
fn not_active(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::Exec(ExecError::Op(OpError::ReservationNotActive))
    )
}

impl From<OpError> for ServiceError {
    fn from(e: OpError) -> Self {
        ServiceError::Exec(ExecError::Op(e))
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(msg.into())
}

/// A fresh opaque id with a kind prefix: 128 random bits, for what must not be guessed
/// (tokens). Rows use [`new_ordered_id`].
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let mut id = String::with_capacity(prefix.len() + 33);
    id.push_str(prefix);
    id.push('_');
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A fresh API token secret: `cr` and 256 random bits in hex. It is shown once; only its
/// SHA-256 is stored (`TokenHash`).
pub fn new_token() -> String {
    new_id("cr").replace('_', "") + &new_id("").replace('_', "")
}

/// A fresh opaque id that sorts after every id this process made before it: 16 hex digits
/// of wall-clock microseconds, made strictly increasing within the process, then 96 random
/// bits. The store lists wallets, teams and reviews by (creation instant, id); on a manual
/// clock many share an instant, and this id keeps such lists in creation order (SPEC 8:
/// `viewer` lists "in creation order"). Ids that rise also keep a table's primary key
/// appending to its last page instead of dirtying a random one on every insert (a usage
/// row's id is one of about ten B-trees a recordUsage writes; see `docs/BENCHMARKS.md`).
/// The wall clock orders ties only; it is never a domain time, which comes from the
/// injected `Clock`.
pub fn new_ordered_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MICROS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let prev = LAST_MICROS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(0);
    let stamp = now.max(prev.saturating_add(1));
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let mut id = String::with_capacity(prefix.len() + 41);
    id.push_str(prefix);
    id.push('_');
    id.push_str(&format!("{stamp:016x}"));
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

pub fn parse_zone(name: &str) -> ServiceResult<Tz> {
    name.parse::<Tz>()
        .map_err(|_| invalid(format!("unknown time zone {name:?}")))
}

/// An interaction to price and pay for.
#[derive(Clone, Debug)]
pub struct UsageInput {
    pub wallet_id: WalletId,
    pub key: String,
    pub thread_id: String,
    pub model: String,
    pub tokens: Tokens,
    pub member_id: Option<String>,
}

/// The answer to recordUsage and settleReservation.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub usage: UsageRecord,
    pub balance: credits_core::Balance,
    pub replayed: bool,
}

/// A reservation as clients see it.
#[derive(Clone, Debug)]
pub struct ReservationView {
    pub id: ReservationId,
    pub wallet_id: WalletId,
    pub amount: Credits,
    pub status: ReservationStatus,
    pub expires_at: DateTime<Utc>,
}

/// Claimed approvals read per page of a sweep (a sweep reads every page).
const CLAIMED_SWEEP: usize = 100;

/// The whole service on this node.
#[derive(Clone)]
pub struct Ledger {
    dir: Directory,
    store: Store,
    pricing: Arc<PricingRegistry>,
    /// Pricing calls inside plugins at once, at most [`PRICING_CALLS`]: a call stuck in a
    /// plugin keeps its slot, so stuck calls never take the whole blocking pool.
    pricing_slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn usage_of(entry: &Entry) -> ServiceResult<UsageRecord> {
    entry
        .usage()
        .cloned()
        .ok_or_else(|| ServiceError::Exec(ExecError::Op(OpError::IdempotencyConflict)))
}

/// The one COMPENSATION lot of a review's approval.
fn compensation_op(review_id: &str, id: GrantId, amount: Credits, reason: String) -> GrantOp {
    GrantOp {
        id,
        key: None,
        amount,
        kind: GrantKind::Compensation,
        reason: Some(reason),
        expires_at: None,
        origin: Some(LotOrigin::Review {
            review_id: review_id.to_owned(),
        }),
    }
}

/// How long a pricing plugin may take to answer one call (they answer in microseconds).
pub const PRICE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a pricing call may wait for a slot and a thread before it is UNAVAILABLE (the
/// service is overloaded, or stuck calls hold every slot); the tier is not blamed.
pub const PRICE_QUEUE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Pricing calls inside plugins at once: well under tokio's 512 blocking threads.
pub const PRICING_CALLS: usize = 256;

/// How long a reload of the pricing plugins may take before its caller gets UNAVAILABLE.
pub const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs work that enters plugins outside a price call (opening a library runs its
/// initialisers; a check prices samples) on a thread of the blocking pool, so a plugin that
/// never returns holds that thread only, and the caller hears after [`RELOAD_TIMEOUT`]:
/// `Err` says why the work did not finish.
pub async fn plugin_work<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(RELOAD_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "it did not finish within {} s (a plugin's initialiser or price call never returned?)",
            RELOAD_TIMEOUT.as_secs()
        )),
    }
}

/// Reloads the pricing plugins through [`plugin_work`]. A reload asked for while another
/// runs is refused as busy; a new file is opened in a child process first (when the
/// service gives the registry a probe), so no plugin holds the reload lock for good. One
/// not done within [`RELOAD_TIMEOUT`] uses nothing it loaded, even when it ends later
/// (found by review: it swapped its tiers in after its caller had been told it failed).
pub async fn reload_pricing(
    pricing: &Arc<PricingRegistry>,
) -> Result<credits_pricing::ReloadReport, String> {
    let registry = pricing.clone();
    // A second short of the caller's wait: a reload that ends in between is told TooLate.
    let deadline = std::time::Instant::now() + RELOAD_TIMEOUT - std::time::Duration::from_secs(1);
    plugin_work(move || registry.reload_before(Some(deadline)))
        .await
        .map_err(|why| format!("the reload failed: {why}"))?
        .map_err(|e| format!("the reload failed: {e}"))
}

/// Tries of a spend whose member limits keep changing under it before it is UNAVAILABLE.
const STALE_LIMITS_TRIES: u32 = 3;

/// What a refusal was decided on that another node has changed since (see `Ledger::stale`).
enum Stale {
    Limits,
    Plans,
}

impl Ledger {
    pub fn new(dir: Directory, store: Store, pricing: Arc<PricingRegistry>) -> Ledger {
        Ledger {
            dir,
            store,
            pricing,
            pricing_slots: Arc::new(tokio::sync::Semaphore::new(PRICING_CALLS)),
        }
    }

    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn pricing(&self) -> &PricingRegistry {
        &self.pricing
    }

    /// See [`reload_pricing`].
    pub async fn reload_pricing(&self) -> Result<credits_pricing::ReloadReport, String> {
        reload_pricing(&self.pricing).await
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.dir.clock().now()
    }

    pub fn plans(&self) -> Arc<Vec<Plan>> {
        self.dir.plans().snapshot()
    }

    pub fn plan(&self, id: &PlanId) -> Option<Plan> {
        self.plans().iter().find(|p| &p.id == id).cloned()
    }

    /// Plan `id`, or NOT_FOUND. One this node does not know is looked for again in the
    /// store when other nodes may have created it a moment ago (their notice may still be
    /// on its way).
    async fn known_plan(&self, id: &PlanId) -> ServiceResult<Plan> {
        if let Some(plan) = self.plan(id) {
            return Ok(plan);
        }
        if self.dir.several_nodes() {
            reload_plans(&self.dir)
                .await
                .map_err(|e| ServiceError::Exec(ExecError::Unavailable(e.to_string())))?;
        }
        self.plan(id).ok_or(ServiceError::NotFound("plan"))
    }

    // ---- wallets -----------------------------------------------------------------------

    /// Opens a wallet; with a key, a retried call returns the wallet it created, and the
    /// key with other input is IDEMPOTENCY_CONFLICT (SPEC 4).
    pub async fn create_wallet(
        &self,
        owner_id: &str,
        plan_id: &PlanId,
        timezone: Tz,
        billing_anchor: Option<DateTime<Utc>>,
        key: Option<String>,
    ) -> ServiceResult<Wallet> {
        // The canonical input: an omitted anchor stays omitted (its default is the
        // creation instant, which a retry cannot know).
        let request = serde_json::json!({
            "planId": plan_id.0,
            "timezone": timezone.name(),
            "billingAnchor": billing_anchor.map(|t| t.timestamp_micros()),
        })
        .to_string();
        // SPEC 10: input errors come before a replay.
        if billing_anchor.is_some_and(|a| a > self.now()) {
            return Err(invalid("billingAnchor must not be after now"));
        }
        if let Some(k) = &key {
            if k.is_empty() || k.chars().count() > credits_core::wallet::MAX_KEY_CHARS {
                return Err(invalid("idempotencyKey must be 1 to 128 characters"));
            }
            if let Some(done) = self.store.wallet_for_creation_key(owner_id, k).await? {
                // SPEC 10: the plan is judged before a conflict. A replay still returns
                // its wallet when the plan was retired since.
                let plan = self.known_plan(plan_id).await?;
                if done.request.as_deref().is_some_and(|r| r != request) {
                    plan.check_offered().map_err(invalid)?;
                }
                return self.created(done, &request).await;
            }
        }
        self.known_plan(plan_id).await?;
        let key = key.map(|key| credits_store::CreationKey {
            key,
            request: request.clone(),
        });
        let create = || async {
            let new = NewWallet {
                id: WalletId(new_ordered_id("wal")),
                owner_id: owner_id.to_owned(),
                pool: false,
                timezone,
                plan_id: plan_id.clone(),
                billing_anchor,
            };
            let (wallet, entry) = Wallet::create(new, &*self.plans(), self.now())?;
            let row = credits_store::NewWallet::from_core(&wallet, &entry, None, key.clone())?;
            match self.store.create_wallet(&row).await? {
                credits_store::Created::New => Ok(wallet),
                credits_store::Created::Existing(done) => self.created(done, &request).await,
            }
        };
        self.on_fresh_plans(create).await
    }

    /// Runs a creation, and once more if the store refused it because its plan's interval
    /// changed under this node's plans (on another node, maybe): after reading them again.
    async fn on_fresh_plans<T, F, Fut>(&self, create: F) -> ServiceResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ServiceResult<T>>,
    {
        match create().await {
            Err(ServiceError::Store(StoreError::PlanChanged(_))) => {
                reload_plans(&self.dir)
                    .await
                    .map_err(|e| ServiceError::Exec(ExecError::Unavailable(e.to_string())))?;
                create().await
            }
            done => done,
        }
    }

    /// The wallet a recorded createWallet key created, if `request` is what it recorded.
    async fn created(
        &self,
        done: credits_store::KeyedCreation,
        request: &str,
    ) -> ServiceResult<Wallet> {
        if done.request.as_deref().is_some_and(|r| r != request) {
            return Err(OpError::IdempotencyConflict.into());
        }
        self.wallet(&WalletId(done.wallet_id))
            .await?
            .ok_or(ServiceError::NotFound("wallet"))
    }

    /// A wallet as of now, or `None` when it does not exist.
    pub async fn wallet(&self, id: &WalletId) -> ServiceResult<Option<Wallet>> {
        match self.dir.read(id).await {
            Ok(w) => Ok(Some(w)),
            Err(ExecError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn existing(&self, id: &WalletId) -> ServiceResult<Wallet> {
        self.wallet(id)
            .await?
            .ok_or(ServiceError::NotFound("wallet"))
    }

    pub async fn wallets_of_owner(&self, owner_id: &str) -> ServiceResult<Vec<Wallet>> {
        let rows = self.store.wallets_of_owner(owner_id).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().filter(|r| r.team_id.is_none()) {
            if let Some(w) = self.wallet(&WalletId(row.id)).await? {
                out.push(w);
            }
        }
        Ok(out)
    }

    async fn run(&self, id: &WalletId, mut op: Op) -> ServiceResult<Applied> {
        // A spend whose member limits changed since their seat read them (on another node,
        // maybe) is refused undecided: the seat reads them again and the spend is retried.
        let several_nodes = self.dir.several_nodes();
        for attempt in 1.. {
            // Kept for another try only where one may come: a spend of a member, or, with
            // several nodes, an operation a refusal on stale state may meet.
            let may_retry = op.member().is_some()
                || (several_nodes && crate::directory::may_be_refused_on_state(&op));
            let again = (attempt < STALE_LIMITS_TRIES && may_retry).then(|| op.clone());
            let result = self.dir.execute(id, op).await;
            let Some(mut again) = again else {
                return Ok(result?);
            };
            let reseat = match &result {
                Err(ExecError::StaleLimits) => again.member().is_some(),
                Err(ExecError::Op(e)) if several_nodes => match self.stale(id, e, &again).await {
                    Some(Stale::Limits) => true,
                    Some(Stale::Plans) => false,
                    None => return Ok(result?),
                },
                _ => return Ok(result?),
            };
            if reseat {
                let member_id = again.member().map(|m| m.id.clone()).unwrap_or_default();
                let pools = self.dir.pools();
                pools.reseat(id, &member_id);
                let member = pools.member(&self.dir, &self.store, id, &member_id).await?;
                again.set_member(Some(member));
            }
            op = again;
        }
        unreachable!("the loop returns")
    }

    /// Whether a refusal rests on a member's seat or a plan another node changed since
    /// this node read them: neither moves a record of the wallet, so the directory's check
    /// of the stored seq does not see them, and their notice may still be on its way. Any
    /// refusal of a member's spend is checked, not only one for their limit (found by
    /// review: a removed member's spend of more than the pool holds was
    /// INSUFFICIENT_CREDITS, where FORBIDDEN comes first).
    async fn stale(&self, id: &WalletId, refused: &OpError, op: &Op) -> Option<Stale> {
        if let Some(member) = op.member() {
            let stored = self.store.members_version(&id.0).await.ok().flatten();
            if stored.is_some_and(|v| v > member.limits_version) {
                return Some(Stale::Limits);
            }
        }
        match refused {
            // Only a custom plan is edited while nodes run (the catalogue's change with a
            // restart).
            OpError::ModelNotAllowed { plan, .. } if self.plan(plan)?.custom => {
                let known = self.plan(plan);
                reload_plans(&self.dir).await.ok()?;
                (self.plan(plan) != known).then_some(Stale::Plans)
            }
            _ => None,
        }
    }

    pub async fn set_timezone(&self, id: &WalletId, tz: Tz) -> ServiceResult<Wallet> {
        self.run(id, Op::SetTimezone(tz)).await?;
        self.existing(id).await
    }

    pub async fn change_plan(&self, id: &WalletId, plan: &PlanId) -> ServiceResult<Wallet> {
        self.known_plan(plan).await?;
        self.run(id, Op::ChangePlan(plan.clone())).await?;
        self.existing(id).await
    }

    /// The member spending on a pool, with the limits their seat in the pool's supervisor
    /// holds; FORBIDDEN for a non-member.
    async fn member(
        &self,
        wallet: &Wallet,
        member_id: Option<&str>,
    ) -> ServiceResult<Option<Member>> {
        let Some(member_id) = member_id else {
            return Ok(None);
        };
        if !wallet.pool {
            return Err(invalid("memberId is only allowed on a team wallet"));
        }
        let member = self
            .dir
            .pools()
            .member(&self.dir, &self.store, &wallet.id, member_id)
            .await?;
        Ok(Some(member))
    }

    /// Answers a call whose key is already recorded: the original record, or a conflict.
    async fn recorded(
        &self,
        id: &WalletId,
        key: &str,
        request: Option<&Request>,
    ) -> ServiceResult<Option<Entry>> {
        let Some(record) = self.store.entry_by_key(&id.0, key).await? else {
            return Ok(None);
        };
        let entry = record.entry()?;
        match check_key(Some(&entry), request) {
            KeyCheck::Replay(e) => Ok(Some(e.clone())),
            _ => Err(OpError::IdempotencyConflict.into()),
        }
    }

    /// Prices a call on a thread of the blocking pool, so that a plugin that never returns
    /// holds that thread only, never a runtime worker; one that has not answered within
    /// [`PRICE_TIMEOUT`] is PRICING_FAILED and its tier disabled until the next reload.
    async fn price(&self, model: &str, tokens: Tokens) -> ServiceResult<(Credits, String, String)> {
        let usage = credits_pricing::Usage {
            input_tokens: i64::try_from(tokens.input).unwrap_or(i64::MAX),
            cached_input_tokens: i64::try_from(tokens.cached).unwrap_or(i64::MAX),
            output_tokens: i64::try_from(tokens.output).unwrap_or(i64::MAX),
        };
        let unavailable = |why: String| ServiceError::Exec(ExecError::Unavailable(why));
        let tier = self.pricing.tier_of(model)?;
        let admission = tier.admit().ok_or_else(|| {
            unavailable(format!(
                "pricing is overloaded: {} calls are in the plugin of {model}",
                credits_pricing::MAX_CALLS_PER_LIBRARY
            ))
        })?;
        let queued_until = std::time::Instant::now() + PRICE_QUEUE_LIMIT;
        let slot = tokio::time::timeout(
            PRICE_QUEUE_LIMIT,
            self.pricing_slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| unavailable("pricing is overloaded: every pricing slot is busy".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        // Timed from when the plugin is entered, not from the hand-off: a call still queued
        // for a thread (a busy machine) is not the plugin's fault.
        let entered = Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
        let (mark, handle, owned) = (entered.clone(), tier.clone(), model.to_owned());
        let mut call = tokio::task::spawn_blocking(move || {
            let (_slot, _admission) = (slot, admission);
            let _ = mark.set(std::time::Instant::now());
            handle.price(&owned, usage)
        });
        let price = loop {
            let left = match entered.get() {
                Some(t) => PRICE_TIMEOUT.saturating_sub(t.elapsed()),
                None => queued_until.saturating_duration_since(std::time::Instant::now()),
            };
            match tokio::time::timeout(left, &mut call).await {
                Ok(Ok(price)) => break price?,
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Err(_) => match entered.get() {
                    Some(t) if t.elapsed() >= PRICE_TIMEOUT => {
                        let e = tier.stall(model);
                        tracing::error!(error = %e, "a pricing plugin did not answer in time; its tier is disabled until pricing is reloaded");
                        return Err(e.into());
                    }
                    None if std::time::Instant::now() >= queued_until => {
                        return Err(unavailable(
                            "pricing is overloaded: no thread in time".into(),
                        ));
                    }
                    _ => continue,
                },
            }
        };
        Ok((
            Credits::from_micro(price.cost_micro_credits),
            price.priced_by.tier().to_owned(),
            price.priced_by.as_str().to_owned(),
        ))
    }

    pub async fn record_usage(&self, input: UsageInput) -> ServiceResult<Receipt> {
        let wallet = self.existing(&input.wallet_id).await?;
        let mut op = UsageOp {
            id: UsageId(new_ordered_id("use")),
            key: input.key.clone(),
            thread_id: input.thread_id,
            model: input.model,
            tier: String::new(),
            tokens: input.tokens,
            cost: Credits::ZERO,
            priced_by: String::new(),
            member: unchecked_member(input.member_id.as_deref()),
        };
        // SPEC 10: input errors first, then membership, then a recorded key, then pricing
        // and funds. The wallet actor answers a key it knows as a replay; the store is
        // asked only when a call is about to be refused, so that a retry of a call
        // recorded long ago still gets its receipt, not a refusal.
        wallet.validate(&Op::Usage(op.clone()))?;
        op.member = self.member(&wallet, input.member_id.as_deref()).await?;
        let request = Op::Usage(op.clone()).request();
        let refused = match self.price(&op.model, op.tokens).await {
            Ok((cost, tier, priced_by)) => {
                op.cost = cost;
                op.tier = tier;
                op.priced_by = priced_by;
                match self.run(&input.wallet_id, Op::Usage(op)).await {
                    Ok(applied) => {
                        return Ok(Receipt {
                            usage: usage_of(&applied.entry)?,
                            balance: applied.balance,
                            replayed: applied.replayed,
                        });
                    }
                    Err(e @ ServiceError::Exec(ExecError::Op(_))) => e,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => {
                // A model gone since a reload, say: the first attempt of this retry may be
                // in flight still, priced before the reload.
                self.wait_for_calls_ahead(&input.wallet_id).await?;
                e
            }
        };
        match self
            .recorded(&input.wallet_id, &input.key, request.as_ref())
            .await?
        {
            Some(e) => Ok(Receipt {
                usage: usage_of(&e)?,
                balance: self.existing(&input.wallet_id).await?.balance(),
                replayed: true,
            }),
            None => Err(refused),
        }
    }

    /// What recordUsage would charge now: input, model and plan checks only.
    pub async fn quote(
        &self,
        wallet_id: &WalletId,
        model: &str,
        tokens: Tokens,
    ) -> ServiceResult<Credits> {
        let wallet = self.existing(wallet_id).await?;
        let (cost, tier, _) = self.price(model, tokens).await?;
        wallet.check_tier(&tier, &*self.plans())?;
        Ok(cost)
    }

    pub async fn reserve(
        &self,
        wallet_id: &WalletId,
        key: String,
        amount: Credits,
        ttl_seconds: i64,
        member_id: Option<String>,
    ) -> ServiceResult<ReservationView> {
        // Input errors come before NOT_FOUND.
        let ttl = u32::try_from(ttl_seconds)
            .ok()
            .filter(|t| credits_core::RESERVATION_TTL_SECONDS.contains(t))
            .ok_or_else(|| invalid("ttlSeconds must be 1 to 3600"))?;
        let wallet = self.existing(wallet_id).await?;
        let mut op = ReserveOp {
            id: ReservationId(new_ordered_id("res")),
            key: key.clone(),
            amount,
            ttl_seconds: ttl,
            member: unchecked_member(member_id.as_deref()),
        };
        wallet.validate(&Op::Reserve(op.clone()))?;
        op.member = self.member(&wallet, member_id.as_deref()).await?;
        let entry = match self
            .recorded(wallet_id, &key, Op::Reserve(op.clone()).request().as_ref())
            .await?
        {
            Some(e) => e,
            None => self.run(wallet_id, Op::Reserve(op)).await?.entry,
        };
        let EntryKind::Reserved { reservation, .. } = &entry.kind else {
            return Err(OpError::IdempotencyConflict.into());
        };
        let status = match self.store.reservation(&reservation.id.0).await? {
            Some(row) => self.status_now(&row),
            None => ReservationStatus::Active,
        };
        Ok(ReservationView {
            id: reservation.id.clone(),
            wallet_id: wallet_id.clone(),
            amount: reservation.amount,
            status,
            expires_at: reservation.expires_at,
        })
    }

    /// A reservation's status as of now: its row may still say ACTIVE after `expiresAt`
    /// until the wallet records the expiry (SPEC 3: ACTIVE only while now < expiresAt).
    fn status_now(&self, row: &credits_store::ReservationRow) -> ReservationStatus {
        match row.status {
            ReservationStatus::Active if row.expires_at <= self.now() => ReservationStatus::Expired,
            status => status,
        }
    }

    pub async fn settle(
        &self,
        reservation_id: &ReservationId,
        thread_id: String,
        model: String,
        tokens: Tokens,
    ) -> ServiceResult<Receipt> {
        let row = self.reservation_row(reservation_id).await?;
        let wallet_id = WalletId(row.wallet_id.clone());
        let mut op = SettleOp {
            reservation_id: reservation_id.clone(),
            usage_id: UsageId(new_ordered_id("use")),
            thread_id,
            model,
            tier: String::new(),
            tokens,
            cost: Credits::ZERO,
            priced_by: String::new(),
        };
        let wallet = self.existing(&wallet_id).await?;
        wallet.validate(&Op::Settle(op.clone()))?;
        let refusal = match self.stored_settle(&row, &op, &wallet) {
            None => match self.price(&op.model, op.tokens).await {
                Ok((cost, tier, priced_by)) => {
                    op.cost = cost;
                    op.tier = tier;
                    op.priced_by = priced_by;
                    // The reservation may have been made on another node a moment ago:
                    // the actor must not refuse it as unknown before it has read that far.
                    self.dir.announce(&wallet_id, Some(row.seq));
                    match self.run(&wallet_id, Op::Settle(op.clone())).await {
                        Ok(applied) => {
                            return Ok(Receipt {
                                usage: usage_of(&applied.entry)?,
                                balance: applied.balance,
                                replayed: applied.replayed,
                            });
                        }
                        // As in `release`: an actor that opened the wallet after another
                        // node's settle landed knows nothing of it.
                        Err(e) if not_active(&e) => e,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => e,
            },
            // Expired by the clock, not yet in the store.
            Some(Err(e)) if row.status == ReservationStatus::Active => e,
            Some(answer) => return answer,
        };
        // Refused by the clock, by pricing or as not active while the store said ACTIVE:
        // this may be a retry of a settle whose commit is in flight or has just landed.
        // What the store then says decides.
        self.wait_for_calls_ahead(&wallet_id).await?;
        let row = self.reservation_row(reservation_id).await?;
        let wallet = self.existing(&wallet_id).await?;
        self.stored_settle(&row, &op, &wallet)
            .unwrap_or(Err(refusal))
    }

    async fn reservation_row(
        &self,
        id: &ReservationId,
    ) -> ServiceResult<credits_store::ReservationRow> {
        self.store
            .reservation(&id.0)
            .await?
            .ok_or(ServiceError::NotFound("reservation"))
    }

    /// What a stored reservation answers a settle on `wallet` (as read now): `None` while
    /// it is active, the original receipt if this settle is recorded, a refusal otherwise.
    fn stored_settle(
        &self,
        row: &credits_store::ReservationRow,
        op: &SettleOp,
        wallet: &Wallet,
    ) -> Option<ServiceResult<Receipt>> {
        match self.status_now(row) {
            ReservationStatus::Active => None,
            ReservationStatus::Settled => Some(settled_receipt(row, op, wallet)),
            ReservationStatus::Released | ReservationStatus::Expired => {
                Some(Err(OpError::ReservationNotActive.into()))
            }
        }
    }

    /// Returns once every call the wallet's actor has taken so far is durable or has
    /// failed (a tick is answered only then). A retry about to be refused on what the store
    /// says (a reservation expired by the clock, a model gone since a reload) waits here
    /// first: its first attempt may be in flight and then be what it must answer (SPEC 4).
    async fn wait_for_calls_ahead(&self, wallet_id: &WalletId) -> ServiceResult<()> {
        Ok(self.dir.tick(wallet_id).await?)
    }

    pub async fn release(&self, reservation_id: &ReservationId) -> ServiceResult<ReservationView> {
        let mut row = self.reservation_row(reservation_id).await?;
        let wallet_id = WalletId(row.wallet_id.clone());
        if row.status == ReservationStatus::Active
            && self.status_now(&row) == ReservationStatus::Expired
        {
            // As in `settle`: a release in flight, made before the expiry, decides.
            self.wait_for_calls_ahead(&wallet_id).await?;
            row = self.reservation_row(reservation_id).await?;
        }
        let view = |status| ReservationView {
            id: reservation_id.clone(),
            wallet_id: wallet_id.clone(),
            amount: Credits::from_micro(row.amount_ucr),
            status,
            expires_at: row.expires_at,
        };
        match self.status_now(&row) {
            ReservationStatus::Released => return Ok(view(ReservationStatus::Released)),
            ReservationStatus::Settled | ReservationStatus::Expired => {
                return Err(OpError::ReservationNotActive.into());
            }
            ReservationStatus::Active => {}
        }
        // As in `settle`: read up to the reservation before deciding.
        self.dir.announce(&wallet_id, Some(row.seq));
        match self
            .run(&wallet_id, Op::Release(reservation_id.clone()))
            .await
        {
            Ok(_) => Ok(view(ReservationStatus::Released)),
            // Read ACTIVE above, refused by an actor that opened the wallet after another
            // node's release landed (found by review): what the store says now decides.
            Err(e) if not_active(&e) => {
                self.wait_for_calls_ahead(&wallet_id).await?;
                match self.status_now(&self.reservation_row(reservation_id).await?) {
                    ReservationStatus::Released => Ok(view(ReservationStatus::Released)),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn grant(
        &self,
        wallet_id: &WalletId,
        key: String,
        amount: Credits,
        kind: GrantKind,
        reason: String,
        expires_at: Option<DateTime<Utc>>,
    ) -> ServiceResult<Lot> {
        let wallet = self.existing(wallet_id).await?;
        let op = GrantOp {
            id: GrantId(new_ordered_id("grt")),
            key: Some(key.clone()),
            amount,
            kind,
            reason: Some(reason),
            expires_at,
            origin: None,
        };
        wallet.validate(&Op::Grant(op.clone()))?;
        let entry = match self
            .recorded(wallet_id, &key, Op::Grant(op.clone()).request().as_ref())
            .await?
        {
            Some(e) => e,
            None => self.run(wallet_id, Op::Grant(op)).await?.entry,
        };
        self.lot_of(&entry).await
    }

    /// The lot a grant record created, as it stands now.
    async fn lot_of(&self, entry: &Entry) -> ServiceResult<Lot> {
        let lot = entry.grant().ok_or(OpError::IdempotencyConflict)?;
        self.grant_by_id(&lot.id)
            .await?
            .ok_or(ServiceError::NotFound("grant"))
    }

    /// A lot by id with its current remaining, from the store.
    pub async fn grant_by_id(&self, id: &GrantId) -> ServiceResult<Option<Lot>> {
        Ok(self
            .store
            .grant(&id.0)
            .await?
            .map(|row| lot_from_row(&row))
            .transpose()?)
    }

    pub async fn purchase_bundle(
        &self,
        wallet_id: &WalletId,
        bundle_id: &str,
        payment_reference: String,
    ) -> ServiceResult<Lot> {
        let wallet = self.existing(wallet_id).await?;
        let n = payment_reference.chars().count();
        if n == 0 || n > credits_core::wallet::MAX_KEY_CHARS {
            return Err(invalid("paymentReference must be 1 to 128 characters"));
        }
        // A retry returns its grant even when the catalogue has dropped the bundle since
        // (a purchase keeps what it bought). Any other use of the reference is judged
        // after the bundle (SPEC 10: NOT_FOUND before IDEMPOTENCY_CONFLICT).
        let replay = self.purchased(&wallet.id, bundle_id, &payment_reference);
        if let Ok(Some(lot)) = replay.await {
            return Ok(lot);
        }
        let bundle = self
            .store
            .bundle(bundle_id)
            .await?
            .ok_or(ServiceError::NotFound("bundle"))?;
        let op = GrantOp {
            id: GrantId(new_ordered_id("grt")),
            key: None,
            amount: Credits::from_micro(bundle.credits_ucr),
            kind: GrantKind::Purchase,
            reason: None,
            expires_at: None,
            origin: Some(LotOrigin::Bundle {
                bundle_id: bundle.id.clone(),
                payment_reference: payment_reference.clone(),
            }),
        };
        let reference = payment_reference.as_str();
        self.grant_once(&wallet.id, op, || {
            self.purchased(&wallet.id, bundle_id, reference)
        })
        .await
    }

    /// Grants the one lot `op`'s origin stands for (a payment's, a review's): the lot
    /// `stored` finds, or a new one. A second grant for the same origin, decided before the
    /// first was stored, is refused by the wallet only once the first is durable; `stored`
    /// then finds that one.
    async fn grant_once<F>(
        &self,
        wallet_id: &WalletId,
        op: GrantOp,
        stored: impl Fn() -> F,
    ) -> ServiceResult<Lot>
    where
        F: std::future::Future<Output = ServiceResult<Option<Lot>>>,
    {
        if let Some(lot) = stored().await? {
            return Ok(lot);
        }
        match self.run(wallet_id, Op::Grant(op)).await {
            Ok(applied) => self.lot_of(&applied.entry).await,
            Err(ServiceError::Exec(ExecError::Op(OpError::IdempotencyConflict))) => {
                stored().await?.ok_or(OpError::IdempotencyConflict.into())
            }
            Err(e) => Err(e),
        }
    }

    /// The lot a payment reference bought: `Some` for the same wallet and bundle, a
    /// conflict for any other, `None` when the reference is unused.
    async fn purchased(
        &self,
        wallet_id: &WalletId,
        bundle_id: &str,
        payment_reference: &str,
    ) -> ServiceResult<Option<Lot>> {
        match self
            .store
            .grant_by_payment_reference(payment_reference)
            .await?
        {
            Some(row)
                if row.wallet_id == wallet_id.0 && row.bundle_id.as_deref() == Some(bundle_id) =>
            {
                Ok(Some(lot_from_row(&row)?))
            }
            Some(_) => Err(OpError::IdempotencyConflict.into()),
            None => Ok(None),
        }
    }

    /// The COMPENSATION lot of an approved review. `grant_id` is the one the review's
    /// approval claimed, so every caller completing the same approval sends the same
    /// operation, and the wallet grants one lot per review. The operation carries no
    /// idempotency key: keys are the clients' (SPEC 1), and a client's record under any
    /// key must not stand in for the review's grant.
    pub async fn compensate(
        &self,
        wallet_id: &WalletId,
        review_id: &str,
        grant_id: GrantId,
        amount: Credits,
        reason: String,
    ) -> ServiceResult<Lot> {
        let op = compensation_op(review_id, grant_id.clone(), amount, reason);
        let grant_id = &grant_id;
        self.grant_once(wallet_id, op, || {
            self.compensation(wallet_id, review_id, grant_id)
        })
        .await
    }

    /// Refuses, before an approval is claimed, a compensation the wallet could not take now
    /// (a claim is only for a grant that can be made: a refused call changes nothing).
    pub async fn check_compensation(
        &self,
        wallet_id: &WalletId,
        review_id: &str,
        amount: Credits,
    ) -> ServiceResult<()> {
        let wallet = self.existing(wallet_id).await?;
        let id = GrantId(new_ordered_id("grt"));
        let op = Op::Grant(compensation_op(review_id, id, amount, String::new()));
        wallet.validate(&op)?;
        match wallet.decide(&op, &*self.plans()) {
            // The review's lot is already granted (another admin's approval): the claim
            // fails, and the review read back answers.
            Ok(_) | Err(OpError::IdempotencyConflict) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Completes the approval a review was claimed for: its COMPENSATION lot, then
    /// CREDITED, announced to `reviewUpdated` watchers. True when this call finished it;
    /// false when the review was not claimed or another caller finished it first. Safe to
    /// run beside any other completion of the same approval.
    pub async fn complete_approval(&self, review: &ReviewRow) -> ServiceResult<bool> {
        let (Some(claimed), Some(grant)) = (review.credited_ucr, review.grant_id.clone()) else {
            return Ok(false);
        };
        // The review only, not its thread: every member of a pool sees the pool's lots,
        // and a plain member may not see another's threads (SPEC 10).
        let reason = format!("high usage review {}", review.id);
        self.compensate(
            &WalletId(review.wallet_id.clone()),
            &review.id,
            GrantId(grant),
            Credits::from_micro(claimed),
            reason,
        )
        .await?;
        let finished = self
            .store
            .finish_review_approval(&review.id, self.now())
            .await?;
        if finished {
            self.dir.reviews().announce(&review.id);
        }
        Ok(finished)
    }

    /// Completes every approval left claimed, as by an admin's call interrupted between
    /// claiming the review and finishing it (a crash, a lost connection): `creditd` runs
    /// this at start and every minute. Returns how many it finished; one that fails is
    /// logged and left for the next sweep, and the others are still completed.
    pub async fn complete_claimed_approvals(&self) -> ServiceResult<usize> {
        let mut finished = 0;
        let mut after = None;
        loop {
            let page = self
                .store
                .claimed_reviews(after.as_ref(), CLAIMED_SWEEP)
                .await?;
            for review in &page {
                match self.complete_approval(review).await {
                    Ok(true) => finished += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(review = %review.id, error = %e, "a claimed approval could not be completed");
                    }
                }
            }
            if page.len() < CLAIMED_SWEEP {
                return Ok(finished);
            }
            after = page.into_iter().last();
        }
    }

    /// The stored lot the review's approval claimed, if it has been granted.
    async fn compensation(
        &self,
        wallet_id: &WalletId,
        review_id: &str,
        grant_id: &GrantId,
    ) -> ServiceResult<Option<Lot>> {
        match self.store.grant(&grant_id.0).await? {
            Some(row)
                if row.wallet_id == wallet_id.0 && row.review_id.as_deref() == Some(review_id) =>
            {
                Ok(Some(lot_from_row(&row)?))
            }
            Some(_) => Err(OpError::IdempotencyConflict.into()),
            None => Ok(None),
        }
    }

    pub async fn subscribe(&self, wallet_id: &WalletId) -> ServiceResult<Subscription> {
        Ok(self.dir.subscribe(wallet_id).await?)
    }

    /// The events of a wallet's durable records with seq > `after`, at most `limit`, in
    /// seq order, read from the store: what a subscriber that fell behind missed.
    pub async fn events_after(
        &self,
        wallet_id: &WalletId,
        after: u64,
        limit: usize,
    ) -> ServiceResult<Vec<BalanceEvent>> {
        let records = self.store.events_after(&wallet_id.0, after, limit).await?;
        let event = |r: &credits_store::LedgerRecord| -> ServiceResult<BalanceEvent> {
            Ok(BalanceEvent::change(
                wallet_id.clone(),
                &r.entry()?,
                r.balance()?,
            ))
        };
        records.iter().map(event).collect()
    }

    // ---- plans -------------------------------------------------------------------------

    /// Creates or edits a custom plan; catalogue ids are refused, as is changing the
    /// interval of a plan in use.
    pub async fn upsert_plan(&self, plan: Plan) -> ServiceResult<Plan> {
        plan.check_credits().map_err(invalid)?;
        if let Some(existing) = self.plan(&plan.id) {
            if !existing.custom {
                return Err(invalid(format!("{} is a catalogue plan", plan.id)));
            }
            if existing.interval != plan.interval && self.store.plan_in_use(&plan.id.0).await? {
                return Err(invalid(
                    "the interval of a plan in use (a wallet's, or scheduled for one) cannot change",
                ));
            }
        }
        // What fell due up to now is applied under the plan as it was (SPEC 5: an edit
        // counts from each wallet's next reset or renewal), not by a sweep that runs late.
        // Best effort: a wallet whose commits keep failing (any plan's) does not block
        // every plan edit; the history below covers it.
        self.dir.tick_due().await;
        // The edit's instant, after that: what fell due by it keeps the credits before the
        // edit (`Plan::earlier`), also when it is applied late; the store keeps the same
        // history.
        let now = self.now();
        let mut earlier = Vec::new();
        if let Some(existing) = self.plan(&plan.id) {
            earlier.clone_from(&existing.earlier);
            let edited = (existing.daily_credits, existing.subscription_credits)
                != (plan.daily_credits, plan.subscription_credits);
            if edited && earlier.last().is_none_or(|e| e.until < now) {
                earlier.push(credits_core::EarlierCredits {
                    until: now,
                    daily: existing.daily_credits,
                    subscription: existing.subscription_credits,
                });
            }
        }
        let plan = Plan {
            custom: true,
            retired: false,
            earlier,
            ..plan
        };
        let position = self.plans().len() as i64;
        // The store decides again on its rows, atomically with the write (another node's
        // plans or wallets may be newer than this node's).
        match self
            .store
            .upsert_plan(&plan_row(&plan, position, now))
            .await?
        {
            PlanUpsert::Written => {}
            PlanUpsert::Catalogue => {
                return Err(invalid(format!("{} is a catalogue plan", plan.id)));
            }
            PlanUpsert::IntervalInUse => {
                return Err(invalid("the interval of a plan in use cannot change"));
            }
        }
        let mut plans: Vec<Plan> = self
            .plans()
            .iter()
            .filter(|p| p.id != plan.id)
            .cloned()
            .collect();
        plans.push(plan.clone());
        sort_plans(&mut plans);
        self.dir.plans().replace(plans);
        Ok(plan)
    }

    // ---- teams -------------------------------------------------------------------------

    pub async fn create_team(
        &self,
        name: String,
        plan_id: &PlanId,
        timezone: Tz,
        admins: Vec<String>,
    ) -> ServiceResult<TeamRow> {
        if admins.is_empty() {
            return Err(invalid("a team needs at least one admin"));
        }
        for a in &admins {
            if a.is_empty() || a.chars().count() > credits_core::wallet::MAX_KEY_CHARS {
                return Err(invalid("user ids are 1 to 128 characters"));
            }
        }
        if name.is_empty() || name.chars().count() > credits_core::wallet::MAX_TEXT_CHARS {
            return Err(invalid("name must be 1 to 4096 characters"));
        }
        self.known_plan(plan_id).await?;
        self.on_fresh_plans(|| self.create_team_once(&name, plan_id, timezone, &admins))
            .await
    }

    async fn create_team_once(
        &self,
        name: &str,
        plan_id: &PlanId,
        timezone: Tz,
        admins: &[String],
    ) -> ServiceResult<TeamRow> {
        let team_id = new_ordered_id("team");
        let new = NewWallet {
            id: WalletId(new_ordered_id("wal")),
            owner_id: team_id.clone(),
            pool: true,
            timezone,
            plan_id: plan_id.clone(),
            billing_anchor: None,
        };
        let now = self.now();
        let (wallet, entry) = Wallet::create(new, &*self.plans(), now)?;
        let pool =
            credits_store::NewWallet::from_core(&wallet, &entry, Some(team_id.clone()), None)?;
        let team = TeamRow {
            id: team_id.clone(),
            name: name.to_owned(),
            wallet_id: wallet.id.0.clone(),
            created_at: now,
        };
        let mut seen = std::collections::BTreeSet::new();
        let members: Vec<MemberRow> = admins
            .iter()
            .filter(|a| seen.insert(*a))
            .map(|user_id| MemberRow {
                team_id: team_id.clone(),
                user_id: user_id.clone(),
                role: MemberRole::Admin,
                daily_limit_ucr: None,
                period_limit_ucr: None,
                added_at: now,
            })
            .collect();
        self.store.create_team(&team, &pool, &members).await?;
        Ok(team)
    }

    pub async fn team(&self, id: &str) -> ServiceResult<Option<TeamRow>> {
        Ok(self.store.team(id).await?)
    }

    /// The first `limit` members of a team (see [`Store::first_members`]).
    pub async fn members(&self, team_id: &str, limit: usize) -> ServiceResult<Vec<MemberRow>> {
        Ok(self.store.first_members(team_id, limit).await?)
    }

    pub async fn add_member(
        &self,
        team_id: &str,
        user_id: String,
        role: MemberRole,
        daily: Option<Credits>,
        period: Option<Credits>,
    ) -> ServiceResult<MemberRow> {
        if user_id.is_empty() || user_id.chars().count() > credits_core::wallet::MAX_KEY_CHARS {
            return Err(invalid("userId must be 1 to 128 characters"));
        }
        self.team(team_id)
            .await?
            .ok_or(ServiceError::NotFound("team"))?;
        let row = MemberRow {
            team_id: team_id.to_owned(),
            user_id,
            role,
            daily_limit_ucr: daily.map(Credits::micro),
            period_limit_ucr: period.map(Credits::micro),
            added_at: self.now(),
        };
        match self.store.add_member(&row).await? {
            MemberAdded::Added => Ok(row),
            MemberAdded::AlreadyMember => {
                Err(invalid(format!("{} is already a member", row.user_id)))
            }
            MemberAdded::TeamFull => Err(invalid(format!(
                "a team has at most {} members",
                credits_store::MAX_LIST
            ))),
        }
    }

    pub async fn set_member_limits(
        &self,
        team_id: &str,
        user_id: &str,
        daily: Option<Credits>,
        period: Option<Credits>,
    ) -> ServiceResult<MemberRow> {
        self.team(team_id)
            .await?
            .ok_or(ServiceError::NotFound("team"))?;
        if !self
            .store
            .set_member_limits(
                team_id,
                user_id,
                daily.map(Credits::micro),
                period.map(Credits::micro),
            )
            .await?
        {
            return Err(ServiceError::NotFound("member"));
        }
        self.dir.pools().forget(team_id, user_id);
        self.store
            .member(team_id, user_id)
            .await?
            .ok_or(ServiceError::NotFound("member"))
    }

    pub async fn remove_member(&self, team_id: &str, user_id: &str) -> ServiceResult<bool> {
        self.team(team_id)
            .await?
            .ok_or(ServiceError::NotFound("team"))?;
        match self.store.remove_member(team_id, user_id).await? {
            MemberRemoval::Removed => {
                self.dir.pools().forget(team_id, user_id);
                Ok(true)
            }
            MemberRemoval::NotAMember => Ok(false),
            MemberRemoval::LastAdmin => Err(invalid("a team keeps at least one admin")),
        }
    }

    // ---- clock and pricing -------------------------------------------------------------

    /// Moves a manual clock; `None` on the real clock.
    pub async fn advance_clock(&self, seconds: i64) -> ServiceResult<Option<DateTime<Utc>>> {
        if seconds < 0 {
            return Err(invalid("seconds must not be negative"));
        }
        Ok(self
            .dir
            .advance_clock(chrono::Duration::seconds(seconds))
            .await?)
    }
}

/// The receipt of a recorded settle, replayed: its usage and the wallet's balance now.
fn settled_receipt(
    row: &credits_store::ReservationRow,
    op: &SettleOp,
    wallet: &Wallet,
) -> ServiceResult<Receipt> {
    let (stored, usage) = row.settlement()?.ok_or_else(|| {
        StoreError::Corrupt(format!("reservation {} settled without its settle", row.id))
    })?;
    if Some(stored) != Op::Settle(op.clone()).request() {
        return Err(OpError::IdempotencyConflict.into());
    }
    Ok(Receipt {
        usage,
        balance: wallet.balance(),
        replayed: true,
    })
}

/// A member named by the caller, before membership and limits are looked up: enough for
/// the input checks, which only ask whether a member was named.
fn unchecked_member(id: Option<&str>) -> Option<Member> {
    id.map(|id| Member {
        id: id.to_owned(),
        daily_limit: None,
        period_limit: None,
        limits_version: 0,
    })
}

/// Catalogue plans keep their file order; custom plans follow, by id (SPEC 5).
pub fn sort_plans(plans: &mut [Plan]) {
    plans.sort_by(|a, b| {
        (a.custom, if a.custom { a.id.0.as_str() } else { "" })
            .cmp(&(b.custom, if b.custom { b.id.0.as_str() } else { "" }))
    });
}

pub fn plan_row(p: &Plan, position: i64, now: DateTime<Utc>) -> credits_store::PlanRow {
    credits_store::PlanRow {
        id: p.id.0.clone(),
        name: p.name.clone(),
        daily_ucr: p.daily_credits.micro(),
        subscription_ucr: p.subscription_credits.micro(),
        interval: p.interval.as_str().to_owned(),
        model_tiers: p.model_tiers.clone(),
        custom: p.custom,
        retired: p.retired,
        position,
        updated_at: now,
    }
}

/// Reads the plans from the store into this node's book (see `Shared::reread_plans`).
pub async fn reload_plans(dir: &Directory) -> Result<(), crate::store::StoreError> {
    dir.shared.reread_plans().await
}

/// Every stored plan, in the catalogue's order, with its credit history.
pub async fn stored_plans(store: &Store) -> Result<Vec<Plan>, StoreError> {
    let mut history = store.plan_credit_history().await?;
    let mut plans = store
        .plans()
        .await?
        .iter()
        .map(|row| {
            let mut plan = plan_from_row(row)?;
            plan.earlier = history.remove(&row.id).unwrap_or_default();
            Ok(plan)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    sort_plans(&mut plans);
    Ok(plans)
}

pub fn plan_from_row(r: &credits_store::PlanRow) -> Result<Plan, StoreError> {
    let interval = credits_core::BillingInterval::parse(&r.interval)
        .ok_or_else(|| StoreError::Corrupt(format!("plan {}: interval {}", r.id, r.interval)))?;
    Ok(Plan {
        id: PlanId(r.id.clone()),
        name: r.name.clone(),
        daily_credits: Credits::from_micro(r.daily_ucr),
        subscription_credits: Credits::from_micro(r.subscription_ucr),
        interval,
        model_tiers: r.model_tiers.clone(),
        custom: r.custom,
        retired: r.retired,
        earlier: Vec::new(),
    })
}

pub fn lot_from_row(row: &GrantRow) -> Result<Lot, StoreError> {
    let kind = credits_store::grant_kind(&row.kind)
        .ok_or_else(|| StoreError::Corrupt(format!("grant {}: kind {}", row.id, row.kind)))?;
    Ok(Lot {
        id: GrantId(row.id.clone()),
        kind,
        amount: Credits::from_micro(row.amount_ucr),
        remaining: Credits::from_micro(row.remaining_ucr()),
        held: Credits::from_micro(row.held_ucr),
        spent: Credits::from_micro(row.spent_ucr),
        expired: Credits::from_micro(row.expired_ucr),
        reason: row.reason.clone(),
        granted_at: row.granted_at,
        expires_at: row.expires_at,
        expiry_applied: row.expired_ucr > 0,
        origin: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: a grant kind or plan interval the code does not know (a corrupt row,
    /// or one written by a newer version) was read as PURCHASE or MONTHLY, so the wallet
    /// spent or renewed by the wrong rules. It is corrupt data now (UNAVAILABLE).
    #[test]
    fn unknown_kinds_and_intervals_are_corrupt_data() {
        let plan = credits_store::PlanRow {
            id: "p".into(),
            name: "P".into(),
            daily_ucr: 0,
            subscription_ucr: 0,
            interval: "ANNUAL".into(),
            model_tiers: vec![],
            custom: true,
            retired: false,
            position: 0,
            updated_at: DateTime::UNIX_EPOCH,
        };
        let read = plan_from_row(&plan).unwrap();
        assert_eq!(read.interval, credits_core::BillingInterval::Annual);
        assert_eq!(plan_row(&read, 0, DateTime::UNIX_EPOCH).interval, "ANNUAL");
        let weekly = credits_store::PlanRow {
            interval: "WEEKLY".into(),
            ..plan
        };
        assert!(matches!(
            plan_from_row(&weekly),
            Err(StoreError::Corrupt(_))
        ));

        let grant = GrantRow {
            id: "grt_1".into(),
            wallet_id: "wal_1".into(),
            seq: 1,
            kind: "COMPENSATION".into(),
            reason: None,
            amount_ucr: 5,
            spent_ucr: 1,
            held_ucr: 0,
            expired_ucr: 0,
            expires_at: None,
            payment_reference: None,
            bundle_id: None,
            review_id: None,
            granted_at: DateTime::UNIX_EPOCH,
        };
        let lot = lot_from_row(&grant).unwrap();
        assert_eq!(
            (lot.kind, lot.remaining),
            (GrantKind::Compensation, Credits::from_micro(4))
        );
        let unknown = GrantRow {
            kind: "GIFT".into(),
            ..grant
        };
        assert!(matches!(
            lot_from_row(&unknown),
            Err(StoreError::Corrupt(_))
        ));
    }
}
