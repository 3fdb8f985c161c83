//! A reference driver for one wallet (`Journal`: state, ledger, idempotency keys and finished
//! reservations, all in memory) and proptest strategies for random histories. The actors and
//! the store must behave like `Journal`; tests across the workspace use it as the oracle.
//! Test support only: compiled with the `testing` feature.

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use crate::amount::Credits;
use crate::calendar::BillingInterval;
use crate::ledger::{Entry, EntryKind, Flows, GrantKind, ReleaseReason, Tokens};
use crate::plan::{GrantId, Plan, PlanId, ReservationId, UsageId, WalletId};
use crate::wallet::{
    GrantOp, KeyCheck, LotOrigin, Member, NewWallet, Op, OpError, ReserveOp, SettleOp, UsageOp,
    Wallet, check_key,
};

/// How an accepted call was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied(Entry),
    /// An idempotent retry: the original record, nothing new.
    Replayed(Entry),
}

/// One wallet with its whole ledger in memory.
#[derive(Clone, Debug)]
pub struct Journal {
    pub wallet: Wallet,
    pub entries: Vec<Entry>,
    pub plans: Vec<Plan>,
    keys: HashMap<String, usize>,
    finished: HashMap<ReservationId, usize>,
    /// Every call run on it, in order (what a [`Step::Retry`] sends again).
    pub sent: Vec<Op>,
}

impl Journal {
    pub fn create(
        new: NewWallet,
        plans: Vec<Plan>,
        now: DateTime<Utc>,
    ) -> Result<Journal, OpError> {
        let (wallet, entry) = Wallet::create(new, &plans, now)?;
        Ok(Journal {
            wallet,
            entries: vec![entry],
            plans,
            keys: HashMap::new(),
            finished: HashMap::new(),
            sent: Vec::new(),
        })
    }

    pub fn advance_to(&mut self, t: DateTime<Utc>) -> Vec<Entry> {
        let due = self.wallet.advance_to(t, &self.plans);
        for e in &due {
            self.record(e.clone());
        }
        due
    }

    /// [`Journal::advance_to`] in steps of at most `max` records each (`max` ≥ 1).
    pub fn advance_in_steps(&mut self, t: DateTime<Utc>, max: usize) {
        loop {
            for (e, _) in self.wallet.advance_at_most(t, &self.plans, max) {
                self.record(e);
            }
            if !self.wallet.behind(t) {
                return;
            }
        }
    }

    fn record(&mut self, entry: Entry) {
        if let Some(key) = entry.idempotency_key() {
            self.keys.insert(key.to_owned(), self.entries.len());
        }
        match &entry.kind {
            EntryKind::Settled { usage, .. } => {
                let id = usage
                    .reservation_id
                    .clone()
                    .expect("settle names its reservation");
                self.finished.insert(id, self.entries.len());
            }
            EntryKind::Released { reservation_id, .. } => {
                self.finished
                    .insert(reservation_id.clone(), self.entries.len());
            }
            _ => {}
        }
        self.entries.push(entry);
    }

    /// Runs a call at `t` the way the service does: time first, then input checks,
    /// idempotency, and the operation.
    pub fn run(&mut self, t: DateTime<Utc>, op: &Op) -> Result<Outcome, OpError> {
        self.sent.push(op.clone());
        self.advance_to(t);
        self.wallet.validate(op)?;
        if let Some(key) = op.key() {
            let recorded = self.keys.get(key).map(|&i| &self.entries[i]);
            match check_key(recorded, op.request().as_ref()) {
                KeyCheck::Fresh => {}
                KeyCheck::Replay(e) => return Ok(Outcome::Replayed(e.clone())),
                KeyCheck::Conflict => return Err(OpError::IdempotencyConflict),
            }
        }
        let reservation = match op {
            Op::Settle(s) => Some(&s.reservation_id),
            Op::Release(id) => Some(id),
            _ => None,
        };
        if let Some(id) = reservation.filter(|id| self.wallet.reservation(id).is_none()) {
            let finished = self
                .finished
                .get(id)
                .map(|&i| &self.entries[i])
                .ok_or(OpError::NotFound("reservation"))?;
            return match (&finished.kind, op) {
                (EntryKind::Settled { .. }, Op::Settle(_)) => {
                    match check_key(Some(finished), op.request().as_ref()) {
                        KeyCheck::Replay(e) => Ok(Outcome::Replayed(e.clone())),
                        _ => Err(OpError::IdempotencyConflict),
                    }
                }
                (
                    EntryKind::Released {
                        reason: ReleaseReason::Released,
                        ..
                    },
                    Op::Release(_),
                ) => Ok(Outcome::Replayed(finished.clone())),
                _ => Err(OpError::ReservationNotActive),
            };
        }
        let entry = self.wallet.execute(op, &self.plans)?;
        self.record(entry.clone());
        Ok(Outcome::Applied(entry))
    }

