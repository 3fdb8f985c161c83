//! The wallet directory: wallet id → its actor on this node. The first call to a wallet
//! activates it (loads its snapshot and spawns the actor); an idle actor stops by itself and
//! leaves the directory. Two calls racing to activate one wallet wait on the same activation,
//! so there is never more than one actor per wallet here. Other nodes may run their own; the
//! store's fenced commit keeps them honest.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use credits_core::{NewWallet, Op, OpError, Plan, Wallet, WalletId};
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorRef, ActorStatus, MessagingErr};
use tokio::sync::OnceCell;

use crate::clock::Clock;
use crate::committer::Committer;
use crate::events::Subscription;
use crate::feed::ReviewChanges;
use crate::pool::Pools;
use crate::store::{CommitError, Record, StoreError, WalletStore};
use crate::wallet::{Applied, ExecError, WalletActor, WalletArgs, WalletMsg};

/// How long a caller waits for a wallet before answering UNAVAILABLE.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a call is re-sent to a freshly activated actor when the old one had stopped.
const MAX_ACTIVATION_RETRIES: usize = 3;
/// Wallets read per query when looking for what fell due on inactive wallets.
const DUE_BATCH: usize = 256;
/// How long, and how many times, `advance_clock` sweeps wallets still catching up (well
/// inside the 2 min after which `creditd` drops a connection that sent nothing, a request
/// still running included; the rest is caught up by the due sweep).
const ADVANCE_CLOCK_DEADLINE: Duration = Duration::from_secs(60);
const ADVANCE_CLOCK_SWEEPS: usize = 20;
/// Wallets brought up to date at once by [`Directory::tick_due`]: enough to share group
/// commits, few enough not to crowd out the calls being served.
const DUE_CONCURRENCY: usize = 32;
/// How often a node looks for inactive wallets with something due (real clock).
pub const DUE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Tunables of the actor system.
#[derive(Clone, Debug)]
pub struct ActorConfig {
    /// An actor with nothing to do and no subscribers stops after this long.
    pub idle_after: Duration,
    /// Store transactions in flight at once, each carrying many wallets' batches: 1 for
    /// SQLite (one writer anyway), a few for PostgreSQL.
    pub writers: usize,
    /// Due records a wallet catching up on a long idle time applies per step, 1 to
    /// [`crate::wallet::CATCH_UP_RECORDS`] (tests lower it to exercise catching up).
    pub catch_up_records: usize,
    /// A group commit not finished after this long (its database connection went silent:
    /// no answer, no reset) is given up as of unknown outcome, so that it does not hold a
    /// writer for ever; its wallets reload behind a fence, as after any such commit.
    pub commit_timeout: Duration,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            idle_after: Duration::from_secs(60),
            writers: 1,
            catch_up_records: crate::wallet::CATCH_UP_RECORDS,
            commit_timeout: crate::committer::COMMIT_TIMEOUT,
        }
    }
}

/// The plans every wallet reads at resets, renewals and plan changes; replaced whole on edit.
/// Each replacement moves its generation, so that plans read from the store are put in
/// only if nothing replaced them since the read began ([`PlanBook::replace_if_unchanged`]).
#[derive(Debug, Default)]
pub struct PlanBook(RwLock<(u64, Arc<Vec<Plan>>)>);

impl PlanBook {
    pub fn snapshot(&self) -> Arc<Vec<Plan>> {
        self.0.read().expect("plan book lock").1.clone()
    }

    /// Read before reading the plans from the store.
    pub fn generation(&self) -> u64 {
        self.0.read().expect("plan book lock").0
    }

    pub fn replace(&self, plans: Vec<Plan>) {
        let mut book = self.0.write().expect("plan book lock");
        *book = (book.0 + 1, Arc::new(plans));
    }

    /// Puts in plans read from the store once the book was at `generation`, unless another
    /// replacement came meanwhile (it holds what was read after, or an edit of this node:
    /// found by review, a slow read could put the plans from before an edit back).
    pub fn replace_if_unchanged(&self, generation: u64, plans: Vec<Plan>) -> bool {
        let mut book = self.0.write().expect("plan book lock");
        if book.0 != generation {
            return false;
        }
        *book = (generation + 1, Arc::new(plans));
        true
    }
}

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Wallet batches made durable.
    pub commits: AtomicU64,
    /// Store transactions the committer ran, and the wallet batches they carried.
    pub groups: AtomicU64,
    pub grouped_batches: AtomicU64,
    pub records: AtomicU64,
    pub activations: AtomicU64,
    /// Calls, subscriptions and answered ticks the wallet actors have taken in (each once,
    /// as its actor handles it: decided, parked or waiting there). Tests wait on it for a
    /// call to have reached its actor.
    pub calls: AtomicU64,
}

