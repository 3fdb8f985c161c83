//! One seeded history and the checks after each of its steps.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use credits_actors::{
    ActorConfig, Applied, BalanceEvent, Clock, Directory, EventKind, ExecError, ManualClock,
    MemoryStore, WalletStore,
};
use credits_core::testing::{Journal, Outcome, ZONES, catalogue, step};
use credits_core::{
    Entry, Flows, KeyCheck, NewWallet, Op, OpError, Tokens, UsageId, UsageOp, WalletId, check_key,
    replay,
};
use proptest::prelude::Rng;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// An actor with nothing to do stops after this long; a passivation step waits past it.
const IDLE_AFTER: Duration = Duration::from_millis(150);
/// Definite answers a call gets within this many UNAVAILABLE retries, or the run fails.
const MAX_RETRIES: usize = 12;
/// Rounds of "read, then tick" a full check may take to make a wallet's due records durable.
const MAX_CATCH_UP: usize = 12;
/// How long a subscriber waits for the event of a record already durable.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// Steps of the history kept for the failure report.
const LOG_TAIL: usize = 40;

/// What the histories did, summed over seeds.
#[derive(Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub calls: u64,
    pub applied: u64,
    pub replayed: u64,
    pub refused: u64,
    pub unavailable: u64,
    /// Answers the facade (`Ledger`) gives from the store rather than the actor: a retried
    /// key found recorded, or a refusal where the reference replays or says NOT_FOUND
    /// because a restarted actor forgot keys or finished reservations.
    pub answered_by_facade: u64,
    pub faults: u64,
    pub crashes: u64,
    pub passivations: u64,
    pub clock_jumps: u64,
    pub full_checks: u64,
    pub events: u64,
    pub resubscriptions: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.calls += o.calls;
        self.applied += o.applied;
        self.replayed += o.replayed;
        self.refused += o.refused;
        self.unavailable += o.unavailable;
        self.answered_by_facade += o.answered_by_facade;
        self.faults += o.faults;
        self.crashes += o.crashes;
        self.passivations += o.passivations;
        self.clock_jumps += o.clock_jumps;
        self.full_checks += o.full_checks;
        self.events += o.events;
        self.resubscriptions += o.resubscriptions;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} steps, {} calls ({} applied, {} replayed, {} refused, {} UNAVAILABLE answers retried, \
             {} left to the facade), {} faults injected, {} crashes, {} passivations, {} clock jumps, \
             {} full checks, {} balance events checked, {} resubscriptions",
            self.steps,
            self.calls,
            self.applied,
            self.replayed,
            self.refused,
            self.unavailable,
            self.answered_by_facade,
            self.faults,
            self.crashes,
            self.passivations,
            self.clock_jumps,
            self.full_checks,
            self.events,
            self.resubscriptions
        )
    }
}

/// One simulated wallet: the reference and what the service acknowledged.
struct Model {
    id: WalletId,
    journal: Journal,
    /// Records the service acknowledged as applied (not replays).
    acked: Vec<Entry>,
    /// A subscriber on this wallet, if it has one: its events are checked at every step.
    watch: Option<Watch>,
    /// Whether this wallet is watched at all in this history.
    watched: bool,
    /// Whether its actor may have restarted since a key was recorded (a crash, an idle
    /// stop, a store fault that can make it give up): only then may it refuse a replay
    /// that the facade then answers from the store (found by review: any refusal passed).
    forgetful: bool,
}

/// A live subscription and the last seq it delivered.
struct Watch {
    events: tokio::sync::broadcast::Receiver<Arc<BalanceEvent>>,
    last_seq: u64,
}

/// A call run on the reference, waiting for the service's answer.
struct Pending {
    w: usize,
    id: WalletId,
    op: Op,
    now: DateTime<Utc>,
    expected: Result<Outcome, OpError>,
    balance_after: credits_core::Balance,
    /// The wallet's actor when the call was sent (`None`: not active).
    actor: Option<ractor::ActorId>,
}

struct Sim {
    rng: TestRunner,
    dir: Directory,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    wallets: Vec<Model>,
    /// Calls sent so far, for retries: (wallet, call).
    sent: Vec<(usize, Op)>,
    calls: usize,
    stats: Stats,
    log: Vec<String>,
}

