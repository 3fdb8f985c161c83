//! The access matrix (issue 10, item 5; SPEC 10): every query, mutation and subscription of
//! the contract × every kind of caller, checked end to end against one server, with the
//! expected result of each cell written out in one table. Then: tokens are stored only as
//! SHA-256 hashes and never appear in the server's log.

use serde_json::{Value, json};

use crate::helpers::{App, Backend, Init, Ws, error_code};
use crate::hostile::sql;
use crate::on_both;

on_both!(
    the_access_matrix_holds,
    tokens_are_stored_hashed_and_never_logged
);

const OK: &str = "ok";
const UA: &str = "UNAUTHENTICATED";
const FB: &str = "FORBIDDEN";

/// The callers, in the order of the table's columns.
const CALLERS: [&str; 8] = [
    "no token",
    "bad token",
    "ADMIN",
    "SERVICE",
    "USER owner",
    "USER stranger",
    "team admin",
    "team member",
];

/// Expected results: anonymous callers are refused, then one cell per role.
const STAFF_ONLY: [&str; 8] = [UA, UA, OK, OK, FB, FB, FB, FB];
const ADMIN_ONLY: [&str; 8] = [UA, UA, OK, FB, FB, FB, FB, FB];
const ANYONE: [&str; 8] = [UA, UA, OK, OK, OK, OK, OK, OK];
/// Alice's own wallet (and reviews she filed).
const OWNER: [&str; 8] = [UA, UA, OK, OK, OK, FB, FB, FB];
/// The team's pool, read by its members.
const TEAM: [&str; 8] = [UA, UA, OK, OK, FB, FB, OK, OK];
/// What only the team's admins (and ADMIN tokens) configure.
const TEAM_ADMIN: [&str; 8] = [UA, UA, OK, FB, FB, FB, OK, FB];
/// The pool's time zone: staff and team admins.
const TEAM_ADMIN_OR_STAFF: [&str; 8] = [UA, UA, OK, OK, FB, FB, OK, FB];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Query,
    Mutation,
    Subscription,
}

/// Every operation of the contract (some twice, on a personal wallet and on a pool, or
/// with a kind of grant a role may not give), with its expected row.
const MATRIX: &[(&str, Kind, [&str; 8])] = &[
    ("wallet", Kind::Query, OWNER),
    ("wallet(pool)", Kind::Query, TEAM),
    ("team", Kind::Query, TEAM),
    ("plans", Kind::Query, ANYONE),
    ("models", Kind::Query, ANYONE),
    ("bundles", Kind::Query, ANYONE),
    ("quote", Kind::Query, OWNER),
    ("quote(pool)", Kind::Query, TEAM),
    // SPEC 10: SERVICE may do everything but the listed fields; `review` is not among them.
    ("review", Kind::Query, OWNER),
    ("reviews", Kind::Query, ADMIN_ONLY),
    ("viewer", Kind::Query, ANYONE),
    ("createWallet", Kind::Mutation, STAFF_ONLY),
    ("setTimezone", Kind::Mutation, OWNER),
    ("setTimezone(pool)", Kind::Mutation, TEAM_ADMIN_OR_STAFF),
    ("recordUsage", Kind::Mutation, STAFF_ONLY),
    ("reserveCredits", Kind::Mutation, STAFF_ONLY),
    ("settleReservation", Kind::Mutation, STAFF_ONLY),
    ("releaseReservation", Kind::Mutation, STAFF_ONLY),
    ("grantCredits(PROMOTION)", Kind::Mutation, STAFF_ONLY),
    ("grantCredits(ADMIN)", Kind::Mutation, ADMIN_ONLY),
    ("grantCredits(COMPENSATION)", Kind::Mutation, ADMIN_ONLY),
    ("purchaseBundle", Kind::Mutation, STAFF_ONLY),
    ("upsertPlan", Kind::Mutation, ADMIN_ONLY),
    ("changePlan", Kind::Mutation, STAFF_ONLY),
    ("createTeam", Kind::Mutation, STAFF_ONLY),
    ("addTeamMember", Kind::Mutation, TEAM_ADMIN),
    ("setMemberLimits", Kind::Mutation, TEAM_ADMIN),
    ("removeTeamMember", Kind::Mutation, TEAM_ADMIN),
    ("reportHighUsage", Kind::Mutation, OWNER),
    ("reportHighUsage(pool)", Kind::Mutation, TEAM),
    ("resolveReview", Kind::Mutation, ADMIN_ONLY),
    ("createApiToken", Kind::Mutation, ADMIN_ONLY),
    ("revokeApiToken", Kind::Mutation, ADMIN_ONLY),
    ("reloadPricing", Kind::Mutation, ADMIN_ONLY),
    ("advanceClock", Kind::Mutation, ADMIN_ONLY),
    ("balanceChanged", Kind::Subscription, OWNER),
    ("balanceChanged(pool)", Kind::Subscription, TEAM),
    ("reviewUpdated", Kind::Subscription, OWNER),
];

