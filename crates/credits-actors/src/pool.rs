//! Team pools (SPEC 6): one supervisor actor per active pool owns the pool's wallet actor
//! (linked to it) and one seat actor per member who spends. A seat holds its member's
//! limits, read from durable state when it starts, and hands them to every spend of that
//! member; the pool's wallet actor enforces them atomically with the debit and attributes
//! the spend (the core keeps each member's spend of the day and period). Team admins change
//! limits in the store first, then the seat is restarted so it reads them back.
//!
//! Supervision: a seat that crashes is restarted from durable state on its member's next
//! call while the pool keeps serving everyone else; a pool wallet actor that crashes is
//! activated again from durable state at once (nothing acknowledged is lost: it answered
//! only what was durable). When the pool's wallet passivates, the supervisor and its seats
//! stop too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use credits_core::{Credits, Member, WalletId};
use credits_store::Store;
use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::OnceCell;

use crate::directory::{CALL_TIMEOUT, Directory};
use crate::ledger::{ServiceError, ServiceResult};
use crate::wallet::ExecError;

/// The pool supervisors of this node, by pool wallet id.
#[derive(Clone, Default)]
pub struct Pools {
    supervisors: std::sync::Arc<DashMap<WalletId, std::sync::Arc<OnceCell<ActorRef<PoolMsg>>>>>,
    /// Counts membership and limit changes heard by this node (see [`Pools::epoch`]).
    changes: std::sync::Arc<AtomicU64>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("active", &self.supervisors.len())
            .finish()
    }
}

pub enum PoolMsg {
    /// The seat of a member, started on first use; FORBIDDEN for a non-member.
    Seat(String, RpcReplyPort<ServiceResult<ActorRef<SeatMsg>>>),
    /// A member's limits or membership changed in the store (team id, user id; `None`:
    /// maybe every member's): restart the seat on next use.
    Forget(String, Option<String>),
    /// This pool's seat of a member reads their limits again.
    Reseat(String),
    /// Activate the pool's wallet again after its actor failed, and supervise it.
    Rewire,
}

pub enum SeatMsg {
    Member(RpcReplyPort<Member>),
    /// For fault-injection tests: the seat dies as if a bug had panicked in it.
    Crash,
}

fn unavailable(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Exec(ExecError::Unavailable(e.to_string()))
}

