//! Usage history, summaries and the review queries on a wallet with 1,000,000 usage
//! events (plus 100,000 events of 1,000 other wallets, so the platform-wide thread rank
//! has peers), through `credits-store`, on SQLite and (when `CREDITS_TEST_DATABASE_URL`
//! is set) PostgreSQL. The rows are bulk-loaded with multi-row INSERTs (they are rows as
//! a commit writes them; going through the ledger would take hours and measure commits,
//! which `benches/commit.rs` does). Every query's plan is printed and checked: an index
//! range or lookup, never a scan of the table or of a whole index.
//!
//! `cargo bench -p credits-store --bench usage` (`CREDITS_BENCH_EVENTS=N` loads fewer).

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use credits_store::{GroupBy, Store, UsageFilter, UsageQuery};
use sea_orm::{ConnectionTrait, TransactionTrait};

/// Usage events of the measured wallet.
const EVENTS: usize = 1_000_000;
/// Seconds between two of its events: 1M events span about 347 days.
const STEP_SECONDS: i64 = 30;
/// Consecutive events of one thread: 25,000 threads.
const THREAD_EVENTS: usize = 40;
/// Team members spending on the (pool) wallet.
const MEMBERS: usize = 20;
const MODELS: [&str; 4] = [
    "economy-mini",
    "standard-chat",
    "standard-code",
    "premium-reason",
];
/// Other wallets, and events of each, in the last 30 days (peers of the thread rank).
const OTHER_WALLETS: usize = 1_000;
const OTHER_EVENTS: usize = 100;
/// Rows per INSERT statement and per transaction while loading.
const INSERT_ROWS: usize = 500;
const TXN_ROWS: usize = 100_000;
/// Runs of each query; the median is reported.
const RUNS: usize = 7;

const WALLET: &str = "wal_big";
const ZONE: Tz = chrono_tz::Europe::Paris;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn at(i: usize) -> DateTime<Utc> {
    start() + Duration::seconds(i as i64 * STEP_SECONDS)
}

fn thread_of(i: usize) -> usize {
    i / THREAD_EVENTS
}

/// Event `i` of the big wallet: (thread, model, member, input, output, cost µcr).
fn event(i: usize) -> (String, &'static str, String, i64, i64, i64) {
    let t = thread_of(i);
    let model = MODELS[(t * 7) % MODELS.len()];
    let input = 1_000 + ((i * 7_919) % 40_000) as i64;
    let output = 50 + ((i * 104_729) % 2_000) as i64;
    let cost = input * 30 + output * 150;
    (
        format!("t{t}"),
        model,
        format!("m{}", t % MEMBERS),
        input,
        output,
        cost,
    )
}

/// Row `n` of the load, as SQL values: the big wallet's events first, then the peers
/// (other wallets' threads of the same models in the last 30 days).
fn row(n: usize, events: usize) -> (String, i64) {
    if n < events {
        let (thread, model, member, input, output, cost) = event(n);
        let values = format!(
            "('use_big_{n}', '{WALLET}', {seq}, {at}, 'k{n}', '{thread}', '{model}', '{member}', \
             {input}, 0, {output}, {cost}, 0, 'standard', 'standard@1.0.0', \
             '[{{\"bucket\":\"SUBSCRIPTION\",\"grant_id\":null,\"amount_ucr\":{cost}}}]', NULL)",
            seq = n + 2,
            at = at(n).timestamp_micros(),
        );
        return (values, cost);
    }
    let (w, e) = ((n - events) / OTHER_EVENTS, (n - events) % OTHER_EVENTS);
    let t = e / 10;
    let now = at(events - 1);
    let when = now - Duration::minutes(((w * 37 + e * 11) % (29 * 24 * 60)) as i64);
    let cost = 1_000 * ((w * 13 + t * 7) % 500) as i64;
    let values = format!(
        "('use_o{w}_{e}', 'wal_o{w}', {seq}, {at}, 'k{e}', 'o{t}', '{model}', NULL, \
         1000, 0, 100, {cost}, 0, 'standard', 'standard@1.0.0', '[]', NULL)",
        seq = e + 2,
        at = when.timestamp_micros(),
        model = MODELS[(w + t) % MODELS.len()],
    );
    (values, 0)
}

