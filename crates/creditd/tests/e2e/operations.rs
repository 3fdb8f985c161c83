//! Contract operations through HTTP.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn usage_is_priced_charged_and_replayed_by_key() {
    let s = Server::start().await;
    let w = s.wallet("alice", "pro", "Europe/Paris").await;
    assert_eq!(s.total(&w).await, "520");
    let quote = s.gql(ADMIN, "query($w: ID!) { quote(walletId: $w, model: \"standard-chat\", inputTokens: 10000, cachedTokens: 2000, outputTokens: 1000) }", json!({"w": w})).await;
    let first = s.usage(&w, "k1", "standard-chat").await;
    assert_eq!(
        first["usage"]["cost"], quote["quote"],
        "charged what was quoted"
    );
    assert_eq!(first["replayed"], false);
    assert!(
        first["usage"]["pricedBy"]
            .as_str()
            .unwrap()
            .starts_with("standard@")
    );
    assert_eq!(first["usage"]["charged"][0]["bucket"], "DAILY");
    let again = s.usage(&w, "k1", "standard-chat").await;
    assert_eq!(again["replayed"], true);
    assert_eq!(again["usage"]["id"], first["usage"]["id"]);
    assert_eq!(
        again["balance"]["total"], first["balance"]["total"],
        "nothing charged twice"
    );
    let q = "mutation($w: ID!) { recordUsage(input: {walletId: $w, idempotencyKey: \"k1\", threadId: \"other\", model: \"standard-chat\", inputTokens: 1, outputTokens: 1}) { replayed } }";
    assert_eq!(
        s.code(ADMIN, q, json!({"w": w})).await,
        "IDEMPOTENCY_CONFLICT"
    );
    let page = s.gql(ADMIN, "query($w: ID!) { wallet(id: $w) { usage(first: 5) { edges { node { id threadId } cursor } pageInfo { hasNextPage } } byModel: usageSummary(groupBy: MODEL) { key credits events } } }", json!({"w": w})).await;
    assert_eq!(
        page["wallet"]["usage"]["edges"].as_array().unwrap().len(),
        1
    );
    assert_eq!(page["wallet"]["byModel"][0]["key"], "standard-chat");
    assert_eq!(
        page["wallet"]["byModel"][0]["credits"],
        first["usage"]["cost"]
    );
}

#[tokio::test]
async fn reservations_grants_bundles_and_plans() {
    let s = Server::start().await;
    let w = s.wallet("bob", "free", "UTC").await;
    let r = s.gql(ADMIN, "mutation($w: ID!) { reserveCredits(input: {walletId: $w, idempotencyKey: \"r1\", amount: \"4\", ttlSeconds: 600}) { id status } }", json!({"w": w})).await;
    let rid = r["reserveCredits"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["reserveCredits"]["status"], "ACTIVE");
    let b = s
        .gql(
            ADMIN,
            "query($w: ID!) { wallet(id: $w) { balance { total reserved } } }",
            json!({"w": w}),
        )
        .await;
    assert_eq!(
        (
            b["wallet"]["balance"]["total"].as_str(),
            b["wallet"]["balance"]["reserved"].as_str()
        ),
        (Some("1"), Some("4"))
    );
    let settled = s
        .gql(ADMIN, "mutation($r: ID!) { settleReservation(input: {reservationId: $r, threadId: \"t\", model: \"economy-mini\", inputTokens: 1000, outputTokens: 100}) { replayed usage { cost uncollected } balance { reserved } } }", json!({"r": rid}))
        .await;
    assert_eq!(settled["settleReservation"]["balance"]["reserved"], "0");
    assert_eq!(
        s.code(
            ADMIN,
            "mutation($r: ID!) { releaseReservation(id: $r) { status } }",
            json!({"r": rid})
        )
        .await,
        "RESERVATION_NOT_ACTIVE"
    );

    let g = s.gql(ADMIN, "mutation($w: ID!) { grantCredits(input: {walletId: $w, idempotencyKey: \"g1\", amount: \"2.5\", kind: PROMOTION, reason: \"hi\", expiresAt: \"2030-01-01T00:00:00Z\"}) { id kind remaining expiresAt } }", json!({"w": w})).await;
    assert_eq!(g["grantCredits"]["remaining"], "2.5");
    let p = "mutation($w: ID!, $ref: String!) { purchaseBundle(input: {walletId: $w, bundleId: \"credits-100\", paymentReference: $ref}) { id kind amount } }";
    let p1 = s.gql(ADMIN, p, json!({"w": w, "ref": "pay-1"})).await;
    assert_eq!(p1["purchaseBundle"]["kind"], "PURCHASE");
    assert_eq!(
        s.gql(ADMIN, p, json!({"w": w, "ref": "pay-1"})).await,
        p1,
        "same payment, same grant"
    );
    let other = s.wallet("carol", "free", "UTC").await;
    assert_eq!(
        s.code(ADMIN, p, json!({"w": other, "ref": "pay-1"})).await,
        "IDEMPOTENCY_CONFLICT"
    );

    let plan = "mutation($id: ID!) { upsertPlan(input: {id: $id, name: \"X\", dailyCredits: \"1\", subscriptionCredits: \"100\", interval: MONTHLY, modelTiers: [\"economy\"]}) { id custom } }";
    assert_eq!(
        s.gql(ADMIN, plan, json!({"id": "acme"})).await["upsertPlan"]["custom"],
        true
    );
    assert_eq!(
        s.code(ADMIN, plan, json!({"id": "pro"})).await,
        "INVALID_INPUT"
    );
    let up = s.gql(ADMIN, "mutation($w: ID!) { changePlan(walletId: $w, planId: \"max\") { plan { id } scheduledPlan { id } } }", json!({"w": w})).await;
    assert_eq!(
        up["changePlan"]["plan"]["id"], "max",
        "an upgrade applies at once"
    );
    let down = s.gql(ADMIN, "mutation($w: ID!) { changePlan(walletId: $w, planId: \"pro\") { plan { id } scheduledPlan { id } } }", json!({"w": w})).await;
    assert_eq!(
        down["changePlan"]["scheduledPlan"]["id"], "pro",
        "a downgrade waits for the period end"
    );
    let tz = s.gql(ADMIN, "mutation($w: ID!) { setTimezone(walletId: $w, timezone: \"Asia/Kolkata\") { timezone } }", json!({"w": w})).await;
    assert_eq!(tz["setTimezone"]["timezone"], "Asia/Kolkata");
}