impl Pools {
    /// The member spending on pool `wallet`, with the limits their seat holds.
    pub async fn member(
        &self,
        dir: &Directory,
        store: &Store,
        wallet: &WalletId,
        member_id: &str,
    ) -> ServiceResult<Member> {
        // A seat that stopped between the two calls (the pool passivated) is asked again.
        for _ in 0..3 {
            let pool = self.supervisor(dir, store, wallet).await?;
            let seat = match pool
                .call(
                    |r| PoolMsg::Seat(member_id.to_owned(), r),
                    Some(CALL_TIMEOUT),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(seat)) => seat?,
                _ => {
                    // Stopped too, or it would live on outside the map with its seats
                    // (found by review: one more supervisor per slow answer).
                    self.forget_supervisor(wallet, &pool);
                    pool.stop(Some("replaced: it did not answer in time".into()));
                    continue;
                }
            };
            if let Ok(ractor::rpc::CallResult::Success(m)) =
                seat.call(SeatMsg::Member, Some(CALL_TIMEOUT)).await
            {
                return Ok(m);
            }
        }
        Err(unavailable("the team pool did not answer"))
    }

    /// The member's seat in pool `wallet` (if started) reads their limits again before it
    /// next answers.
    pub fn reseat(&self, wallet: &WalletId, member_id: &str) {
        if let Some(pool) = self.active(wallet) {
            let _ = pool.send_message(PoolMsg::Reseat(member_id.to_owned()));
        }
    }

    /// Limits or membership of a member of `team_id` changed durably (here or on another
    /// node): their seat reads them again.
    pub fn forget(&self, team_id: &str, user_id: &str) {
        self.changes.fetch_add(1, Ordering::Release);
        self.tell_all(|| PoolMsg::Forget(team_id.to_owned(), Some(user_id.to_owned())));
    }

    /// Every seat reads its limits again (member notices may have been lost).
    pub fn forget_all(&self) {
        self.changes.fetch_add(1, Ordering::Release);
        self.tell_all(|| PoolMsg::Forget(String::new(), None));
    }

    /// Moves on whenever a member of any team may have changed (after the change is
    /// durable): a reader who checked a membership at one epoch need not read it again
    /// until the epoch moves.
    pub fn epoch(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn tell_all(&self, msg: impl Fn() -> PoolMsg) {
        for slot in self.supervisors.iter() {
            if let Some(pool) = slot.value().get() {
                let _ = pool.send_message(msg());
            }
        }
    }

    /// The supervisor of an active pool.
    pub fn active(&self, wallet: &WalletId) -> Option<ActorRef<PoolMsg>> {
        self.supervisors.get(wallet).and_then(|s| s.get().cloned())
    }

    /// Whether `pool` is the supervisor of `wallet` in the map (not one replaced).
    fn is_current(&self, wallet: &WalletId, pool: &ActorRef<PoolMsg>) -> bool {
        self.active(wallet)
            .is_some_and(|p| p.get_id() == pool.get_id())
    }

    /// The seat of a member, if started (tests).
    pub async fn seat(&self, wallet: &WalletId, member_id: &str) -> Option<ActorRef<SeatMsg>> {
        let pool = self.active(wallet)?;
        let seats = pool
            .get_children()
            .into_iter()
            .filter(|c| {
                c.get_name()
                    .as_deref()
                    .and_then(|n| n.rsplit_once('#'))
                    .is_some_and(|(name, _)| name == seat_name(wallet, member_id))
            })
            .collect::<Vec<_>>();
        seats.first().map(|c| ActorRef::from(c.clone()))
    }

    async fn supervisor(
        &self,
        dir: &Directory,
        store: &Store,
        wallet: &WalletId,
    ) -> ServiceResult<ActorRef<PoolMsg>> {
        loop {
            let slot = self.supervisors.entry(wallet.clone()).or_default().clone();
            let started = slot
                .get_or_try_init(|| async {
                    let team = store
                        .team_of_wallet(&wallet.0)
                        .await?
                        .ok_or(ServiceError::NotFound("team"))?;
                    let args = PoolArgs {
                        wallet: wallet.clone(),
                        team_id: team.id,
                        dir: dir.clone(),
                        store: store.clone(),
                        pools: self.clone(),
                    };
                    let (pool, _) = Actor::spawn(None, PoolSupervisor, args)
                        .await
                        .map_err(unavailable)?;
                    Ok::<_, ServiceError>(pool)
                })
                .await;
            match started {
                Ok(pool) if pool.get_status() <= ractor::ActorStatus::Running => {
                    return Ok(pool.clone());
                }
                Ok(pool) => self.forget_supervisor(wallet, pool),
                Err(e) => {
                    self.supervisors
                        .remove_if(wallet, |_, s| std::sync::Arc::ptr_eq(s, &slot));
                    return Err(e);
                }
            }
        }
    }

    /// Removes `pool` from the map, unless a newer supervisor took its place. A slot still
    /// being filled is another caller's start in progress: removing it would let a third
    /// caller start a second supervisor for the pool (found by review).
    fn forget_supervisor(&self, wallet: &WalletId, pool: &ActorRef<PoolMsg>) {
        let id = pool.get_id();
        self.supervisors
            .remove_if(wallet, |_, s| s.get().is_some_and(|p| p.get_id() == id));
    }
}

fn seat_name(wallet: &WalletId, member_id: &str) -> String {
    format!("seat:{}:{member_id}", wallet.0)
}

/// A seat's actor name: [`seat_name`] and a number of its own. A seat stopped to read its
/// limits again keeps its name until it has processed the stop, so the seat started for
/// the next call must not need that name.
fn unique_seat_name(wallet: &WalletId, member_id: &str) -> String {
    static SEATS: AtomicU64 = AtomicU64::new(0);
    let n = SEATS.fetch_add(1, Ordering::Relaxed);
    format!("{}#{n}", seat_name(wallet, member_id))
}

struct PoolSupervisor;

struct PoolArgs {
    wallet: WalletId,
    team_id: String,
    dir: Directory,
    store: Store,
    pools: Pools,
}

struct PoolState {
    args: PoolArgs,
    wallet_actor: ActorCell,
    seats: HashMap<String, ActorRef<SeatMsg>>,
}

impl PoolState {
    /// The member's seat stops: their next call starts one that reads their limits again.
    fn drop_seat(&mut self, member_id: &str) {
        if let Some(seat) = self.seats.remove(member_id) {
            seat.stop(Some("limits changed".into()));
        }
    }
}

