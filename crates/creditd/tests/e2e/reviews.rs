//! High-usage reports: filing, reading, the admin's list and resolution.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{App, Backend, Init, Ws};
use crate::on_both;

on_both!(
    report_read_and_resolve_reviews,
    concurrent_approvals_grant_exactly_once,
    an_interrupted_approval_is_completed_by_the_server,
    an_approval_the_wallet_cannot_take_is_refused_before_its_claim,
);

on_both!(a_thread_longer_than_the_analysis_reads_is_totalled_whole);

pub const REPORT: &str = "mutation($w: ID!, $t: String!) { reportHighUsage(input: {walletId: $w, threadId: $t, taskDescription: \"refactor\", previewStatus: ERROR_LOOP, threadLength: 5}) { id walletId threadId status note findings { threadCredits events suggestedRefund tips } creditedGrant { id } } }";
pub const RESOLVE: &str = "mutation($i: ResolveReviewInput!) { resolveReview(input: $i) { id status note creditedGrant { kind amount remaining } } }";

async fn report_read_and_resolve_reviews(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    for key in ["a", "b", "c"] {
        app.record(&w, key, "loop", "standard-chat", 10_000, 1000)
            .await;
    }
    let alice = app.token("USER", Some("alice")).await;
    let bob = app.token("USER", Some("bob")).await;
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "loop" })).await;
    let review = d["reportHighUsage"].clone();
    let id = review["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("rev_"));
    assert_eq!(review["status"], "SUBMITTED");
    assert_eq!(review["walletId"], w.as_str());
    assert_eq!(review["creditedGrant"], json!(null));
    // 3 × (10_000 × 30 + 1000 × 150) µcr = 1.35 credits.
    assert_eq!(review["findings"]["threadCredits"], "1.35");
    assert_eq!(review["findings"]["events"], 3);
    // One open review per thread: a new report returns it.
    let again = app.ok(&alice, REPORT, json!({ "w": w, "t": "loop" })).await;
    assert_eq!(again["reportHighUsage"]["id"], id.as_str());
    assert_eq!(
        app.code(&alice, REPORT, json!({ "w": w, "t": "no-usage" }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        app.code(&bob, REPORT, json!({ "w": w, "t": "loop" })).await,
        "FORBIDDEN"
    );

    let read = "query($id: ID!) { review(id: $id) { id status } }";
    let d = app.ok(&alice, read, json!({ "id": id })).await;
    assert_eq!(d["review"]["status"], "SUBMITTED");
    assert_eq!(app.code(&bob, read, json!({ "id": id })).await, "FORBIDDEN");
    let d = app.ok(&alice, read, json!({ "id": "rev_nope" })).await;
    assert_eq!(d["review"], json!(null));
    let list = "query($s: ReviewStatus) { reviews(status: $s) { id status } }";
    let d = app.ok(&app.admin, list, json!({})).await;
    assert_eq!(d["reviews"], json!([{ "id": id, "status": "SUBMITTED" }]));
    let d = app.ok(&app.admin, list, json!({ "s": "CREDITED" })).await;
    assert_eq!(d["reviews"], json!([]));
    assert_eq!(app.code(&alice, list, json!({})).await, "FORBIDDEN");
    let own = "query($w: ID!) { wallet(id: $w) { reviews { id status } } }";
    let d = app.ok(&alice, own, json!({ "w": w })).await;
    assert_eq!(
        d["wallet"]["reviews"],
        json!([{ "id": id, "status": "SUBMITTED" }])
    );

    let service = app.token("SERVICE", None).await;
    // An amount no wallet can hold is refused before the review is claimed: it can still
    // be approved below.
    assert_eq!(
        app.code(
            &app.admin,
            RESOLVE,
            json!({ "i": { "reviewId": id, "decision": "APPROVE", "amount": "3000000000000" } })
        )
        .await,
        "INVALID_INPUT"
    );
    // Only admins resolve; approval grants one COMPENSATION lot.
    let approve = json!({ "i": { "reviewId": id, "decision": "APPROVE", "amount": "1.25", "note": "sorry" } });
    assert_eq!(
        app.code(&service, RESOLVE, approve.clone()).await,
        "FORBIDDEN"
    );
    let d = app.ok(&app.admin, RESOLVE, approve.clone()).await;
    assert_eq!(
        d["resolveReview"],
        json!({ "id": id, "status": "CREDITED", "note": "sorry",
            "creditedGrant": { "kind": "COMPENSATION", "amount": "1.25", "remaining": "1.25" } })
    );
    let bal = app.balance(&w).await;
    assert_eq!(bal["bonus"]["remaining"], "1.25");
    // The same decision again returns it unchanged and grants nothing; another conflicts.
    let d2 = app.ok(&app.admin, RESOLVE, approve).await;
    assert_eq!(d, d2);
    let reject = json!({ "i": { "reviewId": id, "decision": "REJECT" } });
    assert_eq!(
        app.code(&app.admin, RESOLVE, reject).await,
        "IDEMPOTENCY_CONFLICT"
    );
    assert_eq!(app.balance(&w).await["bonus"]["remaining"], "1.25");
    let d = app.ok(&alice, own, json!({ "w": w })).await;
    assert_eq!(
        d["wallet"]["reviews"],
        json!([{ "id": id, "status": "CREDITED" }])
    );
    let d = app.ok(&app.admin, list, json!({ "s": "CREDITED" })).await;
    assert_eq!(d["reviews"], json!([{ "id": id, "status": "CREDITED" }]));

    // A rejection carries its note and grants nothing.
    app.record(&w, "d", "other", "economy-mini", 10, 10).await;
    let d = app
        .ok(&alice, REPORT, json!({ "w": w, "t": "other" }))
        .await;
    let id2 = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    let d = app
        .ok(
            &app.admin,
            RESOLVE,
            json!({ "i": { "reviewId": id2, "decision": "REJECT", "note": "as expected" } }),
        )
        .await;
    assert_eq!(
        d["resolveReview"],
        json!({ "id": id2, "status": "REJECTED", "note": "as expected", "creditedGrant": null })
    );
    // Both filed at the same (manual) instant: the admin's list is oldest first, the
    // wallet's newest first, in filing order.
    let d = app.ok(&app.admin, "{ reviews { id } }", json!({})).await;
    assert_eq!(d["reviews"], json!([{ "id": id }, { "id": id2 }]));
    let d = app
        .ok(
            &alice,
            "query($w: ID!) { wallet(id: $w) { reviews { id } } }",
            json!({ "w": w }),
        )
        .await;
    assert_eq!(d["wallet"]["reviews"], json!([{ "id": id2 }, { "id": id }]));
    assert_eq!(
        app.code(
            &app.admin,
            RESOLVE,
            json!({ "i": { "reviewId": "rev_nope", "decision": "REJECT" } })
        )
        .await,
        "NOT_FOUND"
    );

    // A review a SERVICE token files belongs to no user, not even one whose id is the
    // role's name.
    app.record(&w, "e", "by-service", "standard-chat", 10_000, 1000)
        .await;
    let d = app
        .ok(&service, REPORT, json!({ "w": w, "t": "by-service" }))
        .await;
    let by_service = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    let named_service = app.token("USER", Some("SERVICE")).await;
    assert_eq!(
        app.code(&named_service, read, json!({ "id": by_service }))
            .await,
        "FORBIDDEN"
    );
    // The wallet's owner sees every review filed on it (the contract's `Wallet.reviews`),
    // this one too.
    let d = app.ok(&alice, read, json!({ "id": by_service })).await;
    assert_eq!(d["review"]["status"], "SUBMITTED");
    let d = app.ok(&service, read, json!({ "id": by_service })).await;
    assert_eq!(d["review"]["status"], "SUBMITTED");

    // A client's record under any key, even one spelled after the review, neither stands
    // in for the approval's grant nor blocks it: the review is credited with its own lot.
    app.record(&w, "s", "squat", "economy-mini", 10, 10).await;
    let d = app
        .ok(&alice, REPORT, json!({ "w": w, "t": "squat" }))
        .await;
    let squat = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    app.ok(
        &app.admin,
        "mutation($w: ID!, $k: String!) { grantCredits(input: {walletId: $w, idempotencyKey: $k, amount: \"0.000001\", kind: PROMOTION, reason: \"r\"}) { id } }",
        json!({ "w": w, "k": format!("review:{squat}") }),
    )
    .await;
    let lots =
        "query($w: ID!) { wallet(id: $w) { balance { bonus { grants { id kind amount } } } } }";
    let compensations = |d: Value| -> Vec<Value> {
        d["wallet"]["balance"]["bonus"]["grants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["kind"] == "COMPENSATION")
            .cloned()
            .collect()
    };
    let before = compensations(app.ok(&alice, lots, json!({ "w": w })).await);
    let approve = json!({ "i": { "reviewId": squat, "decision": "APPROVE", "amount": "0.5" } });
    for _ in 0..2 {
        let d = app.ok(&app.admin, RESOLVE, approve.clone()).await;
        assert_eq!(d["resolveReview"]["status"], "CREDITED");
        assert_eq!(
            d["resolveReview"]["creditedGrant"],
            json!({ "kind": "COMPENSATION", "amount": "0.5", "remaining": "0.5" })
        );
    }
    let after = compensations(app.ok(&alice, lots, json!({ "w": w })).await);
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert!(
        after
            .iter()
            .any(|g| g["amount"] == "0.5" && !before.contains(g))
    );

    // Found by review: a credited review covered the thread's events by time (up to its
    // filing instant), so events recorded later at the same instant (the manual clock
    // here; another node's clock ahead on the real one) counted as judged and were never
    // refunded. It covers the events it analysed, by ledger seq.
    for key in ["a2", "b2", "c2"] {
        app.record(&w, key, "loop", "standard-chat", 10_000, 1000)
            .await;
    }
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "loop" })).await;
    assert_eq!(d["reportHighUsage"]["findings"]["events"], 6);
    let refund = &d["reportHighUsage"]["findings"]["suggestedRefund"];
    assert_ne!(refund, "0", "{d}");
    // An amount no wallet can hold is INVALID_INPUT before the review is looked up.
    assert_eq!(
        app.code(
            &app.admin,
            RESOLVE,
            json!({ "i": { "reviewId": "rev_nope", "decision": "APPROVE", "amount": "3000000000000" } })
        )
        .await,
        "INVALID_INPUT"
    );
}

