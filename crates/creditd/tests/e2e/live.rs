//! Subscriptions over real WebSockets, in both protocols.

use serde_json::{Value, json};

use crate::helpers::{App, Backend, Init, Ws};
use crate::on_both;
use crate::reviews::{REPORT, RESOLVE};

on_both!(
    balance_changed_streams_snapshot_usage_and_reset,
    a_commit_larger_than_the_channel_streams_every_event,
    legacy_graphql_ws_protocol_works,
    a_client_offering_both_protocols_is_answered_in_the_agreed_one,
    bad_tokens_are_refused_at_connection_init,
    review_updated_sees_the_credit,
    due_events_stream_in_order_at_their_instants,
    protocol_messages_and_close_codes,
    a_removed_member_stops_receiving_the_pools_events,
    a_team_admin_removed_stops_hearing_of_a_members_review,
);

const BALANCE_CHANGED: &str = "subscription($w: ID!) { balanceChanged(walletId: $w) { walletId seq cause at balance { ...Bal } } }";

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().expect("seq is a JSON integer")
}

/// Found by review: one commit of more records than a wallet's event channel holds (256)
/// sent every subscriber a SNAPSHOT in place of its events, keeping up or not. The events
/// the channel dropped are now read back from the store.
async fn a_commit_larger_than_the_channel_streams_every_event(b: Backend) {
    const CALLS: usize = 400;
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    // Three subscribers, each on a socket of its own: they fall behind together.
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
        assert!(matches!(init, Init::Ack), "{init:?}");
        ws.subscribe("1", BALANCE_CHANGED, json!({ "w": w })).await;
        let snap = ws.next_data("1").await["balanceChanged"].clone();
        subscribers.push((ws, snap));
    }
    // One call's commit waits behind the lock; the others gather behind it, and land in
    // the next commit, all at once.
    let priced = "credits_plugin_calls_total{outcome=\"ok\"}";
    let lock = crate::helpers::WriteLock::take(&app).await;
    let since = app.metric("credits_store_transactions_total").await;
    let first = app.record(&w, "k0", "t", "economy-mini", 0, 1000);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => panic!("answered before it was durable: {r}"),
        () = app.wait_for_transactions(since, 1.0) => {}
    }
    let keys: Vec<String> = (1..CALLS).map(|i| format!("k{i}")).collect();
    let rest = futures::future::join_all(
        keys.iter()
            .map(|k| app.record(&w, k, "t", "economy-mini", 0, 1000)),
    );
    tokio::pin!(rest);
    let all_priced = async {
        while app.metric(priced).await < CALLS as f64 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        r = &mut rest => panic!("answered before the first commit: {r:?}"),
        () = all_priced => {}
    }
    lock.release().await;
    let (first, rest) = tokio::join!(first, rest);
    for r in std::iter::once(&first).chain(&rest) {
        assert!(r["errors"].is_null(), "{r}");
    }
    let end = app.balance(&w).await;
    for (mut ws, snap) in subscribers {
        let mut last = snap;
        for _ in 0..CALLS {
            let e = ws.next_data("1").await["balanceChanged"].clone();
            assert_eq!(
                (&e["cause"], seq(&e)),
                (&json!("USAGE"), seq(&last) + 1),
                "{e}"
            );
            last = e;
        }
        assert_eq!(last["balance"], end);
    }
}