impl Metrics {
    pub(crate) fn committed(&self, records: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
    }

    pub(crate) fn grouped(&self, batches: usize) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.grouped_batches
            .fetch_add(batches as u64, Ordering::Relaxed);
    }
}

type Slot = Arc<SlotCell>;

/// A wallet's place in the directory: its actor once activated, and the commit notices that
/// came while it was being activated (the highest seq; `u64::MAX`: unknown), since the load
/// may have read before that commit; the actor hears of them once it is in place.
#[derive(Default)]
pub(crate) struct SlotCell {
    actor: OnceCell<ActorRef<WalletMsg>>,
    missed: std::sync::Mutex<Option<u64>>,
}

impl std::ops::Deref for SlotCell {
    type Target = OnceCell<ActorRef<WalletMsg>>;

    fn deref(&self) -> &Self::Target {
        &self.actor
    }
}

/// State shared by the directory and every wallet actor.
impl Shared {
    /// Reads the plans from the store into this node's book (an edit on another node). A
    /// read that another replacement overtook (an edit here, a newer read) is done again,
    /// a few times at most: what overtook it is at least as new as what it began from. A
    /// plan the store does not list (a test's) stays as this node knows it.
    pub async fn reread_plans(&self) -> Result<(), StoreError> {
        for _ in 0..3 {
            let generation = self.plans.generation();
            let Some(mut plans) = self.store.plans().await? else {
                return Ok(());
            };
            let known = self.plans.snapshot();
            let missing = known.iter().filter(|k| !plans.iter().any(|p| p.id == k.id));
            let missing: Vec<_> = missing.cloned().collect();
            plans.extend(missing);
            if self.plans.replace_if_unchanged(generation, plans) {
                break;
            }
        }
        Ok(())
    }
}

pub struct Shared {
    pub store: Arc<dyn WalletStore>,
    pub clock: Clock,
    pub plans: PlanBook,
    pub config: ActorConfig,
    pub metrics: Arc<Metrics>,
    pub(crate) committer: Committer,
    pools: Pools,
    reviews: ReviewChanges,
    actors: DashMap<WalletId, Slot>,
    /// Wallets whose due events failed to apply, with how many sweeps in a row failed: a
    /// wallet that keeps failing (retried every second) is logged at the 1st, 2nd, 4th,
    /// 8th… failure, not 86,400 times a day.
    failing_ticks: DashMap<WalletId, u32>,
    /// Set when [`Directory::shutdown`] begins: no wallet is activated any more.
    closing: AtomicBool,
    /// Activations under way, each until its slot holds its actor (or its error).
    activating: AtomicUsize,
}

/// Counts an activation out when it ends, however it ends.
struct Activating<'a>(&'a AtomicUsize);

impl<'a> Activating<'a> {
    /// Counts one more activation under way, until dropped.
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Activating(count)
    }
}

impl Drop for Activating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes an activation's slot if the caller gives up waiting (its request was dropped,
/// e.g. the client left) while nobody else holds the slot and nothing filled it: else every
/// wallet id ever asked for and abandoned mid-load would stay listed, empty, for ever.
struct VacateIfAbandoned<'a> {
    actors: &'a DashMap<WalletId, Slot>,
    id: &'a WalletId,
    slot: &'a Slot,
    /// Until the activation's outcome is known.
    armed: bool,
}

impl Drop for VacateIfAbandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Under the shard's lock, which every caller takes to clone a slot: two counts
        // (the map's and ours) mean no other caller waits on it.
        self.actors.remove_if(self.id, |_, s| {
            Arc::ptr_eq(s, self.slot) && s.get().is_none() && Arc::strong_count(s) == 2
        });
    }
}