/// Found by review: an approval interrupted between claiming the review and finishing it
/// (here: claimed straight in the store, as by a call whose server then died) left the
/// review SUBMITTED for good unless an admin guessed the claimed amount. The server now
/// completes claimed approvals at start (and every minute). Found later: the sweep read
/// only the 100 oldest claimed approvals, so 100 that could never be completed (here: on
/// a wallet that does not exist) starved every newer one; it now reads every page.
async fn an_interrupted_approval_is_completed_by_the_server(b: Backend) {
    let mut app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    app.record(&w, "a", "t", "standard-chat", 10_000, 1000)
        .await;
    let alice = app.token("USER", Some("alice")).await;
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "t" })).await;
    let id = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    app.stop();
    let store = credits_store::Store::connect(&app.db.url).await.unwrap();
    let filed = store.review(&id).await.unwrap().unwrap();
    for i in 0..100 {
        let stuck = credits_store::ReviewRow {
            id: format!("rev_stuck_{i:03}"),
            wallet_id: "wal_gone".into(),
            thread_id: format!("t{i}"),
            created_at: filed.created_at - chrono::TimeDelta::seconds(1),
            ..filed.clone()
        };
        store.insert_review(&stuck).await.unwrap();
        let grant = credits_actors::ledger::new_ordered_id("grt");
        assert!(
            store
                .claim_review_approval(&stuck.id, 1, &grant, None)
                .await
                .unwrap()
        );
    }
    let grant = credits_actors::ledger::new_ordered_id("grt");
    assert!(
        store
            .claim_review_approval(&id, 700_000, &grant, Some("sorry"))
            .await
            .unwrap()
    );
    drop(store);
    app.start().await;
    let read =
        "query($id: ID!) { review(id: $id) { status note creditedGrant { id kind amount } } }";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let review = loop {
        let d = app.ok(&alice, read, json!({ "id": id })).await;
        if d["review"]["status"] != "SUBMITTED" {
            break d["review"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "still {d}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        review,
        json!({ "status": "CREDITED", "note": "sorry", "creditedGrant": { "id": grant, "kind": "COMPENSATION", "amount": "0.7" } })
    );
    assert_eq!(app.balance(&w).await["bonus"]["remaining"], "0.7");
}

/// Callers racing on one review: 20 admin calls at once, some approving the same amount,
/// some another amount, some rejecting (rounds differ in who is first). Whatever wins,
/// the review, the ledger and the balance agree: a CREDITED review has exactly one
/// COMPENSATION lot (one GRANT record) of its credited amount, a REJECTED one none; every
/// caller who asked for the winning decision gets that same review, every other caller
/// IDEMPOTENCY_CONFLICT; asking again after the race answers the same way and grants
/// nothing.
async fn concurrent_approvals_grant_exactly_once(b: Backend) {
    const CALLERS: usize = 20;
    const ADMINS: usize = 5;
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let alice = app.token("USER", Some("alice")).await;
    let mut admins = vec![app.admin.clone()];
    for _ in 1..ADMINS {
        admins.push(app.token("ADMIN", None).await);
    }
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &alice).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    ws.subscribe(
        "b",
        "subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause } }",
        json!({ "w": w }),
    )
    .await;
    assert_eq!(
        ws.next_data("b").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );

    let read = "query($id: ID!) { review(id: $id) { id status note creditedGrant { kind amount remaining } } }";
    // Round r: which decision each caller sends. Round 0: all approve 1.25. Round 1:
    // mostly 1.25, some 2. Round 2: approvals of two amounts and rejections.
    let decision = |round: usize, caller: usize| -> Value {
        match (round, caller % 4) {
            (0, _) | (1, 0..=2) | (2, 0 | 1) => json!({ "decision": "APPROVE", "amount": "1.25" }),
            (1, _) | (2, 2) => json!({ "decision": "APPROVE", "amount": "2" }),
            _ => json!({ "decision": "REJECT" }),
        }
    };
    let mut bonus_ucr: i64 = 0;
    for round in 0..3 {
        let thread = format!("race-{round}");
        for key in 0..3 {
            let r = app
                .record(
                    &w,
                    &format!("{thread}-{key}"),
                    &thread,
                    "standard-chat",
                    10_000,
                    1000,
                )
                .await;
            assert!(r.get("errors").is_none(), "{r}");
            assert_eq!(ws.next_data("b").await["balanceChanged"]["cause"], "USAGE");
        }
        let d = app.ok(&alice, REPORT, json!({ "w": w, "t": thread })).await;
        let id = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();

        let asks: Vec<Value> = (0..CALLERS)
            .map(|c| {
                let mut i = decision(round, c);
                i["reviewId"] = json!(id);
                i["note"] = json!(format!("caller {c}"));
                i
            })
            .collect();
        let answers = join_all(
            asks.iter()
                .enumerate()
                .map(|(c, i)| app.gql(&admins[c % ADMINS], RESOLVE, json!({ "i": i }))),
        )
        .await;

        let review = app.ok(&app.admin, read, json!({ "id": id })).await["review"].clone();
        let status = review["status"].as_str().unwrap().to_owned();
        assert_ne!(status, "SUBMITTED", "round {round}: nobody resolved it");
        let credited = review["creditedGrant"]["amount"]
            .as_str()
            .map(str::to_owned);
        // The decision that won, as a caller would have sent it.
        let won = |i: &Value| match i["decision"].as_str().unwrap() {
            "APPROVE" => status == "CREDITED" && i["amount"].as_str() == credited.as_deref(),
            _ => status == "REJECTED",
        };
        let mut winners = 0;
        for (i, answer) in asks.iter().zip(&answers) {
            if won(i) {
                let errors = answer.get("errors");
                assert!(
                    errors.is_none(),
                    "round {round}: {i} lost to its own decision: {answer}"
                );
                let got = &answer["data"]["resolveReview"];
                // Everyone gets the stored review (its note is the first resolver's).
                assert_eq!(got["id"], review["id"]);
                assert_eq!(got["status"], review["status"]);
                assert_eq!(got["note"], review["note"]);
                assert_eq!(got["creditedGrant"], review["creditedGrant"]);
                winners += 1;
            } else {
                assert_eq!(
                    crate::helpers::error_code(answer),
                    "IDEMPOTENCY_CONFLICT",
                    "round {round}: {i}: {answer}"
                );
            }
        }
        assert!(winners >= 1);

        // One GRANT record for an approval, none for a rejection: the next record after
        // the race is the sentinel usage.
        if status == "CREDITED" {
            let grant = &review["creditedGrant"];
            assert_eq!(grant["kind"], "COMPENSATION");
            assert_eq!(grant["remaining"], grant["amount"]);
            assert_eq!(ws.next_data("b").await["balanceChanged"]["cause"], "GRANT");
            bonus_ucr += match credited.as_deref() {
                Some("1.25") => 1_250_000,
                Some("2") => 2_000_000,
                other => panic!("credited {other:?}"),
            };
        } else {
            assert_eq!(review["creditedGrant"], json!(null));
        }
        app.record(
            &w,
            &format!("{thread}-after"),
            "other",
            "economy-mini",
            10,
            10,
        )
        .await;
        let next = ws.next_data("b").await["balanceChanged"].clone();
        assert_eq!(
            next["cause"], "USAGE",
            "round {round}: another record after the race, review {review}"
        );
        let bal = app.balance(&w).await;
        let lots: Vec<&Value> = bal["bonus"]["grants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["kind"] == "COMPENSATION")
            .collect();
        let total: i64 = lots
            .iter()
            .map(|g| credits_ucr(g["amount"].as_str().unwrap()))
            .sum();
        assert_eq!(total, bonus_ucr, "round {round}: lots {lots:?}");
        if let Some(id) = review["creditedGrant"]["id"].as_str() {
            assert_eq!(lots.iter().filter(|g| g["id"] == id).count(), 1);
        }

        // After the race: the winning decision again is answered with the same review,
        // anything else conflicts, and nothing more is granted.
        for (c, i) in asks.iter().enumerate() {
            let again = app
                .gql(&admins[c % ADMINS], RESOLVE, json!({ "i": i }))
                .await;
            if won(i) {
                let got = &again["data"]["resolveReview"];
                assert_eq!(got["status"], review["status"], "{again}");
                assert_eq!(got["creditedGrant"], review["creditedGrant"], "{again}");
            } else {
                assert_eq!(crate::helpers::error_code(&again), "IDEMPOTENCY_CONFLICT");
            }
        }
        let after = app.balance(&w).await;
        assert_eq!(after["bonus"], bal["bonus"], "round {round}: granted again");
    }
}

/// "1.25" → 1_250_000 µcr (canonical Credits strings of these tests only).
fn credits_ucr(s: &str) -> i64 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<6}");
    int.parse::<i64>().unwrap() * 1_000_000 + frac.parse::<i64>().unwrap()
}