async fn balance_changed_streams_snapshot_usage_and_reset(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let alice = app.token("USER", Some("alice")).await;
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &alice).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    ws.subscribe("1", BALANCE_CHANGED, json!({ "w": w })).await;
    let snap = ws.next_data("1").await["balanceChanged"].clone();
    assert_eq!(snap["cause"], "SNAPSHOT");
    assert_eq!(snap["walletId"], w.as_str());
    assert_eq!(snap["balance"]["total"], "520");

    app.record(&w, "u1", "t", "economy-mini", 0, 250_000).await;
    let usage = ws.next_data("1").await["balanceChanged"].clone();
    assert_eq!(usage["cause"], "USAGE");
    assert_eq!(seq(&usage), seq(&snap) + 1);
    assert_eq!(usage["balance"]["total"], "519");
    assert_eq!(usage["balance"]["daily"]["remaining"], "19");

    // A refused call and a replay yield no event: the next one is the reset.
    let r = app.record(&w, "u1", "t", "economy-mini", 0, 250_000).await;
    assert_eq!(r["data"]["recordUsage"]["replayed"], true);
    let r = app.record(&w, "u2", "t", "premium-max", 0, 1).await;
    assert_eq!(crate::helpers::error_code(&r), "MODEL_NOT_ALLOWED");

    // Past local midnight (UTC): the daily bucket resets, at its due instant.
    app.advance(12 * 3600 + 5).await;
    let reset = ws.next_data("1").await["balanceChanged"].clone();
    assert_eq!(reset["cause"], "DAILY_RESET");
    assert_eq!(seq(&reset), seq(&usage) + 1);
    assert_eq!(reset["at"], "2027-03-11T00:00:00Z");
    assert_eq!(reset["balance"]["daily"]["remaining"], "20");
    assert_eq!(
        reset["balance"]["daily"]["nextResetAt"],
        "2027-03-12T00:00:00Z"
    );
    assert_eq!(reset["balance"]["total"], "520");

    // Another user may not subscribe to this wallet; an unknown one is NOT_FOUND.
    let bob = app.token("USER", Some("bob")).await;
    let (mut other, init) = Ws::connect(&app, "graphql-transport-ws", &bob).await;
    assert!(matches!(init, Init::Ack));
    other
        .subscribe("x", BALANCE_CHANGED, json!({ "w": w }))
        .await;
    let p = other.next("x").await;
    assert_eq!(p["errors"][0]["extensions"]["code"], "FORBIDDEN", "{p}");
    other
        .subscribe("y", BALANCE_CHANGED, json!({ "w": "wal_nope" }))
        .await;
    let p = other.next("y").await;
    assert_eq!(p["errors"][0]["extensions"]["code"], "NOT_FOUND", "{p}");
}

async fn legacy_graphql_ws_protocol_works(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let service = app.token("SERVICE", None).await;
    let (mut ws, init) = Ws::connect(&app, "graphql-ws", &service).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    ws.subscribe("s", BALANCE_CHANGED, json!({ "w": w })).await;
    let snap = ws.next_data("s").await["balanceChanged"].clone();
    assert_eq!(snap["cause"], "SNAPSHOT");
    app.ok(
        &app.admin,
        "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: \"3\", kind: COMMUNITY, reason: \"thanks\"}) { id } }",
        json!({ "w": w }),
    )
    .await;
    let grant = ws.next_data("s").await["balanceChanged"].clone();
    assert_eq!(grant["cause"], "GRANT");
    assert_eq!(seq(&grant), seq(&snap) + 1);
    assert_eq!(grant["balance"]["bonus"]["remaining"], "3");
    assert_eq!(grant["balance"]["total"], "523");

    // An operation refused before it runs is one `error` message carrying one error,
    // as the legacy protocol has it; a `stop` is confirmed with `complete`.
    ws.subscribe("bad", "subscription { noSuchField }", json!({}))
        .await;
    let refused = loop {
        let m = ws.recv().await.unwrap();
        if m["type"] != "ka" {
            break m;
        }
    };
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "bad", "{refused}");
    assert_eq!(
        refused["payload"]["extensions"]["code"], "INVALID_INPUT",
        "{refused}"
    );
    ws.send(json!({ "id": "s", "type": "stop" })).await;
    assert_eq!(
        ws.recv().await.unwrap(),
        json!({ "id": "s", "type": "complete" })
    );

    // A client's close is answered with the server's (found by review: the socket was
    // dropped, which the client sees as an abnormal closure, 1006).
    ws.close(1000).await;
    assert_eq!(ws.close_code().await, Some(1000));
}

/// The handshake agrees one protocol (the server's first choice among those offered,
/// whatever the client's order) and the socket then speaks exactly that one.
async fn a_client_offering_both_protocols_is_answered_in_the_agreed_one(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let service = app.token("SERVICE", None).await;
    for offered in [
        "graphql-ws, graphql-transport-ws",
        "graphql-transport-ws, graphql-ws",
    ] {
        let (mut ws, agreed, init) = Ws::connect_offering(&app, offered, &service).await;
        assert_eq!(agreed, "graphql-transport-ws", "{offered}");
        assert!(matches!(init, Init::Ack), "{offered}: {init:?}");
        ws.subscribe("s", BALANCE_CHANGED, json!({ "w": w })).await;
        let m = ws.recv().await.expect("a message");
        assert_eq!(m["type"], "next", "{offered}: {m}");
        assert_eq!(m["payload"]["data"]["balanceChanged"]["cause"], "SNAPSHOT");
    }
}

async fn bad_tokens_are_refused_at_connection_init(b: Backend) {
    let app = App::spawn(b).await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let (_, init) = Ws::connect(&app, protocol, "not-a-token").await;
        assert!(matches!(init, Init::Refused(_)), "{protocol}: {init:?}");
    }
}