impl Shared {
    /// Removes a stopped actor from the directory, unless a newer one already took its place.
    pub(crate) fn forget(&self, id: &WalletId, actor: ActorId) {
        // A slot still being filled is another caller's activation in progress: removing it
        // would let a third caller start a second actor for the wallet.
        self.actors.remove_if(id, |_, slot| {
            slot.get().is_some_and(|a| a.get_id() == actor)
        });
    }
}

/// Calls that a wallet's state, not their input, can refuse.
pub(crate) fn may_be_refused_on_state(op: &Op) -> bool {
    matches!(
        op,
        Op::Usage(_) | Op::Reserve(_) | Op::Settle(_) | Op::Release(_)
    )
}

/// Refusals that a commit on another node, not yet heard of here, can turn (a grant, a
/// plan change, a settlement or a release recorded on the wallet). A member limit raised
/// or a custom plan edited there moves no record of the wallet: the ledger checks those
/// against the store (`Ledger::stale`).
fn rests_on_state(e: &OpError) -> bool {
    matches!(
        e,
        OpError::InsufficientCredits { .. }
            | OpError::MemberLimitExceeded { .. }
            | OpError::ModelNotAllowed { .. }
            | OpError::ReservationNotActive
    )
}

/// Tells the wallet's actor that another writer committed up to `seq`; one still being
/// activated hears of it once it is in place.
fn refresh(slot: &SlotCell, seq: Option<u64>) {
    match slot.get() {
        Some(a) => {
            let _ = a.send_message(WalletMsg::Refresh(seq));
        }
        None => miss(slot, seq),
    }
}

/// A notice for a wallet whose actor is being activated: kept in its slot, and handed over
/// at once if the slot was filled meanwhile (whichever of the two looks last delivers).
fn miss(slot: &SlotCell, seq: Option<u64>) {
    let seq = seq.unwrap_or(u64::MAX);
    {
        let mut missed = slot.missed.lock().unwrap_or_else(|e| e.into_inner());
        *missed = Some(missed.map_or(seq, |m| m.max(seq)));
    }
    if let Some(a) = slot.get() {
        deliver_missed(slot, a);
    }
}

/// Hands a freshly activated actor the notices that came while it was loading.
fn deliver_missed(slot: &SlotCell, actor: &ActorRef<WalletMsg>) {
    let missed = slot.missed.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(seq) = missed {
        let seq = (seq != u64::MAX).then_some(seq);
        let _ = actor.send_message(WalletMsg::Refresh(seq));
    }
}

/// Whether a request a wallet's actor did not answer may be sent again (see
/// [`Directory::call`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// Reads and subscriptions change nothing; ticks apply what is due from durable state,
    /// so a fresh activation applies exactly what is still due.
    Resend,
    /// An operation may have been applied: its outcome is unknown.
    Unavailable,
}

/// The entry point to every wallet on this node.
#[derive(Clone)]
pub struct Directory {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("active", &self.active_wallets())
            .finish()
    }
}

