//! The wallet actor: the only writer of one wallet on this node. It decides every operation
//! on a speculative state (durable state plus accepted, not yet durable records), commits
//! what accumulates while a commit is in flight as one batch (group commit), and answers
//! and publishes only after the batch is durable. A failed commit is never answered with a
//! refusal it did not earn: the actor reloads, keeps what landed, re-decides the rest, or
//! answers UNAVAILABLE. Domain errors go back through reply ports; a handler returns `Err`
//! only when the actor itself is broken.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use credits_core::{
    Balance, Entry, EntryKind, KeyCheck, LotOrigin, OnceFor, Op, OpError, ReleaseReason,
    ReservationId, Wallet, check_key,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::directory::Shared;
use crate::events::{BalanceEvent, EVENT_CHANNEL_CAPACITY, EventKind, Subscription};
use crate::store::{Batch, CommitError, Loaded, Record, StoreError};

/// Operations waiting for a commit, beyond which new ones are shed with UNAVAILABLE.
pub const MAX_QUEUED_OPERATIONS: usize = 4096;
/// Due records applied at most per step while a wallet catches up on a long idle time (a
/// reset a day: ten years are 3,650): it commits them in several batches and decides calls
/// only once it has caught up. A step's events fit half a subscriber's channel, so one that
/// keeps up with the commits sees every reset, not a resync; with a full queue, a batch
/// stays under half the store's bound (a step stops inside a due instant if need be).
pub const CATCH_UP_RECORDS: usize = 128;
const _: () = assert!(CATCH_UP_RECORDS <= crate::events::EVENT_CHANNEL_CAPACITY / 2);
const _: () =
    assert!(MAX_QUEUED_OPERATIONS + CATCH_UP_RECORDS <= credits_store::MAX_BATCH_RECORDS / 2);
/// Recently used keys and finished reservations kept in memory to answer retries without
/// a read (and those of every call not durable yet); the store's unique index is the guard
/// beyond them.
pub const RECENT_KEYS: usize = 1024;
/// Consecutive commits with an unknown outcome (the store failing, not a lost fence) after
/// which the actor answers UNAVAILABLE and stops.
pub const MAX_COMMIT_ATTEMPTS: u32 = 3;
/// Records read back at most when checking what a failed commit left behind.
pub const MAX_RECOVERY_RECORDS: usize = 8192;
// A whole batch is read back: a full queue of calls plus one catch-up step.
const _: () = assert!(MAX_QUEUED_OPERATIONS + CATCH_UP_RECORDS < MAX_RECOVERY_RECORDS);

/// A call that was accepted: the record that answers it and the balance to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub entry: Entry,
    pub balance: Balance,
    pub replayed: bool,
}

/// Why a call to a wallet failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("wallet not found")]
    NotFound,
    /// Load was shed or the outcome is unknown; never a definite refusal.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The member's limits changed since their seat read them (on another node, maybe):
    /// nothing was decided; read the seat again and retry.
    #[error("the member's limits changed; read them again")]
    StaleLimits,
}

type ExecReply = RpcReplyPort<Result<Applied, ExecError>>;

pub enum WalletMsg {
    Execute(Op, ExecReply),
    /// The durable state as of now (due events included, not yet committed ones applied in a copy).
    Read(RpcReplyPort<Wallet>),
    Subscribe(RpcReplyPort<Subscription>),
    /// Apply what fell due; the reply (if any) comes once it is durable and published.
    Tick(Option<RpcReplyPort<()>>),
    CommitDone(Result<(), CommitError>),
    /// Another node committed this wallet up to this seq (`None`: maybe; notices were
    /// lost): reload what this actor missed and publish it.
    Refresh(Option<u64>),
    Recovered(Result<Recovery, StoreError>),
    IdleCheck,
    /// For fault-injection tests: the actor dies as if a bug had panicked in it.
    #[doc(hidden)]
    Crash,
}

/// What a reload after a failed commit found.
pub struct Recovery {
    loaded: Loaded,
    /// Records after the last durable seq this actor knew.
    records: Vec<Record>,
    /// Keys of waiting operations already consumed in the store.
    keys: HashMap<String, Entry>,
    /// Origins of waiting grants that a stored lot already holds.
    taken: Vec<LotOrigin>,
    /// The reload moved the wallet's version (after a commit with an unknown outcome).
    fenced: bool,
}

struct ExecWaiter {
    /// The call, to decide again if its commit fails; `None` for a replay of a record that
    /// is not durable yet.
    op: Option<Op>,
    reply: ExecReply,
    entry: Entry,
    balance: Option<Balance>,
    replayed: bool,
}

enum Waiter {
    Exec(Box<ExecWaiter>),
    /// A call refused for want of funds (or of a member's limit) while keyed calls ahead of
    /// it are not durable yet. Any of those may be a retry of a call recorded long ago whose
    /// key this actor no longer holds: its commit then fails on the key, it becomes a
    /// replay, and the funds it seemed to take were never taken. So the refusal is answered
    /// only once the calls ahead are durable, and decided again if their commit fails.
    Refused(Box<(Op, ExecReply, OpError)>),
    Tick(RpcReplyPort<()>),
}

impl Waiter {
    /// The operation it waits on, if it still holds one.
    fn op(&self) -> Option<&Op> {
        match self {
            Waiter::Exec(w) => w.op.as_ref(),
            Waiter::Refused(r) => Some(&r.0),
            Waiter::Tick(_) => None,
        }
    }
}

struct InFlight {
    waiters: Vec<Waiter>,
    records: Vec<Record>,
    wallet: Wallet,
}

