//! Team pools: creation, member configuration, member spending and limits.

use serde_json::{Value, json};

use crate::helpers::{App, Backend};
use crate::on_both;

on_both!(
    teams_members_and_limits,
    plain_members_see_their_own_share,
    a_member_of_a_large_team_sees_their_own_row,
);

const MEMBERS: &str = "query($t: ID!) { team(id: $t) { id name wallet { id ownerId } members { userId role dailyLimit periodLimit spentToday spentThisPeriod } } }";

async fn pool_usage(
    app: &App,
    wallet: &str,
    key: &str,
    member: Option<&str>,
    output: i64,
) -> Value {
    app.gql(
        &app.admin,
        "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { usage { cost memberId } balance { total } } }",
        json!({ "i": { "walletId": wallet, "idempotencyKey": key, "threadId": "pool-thread",
            "model": "economy-mini", "inputTokens": 0, "outputTokens": output, "memberId": member } }),
    )
    .await
}

/// Found by review: a plain member's `members` was the team's first 10,000 rows filtered to
/// theirs, so a member added after them saw none. Their own row is read by key. Found by a
/// later review: a team grew without bound, and 100 aliases of its `members` fit the
/// complexity limit; a team now stops at 10,000 members and a request lists at most
/// 100,000 rows.
async fn a_member_of_a_large_team_sees_their_own_row(b: Backend) {
    use sea_orm::ConnectionTrait;
    let app = App::spawn(b).await;
    let (team, _pool) = app.team("alice").await;
    // 9,998 members added before bob, written straight into the table (quicker than
    // 9,998 mutations; nothing else reads these rows): with alice and bob, 10,000.
    let db = sea_orm::Database::connect(app.db.url.as_str())
        .await
        .unwrap();
    db.execute_unprepared(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9998) \
         INSERT INTO team_members (team_id, user_id, role, daily_limit_ucr, period_limit_ucr, added_us) \
         SELECT '{team}', 'filler-' || i, 'MEMBER', NULL, NULL, i FROM n"
    ))
    .await
    .unwrap();
    let alice = app.token("USER", Some("alice")).await;
    app.ok(
        &alice,
        "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"bob\", dailyLimit: 3) { userId } }",
        json!({ "t": team }),
    )
    .await;
    let bob = app.token("USER", Some("bob")).await;
    let q = "query($t: ID!) { team(id: $t) { members { userId dailyLimit } } }";
    assert_eq!(
        app.ok(&bob, q, json!({ "t": team })).await["team"]["members"],
        json!([{ "userId": "bob", "dailyLimit": "3" }])
    );
    let add_carol = "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"carol\") { userId } }";
    let full = app.gql(&alice, add_carol, json!({ "t": team })).await;
    assert_eq!(crate::helpers::error_code(&full), "INVALID_INPUT", "{full}");
    assert!(
        full["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000 members"),
        "{full}"
    );
    // Ten full lists fit in one request; an eleventh is refused, the other ten still
    // answered (a query's fields run at once, so which one is refused varies).
    let eleven = app
        .gql(&alice, &member_lists(11), json!({ "t": team }))
        .await;
    let mut listed: Vec<_> = (0..11)
        .map(|i| {
            eleven["data"][format!("m{i}")]["members"]
                .as_array()
                .map(Vec::len)
        })
        .collect();
    listed.sort();
    let mut expected = vec![Some(10_000); 10];
    expected.insert(0, None);
    assert_eq!(listed, expected, "{}", eleven["errors"]);
    assert_eq!(crate::helpers::error_code(&eleven), "INVALID_INPUT");
    // Lists count the rows they answer, not the most they could (found by review: each
    // took 10,000 before it was read, so eleven lists of a one-member team were refused).
    let (small, _) = app.team("alice").await;
    let small_lists = app
        .ok(&alice, &member_lists(20), json!({ "t": small }))
        .await;
    for i in 0..20 {
        assert_eq!(
            small_lists[format!("m{i}")]["members"],
            json!([{ "userId": "alice" }])
        );
    }
    // A batch's operations share the bound: two of six lists each, ten answered in all.
    let op = json!({ "query": member_lists(6), "variables": { "t": team } });
    let (status, batch) = app.post(Some(&alice), &json!([op, op])).await;
    assert_eq!(status, 200, "{batch}");
    let answered = batch
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| (0..6).map(move |i| &r["data"][format!("m{i}")]["members"]))
        .filter(|m| m.as_array().is_some_and(|m| m.len() == 10_000))
        .count();
    assert_eq!(answered, 10);
    let members = app.ok(&alice, q, json!({ "t": team })).await;
    let members = members["team"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 10_000);
    assert!(members.iter().all(|m| m["userId"] != "carol"));
}