impl Directory {
    pub fn new(
        store: Arc<dyn WalletStore>,
        clock: Clock,
        plans: Vec<Plan>,
        config: ActorConfig,
    ) -> Directory {
        let plan_book = PlanBook::default();
        plan_book.replace(plans);
        let metrics = Arc::new(Metrics::default());
        let committer = Committer::start(
            store.clone(),
            config.writers,
            config.commit_timeout,
            metrics.clone(),
        );
        let shared = Shared {
            store,
            clock,
            plans: plan_book,
            config,
            metrics,
            committer,
            pools: Pools::default(),
            reviews: ReviewChanges::default(),
            actors: DashMap::new(),
            failing_ticks: DashMap::new(),
            closing: AtomicBool::new(false),
            activating: AtomicUsize::new(0),
        };
        Directory {
            shared: Arc::new(shared),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn plans(&self) -> &PlanBook {
        &self.shared.plans
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn store(&self) -> &Arc<dyn WalletStore> {
        &self.shared.store
    }

    /// The team pool supervisors of this node.
    /// Whether other nodes may write these wallets (see [`WalletStore::several_nodes`]).
    pub fn several_nodes(&self) -> bool {
        self.shared.store.several_nodes()
    }

    pub fn pools(&self) -> &Pools {
        &self.shared.pools
    }

    pub fn reviews(&self) -> &ReviewChanges {
        &self.shared.reviews
    }

    /// The actor of a wallet, activated as needed (for supervisors that link to it).
    pub(crate) async fn cell(&self, id: &WalletId) -> Result<ractor::ActorCell, ExecError> {
        Ok(self.actor(id).await?.get_cell())
    }

    /// The running actor of a wallet on this node, if any.
    pub fn active_actor(&self, id: &WalletId) -> Option<ActorId> {
        let slot = self.shared.actors.get(id)?;
        let actor = slot.get()?;
        (actor.get_status() == ActorStatus::Running).then(|| actor.get_id())
    }

    pub fn active_wallets(&self) -> usize {
        self.shared.actors.len()
    }

    /// Creates a wallet with its plan's full allowances; durable before it returns.
    pub async fn create(&self, new: NewWallet) -> Result<Wallet, ExecError> {
        let (wallet, entry) =
            Wallet::create(new, &*self.shared.plans.snapshot(), self.shared.clock.now())?;
        let record = Record {
            entry,
            balance: wallet.balance(),
        };
        match self.shared.store.create(&wallet, &record).await {
            Ok(()) => Ok(wallet),
            Err(CommitError::Conflict) => Err(ExecError::Op(OpError::InvalidInput(
                "wallet id already exists".into(),
            ))),
            // (Creation is not fenced on plans: the store refuses a stale interval itself.)
            Err(
                e @ (CommitError::Unavailable(_)
                | CommitError::GivenUp(_)
                | CommitError::PlanChanged),
            ) => Err(ExecError::Unavailable(e.to_string())),
        }
    }

    async fn actor(&self, id: &WalletId) -> Result<ActorRef<WalletMsg>, ExecError> {
        loop {
            // The common case under a read lock: an actor that is already running.
            if let Some(a) = self.shared.actors.get(id).and_then(|s| s.get().cloned())
                && a.get_status() == ActorStatus::Running
            {
                return Ok(a);
            }
            let slot = self.shared.actors.entry(id.clone()).or_default().clone();
            let mut abandoned = VacateIfAbandoned {
                actors: &self.shared.actors,
                id,
                slot: &slot,
                armed: true,
            };
            // Counted before `activate` looks at `closing`, and until the slot is filled:
            // `shutdown` either sees it or is seen by it.
            let activating = Activating::enter(&self.shared.activating);
            let actor = slot.get_or_try_init(|| self.activate(id)).await;
            drop(activating);
            abandoned.armed = false;
            if let Ok(a) = actor {
                deliver_missed(&slot, a);
            }
            match actor {
                Ok(a)
                    if matches!(
                        a.get_status(),
                        ActorStatus::Draining | ActorStatus::Stopping | ActorStatus::Stopped
                    ) =>
                {
                    // A stopping actor that has not left yet (it may have crashed, or be
                    // passivating): replace it.
                    self.shared.forget(id, a.get_id());
                }
                Ok(a) => return Ok(a.clone()),
                Err(e) => {
                    self.shared
                        .actors
                        .remove_if(id, |_, s| Arc::ptr_eq(s, &slot));
                    return Err(e);
                }
            }
        }
    }

    async fn activate(&self, id: &WalletId) -> Result<ActorRef<WalletMsg>, ExecError> {
        // Found by review: a live subscription whose wallet the drain had just stopped
        // subscribed again, which started the wallet again, unflushed, as the process ended.
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(ExecError::Unavailable(
                "the service is shutting down".into(),
            ));
        }
        // A predecessor that stopped with a commit in flight: load what it left (a commit
        // settles within the commit timeout, and a load gets as long).
        self.shared.committer.settled(id).await;
        let load = self.shared.store.load(id);
        let loaded = tokio::time::timeout(self.shared.config.commit_timeout, load)
            .await
            .map_err(|_| {
                ExecError::Unavailable("loading the wallet did not finish in time".into())
            })?
            .map_err(|e| ExecError::Unavailable(e.to_string()))?
            .ok_or(ExecError::NotFound)?;
        let args = WalletArgs {
            loaded,
            shared: self.shared.clone(),
        };
        let (actor, _) = Actor::spawn(None, WalletActor, args)
            .await
            .map_err(|e| ExecError::Unavailable(format!("activation failed: {e}")))?;
        self.shared
            .metrics
            .activations
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(wallet = %id, "activated");
        Ok(actor)
    }

    /// Sends one request to a wallet's actor, activating it as needed. A request the actor
    /// never received is re-sent to a fresh activation. One it did not answer (it stopped
    /// first: it passivated with the request queued behind that decision, or it crashed)
    /// is re-sent too when that is safe, and is UNAVAILABLE otherwise. `reclaim` gets back
    /// a message that was never delivered, so that `build` can send it again.
    async fn call<T: Send + 'static>(
        &self,
        id: &WalletId,
        unanswered: Unanswered,
        mut build: impl FnMut(ractor::RpcReplyPort<T>) -> WalletMsg,
        mut reclaim: impl FnMut(WalletMsg),
    ) -> Result<T, ExecError> {
        for _ in 0..MAX_ACTIVATION_RETRIES {
            let actor = self.actor(id).await?;
            match actor.call(&mut build, Some(CALL_TIMEOUT)).await {
                Ok(CallResult::Success(v)) => return Ok(v),
                Ok(CallResult::Timeout) => {
                    return Err(ExecError::Unavailable(
                        "the wallet did not answer in time".into(),
                    ));
                }
                Ok(CallResult::SenderError) if unanswered == Unanswered::Resend => {
                    self.shared.forget(id, actor.get_id());
                }
                Ok(CallResult::SenderError) => {
                    return Err(ExecError::Unavailable(
                        "the wallet stopped before answering".into(),
                    ));
                }
                Err(MessagingErr::SendErr(unsent)) => {
                    reclaim(unsent);
                    self.shared.forget(id, actor.get_id());
                }
                Err(MessagingErr::ChannelClosed | MessagingErr::InvalidActorType) => {
                    self.shared.forget(id, actor.get_id());
                }
            }
        }
        Err(ExecError::Unavailable(
            "the wallet could not be activated".into(),
        ))
    }

    /// Runs one operation on a wallet; answers once it is durable.
    pub async fn execute(&self, id: &WalletId, op: Op) -> Result<Applied, ExecError> {
        let again =
            (self.shared.store.several_nodes() && may_be_refused_on_state(&op)).then(|| op.clone());
        let result = self.execute_once(id, op).await;
        let (Err(ExecError::Op(e)), Some(again)) = (&result, again) else {
            return result;
        };
        if !rests_on_state(e) {
            return result;
        }
        // Another node's commit may be durable while its notice is still on its way here:
        // a refusal is definite only against what the store holds. The actor reads what it
        // missed, if anything (calls wait for that), and decides again.
        match self.shared.store.seq(id).await {
            Ok(Some(stored)) => {
                self.announce(id, Some(stored));
                self.execute_once(id, again).await
            }
            _ => result,
        }
    }

    async fn execute_once(&self, id: &WalletId, op: Op) -> Result<Applied, ExecError> {
        let op = std::sync::Mutex::new(Some(op));
        let take = || op.lock().unwrap_or_else(|e| e.into_inner()).take();
        let result = self
            .call(
                id,
                Unanswered::Unavailable,
                |reply| match take() {
                    Some(op) => WalletMsg::Execute(op, reply),
                    // Re-sent only after a send that handed the operation back; reaching this
                    // means a logic error, reported as unavailable (the reply is dropped).
                    None => WalletMsg::Tick(None),
                },
                |unsent| {
                    if let WalletMsg::Execute(o, _) = unsent {
                        *op.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
                    }
                },
            )
            .await;
        result?
    }

    /// The wallet as of now.
    pub async fn read(&self, id: &WalletId) -> Result<Wallet, ExecError> {
        self.call(id, Unanswered::Resend, WalletMsg::Read, drop)
            .await
    }

    /// A wallet's events from now on, after a SNAPSHOT of its state as of now at its last
    /// durable seq. What fell due is made durable first, so that the events after the
    /// snapshot never show an older balance (found by review: a wallet with a month of
    /// resets to catch up showed today's balance, then a month of older ones).
    /// A wallet whose catch-up outlasts the wait (a long backlog on a slow store) is still
    /// subscribed to, from its durable state as of now: its events follow as it goes on.
    pub async fn subscribe(&self, id: &WalletId) -> Result<Subscription, ExecError> {
        match self
            .call(id, Unanswered::Resend, |r| WalletMsg::Tick(Some(r)), drop)
            .await
        {
            Ok(()) | Err(ExecError::Unavailable(_)) => {}
            Err(e) => return Err(e),
        }
        self.call(id, Unanswered::Resend, WalletMsg::Subscribe, drop)
            .await
    }

    /// Applies and commits whatever fell due on every active wallet; returns once all of it
    /// is durable and published.
    pub async fn tick_all(&self) {
        let actors: Vec<ActorRef<WalletMsg>> = self
            .shared
            .actors
            .iter()
            .filter_map(|e| e.value().get().cloned())
            .collect();
        let ticks = actors.into_iter().map(|a| async move {
            let _ = a
                .call(|r| WalletMsg::Tick(Some(r)), Some(CALL_TIMEOUT))
                .await;
        });
        for t in ticks {
            t.await;
        }
    }

    /// Moves a manual clock forward and returns after every due event in between is durable
    /// and published, on active and inactive wallets. FORBIDDEN-worthy on the real clock:
    /// `Ok(None)` there. UNAVAILABLE when that cannot be confirmed (the store cannot be
    /// asked, or wallets are still catching up when the bound is reached): the clock has
    /// moved, and advancing by 0 waits for the rest (found by review: it answered success).
    pub async fn advance_clock(
        &self,
        by: chrono::Duration,
    ) -> Result<Option<DateTime<Utc>>, ExecError> {
        let Some(manual) = self.shared.clock.as_manual() else {
            return Ok(None);
        };
        let now = manual.advance(by);
        self.tick_all().await;
        self.catch_up(now).await.map_err(|why| {
            ExecError::Unavailable(format!(
                "the clock moved to {now}, {why} (advance by 0 to wait for them)"
            ))
        })?;
        Ok(Some(now))
    }

    /// Ticks due wallets until the store holds none due by `now`. A wallet with years to
    /// catch up may outlast one tick's call timeout, so it sweeps again; bounded, for one
    /// whose commits keep failing: `Err` says why it could not confirm that none is left.
    pub async fn catch_up(&self, now: DateTime<Utc>) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + ADVANCE_CLOCK_DEADLINE;
        for _ in 0..ADVANCE_CLOCK_SWEEPS {
            self.tick_due().await;
            match self.shared.store.due(now, None, 1).await {
                Ok(due) if due.is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "but whether every wallet caught up is unknown: {e}"
                    ));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        tracing::warn!("wallets are still catching up on what fell due");
        let stuck = match self.shared.store.due(now, None, 10).await {
            Ok(due) => due
                .into_iter()
                .map(|(_, id)| id.0)
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => e.to_string(),
        };
        Err(format!("but wallets are still catching up (due: {stuck})"))
    }