#[tokio::test]
async fn teams_limits_and_reviews() {
    let s = Server::start().await;
    let t = s.gql(ADMIN, "mutation { createTeam(input: {name: \"Acme\", planId: \"team\", timezone: \"UTC\", adminUserIds: [\"alice\"]}) { id wallet { id balance { total } } } }", json!({})).await;
    let team = t["createTeam"]["id"].as_str().unwrap().to_owned();
    let pool = t["createTeam"]["wallet"]["id"].as_str().unwrap().to_owned();
    assert_eq!(t["createTeam"]["wallet"]["balance"]["total"], "10000");
    let alice = s.token("USER", Some("alice")).await;
    let bob = s.token("USER", Some("bob")).await;
    s.gql(&alice, "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"bob\", dailyLimit: \"0.002\") { userId role } }", json!({"t": team})).await;
    let spend = "mutation($w: ID!, $k: String!, $m: String) { recordUsage(input: {walletId: $w, idempotencyKey: $k, threadId: \"loop\", model: \"economy-mini\", inputTokens: 1000, outputTokens: 100, memberId: $m}) { usage { cost } } }";
    s.gql(ADMIN, spend, json!({"w": pool, "k": "a", "m": "bob"}))
        .await;
    assert_eq!(
        s.code(ADMIN, spend, json!({"w": pool, "k": "b", "m": "bob"}))
            .await,
        "MEMBER_LIMIT_EXCEEDED"
    );
    assert_eq!(
        s.code(ADMIN, spend, json!({"w": pool, "k": "c", "m": "mallory"}))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.code(ADMIN, spend, json!({"w": pool, "k": "d", "m": null}))
            .await,
        "INVALID_INPUT"
    );
    assert_eq!(s.code(&bob, "mutation($t: ID!) { setMemberLimits(teamId: $t, userId: \"bob\", dailyLimit: \"100\") { userId } }", json!({"t": team})).await, "FORBIDDEN");
    let m = s.gql(&alice, "mutation($t: ID!) { setMemberLimits(teamId: $t, userId: \"bob\", dailyLimit: \"100\") { dailyLimit spentToday } }", json!({"t": team})).await;
    assert_eq!(m["setMemberLimits"]["dailyLimit"], "100");
    let members = s
        .gql(
            &bob,
            "query($t: ID!) { team(id: $t) { members { userId } } }",
            json!({"t": team}),
        )
        .await;
    assert_eq!(
        members["team"]["members"].as_array().unwrap().len(),
        1,
        "a plain member sees only themselves"
    );

    let report = "mutation($w: ID!) { reportHighUsage(input: {walletId: $w, threadId: \"loop\", taskDescription: \"x\", previewStatus: ERROR_LOOP}) { id status findings { events suggestedRefund } } }";
    let r = s.gql(&bob, report, json!({"w": pool})).await;
    let rid = r["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["reportHighUsage"]["findings"]["events"], 1);
    assert_eq!(
        s.gql(&bob, report, json!({"w": pool})).await["reportHighUsage"]["id"],
        rid,
        "one open review per thread"
    );
    assert_eq!(s.code(&bob, "mutation($r: ID!) { resolveReview(input: {reviewId: $r, decision: APPROVE, amount: \"1\"}) { status } }", json!({"r": rid})).await, "FORBIDDEN");
    let resolve = "mutation($r: ID!) { resolveReview(input: {reviewId: $r, decision: APPROVE, amount: \"1\"}) { status creditedGrant { kind amount } } }";
    let ok = s.gql(ADMIN, resolve, json!({"r": rid})).await;
    assert_eq!(ok["resolveReview"]["creditedGrant"]["kind"], "COMPENSATION");
    assert_eq!(
        s.gql(ADMIN, resolve, json!({"r": rid})).await,
        ok,
        "approving twice grants once"
    );
    let grants = s
        .gql(
            ADMIN,
            "query($w: ID!) { wallet(id: $w) { balance { bonus { grants { kind } } } } }",
            json!({"w": pool}),
        )
        .await;
    assert_eq!(
        grants["wallet"]["balance"]["bonus"]["grants"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let listed = s
        .gql(ADMIN, "{ reviews(status: CREDITED) { id } }", json!({}))
        .await;
    assert_eq!(listed["reviews"][0]["id"], rid);
}

#[tokio::test]
async fn restart_on_the_same_file_keeps_every_balance() {
    let s = Server::start().await;
    let w = s.wallet("alice", "max", "UTC").await;
    s.usage(&w, "k1", "premium-max").await;
    let before = s.total(&w).await;
    let s = s.restart().await;
    assert_eq!(s.total(&w).await, before);
    assert!(
        s.usage(&w, "k1", "premium-max").await["replayed"]
            .as_bool()
            .unwrap(),
        "keys survive a restart"
    );
}
