//! Spending: quotes, usage and its idempotency, reservations, grants, bundles, history.

use serde_json::{Value, json};

use crate::helpers::{App, Backend, USAGE, WriteLock, error_code, tier_lib};
use crate::on_both;

on_both!(
    record_usage_costs_the_quote_and_replays,
    reservations_settle_release_and_expire,
    grants_expire_and_bundles_are_idempotent,
    usage_history_pages_filters_and_summaries,
    a_summary_larger_than_its_bound_is_refused_as_input,
    a_purchase_sent_many_times_at_once_buys_one_lot,
    a_retry_while_its_first_attempt_commits_gets_its_receipt,
);

fn charged(usage: &Value) -> Vec<(String, String)> {
    usage["charged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["bucket"].as_str().unwrap().to_owned(),
                c["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(bucket: &str, amount: &str) -> (String, String) {
    (bucket.to_owned(), amount.to_owned())
}

async fn record_usage_costs_the_quote_and_replays(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let quote = "query($w: ID!, $m: String!, $i: Int!, $o: Int!, $c: Int) { quote(walletId: $w, model: $m, inputTokens: $i, outputTokens: $o, cachedTokens: $c) }";
    // (800 × 30 + 200 × 3 + 500 × 150) µcr per token-million × 1e6 / 1e6 = 99_600 µcr.
    let alice = app.token("USER", Some("alice")).await;
    let q = app
        .ok(
            &alice,
            quote,
            json!({ "w": w, "m": "standard-chat", "i": 1000, "o": 500, "c": 200 }),
        )
        .await;
    assert_eq!(q["quote"], "0.0996");
    // One rounding, up: 1 cached token of economy-mini is 0.25 µcr → 1 µcr.
    let q = app
        .ok(
            &alice,
            quote,
            json!({ "w": w, "m": "economy-mini", "i": 1, "o": 0, "c": 1 }),
        )
        .await;
    assert_eq!(q["quote"], "0.000001");
    assert_eq!(
        app.balance(&w).await["total"],
        "520",
        "a quote changes nothing"
    );

    let record = format!(
        "mutation($i: RecordUsageInput!) {{ recordUsage(input: $i) {{ replayed usage {{ {USAGE} }} balance {{ ...Bal }} }} }}"
    );
    let input = json!({ "walletId": w, "idempotencyKey": "u1", "threadId": "t1",
        "model": "standard-chat", "inputTokens": 1000, "cachedTokens": 200, "outputTokens": 500 });
    let first = app.ok(&app.admin, &record, json!({ "i": input })).await["recordUsage"].clone();
    assert_eq!(first["replayed"], false);
    let u = &first["usage"];
    assert!(u["id"].as_str().unwrap().starts_with("use_"));
    assert_eq!(u["cost"], "0.0996");
    assert_eq!(u["uncollected"], "0");
    assert_eq!(u["idempotencyKey"], "u1");
    assert_eq!(u["memberId"], json!(null));
    assert_eq!(u["at"], "2027-03-10T12:00:00Z");
    assert!(u["pricedBy"].as_str().unwrap().starts_with("standard@"));
    assert_eq!(charged(u), [pair("DAILY", "0.0996")]);
    assert_eq!(first["balance"]["total"], "519.9004");
    assert_eq!(first["balance"]["daily"]["remaining"], "19.9004");

    // The same key and input: the original event, replayed, nothing charged again.
    let again = app.ok(&app.admin, &record, json!({ "i": input })).await["recordUsage"].clone();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["usage"], first["usage"]);
    assert_eq!(again["balance"]["total"], "519.9004");
    // The same key, other input: a conflict, nothing charged.
    let mut other = input.clone();
    other["outputTokens"] = json!(501);
    let resp = app.gql(&app.admin, &record, json!({ "i": other })).await;
    assert_eq!(error_code(&resp), "IDEMPOTENCY_CONFLICT");
    assert_eq!(app.balance(&w).await["total"], "519.9004");

    // A usage larger than the daily bucket spills into the subscription (30 credits).
    let r = app
        .record(&w, "u2", "t1", "standard-chat", 0, 200_000)
        .await;
    let u = &r["data"]["recordUsage"]["usage"];
    assert_eq!(u["cost"], "30");
    assert_eq!(
        charged(u),
        [pair("DAILY", "19.9004"), pair("SUBSCRIPTION", "10.0996")]
    );
    let bal = app.balance(&w).await;
    assert_eq!(bal["daily"]["remaining"], "0");
    assert_eq!(bal["subscription"]["remaining"], "489.9004");
    assert_eq!(bal["total"], "489.9004");
    assert_eq!(app.usage(&w).await.as_array().unwrap().len(), 2);
}

async fn reservations_settle_release_and_expire(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let reserve = "mutation($i: ReserveInput!) { reserveCredits(input: $i) { id walletId amount status expiresAt } }";
    let settle = format!(
        "mutation($i: SettleInput!) {{ settleReservation(input: $i) {{ replayed usage {{ {USAGE} }} balance {{ ...Bal }} }} }}"
    );
    let release =
        "mutation($id: ID!) { releaseReservation(id: $id) { id amount status expiresAt } }";

    let d = app
        .ok(&app.admin, reserve, json!({ "i": { "walletId": w, "idempotencyKey": "r1", "amount": "25", "ttlSeconds": 600 } }))
        .await;
    let r = &d["reserveCredits"];
    let rid = r["id"].as_str().unwrap().to_owned();
    assert!(rid.starts_with("res_"));
    assert_eq!(
        r,
        &json!({ "id": rid, "walletId": w, "amount": "25", "status": "ACTIVE", "expiresAt": "2027-03-10T12:10:00Z" })
    );
    // Held credits are in no bucket: 20 from daily, 5 from subscription.
    let bal = app.balance(&w).await;
    assert_eq!(
        (
            &bal["total"],
            &bal["reserved"],
            &bal["daily"]["remaining"],
            &bal["subscription"]["remaining"]
        ),
        (&json!("495"), &json!("25"), &json!("0"), &json!("495"))
    );

    // Settle for 15 credits: paid from the held daily part; the rest goes back.
    let input = json!({ "reservationId": rid, "threadId": "t1", "model": "standard-chat",
        "inputTokens": 0, "outputTokens": 100_000 });
    let d = app.ok(&app.admin, &settle, json!({ "i": input })).await;
    let s = &d["settleReservation"];
    assert_eq!(s["replayed"], false);
    assert_eq!(s["usage"]["cost"], "15");
    assert_eq!(s["usage"]["uncollected"], "0");
    assert_eq!(s["usage"]["idempotencyKey"], "r1");
    assert_eq!(charged(&s["usage"]), [pair("DAILY", "15")]);
    assert_eq!(
        (
            &s["balance"]["total"],
            &s["balance"]["reserved"],
            &s["balance"]["daily"]["remaining"]
        ),
        (&json!("505"), &json!("0"), &json!("5"))
    );
    // Settling again with the same input replays; other input conflicts; release refuses.
    let d = app.ok(&app.admin, &settle, json!({ "i": input })).await;
    assert_eq!(d["settleReservation"]["replayed"], true);
    assert_eq!(d["settleReservation"]["usage"], s["usage"]);
    let mut other = input.clone();
    other["outputTokens"] = json!(1);
    assert_eq!(
        app.code(&app.admin, &settle, json!({ "i": other })).await,
        "IDEMPOTENCY_CONFLICT"
    );
    assert_eq!(
        app.code(&app.admin, release, json!({ "id": rid })).await,
        "RESERVATION_NOT_ACTIVE"
    );
    assert_eq!(app.balance(&w).await["total"], "505");

    // Release gives everything back, and is idempotent.
    let d = app
        .ok(&app.admin, reserve, json!({ "i": { "walletId": w, "idempotencyKey": "r2", "amount": "7.5", "ttlSeconds": 60 } }))
        .await;
    let r2 = d["reserveCredits"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.balance(&w).await["reserved"], "7.5");
    let d1 = app.ok(&app.admin, release, json!({ "id": r2 })).await;
    assert_eq!(d1["releaseReservation"]["status"], "RELEASED");
    let d2 = app.ok(&app.admin, release, json!({ "id": r2 })).await;
    assert_eq!(d1, d2);
    let bal = app.balance(&w).await;
    assert_eq!(
        (&bal["total"], &bal["reserved"]),
        (&json!("505"), &json!("0"))
    );
    let mut settle_released = input.clone();
    settle_released["reservationId"] = json!(r2);
    assert_eq!(
        app.code(&app.admin, &settle, json!({ "i": settle_released }))
            .await,
        "RESERVATION_NOT_ACTIVE"
    );

    // A reservation expires at its TTL and frees its credits.
    let d = app
        .ok(&app.admin, reserve, json!({ "i": { "walletId": w, "idempotencyKey": "r3", "amount": 3, "ttlSeconds": 60 } }))
        .await;
    let r3 = d["reserveCredits"]["id"].as_str().unwrap().to_owned();
    app.advance(60).await;
    let bal = app.balance(&w).await;
    assert_eq!(
        (&bal["total"], &bal["reserved"]),
        (&json!("505"), &json!("0"))
    );
    assert_eq!(
        app.code(&app.admin, release, json!({ "id": r3 })).await,
        "RESERVATION_NOT_ACTIVE"
    );
    assert_eq!(
        app.code(&app.admin, release, json!({ "id": "res_nope" }))
            .await,
        "NOT_FOUND"
    );

    // What neither the hold nor the balance can pay is written off as uncollected:
    // a free wallet (5 daily) holds 5, then settles 8 credits of economy-mini.
    let f = app.wallet("bob", "free").await;
    let d = app
        .ok(&app.admin, reserve, json!({ "i": { "walletId": f, "idempotencyKey": "r1", "amount": "5", "ttlSeconds": 600 } }))
        .await;
    let rf = d["reserveCredits"]["id"].as_str().unwrap().to_owned();
    let d = app
        .ok(&app.admin, &settle, json!({ "i": { "reservationId": rf, "threadId": "t", "model": "economy-mini", "inputTokens": 0, "outputTokens": 2_000_000 } }))
        .await;
    let u = &d["settleReservation"]["usage"];
    assert_eq!((&u["cost"], &u["uncollected"]), (&json!("8"), &json!("3")));
    assert_eq!(charged(u), [pair("DAILY", "5")]);
    assert_eq!(d["settleReservation"]["balance"]["total"], "0");
}

async fn grants_expire_and_bundles_are_idempotent(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let grant = "mutation($i: GrantInput!) { grantCredits(input: $i) { id kind amount remaining reason grantedAt expiresAt } }";
    let d = app
        .ok(
            &app.admin,
            grant,
            json!({ "i": { "walletId": w, "idempotencyKey": "g1", "amount": "10",
            "kind": "PROMOTION", "reason": "launch", "expiresAt": "2027-03-20T00:00:00Z" } }),
        )
        .await;
    let g = &d["grantCredits"];
    assert!(g["id"].as_str().unwrap().starts_with("grt_"));
    assert_eq!(
        g,
        &json!({ "id": g["id"], "kind": "PROMOTION", "amount": "10", "remaining": "10",
            "reason": "launch", "grantedAt": "2027-03-10T12:00:00Z", "expiresAt": "2027-03-20T00:00:00Z" })
    );
    let d2 = app
        .ok(
            &app.admin,
            grant,
            json!({ "i": { "walletId": w, "idempotencyKey": "g2", "amount": 2,
            "kind": "COMPENSATION", "reason": "outage" } }),
        )
        .await;
    let bal = app.balance(&w).await;
    assert_eq!(bal["total"], "532");
    // Spend order: soonest expiry first, no expiry last.
    let ids: Vec<_> = bal["bonus"]["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].clone())
        .collect();
    assert_eq!(ids, [g["id"].clone(), d2["grantCredits"]["id"].clone()]);
    // A grant's expiry must be after now; PURCHASE comes only from bundles.
    for bad in [
        json!({ "walletId": w, "idempotencyKey": "g3", "amount": 1, "kind": "ADMIN", "reason": "x", "expiresAt": "2027-03-10T12:00:00Z" }),
        json!({ "walletId": w, "idempotencyKey": "g3", "amount": 1, "kind": "PURCHASE", "reason": "x" }),
        json!({ "walletId": w, "idempotencyKey": "g3", "amount": 0, "kind": "ADMIN", "reason": "x" }),
    ] {
        assert_eq!(
            app.code(&app.admin, grant, json!({ "i": bad })).await,
            "INVALID_INPUT",
            "{bad}"
        );
    }
    // Past its expiry the lot is gone (ten days on: the daily bucket has reset too).
    app.advance(10 * 86_400).await;
    let bal = app.balance(&w).await;
    assert_eq!(bal["bonus"]["remaining"], "2");
    assert_eq!(bal["total"], "522");

    let buy = "mutation($w: ID!, $b: ID!, $p: String!) { purchaseBundle(input: {walletId: $w, bundleId: $b, paymentReference: $p}) { id kind amount remaining expiresAt } }";
    let p1 = app
        .ok(
            &app.admin,
            buy,
            json!({ "w": w, "b": "credits-100", "p": "pay-1" }),
        )
        .await;
    assert_eq!(p1["purchaseBundle"]["kind"], "PURCHASE");
    assert_eq!(p1["purchaseBundle"]["amount"], "100");
    assert_eq!(p1["purchaseBundle"]["expiresAt"], json!(null));
    let p2 = app
        .ok(
            &app.admin,
            buy,
            json!({ "w": w, "b": "credits-100", "p": "pay-1" }),
        )
        .await;
    assert_eq!(
        p1, p2,
        "the same payment reference returns the original grant"
    );
    assert_eq!(app.balance(&w).await["total"], "622");
    let other = app.wallet("bob", "pro").await;
    assert_eq!(
        app.code(
            &app.admin,
            buy,
            json!({ "w": other, "b": "credits-100", "p": "pay-1" })
        )
        .await,
        "IDEMPOTENCY_CONFLICT"
    );
    assert_eq!(
        app.code(
            &app.admin,
            buy,
            json!({ "w": w, "b": "credits-500", "p": "pay-1" })
        )
        .await,
        "IDEMPOTENCY_CONFLICT"
    );
    assert_eq!(
        app.code(
            &app.admin,
            buy,
            json!({ "w": w, "b": "credits-7", "p": "pay-2" })
        )
        .await,
        "NOT_FOUND"
    );
    assert_eq!(app.balance(&other).await["total"], "520");
    assert_eq!(app.balance(&w).await["total"], "622");
}

async fn usage_history_pages_filters_and_summaries(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    // Two events at 12:00, three an hour later.
    let plan = [
        ("k1", "t1", "economy-mini", 0),
        ("k2", "t1", "standard-chat", 0),
        ("k3", "t2", "economy-mini", 3600),
        ("k4", "t2", "economy-mini", 0),
        ("k5", "t2", "standard-chat", 0),
    ];
    let mut ids = Vec::new();
    for (key, thread, model, advance) in plan {
        if advance > 0 {
            app.advance(advance).await;
        }
        let r = app.record(&w, key, thread, model, 1000, 1000).await;
        ids.push(
            r["data"]["recordUsage"]["usage"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page = "query($w: ID!, $f: UsageFilter, $n: Int, $a: String) { wallet(id: $w) { usage(filter: $f, first: $n, after: $a) { edges { cursor node { id threadId model at } } pageInfo { hasNextPage endCursor } } } }";
    let mut seen = Vec::new();
    let mut after = Value::Null;
    for expected_len in [2, 2, 1] {
        let d = app
            .ok(&app.admin, page, json!({ "w": w, "n": 2, "a": after }))
            .await;
        let conn = &d["wallet"]["usage"];
        let edges = conn["edges"].as_array().unwrap();
        assert_eq!(edges.len(), expected_len);
        seen.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap().to_owned()),
        );
        assert_eq!(
            conn["pageInfo"]["hasNextPage"],
            expected_len == 2 && seen.len() < 5
        );
        assert_eq!(
            conn["pageInfo"]["endCursor"],
            edges.last().unwrap()["cursor"]
        );
        after = conn["pageInfo"]["endCursor"].clone();
    }
    // Newest first.
    ids.reverse();
    assert_eq!(seen, ids);

    let count = |f: Value| {
        let app = &app;
        let w = w.clone();
        async move {
            let d = app.ok(&app.admin, page, json!({ "w": w, "f": f })).await;
            d["wallet"]["usage"]["edges"].as_array().unwrap().len()
        }
    };
    assert_eq!(count(json!({ "threadId": "t2" })).await, 3);
    assert_eq!(count(json!({ "model": "economy-mini" })).await, 3);
    assert_eq!(
        count(json!({ "threadId": "t2", "model": "standard-chat" })).await,
        1
    );
    assert_eq!(count(json!({ "from": "2027-03-10T13:00:00Z" })).await, 3);
    assert_eq!(count(json!({ "to": "2027-03-10T13:00:00Z" })).await, 2);
    // Found by review: bounds finer than a microsecond were cut down to one before the
    // store saw them, so events at 13:00:00 fell outside a `to` just after it, and inside
    // a `from` just after it.
    assert_eq!(
        count(json!({ "to": "2027-03-10T13:00:00.0000001Z" })).await,
        5
    );
    assert_eq!(
        count(json!({ "from": "2027-03-10T13:00:00.0000001Z" })).await,
        0
    );
    assert_eq!(count(json!({ "memberId": "nobody" })).await, 0);
    let long = "x".repeat(129);
    for f in [
        json!({ "threadId": "" }),
        json!({ "threadId": long }),
        json!({ "memberId": "" }),
        json!({ "memberId": long }),
    ] {
        assert_eq!(
            app.code(&app.admin, page, json!({ "w": w, "f": f })).await,
            "INVALID_INPUT",
            "{f}"
        );
    }
    for n in [101, -1] {
        assert_eq!(
            app.code(&app.admin, page, json!({ "w": w, "n": n })).await,
            "INVALID_INPUT"
        );
    }
    assert_eq!(
        app.code(&app.admin, page, json!({ "w": w, "a": "garbage" }))
            .await,
        "INVALID_INPUT"
    );

    // economy-mini 1000/1000: 1000 + 4000 µcr; standard-chat: 30_000 + 150_000 µcr.
    let summary = "query($w: ID!, $g: UsageGroupBy!, $t: UsageGroupBy, $from: DateTime) { wallet(id: $w) { usageSummary(groupBy: $g, thenBy: $t, from: $from) { key subKey credits events } } }";
    let d = app
        .ok(&app.admin, summary, json!({ "w": w, "g": "THREAD" }))
        .await;
    assert_eq!(
        d["wallet"]["usageSummary"],
        json!([
            { "key": "t1", "subKey": null, "credits": "0.185", "events": 2 },
            { "key": "t2", "subKey": null, "credits": "0.19", "events": 3 },
        ])
    );
    let d = app
        .ok(
            &app.admin,
            summary,
            json!({ "w": w, "g": "MODEL", "t": "THREAD" }),
        )
        .await;
    assert_eq!(
        d["wallet"]["usageSummary"],
        json!([
            { "key": "economy-mini", "subKey": "t1", "credits": "0.005", "events": 1 },
            { "key": "economy-mini", "subKey": "t2", "credits": "0.01", "events": 2 },
            { "key": "standard-chat", "subKey": "t1", "credits": "0.18", "events": 1 },
            { "key": "standard-chat", "subKey": "t2", "credits": "0.18", "events": 1 },
        ])
    );
    let d = app
        .ok(
            &app.admin,
            summary,
            json!({ "w": w, "g": "DAY", "from": "2027-03-10T13:00:00Z" }),
        )
        .await;
    assert_eq!(
        d["wallet"]["usageSummary"],
        json!([{ "key": "2027-03-10", "subKey": null, "credits": "0.19", "events": 3 }])
    );
    let d = app
        .ok(&app.admin, summary, json!({ "w": w, "g": "MEMBER" }))
        .await;
    assert_eq!(
        d["wallet"]["usageSummary"],
        json!([{ "key": "", "subKey": null, "credits": "0.375", "events": 5 }])
    );
}

/// A summary over more days than its bound is the request's fault (INVALID_INPUT, narrow
/// it with from/to), not an outage (UNAVAILABLE would be retried for ever).
async fn a_summary_larger_than_its_bound_is_refused_as_input(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "free").await;
    app.record(&w, "k1", "t", "economy-mini", 1, 1).await;
    // More than ten years later (the bound is 3,700 days).
    app.advance(3_800 * 86_400).await;
    let r = app.record(&w, "k2", "t", "economy-mini", 1, 1).await;
    assert!(r["errors"].is_null(), "{r}");
    let summary = "query($w: ID!, $from: DateTime) { wallet(id: $w) { usageSummary(groupBy: DAY, from: $from) { key events } } }";
    assert_eq!(
        app.code(&app.admin, summary, json!({ "w": w })).await,
        "INVALID_INPUT"
    );
    let d = app
        .ok(
            &app.admin,
            summary,
            json!({ "w": w, "from": r["data"]["recordUsage"]["usage"]["at"] }),
        )
        .await;
    assert_eq!(d["wallet"]["usageSummary"][0]["events"], 1);
}

/// SPEC 5: one payment reference buys one lot, however many copies of the purchase arrive
/// at once (a payment webhook delivered twice): every copy gets the same grant, none an
/// UNAVAILABLE, and a usage call beside them is not caught up in it.
async fn a_purchase_sent_many_times_at_once_buys_one_lot(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let buy = "mutation($w: ID!) { purchaseBundle(input: {walletId: $w, bundleId: \"credits-100\", paymentReference: \"pay-twice\"}) { id } }";
    for round in 0..3 {
        let calls = (0..8).map(|_| app.gql(&app.admin, buy, json!({ "w": w })));
        let key = format!("beside-{round}");
        let usage = app.record(&w, &key, "t", "economy-mini", 1, 1);
        let (bought, used) = futures::join!(futures::future::join_all(calls), usage);
        assert!(used["errors"].is_null(), "{used}");
        let ids: Vec<&Value> = bought
            .iter()
            .map(|r| {
                assert!(r["errors"].is_null(), "{r}");
                &r["data"]["purchaseBundle"]["id"]
            })
            .collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }
    let bal = app.balance(&w).await;
    assert_eq!(bal["bonus"]["grants"].as_array().unwrap().len(), 1);
    assert_eq!(bal["bonus"]["remaining"], "100");

    // One reference sent to two wallets at once: one of them buys the lot, every call on
    // the other is IDEMPOTENCY_CONFLICT (SPEC 5), never UNAVAILABLE, and a usage batched
    // beside them commits.
    let buy_as = "mutation($w: ID!, $r: String!) { purchaseBundle(input: {walletId: $w, bundleId: \"credits-100\", paymentReference: $r}) { id } }";
    let wallets = [
        app.wallet("bob", "pro").await,
        app.wallet("carol", "pro").await,
    ];
    for round in 0..3 {
        let reference = format!("pay-two-wallets-{round}");
        let calls = (0..8).map(|i| {
            app.gql(
                &app.admin,
                buy_as,
                json!({ "w": wallets[i % 2], "r": reference }),
            )
        });
        let key = format!("beside-two-{round}");
        let usage = app.record(&wallets[1], &key, "t", "economy-mini", 1, 1);
        let (bought, used) = futures::join!(futures::future::join_all(calls), usage);
        assert!(used["errors"].is_null(), "{used}");
        let mut winners = std::collections::BTreeSet::new();
        for (i, r) in bought.iter().enumerate() {
            if r["errors"].is_null() {
                winners.insert(i % 2);
            } else {
                assert_eq!(crate::helpers::error_code(r), "IDEMPOTENCY_CONFLICT", "{r}");
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {bought:?}");
    }
}

/// Found by review: a retry that arrived while its first attempt was being committed was
/// checked against the store, which still said ACTIVE (or had no record of the key), and
/// refused for what changed since: the reservation's expiry, a model gone in a reload.
/// The first attempt then succeeded. The retry now waits for it and gets its receipt.
async fn a_retry_while_its_first_attempt_commits_gets_its_receipt(b: Backend) {
    let plugins = tempfile::tempdir().unwrap();
    let economy = plugins
        .path()
        .join(tier_lib("economy").file_name().unwrap());
    std::fs::copy(tier_lib("economy"), &economy).unwrap();
    let app = App::spawn_with_plugins(b, plugins.path().to_owned()).await;
    let w = app.wallet("alice", "pro").await;
    let reserve = "mutation($i: ReserveInput!) { reserveCredits(input: $i) { id status } }";
    let held =
        json!({ "i": { "walletId": w, "idempotencyKey": "r1", "amount": "5", "ttlSeconds": 60 } });
    let d = app.ok(&app.admin, reserve, held.clone()).await;
    let rid = d["reserveCredits"]["id"].as_str().unwrap().to_owned();
    let settle = format!(
        "mutation($i: SettleInput!) {{ settleReservation(input: $i) {{ replayed usage {{ {USAGE} }} }} }}"
    );
    let input = json!({ "i": { "reservationId": rid, "threadId": "t", "model": "economy-mini",
        "inputTokens": 1000, "outputTokens": 1000 } });
    let not_yet = std::time::Duration::from_millis(500);

    // A settle decided before the expiry, retried after it while its commit waits.
    let lock = WriteLock::take(&app).await;
    let since = app.metric("credits_store_transactions_total").await;
    let first = app.gql(&app.admin, &settle, input.clone());
    tokio::pin!(first);
    let first_sent = async {
        app.wait_for_transactions(since, 1.0).await;
    };
    tokio::select! {
        r = &mut first => panic!("answered before it was durable: {r}"),
        () = first_sent => {}
    }
    // The clock moves at once; the sweep behind it waits for the lock like the commit.
    let advance = app.gql(
        &app.admin,
        "mutation { advanceClock(seconds: 120) }",
        json!({}),
    );
    tokio::pin!(advance);
    let expired = async {
        loop {
            // A replay of the reservation reads its status from the store.
            let d = app.ok(&app.admin, reserve, held.clone()).await;
            if d["reserveCredits"]["status"] == "EXPIRED" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        r = &mut advance => panic!("the clock's sweep finished behind the lock: {r}"),
        () = expired => {}
    }
    let retry = app.gql(&app.admin, &settle, input.clone());
    tokio::pin!(retry);
    if let Ok(r) = tokio::time::timeout(not_yet, &mut retry).await {
        panic!("the retry was answered before its first attempt was durable: {r}");
    }
    lock.release().await;
    let (first, retry, advance) = tokio::join!(first, retry, advance);
    assert!(advance["errors"].is_null(), "{advance}");
    let first = &first["data"]["settleReservation"];
    assert_eq!(first["replayed"], false, "{first}");
    let retry = &retry["data"]["settleReservation"];
    assert_eq!(retry["replayed"], true, "{retry}");
    assert_eq!(retry["usage"], first["usage"]);

    // A usage priced before a reload that takes its model away, retried after it.
    let lock = WriteLock::take(&app).await;
    let since = app.metric("credits_store_transactions_total").await;
    let first = app.record(&w, "u1", "t", "economy-mini", 1000, 1000);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => panic!("answered before it was durable: {r}"),
        () = app.wait_for_transactions(since, 1.0) => {}
    }
    std::fs::remove_file(&economy).unwrap();
    let d = app
        .ok(&app.admin, "mutation { reloadPricing { id } }", json!({}))
        .await;
    assert_eq!(d["reloadPricing"], json!([]));
    let retry = app.record(&w, "u1", "t", "economy-mini", 1000, 1000);
    tokio::pin!(retry);
    if let Ok(r) = tokio::time::timeout(not_yet, &mut retry).await {
        panic!("the retry was answered before its first attempt was durable: {r}");
    }
    lock.release().await;
    let (first, retry) = tokio::join!(first, retry);
    let first = &first["data"]["recordUsage"];
    assert_eq!(first["replayed"], false, "{first}");
    let retry = &retry["data"]["recordUsage"];
    assert_eq!(retry["replayed"], true, "{retry}");
    assert_eq!(retry["usage"], first["usage"]);
    // A call that is not a retry is refused as before.
    let r = app.record(&w, "u2", "t", "economy-mini", 1000, 1000).await;
    assert_eq!(error_code(&r), "UNKNOWN_MODEL");
}