    /// Brings every wallet whose stored next reset, renewal or expiry is by now up to date:
    /// an inactive one is activated (which applies and commits what fell due) and then
    /// passivates again as usual. Active wallets do this with their own timers; they are
    /// ticked too, harmlessly. Returns the number of wallets ticked. Each wallet is ticked
    /// at most once per call, and the due wallets are read page after page, so ones whose
    /// commits keep failing hold up neither this call nor the wallets due after them.
    pub async fn tick_due(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let now = self.shared.clock.now();
            let due = match self.shared.store.due(now, after.as_ref(), DUE_BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "looking for due wallets failed");
                    break;
                }
            };
            let last_page = due.len() < DUE_BATCH;
            after = due.last().cloned();
            let fresh: Vec<WalletId> = due
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| seen.insert(id.clone()))
                .collect();
            let mut ticks = tokio::task::JoinSet::new();
            for id in fresh {
                if ticks.len() >= DUE_CONCURRENCY {
                    ticks.join_next().await;
                }
                let dir = self.clone();
                ticks.spawn(async move {
                    let failing = &dir.shared.failing_ticks;
                    match dir.tick(&id).await {
                        Ok(_) => {
                            failing.remove(&id);
                        }
                        Err(e) => {
                            let failures = {
                                let mut n = failing.entry(id.clone()).or_insert(0);
                                *n = n.saturating_add(1);
                                *n
                            };
                            if failures.is_power_of_two() {
                                tracing::warn!(wallet = %id, error = %e, failures, "applying due events failed");
                            }
                        }
                    }
                });
            }
            while ticks.join_next().await.is_some() {}
            if last_page {
                break;
            }
        }
        seen.len()
    }

    /// Runs [`Directory::tick_due`] every [`DUE_SWEEP_EVERY`] until the task is aborted, so
    /// resets, renewals and expiries of inactive wallets are recorded (and a reservation's
    /// row leaves ACTIVE) within about a second of their instant.
    pub fn sweep_due(&self) -> tokio::task::JoinHandle<()> {
        let dir = self.clone();
        tokio::spawn(async move {
            loop {
                let next = dir.shared.clock.now() + DUE_SWEEP_EVERY;
                dir.shared.clock.sleep_until(next).await;
                dir.tick_due().await;
            }
        })
    }

    /// Whether [`Directory::shutdown`] has begun.
    pub fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    /// Stops every actor after its in-flight work is durable (SIGTERM drain); from its
    /// start, calls on a wallet not active are UNAVAILABLE.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.tick_all().await;
        // Until none is left: an activation that looked at `closing` before it was set may
        // still be loading, for longer than one round waits on a slow store.
        for _ in 0..3 {
            let loaded = tokio::time::Instant::now() + CALL_TIMEOUT;
            while self.shared.activating.load(Ordering::SeqCst) > 0
                && tokio::time::Instant::now() < loaded
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let actors: Vec<ActorRef<WalletMsg>> = self
                .shared
                .actors
                .iter()
                .filter_map(|e| e.value().get().cloned())
                .filter(|a| a.get_status() != ActorStatus::Stopped)
                .collect();
            if actors.is_empty() && self.shared.activating.load(Ordering::SeqCst) == 0 {
                break;
            }
            for a in actors {
                let _ = a
                    .stop_and_wait(Some("shutdown".into()), Some(CALL_TIMEOUT))
                    .await;
            }
        }
    }

    /// Another writer committed `id` up to `seq` (`None`: maybe, notices were lost). If the
    /// wallet is active here, its actor reloads what it missed and publishes it.
    pub fn announce(&self, id: &WalletId, seq: Option<u64>) {
        // Not active: its next activation loads it afresh.
        if let Some(slot) = self.shared.actors.get(id).map(|s| s.clone()) {
            refresh(&slot, seq);
        }
    }

    /// Every active wallet may be behind (the notice feed had a gap).
    pub fn announce_all(&self) {
        let slots: Vec<Slot> = self
            .shared
            .actors
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for slot in slots {
            refresh(&slot, None);
        }
    }

    /// The directory `shared` belongs to (a passivating actor hands its queued calls over
    /// through it).
    pub(crate) fn of(shared: Arc<Shared>) -> Directory {
        Directory { shared }
    }

    /// Applies and publishes what fell due on one wallet.
    pub(crate) async fn tick(&self, id: &WalletId) -> Result<(), ExecError> {
        self.call(id, Unanswered::Resend, |r| WalletMsg::Tick(Some(r)), drop)
            .await
    }

    /// Makes a wallet's actor check whether it is idle now, as its idle timer does (tests of
    /// passivation races, with a zero `idle_after`).
    #[doc(hidden)]
    pub fn check_idle(&self, id: &WalletId) {
        if let Some(a) = self.shared.actors.get(id).and_then(|s| s.get().cloned()) {
            let _ = a.send_message(WalletMsg::IdleCheck);
        }
    }

    /// Kills a wallet's actor as a panic would (fault-injection tests).
    #[doc(hidden)]
    pub async fn crash(&self, id: &WalletId) {
        if let Some(a) = self.shared.actors.get(id).and_then(|s| s.get().cloned()) {
            let _ = a.send_message(WalletMsg::Crash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PlanBook;

    /// Found by review: a refusal's read of the stored plans could finish after an edit of
    /// this node and put the plans from before it back.
    #[test]
    fn plans_read_before_a_replacement_do_not_undo_it() {
        let plans = credits_core::testing::catalogue();
        let book = PlanBook::default();
        let read_began = book.generation();
        let mut edited = plans.clone();
        edited[0].name = "edited".into();
        book.replace(edited);
        assert!(!book.replace_if_unchanged(read_began, plans.clone()));
        assert_eq!(book.snapshot()[0].name, "edited");
        // A read begun after it lands.
        assert!(book.replace_if_unchanged(book.generation(), plans.clone()));
        assert_eq!(*book.snapshot(), plans);
    }
}