type Check = Result<(), String>;

/// Instants where something awkward happens soon after: DST changes at or near local
/// midnight, 30-minute DST, month ends before short Februaries, a leap day.
const STARTS: &[&str] = &[
    "2026-03-07T20:00:00Z", // New York and Havana spring forward (Havana at midnight)
    "2026-03-28T20:00:00Z", // London spring forward
    "2026-10-24T20:00:00Z", // London falls back
    "2026-04-04T10:00:00Z", // Santiago falls back at midnight, Lord Howe by 30 minutes
    "2026-09-05T10:00:00Z", // Santiago springs forward at midnight
    "2026-03-21T20:00:00Z", // Tehran (no DST since 2022: must be a plain day)
    "2027-01-30T18:00:00Z", // a Jan 31 anchor renews on Feb 28
    "2028-01-30T18:00:00Z", // ... and on Feb 29 in a leap year
    "2028-02-28T12:00:00Z",
    "2026-12-31T22:00:00Z", // year end
    "2027-11-06T20:00:00Z", // New York falls back
];

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a valid instant")
}

impl Sim {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.rng().next_u64() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn note(&mut self, line: String) {
        self.log.push(line);
        if self.log.len() > LOG_TAIL * 2 {
            self.log.drain(..LOG_TAIL);
        }
    }

    fn fail(&self, why: String) -> String {
        let tail = self.log.len().saturating_sub(LOG_TAIL);
        format!(
            "{why}\n  at {} after {} calls; last steps:\n    {}",
            self.clock.now(),
            self.calls,
            self.log[tail..].join("\n    ")
        )
    }
}

fn start_and_anchor(sim: &mut Sim) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = if sim.chance(70) {
        let i = sim.below(STARTS.len() as u64) as usize;
        at(STARTS[i]) + chrono::Duration::seconds(sim.below(86_400) as i64 - 43_200)
    } else {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::seconds(sim.below(3 * 365 * 86_400) as i64)
    };
    (start, anchor_before(sim, start))
}

/// A billing anchor at or before `start`: often the last 31st (or a Feb 29), so that
/// renewals clamp to short months; else some days before.
fn anchor_before(sim: &mut Sim, start: DateTime<Utc>) -> DateTime<Utc> {
    match sim.below(3) {
        0 => {
            let mut d = start - chrono::Duration::hours(1);
            for _ in 0..800 {
                if d.day() == 31 || (d.month() == 2 && d.day() == 29) {
                    return d;
                }
                d -= chrono::Duration::days(1);
            }
            d
        }
        1 => start,
        _ => start - chrono::Duration::seconds(sim.below(800 * 86_400) as i64),
    }
}