async fn review_updated_sees_the_credit(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    app.record(&w, "a", "t", "standard-chat", 1000, 1000).await;
    let alice = app.token("USER", Some("alice")).await;
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "t" })).await;
    let id = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();

    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &alice).await;
    assert!(matches!(init, Init::Ack));
    ws.subscribe(
        "r",
        "subscription($id: ID!) { reviewUpdated(reviewId: $id) { id status creditedGrant { kind amount } } }",
        json!({ "id": id }),
    )
    .await;
    let first = ws.next_data("r").await;
    assert_eq!(first["reviewUpdated"]["status"], "SUBMITTED");
    app.ok(
        &app.admin,
        RESOLVE,
        json!({ "i": { "reviewId": id, "decision": "APPROVE", "amount": "0.5" } }),
    )
    .await;
    let credited = ws.next_data("r").await;
    assert_eq!(
        credited["reviewUpdated"],
        json!({ "id": id, "status": "CREDITED", "creditedGrant": { "kind": "COMPENSATION", "amount": "0.5" } })
    );
}

/// SPEC 9 "several nodes": a review resolved through one node reaches a `reviewUpdated`
/// subscriber on another (PostgreSQL only: SQLite is one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_updated_sees_a_resolution_on_another_node() {
    let Some(b) = Backend::postgres() else {
        return eprintln!("CREDITS_TEST_DATABASE_URL is unset: skipped");
    };
    let a = App::spawn(b).await;
    let w = a.wallet("alice", "pro").await;
    a.record(&w, "a", "t", "standard-chat", 1000, 1000).await;
    let alice = a.token("USER", Some("alice")).await;
    let d = a.ok(&alice, REPORT, json!({ "w": w, "t": "t" })).await;
    let id = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    let (mut ws, init) = Ws::connect(&a, "graphql-transport-ws", &alice).await;
    assert!(matches!(init, Init::Ack));
    ws.subscribe(
        "r",
        "subscription($id: ID!) { reviewUpdated(reviewId: $id) { id status } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(
        ws.next_data("r").await["reviewUpdated"]["status"],
        "SUBMITTED"
    );

    let other = a.another_node().await;
    other
        .ok(
            &other.admin,
            RESOLVE,
            json!({ "i": { "reviewId": id, "decision": "REJECT" } }),
        )
        .await;
    let rejected = ws.next_data("r").await;
    assert_eq!(
        rejected["reviewUpdated"],
        json!({ "id": id, "status": "REJECTED" })
    );
}

async fn due_events_stream_in_order_at_their_instants(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack));
    ws.subscribe("1", BALANCE_CHANGED, json!({ "w": w })).await;
    let mut last = seq(&ws.next_data("1").await["balanceChanged"]);
    let mut next = async |ws: &mut Ws| {
        let e = ws.next_data("1").await["balanceChanged"].clone();
        assert_eq!(seq(&e), last + 1, "no gap: {e}");
        last = seq(&e);
        e
    };

    app.ok(
        &app.admin,
        "mutation($w: ID!) { reserveCredits(input: {walletId: $w, idempotencyKey: \"r\", amount: \"25\", ttlSeconds: 3600}) { id } }",
        json!({ "w": w }),
    )
    .await;
    assert_eq!(next(&mut ws).await["cause"], "RESERVATION");
    app.ok(
        &app.admin,
        "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: \"4\", kind: PROMOTION, reason: \"r\", expiresAt: \"2027-03-10T18:00:00Z\"}) { id } }",
        json!({ "w": w }),
    )
    .await;
    assert_eq!(next(&mut ws).await["cause"], "GRANT");
    let d = app
        .ok(&app.admin, "mutation($w: ID!) { changePlan(walletId: $w, planId: \"free\") { scheduledPlan { id } } }", json!({ "w": w }))
        .await;
    assert_eq!(d["changePlan"]["scheduledPlan"]["id"], "free");
    assert_eq!(next(&mut ws).await["cause"], "PLAN_CHANGE");

    // One day on: the hold expires at 13:00, the lot at 18:00, the day resets at midnight.
    app.advance(86_400).await;
    let e = next(&mut ws).await;
    assert_eq!(
        (&e["cause"], &e["at"]),
        (&json!("RELEASE"), &json!("2027-03-10T13:00:00Z"))
    );
    assert_eq!(e["balance"]["reserved"], "0", "{e:#}");
    // The balance right after this record: the lot and the day are still there.
    assert_eq!(e["balance"]["total"], "524", "{e:#}");
    assert_eq!(e["balance"]["daily"]["nextResetAt"], "2027-03-11T00:00:00Z");
    let e = next(&mut ws).await;
    assert_eq!(
        (&e["cause"], &e["at"]),
        (&json!("EXPIRY"), &json!("2027-03-10T18:00:00Z"))
    );
    assert_eq!(e["balance"]["total"], "520");
    assert_eq!(e["balance"]["bonus"]["grants"], json!([]));
    let e = next(&mut ws).await;
    assert_eq!(
        (&e["cause"], &e["at"]),
        (&json!("DAILY_RESET"), &json!("2027-03-11T00:00:00Z"))
    );

    // To the period end (Apr 10 12:00): 30 more resets, then the renewal onto `free`.
    app.advance(30 * 86_400).await;
    for day in 12..=40 {
        let e = next(&mut ws).await;
        assert_eq!(e["cause"], "DAILY_RESET", "day {day}: {e}");
    }
    // Apr 10 00:00 is the 30th reset; the renewal follows at 12:00.
    let e = next(&mut ws).await;
    assert_eq!(e["cause"], "DAILY_RESET");
    assert_eq!(e["at"], "2027-04-10T00:00:00Z");
    let e = next(&mut ws).await;
    assert_eq!(
        (&e["cause"], &e["at"]),
        (&json!("RENEWAL"), &json!("2027-04-10T12:00:00Z"))
    );
    assert_eq!(e["balance"]["subscription"]["allowance"], "0");
    assert_eq!(
        e["balance"]["subscription"]["periodEnd"],
        "2027-05-10T12:00:00Z"
    );
    // The daily bucket keeps its remaining until the next reset.
    assert_eq!(e["balance"]["daily"]["remaining"], "20");
    let d = app
        .ok(
            &app.admin,
            "query($w: ID!) { wallet(id: $w) { plan { id } scheduledPlan { id } } }",
            json!({ "w": w }),
        )
        .await;
    assert_eq!(
        d["wallet"],
        json!({ "plan": { "id": "free" }, "scheduledPlan": null })
    );
}