/// An approval whose lot the wallet cannot take now (its grants already hold the most a
/// wallet may) is refused and changes nothing: the review is not claimed, so the admin may
/// still reject it, and no sweep grants it later.
async fn an_approval_the_wallet_cannot_take_is_refused_before_its_claim(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    app.record(&w, "a", "t", "standard-chat", 10_000, 1000)
        .await;
    let full = "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"full\", amount: \"2305843009213.693951\", kind: ADMIN, reason: \"r\"}) { id } }";
    app.ok(&app.admin, full, json!({ "w": w })).await;
    let alice = app.token("USER", Some("alice")).await;
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "t" })).await;
    let id = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    let approve = json!({ "i": { "reviewId": id, "decision": "APPROVE", "amount": "1" } });
    assert_eq!(
        app.code(&app.admin, RESOLVE, approve).await,
        "INVALID_INPUT"
    );
    let read = "query($id: ID!) { review(id: $id) { status creditedGrant { id } } }";
    assert_eq!(
        app.ok(&app.admin, read, json!({ "id": id })).await["review"],
        json!({ "status": "SUBMITTED", "creditedGrant": null })
    );
    let reject = json!({ "i": { "reviewId": id, "decision": "REJECT", "note": "no" } });
    let d = app.ok(&app.admin, RESOLVE, reject).await;
    assert_eq!(d["resolveReview"]["status"], "REJECTED");
}