/// Runs one history; `Err` says what broke, with the last steps.
pub async fn run(seed: u64, steps: usize) -> Result<Stats, String> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let rng = TestRunner::new_with_rng(Config::default(), rng);
    let mut sim = Sim {
        rng,
        dir: Directory::new(
            Arc::new(MemoryStore::new()),
            Clock::System,
            Vec::new(),
            ActorConfig::default(),
        ),
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(ManualClock::new(Utc::now())),
        wallets: Vec::new(),
        sent: Vec::new(),
        calls: 0,
        stats: Stats::default(),
        log: Vec::new(),
    };
    let (start, _) = start_and_anchor(&mut sim);
    let writers = 1 + sim.below(3) as usize;
    let clock = Clock::manual(start);
    sim.clock = clock.as_manual().expect("a manual clock").clone();
    sim.dir = Directory::new(
        sim.store.clone(),
        clock,
        catalogue(),
        ActorConfig {
            idle_after: IDLE_AFTER,
            writers,
            // Half the histories catch up on what falls due a record or three at a time.
            catch_up_records: match sim.below(2) {
                0 => 1 + sim.below(3) as usize,
                _ => credits_actors::wallet::CATCH_UP_RECORDS,
            },
            ..ActorConfig::default()
        },
    );
    let n_wallets = 1 + sim.below(4) as usize;
    for i in 0..n_wallets {
        let anchor = anchor_before(&mut sim, start);
        let plans = catalogue();
        let plan = plans[sim.below(plans.len() as u64) as usize].id.clone();
        let zone = ZONES[sim.below(ZONES.len() as u64) as usize];
        let new = NewWallet {
            id: WalletId(format!("wal_{i}")),
            owner_id: "owner".into(),
            pool: sim.chance(25),
            timezone: zone.parse().expect("a known zone"),
            plan_id: plan,
            billing_anchor: Some(anchor),
        };
        sim.note(format!(
            "create {} plan {} zone {zone} pool {} anchor {anchor} at {start}",
            new.id, new.plan_id, new.pool
        ));
        let journal = Journal::create(new.clone(), plans, start).map_err(|e| e.to_string())?;
        let created = sim
            .dir
            .create(new)
            .await
            .map_err(|e| format!("create: {e}"))?;
        if created != journal.wallet {
            return Err(sim.fail(format!("created wallet differs: {created:?}")));
        }
        let watched = sim.chance(50);
        sim.wallets.push(Model {
            id: created.id,
            journal,
            acked: Vec::new(),
            watch: None,
            watched,
            forgetful: false,
        });
    }
    for _ in 0..steps {
        sim.stats.steps += 1;
        sim.step().await.map_err(|e| sim.fail(e))?;
        let full = sim.chance(40);
        sim.check(full).await.map_err(|e| sim.fail(e))?;
    }
    // The end: no faults left, every wallet caught up and equal to the reference.
    sim.store.faults.fail_commits.store(0, Ordering::SeqCst);
    sim.store.faults.lose_replies.store(0, Ordering::SeqCst);
    sim.store.faults.land_late.store(0, Ordering::SeqCst);
    sim.store.faults.fail_loads.store(0, Ordering::SeqCst);
    sim.check(true).await.map_err(|e| sim.fail(e))?;
    sim.dir.shutdown().await;
    Ok(sim.stats)
}