/// What `graphql-transport-ws` asks of a server beyond subscribing: pong, a completed id
/// freed for reuse (and nothing more said of it), a refused operation as `error`, and the
/// close codes for a client that breaks the
/// protocol (the legacy protocol reports a `connection_error` first).
async fn protocol_messages_and_close_codes(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let auth = json!({ "Authorization": format!("Bearer {}", app.admin) });
    // Never initialised: closed when `connection_init` is 10 s overdue (checked last).
    let mut idle = Ws::open(&app, "graphql-transport-ws").await;
    let opened = tokio::time::Instant::now();
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");

    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.recv().await.unwrap(), json!({ "type": "pong" }));

    // Completed by the client: nothing more about it (found by review: the server echoed
    // `complete`, which ended a subscription the client had reopened under the same id
    // meanwhile), no event after it, and the id can be used again.
    ws.subscribe("a", BALANCE_CHANGED, json!({ "w": w })).await;
    assert_eq!(
        ws.next_data("a").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    ws.send(json!({ "id": "a", "type": "complete" })).await;
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.recv().await.unwrap(), json!({ "type": "pong" }));
    ws.subscribe("b", BALANCE_CHANGED, json!({ "w": w })).await;
    assert_eq!(
        ws.next_data("b").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    app.record(&w, "k1", "t", "economy-mini", 1_000, 200).await;
    assert_eq!(ws.next_data("b").await["balanceChanged"]["cause"], "USAGE");
    ws.subscribe("a", BALANCE_CHANGED, json!({ "w": w })).await;
    assert_eq!(
        ws.next_data("a").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );

    // A subscription refused before it runs (its document invalid) is one `error`
    // message, and nothing after it (found by review: it was `next` with errors, then
    // `complete`, which the protocol keeps for operations that ran).
    ws.subscribe("bad", "subscription { noSuchField }", json!({}))
        .await;
    let refused = ws.recv().await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "bad", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "INVALID_INPUT",
        "{refused}"
    );
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.recv().await.unwrap(), json!({ "type": "pong" }));
    // So is one of more than one root field, or one spread from a fragment (found by
    // review: each root field opened a stream of its own, a thousand under one operation's
    // count; a spread one opened none, and the subscription completed at once).
    for (id, doc, message) in [
        (
            "two",
            "subscription($w: ID!) { balanceChanged(walletId: $w) { seq } balanceChanged(walletId: $w) { seq } }",
            "a subscription selects exactly one root field",
        ),
        (
            "spread",
            "subscription($w: ID!) { ...F } fragment F on Subscription { balanceChanged(walletId: $w) { seq } }",
            "a subscription's root field is written out, not spread",
        ),
    ] {
        ws.subscribe(id, doc, json!({ "w": w })).await;
        let refused = ws.recv().await.unwrap();
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["id"], id, "{refused}");
        assert_eq!(
            refused["payload"][0]["extensions"]["code"], "INVALID_INPUT",
            "{refused}"
        );
        assert_eq!(refused["payload"][0]["message"], message);
    }
    // Fragments below the root field are fine.
    ws.subscribe(
        "one",
        "subscription($w: ID!) { balanceChanged(walletId: $w) { ...F } } fragment F on BalanceEvent { seq }",
        json!({ "w": w }),
    )
    .await;
    assert!(ws.next_data("one").await["balanceChanged"]["seq"].is_u64());

    // An id still open is a protocol error.
    ws.subscribe("a", BALANCE_CHANGED, json!({ "w": w })).await;
    assert_eq!(ws.close_code().await, Some(4409));

    // A ping before `connection_init` is answered, and the socket can still initialise.
    let mut pinged = Ws::open(&app, "graphql-transport-ws").await;
    pinged.send(json!({ "type": "ping" })).await;
    assert_eq!(pinged.recv().await.unwrap(), json!({ "type": "pong" }));
    pinged
        .send(json!({ "type": "connection_init", "payload": auth }))
        .await;
    assert_eq!(pinged.recv().await.unwrap()["type"], "connection_ack");

    // Subscribing before `connection_init`, initialising twice, or sending what is not a
    // protocol message closes the socket with the protocol's code.
    let mut early = Ws::open(&app, "graphql-transport-ws").await;
    early
        .subscribe("s", BALANCE_CHANGED, json!({ "w": w }))
        .await;
    assert_eq!(early.close_code().await, Some(4401));
    let (mut twice, _) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    twice
        .send(json!({ "type": "connection_init", "payload": auth }))
        .await;
    assert_eq!(twice.close_code().await, Some(4429));
    let (mut garbled, _) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    garbled.send(json!({ "type": "subscribe" })).await;
    assert_eq!(garbled.close_code().await, Some(4400));
    let (mut legacy, _) = Ws::connect(&app, "graphql-ws", &app.admin).await;
    // The legacy protocol's keepalive follows its ack (found by review: it was never sent,
    // and browsers cannot see WebSocket pings).
    assert_eq!(legacy.recv().await.unwrap(), json!({ "type": "ka" }));
    legacy.send(json!({ "type": "nonsense" })).await;
    let error = legacy.recv().await.unwrap();
    assert_eq!(error["type"], "connection_error", "{error}");
    // The legacy protocol reads on after a message it cannot read (found by review: the
    // socket was closed, and with it the client's other subscriptions).
    legacy
        .subscribe("s", BALANCE_CHANGED, json!({ "w": w }))
        .await;
    assert_eq!(
        legacy.next_data("s").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    // Before `connection_init`, it closes with the code (the reason cut to fit a close
    // frame: the parse error is longer).
    let mut early_legacy = Ws::open(&app, "graphql-ws").await;
    early_legacy.send(json!({ "type": "nonsense" })).await;
    let error = early_legacy.recv().await.unwrap();
    assert_eq!(error["type"], "connection_error", "{error}");
    assert_eq!(early_legacy.close_code().await, Some(4400));

    // The server keeps serving sockets that follow the protocol.
    let (mut fresh, _) = Ws::connect(&app, "graphql-ws", &app.admin).await;
    fresh
        .subscribe("s", BALANCE_CHANGED, json!({ "w": w }))
        .await;
    assert_eq!(
        fresh.next_data("s").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );

    tokio::time::sleep_until(opened + std::time::Duration::from_secs(8)).await;
    assert_eq!(idle.close_code().await, Some(4408));
    // Not before its time: a close sent earlier would have been read at once, at 8 s. (The
    // server's 10 s run from the upgrade, a little before `opened` on a loaded machine.)
    let waited = opened.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(8_500),
        "closed after {waited:?}"
    );
}