    /// Sum of every record's flows.
    pub fn flows(&self) -> Flows {
        self.entries
            .iter()
            .map(Entry::flows)
            .fold(Flows::default(), |a, b| a + b)
    }

    /// SPEC 11, checked against the ledger: conservation, no negative bucket or lot, and
    /// replay reproducing the state exactly. Returns what is wrong.
    pub fn check_invariants(&self) -> Result<(), String> {
        let f = self.flows();
        let w = &self.wallet;
        if f.held != w.reserved() {
            return Err(format!(
                "held by the ledger {} != reserved {}",
                f.held,
                w.reserved()
            ));
        }
        let spendable = f.granted - f.debited - f.expired - f.held;
        if spendable != w.spendable() {
            return Err(format!(
                "conservation: ledger says {spendable}, wallet has {}",
                w.spendable()
            ));
        }
        if !w.is_consistent() {
            return Err("a bucket or lot is negative or does not add up".into());
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.seq != i as u64 {
                return Err(format!("record {i} has seq {}", e.seq));
            }
        }
        let mut replayed = crate::ledger::replay(&self.entries).map_err(|e| e.to_string())?;
        // The wallet's clock moves without a record when nothing falls due; all else must match.
        replayed.now = w.now;
        if &replayed != w {
            return Err(format!("replay differs:\n{replayed:#?}\nvs\n{w:#?}"));
        }
        Ok(())
    }
}

/// The default catalogue's plans (SPEC 5), for tests.
/// A bundle purchase as `purchaseBundle` sends it: no idempotency key, the payment
/// reference is what makes it unique.
pub fn purchase(id: &str, bundle: &str, reference: &str, amount: Credits) -> Op {
    Op::Grant(GrantOp {
        id: GrantId::from(id),
        key: None,
        amount,
        kind: GrantKind::Purchase,
        reason: None,
        expires_at: None,
        origin: Some(LotOrigin::Bundle {
            bundle_id: bundle.into(),
            payment_reference: reference.into(),
        }),
    })
}

pub fn catalogue() -> Vec<Plan> {
    let plan = |id: &str, daily: i64, sub: i64, interval, tiers: &[&str]| Plan {
        id: PlanId::from(id),
        name: id.to_owned(),
        daily_credits: Credits::from_whole(daily).unwrap(),
        subscription_credits: Credits::from_whole(sub).unwrap(),
        interval,
        model_tiers: tiers.iter().map(|t| (*t).to_owned()).collect(),
        custom: false,
        retired: false,
        earlier: Vec::new(),
    };
    use BillingInterval::{Annual, Monthly};
    vec![
        plan("free", 5, 0, Monthly, &["economy"]),
        plan("pro", 20, 500, Monthly, &["economy", "standard"]),
        plan("pro-annual", 20, 6000, Annual, &["economy", "standard"]),
        plan(
            "max",
            50,
            2000,
            Monthly,
            &["economy", "standard", "premium"],
        ),
        plan(
            "team",
            0,
            10000,
            Monthly,
            &["economy", "standard", "premium"],
        ),
    ]
}

/// Zones with awkward rules: gaps at midnight, doubled midnights, half-hour offsets,
/// the date line, a 22-hour day.
pub const ZONES: &[&str] = &[
    "UTC",
    "America/Havana",
    "America/Santiago",
    "America/Scoresbysund",
    "Asia/Kolkata",
    "Asia/Tehran",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Australia/Lord_Howe",
    "Antarctica/Troll",
    "Europe/London",
    "America/New_York",
    "Asia/Tokyo",
];

fn zone() -> impl Strategy<Value = Tz> {
    proptest::sample::select(ZONES).prop_map(|z| z.parse::<Tz>().expect("known zone"))
}

/// The first instant of a generated history: somewhere in 2026–2028.
fn start() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..3 * 365 * 86_400)
        .prop_map(|s| Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(s))
}

/// How a generated wallet starts.
#[derive(Clone, Debug)]
pub struct Genesis {
    pub at: DateTime<Utc>,
    pub anchor_days_before: i64,
    pub zone: Tz,
    pub plan: usize,
    pub pool: bool,
}

