use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use credits_actors::{ActorConfig, Applied, Clock, Directory, ExecError, Ledger, MemoryStore};
use credits_core::testing::catalogue;
use credits_core::{
    Credits, Entry, GrantId, GrantKind, GrantOp, NewWallet, Op, PlanId, ReservationId, SettleOp,
    Tokens, UsageId, UsageOp, WalletId,
};
use credits_pricing::PricingRegistry;

pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub fn cr(s: &str) -> Credits {
    Credits::parse(s).unwrap()
}

pub struct App {
    pub dir: Directory,
    pub store: Arc<MemoryStore>,
}

pub fn app_at(start: &str) -> App {
    app_with(Clock::manual(at(start)), ActorConfig::default())
}

/// An app on the manual clock at 2027-03-10T12:00Z whose idle actors stop after
/// `idle_after`.
pub fn app_idle_after(idle_after: Duration) -> App {
    let config = ActorConfig {
        idle_after,
        ..Default::default()
    };
    app_with(Clock::manual(at("2027-03-10T12:00:00Z")), config)
}

pub fn app_with(clock: Clock, config: ActorConfig) -> App {
    let store = Arc::new(MemoryStore::new());
    let dir = Directory::new(store.clone(), clock, catalogue(), config);
    App { dir, store }
}

impl App {
    pub async fn wallet(&self, id: &str, plan: &str, zone: &str) -> WalletId {
        let new = NewWallet {
            id: WalletId::from(id),
            owner_id: "owner".into(),
            pool: false,
            timezone: zone.parse().unwrap(),
            plan_id: PlanId::from(plan),
            billing_anchor: None,
        };
        self.dir.create(new).await.unwrap().id
    }

    pub fn ledger(&self, id: &WalletId) -> Vec<Entry> {
        self.store.ledger(id)
    }

    /// Runs `op` on a task of its own, so the test can act while it waits.
    pub fn spawn_execute(
        &self,
        id: &WalletId,
        op: Op,
    ) -> tokio::task::JoinHandle<Result<Applied, ExecError>> {
        let (dir, id) = (self.dir.clone(), id.clone());
        tokio::spawn(async move { dir.execute(&id, op).await })
    }
}

/// The service facade on `dir` and `store` with no pricing plugins (`plugins` is an empty
/// directory): every model is unknown.
pub fn ledger_without_plugins(
    dir: &Directory,
    store: &credits_store::Store,
    plugins: &std::path::Path,
) -> Ledger {
    let (pricing, _) = PricingRegistry::open(plugins, plugins.join("cache")).unwrap();
    Ledger::new(dir.clone(), store.clone(), Arc::new(pricing))
}

pub fn usage(key: &str, cost: &str) -> Op {
    Op::Usage(UsageOp {
        id: UsageId(format!("use_{key}")),
        key: key.into(),
        thread_id: "thread".into(),
        model: "economy-model".into(),
        tier: "economy".into(),
        tokens: Tokens {
            input: 10,
            cached: 0,
            output: 10,
        },
        cost: cr(cost),
        priced_by: "economy@1.0.0".into(),
        member: None,
    })
}

/// The settlement of `reservation` at `cost` (an economy model, one token each way).
pub fn settle(reservation: &str, cost: &str) -> SettleOp {
    SettleOp {
        reservation_id: ReservationId::from(reservation),
        usage_id: UsageId(format!("use_{reservation}")),
        thread_id: "thread".into(),
        model: "economy-model".into(),
        tier: "economy".into(),
        tokens: Tokens {
            input: 1,
            cached: 0,
            output: 1,
        },
        cost: cr(cost),
        priced_by: "economy@1.0.0".into(),
    }
}

/// A purchase of the 100-credit bundle, as `purchaseBundle` sends it (no idempotency key:
/// the payment reference is what makes it unique).
pub fn purchase(id: &str, reference: &str) -> Op {
    credits_core::testing::purchase(id, "credits-100", reference, cr("100"))
}

pub fn grant(id: &str, amount: &str, expires_at: Option<&str>) -> Op {
    Op::Grant(GrantOp {
        id: GrantId::from(id),
        key: Some(format!("g-{id}")),
        amount: cr(amount),
        kind: GrantKind::Promotion,
        reason: Some("test".into()),
        expires_at: expires_at.map(at),
        origin: None,
    })
}

/// A review's COMPENSATION lot, as an approval sends it (no key: the review makes it one).
pub fn compensation(id: &str, review: &str, amount: &str) -> Op {
    Op::Grant(GrantOp {
        id: GrantId::from(id),
        key: None,
        amount: cr(amount),
        kind: GrantKind::Compensation,
        reason: Some("review".into()),
        expires_at: None,
        origin: Some(credits_core::LotOrigin::Review {
            review_id: review.into(),
        }),
    })
}

/// On wallet `id` (a `pro` wallet, 520 credits): spends everything, then for a review's
/// compensation and a payment's lot in turn grants it, spends it all, and sends the same
/// grant again. Returns what each second grant got.
pub async fn grant_spend_and_grant_again(
    dir: &Directory,
    id: &WalletId,
) -> Vec<Result<Applied, ExecError>> {
    dir.execute(id, usage("all", "520")).await.unwrap();
    let mut again = Vec::new();
    for (i, op) in [
        compensation("grt_r", "rev_1", "1"),
        purchase("grt_p", "pay-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let amount = match &op {
            Op::Grant(g) => g.amount.to_string(),
            _ => unreachable!(),
        };
        dir.execute(id, op.clone()).await.unwrap();
        dir.execute(id, usage(&format!("spend-{i}"), &amount))
            .await
            .unwrap();
        again.push(dir.execute(id, op).await);
    }
    again
}

/// How many GRANT records `ledger` holds.
pub fn grants(ledger: &[Entry]) -> usize {
    ledger.iter().filter(|e| e.grant().is_some()).count()
}

/// The calls `dir`'s wallet actors have taken in so far.
pub fn calls(dir: &Directory) -> u64 {
    dir.metrics()
        .calls
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits until `dir`'s wallet actors have taken in `n` calls in all: a call spawned after
/// [`calls`] read `n - 1` has reached its actor (and is decided, parked or waiting there),
/// not merely been spawned (found by review: a pause stood for this, which a loaded
/// machine could outlast, and the test then passed without its race).
pub async fn reached(dir: &Directory, n: u64) -> bool {
    eventually(|| calls(dir) >= n).await
}

/// Waits until a condition holds, for background effects like passivation: up to 10 s,
/// which only a failing test waits out (a loaded CI machine can take seconds).
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