/// Found by review: a thread of more events than an analysis reads
/// (`MAX_THREAD_EVENTS`, 10,000, its newest) was totalled from those alone: its
/// `threadCredits` and `events` left out its oldest events, and its costliest model (whose
/// peers its percentile is taken among) was chosen without them. They come from every event
/// of the thread now.
async fn a_thread_longer_than_the_analysis_reads_is_totalled_whole(b: Backend) {
    const EVENTS: usize = 10_000;
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    // The oldest event, the thread's costliest by far: 10,000 × 30 + 1,000 × 150 µcr.
    app.record(&w, "first", "long", "standard-chat", 10_000, 1000)
        .await;
    // Then 10,000 events of 1 input token on economy-mini, a hundred to a request.
    let documents: Vec<String> = (0..EVENTS / 100)
        .map(|d| {
            let calls: String = (0..100)
                .map(|i| {
                    format!(
                        "u{i}: recordUsage(input: {{walletId: \"{w}\", idempotencyKey: \"k{d}-{i}\", threadId: \"long\", model: \"economy-mini\", inputTokens: 1, outputTokens: 0}}) {{ replayed }} "
                    )
                })
                .collect();
            format!("mutation {{ {calls} }}")
        })
        .collect();
    for chunk in documents.chunks(4) {
        join_all(chunk.iter().map(|q| app.ok(&app.admin, q, json!({})))).await;
    }
    let read =
        "query($w: ID!) { wallet(id: $w) { usageSummary(groupBy: MODEL) { key credits events } } }";
    let summary = app.ok(&app.admin, read, json!({ "w": w })).await;
    let groups = summary["wallet"]["usageSummary"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let total: i64 = groups
        .iter()
        .map(|g| credits_ucr(g["credits"].as_str().unwrap()))
        .sum();
    let alice = app.token("USER", Some("alice")).await;
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "long" })).await;
    let findings = &d["reportHighUsage"]["findings"];
    assert_eq!(findings["events"], EVENTS + 1);
    assert_eq!(
        credits_ucr(findings["threadCredits"].as_str().unwrap()),
        total
    );
}