impl Actor for PoolSupervisor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let wallet_actor = supervise_wallet(&args, &myself).await?;
        Ok(PoolState {
            args,
            wallet_actor,
            seats: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        for seat in state.seats.values() {
            seat.stop(None);
        }
        // A supervisor stopped while its wallet lives (replaced for a slow answer) lets the
        // wallet go: ractor kills an actor's linked children as it ends (found by review).
        state.wallet_actor.unlink(myself.get_cell());
        state
            .args
            .pools
            .forget_supervisor(&state.args.wallet, &myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Seat(member_id, reply) => {
                if let Some(seat) = state.seats.get(&member_id) {
                    let _ = reply.send(Ok(seat.clone()));
                    return Ok(());
                }
                let started = start_seat(&myself, state, &member_id).await;
                if let Ok(seat) = &started {
                    state.seats.insert(member_id, seat.clone());
                }
                let _ = reply.send(started);
            }
            PoolMsg::Reseat(m) => state.drop_seat(&m),
            PoolMsg::Forget(team_id, member_id) => match member_id {
                Some(m) if team_id == state.args.team_id => state.drop_seat(&m),
                Some(_) => {}
                None => {
                    for (_, seat) in state.seats.drain() {
                        seat.stop(Some("limits may have changed".into()));
                    }
                }
            },
            PoolMsg::Rewire => match supervise_wallet(&state.args, &myself).await {
                // Replaced meanwhile (it did not answer in time): linking took the wallet
                // from the supervisor in the map, which takes it back.
                Ok(_) if !state.args.pools.is_current(&state.args.wallet, &myself) => {
                    if let Some(current) = state.args.pools.active(&state.args.wallet) {
                        let _ = current.send_message(PoolMsg::Rewire);
                    }
                    myself.stop(Some("replaced".into()));
                }
                Ok(cell) => {
                    state.wallet_actor = cell;
                    tracing::info!(wallet = %state.args.wallet, "pool wallet restarted from durable state");
                }
                Err(e) => {
                    tracing::warn!(wallet = %state.args.wallet, error = %e, "pool wallet could not restart; the pool stops");
                    myself.stop(Some("pool wallet unavailable".into()));
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (who, failed) = match &event {
            SupervisionEvent::ActorFailed(who, _) => (who, true),
            SupervisionEvent::ActorTerminated(who, _, _) => (who, false),
            _ => return Ok(()),
        };
        if who.get_id() == state.wallet_actor.get_id() {
            if failed {
                // Activate it again at once: its subscribers and timers come back with it.
                let _ = myself.send_message(PoolMsg::Rewire);
            } else {
                // Passivated (or shut down): the whole pool rests.
                myself.stop(Some("pool wallet stopped".into()));
            }
            return Ok(());
        }
        // A seat stopped: the next call of its member starts it from durable state.
        state.seats.retain(|_, seat| seat.get_id() != who.get_id());
        if failed {
            tracing::warn!(wallet = %state.args.wallet, "a member seat crashed; it restarts on next use");
        }
        Ok(())
    }
}

/// The pool wallet's running actor, linked to the supervisor. ractor refuses, silently, to
/// link an actor that has begun to stop (the wallet passivating at that moment): that one
/// would never report its stop, and the supervisor would outlive its wallet. Such an actor
/// is let go and the wallet's next activation taken instead.
async fn supervise_wallet(
    args: &PoolArgs,
    myself: &ActorRef<PoolMsg>,
) -> Result<ActorCell, ExecError> {
    for _ in 0..3 {
        let cell = args.dir.cell(&args.wallet).await?;
        cell.link(myself.get_cell());
        if cell.get_status() < ractor::ActorStatus::Draining {
            return Ok(cell);
        }
        cell.unlink(myself.get_cell());
    }
    Err(ExecError::Unavailable(
        "the pool's wallet kept stopping as it started".into(),
    ))
}

async fn start_seat(
    myself: &ActorRef<PoolMsg>,
    state: &PoolState,
    member_id: &str,
) -> ServiceResult<ActorRef<SeatMsg>> {
    let (limits_version, row) = state
        .args
        .store
        .seat(&state.args.team_id, member_id)
        .await?;
    let row = row.ok_or_else(|| {
        ServiceError::Forbidden(format!("{member_id} is not a member of this team"))
    })?;
    let member = Member {
        id: row.user_id,
        daily_limit: row.daily_limit_ucr.map(Credits::from_micro),
        period_limit: row.period_limit_ucr.map(Credits::from_micro),
        limits_version,
    };
    let (seat, _) = Actor::spawn_linked(
        Some(unique_seat_name(&state.args.wallet, member_id)),
        Seat,
        member,
        myself.get_cell(),
    )
    .await
    .map_err(unavailable)?;
    Ok(seat)
}

struct Seat;

impl Actor for Seat {
    type Msg = SeatMsg;
    type State = Member;
    type Arguments = Member;

    async fn pre_start(
        &self,
        _: ActorRef<SeatMsg>,
        member: Member,
    ) -> Result<Member, ActorProcessingErr> {
        Ok(member)
    }

    async fn handle(
        &self,
        _: ActorRef<SeatMsg>,
        msg: SeatMsg,
        member: &mut Member,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SeatMsg::Member(reply) => {
                let _ = reply.send(member.clone());
            }
            SeatMsg::Crash => panic!("injected seat crash"),
        }
        Ok(())
    }
}