impl InFlight {
    /// No commit: nobody waits, nothing to write, `wallet` as it stands.
    fn nothing(wallet: Wallet) -> InFlight {
        InFlight {
            waiters: Vec::new(),
            records: Vec::new(),
            wallet,
        }
    }
}

pub struct WalletActor;

pub struct WalletArgs {
    pub loaded: Loaded,
    pub shared: Arc<Shared>,
}

pub struct WalletState {
    shared: Arc<Shared>,
    durable: Wallet,
    version: i64,
    /// The pool's members version as loaded: spends on older member limits are refused
    /// with [`ExecError::StaleLimits`].
    members_version: i64,
    spec: Wallet,
    open: Vec<Waiter>,
    open_records: Vec<Record>,
    in_flight: Option<InFlight>,
    recovering: bool,
    /// The highest seq another node announced while this actor was busy.
    announced: Option<u64>,
    failures: u32,
    /// How the last commit failed: what the reload after it must do (an unknown outcome is
    /// counted in `failures`; plans that changed are read again).
    last_commit_error: Option<CommitError>,
    /// Calls that arrived during recovery, run after it.
    parked: Vec<(Op, ExecReply)>,
    keys: Bounded<String, Entry>,
    finished: Bounded<ReservationId, Entry>,
    /// Payments and reviews a stored lot already holds, found when a commit collided with
    /// one (SPEC 5, 7: one lot per payment, one per review, on any wallet; a lot this
    /// wallet spent is no longer in its state); a grant for one is refused. The newest
    /// [`RECENT_KEYS`].
    taken: Vec<LotOrigin>,
    /// Open while someone subscribes: a channel's slots cost more than the rest of the
    /// actor, so a wallet nobody watches has none.
    events: Option<broadcast::Sender<Arc<BalanceEvent>>>,
    timer: Option<(DateTime<Utc>, JoinHandle<()>)>,
    /// The last message (idle checks aside) while nothing was in flight; `None` while busy.
    idle_since: Option<tokio::time::Instant>,
    /// An idle check is on its way.
    idle_check_armed: bool,
    /// Leaving memory: every call still queued is handed over to a fresh activation.
    passivating: bool,
    /// Still applying what fell due during a long idle time, [`CATCH_UP_RECORDS`] at a
    /// time: calls wait (parked), ticks are answered once it has caught up.
    lagging: bool,
    /// The last seq applied while catching up: ticks wait until it is durable.
    catch_up_seq: u64,
}

/// A small map that forgets its oldest entries past a bound.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    fn new() -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Inserts, then forgets the oldest entries past [`RECENT_KEYS`], but only those
    /// `forgettable` (durable) ones: a call still waiting for its commit must be known to
    /// its retry, however many calls queued behind it.
    fn insert(&mut self, k: K, v: V, forgettable: impl Fn(&V) -> bool) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > RECENT_KEYS {
            let oldest = self.order.front().and_then(|k| self.map.get(k));
            if !oldest.is_some_and(&forgettable) {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        self.map.retain(|_, v| keep(v));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
    }
}

