//! Overload (issue 10, item 6): past `--max-in-flight` GraphQL requests the server answers
//! `UNAVAILABLE` (HTTP 503, `Retry-After`) at once instead of queueing, a shed request
//! changes nothing, memory stays bounded, and service is normal again once load drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use credits_store::Store;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{App, Backend, Init, START, Ws};
use crate::on_both;
use crate::workload::{Outcome, Shared, http_client, ledger, seed, spawn_clients, verify, wallets};

/// The server's bound in these tests.
const MAX_IN_FLIGHT: usize = 4;
/// Requests of the flood while every slot is held.
const FLOOD: usize = 300;
/// Concurrent senders of the flood.
const FLOOD_CONCURRENCY: usize = 50;
/// How long phase 3's clients run (each shed request is retried once by the verifier,
/// one at a time, which is what takes long).
const LOAD_TIME: Duration = Duration::from_secs(1);
/// Bound on waiting for the server to change state (a slot taken or freed).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the server's memory growth over the flood and the load (MiB): generous, it
/// only catches an unbounded queue.
const MAX_RSS_GROWTH_MIB: u64 = 256;

on_both!(overload_sheds_at_once_changes_nothing_and_recovers);

fn usage(wallet: &str, key: &str) -> Value {
    json!({
        "query": "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { replayed usage { id } } }",
        "variables": { "i": { "walletId": wallet, "idempotencyKey": key, "threadId": "t",
            "model": "economy-mini", "inputTokens": 1000, "outputTokens": 1000 } },
    })
}

/// The server's resident memory in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A POST to `/graphql` whose headers promise a body that never comes: it holds one
/// in-flight slot for as long as the connection stays open.
async fn stalled_request(app: &App) -> TcpStream {
    let mut s = TcpStream::connect(app.addr()).await.expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.addr(),
        app.admin
    );
    s.write_all(head.as_bytes()).await.expect("send a head");
    s
}

/// One raw POST: (status, Retry-After, body, how long it took).
async fn post(
    http: &reqwest::Client,
    app: &App,
    body: &Value,
) -> (u16, Option<String>, Value, Duration) {
    let t = Instant::now();
    let resp = http
        .post(app.url("/graphql"))
        .bearer_auth(&app.admin)
        .json(body)
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let json = resp.json().await.expect("a JSON body");
    (status, retry, json, t.elapsed())
}