/// A member streaming a team pool keeps it only while they belong to the team: once
/// removed, the next event is FORBIDDEN, then `complete`. (Found by review: the removal
/// was only seen after `MEMBERSHIP_RECHECK`, so events of the next second still reached
/// the removed member.)
async fn a_removed_member_stops_receiving_the_pools_events(b: Backend) {
    let app = App::spawn(b).await;
    let (team, pool) = app.team("ann").await;
    let member =
        "mutation($t: ID!, $u: String!) { addTeamMember(teamId: $t, userId: $u) { userId } }";
    for user in ["bob", "cy"] {
        app.ok(&app.admin, member, json!({ "t": team, "u": user }))
            .await;
    }
    let spend = |key: &'static str| {
        let app = &app;
        let pool = pool.clone();
        async move {
            let r = app
                .gql(
                    &app.admin,
                    "mutation($p: ID!, $k: String!) { recordUsage(input: {walletId: $p, idempotencyKey: $k, threadId: \"t\", model: \"economy-mini\", inputTokens: 1, outputTokens: 1, memberId: \"cy\"}) { replayed } }",
                    json!({ "p": pool, "k": key }),
                )
                .await;
            assert!(r["errors"].is_null(), "{r}");
        }
    };
    let bob = app.token("USER", Some("bob")).await;
    let cy = app.token("USER", Some("cy")).await;
    let (mut bob_ws, init) = Ws::connect(&app, "graphql-transport-ws", &bob).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    let (mut cy_ws, _) = Ws::connect(&app, "graphql-transport-ws", &cy).await;
    for ws in [&mut bob_ws, &mut cy_ws] {
        ws.subscribe("p", BALANCE_CHANGED, json!({ "w": pool }))
            .await;
        assert_eq!(
            ws.next_data("p").await["balanceChanged"]["cause"],
            "SNAPSHOT"
        );
    }
    spend("k1").await;
    for ws in [&mut bob_ws, &mut cy_ws] {
        assert_eq!(ws.next_data("p").await["balanceChanged"]["cause"], "USAGE");
    }

    let remove = "mutation($t: ID!, $u: String!) { removeTeamMember(teamId: $t, userId: $u) }";
    app.ok(&app.admin, remove, json!({ "t": team, "u": "bob" }))
        .await;
    spend("k2").await;
    let refused = bob_ws.next("p").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    assert_eq!(
        bob_ws.recv().await.unwrap(),
        json!({ "id": "p", "type": "complete" })
    );
    // The member still in the team streams on.
    assert_eq!(
        cy_ws.next_data("p").await["balanceChanged"]["cause"],
        "USAGE"
    );
}