impl Actor for WalletActor {
    type Msg = WalletMsg;
    type State = WalletState;
    type Arguments = WalletArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WalletMsg>,
        args: WalletArgs,
    ) -> Result<WalletState, ActorProcessingErr> {
        let loaded = args.loaded;
        Ok(WalletState {
            shared: args.shared,
            spec: loaded.wallet.clone(),
            durable: loaded.wallet,
            version: loaded.version,
            members_version: loaded.members_version,
            open: Vec::new(),
            open_records: Vec::new(),
            in_flight: None,
            recovering: false,
            announced: None,
            failures: 0,
            last_commit_error: None,
            parked: Vec::new(),
            keys: Bounded::new(),
            finished: Bounded::new(),
            taken: Vec::new(),
            events: None,
            timer: None,
            idle_since: None,
            idle_check_armed: false,
            passivating: false,
            lagging: false,
            catch_up_seq: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<WalletMsg>,
        state: &mut WalletState,
    ) -> Result<(), ActorProcessingErr> {
        // Catch up on whatever fell due while the wallet was inactive.
        state.tick(&myself, None);
        state.after_message(&myself, true);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<WalletMsg>,
        state: &mut WalletState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, t)) = state.timer.take() {
            t.abort();
        }
        state.shared.forget(&state.durable.id, myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WalletMsg>,
        msg: WalletMsg,
        state: &mut WalletState,
    ) -> Result<(), ActorProcessingErr> {
        if state.passivating {
            state.hand_over(msg);
            return Ok(());
        }
        let activity = !matches!(msg, WalletMsg::IdleCheck);
        if matches!(
            msg,
            WalletMsg::Execute(..) | WalletMsg::Subscribe(_) | WalletMsg::Tick(Some(_))
        ) {
            let calls = &state.shared.metrics.calls;
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match msg {
            WalletMsg::Execute(op, reply) => {
                // Behind another node's announced commit, a decision would rest on a state
                // known to be stale (a refusal it did not earn, e.g. settling a reservation
                // made there): wait for the reload.
                if state.recovering || state.behind() {
                    state.park(op, reply);
                } else {
                    // First come, first decided: calls parked earlier go first.
                    if !state.parked.is_empty() {
                        state.run_parked();
                    }
                    state.execute(op, reply);
                    state.maybe_commit(&myself);
                }
            }
            WalletMsg::Read(reply) => {
                let _ = reply.send(state.wallet_now());
            }
            WalletMsg::Subscribe(reply) => {
                let events = state
                    .events
                    .get_or_insert_with(|| broadcast::Sender::new(EVENT_CHANNEL_CAPACITY))
                    .subscribe();
                // As of now only when nothing but what fell due is pending: while a catch-up
                // is still being written (a subscription that did not wait it out), a call
                // ahead is not durable yet (found by review: a usage from before midnight
                // then followed a SNAPSHOT showing the reset), or this actor is reloading or
                // behind another node, the durable state, so that the records that follow
                // never show an older balance.
                let settled = !state.lagging
                    && state.catch_up_seq <= state.durable.seq
                    && !state.recovering
                    && !state.behind()
                    && state.only_due_pending();
                let snapshot = if settled {
                    state.snapshot_now()
                } else {
                    state.snapshot()
                };
                let _ = reply.send(Subscription { snapshot, events });
            }
            WalletMsg::Tick(reply) => {
                // While recovering, what fell due is applied when the reload ends.
                if state.recovering {
                    if let Some(r) = reply {
                        state.open.push(Waiter::Tick(r));
                    }
                } else {
                    state.tick(&myself, reply);
                }
            }
            WalletMsg::CommitDone(result) => state.commit_done(&myself, result),
            WalletMsg::Refresh(seq) => state.refresh(&myself, seq),
            WalletMsg::Recovered(result) => state.recovered(&myself, result),
            WalletMsg::IdleCheck => {
                state.idle_check_armed = false;
                let idle_for = state.idle_since.map(|t| t.elapsed());
                if idle_for.is_some_and(|d| d >= state.shared.config.idle_after) {
                    let watched = state
                        .events
                        .as_ref()
                        .is_some_and(|e| e.receiver_count() > 0);
                    if !watched {
                        state.passivate(&myself);
                        return Ok(());
                    }
                    // A subscriber leaves without a message: look again after another period.
                    state.idle_since = None;
                }
            }
            WalletMsg::Crash => panic!("injected crash"),
        }
        state.after_message(&myself, activity);
        Ok(())
    }
}

impl WalletState {
    /// Idle and unwatched: leave memory. The actor leaves the directory first (new calls
    /// activate the wallet afresh), then admits no more messages and hands each one already
    /// queued to that fresh activation, so a call that raced the decision is answered, not
    /// dropped. Nothing is in flight, so the store holds exactly this actor's state.
    fn passivate(&mut self, myself: &ActorRef<WalletMsg>) {
        self.passivating = true;
        self.shared.forget(&self.durable.id, myself.get_id());
        if myself.drain().is_err() {
            myself.stop(Some("idle".into()));
        }
    }

    fn hand_over(&self, msg: WalletMsg) {
        let dir = crate::directory::Directory::of(self.shared.clone());
        let id = self.durable.id.clone();
        // A reply dropped here (the fresh activation failed) reaches the caller as an
        // unanswered call: re-sent where that is safe, UNAVAILABLE otherwise.
        match msg {
            WalletMsg::Execute(op, reply) => {
                tokio::spawn(async move {
                    let _ = reply.send(dir.execute(&id, op).await);
                });
            }
            WalletMsg::Read(reply) => {
                tokio::spawn(async move {
                    if let Ok(w) = dir.read(&id).await {
                        let _ = reply.send(w);
                    }
                });
            }
            WalletMsg::Subscribe(reply) => {
                tokio::spawn(async move {
                    if let Ok(s) = dir.subscribe(&id).await {
                        let _ = reply.send(s);
                    }
                });
            }
            WalletMsg::Tick(Some(reply)) => {
                tokio::spawn(async move {
                    if dir.tick(&id).await.is_ok() {
                        let _ = reply.send(());
                    }
                });
            }
            // Timers, notices and idle checks concern this activation only; commits and
            // reloads are never outstanding while passivating.
            WalletMsg::Tick(None)
            | WalletMsg::CommitDone(_)
            | WalletMsg::Refresh(_)
            | WalletMsg::Recovered(_)
            | WalletMsg::IdleCheck
            | WalletMsg::Crash => {}
        }
    }

    /// Calls waiting for this actor, against [`MAX_QUEUED_OPERATIONS`]. A subscriber's wait
    /// for what fell due (a tick) is no call and takes no place (found by review: a burst of
    /// subscriptions on a busy wallet shed its calls); those are counted only near the bound.
    fn queued(&self) -> usize {
        let flight = self.in_flight.as_ref().map_or(&[][..], |f| &f.waiters[..]);
        let all = self.open.len() + flight.len() + self.parked.len();
        if all < MAX_QUEUED_OPERATIONS {
            return all;
        }
        let ticks = self
            .open
            .iter()
            .chain(flight)
            .filter(|w| matches!(w, Waiter::Tick(_)))
            .count();
        all - ticks
    }

    /// Whether every record not durable yet is one that fell due (what [`Self::wallet_now`]
    /// applies to the durable state as well).
    fn only_due_pending(&self) -> bool {
        let pending = self.in_flight.iter().flat_map(|f| &f.records);
        pending
            .chain(&self.open_records)
            .all(|r| r.entry.fell_due())
    }

    /// Another node announced a commit this actor has not read yet.
    fn behind(&self) -> bool {
        self.announced.is_some_and(|s| s > self.durable.seq)
    }

    /// Decides the parked calls, unless this actor is still behind another node (then
    /// they wait for the reload that `carry_on` starts) or still catching up on what fell
    /// due (then they wait for the next step).
    fn run_parked(&mut self) {
        if self.behind() {
            return;
        }
        self.advance();
        if self.lagging {
            return;
        }
        for (op, reply) in std::mem::take(&mut self.parked) {
            self.execute(op, reply);
        }
    }

    fn park(&mut self, op: Op, reply: ExecReply) {
        if self.queued() >= MAX_QUEUED_OPERATIONS {
            let _ = reply.send(Err(ExecError::Unavailable("wallet is overloaded".into())));
        } else {
            self.parked.push((op, reply));
        }
    }

    /// Applies what fell due by now to the speculative state, at most [`CATCH_UP_RECORDS`]
    /// waiting to be written at a time: a wallet idle for years catches up over several
    /// commits (`lagging` until it has).
    fn advance(&mut self) {
        let now = self.shared.clock.now();
        let plans = self.shared.plans.snapshot();
        let step = self
            .shared
            .config
            .catch_up_records
            .clamp(1, CATCH_UP_RECORDS);
        let room = step.saturating_sub(self.open_records.len());
        let was_lagging = self.lagging;
        // Each record's event carries the balance right after it, not after the last one.
        for (entry, balance) in self.spec.advance_at_most(now, &*plans, room) {
            self.open_records.push(Record { entry, balance });
        }
        self.lagging = self.spec.behind(now);
        if self.lagging || was_lagging {
            self.catch_up_seq = self.spec.seq;
        }
    }

    fn tick(&mut self, myself: &ActorRef<WalletMsg>, reply: Option<RpcReplyPort<()>>) {
        self.advance();
        if let Some(r) = reply {
            if self.open_records.is_empty() && self.in_flight.is_none() {
                let _ = r.send(());
            } else {
                self.open.push(Waiter::Tick(r));
            }
        }
        self.maybe_commit(myself);
    }

    fn execute(&mut self, op: Op, reply: ExecReply) {
        if self.queued() >= MAX_QUEUED_OPERATIONS {
            let _ = reply.send(Err(ExecError::Unavailable("wallet is overloaded".into())));
            return;
        }
        // Limits read before a change this actor has loaded are not decided on. (Limits
        // newer than this actor's state are: the change moved the fencing version, so the
        // commit fails, the actor reloads and decides again here.)
        if op
            .member()
            .is_some_and(|m| m.limits_version < self.members_version)
        {
            let _ = reply.send(Err(ExecError::StaleLimits));
            return;
        }
        self.advance();
        if self.lagging || !self.parked.is_empty() {
            // Decided once what fell due before it is applied, after the calls parked
            // before it.
            self.parked.push((op, reply));
            return;
        }
        match self.decide(&op) {
            Ok(Decision::Replay(entry)) => {
                let entry = *entry;
                let durable = entry.seq <= self.durable.seq;
                // The balance shown is the durable one as of now: with due records (a reset,
                // a renewal, an expiry) or other calls pending, it is answered once they are
                // durable, not from the stale durable state (found by the seeded simulation).
                let settled = self.open_records.is_empty() && self.in_flight.is_none();
                if durable && settled {
                    let _ = reply.send(Ok(Applied {
                        entry,
                        balance: self.durable.balance(),
                        replayed: true,
                    }));
                } else {
                    self.open.push(Waiter::Exec(Box::new(ExecWaiter {
                        // A durable record is replayed again if the pending commit fails.
                        op: durable.then_some(op),
                        reply,
                        entry,
                        balance: None,
                        replayed: true,
                    })));
                }
            }
            Ok(Decision::Apply) => {
                let plans = self.shared.plans.snapshot();
                match self.spec.execute(&op, &*plans) {
                    Ok(entry) => {
                        let balance = self.spec.balance();
                        self.remember(&entry);
                        self.open_records.push(Record {
                            entry: entry.clone(),
                            balance: balance.clone(),
                        });
                        self.open.push(Waiter::Exec(Box::new(ExecWaiter {
                            op: Some(op),
                            reply,
                            entry,
                            balance: Some(balance),
                            replayed: false,
                        })));
                    }
                    Err(e) if self.refusal_may_turn(&op, &e) => {
                        self.open.push(Waiter::Refused(Box::new((op, reply, e))));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Err(e) if self.rests_on_pending(&e) => {
                self.open.push(Waiter::Refused(Box::new((op, reply, e))));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Whether a refusal by key or by reservation state (decided from the records this
    /// actor remembers) may rest on records that are not durable yet: a key taken by a
    /// call whose commit is still pending, a reservation settled by one. It is answered
    /// once they are durable, and decided again if their commit fails (SPEC 4: a key is
    /// recorded only when its operation succeeds; SPEC 10: never a definite refusal while
    /// an outcome is unknown).
    fn rests_on_pending(&self, e: &OpError) -> bool {
        matches!(
            e,
            OpError::IdempotencyConflict | OpError::ReservationNotActive
        ) && (!self.open_records.is_empty()
            || self
                .in_flight
                .as_ref()
                .is_some_and(|f| !f.records.is_empty()))
    }

    /// Whether a refusal depends on records ahead of it that are not durable yet, so that
    /// it is answered only once they are (and decided again if their commit fails): one
    /// for funds or a member limit on a keyed record (a retry whose key was forgotten is
    /// not new) or on a spend ahead (a settlement has no key of its own, and pays from the
    /// spendable balance and counts in its member's spend: found by review), a purchase's
    /// or a compensation's on the lot ahead for the same payment or review (the caller then
    /// finds that lot stored), and one for the model's tier behind a plan change.
    fn refusal_may_turn(&self, op: &Op, e: &OpError) -> bool {
        let mut ahead = self
            .in_flight
            .iter()
            .flat_map(|f| &f.records)
            .chain(&self.open_records);
        match (e, once_for(op)) {
            (OpError::InsufficientCredits { .. } | OpError::MemberLimitExceeded { .. }, _) => {
                ahead.any(|r| r.entry.idempotency_key().is_some() || r.entry.usage().is_some())
            }
            // An upgrade may move the wallet to a plan with fewer tiers (found by review).
            (OpError::ModelNotAllowed { .. }, _) => ahead.any(|r| {
                matches!(
                    r.entry.kind,
                    EntryKind::PlanChanged { .. } | EntryKind::Renewed { plan: Some(_), .. }
                )
            }),
            (OpError::IdempotencyConflict, Some(once)) => ahead.any(|r| {
                r.entry
                    .grant()
                    .is_some_and(|lot| lot.origin.as_ref().map(LotOrigin::once_for) == Some(once))
            }),
            _ => false,
        }
    }

    /// Whether a record not durable yet grants the lot for `once`. The wallet's state may
    /// no longer show it (a call behind it spent it all), but the grant must not join it.
    fn granted_ahead(&self, once: OnceFor<'_>) -> bool {
        self.in_flight
            .iter()
            .flat_map(|f| &f.records)
            .chain(&self.open_records)
            .filter_map(|r| r.entry.grant()?.origin.as_ref())
            .any(|origin| origin.once_for() == once)
    }

    /// Input checks, idempotent retries and finished reservations, in SPEC 10's order.
    fn decide(&self, op: &Op) -> Result<Decision, OpError> {
        self.spec.validate(op)?;
        if let Some(key) = op.key() {
            match check_key(self.keys.get(&key.to_owned()), op.request().as_ref()) {
                KeyCheck::Fresh => {}
                KeyCheck::Replay(e) => return Ok(Decision::Replay(Box::new(e.clone()))),
                KeyCheck::Conflict => return Err(OpError::IdempotencyConflict),
            }
        }
        if let Some(once) = once_for(op)
            && (self.taken.iter().any(|t| t.once_for() == once) || self.granted_ahead(once))
        {
            return Err(OpError::IdempotencyConflict);
        }
        let reservation = match op {
            Op::Settle(s) => Some(&s.reservation_id),
            Op::Release(id) => Some(id),
            _ => None,
        };
        if let Some(id) = reservation.filter(|id| self.spec.reservation(id).is_none()) {
            let Some(finished) = self.finished.get(id) else {
                return Err(OpError::ReservationNotActive);
            };
            return match (&finished.kind, op) {
                (EntryKind::Settled { .. }, Op::Settle(_)) => {
                    match check_key(Some(finished), op.request().as_ref()) {
                        KeyCheck::Replay(e) => Ok(Decision::Replay(Box::new(e.clone()))),
                        _ => Err(OpError::IdempotencyConflict),
                    }
                }
                (
                    EntryKind::Released {
                        reason: ReleaseReason::Released,
                        ..
                    },
                    Op::Release(_),
                ) => Ok(Decision::Replay(Box::new(finished.clone()))),
                _ => Err(OpError::ReservationNotActive),
            };
        }
        Ok(Decision::Apply)
    }

    fn remember(&mut self, entry: &Entry) {
        let durable_seq = self.durable.seq;
        let durable = |e: &Entry| e.seq <= durable_seq;
        if let Some(key) = entry.idempotency_key() {
            self.keys.insert(key.to_owned(), entry.clone(), durable);
        }
        match &entry.kind {
            EntryKind::Settled { usage, .. } => {
                if let Some(id) = &usage.reservation_id {
                    self.finished.insert(id.clone(), entry.clone(), durable);
                }
            }
            EntryKind::Released { reservation_id, .. } => {
                self.finished
                    .insert(reservation_id.clone(), entry.clone(), durable)
            }
            _ => {}
        }
    }

    fn maybe_commit(&mut self, myself: &ActorRef<WalletMsg>) {
        if self.in_flight.is_some() || self.recovering {
            return;
        }
        if self.open_records.is_empty() {
            // Nothing new to write: whoever waits, waits only for what is already durable,
            // and a run of failing commits is over (found by review: a count the unique-row
            // rule raised stayed, so a later failure gave up at once).
            self.failures = 0;
            let waiters = std::mem::take(&mut self.open);
            self.answer(waiters);
            return;
        }
        let records = std::mem::take(&mut self.open_records);
        let batch = Batch {
            wallet_id: self.durable.id.clone(),
            expected_version: self.version,
            before: self.durable.clone(),
            wallet: self.spec.clone(),
            records: records.clone(),
        };
        self.in_flight = Some(InFlight {
            waiters: std::mem::take(&mut self.open),
            records,
            wallet: self.spec.clone(),
        });
        let me = myself.clone();
        self.shared.committer.commit(
            batch,
            Box::new(move |result| {
                // An actor that stopped meanwhile reloads from the store when next activated.
                let _ = me.send_message(WalletMsg::CommitDone(result));
            }),
        );
    }

    fn commit_done(&mut self, myself: &ActorRef<WalletMsg>, result: Result<(), CommitError>) {
        match result {
            Ok(()) => {
                let flight = self.in_flight.take().expect("a commit was in flight");
                self.failures = 0;
                self.version += 1;
                self.became_durable(flight);
                self.carry_on(myself);
            }
            Err(e) => {
                // Losing the fence to another writer is not a failing store: reload and
                // decide again as often as it happens (someone wins every round).
                self.last_commit_error = Some(e.clone());
                if self.last_commit_unknown() {
                    self.failures += 1;
                    tracing::warn!(wallet = %self.durable.id, error = %e, failures = self.failures, "commit failed; reloading");
                } else {
                    tracing::debug!(wallet = %self.durable.id, error = %e, "fenced out; reloading");
                }
                self.start_recovery(myself);
            }
        }
    }

    /// Whether the last commit's outcome is unknown: it may or may not be durable.
    fn last_commit_unknown(&self) -> bool {
        matches!(
            self.last_commit_error,
            Some(CommitError::Unavailable(_) | CommitError::GivenUp(_))
        )
    }

    /// Whether the last commit was refused for plans that changed.
    fn last_commit_on_old_plans(&self) -> bool {
        self.last_commit_error == Some(CommitError::PlanChanged)
    }

    fn became_durable(&mut self, flight: InFlight) {
        self.durable = flight.wallet;
        self.shared.metrics.committed(flight.records.len());
        for r in &flight.records {
            self.publish(r);
        }
        self.answer(flight.waiters);
    }

    fn publish(&mut self, r: &Record) {
        let event = BalanceEvent::change(self.durable.id.clone(), &r.entry, r.balance.clone());
        // No receivers is fine: nobody is watching this wallet.
        self.send(event);
    }

    fn send(&mut self, event: BalanceEvent) {
        if let Some(events) = &self.events
            && events.send(Arc::new(event)).is_err()
        {
            // Nobody is subscribed any more: free the channel.
            self.events = None;
        }
    }

    fn publish_snapshot(&mut self) {
        self.send(self.snapshot());
    }

    /// The durable state as of now: what fell due applied in a copy, not yet committed.
    fn wallet_now(&self) -> Wallet {
        let mut wallet = self.durable.clone();
        wallet.advance_to(self.shared.clock.now(), &*self.shared.plans.snapshot());
        wallet
    }

    /// What a new subscriber starts from: the last durable seq, with the balance as of now.
    /// SPEC 3: the state at an instant includes every event due by then, so a reset that
    /// fell due but is not committed yet (the next tick's record, seq + 1, carrying the
    /// same balance) already shows.
    fn snapshot_now(&self) -> BalanceEvent {
        let wallet = self.wallet_now();
        BalanceEvent {
            balance: wallet.balance(),
            at: wallet.now,
            ..self.snapshot()
        }
    }

    fn snapshot(&self) -> BalanceEvent {
        BalanceEvent {
            wallet_id: self.durable.id.clone(),
            seq: self.durable.seq,
            kind: EventKind::Snapshot,
            balance: self.durable.balance(),
            at: self.durable.now,
        }
    }

    fn answer(&mut self, waiters: Vec<Waiter>) {
        for w in waiters {
            match w {
                Waiter::Exec(w) => {
                    let balance = w.balance.unwrap_or_else(|| self.durable.balance());
                    let _ = w.reply.send(Ok(Applied {
                        entry: w.entry,
                        balance,
                        replayed: w.replayed,
                    }));
                }
                Waiter::Refused(r) => {
                    let (_, reply, e) = *r;
                    let _ = reply.send(Err(e.into()));
                }
                // Still catching up: answered once everything due is durable.
                Waiter::Tick(r) if self.lagging || self.catch_up_seq > self.durable.seq => {
                    self.open.push(Waiter::Tick(r));
                }
                Waiter::Tick(r) => {
                    let _ = r.send(());
                }
            }
        }
    }

    fn refresh(&mut self, myself: &ActorRef<WalletMsg>, seq: Option<u64>) {
        if seq.is_some_and(|s| s <= self.durable.seq) {
            return; // Already here: this actor's own commit, or an old notice.
        }
        if self.in_flight.is_some() || self.recovering {
            // Decided once the commit or the reload in progress is done.
            let seq = seq.unwrap_or(u64::MAX);
            self.announced = Some(self.announced.map_or(seq, |a| a.max(seq)));
            return;
        }
        self.start_recovery(myself);
    }

    fn start_recovery(&mut self, myself: &ActorRef<WalletMsg>) {
        self.recovering = true;
        let store = self.shared.store.clone();
        let id = self.durable.id.clone();
        let after = self.durable.seq;
        let mut keys: Vec<String> = Vec::new();
        let mut origins: Vec<LotOrigin> = Vec::new();
        let waiting = self
            .in_flight
            .iter()
            .flat_map(|f| &f.waiters)
            .chain(&self.open)
            .filter_map(Waiter::op)
            .chain(self.parked.iter().map(|(op, _)| op));
        for op in waiting {
            keys.extend(op.key().map(str::to_owned));
            if let Op::Grant(g) = op {
                origins.extend(g.origin.clone());
            }
        }
        // After a commit whose outcome is unknown, the reload first moves the version on:
        // that commit may still land (a PostgreSQL COMMIT on a lost connection), and if it
        // landed after a plain read, its calls would be decided again on top of it (found
        // by review: a plan change, which has no key, was applied twice). Now it is either
        // in what the reload reads or it never lands.
        // (Only where a commit can land late: one SQLite node sees every commit that
        // returned, and a fencing write there would only meet the same busy lock. One the
        // commit timeout gave up on may not have returned: its COMMIT may still be running
        // on a worker thread, found by review.)
        let fenced = self.in_flight.is_some()
            && match &self.last_commit_error {
                Some(CommitError::GivenUp(_)) => true,
                Some(CommitError::Unavailable(_)) => self.shared.store.several_nodes(),
                _ => false,
            };
        // A batch decided on plans that changed (a reset or renewal that took credits
        // another node's edit changed before its instant, which this node has not heard
        // of yet): the plans are read again before anything is decided again.
        let plans_again = self.in_flight.is_some() && self.last_commit_on_old_plans();
        let shared = self.shared.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let result = async {
                if plans_again {
                    shared.reread_plans().await?;
                }
                let loaded = if fenced {
                    store.load_fenced(&id).await?
                } else {
                    store.load(&id).await?
                };
                let loaded = loaded.ok_or_else(|| StoreError("wallet vanished".into()))?;
                let mut records = store
                    .records_after(&id, after, MAX_RECOVERY_RECORDS)
                    .await?;
                // Records read after the snapshot may go beyond it; they belong to the next
                // reload, or they would be published twice.
                records.retain(|r| r.entry.seq <= loaded.wallet.seq);
                let mut found = HashMap::new();
                for key in keys {
                    if let Some(e) = store.find_key(&id, &key).await? {
                        found.insert(key, e);
                    }
                }
                let mut taken = Vec::new();
                for origin in origins {
                    if store.lot_holder(origin.once_for()).await?.is_some() {
                        taken.push(origin);
                    }
                }
                Ok(Recovery {
                    loaded,
                    records,
                    keys: found,
                    taken,
                    fenced,
                })
            }
            .await;
            let _ = me.send_message(WalletMsg::Recovered(result));
        });
    }

    fn recovered(&mut self, myself: &ActorRef<WalletMsg>, result: Result<Recovery, StoreError>) {
        // Without a commit in flight, this reload was asked for by another node's notice.
        let refresh = self.in_flight.is_none();
        // A failed reload (or a store that keeps failing): stop. After another node's
        // notice, the state here is known to be stale, and a call decided on it could be
        // refused unearned; the next call activates the wallet afresh from the store.
        let mut r = match result {
            Ok(r) => r,
            Err(e) => {
                self.give_up(myself, &e.to_string());
                return;
            }
        };
        // Whether the batch in flight is durable (its reply was lost): then it is answered,
        // however many commits failed before it.
        let landed = self.in_flight.as_ref().is_some_and(|flight| {
            !flight.records.is_empty()
                && r.records.len() >= flight.records.len()
                && r.records
                    .iter()
                    .zip(&flight.records)
                    .all(|(stored, ours)| stored.entry == ours.entry)
        });
        if !landed && self.failures >= MAX_COMMIT_ATTEMPTS {
            self.give_up(myself, "the store keeps failing");
            return;
        }
        self.recovering = false;
        let mut flight = self
            .in_flight
            .take()
            .unwrap_or_else(|| InFlight::nothing(self.durable.clone()));
        // Ours (and the reload's own move, if it made one) the only versions since.
        let ours = self.version + 1 + i64::from(r.fenced);
        if landed && r.records.len() == flight.records.len() && r.loaded.version == ours {
            // The commit was durable; only its reply was lost.
            self.failures = 0;
            self.version = r.loaded.version;
            self.members_version = r.loaded.members_version;
            self.became_durable(flight);
            self.run_parked();
            // A timer that fired meanwhile was not acted on.
            self.advance();
            self.carry_on(myself);
            return;
        }
        if landed {
            // The commit was durable and another writer has committed after it: answer ours
            // (never decide a durable call again), then adopt what came after it below.
            self.failures = 0;
            r.records.drain(..flight.records.len());
            let nothing = InFlight::nothing(flight.wallet.clone());
            self.became_durable(std::mem::replace(&mut flight, nothing));
        }
        // A grant of the failed batch whose payment or review a stored lot holds explains
        // the refusal: it is refused this time (a deferred refusal riding along does not
        // count).
        let explained = flight.waiters.iter().any(|w| match w {
            Waiter::Exec(w) => {
                w.op.as_ref()
                    .and_then(once_for)
                    .is_some_and(|once| r.taken.iter().any(|t| t.once_for() == once))
            }
            _ => false,
        });
        // Only a key of the failed batch's own records found stored explains it (that call
        // is a replay this time); a key of another waiting call, a retry of an old one,
        // does not (found by review: it kept the rule off, and the batch was decided and
        // refused again for ever).
        let batch_key_stored = flight
            .records
            .iter()
            .filter_map(|x| x.entry.idempotency_key())
            .any(|k| r.keys.contains_key(k));
        if !refresh
            && !landed
            && !self.last_commit_unknown()
            && r.loaded.version == self.version
            && !batch_key_stored
            && !explained
        {
            // Refused with the fence intact, nothing written, no waiting key found recorded
            // (which would make a call a replay this time) and no payment or review found
            // held by a stored lot (whose grant is refused this time): a unique row the
            // batch collides with that deciding again only repeats. Counted as a failing
            // commit, so its waiters get UNAVAILABLE after MAX_COMMIT_ATTEMPTS rather than
            // the wallet retrying, and blocking every other call, for ever. A batch refused
            // for changed plans counts the same way (the plans are read again before it is
            // decided again, so this repeats only while they cannot be read).
            self.failures += 1;
            let why = if self.last_commit_on_old_plans() {
                "commit refused: decided on plans that changed; read them again, deciding again"
            } else {
                "commit refused by a unique row; deciding again"
            };
            tracing::warn!(wallet = %self.durable.id, failures = self.failures, "{why}");
        }
        // Someone else wrote (or nothing landed): adopt the stored state, tell subscribers
        // what it contains, and decide every waiting call again on top of it.
        let old_seq = self.durable.seq;
        self.durable = r.loaded.wallet;
        self.version = r.loaded.version;
        self.members_version = r.loaded.members_version;
        // Forget what this actor accepted but never made durable. (By identity, not by seq:
        // another node's durable records may carry the same seq numbers.)
        let undone: Vec<&Entry> = flight
            .records
            .iter()
            .chain(&self.open_records)
            .map(|r| &r.entry)
            .collect();
        self.keys.retain(|e| !undone.contains(&e));
        self.finished.retain(|e| !undone.contains(&e));
        for rec in &r.records {
            self.remember(&rec.entry);
            self.publish(rec);
        }
        if r.records
            .last()
            .is_none_or(|rec| rec.entry.seq < self.durable.seq)
            && self.durable.seq > old_seq
        {
            // More was written than one reload reads: subscribers start again from here.
            self.publish_snapshot();
        }
        let durable_seq = self.durable.seq;
        for (key, entry) in r.keys {
            self.keys.insert(key, entry, |e| e.seq <= durable_seq);
        }
        self.taken.extend(r.taken);
        let excess = self.taken.len().saturating_sub(RECENT_KEYS);
        self.taken.drain(..excess);
        self.spec = self.durable.clone();
        self.open_records.clear();
        // What was applied while catching up is applied again below, if it still is due.
        self.lagging = false;
        self.catch_up_seq = 0;
        let mut waiting: Vec<Waiter> = flight.waiters;
        waiting.append(&mut self.open);
        let parked = std::mem::take(&mut self.parked);
        let behind = self.behind();
        for w in waiting {
            match w {
                Waiter::Exec(w) => match w.op {
                    // Still behind another node: decide on the next reload instead.
                    Some(op) if behind => self.parked.push((op, w.reply)),
                    Some(op) => self.execute(op, w.reply),
                    // A retry answered from a record that never became durable: its original
                    // call is being decided again above, so this one cannot be answered yet.
                    None => {
                        let _ = w.reply.send(Err(ExecError::Unavailable(
                            "retry: the original call is still being decided".into(),
                        )));
                    }
                },
                Waiter::Refused(r) => {
                    let (op, reply, _) = *r;
                    if behind {
                        self.parked.push((op, reply));
                    } else {
                        self.execute(op, reply);
                    }
                }
                Waiter::Tick(r) => self.open.push(Waiter::Tick(r)),
            }
        }
        self.parked.extend(parked);
        self.run_parked();
        self.advance();
        self.carry_on(myself);
    }

    /// Commits what waits, unless another node announced a seq this actor has not seen:
    /// then it reloads first (and decides what waits again on top of that).
    fn carry_on(&mut self, myself: &ActorRef<WalletMsg>) {
        match self.announced.take() {
            Some(seq) if seq > self.durable.seq => self.start_recovery(myself),
            _ => {
                // Calls parked while this actor looked behind are decided now.
                self.run_parked();
                self.maybe_commit(myself);
            }
        }
    }

    /// The store keeps failing: answer UNAVAILABLE (never a refusal) and stop; the next call
    /// activates the wallet again from durable state.
    fn give_up(&mut self, myself: &ActorRef<WalletMsg>, why: &str) {
        tracing::error!(wallet = %self.durable.id, why, "giving up on the store; stopping the wallet actor");
        // Leave the directory before answering: a caller retrying at once must reach a fresh
        // activation, not this stopping actor (which would drop the call unanswered).
        self.shared.forget(&self.durable.id, myself.get_id());
        let mut waiting: Vec<Waiter> = self.in_flight.take().map(|f| f.waiters).unwrap_or_default();
        waiting.append(&mut self.open);
        for w in waiting {
            match w {
                Waiter::Exec(w) => {
                    let _ = w.reply.send(Err(ExecError::Unavailable(format!(
                        "commit outcome unknown: {why}"
                    ))));
                }
                // Whether the calls ahead of it were new is unknown, so is the refusal.
                Waiter::Refused(r) => {
                    let _ = r.1.send(Err(ExecError::Unavailable(why.to_owned())));
                }
                Waiter::Tick(r) => drop(r),
            }
        }
        for (_, reply) in self.parked.drain(..) {
            let _ = reply.send(Err(ExecError::Unavailable(why.to_owned())));
        }
        myself.stop(Some("store unavailable".into()));
    }

    /// Re-arms the due-instant timer and the idle timer after every message; `activity`:
    /// the message was a call, a read, a tick… (anything but an idle check), so the idle
    /// time starts again.
    fn after_message(&mut self, myself: &ActorRef<WalletMsg>, activity: bool) {
        let due = self.spec.next_due();
        if self.timer.as_ref().is_none_or(|(at, _)| *at != due) {
            if let Some((_, t)) = self.timer.take() {
                t.abort();
            }
            let clock = self.shared.clock.clone();
            let me = myself.clone();
            let handle = tokio::spawn(async move {
                clock.sleep_until(due).await;
                let _ = me.send_message(WalletMsg::Tick(None));
            });
            self.timer = Some((due, handle));
        }
        let busy = self.in_flight.is_some() || !self.open.is_empty() || self.recovering;
        if busy {
            self.idle_since = None;
            return;
        }
        let since = match self.idle_since {
            Some(since) if !activity => since,
            _ => tokio::time::Instant::now(),
        };
        self.idle_since = Some(since);
        if !self.idle_check_armed {
            self.idle_check_armed = true;
            let me = myself.clone();
            let check_at = since + self.shared.config.idle_after;
            tokio::spawn(async move {
                tokio::time::sleep_until(check_at).await;
                let _ = me.send_message(WalletMsg::IdleCheck);
            });
        }
    }
}

/// What a grant with an origin (a purchase, a review's compensation) is the one lot for.
fn once_for(op: &Op) -> Option<OnceFor<'_>> {
    match op {
        Op::Grant(g) => g.origin.as_ref().map(LotOrigin::once_for),
        _ => None,
    }
}

enum Decision {
    Apply,
    Replay(Box<Entry>),
}
