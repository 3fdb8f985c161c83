//! Debits through wallet actors and the SQL store against the naive baseline B0 (one
//! transaction per debit that reads and rewrites the wallet's balance row), measured in the
//! same run on the same database with the same durability; then memory per active wallet
//! actor and per subscriber. Figures go to docs/BENCHMARKS.md ("Actors").
//!
//! `cargo bench -p credits-actors --bench debits` (SQLite FULL and NORMAL; PostgreSQL too
//! when `CREDITS_TEST_DATABASE_URL` is set). `BENCH_WALLETS` (10,000), `BENCH_CALLERS` (64)
//! and `BENCH_SECS` (5, per run) change the load. `BENCH_ONLY=memory` measures memory
//! alone, with `BENCH_REGISTERED` wallets registered (default: `BENCH_WALLETS`) of which
//! `BENCH_WALLETS` are active.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use credits_actors::{
    ActorConfig, Batch, Clock, CommitError, Directory, Loaded, MemoryStore, Record, SqlWallets,
    StoreError, WalletStore,
};
use credits_core::testing::catalogue;
use credits_core::{
    Credits, Entry, Member, NewWallet, OnceFor, Op, PlanId, Tokens, UsageId, UsageOp, Wallet,
    WalletId,
};
use credits_store::{SqliteSync, Store};
use dashmap::DashMap;
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

/// Counts live heap bytes, for the memory figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Load {
    wallets: usize,
    callers: usize,
    run_for: Duration,
}

/// What one run measured.
struct Rate {
    debits: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.debits as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Runs `callers` loops of `debit(caller, n)` for `run_for`; counts successes.
async fn drive<F, Fut>(callers: usize, run_for: Duration, debit: F) -> Rate
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let debit = Arc::new(debit);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let debit = debit.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if debit(c, n).await {
                        latencies.push(t.elapsed());
                    }
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Rate {
        debits: all.len() as u64,
        elapsed,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    }
}

/// B0: one transaction per debit that reads the wallet's balance row and rewrites it.
async fn naive(store: &Store, load: &Load) -> Rate {
    let db = store.connection().clone();
    let backend = db.get_database_backend();
    db.execute_unprepared("DROP TABLE IF EXISTS bench_b0")
        .await
        .unwrap();
    db.execute_unprepared("CREATE TABLE bench_b0 (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)")
        .await
        .unwrap();
    for chunk in (0..load.wallets).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("('w{i}', 1000000000)"))
            .collect();
        db.execute_unprepared(&format!("INSERT INTO bench_b0 VALUES {}", values.join(",")))
            .await
            .unwrap();
    }
    let (select, update) = match backend {
        sea_orm::DbBackend::Postgres => (
            "SELECT balance FROM bench_b0 WHERE id = $1 FOR UPDATE",
            "UPDATE bench_b0 SET balance = $1 WHERE id = $2",
        ),
        _ => (
            "SELECT balance FROM bench_b0 WHERE id = ?",
            "UPDATE bench_b0 SET balance = ? WHERE id = ?",
        ),
    };
    let wallets = load.wallets;
    let callers = load.callers;
    drive(load.callers, load.run_for, move |c, n| {
        let db = db.clone();
        async move {
            let id = format!("w{}", (c + n as usize * callers) % wallets);
            let txn = db
                .begin_with_options(sea_orm::TransactionOptions {
                    isolation_level: None,
                    access_mode: None,
                    sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                })
                .await
                .unwrap();
            let row = txn
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    select,
                    [id.clone().into()],
                ))
                .await
                .unwrap()
                .unwrap();
            let balance: i64 = row.try_get_by_index(0).unwrap();
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                update,
                [(balance - 1_000).into(), id.into()],
            ))
            .await
            .unwrap();
            txn.commit().await.is_ok()
        }
    })
    .await
}

/// Remembers when each record's commit returned, for the commit → subscriber latency.
struct Timed {
    inner: Arc<dyn WalletStore>,
    committed: DashMap<(WalletId, u64), Instant>,
}