impl Genesis {
    pub fn journal(&self) -> Journal {
        let plans = catalogue();
        let new = NewWallet {
            id: WalletId::from("wal_test"),
            owner_id: "owner".into(),
            pool: self.pool,
            timezone: self.zone,
            plan_id: plans[self.plan].id.clone(),
            billing_anchor: Some(self.at - Duration::days(self.anchor_days_before)),
        };
        Journal::create(new, plans, self.at).expect("valid genesis")
    }
}

pub fn genesis() -> impl Strategy<Value = Genesis> {
    (start(), 0i64..800, zone(), 0usize..5, any::<bool>()).prop_map(
        |(at, anchor_days_before, zone, plan, pool)| Genesis {
            at,
            anchor_days_before,
            zone,
            plan,
            pool,
        },
    )
}

/// One step of a generated history: a clock jump or a call. Ids and keys are small numbers
/// so that calls collide (replays, conflicts, settling a finished reservation).
#[derive(Clone, Debug)]
pub enum Step {
    Advance {
        seconds: i64,
    },
    Usage {
        key: u8,
        thread: u8,
        tier: u8,
        cost_micro: i64,
        member: u8,
        tokens: (u32, u32, u32),
    },
    Reserve {
        key: u8,
        amount_micro: i64,
        ttl: u32,
        member: u8,
    },
    Settle {
        reservation: u8,
        cost_micro: i64,
        tier: u8,
    },
    Release {
        reservation: u8,
    },
    Grant {
        key: u8,
        amount_micro: i64,
        kind: u8,
        expires_in: Option<i64>,
    },
    Purchase {
        amount_micro: i64,
    },
    ChangePlan {
        plan: u8,
    },
    SetTimezone {
        zone: u8,
    },
    /// An earlier call (not a purchase) sent again unchanged, `back` calls before the last
    /// (a client's retry, later in the history: after the wallet ran dry, a reset, a plan
    /// change).
    Retry {
        back: u8,
    },
}

pub fn step() -> impl Strategy<Value = Step> {
    let credits = |max: i64| 0i64..max * 1_000_000;
    prop_oneof![
        3 => prop_oneof![0i64..120, 0i64..7_200, 0i64..200_000, 0i64..5_000_000].prop_map(|seconds| Step::Advance { seconds }),
        4 => (any::<u8>(), 0u8..6, 0u8..3, credits(40), 0u8..4, (0u32..50_000, 0u32..50_000, 0u32..50_000))
            .prop_map(|(key, thread, tier, cost_micro, member, tokens)| Step::Usage { key: key % 40, thread, tier, cost_micro, member, tokens }),
        2 => (any::<u8>(), credits(60), prop_oneof![1u32..120, 1u32..3601, 0u32..4000], 0u8..4)
            .prop_map(|(key, amount_micro, ttl, member)| Step::Reserve { key: key % 40, amount_micro, ttl, member }),
        3 => (0u8..4, credits(80), 0u8..3).prop_map(|(reservation, cost_micro, tier)| Step::Settle { reservation, cost_micro, tier }),
        2 => (0u8..4).prop_map(|reservation| Step::Release { reservation }),
        2 => (any::<u8>(), credits(30), 0u8..4, proptest::option::of(-100i64..3_000_000))
            .prop_map(|(key, amount_micro, kind, expires_in)| Step::Grant { key: key % 40, amount_micro, kind, expires_in }),
        1 => credits(100).prop_map(|amount_micro| Step::Purchase { amount_micro }),
        1 => (0u8..5).prop_map(|plan| Step::ChangePlan { plan }),
        1 => (0u8..ZONES.len() as u8).prop_map(|zone| Step::SetTimezone { zone }),
        2 => any::<u8>().prop_map(|back| Step::Retry { back }),
    ]
}

/// One of the journal's reservations, the recent ones most often (any status), or an unknown id.
fn recent_reservation(j: &Journal, pick: u8) -> ReservationId {
    let ids: Vec<&ReservationId> = j
        .entries
        .iter()
        .rev()
        .filter_map(|e| match &e.kind {
            EntryKind::Reserved { reservation, .. } => Some(&reservation.id),
            _ => None,
        })
        .collect();
    match ids.get(usize::from(pick) % (ids.len() + 1)) {
        Some(id) => (*id).clone(),
        None => ReservationId("res_unknown".into()),
    }
}

const TIERS: [&str; 3] = ["economy", "standard", "premium"];