/// A query of `n` aliases `m0`… of team `$t`'s member list.
fn member_lists(n: usize) -> String {
    let lists: String = (0..n)
        .map(|i| format!("m{i}: team(id: $t) {{ members {{ userId }} }} "))
        .collect();
    format!("query($t: ID!) {{ {lists} }}")
}

async fn teams_members_and_limits(b: Backend) {
    let app = App::spawn(b).await;
    let create = "mutation($a: [String!]!) { createTeam(input: {name: \"Acme\", planId: \"team\", timezone: \"UTC\", adminUserIds: $a}) { id name wallet { id ownerId plan { id } balance { total } } members { userId role dailyLimit periodLimit spentToday } } }";
    assert_eq!(
        app.code(&app.admin, create, json!({ "a": [] })).await,
        "INVALID_INPUT"
    );
    let d = app.ok(&app.admin, create, json!({ "a": ["alice"] })).await;
    let team = &d["createTeam"];
    let team_id = team["id"].as_str().unwrap().to_owned();
    assert!(team_id.starts_with("team_"));
    let pool = team["wallet"]["id"].as_str().unwrap().to_owned();
    assert_eq!(team["wallet"]["ownerId"], team_id.as_str());
    assert_eq!(team["wallet"]["balance"]["total"], "10000");
    assert_eq!(
        team["members"],
        json!([{ "userId": "alice", "role": "ADMIN", "dailyLimit": null, "periodLimit": null, "spentToday": "0" }])
    );

    let alice = app.token("USER", Some("alice")).await;
    let bob = app.token("USER", Some("bob")).await;
    let add = "mutation($t: ID!, $u: String!, $d: Credits, $p: Credits) { addTeamMember(teamId: $t, userId: $u, dailyLimit: $d, periodLimit: $p) { userId role dailyLimit periodLimit spentToday spentThisPeriod } }";
    // A team admin (USER token) configures members.
    let d = app
        .ok(
            &alice,
            add,
            json!({ "t": team_id, "u": "bob", "d": "1", "p": "5" }),
        )
        .await;
    assert_eq!(
        d["addTeamMember"],
        json!({ "userId": "bob", "role": "MEMBER", "dailyLimit": "1", "periodLimit": "5", "spentToday": "0", "spentThisPeriod": "0" })
    );
    assert_eq!(
        app.code(&alice, add, json!({ "t": team_id, "u": "bob" }))
            .await,
        "INVALID_INPUT"
    );
    // A plain member may not; nor may a service, nor a stranger.
    assert_eq!(
        app.code(&bob, add, json!({ "t": team_id, "u": "carol" }))
            .await,
        "FORBIDDEN"
    );
    let service = app.token("SERVICE", None).await;
    assert_eq!(
        app.code(&service, add, json!({ "t": team_id, "u": "carol" }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        app.code(&app.admin, add, json!({ "t": "team_nope", "u": "carol" }))
            .await,
        "NOT_FOUND"
    );

    // Members spend from the pool: 0.8 credits, then 0.8 more would pass the daily 1.
    let r = pool_usage(&app, &pool, "m1", Some("bob"), 200_000).await;
    assert_eq!(r["data"]["recordUsage"]["usage"]["memberId"], "bob");
    assert_eq!(r["data"]["recordUsage"]["balance"]["total"], "9999.2");
    let r = pool_usage(&app, &pool, "m2", Some("bob"), 200_000).await;
    assert_eq!(crate::helpers::error_code(&r), "MEMBER_LIMIT_EXCEEDED");
    // Reaching the limit exactly is allowed.
    let r = pool_usage(&app, &pool, "m3", Some("bob"), 50_000).await;
    assert_eq!(r["data"]["recordUsage"]["balance"]["total"], "9999");
    let r = pool_usage(&app, &pool, "m4", Some("bob"), 1).await;
    assert_eq!(crate::helpers::error_code(&r), "MEMBER_LIMIT_EXCEEDED");
    // A pool needs a member, and only a member.
    let r = pool_usage(&app, &pool, "m5", None, 1).await;
    assert_eq!(crate::helpers::error_code(&r), "INVALID_INPUT");
    let r = pool_usage(&app, &pool, "m6", Some("mallory"), 1).await;
    assert_eq!(crate::helpers::error_code(&r), "FORBIDDEN");
    let personal = app.wallet("bob", "pro").await;
    let r = pool_usage(&app, &personal, "m7", Some("bob"), 1).await;
    assert_eq!(crate::helpers::error_code(&r), "INVALID_INPUT");
    // Reservations count against the limit too.
    let reserve = "mutation($i: ReserveInput!) { reserveCredits(input: $i) { id } }";
    let r = app
        .code(&app.admin, reserve, json!({ "i": { "walletId": pool, "idempotencyKey": "rv", "amount": "0.5", "ttlSeconds": 60, "memberId": "bob" } }))
        .await;
    assert_eq!(r, "MEMBER_LIMIT_EXCEEDED");
    assert_eq!(app.balance(&pool).await["total"], "9999");

    let d = app.ok(&alice, MEMBERS, json!({ "t": team_id })).await;
    let members = d["team"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[1]["spentToday"], "1");
    assert_eq!(members[1]["spentThisPeriod"], "1");
    // A plain member sees only themselves, and only their own pool usage.
    let d = app.ok(&bob, MEMBERS, json!({ "t": team_id })).await;
    assert_eq!(d["team"]["members"].as_array().unwrap().len(), 1);
    assert_eq!(d["team"]["members"][0]["userId"], "bob");
    let carol = app.token("USER", Some("carol")).await;
    assert_eq!(
        app.code(&carol, MEMBERS, json!({ "t": team_id })).await,
        "FORBIDDEN"
    );

    // Limits are replaced whole; omitted means none.
    let set = "mutation($t: ID!, $u: String!, $d: Credits) { setMemberLimits(teamId: $t, userId: $u, dailyLimit: $d) { userId dailyLimit periodLimit } }";
    let d = app
        .ok(&alice, set, json!({ "t": team_id, "u": "bob" }))
        .await;
    assert_eq!(
        d["setMemberLimits"],
        json!({ "userId": "bob", "dailyLimit": null, "periodLimit": null })
    );
    assert_eq!(
        app.code(&bob, set, json!({ "t": team_id, "u": "bob", "d": "9" }))
            .await,
        "FORBIDDEN"
    );
    let r = pool_usage(&app, &pool, "m8", Some("bob"), 250_000).await;
    assert_eq!(r["data"]["recordUsage"]["balance"]["total"], "9998");
    // 0 forbids spending.
    app.ok(&alice, set, json!({ "t": team_id, "u": "bob", "d": 0 }))
        .await;
    let r = pool_usage(&app, &pool, "m9", Some("bob"), 1).await;
    assert_eq!(crate::helpers::error_code(&r), "MEMBER_LIMIT_EXCEEDED");

    let remove = "mutation($t: ID!, $u: String!) { removeTeamMember(teamId: $t, userId: $u) }";
    assert_eq!(
        app.code(&bob, remove, json!({ "t": team_id, "u": "bob" }))
            .await,
        "FORBIDDEN"
    );
    let d = app
        .ok(&alice, remove, json!({ "t": team_id, "u": "bob" }))
        .await;
    assert_eq!(d["removeTeamMember"], true);
    let d = app
        .ok(&alice, remove, json!({ "t": team_id, "u": "bob" }))
        .await;
    assert_eq!(d["removeTeamMember"], false);
    // The last admin stays.
    assert_eq!(
        app.code(&alice, remove, json!({ "t": team_id, "u": "alice" }))
            .await,
        "INVALID_INPUT"
    );
    // A removed member's usage stays attributed to them.
    let d = app
        .ok(&app.admin, "query($w: ID!) { wallet(id: $w) { usageSummary(groupBy: MEMBER) { key credits events } } }", json!({ "w": pool }))
        .await;
    assert_eq!(
        d["wallet"]["usageSummary"],
        json!([{ "key": "bob", "credits": "2", "events": 3 }])
    );
}

async fn plain_members_see_their_own_share(b: Backend) {
    let app = App::spawn(b).await;
    let (team, pool) = app.team("alice").await;
    let alice = app.token("USER", Some("alice")).await;
    let bob = app.token("USER", Some("bob")).await;
    for user in ["bob", "carol"] {
        app.ok(
            &alice,
            "mutation($t: ID!, $u: String!) { addTeamMember(teamId: $t, userId: $u) { userId } }",
            json!({ "t": team, "u": user }),
        )
        .await;
    }
    pool_usage(&app, &pool, "b1", Some("bob"), 250_000).await;
    pool_usage(&app, &pool, "c1", Some("carol"), 500_000).await;
    let q = "query($w: ID!) { wallet(id: $w) { balance { total } usage { edges { node { memberId } } } usageSummary(groupBy: MEMBER) { key credits } } }";
    let d = app.ok(&bob, q, json!({ "w": pool })).await;
    assert_eq!(d["wallet"]["balance"]["total"], "9997");
    assert_eq!(
        d["wallet"]["usage"]["edges"],
        json!([{ "node": { "memberId": "bob" } }])
    );
    assert_eq!(
        d["wallet"]["usageSummary"],
        json!([{ "key": "bob", "credits": "1" }])
    );
    let d = app.ok(&alice, q, json!({ "w": pool })).await;
    assert_eq!(d["wallet"]["usage"]["edges"].as_array().unwrap().len(), 2);
    // A member quotes on the pool; only team admins change its zone.
    let quote = "query($w: ID!) { quote(walletId: $w, model: \"premium-max\", inputTokens: 0, outputTokens: 1) }";
    assert_eq!(
        app.ok(&bob, quote, json!({ "w": pool })).await["quote"],
        "0.0004"
    );
    let zone =
        "mutation($w: ID!) { setTimezone(walletId: $w, timezone: \"Asia/Tokyo\") { timezone } }";
    assert_eq!(
        app.code(&bob, zone, json!({ "w": pool })).await,
        "FORBIDDEN"
    );
    assert_eq!(
        app.ok(&alice, zone, json!({ "w": pool })).await["setTimezone"]["timezone"],
        "Asia/Tokyo"
    );
    // A member's filter for another member is ANDed with their own: nothing.
    let other = "query($w: ID!) { wallet(id: $w) { usage(filter: {memberId: \"carol\"}) { edges { node { memberId } } } } }";
    assert_eq!(
        app.ok(&bob, other, json!({ "w": pool })).await["wallet"]["usage"]["edges"],
        json!([])
    );
    // Found by review: a bad cursor there was no error, as it is everywhere else.
    let bad = "query($w: ID!) { wallet(id: $w) { usage(filter: {memberId: \"carol\"}, after: \"zz\") { edges { cursor } } } }";
    assert_eq!(
        app.code(&bob, bad, json!({ "w": pool })).await,
        "INVALID_INPUT"
    );
    // A member reports a pool thread they spent in; the review is theirs alone, and its
    // findings come from their own usage only (carol spent on the same thread).
    let d = app
        .ok(
            &bob,
            crate::reviews::REPORT,
            json!({ "w": pool, "t": "pool-thread" }),
        )
        .await;
    assert_eq!(d["reportHighUsage"]["findings"]["events"], 1);
    assert_eq!(d["reportHighUsage"]["findings"]["threadCredits"], "1");
    let id = d["reportHighUsage"]["id"].clone();
    let again = app
        .ok(
            &bob,
            crate::reviews::REPORT,
            json!({ "w": pool, "t": "pool-thread" }),
        )
        .await;
    assert_eq!(again["reportHighUsage"]["id"], id);
    // Another member with usage on the thread is not handed bob's open review.
    let carol = app.token("USER", Some("carol")).await;
    assert_eq!(
        app.code(
            &carol,
            crate::reviews::REPORT,
            json!({ "w": pool, "t": "pool-thread" })
        )
        .await,
        "FORBIDDEN"
    );
    let mallory = app.token("USER", Some("mallory")).await;
    assert_eq!(
        app.code(
            &mallory,
            crate::reviews::REPORT,
            json!({ "w": pool, "t": "pool-thread" })
        )
        .await,
        "FORBIDDEN"
    );
    let reviews = "query($w: ID!) { wallet(id: $w) { reviews { threadId } } }";
    assert_eq!(
        app.ok(&carol, reviews, json!({ "w": pool })).await["wallet"]["reviews"],
        json!([])
    );
    assert_eq!(
        app.ok(&bob, reviews, json!({ "w": pool })).await["wallet"]["reviews"],
        json!([{ "threadId": "pool-thread" }])
    );
    // Found by review: the contract's `Wallet.reviews` ("a plain team member sees only
    // their own") lets a team admin see every review of the pool, which SPEC 10 ("reviews
    // they filed") did not; the contract wins. So alice sees bob's review, may read it,
    // and her report of the thread is answered with it (SPEC 7: a new report returns the
    // open one), where it was FORBIDDEN.
    assert_eq!(
        app.ok(&alice, reviews, json!({ "w": pool })).await["wallet"]["reviews"],
        json!([{ "threadId": "pool-thread" }])
    );
    let read = "query($id: ID!) { review(id: $id) { id } }";
    assert_eq!(
        app.ok(&alice, read, json!({ "id": id })).await["review"]["id"],
        id
    );
    assert_eq!(
        app.code(&carol, read, json!({ "id": id })).await,
        "FORBIDDEN"
    );
    let d = app
        .ok(
            &alice,
            crate::reviews::REPORT,
            json!({ "w": pool, "t": "pool-thread" }),
        )
        .await;
    assert_eq!(d["reportHighUsage"]["id"], id);
    // Bob's review is credited: it covered bob's events only. Carol's report on the same
    // thread still suggests a refund for hers (twice bob's cost, twice his suggestion).
    let bob_refund = credits(&d["reportHighUsage"]["findings"]["suggestedRefund"]);
    assert!(bob_refund > 0, "{d}");
    let approve = json!({ "i": { "reviewId": id, "decision": "APPROVE", "amount": "0.5" } });
    app.ok(&app.admin, crate::reviews::RESOLVE, approve).await;
    let d = app
        .ok(
            &carol,
            crate::reviews::REPORT,
            json!({ "w": pool, "t": "pool-thread" }),
        )
        .await;
    assert_eq!(d["reportHighUsage"]["findings"]["threadCredits"], "2");
    assert_eq!(
        credits(&d["reportHighUsage"]["findings"]["suggestedRefund"]),
        2 * bob_refund,
        "{d}"
    );
    // Found by review: the pool's compensation lot, which every member sees in the
    // balance, named bob's thread in its reason. It names only the review.
    let lots = "query($w: ID!) { wallet(id: $w) { balance { bonus { grants { kind reason } } } } }";
    let grants =
        app.ok(&carol, lots, json!({ "w": pool })).await["wallet"]["balance"]["bonus"]["grants"]
            .clone();
    let reasons: Vec<&str> = grants
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["kind"] == "COMPENSATION")
        .map(|g| g["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 1, "{grants}");
    assert!(!reasons[0].contains("pool-thread"), "{reasons:?}");
}

/// A Credits value in micro-credits.
fn credits(v: &Value) -> i64 {
    let s = v.as_str().expect("a Credits string");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    whole.parse::<i64>().unwrap() * 1_000_000 + format!("{frac:0<6}").parse::<i64>().unwrap()
}