impl Timed {
    fn stamp(&self, batch: &Batch) {
        let now = Instant::now();
        for r in &batch.records {
            self.committed
                .insert((batch.wallet_id.clone(), r.entry.seq), now);
        }
    }
}

#[async_trait::async_trait]
impl WalletStore for Timed {
    async fn create(&self, wallet: &Wallet, record: &Record) -> Result<(), CommitError> {
        self.inner.create(wallet, record).await
    }
    async fn load(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        self.inner.load(id).await
    }
    async fn load_fenced(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        self.inner.load_fenced(id).await
    }
    fn several_nodes(&self) -> bool {
        self.inner.several_nodes()
    }
    async fn plans(&self) -> Result<Option<Vec<credits_core::Plan>>, StoreError> {
        self.inner.plans().await
    }
    async fn commit(&self, batch: &Batch) -> Result<(), CommitError> {
        let r = self.inner.commit(batch).await;
        if r.is_ok() {
            self.stamp(batch);
        }
        r
    }
    async fn commit_many(
        &self,
        batches: &[Batch],
    ) -> Result<Vec<Result<(), CommitError>>, StoreError> {
        let results = self.inner.commit_many(batches).await?;
        for (b, r) in batches.iter().zip(&results) {
            if r.is_ok() {
                self.stamp(b);
            }
        }
        Ok(results)
    }
    async fn records_after(
        &self,
        id: &WalletId,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.records_after(id, seq, limit).await
    }
    async fn find_key(&self, id: &WalletId, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.find_key(id, key).await
    }
    async fn lot_holder(&self, once: OnceFor<'_>) -> Result<Option<WalletId>, StoreError> {
        self.inner.lot_holder(once).await
    }
    async fn due(
        &self,
        before: chrono::DateTime<Utc>,
        after: Option<&credits_actors::Due>,
        limit: usize,
    ) -> Result<Vec<credits_actors::Due>, StoreError> {
        self.inner.due(before, after, limit).await
    }
}

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 10, 12, 0, 0).unwrap()
}

fn new_wallet(id: String, pool: bool) -> NewWallet {
    NewWallet {
        id: WalletId(id),
        owner_id: "bench".into(),
        pool,
        timezone: "UTC".parse().unwrap(),
        plan_id: PlanId::from("pro"),
        billing_anchor: None,
    }
}

static USAGE_IDS: AtomicU64 = AtomicU64::new(0);

fn debit(member: Option<usize>) -> Op {
    let n = USAGE_IDS.fetch_add(1, Ordering::Relaxed);
    Op::Usage(UsageOp {
        id: UsageId(format!("use_bench_{n}")),
        key: format!("k{n}"),
        thread_id: "thread".into(),
        model: "economy-model".into(),
        tier: "economy".into(),
        tokens: Tokens {
            input: 10,
            cached: 0,
            output: 10,
        },
        cost: Credits::from_micro(1_000),
        priced_by: "bench@1".into(),
        member: member.map(|m| Member {
            id: format!("m{m}"),
            daily_limit: None,
            period_limit: None,
            limits_version: 0,
        }),
    })
}