/// Members of a generated pool: one without limits, two with limits, one with a zero limit.
pub fn member(pool: bool, n: u8) -> Option<Member> {
    pool.then(|| {
        let limit = |c: i64| Some(Credits::from_micro(c * 1_000_000));
        match n % 4 {
            0 => Member {
                id: "m0".into(),
                daily_limit: None,
                period_limit: None,
                limits_version: 0,
            },
            1 => Member {
                id: "m1".into(),
                daily_limit: limit(30),
                period_limit: None,
                limits_version: 0,
            },
            2 => Member {
                id: "m2".into(),
                daily_limit: None,
                period_limit: limit(200),
                limits_version: 0,
            },
            _ => Member {
                id: "m3".into(),
                daily_limit: limit(0),
                period_limit: limit(0),
                limits_version: 0,
            },
        }
    })
}

impl Step {
    /// The call a step makes at the journal's current time, or `None` for a clock jump.
    /// `n` numbers the call, for fresh ids.
    pub fn op(&self, j: &Journal, n: usize) -> Option<Op> {
        let pool = j.wallet.pool;
        let tokens = |(i, c, o): (u32, u32, u32)| Tokens {
            input: u64::from(i.max(c)),
            cached: u64::from(c),
            output: u64::from(o),
        };
        Some(match *self {
            Step::Advance { .. } => return None,
            Step::Retry { back } => {
                // Not a purchase: its payment reference is made unique by the service in
                // front of the wallet (the store), which this reference does not model.
                let again: Vec<&Op> = j
                    .sent
                    .iter()
                    .filter(|op| !matches!(op, Op::Grant(g) if g.key.is_none()))
                    .collect();
                let last = again.len().checked_sub(1)?;
                return Some(again[last - usize::from(back) % (last + 1)].clone());
            }
            Step::Usage {
                key,
                thread,
                tier,
                cost_micro,
                member: m,
                tokens: t,
            } => Op::Usage(UsageOp {
                id: UsageId(format!("use_{n}")),
                key: format!("k{key}"),
                thread_id: format!("t{thread}"),
                model: format!("{}-model", TIERS[tier as usize]),
                tier: TIERS[tier as usize].into(),
                tokens: tokens(t),
                cost: Credits::from_micro(cost_micro),
                priced_by: format!("{}@1.0.0", TIERS[tier as usize]),
                member: member(pool, m),
            }),
            Step::Reserve {
                key,
                amount_micro,
                ttl,
                member: m,
            } => Op::Reserve(ReserveOp {
                id: ReservationId(format!("res_{n}")),
                key: format!("k{key}"),
                amount: Credits::from_micro(amount_micro),
                ttl_seconds: ttl,
                member: member(pool, m),
            }),
            Step::Settle {
                reservation,
                cost_micro,
                tier,
            } => Op::Settle(SettleOp {
                reservation_id: recent_reservation(j, reservation),
                usage_id: UsageId(format!("use_{n}")),
                thread_id: "t-settle".into(),
                model: format!("{}-model", TIERS[tier as usize]),
                tier: TIERS[tier as usize].into(),
                tokens: Tokens {
                    input: 100,
                    cached: 0,
                    output: 10,
                },
                cost: Credits::from_micro(cost_micro),
                priced_by: format!("{}@1.0.0", TIERS[tier as usize]),
            }),
            Step::Release { reservation } => Op::Release(recent_reservation(j, reservation)),
            Step::Grant {
                key,
                amount_micro,
                kind,
                expires_in,
            } => {
                let kind = [
                    GrantKind::Admin,
                    GrantKind::Promotion,
                    GrantKind::Community,
                    GrantKind::Compensation,
                ][kind as usize % 4];
                Op::Grant(GrantOp {
                    id: GrantId(format!("grt_{n}")),
                    key: Some(format!("k{key}")),
                    amount: Credits::from_micro(amount_micro),
                    kind,
                    reason: Some("test".into()),
                    expires_at: expires_in.map(|s| j.wallet.now + Duration::seconds(s)),
                    origin: None,
                })
            }
            Step::Purchase { amount_micro } => purchase(
                &format!("grt_{n}"),
                "credits-100",
                &format!("pay_{n}"),
                Credits::from_micro(amount_micro),
            ),
            Step::ChangePlan { plan } => {
                Op::ChangePlan(j.plans[plan as usize % j.plans.len()].id.clone())
            }
            Step::SetTimezone { zone } => Op::SetTimezone(
                ZONES[zone as usize % ZONES.len()]
                    .parse()
                    .expect("known zone"),
            ),
        })
    }
}