/// Found by review (Session 13): once team admins could read their members' reviews of
/// the pool, `reviewUpdated` checked that only when it started, so an admin removed from
/// the team still heard of the resolution (amount and note). An admin's standing is
/// checked again before each change.
async fn a_team_admin_removed_stops_hearing_of_a_members_review(b: Backend) {
    let app = App::spawn(b).await;
    let (team, pool) = app.team("ann").await;
    let member =
        "mutation($t: ID!, $u: String!) { addTeamMember(teamId: $t, userId: $u) { userId } }";
    app.ok(&app.admin, member, json!({ "t": team, "u": "bob" }))
        .await;
    let r = app
        .gql(
            &app.admin,
            "mutation($p: ID!) { recordUsage(input: {walletId: $p, idempotencyKey: \"k\", threadId: \"t\", model: \"economy-mini\", inputTokens: 1, outputTokens: 1, memberId: \"bob\"}) { replayed } }",
            json!({ "p": pool }),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let bob = app.token("USER", Some("bob")).await;
    let d = app.ok(&bob, REPORT, json!({ "w": pool, "t": "t" })).await;
    let id = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();

    let ann = app.token("USER", Some("ann")).await;
    let watch = "subscription($id: ID!) { reviewUpdated(reviewId: $id) { id status } }";
    let mut sockets = Vec::new();
    for token in [&ann, &bob] {
        let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", token).await;
        assert!(matches!(init, Init::Ack), "{init:?}");
        ws.subscribe("r", watch, json!({ "id": id })).await;
        assert_eq!(
            ws.next_data("r").await["reviewUpdated"]["status"],
            "SUBMITTED"
        );
        sockets.push(ws);
    }
    // Another admin takes over; ann leaves the team.
    app.ok(
        &app.admin,
        "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"dee\", role: ADMIN) { userId } }",
        json!({ "t": team }),
    )
    .await;
    let remove = "mutation($t: ID!, $u: String!) { removeTeamMember(teamId: $t, userId: $u) }";
    app.ok(&app.admin, remove, json!({ "t": team, "u": "ann" }))
        .await;
    app.ok(
        &app.admin,
        RESOLVE,
        json!({ "i": { "reviewId": id, "decision": "REJECT", "note": "no" } }),
    )
    .await;
    let refused = sockets[0].next("r").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    // The reporter hears of it.
    assert_eq!(
        sockets[1].next_data("r").await["reviewUpdated"]["status"],
        "REJECTED"
    );
}

/// Found by review: there was no way to revoke a token, and a WebSocket kept the caller
/// it authenticated at `connection_init` for ever. `revokeApiToken` (ADMIN) deletes the
/// token: HTTP refuses it at once, and an open socket is closed (4403) at its next
/// keepalive ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_and_its_websocket_closed() {
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(crate::helpers::START),
        &[("CREDITD_WS_KEEPALIVE", "1")],
    )
    .await;
    let w = app.wallet("alice", "pro").await;
    let alice = app.token("USER", Some("alice")).await;
    let kept = app.token("USER", Some("alice")).await;
    let mut sockets = Vec::new();
    for token in [&alice, &kept] {
        let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", token).await;
        assert!(matches!(init, Init::Ack), "{init:?}");
        ws.subscribe("b", BALANCE_CHANGED, json!({ "w": w })).await;
        assert_eq!(
            ws.next_data("b").await["balanceChanged"]["cause"],
            "SNAPSHOT"
        );
        sockets.push(ws);
    }
    let revoke = "mutation($t: String!) { revokeApiToken(token: $t) }";
    let service = app.token("SERVICE", None).await;
    assert_eq!(
        app.code(&service, revoke, json!({ "t": alice })).await,
        "FORBIDDEN"
    );
    let d = app.ok(&app.admin, revoke, json!({ "t": alice })).await;
    assert_eq!(d["revokeApiToken"], true);
    let d = app.ok(&app.admin, revoke, json!({ "t": alice })).await;
    assert_eq!(d["revokeApiToken"], false, "already gone");
    assert_eq!(
        app.code(&alice, "{ viewer { role } }", json!({})).await,
        "UNAUTHENTICATED"
    );
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), sockets[0].close_code())
        .await
        .expect("closed at a keepalive ping");
    assert_eq!(closed, Some(4403));
    // The other token's socket still streams.
    app.record(&w, "k", "t", "standard-chat", 1000, 100).await;
    assert_eq!(
        sockets[1].next_data("b").await["balanceChanged"]["cause"],
        "USAGE"
    );
}

