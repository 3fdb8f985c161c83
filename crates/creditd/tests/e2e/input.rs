//! Bad input is refused with the right code, and changes nothing (SPEC 1, 4, 10).

use serde_json::{Value, json};

use crate::helpers::{App, Backend, error_code};
use crate::on_both;

on_both!(
    bad_input_changes_nothing,
    request_limits,
    refused_batches_and_aliases_change_nothing,
    a_recorded_key_is_answered_before_other_checks,
);

async fn bad_input_changes_nothing(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let before = (app.balance(&w).await, app.usage(&w).await);
    let grant = "mutation($w: ID!, $a: Credits!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: $a, kind: ADMIN, reason: \"r\"}) { id } }";
    for amount in [
        json!("-1"),
        json!(-1),
        json!("1.0000000"),
        json!(1.5),
        json!("1e3"),
        json!("+1"),
        json!(" 1"),
        json!("."),
        json!("9223372036855"),
    ] {
        assert_eq!(
            app.code(&app.admin, grant, json!({ "w": w, "a": amount }))
                .await,
            "INVALID_INPUT",
            "amount {amount}"
        );
    }
    // Inline literals go through the same scalar.
    assert_eq!(
        app.code(&app.admin, "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: 2.5, kind: ADMIN, reason: \"r\"}) { id } }", json!({ "w": w })).await,
        "INVALID_INPUT"
    );
    let zone = "mutation($w: ID!) { setTimezone(walletId: $w, timezone: \"Mars/Olympus\") { id } }";
    assert_eq!(
        app.code(&app.admin, zone, json!({ "w": w })).await,
        "INVALID_INPUT"
    );
    let usage = |model: &str, input: i64, cached: i64, output: i64| {
        json!({ "i": { "walletId": w, "idempotencyKey": "u", "threadId": "t", "model": model,
            "inputTokens": input, "cachedTokens": cached, "outputTokens": output } })
    };
    let record = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { replayed } }";
    for (vars, code) in [
        (usage("nope-model", 1, 0, 1), "UNKNOWN_MODEL"),
        (usage("premium-max", 1, 0, 1), "MODEL_NOT_ALLOWED"),
        (
            usage("standard-chat", 0, 0, 10_000_000),
            "INSUFFICIENT_CREDITS",
        ),
        (usage("economy-mini", -1, 0, 1), "INVALID_INPUT"),
        (usage("economy-mini", 1, 2, 1), "INVALID_INPUT"),
    ] {
        assert_eq!(
            app.code(&app.admin, record, vars.clone()).await,
            code,
            "{vars}"
        );
    }
    let quote = "query($w: ID!, $m: String!) { quote(walletId: $w, model: $m, inputTokens: 1, outputTokens: 1) }";
    assert_eq!(
        app.code(&app.admin, quote, json!({ "w": w, "m": "nope-model" }))
            .await,
        "UNKNOWN_MODEL"
    );
    assert_eq!(
        app.code(&app.admin, quote, json!({ "w": w, "m": "premium-max" }))
            .await,
        "MODEL_NOT_ALLOWED"
    );
    let reserve = "mutation($w: ID!, $a: Credits!, $t: Int!) { reserveCredits(input: {walletId: $w, idempotencyKey: \"r\", amount: $a, ttlSeconds: $t}) { id } }";
    for (amount, ttl, code) in [
        (json!("1"), 0, "INVALID_INPUT"),
        (json!("1"), 3601, "INVALID_INPUT"),
        (json!("0"), 60, "INVALID_INPUT"),
        (json!("521"), 60, "INSUFFICIENT_CREDITS"),
    ] {
        assert_eq!(
            app.code(
                &app.admin,
                reserve,
                json!({ "w": w, "a": amount, "t": ttl })
            )
            .await,
            code,
            "{amount} {ttl}"
        );
    }
    let key = "x".repeat(129);
    let long_key = json!({ "i": { "walletId": w, "idempotencyKey": key, "threadId": "t",
        "model": "economy-mini", "inputTokens": 1, "outputTokens": 1 } });
    assert_eq!(
        app.code(&app.admin, record, long_key).await,
        "INVALID_INPUT"
    );
    // The refused key was not recorded: it works now.
    let ok = app.record(&w, "u", "t", "economy-mini", 0, 0).await;
    assert!(ok["errors"].is_null(), "{ok}");
    let after = (app.balance(&w).await, app.usage(&w).await);
    assert_eq!(before.0, after.0, "nothing charged");
    assert_eq!(
        after.1.as_array().unwrap().len(),
        1,
        "only the last, valid, call recorded"
    );
}