async fn create_many(dir: &Directory, ids: &[WalletId]) {
    let chunks: Vec<Vec<WalletId>> = ids
        .chunks(ids.len().div_ceil(32))
        .map(<[_]>::to_vec)
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let dir = dir.clone();
            tokio::spawn(async move {
                for id in chunk {
                    dir.create(new_wallet(id.0, false)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

struct ActorRuns {
    spread: Rate,
    hot: Rate,
    hot_stalled: Rate,
    delivery: (Duration, Duration, usize),
    batches_per_txn: f64,
}

async fn actor_runs(store: Store, load: &Load, writers: usize) -> ActorRuns {
    let timed = Arc::new(Timed {
        inner: Arc::new(SqlWallets::new(store)),
        committed: DashMap::new(),
    });
    let dir = Directory::new(
        timed.clone(),
        Clock::manual(start()),
        catalogue(),
        ActorConfig {
            writers,
            ..ActorConfig::default()
        },
    );
    let ids: Vec<WalletId> = (0..load.wallets)
        .map(|i| WalletId(format!("wal_bench_{i}")))
        .collect();
    create_many(&dir, &ids).await;
    // Subscribers on the first 1,000 wallets measure commit → subscriber latency.
    let watched = ids.len().min(1_000);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for id in &ids[..watched] {
        let mut sub = dir.subscribe(id).await.unwrap();
        let timed = timed.clone();
        let latencies = latencies.clone();
        watchers.push(tokio::spawn(async move {
            while let Ok(event) = sub.events.recv().await {
                let received = Instant::now();
                if let Some(at) = timed.committed.get(&(event.wallet_id.clone(), event.seq)) {
                    let lag = received.saturating_duration_since(*at);
                    latencies.lock().unwrap().push(lag);
                }
            }
        }));
    }
    let ids = Arc::new(ids);
    let m = dir.metrics();
    let (g0, b0) = (
        m.groups.load(Ordering::Relaxed),
        m.grouped_batches.load(Ordering::Relaxed),
    );
    let callers = load.callers;
    let spread = {
        let dir = dir.clone();
        let ids = ids.clone();
        drive(load.callers, load.run_for, move |c, n| {
            let dir = dir.clone();
            let id = ids[(c + n as usize * callers) % ids.len()].clone();
            async move { dir.execute(&id, debit(None)).await.is_ok() }
        })
        .await
    };
    let (g1, b1) = (
        m.groups.load(Ordering::Relaxed),
        m.grouped_batches.load(Ordering::Relaxed),
    );
    for w in &watchers {
        w.abort();
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let delivery = (percentile(&lat, 0.5), percentile(&lat, 0.99), lat.len());

    let pool = WalletId("wal_bench_pool".into());
    dir.create(new_wallet(pool.0.clone(), true)).await.unwrap();
    let hot_run = |dir: Directory| {
        let pool = pool.clone();
        drive(load.callers, load.run_for, move |c, _| {
            let dir = dir.clone();
            let pool = pool.clone();
            async move { dir.execute(&pool, debit(Some(c))).await.is_ok() }
        })
    };
    let hot = hot_run(dir.clone()).await;
    // The same with 1,000 subscribers that never read.
    let mut stalled = Vec::new();
    for _ in 0..1_000 {
        stalled.push(dir.subscribe(&pool).await.unwrap());
    }
    let hot_stalled = hot_run(dir.clone()).await;
    drop(stalled);
    dir.shutdown().await;
    ActorRuns {
        spread,
        hot,
        hot_stalled,
        delivery,
        batches_per_txn: (b1 - b0) as f64 / (g1 - g0).max(1) as f64,
    }
}

fn row(name: &str, r: &Rate, base: f64) {
    println!(
        "| {name} | {:.0} | {:.2}× | {:.2} ms | {:.2} ms |",
        r.per_sec(),
        r.per_sec() / base,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3
    );
}

async fn database(name: &str, url: &str, sync: SqliteSync, load: &Load, writers: usize) -> f64 {
    let store = Store::connect_with(url, sync).await.unwrap();
    store.migrate().await.unwrap();
    let b0 = naive(&store, load).await;
    let runs = actor_runs(store, load, writers).await;
    let base = b0.per_sec();
    println!(
        "\n{name}: {} wallets, {} callers, {:?} per run",
        load.wallets, load.callers, load.run_for
    );
    println!("| run | debits/s | × B0 | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: |");
    row("B0: 1 txn per debit, read + rewrite the row", &b0, base);
    row("actors, spread over the wallets", &runs.spread, base);
    row(
        "actors, one hot team pool (a member per caller)",
        &runs.hot,
        base,
    );
    row(
        "… with 1,000 subscribers that never read",
        &runs.hot_stalled,
        base,
    );
    println!(
        "hot / spread: {:.2}; wallet batches per transaction (spread): {:.1}; commit → subscriber: p50 {:.2} ms, p99 {:.2} ms over {} events",
        runs.hot.per_sec() / runs.spread.per_sec(),
        runs.batches_per_txn,
        runs.delivery.0.as_secs_f64() * 1e3,
        runs.delivery.1.as_secs_f64() * 1e3,
        runs.delivery.2
    );
    runs.spread.per_sec()
}

/// Heap bytes per active wallet actor and per subscriber, on the in-memory store (so the
/// figure is the actor system's own), and what is left once the wallets passivate.
async fn memory(wallets: usize, registered_wallets: usize) {
    let store = Arc::new(MemoryStore::new());
    let dir = Directory::new(
        store.clone(),
        Clock::manual(start()),
        catalogue(),
        ActorConfig {
            idle_after: Duration::from_millis(300),
            ..ActorConfig::default()
        },
    );
    let all: Vec<WalletId> = (0..registered_wallets.max(wallets))
        .map(|i| WalletId(format!("wal_mem_{i}")))
        .collect();
    create_many(&dir, &all).await;
    let ids = &all[..wallets];
    // What one copy of a wallet's state costs (an actor holds two: durable and speculative).
    let one = dir.read(&ids[0]).await.unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    let copies: Vec<Wallet> = (0..wallets).map(|_| one.clone()).collect();
    let state = (LIVE.load(Ordering::Relaxed) - before) / wallets;
    drop(copies);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let registered = LIVE.load(Ordering::Relaxed);
    for id in ids {
        dir.read(id).await.unwrap();
    }
    let active = LIVE.load(Ordering::Relaxed);
    let mut subs = Vec::new();
    for id in ids {
        subs.push(dir.subscribe(id).await.unwrap());
    }
    let subscribed = LIVE.load(Ordering::Relaxed);
    drop(subs);
    // Idle actors passivate after 300 ms; give 10,000 of them time to stop.
    for _ in 0..300 {
        if dir.active_wallets() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let passivated = LIVE.load(Ordering::Relaxed);
    println!(
        "\nmemory ({} registered wallets, {wallets} active, in-memory store)",
        all.len()
    );
    println!(
        "actor system for all of them: {} bytes while {wallets} are active",
        active - registered
    );
    println!("one copy of a wallet's state: {state} bytes");
    println!(
        "per active wallet actor: {} bytes; per subscriber: {} bytes; active after passivation: {}; left per wallet after passivation: {} bytes",
        (active - registered) / wallets,
        (subscribed - active) / wallets,
        dir.active_wallets(),
        passivated.saturating_sub(registered) / wallets
    );
}

fn main() {
    if std::env::var("BENCH_ONLY").as_deref() == Ok("memory") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let wallets = env("BENCH_WALLETS", 10_000);
        rt.block_on(memory(wallets, env("BENCH_REGISTERED", wallets)));
        return;
    }
    let load = Load {
        wallets: env("BENCH_WALLETS", 10_000),
        callers: env("BENCH_CALLERS", 64),
        run_for: Duration::from_secs(env("BENCH_SECS", 5) as u64),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let full = format!("sqlite://{}?mode=rwc", tmp.path().join("full.db").display());
        let normal = format!(
            "sqlite://{}?mode=rwc",
            tmp.path().join("normal.db").display()
        );
        let f = database(
            "SQLite, synchronous=FULL",
            &full,
            SqliteSync::Full,
            &load,
            1,
        )
        .await;
        let n = database(
            "SQLite, synchronous=NORMAL",
            &normal,
            SqliteSync::Normal,
            &load,
            1,
        )
        .await;
        println!("\nSQLite NORMAL / FULL (spread, grouped): {:.2}", n / f);
        if let Ok(base) = std::env::var("CREDITS_TEST_DATABASE_URL") {
            let schema = format!("bench_{}", std::process::id());
            let admin = Store::connect(&base).await.unwrap();
            admin
                .connection()
                .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
            database("PostgreSQL", &url, SqliteSync::Full, &load, 4).await;
            admin
                .connection()
                .execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .unwrap();
        }
        memory(load.wallets, load.wallets).await;
    });
}
