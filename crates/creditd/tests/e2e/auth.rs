//! Authentication, roles and ownership; bad input gets a code and changes nothing.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn tokens_roles_and_ownership() {
    let s = Server::start().await;
    let (status, body) = s.raw(None, json!({"query": "{ viewer { role } }"})).await;
    assert_eq!(
        (status, body["errors"][0]["extensions"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (status, body) = s
        .raw(Some("nope"), json!({"query": "{ viewer { role } }"}))
        .await;
    assert_eq!(
        (status, body["errors"][0]["extensions"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );

    let w = s.wallet("alice", "pro", "UTC").await;
    let alice = s.token("USER", Some("alice")).await;
    let eve = s.token("USER", Some("eve")).await;
    let service = s.token("SERVICE", None).await;
    let v = s
        .gql(
            &alice,
            "{ viewer { role ownerId wallets { id } teams { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(v["viewer"]["wallets"][0]["id"], w.as_str());
    let v = s
        .gql(&service, "{ viewer { role wallets { id } } }", json!({}))
        .await;
    assert_eq!(
        (
            v["viewer"]["role"].as_str(),
            v["viewer"]["wallets"].as_array().unwrap().len()
        ),
        (Some("SERVICE"), 0)
    );
    let read = "query($w: ID!) { wallet(id: $w) { id } }";
    assert_eq!(s.code(&eve, read, json!({"w": w})).await, "FORBIDDEN");
    assert_eq!(
        s.gql(&eve, read, json!({"w": "wal_missing"})).await["wallet"],
        serde_json::Value::Null
    );
    assert_eq!(
        s.code(
            &alice,
            "mutation { createApiToken(role: ADMIN) { token } }",
            json!({})
        )
        .await,
        "FORBIDDEN"
    );
    let g = "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: \"1\", kind: ADMIN, reason: \"r\"}) { id } }";
    assert_eq!(s.code(&service, g, json!({"w": w})).await, "FORBIDDEN");
    assert_eq!(
        s.code(&service, "mutation { advanceClock(seconds: 1) }", json!({}))
            .await,
        "FORBIDDEN"
    );

    // A token minted on the command line authenticates.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_creditd"))
        .current_dir(s.dir.path())
        .args(["token", "create", "--role", "USER", "--owner", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        s.gql(&cli, "{ viewer { ownerId } }", json!({})).await["viewer"]["ownerId"],
        "alice"
    );
}

#[tokio::test]
async fn bad_input_gets_a_code_and_changes_nothing() {
    let s = Server::start().await;
    let w = s.wallet("alice", "free", "UTC").await;
    let grant = "mutation($w: ID!, $a: Credits!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: $a, kind: PROMOTION, reason: \"r\"}) { id } }";
    for amount in [
        json!("-1"),
        json!("1.0000001"),
        json!(1.5),
        json!("1e3"),
        json!("0"),
    ] {
        assert_eq!(
            s.code(ADMIN, grant, json!({"w": w, "a": amount})).await,
            "INVALID_INPUT",
            "amount {amount}"
        );
    }
    let usage = "mutation($w: ID!, $m: String!, $k: String!) { recordUsage(input: {walletId: $w, idempotencyKey: $k, threadId: \"t\", model: $m, inputTokens: 100000, outputTokens: 100000}) { replayed } }";
    assert_eq!(
        s.code(
            ADMIN,
            usage,
            json!({"w": w, "m": "no-such-model", "k": "a"})
        )
        .await,
        "UNKNOWN_MODEL"
    );
    assert_eq!(
        s.code(ADMIN, usage, json!({"w": w, "m": "premium-max", "k": "b"}))
            .await,
        "MODEL_NOT_ALLOWED"
    );
    let big = "mutation($w: ID!) { recordUsage(input: {walletId: $w, idempotencyKey: \"c\", threadId: \"t\", model: \"economy-mini\", inputTokens: 2000000000, outputTokens: 2000000000}) { replayed } }";
    assert_eq!(
        s.code(ADMIN, big, json!({"w": w})).await,
        "INSUFFICIENT_CREDITS"
    );
    let neg = "mutation($w: ID!) { recordUsage(input: {walletId: $w, idempotencyKey: \"d\", threadId: \"t\", model: \"economy-mini\", inputTokens: -1, outputTokens: 1}) { replayed } }";
    assert_eq!(s.code(ADMIN, neg, json!({"w": w})).await, "INVALID_INPUT");
    assert_eq!(s.code(ADMIN, "mutation { createWallet(input: {ownerId: \"x\", planId: \"pro\", timezone: \"Mars/Olympus\"}) { id } }", json!({})).await, "INVALID_INPUT");
    let ttl = "mutation($w: ID!) { reserveCredits(input: {walletId: $w, idempotencyKey: \"r\", amount: \"1\", ttlSeconds: 0}) { id } }";
    assert_eq!(s.code(ADMIN, ttl, json!({"w": w})).await, "INVALID_INPUT");
    assert_eq!(
        s.code(
            ADMIN,
            "mutation($w: ID!) { setTimezone(walletId: $w, timezone: \"UTC\") { id } }",
            json!({"w": "wal_missing"})
        )
        .await,
        "NOT_FOUND"
    );
    assert_eq!(s.total(&w).await, "5", "nothing changed");
    // GraphQL abuse: deeper than 12, more than 100 aliases, a syntax error, an 11-operation batch.
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {} name {} }} }} }} }}",
        "{ ofType ".repeat(9),
        "}".repeat(9)
    );
    assert_eq!(s.code(ADMIN, &deep, json!({})).await, "INVALID_INPUT");
    let aliases: String = (0..101)
        .map(|i| format!("a{i}: viewer {{ role }} "))
        .collect();
    assert_eq!(
        s.code(ADMIN, &format!("{{ {aliases} }}"), json!({})).await,
        "INVALID_INPUT"
    );
    assert_eq!(
        s.code(ADMIN, "{ viewer { role ", json!({})).await,
        "INVALID_INPUT"
    );
    let batch: Vec<_> = (0..11)
        .map(|_| json!({"query": "{ viewer { role } }"}))
        .collect();
    let (status, body) = s.raw(Some(ADMIN), serde_json::Value::Array(batch)).await;
    assert_eq!(
        (status, body["errors"][0]["extensions"]["code"].as_str()),
        (400, Some("INVALID_INPUT"))
    );
}

#[tokio::test]
async fn plugins_check_names_the_tier_or_the_bad_file() {
    let s = Server::start().await;
    let models = s
        .gql(ADMIN, "{ models { id tier pluginVersion } }", json!({}))
        .await;
    assert!(models["models"].as_array().unwrap().len() >= 9);
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_creditd"));
    let good = exe.parent().unwrap().join("libcredits_tier_standard.so");
    let out = std::process::Command::new(exe)
        .args(["plugins", "check"])
        .arg(&good)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("standard") && text.contains("standard-chat"),
        "{text}"
    );
    let bad = s.dir.path().join("libcredits_tier_bogus.so");
    std::fs::write(&bad, "not a library").unwrap();
    let out = std::process::Command::new(exe)
        .args(["plugins", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("libcredits_tier_bogus.so"));
    let reloaded = s
        .gql(ADMIN, "mutation { reloadPricing { id } }", json!({}))
        .await;
    assert_eq!(
        reloaded["reloadPricing"].as_array().unwrap().len(),
        models["models"].as_array().unwrap().len()
    );
}
