//! Authentication and ownership (SPEC 10).

use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::helpers::{App, Backend, error_code};
use crate::on_both;

on_both!(tokens_and_ownership_are_enforced);

async fn tokens_and_ownership_are_enforced(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let body = json!({ "query": "{ plans { id } }" });
    // Found by review: a body over the limit, or one that is no GraphQL at all, was
    // refused as INVALID_INPUT before the token was looked at (SPEC 10 puts
    // UNAUTHENTICATED first). The caller is authenticated before the body is read.
    let oversized = json!({ "query": format!("{{ plans {{ id }} }} #{}", "x".repeat(300 * 1024)) });
    for body in [&body, &oversized, &json!("not GraphQL")] {
        for token in [None, Some("not-a-token"), Some("")] {
            let (status, resp) = app.post(token, body).await;
            assert_eq!(status, 401, "{token:?}");
            assert_eq!(error_code(&resp), "UNAUTHENTICATED", "{token:?}");
            assert!(resp["data"].is_null());
        }
    }
    let (status, resp) = app.post(Some(&app.admin), &oversized).await;
    assert_eq!((status, error_code(&resp)), (413, "INVALID_INPUT".into()));

    let read = "query($id: ID!) { wallet(id: $id) { id balance { total } } }";
    let alice = app.token("USER", Some("alice")).await;
    let bob = app.token("USER", Some("bob")).await;
    let d = app.ok(&alice, read, json!({ "id": w })).await;
    assert_eq!(d["wallet"]["balance"]["total"], "520");
    assert_eq!(app.code(&bob, read, json!({ "id": w })).await, "FORBIDDEN");
    // Unknown ids read as null, for everyone.
    for token in [&alice, &app.admin] {
        let d = app.ok(token, read, json!({ "id": "wal_nope" })).await;
        assert_eq!(d["wallet"], json!(null));
    }
    // Users do not spend or grant; a service grants, but not ADMIN or COMPENSATION lots.
    let r = app.record(&w, "k", "t", "economy-mini", 1, 1).await;
    assert!(r["errors"].is_null(), "{r}");
    let usage = "mutation($w: ID!) { recordUsage(input: {walletId: $w, idempotencyKey: \"u\", threadId: \"t\", model: \"economy-mini\", inputTokens: 1, outputTokens: 1}) { replayed } }";
    assert_eq!(
        app.code(&alice, usage, json!({ "w": w })).await,
        "FORBIDDEN"
    );
    let grant = "mutation($w: ID!, $k: GrantKind!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g\", amount: 1, kind: $k, reason: \"r\"}) { kind } }";
    let service = app.token("SERVICE", None).await;
    for kind in ["ADMIN", "COMPENSATION"] {
        assert_eq!(
            app.code(&service, grant, json!({ "w": w, "k": kind }))
                .await,
            "FORBIDDEN"
        );
    }
    assert_eq!(
        app.code(&alice, grant, json!({ "w": w, "k": "PROMOTION" }))
            .await,
        "FORBIDDEN"
    );
    let d = app
        .ok(&service, grant, json!({ "w": w, "k": "PROMOTION" }))
        .await;
    assert_eq!(d["grantCredits"]["kind"], "PROMOTION");
    let bal = app.balance(&w).await;
    assert_eq!(bal["bonus"]["remaining"], "1");
    // Mutations on unknown wallets are NOT_FOUND.
    assert_eq!(
        app.code(
            &service,
            grant,
            json!({ "w": "wal_nope", "k": "PROMOTION" })
        )
        .await,
        "NOT_FOUND"
    );
    // A quote on another user's wallet is refused.
    let quote = "query($w: ID!) { quote(walletId: $w, model: \"economy-mini\", inputTokens: 1, outputTokens: 1) }";
    assert_eq!(app.code(&bob, quote, json!({ "w": w })).await, "FORBIDDEN");

    // A role that may never configure members is FORBIDDEN before its input is read
    // (SPEC 10's order: the role first, then INVALID_INPUT).
    let (team, _) = app.team("alice").await;
    for op in [
        "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"\") { userId } }",
        "mutation($t: ID!) { setMemberLimits(teamId: $t, userId: \"\", dailyLimit: 1) { userId } }",
        "mutation($t: ID!) { removeTeamMember(teamId: $t, userId: \"\") }",
    ] {
        assert_eq!(
            app.code(&service, op, json!({ "t": team })).await,
            "FORBIDDEN",
            "{op}"
        );
        assert_eq!(
            app.code(&alice, op, json!({ "t": team })).await,
            "INVALID_INPUT",
            "{op}"
        );
    }

    // A USER token whose owner id is gone (no command mints one) is refused, not read as
    // a token that may see every wallet.
    let carol = app.token("USER", Some("carol")).await;
    let db = sea_orm::Database::connect(&app.db.url).await.unwrap();
    db.execute_unprepared("UPDATE api_tokens SET owner_id = NULL WHERE owner_id = 'carol'")
        .await
        .unwrap();
    let (status, resp) = app
        .post(
            Some(&carol),
            &json!({ "query": read, "variables": { "id": w } }),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&resp), "UNAUTHENTICATED");
}