/// Loads the rows; returns the big wallet's total cost and the time taken.
async fn load(store: &Store, events: usize) -> (i64, StdDuration) {
    let db = store.connection();
    let began = Instant::now();
    let mut total: i64 = 0;
    let rows = events + OTHER_WALLETS * OTHER_EVENTS;
    for txn_start in (0..rows).step_by(TXN_ROWS) {
        let txn = db.begin().await.unwrap();
        let txn_end = (txn_start + TXN_ROWS).min(rows);
        for chunk_start in (txn_start..txn_end).step_by(INSERT_ROWS) {
            let mut values = Vec::with_capacity(INSERT_ROWS);
            for n in chunk_start..(chunk_start + INSERT_ROWS).min(txn_end) {
                let (v, cost) = row(n, events);
                total += cost;
                values.push(v);
            }
            txn.execute_unprepared(&format!(
                "INSERT INTO usage_events (id, wallet_id, seq, at_us, idempotency_key, thread_id, \
                 model, member_id, input_tokens, cached_tokens, output_tokens, cost_ucr, \
                 uncollected_ucr, tier, priced_by, charged, reservation_id) VALUES {}",
                values.join(", ")
            ))
            .await
            .unwrap();
        }
        txn.commit().await.unwrap();
    }
    // Fresh statistics, as autovacuum / `PRAGMA optimize` would have them in service.
    match db.get_database_backend() {
        // VACUUM also sets the visibility map that index-only scans rely on.
        sea_orm::DbBackend::Postgres => db.execute_unprepared("VACUUM ANALYZE usage_events").await,
        _ => db.execute_unprepared("ANALYZE").await,
    }
    .unwrap();
    (total, began.elapsed())
}

/// Median wall time of `RUNS` runs of `f` (after one warm-up run), and its last result.
async fn time<T, F, Fut>(mut f: F) -> (StdDuration, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut out = f().await;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let began = Instant::now();
        out = f().await;
        times.push(began.elapsed());
    }
    times.sort();
    (times[RUNS / 2], out)
}