impl Sim {
    async fn step(&mut self) -> Check {
        let w = self.below(self.wallets.len() as u64) as usize;
        match self.below(100) {
            0..60 => {
                let s = step()
                    .new_tree(&mut self.rng)
                    .map_err(|e| format!("strategy: {e}"))?
                    .current();
                self.calls += 1;
                let now = self.clock.now();
                let j = &mut self.wallets[w].journal;
                guard(|| j.advance_to(now)).map_err(|p| format!("the core panicked ({p})"))?;
                match s.op(&self.wallets[w].journal, self.calls) {
                    Some(op) => self.call(w, op).await,
                    None => {
                        // A retry step with nothing sent yet makes no call either.
                        let credits_core::testing::Step::Advance { seconds } = s else {
                            return Ok(());
                        };
                        self.advance(chrono::Duration::seconds(seconds)).await
                    }
                }
            }
            60..68 if !self.sent.is_empty() => {
                // The same call again: a client retrying (an idempotent replay, or a
                // second release / settle of a finished reservation).
                let i = self.below(self.sent.len() as u64) as usize;
                let (w, op) = self.sent[i].clone();
                self.call(w, op).await
            }
            68..72 if !self.sent.is_empty() => {
                // An earlier key with another request: a conflict (or a fresh call if that
                // key was never applied).
                let i = self.below(self.sent.len() as u64) as usize;
                let (w, op) = self.sent[i].clone();
                let Some(key) = op.key() else {
                    return Ok(());
                };
                self.calls += 1;
                let op = Op::Usage(UsageOp {
                    id: UsageId(format!("use_{}", self.calls)),
                    key: key.to_owned(),
                    thread_id: format!("t-conflict-{}", self.below(3)),
                    model: "economy-model".into(),
                    tier: "economy".into(),
                    tokens: Tokens {
                        input: 7,
                        cached: 0,
                        output: 3,
                    },
                    cost: credits_core::Credits::from_micro(self.below(2_000_000) as i64),
                    priced_by: "economy@1.0.0".into(),
                    member: credits_core::testing::member(
                        self.wallets[w].journal.wallet.pool,
                        self.below(4) as u8,
                    ),
                });
                self.call(w, op).await
            }
            72..80 => {
                // Just before, at or just after the next due instant of some wallet: a daily
                // reset (local midnight, across DST), a renewal (month ends), an expiry.
                let now = self.clock.now();
                let due = self
                    .wallets
                    .iter()
                    .map(|m| m.journal.wallet.next_due())
                    .min()
                    .expect("at least one wallet");
                let target = due + chrono::Duration::seconds(self.below(5) as i64 - 2);
                self.advance((target - now).max(chrono::Duration::zero()))
                    .await
            }
            80..88 => {
                self.stats.faults += 1;
                let (what, n) = match self.below(5) {
                    0 => ("fail_commits", 1 + self.below(2) as u32),
                    1 => ("fail_commits", 3), // enough for the actor to give up
                    2 => ("lose_replies", 1),
                    3 => ("land_late", 1),
                    _ => ("fail_loads", 1 + self.below(2) as u32),
                };
                // An actor may give up on a failing store, or reload, and forget.
                for m in &mut self.wallets {
                    m.forgetful = true;
                }
                let f = &self.store.faults;
                let counter = match what {
                    "fail_commits" => &f.fail_commits,
                    "lose_replies" => &f.lose_replies,
                    "land_late" => &f.land_late,
                    _ => &f.fail_loads,
                };
                counter.store(n, Ordering::SeqCst);
                self.note(format!("fault {what} = {n}"));
                Ok(())
            }
            88..94 => {
                self.stats.crashes += 1;
                let id = self.wallets[w].id.clone();
                self.note(format!("crash {id}"));
                self.wallets[w].forgetful = true;
                self.dir.crash(&id).await;
                Ok(())
            }
            96..100 if self.wallets.len() > 1 => self.concurrent().await,
            94..96 => {
                self.stats.passivations += 1;
                self.note("passivate (idle wait)".into());
                for m in &mut self.wallets {
                    m.forgetful = true;
                }
                tokio::time::sleep(IDLE_AFTER + Duration::from_millis(60)).await;
                Ok(())
            }
            _ => {
                // A short step of time within the day.
                let s = self.below(4_000) as i64;
                self.advance(chrono::Duration::seconds(s)).await
            }
        }
    }

