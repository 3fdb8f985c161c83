//! Store commit throughput: batches of 1, 8 and 64 debits for one wallet (`commit`) and
//! across many wallets (`commit_many`, one savepoint per wallet), against a naive
//! baseline measured in the same run: one transaction per debit that reads and rewrites
//! a balance row. SQLite always; PostgreSQL when `CREDITS_TEST_DATABASE_URL` is set.
//!
//! `cargo bench -p credits-store --bench commit`

use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, TimeZone, Utc};
use credits_core::testing::{Journal, catalogue};
use credits_core::{
    Credits, NewWallet as CoreNewWallet, Op, PlanId, Tokens, UsageId, UsageOp, WalletId,
};
use credits_store::{NewWallet, Store, WalletBatch};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

/// Debits committed per measurement.
const DEBITS: usize = 512;
/// Wallets in the many-wallet runs (each gets DEBITS / WALLETS debits).
const WALLETS: usize = 64;
const BATCH_SIZES: [usize; 3] = [1, 8, 64];

fn journal(id: &str) -> Journal {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let new = CoreNewWallet {
        id: WalletId::from(id),
        owner_id: "bench".into(),
        pool: false,
        timezone: "UTC".parse().unwrap(),
        plan_id: PlanId::from("team"),
        billing_anchor: Some(at),
    };
    Journal::create(new, catalogue(), at).unwrap()
}

fn debit(j: &mut Journal, n: usize) {
    let at = j.wallet.now + Duration::milliseconds(10);
    let op = Op::Usage(UsageOp {
        id: UsageId(format!("use_{}_{n}", j.wallet.id.0)),
        key: format!("k{n}"),
        thread_id: format!("t{}", n % 7),
        model: "m".into(),
        tier: "economy".into(),
        tokens: Tokens {
            input: 1000,
            cached: 0,
            output: 100,
        },
        cost: Credits::from_micro(1_000),
        priced_by: "economy@1.0.0".into(),
        member: None,
    });
    j.run(at, &op).expect("debit accepted");
}

/// Creates `id` in the store and pre-builds `rounds` batches of `per_batch` debits each,
/// on consecutive versions, so only the commits are timed.
async fn prepare(store: &Store, id: &str, rounds: usize, per_batch: usize) -> Vec<WalletBatch> {
    let mut j = journal(id);
    store
        .create_wallet(&NewWallet::from_core(&j.wallet, &j.entries[0], None, None).unwrap())
        .await
        .unwrap();
    let mut batches = Vec::with_capacity(rounds);
    let mut durable = j.wallet.clone();
    for round in 0..rounds {
        let from = j.entries.len();
        for i in 0..per_batch {
            debit(&mut j, round * per_batch + i);
        }
        batches.push(
            WalletBatch::from_core(&durable, round as i64, &j.entries[from..], &j.wallet).unwrap(),
        );
        durable = j.wallet.clone();
    }
    batches
}

fn rate(debits: usize, elapsed: StdDuration) -> f64 {
    debits as f64 / elapsed.as_secs_f64()
}

async fn naive(store: &Store) -> f64 {
    let db = store.connection();
    let backend = db.get_database_backend();
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS bench_naive (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
    )
    .await
    .unwrap();
    db.execute_unprepared("DELETE FROM bench_naive")
        .await
        .unwrap();
    db.execute_unprepared("INSERT INTO bench_naive VALUES ('w', 1000000000)")
        .await
        .unwrap();
    let (select, update) = match backend {
        sea_orm::DbBackend::Postgres => (
            "SELECT balance FROM bench_naive WHERE id = $1 FOR UPDATE",
            "UPDATE bench_naive SET balance = $1 WHERE id = $2",
        ),
        _ => (
            "SELECT balance FROM bench_naive WHERE id = ?",
            "UPDATE bench_naive SET balance = ? WHERE id = ?",
        ),
    };
    let start = Instant::now();
    for _ in 0..DEBITS {
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
                ["w".into()],
            ))
            .await
            .unwrap()
            .unwrap();
        let balance: i64 = row.try_get_by_index(0).unwrap();
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            update,
            [(balance - 1_000).into(), "w".into()],
        ))
        .await
        .unwrap();
        txn.commit().await.unwrap();
    }
    rate(DEBITS, start.elapsed())
}

async fn one_wallet(store: &Store, per_batch: usize, tag: &str) -> f64 {
    let batches = prepare(
        store,
        &format!("wal_one_{tag}_{per_batch}"),
        DEBITS / per_batch,
        per_batch,
    )
    .await;
    let start = Instant::now();
    for batch in &batches {
        store.commit(batch).await.unwrap();
    }
    rate(DEBITS, start.elapsed())
}