fn ms(d: StdDuration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// A plan reads through an index (a range or lookup), never the whole table or index.
fn check_plan(name: &str, plan: &[String]) -> bool {
    let full_scan = plan.iter().any(|line| {
        let l = line.trim_start_matches([' ', '-', '>']);
        // SQLite: "SCAN u" / "SCAN usage_events" (with or without a covering index) is a
        // full pass; "SEARCH … USING INDEX" is a range. PostgreSQL: "Seq Scan".
        (l.starts_with("SCAN ") && (l.contains("usage_events") || l.starts_with("SCAN u")))
            || l.contains("Seq Scan on usage_events")
    });
    println!("\n`{name}`:\n```");
    for line in plan {
        println!("{line}");
    }
    println!("```");
    if full_scan {
        println!("**FULL SCAN in `{name}`**");
    }
    !full_scan
}

fn filter() -> UsageFilter {
    UsageFilter::default()
}

async fn run(name: &str, url: &str, events: usize) {
    let store = Store::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let (total, loaded) = load(&store, events).await;
    let rows = events + OTHER_WALLETS * OTHER_EVENTS;
    println!(
        "\n## {name}: {events} events on `{WALLET}` (+{} of other wallets), loaded in {:.1} s \
         ({:.0} rows/s)\n",
        OTHER_WALLETS * OTHER_EVENTS,
        loaded.as_secs_f64(),
        rows as f64 / loaded.as_secs_f64()
    );

    let mid = events / 2;
    let (mid_thread, mid_model, mid_member, ..) = event(mid);
    let day_from = at(mid);
    let day_to = day_from + Duration::days(1);
    let month_from = at(events - 1) - Duration::days(30);
    let last = at(events - 1) + Duration::seconds(1);
    let filters: Vec<(&str, UsageFilter)> = vec![
        ("none", filter()),
        (
            "thread",
            UsageFilter {
                thread_id: Some(mid_thread.clone()),
                ..filter()
            },
        ),
        (
            "model",
            UsageFilter {
                model: Some(mid_model.to_owned()),
                ..filter()
            },
        ),
        (
            "member",
            UsageFilter {
                member_id: Some(mid_member.clone()),
                ..filter()
            },
        ),
        (
            "one day",
            UsageFilter {
                from: Some(day_from),
                to: Some(day_to),
                ..filter()
            },
        ),
        (
            "model + member + 30 days",
            UsageFilter {
                model: Some(mid_model.to_owned()),
                member_id: Some(mid_member.clone()),
                from: Some(month_from),
                to: Some(last),
                ..filter()
            },
        ),
    ];

    let mut plans_ok = true;
    let mut table = Vec::new();
    for (label, f) in &filters {
        // The deep page continues after the middle of the filter's events: the cursor
        // of the newest matching event before the wallet's midpoint (or the day's).
        let pivot = match f.from {
            Some(from) => from + Duration::hours(12),
            None => at(mid),
        };
        let probe = UsageFilter {
            to: Some(pivot.min(f.to.unwrap_or(pivot))),
            ..f.clone()
        };
        let deep = store
            .usage_history(WALLET, &probe, 1, None)
            .await
            .unwrap()
            .end_cursor;
        for (page, after) in [("first page", None), ("deep page", deep.as_deref())] {
            let (d, got) = time(|| store.usage_history(WALLET, f, 20, after)).await;
            let got = got.unwrap();
            assert!(!got.events.is_empty(), "{label} {page}: no events");
            table.push((format!("`usage` {label}, {page} (20)"), d, got.events.len()));
            plans_ok &= check_plan(
                &format!("usage {label}, {page}"),
                &store
                    .explain_usage(&UsageQuery::History {
                        wallet_id: WALLET,
                        filter: f,
                        first: 20,
                        after,
                    })
                    .await
                    .unwrap(),
            );
        }
    }

    let month = UsageFilter {
        from: Some(month_from),
        to: Some(last),
        ..filter()
    };
    let summaries: Vec<(&str, GroupBy, Option<GroupBy>, &UsageFilter)> = vec![
        ("MODEL, all time", GroupBy::Model, None, &filters[0].1),
        ("THREAD, all time", GroupBy::Thread, None, &filters[0].1),
        ("DAY, all time", GroupBy::Day, None, &filters[0].1),
        ("MEMBER, all time", GroupBy::Member, None, &filters[0].1),
        (
            "DAY then MODEL, all time",
            GroupBy::Day,
            Some(GroupBy::Model),
            &filters[0].1,
        ),
        ("MODEL, last 30 days", GroupBy::Model, None, &month),
        ("THREAD, last 30 days", GroupBy::Thread, None, &month),
        ("DAY, last 30 days", GroupBy::Day, None, &month),
        ("MEMBER, last 30 days", GroupBy::Member, None, &month),
        ("DAY, one thread", GroupBy::Day, None, &filters[1].1),
    ];
    for (label, by, then_by, f) in summaries {
        let (d, got) = time(|| store.usage_summary(WALLET, f, by, then_by, ZONE)).await;
        let got = got.unwrap();
        if f == &filters[0].1 {
            // Totals are exact: the groups add up to what was loaded.
            let sum: i64 = got.iter().map(|g| g.credits_ucr).sum();
            let n: i64 = got.iter().map(|g| g.events).sum();
            assert_eq!((sum, n), (total, events as i64), "{label}");
        }
        table.push((format!("`usageSummary` {label}"), d, got.len()));
        plans_ok &= check_plan(
            &format!("usageSummary {label}"),
            &store
                .explain_usage(&UsageQuery::Summary {
                    wallet_id: WALLET,
                    filter: f,
                    by,
                    then_by,
                    zone: ZONE,
                })
                .await
                .unwrap(),
        );
    }

    let (d, got) =
        time(|| store.thread_usage(WALLET, &mid_thread, None, credits_store::MAX_LIST)).await;
    assert_eq!(got.unwrap().len(), THREAD_EVENTS);
    table.push(("review: thread events".into(), d, THREAD_EVENTS));
    plans_ok &= check_plan(
        "review thread events",
        &store
            .explain_usage(&UsageQuery::ThreadEvents {
                wallet_id: WALLET,
                thread_id: &mid_thread,
                limit: credits_store::MAX_LIST,
            })
            .await
            .unwrap(),
    );
    let now = at(events - 1);
    let (d, got) = time(|| {
        store.thread_rank(
            mid_model,
            now - Duration::days(30),
            now + Duration::seconds(1),
            (WALLET, &mid_thread),
            500_000_000,
        )
    })
    .await;
    let rank = got.unwrap();
    assert!(rank.threads > 0);
    table.push((
        format!(
            "review: thread rank over 30 days ({} threads)",
            rank.threads
        ),
        d,
        1,
    ));
    plans_ok &= check_plan(
        "review thread rank",
        &store
            .explain_usage(&UsageQuery::ThreadRank {
                model: mid_model,
                from: now - Duration::days(30),
                to: now + Duration::seconds(1),
            })
            .await
            .unwrap(),
    );

    println!("\n| query | rows out | median ms |\n|---|---:|---:|");
    for (label, d, n) in &table {
        println!("| {label} | {n} | {} |", ms(*d));
    }
    println!(
        "\nplans: {}",
        if plans_ok {
            "every query reads through an index"
        } else {
            "SOME QUERY SCANS (see above)"
        }
    );
    store.close().await.ok();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = std::env::var("CREDITS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EVENTS)
        .max(THREAD_EVENTS * 4);
    let tag = format!("{}", std::process::id());
    let path = std::env::temp_dir().join(format!("credits-usage-bench-{tag}.db"));
    if std::env::var_os("CREDITS_BENCH_SKIP_SQLITE").is_none() {
        run(
            "SQLite (WAL, synchronous=FULL)",
            &format!("sqlite://{}?mode=rwc", path.display()),
            events,
        )
        .await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    if let Ok(base) = std::env::var("CREDITS_TEST_DATABASE_URL") {
        let schema = format!("bench_usage_{tag}");
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
            events,
        )
        .await;
        if std::env::var_os("CREDITS_BENCH_KEEP").is_some() {
            println!("\nkept schema {schema}");
        } else {
            admin
                .connection()
                .execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .unwrap();
        }
    } else {
        println!("\nCREDITS_TEST_DATABASE_URL not set: PostgreSQL skipped");
    }
}