async fn request_limits(b: Backend) {
    let app = App::spawn(b).await;
    let post = |body: Value| {
        let app = &app;
        async move { app.post(Some(&app.admin), &body).await }
    };
    // Depth 13 (introspection types nest without end).
    let mut deep = String::from("name");
    for _ in 0..11 {
        deep = format!("ofType {{ {deep} }}");
    }
    let deep = format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}");
    let (_, resp) = post(json!({ "query": deep })).await;
    assert_eq!(error_code(&resp), "INVALID_INPUT", "{resp}");
    assert!(resp["data"].is_null());
    // 12 deep is fine.
    let mut ok = String::from("name");
    for _ in 0..7 {
        ok = format!("ofType {{ {ok} }}");
    }
    let ok = format!("{{ __schema {{ types {{ fields {{ type {{ {ok} }} }} }} }} }}");
    let (_, resp) = post(json!({ "query": ok })).await;
    assert!(resp["errors"].is_null(), "{resp}");

    let aliases = |n: usize| {
        let fields: Vec<String> = (0..n).map(|i| format!("a{i}: bundles {{ id }}")).collect();
        format!("{{ {} }}", fields.join(" "))
    };
    let (_, resp) = post(json!({ "query": aliases(101) })).await;
    assert_eq!(error_code(&resp), "INVALID_INPUT");
    let (_, resp) = post(json!({ "query": aliases(100) })).await;
    assert!(resp["errors"].is_null(), "{resp}");

    let one = json!({ "query": "{ bundles { id } }" });
    let (status, resp) = post(Value::Array(vec![one.clone(); 11])).await;
    assert_eq!(error_code(&resp), "INVALID_INPUT");
    assert_eq!(status, 400);
    let (_, resp) = post(Value::Array(vec![one.clone(); 10])).await;
    assert_eq!(resp.as_array().map(Vec::len), Some(10), "{resp}");

    for bad in [
        json!({ "query": "{ bundles { id " }),
        json!({ "query": "{ nope }" }),
        json!({ "query": "query($x: Int!) { bundles { id } }" }),
    ] {
        let (_, resp) = post(bad.clone()).await;
        assert_eq!(error_code(&resp), "INVALID_INPUT", "{bad}");
    }
    let (_, resp) =
        post(json!({ "query": format!("{{ plans {{ id }} }} # {}", "x".repeat(300 * 1024)) }))
            .await;
    assert_eq!(error_code(&resp), "INVALID_INPUT");
}

async fn refused_batches_and_aliases_change_nothing(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let grant = |key: String| {
        format!(
            "mutation {{ grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"{key}\", amount: 1, kind: ADMIN, reason: \"r\"}}) {{ id }} }}"
        )
    };
    let batch: Vec<Value> = (0..11)
        .map(|i| json!({ "query": grant(format!("b{i}")) }))
        .collect();
    let (_, resp) = app.post(Some(&app.admin), &Value::Array(batch)).await;
    assert_eq!(error_code(&resp), "INVALID_INPUT");
    let fields: Vec<String> = (0..101)
        .map(|i| format!("g{i}: grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"a{i}\", amount: 1, kind: ADMIN, reason: \"r\"}}) {{ id }}"))
        .collect();
    let (_, resp) = app
        .post(
            Some(&app.admin),
            &json!({ "query": format!("mutation {{ {} }}", fields.join(" ")) }),
        )
        .await;
    assert_eq!(error_code(&resp), "INVALID_INPUT");
    let (_, resp) = app
        .post(
            Some(&app.admin),
            &json!({ "query": format!("{} }}", grant("s".into())) }),
        )
        .await;
    assert_eq!(error_code(&resp), "INVALID_INPUT");
    // Found by review: a bad Credits or DateTime value was read only when its own field
    // ran, so the fields before it in the document had already been applied (and their
    // answers lost under `data: null`). Such a value is a validation error now, refused
    // before anything runs, with what the scalar accepts.
    for (bad, says) in [
        ("amount: \"1.0000000\"", "at most 6 fractional digits"),
        ("amount: 1, expiresAt: \"yesterday\"", "RFC 3339"),
    ] {
        let query = format!(
            "mutation {{ a: grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"v1\", amount: 1, kind: ADMIN, reason: \"r\"}}) {{ id }} b: grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"v2\", {bad}, kind: ADMIN, reason: \"r\"}}) {{ id }} }}"
        );
        let (_, resp) = app.post(Some(&app.admin), &json!({ "query": query })).await;
        assert_eq!(error_code(&resp), "INVALID_INPUT", "{resp}");
        assert!(resp["data"].is_null(), "{resp}");
        let message = resp["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{resp}");
    }
    assert_eq!(app.balance(&w).await["total"], "520");
    // A batch within the limit runs every operation.
    let batch: Vec<Value> = (0..2)
        .map(|i| json!({ "query": grant(format!("ok{i}")) }))
        .collect();
    let (_, resp) = app.post(Some(&app.admin), &Value::Array(batch)).await;
    assert_eq!(resp.as_array().map(Vec::len), Some(2), "{resp}");
    assert_eq!(app.balance(&w).await["total"], "522");
}

async fn a_recorded_key_is_answered_before_other_checks(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "free").await;
    // 5 credits: the whole free daily allowance.
    let first = app.record(&w, "k", "t", "economy-mini", 0, 1_250_000).await;
    assert_eq!(first["data"]["recordUsage"]["balance"]["total"], "0");
    // Nothing is left, yet the replay is answered; another call with the key conflicts
    // before pricing, plan or balance are looked at.
    let again = app.record(&w, "k", "t", "economy-mini", 0, 1_250_000).await;
    assert_eq!(again["data"]["recordUsage"]["replayed"], true);
    assert_eq!(
        again["data"]["recordUsage"]["usage"],
        first["data"]["recordUsage"]["usage"]
    );
    for model in ["nope-model", "premium-max", "economy-code"] {
        let r = app.record(&w, "k", "t", model, 0, 1_250_000).await;
        assert_eq!(error_code(&r), "IDEMPOTENCY_CONFLICT", "{model}");
    }
    // A refused call records no key: after a top-up the same key succeeds.
    let r = app.record(&w, "k2", "t", "economy-mini", 0, 1).await;
    assert_eq!(error_code(&r), "INSUFFICIENT_CREDITS");
    app.ok(
        &app.admin,
        "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: 1, kind: ADMIN, reason: \"r\"}) { id } }",
        json!({ "w": w }),
    )
    .await;
    let r = app.record(&w, "k2", "t", "economy-mini", 0, 1).await;
    assert_eq!(r["data"]["recordUsage"]["replayed"], false, "{r}");
    assert_eq!(r["data"]["recordUsage"]["balance"]["total"], "0.999996");
}