async fn many_wallets(store: &Store, group: usize, tag: &str) -> f64 {
    // WALLETS wallets, one debit per wallet batch; `group` wallet batches per transaction.
    let rounds = DEBITS / WALLETS;
    let mut per_wallet = Vec::new();
    for w in 0..WALLETS {
        per_wallet.push(prepare(store, &format!("wal_many_{tag}_{group}_{w}"), rounds, 1).await);
    }
    // Round r commits every wallet's r-th batch, `group` of them per transaction.
    let mut order: Vec<WalletBatch> = Vec::with_capacity(DEBITS);
    for r in 0..rounds {
        for batches in &per_wallet {
            order.push(batches[r].clone());
        }
    }
    let start = Instant::now();
    for chunk in order.chunks(group) {
        let results = store.commit_many(chunk).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    rate(DEBITS, start.elapsed())
}

/// Ledger records of the wallet whose load cost is measured.
const LOAD_ENTRIES: usize = 100_000;
/// Records per commit while filling it.
const FILL_BATCH: usize = 1_000;

/// Loading a wallet from its snapshot row vs replaying its whole ledger.
async fn load_cost(store: &Store, tag: &str) {
    let id = format!("wal_load_{tag}");
    let mut j = journal(&id);
    store
        .create_wallet(&NewWallet::from_core(&j.wallet, &j.entries[0], None, None).unwrap())
        .await
        .unwrap();
    let mut durable = j.wallet.clone();
    let mut version = 0;
    let fill = Instant::now();
    while j.entries.len() < LOAD_ENTRIES {
        let from = j.entries.len();
        for i in 0..FILL_BATCH.min(LOAD_ENTRIES - from) {
            debit(&mut j, from + i);
        }
        let batch =
            WalletBatch::from_core(&durable, version, &j.entries[from..], &j.wallet).unwrap();
        version = store.commit(&batch).await.unwrap();
        durable = j.wallet.clone();
    }
    let filled = fill.elapsed();
    let start = Instant::now();
    let (state, _) = store.load_state(&id).await.unwrap().unwrap();
    let snapshot = start.elapsed();
    let start = Instant::now();
    let mut replayed = store.replay_wallet(&id).await.unwrap().unwrap();
    let replay = start.elapsed();
    replayed.now = state.now;
    assert_eq!(replayed, state);
    println!(
        "\nLoad of a wallet with {} ledger records: snapshot row {:.2} ms, full replay {:.0} ms \
         ({:.0}× slower); filling it took {:.1} s",
        j.entries.len(),
        snapshot.as_secs_f64() * 1e3,
        replay.as_secs_f64() * 1e3,
        replay.as_secs_f64() / snapshot.as_secs_f64(),
        filled.as_secs_f64()
    );
}

async fn run(name: &str, url: &str, tag: &str) {
    let store = Store::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let baseline = naive(&store).await;
    println!("\n## {name}: {DEBITS} debits per row\n");
    println!("| run | batch | debits/s | × naive |");
    println!("|---|---:|---:|---:|");
    println!("| naive (1 txn per debit, read + rewrite balance) | 1 | {baseline:.0} | 1.00 |");
    for per_batch in BATCH_SIZES {
        let r = one_wallet(&store, per_batch, tag).await;
        println!(
            "| one wallet, `commit` | {per_batch} | {r:.0} | {:.2} |",
            r / baseline
        );
    }
    for group in BATCH_SIZES {
        let r = many_wallets(&store, group, tag).await;
        println!(
            "| {WALLETS} wallets, `commit_many` | {group} | {r:.0} | {:.2} |",
            r / baseline
        );
    }
    if std::env::var_os("CREDITS_BENCH_SKIP_LOAD").is_none() {
        load_cost(&store, tag).await;
    }
    store.close().await.ok();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tag = format!("{}", std::process::id());
    let path = std::env::temp_dir().join(format!("credits-bench-{tag}.db"));
    run(
        "SQLite (WAL, synchronous=FULL)",
        &format!("sqlite://{}?mode=rwc", path.display()),
        &tag,
    )
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if let Ok(base) = std::env::var("CREDITS_TEST_DATABASE_URL") {
        let schema = format!("bench_{tag}");
        let admin = Store::connect(&base).await.expect("connect");
        admin
            .connection()
            .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        run(
            "PostgreSQL",
            &format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            &tag,
        )
        .await;
        admin
            .connection()
            .execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    } else {
        println!("\nCREDITS_TEST_DATABASE_URL not set: PostgreSQL skipped");
    }
}
