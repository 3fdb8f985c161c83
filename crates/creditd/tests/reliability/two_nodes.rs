//! Two nodes on one PostgreSQL (issue 10, item 2; SPEC 9 "several nodes"): two `creditd`
//! processes serve the same database, clients spread over both hammer the same wallets —
//! one a hot team pool kept close to empty, so that any credit spent twice would show as
//! an overdraft — and a subscriber on node A must see every event committed on either
//! node, in seq order, with no gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use credits_store::{Store, cause_name};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::helpers::{App, Backend, Init, Ws};
use crate::workload::{Outcome, Shared, env_or, ledger, seed, spawn_clients, verify, wallets};

/// Concurrent clients (spread over both nodes) unless `RELIABILITY_CLIENTS` says otherwise.
const DEFAULT_CLIENTS: u64 = 12;
/// How long the clients run unless `RELIABILITY_LOAD_MS` says otherwise.
const DEFAULT_LOAD_MS: u64 = 3_000;
/// Bound on the subscriber catching up with the ledger once the load is over.
const CATCH_UP: Duration = Duration::from_secs(20);
/// Subscriber poll step (a cancelled wait loses no message).
const POLL: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_spend_each_credit_once_and_publish_every_event() {
    match Backend::postgres() {
        Some(b) => two_nodes(b).await,
        None => eprintln!("CREDITS_TEST_DATABASE_URL is unset: skipped"),
    }
}

/// Subscribes on `node` to `wallet`'s balance events and collects them until the ledger's
/// last seq, sent on `target`, has arrived (or [`CATCH_UP`] after it was sent).
async fn subscriber(
    node: &App,
    wallet: &str,
    mut target: watch::Receiver<Option<u64>>,
) -> tokio::task::JoinHandle<Vec<Value>> {
    let (mut ws, init) = Ws::connect(node, "graphql-transport-ws", &node.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    ws.subscribe(
        "1",
        "subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause balance { total reserved } } }",
        json!({ "w": wallet }),
    )
    .await;
    let snapshot = ws.next_data("1").await["balanceChanged"].clone();
    assert_eq!(snapshot["cause"], "SNAPSHOT");
    tokio::spawn(async move {
        let mut events = vec![snapshot];
        let mut deadline = None;
        loop {
            let last = events.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
            if let Some(t) = *target.borrow_and_update() {
                if last >= t {
                    break;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + CATCH_UP);
                if Instant::now() > d {
                    break;
                }
            }
            if let Ok(p) = tokio::time::timeout(POLL, ws.next("1")).await {
                events.push(p["data"]["balanceChanged"].clone());
            }
        }
        events
    })
}

async fn two_nodes(b: Backend) {
    let clients = env_or("RELIABILITY_CLIENTS", DEFAULT_CLIENTS) as usize;
    let load = Duration::from_millis(env_or("RELIABILITY_LOAD_MS", DEFAULT_LOAD_MS));
    let seed = seed();
    eprintln!("two nodes: RELIABILITY_SEED={seed}");
    let started = Instant::now();
    let a = App::spawn(b).await;
    let targets = Arc::new(wallets(&a, 2).await);
    let b = a.another_node().await;
    let pool = targets.last().unwrap().id.clone();
    let personal = targets[0].id.clone();

    // Subscribers on node A, to the hot pool and to a personal wallet.
    let (target_tx, target_rx) = watch::channel(None);
    let (personal_tx, personal_rx) = watch::channel(None);
    let pool_events = subscriber(&a, &pool, target_rx).await;
    let personal_events = subscriber(&a, &personal, personal_rx).await;

    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let urls = vec![a.url("/graphql"), b.url("/graphql")];
    let handles = spawn_clients(
        clients,
        urls.clone(),
        a.admin.clone(),
        targets.clone(),
        shared.clone(),
        stop.clone(),
        seed,
    );
    tokio::time::sleep(load).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("a client task");
    }

    let store = Store::connect(&a.db.url).await.expect("open the store");
    let ops = shared.ops.lock().unwrap().clone();
    // The retries go to both nodes too.
    let tally = verify(&store, &urls, &a.admin, &targets, &ops).await;

    let mut failures = Vec::new();
    let mut delivered = 0;
    for (wallet, tx, events) in [
        (&pool, target_tx, pool_events),
        (&personal, personal_tx, personal_events),
    ] {
        let entries = ledger(&store, wallet).await;
        let last = entries.last().expect("a ledger").seq;
        tx.send(Some(last)).unwrap();
        let events = events.await.expect("the subscriber task");
        let first = events[0]["seq"].as_u64().unwrap();
        let expected: Vec<(u64, &str)> = entries
            .iter()
            .filter(|e| e.seq > first)
            .map(|e| (e.seq, cause_name(e.cause())))
            .collect();
        let got: Vec<(u64, &str)> = events[1..]
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap_or(0),
                    e["cause"].as_str().unwrap_or("?"),
                )
            })
            .collect();
        delivered += got.len();
        if got != expected {
            let missing = expected.iter().filter(|e| !got.contains(e)).count();
            let first_diff = got
                .iter()
                .zip(&expected)
                .position(|(g, e)| g != e)
                .unwrap_or(got.len().min(expected.len()));
            failures.push(format!(
                "wallet {wallet}: the subscriber on node A got {} events, the ledger has {} after seq {first} \
                 ({missing} missing); first difference at #{first_diff}: got {:?}, expected {:?}",
                got.len(),
                expected.len(),
                got.get(first_diff),
                expected.get(first_diff),
            ));
        }
    }
    println!(
        "two nodes on postgres: {clients} clients, {} ops sent, {} acknowledged, {} refused {:?}, \
         {} unknown {:?} ({} of them durable), lost {}, doubled {}, unearned refusals {}; {delivered} events delivered on node A; {:.1} s, \
         RELIABILITY_SEED={seed}",
        ops.len(),
        tally.acked,
        tally.refused,
        tally.refusals,
        tally.unknown,
        tally.unknowns,
        tally.unknown_durable,
        tally.lost,
        tally.doubled,
        tally.unearned,
        started.elapsed().as_secs_f64(),
    );
    let mut samples: Vec<String> = ops
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Unknown(why) => Some(why.chars().take(300).collect()),
            _ => None,
        })
        .collect();
    samples.sort();
    samples.dedup();
    for s in samples.iter().take(3) {
        println!("  unknown outcome, e.g.: {s}");
    }
    assert_eq!((tally.lost, tally.doubled, tally.unearned), (0, 0, 0));
    assert!(
        tally.acked_by_url.iter().all(|&n| n > 0),
        "a node served nothing: {tally:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(b);
}