async fn overload_sheds_at_once_changes_nothing_and_recovers(b: Backend) {
    let bound = MAX_IN_FLIGHT.to_string();
    let app = App::spawn_env(b, Some(START), &[("CREDITD_MAX_IN_FLIGHT", &bound)]).await;
    let targets = wallets(&app, 2).await;
    let wallet = targets[0].id.clone();
    let store = Store::connect(&app.db.url).await.expect("open the store");
    let http = http_client();
    let records_before = ledger(&store, &wallet).await.len();
    let balance_before = app.balance(&wallet).await;
    let rss_before = rss_kib(app.pid());

    // 1. Every slot held by a request that never finishes: nothing can be served, and
    //    nothing may wait either.
    let mut stalled = Vec::new();
    for _ in 0..MAX_IN_FLIGHT {
        stalled.push(stalled_request(&app).await);
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut restalled = 0;
    loop {
        let (status, _, body, _) = post(&http, &app, &usage(&wallet, "probe")).await;
        if status == 503 {
            break;
        }
        // A stalled request that got an answer (e.g. shed while a stray request held a
        // slot) holds nothing: stall it again.
        for s in stalled.iter_mut() {
            let mut byte = [0u8; 1];
            match s.try_read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => {
                    restalled += 1;
                    *s = stalled_request(&app).await;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the slots were never taken: {status} {body}; log:\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The probe may have been served before the slots filled: it is one more key.
    let probe_served = ledger(&store, &wallet).await.len() - records_before;

    let started = Instant::now();
    let answers: Vec<_> = futures::stream::iter(0..FLOOD)
        .map(|i| {
            let (http, app, wallet) = (&http, &app, &wallet);
            async move { post(http, app, &usage(wallet, &format!("flood-{i}"))).await }
        })
        .buffer_unordered(FLOOD_CONCURRENCY)
        .collect()
        .await;
    let flood_time = started.elapsed();
    let mut slowest = Duration::ZERO;
    for (status, retry, body, took) in &answers {
        // Each answer arrived while every slot was still held: it was not queued.
        assert_eq!(*status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
            "{body}"
        );
        slowest = slowest.max(*took);
    }
    // Shed at once: not after waiting for a slot (a stalled request frees one only at the
    // server's 10 s body timeout).
    assert!(
        slowest < Duration::from_secs(5),
        "a shed request waited {slowest:?}"
    );
    // Over a WebSocket too (found by review: operations sent over sockets took no slot),
    // a mutation is refused UNAVAILABLE; a subscription takes no slot and is served.
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    let over_ws = usage(&wallet, "over-ws");
    ws.subscribe(
        "m",
        over_ws["query"].as_str().unwrap(),
        over_ws["variables"].clone(),
    )
    .await;
    let refused = ws.recv().await.expect("an answer");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "UNAVAILABLE",
        "{refused}"
    );
    ws.subscribe(
        "s",
        "subscription($w: ID!) { balanceChanged(walletId: $w) { cause } }",
        json!({ "w": wallet }),
    )
    .await;
    assert_eq!(
        ws.next_data("s").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    drop(ws);
    // A shed request changed nothing.
    assert_eq!(
        ledger(&store, &wallet).await.len(),
        records_before + probe_served
    );

    // 2. Load drops: the stalled clients go away and the same requests are served, each
    //    key applied once.
    drop(stalled);
    let read = json!({
        "query": "query($id: ID!) { wallet(id: $id) { balance { ...Bal } } }",
        "variables": { "id": wallet },
    });
    let read = json!({
        "query": format!("{}\n{}", read["query"].as_str().unwrap(), crate::helpers::BALANCE),
        "variables": read["variables"],
    });
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (status, _, body, _) = post(&http, &app, &read).await;
        if status == 200 {
            if probe_served == 0 {
                assert_eq!(body["data"]["wallet"]["balance"], balance_before);
            }
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..FLOOD {
        let (status, _, body, _) = post(&http, &app, &usage(&wallet, &format!("flood-{i}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["recordUsage"]["replayed"], false, "{body}");
    }
    assert_eq!(
        ledger(&store, &wallet).await.len(),
        records_before + probe_served + FLOOD
    );
    assert_ne!(app.balance(&wallet).await, balance_before);

    // 3. Real load far past the bound (many clients, every kind of operation): some work
    //    is shed, none is lost or doubled, and memory stays bounded.
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let targets = Arc::new(targets);
    let handles = spawn_clients(
        FLOOD_CONCURRENCY,
        vec![app.url("/graphql")],
        app.admin.clone(),
        targets.clone(),
        shared.clone(),
        stop.clone(),
        seed(),
    );
    tokio::time::sleep(LOAD_TIME).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("a client task");
    }
    let rss_after = rss_kib(app.pid());
    let ops = shared.ops.lock().unwrap().clone();
    let shed = ops
        .iter()
        .filter(|o| matches!(&o.outcome, Outcome::Unknown(e) if e.contains("UNAVAILABLE")))
        .count();
    let tally = verify(&store, &[app.url("/graphql")], &app.admin, &targets, &ops).await;
    println!(
        "overload: max in flight {MAX_IN_FLIGHT}; {FLOOD} requests from {FLOOD_CONCURRENCY} senders \
         with every slot held all shed (503) in {:.0} ms, slowest answer {:.0} ms \
         ({restalled} stalls answered early); then {} ops from \
         {FLOOD_CONCURRENCY} clients: {} acknowledged, {shed} shed, lost {}, doubled {}; \
         RSS {} -> {} MiB",
        flood_time.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3,
        ops.len(),
        tally.acked,
        tally.lost,
        tally.doubled,
        rss_before / 1024,
        rss_after / 1024,
    );
    assert_eq!((tally.lost, tally.doubled, tally.unearned), (0, 0, 0));
    assert!(shed > 0, "the load never passed the bound: {tally:?}");
    assert!(tally.acked > 0, "nothing was served under load: {tally:?}");
    assert!(
        rss_after.saturating_sub(rss_before) < MAX_RSS_GROWTH_MIB * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Normal service afterwards.
    let (status, _, body, _) = post(&http, &app, &usage(&wallet, "after")).await;
    assert_eq!(
        (status, &body["data"]["recordUsage"]["replayed"]),
        (200, &json!(false)),
        "{body}"
    );
}

/// Bound on the server's answer to a body that never arrives (its `BODY_TIMEOUT` is 10 s).
const STALL_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// With one slot, a client that sends headers and never the body would shut everyone out;
/// the server answers it 408 `INVALID_INPUT` and serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_and_frees_its_slot() {
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(START),
        &[("CREDITD_MAX_IN_FLIGHT", "1")],
    )
    .await;
    let http = http_client();
    let mut stalled = stalled_request(&app).await;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (status, _, body, _) =
            post(&http, &app, &json!({ "query": "{ models { id } }" })).await;
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never taken: {status} {body}"
        );
        // A machine so loaded that the stalled request was answered (its 10 s over)
        // before a request of ours met it holding the slot: stall another one.
        let mut peek = [0u8; 1];
        if stalled.try_read(&mut peek).is_ok() {
            stalled = stalled_request(&app).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(STALL_ANSWER_TIMEOUT, stalled.read_to_end(&mut answer))
        .await
        .expect("an answer to the stalled request")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("INVALID_INPUT"), "{answer}");
    let (status, _, body, _) = post(&http, &app, &json!({ "query": "{ models { id } }" })).await;
    assert_eq!(status, 200, "{body}");
}