    async fn advance(&mut self, by: chrono::Duration) -> Check {
        self.stats.clock_jumps += 1;
        self.note(format!("advance {}s", by.num_seconds()));
        match self.dir.advance_clock(by).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("the clock is manual".into()),
            // The store failing under the faults of this history: the clock moved, and the
            // due events are applied as the wallets go on.
            Err(ExecError::Unavailable(why)) => {
                for m in &mut self.wallets {
                    m.forgetful = true;
                }
                self.note(format!("advance unconfirmed: {why}"));
                Ok(())
            }
            Err(e) => Err(format!("advance: {e}")),
        }
    }

    /// Sends one call like a client: UNAVAILABLE is retried with the same call (and key);
    /// a call without a key is first looked up in the store, as the facade does for bundle
    /// payment references. The answer must be the reference's.
    async fn call(&mut self, w: usize, op: Op) -> Check {
        let p = self.prepare(w, op)?;
        let first = self.dir.execute(&p.id, p.op.clone()).await;
        self.finish(p, first).await
    }

    /// Calls on distinct wallets at once, so that their commits group in one store
    /// transaction (the cross-wallet group committer). Each wallet's reference is independent.
    async fn concurrent(&mut self) -> Check {
        let mut ws: Vec<usize> = (0..self.wallets.len()).collect();
        for i in (1..ws.len()).rev() {
            ws.swap(i, self.below(i as u64 + 1) as usize);
        }
        let mut pending = Vec::new();
        for w in ws {
            let s = step()
                .new_tree(&mut self.rng)
                .map_err(|e| format!("strategy: {e}"))?
                .current();
            self.calls += 1;
            if let Some(op) = s.op(&self.wallets[w].journal, self.calls) {
                pending.push(self.prepare(w, op)?);
            }
        }
        self.note(format!("  ({} calls at once)", pending.len()));
        let sent: Vec<_> = pending
            .iter()
            .map(|p| {
                let (dir, id, op) = (self.dir.clone(), p.id.clone(), p.op.clone());
                tokio::spawn(async move { dir.execute(&id, op).await })
            })
            .collect();
        for (p, answer) in pending.into_iter().zip(sent) {
            let first = answer.await.map_err(|e| format!("a call panicked: {e}"))?;
            self.finish(p, first).await?;
        }
        Ok(())
    }

    /// Runs the call on the reference first (at the current instant).
    fn prepare(&mut self, w: usize, op: Op) -> Result<Pending, String> {
        self.stats.calls += 1;
        // A bundle purchase is retried by its payment reference, which the facade looks up
        // in the store before it reaches a wallet; resending it here would be a new purchase
        // with a duplicate lot id, which the service never makes.
        if !matches!(&op, Op::Grant(g) if g.key.is_none()) {
            self.sent.push((w, op.clone()));
        }
        let id = self.wallets[w].id.clone();
        let now = self.clock.now();
        let j = &mut self.wallets[w].journal;
        let before = j.wallet.clone();
        let expected = guard(|| j.run(now, &op))
            .map_err(|p| format!("the core panicked ({p}) on {op:?}\n  at {now} on {before:?}"))?;
        let balance_after = j.wallet.balance();
        self.note(format!(
            "call {id} {op:?}\n      reference: {}",
            match &expected {
                Ok(Outcome::Applied(e)) => format!("applied seq {}", e.seq),
                Ok(Outcome::Replayed(e)) => format!("replayed seq {}", e.seq),
                Err(e) => format!("refused: {e}"),
            }
        ));
        let now = self.clock.now();
        let actor = self.dir.active_actor(&id);
        Ok(Pending {
            w,
            id,
            op,
            now,
            expected,
            balance_after,
            actor,
        })
    }

    /// Checks a call's answer against the reference, retrying UNAVAILABLE like a client.
    async fn finish(&mut self, p: Pending, first: Result<Applied, ExecError>) -> Check {
        let Pending {
            w,
            id,
            op,
            now,
            expected,
            balance_after,
            actor,
        } = p;
        // An actor started for this call, or since it was sent, knows no key from before
        // (found in CI: under load a wallet went idle past `IDLE_AFTER` between two steps
        // and stopped, with no passivation step to say so).
        if actor.is_none() || self.dir.active_actor(&id) != actor {
            self.wallets[w].forgetful = true;
        }
        if self.clock.now() != now {
            return Err("the clock moved during a call".into());
        }
        let mut unavailable = 0;
        let mut answer = Some(first);
        let got = loop {
            let next = match answer.take() {
                Some(a) => a,
                None => self.dir.execute(&id, op.clone()).await,
            };
            match next {
                Err(ExecError::Unavailable(why)) => {
                    unavailable += 1;
                    self.stats.unavailable += 1;
                    self.wallets[w].forgetful = true;
                    self.note(format!("  UNAVAILABLE: {why}"));
                    if unavailable > MAX_RETRIES {
                        return Err(format!("still UNAVAILABLE after {MAX_RETRIES} retries"));
                    }
                    // Like the facade (`Ledger`) on the client's retry: a recorded key is
                    // answered from the store. The actor alone cannot, after a restart: it
                    // no longer remembers the key, and would decide the call afresh.
                    if let Some(key) = op.key()
                        && self.wallets[w].journal.wallet.validate(&op).is_ok()
                        && let Some(e) = self
                            .store
                            .find_key(&id, key)
                            .await
                            .map_err(|e| e.to_string())?
                    {
                        self.stats.answered_by_facade += 1;
                        break match check_key(Some(&e), op.request().as_ref()) {
                            KeyCheck::Replay(_) => Ok(Applied {
                                balance: self.read_balance(&id).await?,
                                entry: e,
                                replayed: true,
                            }),
                            _ => Err(ExecError::Op(OpError::IdempotencyConflict)),
                        };
                    }
                    if op.key().is_none()
                        && let Ok(Outcome::Applied(e)) = &expected
                        && self.store.ledger(&id).get(e.seq as usize) == Some(e)
                    {
                        // It landed: a client that finds it does not send it again.
                        break Ok(Applied {
                            entry: e.clone(),
                            balance: balance_after.clone(),
                            replayed: true,
                        });
                    }
                }
                other => break other,
            }
        };
        let m = &mut self.wallets[w];
        match (&expected, got) {
            (Ok(Outcome::Applied(e)), Ok(a)) => {
                if &a.entry != e {
                    return Err(format!(
                        "applied record differs:\n  got {:?}\n  want {e:?}",
                        a.entry
                    ));
                }
                if a.replayed && unavailable == 0 {
                    return Err("a first call was answered as a replay".into());
                }
                if a.balance != balance_after {
                    return Err(format!(
                        "balance in the answer differs from the ledger's:\n  got {:?}\n  want {balance_after:?}",
                        a.balance
                    ));
                }
                self.stats.applied += 1;
                m.acked.push(a.entry);
            }
            (Ok(Outcome::Replayed(e)), Ok(a)) => {
                if &a.entry != e || !a.replayed {
                    return Err(format!(
                        "replay differs: got {:?} (replayed {})\n  want {e:?}",
                        a.entry, a.replayed
                    ));
                }
                if a.balance != m.journal.wallet.balance() {
                    return Err(format!(
                        "balance in a replay's answer differs from the ledger's:\n  got {:?}\n  want {:?}",
                        a.balance,
                        m.journal.wallet.balance()
                    ));
                }
                self.stats.replayed += 1;
            }
            (Ok(Outcome::Replayed(e)), Err(ExecError::Op(got))) => {
                // After a restart the actor no longer remembers the key or the finished
                // reservation. It must refuse without writing (the ledger check below), and
                // the facade (`Ledger`) looks these up in the store before calling it.
                let in_store = self.store.ledger(&id).get(e.seq as usize) == Some(e);
                if !in_store {
                    return Err(format!("replayed record {e:?} is not in the store"));
                }
                if !m.forgetful {
                    return Err(format!(
                        "an actor that cannot have forgotten the key refused a replay with {got}"
                    ));
                }
                let allowed = match op {
                    Op::Settle(_) | Op::Release(_) => got == OpError::ReservationNotActive,
                    _ => true,
                };
                if !allowed {
                    return Err(format!("a retry was refused with {got}"));
                }
                self.stats.answered_by_facade += 1;
            }
            (Err(want), Err(ExecError::Op(got))) => {
                let same = &got == want
                    || matches!(
                        (want, &got, &op),
                        (
                            OpError::NotFound("reservation"),
                            OpError::ReservationNotActive,
                            Op::Settle(_) | Op::Release(_)
                        )
                    );
                // A conflicting key the actor forgot: refused for another reason (still
                // refused, nothing written); the facade reports the conflict from the store.
                let forgot_key = *want == OpError::IdempotencyConflict && m.forgetful;
                if !same && !forgot_key {
                    return Err(format!("refused with {got}, want {want}"));
                }
                if same {
                    self.stats.refused += 1;
                } else {
                    self.stats.answered_by_facade += 1;
                }
            }
            (want, got) => {
                return Err(format!("answer differs:\n  got {got:?}\n  want {want:?}"));
            }
        }
        Ok(())
    }

    /// The invariants, after every step. Always: the store's ledger is the reference's
    /// ledger or a prefix of it missing only due records not yet committed; every
    /// acknowledged record is in it exactly once; keys are consumed once; replaying it gives
    /// the stored snapshot; conservation (SPEC 11) and no negative bucket or lot in the
    /// snapshot. With `full`: every wallet is brought up to date first (read, then tick) and
    /// must equal the reference exactly, including the state a read shows.
    async fn check(&mut self, full: bool) -> Check {
        let now = self.clock.now();
        if full {
            self.stats.full_checks += 1;
        }
        for w in 0..self.wallets.len() {
            let id = self.wallets[w].id.clone();
            let j = &mut self.wallets[w].journal;
            let before = j.wallet.clone();
            guard(|| j.advance_to(now)).map_err(|p| {
                format!("the core panicked ({p}) advancing to {now} from {before:?}")
            })?;
            if full {
                self.catch_up(w).await?;
            }
            let m = &self.wallets[w];
            // One read of both: a commit still in flight (e.g. a crashed actor's, or due
            // records behind a refusal) may land at any moment.
            let (stored, ledger) = self
                .store
                .stored_with_ledger(&id)
                .ok_or("wallet vanished")?;
            let stored = stored.wallet;
            let want = &m.journal.entries;
            if let Some(i) = (0..ledger.len()).find(|&i| want.get(i) != Some(&ledger[i])) {
                return Err(format!(
                    "{id}: stored record {i} differs from the reference:\n  stored {:?}\n  want   {:?}",
                    ledger[i],
                    want.get(i)
                ));
            }
            if let Some(missing) = want[ledger.len()..].iter().find(|e| !e.fell_due()) {
                return Err(format!(
                    "{id}: a call's record is missing from the store: {missing:?}"
                ));
            }
            if full && ledger.len() != want.len() {
                return Err(format!(
                    "{id}: after catching up the store has {} records, the reference {}",
                    ledger.len(),
                    want.len()
                ));
            }
            for e in &m.acked {
                let n = ledger.iter().filter(|s| *s == e).count();
                if n != 1 {
                    return Err(format!(
                        "{id}: acknowledged record is in the store {n} times: {e:?}"
                    ));
                }
            }
            let mut keys = std::collections::HashSet::new();
            if let Some(k) = ledger
                .iter()
                .filter_map(Entry::idempotency_key)
                .find(|k| !keys.insert(*k))
            {
                return Err(format!("{id}: key {k} consumed twice"));
            }
            let mut replayed = replay(&ledger).map_err(|e| format!("{id}: replay: {e}"))?;
            replayed.now = stored.now;
            if replayed != stored {
                return Err(format!(
                    "{id}: replaying the ledger differs from the stored snapshot:\n  replay {replayed:?}\n  stored {stored:?}"
                ));
            }
            let f = ledger
                .iter()
                .map(Entry::flows)
                .fold(Flows::default(), |a, b| a + b);
            if f.held != stored.reserved()
                || f.granted - f.debited - f.expired - f.held != stored.spendable()
            {
                return Err(format!(
                    "{id}: conservation: ledger flows {f:?}, snapshot spendable {} reserved {}",
                    stored.spendable(),
                    stored.reserved()
                ));
            }
            if !stored.is_consistent() {
                return Err(format!(
                    "{id}: a bucket or lot is negative or does not add up: {stored:?}"
                ));
            }
            self.check_events(w, full).await?;
            let m = &self.wallets[w];
            if full {
                m.journal
                    .check_invariants()
                    .map_err(|e| format!("{id}: {e}"))?;
                let mut snapshot = stored;
                snapshot.now = m.journal.wallet.now;
                if snapshot != m.journal.wallet {
                    return Err(format!(
                        "{id}: stored snapshot differs from the reference:\n  stored {snapshot:?}\n  want   {:?}",
                        m.journal.wallet
                    ));
                }
            }
        }
        Ok(())
    }

    /// A watched wallet's subscriber gets one event per durable record, in seq order with no
    /// gap, each with the record's cause, instant and the balance right after it (SPEC 8). A
    /// subscription ends only when the actor stops (crash, giving up); the subscriber then
    /// subscribes again and starts from the new snapshot. After a full check every durable
    /// record has been delivered.
    async fn check_events(&mut self, w: usize, full: bool) -> Check {
        let id = self.wallets[w].id.clone();
        if !self.wallets[w].watched {
            return Ok(());
        }
        let mut fresh = false;
        if self.wallets[w].watch.is_none() {
            match self.dir.subscribe(&id).await {
                Ok(sub) => {
                    self.wallets[w].watch = Some(Watch {
                        events: sub.events,
                        last_seq: sub.snapshot.seq,
                    });
                    fresh = true;
                }
                Err(ExecError::Unavailable(_)) => return Ok(()),
                Err(e) => return Err(format!("{id}: subscribe: {e}")),
            }
        }
        let durable = self.store.ledger(&id).len() as u64 - 1;
        let watch = self.wallets[w].watch.as_mut().expect("subscribed");
        loop {
            use tokio::sync::broadcast::error::{RecvError, TryRecvError};
            let next = match watch.events.try_recv() {
                // A durable record without its event yet: either it is on its way, or the
                // actor that wrote it is stopping (it gave up before learning the commit
                // landed) and the subscription is about to close.
                Err(TryRecvError::Empty) if full && !fresh && watch.last_seq < durable => {
                    match tokio::time::timeout(EVENT_WAIT, watch.events.recv()).await {
                        Ok(Ok(ev)) => Ok(ev),
                        Ok(Err(RecvError::Closed)) => Err(TryRecvError::Closed),
                        Ok(Err(RecvError::Lagged(n))) => Err(TryRecvError::Lagged(n)),
                        Err(_) => {
                            return Err(format!(
                                "{id}: no event for durable record {} within {EVENT_WAIT:?} on a live subscription",
                                watch.last_seq + 1
                            ));
                        }
                    }
                }
                other => other,
            };
            match next {
                Ok(ev) => {
                    if ev.seq != watch.last_seq + 1 {
                        return Err(format!(
                            "{id}: event seq {} after {}: out of order or a gap",
                            ev.seq, watch.last_seq
                        ));
                    }
                    let record = self
                        .store
                        .records_after(&id, watch.last_seq, 1)
                        .await
                        .map_err(|e| e.to_string())?;
                    let Some(r) = record.first().filter(|r| r.entry.seq == ev.seq) else {
                        return Err(format!(
                            "{id}: event {} for a record not in the store",
                            ev.seq
                        ));
                    };
                    if ev.balance != r.balance
                        || ev.at != r.entry.at
                        || ev.kind != EventKind::Change(r.entry.cause())
                    {
                        return Err(format!(
                            "{id}: event {} differs from its record:\n  event {ev:?}\n  record {r:?}",
                            ev.seq
                        ));
                    }
                    watch.last_seq = ev.seq;
                    self.stats.events += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => {
                    self.stats.resubscriptions += 1;
                    self.wallets[w].watch = None;
                    // Closed: its actor stopped (for a reason this history did not see).
                    self.wallets[w].forgetful = true;
                    return Ok(());
                }
            }
        }
        let delivered = watch.last_seq;
        if full && !fresh && delivered != durable {
            return Err(format!(
                "{id}: the subscriber has events up to seq {delivered}, the store up to {durable}"
            ));
        }
        Ok(())
    }

    /// The balance a read shows now, retrying UNAVAILABLE.
    async fn read_balance(&self, id: &WalletId) -> Result<credits_core::Balance, String> {
        for _ in 0..MAX_RETRIES {
            match self.dir.read(id).await {
                Ok(w) => return Ok(w.balance()),
                Err(ExecError::Unavailable(_)) => continue,
                Err(e) => return Err(format!("{id}: read: {e}")),
            }
        }
        Err(format!("{id}: reads still UNAVAILABLE"))
    }

    /// Reads the wallet (activating it; the read must show the reference's state) and ticks
    /// until its due records are durable.
    async fn catch_up(&mut self, w: usize) -> Check {
        let id = self.wallets[w].id.clone();
        for _ in 0..MAX_CATCH_UP {
            match self.dir.read(&id).await {
                Ok(mut read) => {
                    let want = &self.wallets[w].journal.wallet;
                    read.now = want.now;
                    if &read != want {
                        return Err(format!(
                            "{id}: a read differs from the reference:\n  read {read:?}\n  want {want:?}"
                        ));
                    }
                }
                Err(ExecError::Unavailable(_)) => continue,
                Err(e) => return Err(format!("{id}: read: {e}")),
            }
            self.dir.tick_all().await;
            if self.store.ledger(&id).len() >= self.wallets[w].journal.entries.len() {
                return Ok(());
            }
        }
        Err(format!(
            "{id}: due records still not durable after {MAX_CATCH_UP} rounds"
        ))
    }
}

/// Runs core code, turning a panic (a debug assertion of the wallet's invariants) into an
/// error so that the seed is reported with its history.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into())
    })
}