/// Found by review: between keepalive pings (30 s by default, up to an hour) a socket went
/// on running operations as the caller its revoked token had named at `connection_init`,
/// so a stolen ADMIN token could mint a new one after its revocation. Each operation now
/// looks the token up again, as each POST does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_runs_nothing_more_on_its_open_websocket() {
    let app = App::spawn(Backend::Sqlite).await;
    let w = app.wallet("alice", "pro").await;
    let stolen = app.token("ADMIN", None).await;
    let mut sockets = Vec::new();
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let (ws, init) = Ws::connect(&app, protocol, &stolen).await;
        assert!(matches!(init, Init::Ack), "{init:?}");
        sockets.push(ws);
    }
    let mint = "mutation { createApiToken(role: ADMIN) { token } }";
    let p = sockets[0].next_with("before", mint).await;
    assert!(p["data"]["createApiToken"]["token"].is_string(), "{p}");
    let revoke = "mutation($t: String!) { revokeApiToken(token: $t) }";
    let d = app.ok(&app.admin, revoke, json!({ "t": stolen })).await;
    assert_eq!(d["revokeApiToken"], true);
    let tokens = || async {
        use sea_orm::ConnectionTrait;
        let db = sea_orm::Database::connect(app.db.url.as_str())
            .await
            .unwrap();
        let sql = "SELECT COUNT(*) AS n FROM api_tokens";
        let row = db.query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ));
        row.await.unwrap().unwrap().try_get::<i64>("", "n").unwrap()
    };
    let before = tokens().await;
    for ws in &mut sockets {
        for (id, query) in [("mint", mint), ("read", "{ wallet(id: \"W\") { id } }")] {
            let p = ws.next_with(id, &query.replace('W', &w)).await;
            assert_eq!(
                p["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{p}"
            );
            assert!(p["data"].is_null(), "{p}");
        }
    }
    assert_eq!(
        tokens().await,
        before,
        "no token minted after the revocation"
    );
}

/// Found by review: an operation's id had no bound of its own (only the message's 256 KiB),
/// and a socket keeps the id of each open operation: 256 of them per socket. An id over
/// 128 bytes is an invalid message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_id_over_128_bytes_is_an_invalid_message() {
    let app = App::spawn(Backend::Sqlite).await;
    let w = app.wallet("alice", "pro").await;
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    let longest = "i".repeat(128);
    ws.subscribe(&longest, BALANCE_CHANGED, json!({ "w": w }))
        .await;
    assert_eq!(
        ws.next_data(&longest).await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    ws.subscribe(&"i".repeat(129), BALANCE_CHANGED, json!({ "w": w }))
        .await;
    assert_eq!(ws.close_code().await, Some(4400));
}

