//! Test databases: a fresh SQLite file per test, and a fresh PostgreSQL schema per test
//! when `CREDITS_TEST_DATABASE_URL` is set. `both!` runs one test body on each.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, TimeZone, Utc};
use credits_core::testing::{Journal, catalogue};
use credits_core::{
    Credits, Entry, GrantId, GrantKind, GrantOp, NewWallet as CoreNewWallet, Op, PlanId, Tokens,
    UsageId, UsageOp, Wallet, WalletId,
};
use credits_store::{Created, NewWallet, Store, WalletBatch};

pub const PG_ENV: &str = "CREDITS_TEST_DATABASE_URL";

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// Runs `test` on a migrated store in a fresh SQLite file, then deletes the file.
pub async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let path = std::env::temp_dir().join(format!("credits-store-{}.db", unique_suffix()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Store::connect(&url).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    let outcome = tokio::spawn(test(store.clone())).await;
    store.close().await.ok();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    finish(outcome);
}

/// Runs `test` on a migrated store in a fresh PostgreSQL schema, then drops the schema.
/// Without `CREDITS_TEST_DATABASE_URL` it does nothing (and says so).
pub async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let Ok(base) = std::env::var(PG_ENV) else {
        eprintln!("{PG_ENV} not set: PostgreSQL run skipped");
        return;
    };
    let schema = format!("t_{}", unique_suffix());
    let admin = Store::connect(&base).await.expect("connect postgres");
    admin
        .connection()
        .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    // Every pooled connection starts with the test's schema first on its search path.
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = Store::connect(&url).await.expect("connect postgres schema");
    store.migrate().await.expect("migrate postgres");
    let outcome = tokio::spawn(test(store.clone())).await;
    store.close().await.ok();
    admin
        .connection()
        .execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop schema");
    admin.close().await.ok();
    finish(outcome);
}

use sea_orm::ConnectionTrait;

fn finish(outcome: Result<anyhow::Result<()>, tokio::task::JoinError>) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!("{err:?}"),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("{join}"),
    }
}

/// `both!(name)` turns `async fn name(store: Store) -> anyhow::Result<()>` into a module
/// with a `sqlite` and a `postgres` test.
#[macro_export]
macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::helpers::on_sqlite(super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::helpers::on_postgres(super::$name).await;
            }
        }
    )+};
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 30, 0).unwrap()
}

/// A wallet in the core and in the store, with the version of its durable state.
pub struct Live {
    pub journal: Journal,
    pub durable: Wallet,
    pub version: i64,
    /// Journal entries not yet committed start at this index.
    pub committed: usize,
}

impl Live {
    pub fn id(&self) -> &str {
        &self.journal.wallet.id.0
    }

    /// The batch of everything run since the last commit.
    pub fn batch(&self) -> WalletBatch {
        WalletBatch::from_core(
            &self.durable,
            self.version,
            &self.journal.entries[self.committed..],
            &self.journal.wallet,
        )
        .expect("batch from core")
    }

    /// Commits everything run since the last commit.
    pub async fn commit(&mut self, store: &Store) -> anyhow::Result<()> {
        let batch = self.batch();
        self.version = store.commit(&batch).await?;
        self.durable = self.journal.wallet.clone();
        self.committed = self.journal.entries.len();
        Ok(())
    }

    pub fn run(&mut self, t: DateTime<Utc>, op: &Op) -> Entry {
        match self.journal.run(t, op).expect("operation accepted") {
            credits_core::testing::Outcome::Applied(e) => e,
            other => panic!("not applied: {other:?}"),
        }
    }

    /// A debit of `micro` µcr on `thread` with `model`, key `key`.
    pub fn usage(
        &mut self,
        t: DateTime<Utc>,
        key: &str,
        thread: &str,
        model: &str,
        micro: i64,
    ) -> Entry {
        self.usage_by(None, t, key, thread, model, micro)
    }

    /// [`Live::usage`] by a pool member (on a wallet made by [`create_pool`]).
    pub fn usage_by(
        &mut self,
        member: Option<&str>,
        t: DateTime<Utc>,
        key: &str,
        thread: &str,
        model: &str,
        micro: i64,
    ) -> Entry {
        let op = Op::Usage(UsageOp {
            id: UsageId(format!("use_{}_{key}", self.id())),
            key: key.to_owned(),
            thread_id: thread.to_owned(),
            model: model.to_owned(),
            tier: "economy".to_owned(),
            tokens: Tokens {
                input: 1000,
                cached: 100,
                output: 50,
            },
            cost: Credits::from_micro(micro),
            priced_by: "economy@1.0.0".to_owned(),
            member: member.map(|id| credits_core::Member {
                id: id.to_owned(),
                daily_limit: None,
                period_limit: None,
                limits_version: 0,
            }),
        });
        self.run(t, &op)
    }

    pub fn grant(&mut self, t: DateTime<Utc>, key: &str, micro: i64) -> Entry {
        let op = Op::Grant(GrantOp {
            id: GrantId(format!("grt_{}_{key}", self.id())),
            key: Some(key.to_owned()),
            amount: Credits::from_micro(micro),
            kind: GrantKind::Admin,
            reason: Some("test".to_owned()),
            expires_at: None,
            origin: None,
        });
        self.run(t, &op)
    }
}

/// Creates wallet `id` on `plan` at `at` in the core and the store.
pub async fn create(
    store: &Store,
    id: &str,
    plan: &str,
    at: DateTime<Utc>,
) -> anyhow::Result<Live> {
    create_wallet(store, id, plan, at, false).await
}

/// [`create`] for a team pool's wallet.
pub async fn create_pool(
    store: &Store,
    id: &str,
    plan: &str,
    at: DateTime<Utc>,
) -> anyhow::Result<Live> {
    create_wallet(store, id, plan, at, true).await
}

async fn create_wallet(
    store: &Store,
    id: &str,
    plan: &str,
    at: DateTime<Utc>,
    pool: bool,
) -> anyhow::Result<Live> {
    let new = CoreNewWallet {
        id: WalletId::from(id),
        owner_id: format!("owner_{id}"),
        pool,
        timezone: "Europe/Paris".parse().unwrap(),
        plan_id: PlanId::from(plan),
        billing_anchor: Some(at - Duration::days(3)),
    };
    let journal = Journal::create(new, catalogue(), at).expect("create wallet");
    let row = NewWallet::from_core(&journal.wallet, &journal.entries[0], None, None)?;
    assert_eq!(store.create_wallet(&row).await?, Created::New);
    Ok(Live {
        durable: journal.wallet.clone(),
        committed: journal.entries.len(),
        journal,
        version: 0,
    })
}