/// The fixtures every cell works on.
struct World {
    /// Alice's wallet.
    wallet: String,
    team: String,
    pool: String,
    /// A review Alice filed on her wallet.
    review: String,
}

async fn world(app: &App) -> World {
    let wallet = app.wallet("alice", "pro").await;
    app.record(&wallet, "seed", "t-seed", "standard-chat", 1000, 1000)
        .await;
    let (team, pool) = app.team("tadmin").await;
    app.ok(
        &app.admin,
        "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"tmember\") { userId } }",
        json!({ "t": team }),
    )
    .await;
    let alice = app.token("USER", Some("alice")).await;
    let review = report(app, &alice, &wallet, "t-seed").await;
    World {
        wallet,
        team,
        pool,
        review,
    }
}

const REPORT: &str = "mutation($w: ID!, $t: String!) { reportHighUsage(input: {walletId: $w, threadId: $t, taskDescription: \"why\", previewStatus: OK}) { id } }";

async fn report(app: &App, token: &str, wallet: &str, thread: &str) -> String {
    let d = app
        .ok(token, REPORT, json!({ "w": wallet, "t": thread }))
        .await;
    d["reportHighUsage"]["id"].as_str().unwrap().to_owned()
}

async fn use_pool(app: &App, pool: &str, key: &str, thread: &str) {
    let r = app
        .gql(
            &app.admin,
            "mutation($p: ID!, $k: String!, $t: String!) { recordUsage(input: {walletId: $p, idempotencyKey: $k, threadId: $t, model: \"economy-mini\", inputTokens: 1, outputTokens: 1, memberId: \"tmember\"}) { replayed } }",
            json!({ "p": pool, "k": key, "t": thread }),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
}

async fn reserve(app: &App, wallet: &str, key: &str) -> String {
    let d = app
        .ok(
            &app.admin,
            "mutation($w: ID!, $k: String!) { reserveCredits(input: {walletId: $w, idempotencyKey: $k, amount: \"0.5\", ttlSeconds: 600}) { id } }",
            json!({ "w": wallet, "k": key }),
        )
        .await;
    d["reserveCredits"]["id"].as_str().unwrap().to_owned()
}

/// The request of one cell (`n` makes its keys and names unique), after whatever the admin
/// must set up for it to succeed when allowed.
async fn request(app: &App, w: &World, op: &str, n: usize) -> (String, Value) {
    let q = |s: &str| s.to_owned();
    match op {
        "wallet" => (
            q("query($w: ID!) { wallet(id: $w) { id balance { total } } }"),
            json!({ "w": w.wallet }),
        ),
        "wallet(pool)" => (
            q("query($w: ID!) { wallet(id: $w) { id balance { total } } }"),
            json!({ "w": w.pool }),
        ),
        "team" => (
            q("query($t: ID!) { team(id: $t) { id members { userId } } }"),
            json!({ "t": w.team }),
        ),
        "plans" => (q("{ plans { id } }"), json!({})),
        "models" => (q("{ models { id } }"), json!({})),
        "bundles" => (q("{ bundles { id } }"), json!({})),
        "quote" | "quote(pool)" => (
            q(
                "query($w: ID!) { quote(walletId: $w, model: \"economy-mini\", inputTokens: 1, outputTokens: 1) }",
            ),
            json!({ "w": if op == "quote" { &w.wallet } else { &w.pool } }),
        ),
        "review" => (
            q("query($r: ID!) { review(id: $r) { id status } }"),
            json!({ "r": w.review }),
        ),
        "reviews" => (q("{ reviews { id } }"), json!({})),
        "viewer" => (q("{ viewer { role ownerId } }"), json!({})),
        "createWallet" => (
            q(
                "mutation($o: String!) { createWallet(input: {ownerId: $o, planId: \"pro\", timezone: \"UTC\"}) { id } }",
            ),
            json!({ "o": format!("owner-{n}") }),
        ),
        "setTimezone" => {
            // A fresh wallet of Alice's each time, so every allowed call changes something.
            let mine = app.wallet("alice", "pro").await;
            (
                q(
                    "mutation($w: ID!) { setTimezone(walletId: $w, timezone: \"Europe/Paris\") { id timezone } }",
                ),
                json!({ "w": mine }),
            )
        }
        "setTimezone(pool)" => (
            q("mutation($w: ID!, $z: String!) { setTimezone(walletId: $w, timezone: $z) { id } }"),
            json!({ "w": w.pool, "z": (["Europe/Paris", "Asia/Tokyo"][n % 2]) }),
        ),
        "recordUsage" => (
            q(
                "mutation($w: ID!, $k: String!) { recordUsage(input: {walletId: $w, idempotencyKey: $k, threadId: \"t\", model: \"economy-mini\", inputTokens: 1, outputTokens: 1}) { replayed } }",
            ),
            json!({ "w": w.wallet, "k": format!("use-{n}") }),
        ),
        "reserveCredits" => (
            q(
                "mutation($w: ID!, $k: String!) { reserveCredits(input: {walletId: $w, idempotencyKey: $k, amount: \"0.5\", ttlSeconds: 60}) { id } }",
            ),
            json!({ "w": w.wallet, "k": format!("res-{n}") }),
        ),
        "settleReservation" => {
            let r = reserve(app, &w.wallet, &format!("settle-{n}")).await;
            (
                q(
                    "mutation($r: ID!) { settleReservation(input: {reservationId: $r, threadId: \"t\", model: \"economy-mini\", inputTokens: 1, outputTokens: 1}) { replayed } }",
                ),
                json!({ "r": r }),
            )
        }
        "releaseReservation" => {
            let r = reserve(app, &w.wallet, &format!("release-{n}")).await;
            (
                q("mutation($r: ID!) { releaseReservation(id: $r) { id status } }"),
                json!({ "r": r }),
            )
        }
        "grantCredits(PROMOTION)" | "grantCredits(ADMIN)" | "grantCredits(COMPENSATION)" => {
            let kind = &op["grantCredits(".len()..op.len() - 1];
            (
                q(
                    "mutation($w: ID!, $k: String!, $kind: GrantKind!) { grantCredits(input: {walletId: $w, idempotencyKey: $k, amount: 1, kind: $kind, reason: \"r\"}) { id } }",
                ),
                json!({ "w": w.wallet, "k": format!("grant-{n}"), "kind": kind }),
            )
        }
        "purchaseBundle" => (
            q(
                "mutation($w: ID!, $p: String!) { purchaseBundle(input: {walletId: $w, bundleId: \"credits-100\", paymentReference: $p}) { id } }",
            ),
            json!({ "w": w.wallet, "p": format!("pay-{n}") }),
        ),
        "upsertPlan" => (
            q(
                "mutation($id: ID!) { upsertPlan(input: {id: $id, name: \"P\", dailyCredits: 1, subscriptionCredits: 2, interval: MONTHLY, modelTiers: [\"economy\"]}) { id } }",
            ),
            json!({ "id": format!("plan-{n}") }),
        ),
        "changePlan" => {
            let mine = app.wallet("alice", "pro").await;
            (
                q("mutation($w: ID!) { changePlan(walletId: $w, planId: \"max\") { id } }"),
                json!({ "w": mine }),
            )
        }
        "createTeam" => (
            q(
                "mutation($a: String!) { createTeam(input: {name: \"T\", planId: \"team\", timezone: \"UTC\", adminUserIds: [$a]}) { id } }",
            ),
            json!({ "a": format!("boss-{n}") }),
        ),
        "addTeamMember" => (
            q(
                "mutation($t: ID!, $u: String!) { addTeamMember(teamId: $t, userId: $u, dailyLimit: 1) { userId } }",
            ),
            json!({ "t": w.team, "u": format!("new-{n}") }),
        ),
        "setMemberLimits" | "removeTeamMember" => {
            let user = format!("m-{n}");
            app.ok(
                &app.admin,
                "mutation($t: ID!, $u: String!) { addTeamMember(teamId: $t, userId: $u) { userId } }",
                json!({ "t": w.team, "u": user }),
            )
            .await;
            let query = if op == "setMemberLimits" {
                "mutation($t: ID!, $u: String!) { setMemberLimits(teamId: $t, userId: $u, dailyLimit: 2) { userId dailyLimit } }"
            } else {
                "mutation($t: ID!, $u: String!) { removeTeamMember(teamId: $t, userId: $u) }"
            };
            (q(query), json!({ "t": w.team, "u": user }))
        }
        "reportHighUsage" => {
            let thread = format!("rep-{n}");
            app.record(&w.wallet, &thread, &thread, "economy-mini", 1, 1)
                .await;
            (q(REPORT), json!({ "w": w.wallet, "t": thread }))
        }
        "reportHighUsage(pool)" => {
            let thread = format!("pool-rep-{n}");
            use_pool(app, &w.pool, &thread, &thread).await;
            (q(REPORT), json!({ "w": w.pool, "t": thread }))
        }
        "resolveReview" => {
            let thread = format!("res-{n}");
            app.record(&w.wallet, &thread, &thread, "economy-mini", 1, 1)
                .await;
            let review = report(app, &app.admin, &w.wallet, &thread).await;
            (
                q(
                    "mutation($r: ID!) { resolveReview(input: {reviewId: $r, decision: REJECT, note: \"no\"}) { id status } }",
                ),
                json!({ "r": review }),
            )
        }
        "createApiToken" => (
            q("mutation { createApiToken(role: SERVICE) { role } }"),
            json!({}),
        ),
        "revokeApiToken" => (
            q("mutation { revokeApiToken(token: \"not-a-token\") }"),
            json!({}),
        ),
        "reloadPricing" => (q("mutation { reloadPricing { id } }"), json!({})),
        "advanceClock" => (q("mutation { advanceClock(seconds: 1) }"), json!({})),
        "balanceChanged" | "balanceChanged(pool)" => (
            q("subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause } }"),
            json!({ "w": if op == "balanceChanged" { &w.wallet } else { &w.pool } }),
        ),
        "reviewUpdated" => (
            q("subscription($r: ID!) { reviewUpdated(reviewId: $r) { id status } }"),
            json!({ "r": w.review }),
        ),
        other => panic!("no request for {other}"),
    }
}

/// "ok" or the first error's code; an allowed cell must also return data.
fn outcome(resp: &Value) -> String {
    match resp["errors"].as_array() {
        Some(e) if !e.is_empty() => error_code(resp),
        _ if resp["data"]
            .as_object()
            .is_some_and(|d| d.values().all(|v| !v.is_null())) =>
        {
            OK.to_owned()
        }
        _ => format!("no data: {resp}"),
    }
}

async fn the_access_matrix_holds(b: Backend) {
    let app = App::spawn(b).await;
    let w = world(&app).await;
    let tokens: [Option<String>; 8] = [
        None,
        Some(format!("cr{}", crate::helpers::random_hex())),
        Some(app.admin.clone()),
        Some(app.token("SERVICE", None).await),
        Some(app.token("USER", Some("alice")).await),
        Some(app.token("USER", Some("bob")).await),
        Some(app.token("USER", Some("tadmin")).await),
        Some(app.token("USER", Some("tmember")).await),
    ];
    // One WebSocket per caller for every subscription row; an anonymous one is refused at
    // `connection_init`, which is that caller's answer to every subscription.
    let mut sockets = Vec::new();
    for t in &tokens {
        let (ws, init) =
            Ws::connect(&app, "graphql-transport-ws", t.as_deref().unwrap_or("")).await;
        sockets.push(match init {
            Init::Ack => Some(ws),
            Init::Refused(_) => None,
        });
    }

    let mut wrong = Vec::new();
    let mut n = 0;
    for (op, kind, expected) in MATRIX {
        for (c, caller) in CALLERS.iter().enumerate() {
            n += 1;
            let (query, vars) = request(&app, &w, op, n).await;
            let got = if *kind == Kind::Subscription {
                match &mut sockets[c] {
                    None => UA.to_owned(),
                    Some(ws) => {
                        let id = format!("s{n}");
                        ws.subscribe(&id, &query, vars).await;
                        outcome(&ws.next(&id).await)
                    }
                }
            } else {
                let (status, resp) = app
                    .post(
                        tokens[c].as_deref(),
                        &json!({ "query": query, "variables": vars }),
                    )
                    .await;
                let got = outcome(&resp);
                if got == UA {
                    assert_eq!(status, 401, "{op} as {caller}");
                }
                got
            };
            if got != expected[c] {
                wrong.push(format!(
                    "{op} as {caller}: expected {}, got {got}",
                    expected[c]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {n} cells disagree with SPEC 10:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    eprintln!(
        "access matrix: {} operations x {} callers = {n} cells",
        MATRIX.len(),
        CALLERS.len()
    );
}

async fn tokens_are_stored_hashed_and_never_logged(b: Backend) {
    let app = App::spawn(b.clone()).await;
    let mut tokens = vec![app.admin.clone()];
    for (role, owner) in [("ADMIN", None), ("SERVICE", None), ("USER", Some("alice"))] {
        tokens.push(app.token(role, owner).await);
    }
    // Use every token, over HTTP and WebSocket, and fail with one, so each path that could
    // log it runs.
    for t in &tokens {
        app.ok(t, "{ viewer { role } }", json!({})).await;
        let (_, init) = Ws::connect(&app, "graphql-ws", t).await;
        assert!(matches!(init, Init::Ack));
    }
    let bad = format!("cr{}", crate::helpers::random_hex());
    let (status, _) = app
        .post(Some(&bad), &json!({ "query": "{ viewer { role } }" }))
        .await;
    assert_eq!(status, 401);
    let (_, init) = Ws::connect(&app, "graphql-transport-ws", &bad).await;
    assert!(matches!(init, Init::Refused(_)));

    let rows = sql(
        &app,
        "SELECT hash, role, coalesce(owner_id, '') FROM api_tokens ORDER BY hash",
    );
    let stored: Vec<&str> = rows.lines().map(|l| l.split('|').next().unwrap()).collect();
    // The three minted ones (the bootstrap admin token lives only in the environment).
    assert_eq!(stored.len(), 3, "{rows}");
    let mut expected: Vec<String> = tokens[1..]
        .iter()
        .map(|t| credits_store::TokenHash::of_secret(t).as_hex().to_owned())
        .collect();
    expected.sort();
    assert_eq!(stored, expected, "each token is stored as its SHA-256");
    for t in tokens.iter().chain([&bad]) {
        assert!(!rows.contains(t.as_str()), "a token is stored in clear");
    }
    let log = app.log();
    // SQLite: not a byte of any token anywhere in the database files either.
    if matches!(b, Backend::Sqlite) {
        for entry in std::fs::read_dir(app.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file()
                && path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("t.db")
            {
                let bytes = std::fs::read(&path).unwrap();
                for t in tokens.iter().chain([&bad]) {
                    assert!(
                        !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                        "a token is in {}",
                        path.display()
                    );
                }
            }
        }
    }
    drop(app);
    assert!(!log.is_empty(), "the server logged nothing at all");
    for t in tokens.iter().chain([&bad]) {
        assert!(!log.contains(t.as_str()), "a token is in the log:\n{log}");
    }
}

/// Found by review: a `CREDITD_ADMIN_TOKEN` read from a file ends in a newline (a secret
/// made with `kubectl create secret --from-file`), which no client sends: the bootstrap
/// admin was locked out with nothing logged. Surrounding whitespace is not part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_token_with_surrounding_whitespace_still_works() {
    let mut app = App::spawn(Backend::Sqlite).await;
    app.stop();
    let padded = format!(" {}\n", app.admin);
    app.env.push(("CREDITD_ADMIN_TOKEN".into(), padded));
    app.start().await;
    let d = app.ok(&app.admin, "{ viewer { role } }", json!({})).await;
    assert_eq!(d["viewer"]["role"], "ADMIN");
}