/// Found by review: nothing ended a WebSocket whose peer had gone without a word (a
/// sleeping laptop, a lost NAT entry). It kept its place under `--max-websockets`, and its
/// subscriptions kept their wallets in memory, for ever. The server now pings every
/// `--ws-keepalive` seconds and closes a socket that answered nothing for two of them; a
/// client that reads answers the pings and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_disconnected_and_a_live_one_kept() {
    use std::time::{Duration, Instant};
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(crate::helpers::START),
        &[
            ("CREDITD_MAX_WEBSOCKETS", "2"),
            ("CREDITD_WS_KEEPALIVE", "1"),
        ],
    )
    .await;
    let w = app.wallet("alice", "pro").await;
    let (mut live, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    let (mut silent, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    for ws in [&mut live, &mut silent] {
        ws.subscribe("b", BALANCE_CHANGED, json!({ "w": w })).await;
        assert_eq!(
            ws.next_data("b").await["balanceChanged"]["cause"],
            "SNAPSHOT"
        );
    }
    // `live` reads (so it answers pings) for 6 s; `silent` reads nothing, and is gone
    // after two pings (4 s).
    let until = Instant::now() + Duration::from_secs(6);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Ok(m) = tokio::time::timeout(left, live.recv()).await {
            panic!("the live socket got {m:?}");
        }
    }
    // The silent one has been let go: its place is free. (`live` is read between tries,
    // so it keeps answering pings.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_third, init) = loop {
        match Ws::try_connect(&app, "graphql-transport-ws", &app.admin).await {
            Ok(ws) => break ws,
            Err(status) => assert_eq!(status, 503),
        }
        assert!(
            Instant::now() < deadline,
            "the silent socket kept its place"
        );
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), live.recv()).await {
            panic!("the live socket got {m:?}");
        }
    };
    assert!(matches!(init, Init::Ack), "{init:?}");
    // The live one still streams.
    app.record(&w, "k", "t", "standard-chat", 1000, 100).await;
    assert_eq!(
        live.next_data("b").await["balanceChanged"]["cause"],
        "USAGE"
    );
    drop(silent);
}

/// Found by review (Sessions 11-13): a client that trickled its request headers a byte now
/// and then was never idle long enough for the read timeout, so it held a connection and a
/// task for as long as it liked (slowloris): axum's server set no header timeout. A
/// request head must now arrive whole within `--header-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(crate::helpers::START),
        &[("CREDITD_HEADER_TIMEOUT", "1")],
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "a trickling request head still holds its connection"
        );
        // One more header line every 200 ms: never silent, never done.
        if slow.write_all(b"X-Trickle: 1\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            // A 408 or the like, then the close.
            Ok(Ok(_)) => continue,
            Err(_) => continue,
        }
    };
    assert!(closed);
    // A request that completes its head in time is served as before.
    let ok = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

/// Found by review: nothing ended a connection that sent nothing (an idle keep-alive
/// connection, a client gone without a FIN, a request whose headers never end): each held
/// a socket and a task for ever. One silent for four keepalive periods is closed now; a
/// WebSocket whose peer answers the pings is never silent that long (test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(crate::helpers::START),
        &[("CREDITD_WS_KEEPALIVE", "1")],
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    half.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let opened = Instant::now();
    for socket in [&mut silent, &mut half] {
        let mut buf = [0u8; 1024];
        // Closed by the server: end of stream (or a reset), well before 10 s.
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "still open after {:?}: {read:?}",
            opened.elapsed()
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(3),
        "{:?}",
        opened.elapsed()
    );
}

/// The legacy protocol's keepalive `ka` follows the ack, then comes at least every
/// keepalive period (capped at 10 s, within its clients' usual 30 s timeout): one second
/// here. Browsers see no WebSocket pings, so a legacy client has only these to tell a live
/// connection from a dead one (found by review: `ka` was never sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_keepalives_come_every_period() {
    use std::time::{Duration, Instant};
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(crate::helpers::START),
        &[("CREDITD_WS_KEEPALIVE", "1")],
    )
    .await;
    let (mut ws, init) = Ws::connect(&app, "graphql-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    let started = Instant::now();
    let mut kas = 0;
    while kas < 3 {
        assert_eq!(ws.recv().await.unwrap(), json!({ "type": "ka" }));
        kas += 1;
    }
    // The first right after the ack, two more about a second apart.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "three ka in {took:?}");
}
