//! Hostile input and GraphQL abuse (issue 10, item 4): every mutation of the contract with
//! bad values, and requests built to exhaust the server. Each is refused with a clear
//! `extensions.code` or bounded, and nothing changes: the row count of every table, the
//! rows changed in place (reviews, members' limits, plans), the wallets' versions and
//! ledger lengths and their balances are the same before and after.

use std::process::Command;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{App, BALANCE, Backend, Init, USAGE, Ws, error_code};
use crate::on_both;

on_both!(
    every_mutation_refuses_bad_values_and_changes_nothing,
    graphql_abuse_is_refused_and_changes_nothing,
    an_oversized_body_is_read_to_its_end_then_answered,
    websocket_connections_are_bounded,
    a_subscriber_that_stops_reading_gets_every_event_once_it_reads,
    subscriptions_on_one_socket_are_bounded,
);

/// One SQL query against the app's database (the `sqlite3` or `psql` client); rows are
/// lines, columns `|`-separated.
pub fn sql(app: &App, query: &str) -> String {
    let url = &app.db.url;
    let out = if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap();
        Command::new("sqlite3")
            .args([path, query])
            .output()
            .expect("the sqlite3 client")
    } else {
        Command::new("psql")
            .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-tAq", "-c", query])
            .output()
            .expect("the psql client")
    };
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Tables whose rows only a successful operation adds or changes.
const TABLES: &[&str] = &[
    "plans",
    "bundles",
    "wallets",
    "ledger",
    "usage_events",
    "grants",
    "reservations",
    "wallet_creations",
    "teams",
    "team_members",
    "reviews",
    "api_tokens",
];

/// Rows changed in place (not only added): their columns a call may change.
const CHANGED_IN_PLACE: &str = "\
    SELECT id, status, coalesce(credited_ucr, -1), coalesce(grant_id, ''), coalesce(note, ''), coalesce(resolved_us, -1) FROM reviews ORDER BY id; \
    SELECT team_id, user_id, role, coalesce(daily_limit_ucr, -1), coalesce(period_limit_ucr, -1) FROM team_members ORDER BY team_id, user_id; \
    SELECT id, name, daily_ucr, subscription_ucr, interval, model_tiers, custom, retired, position, updated_us FROM plans ORDER BY id";

/// Everything a refused call must leave alone: the row count of every table, each
/// wallet's fence version and ledger length, the rows changed in place (reviews, members'
/// limits, plans: found by review, a call that changed one of them and then was refused
/// would have passed), and the balances as the API reads them.
async fn state(app: &App, wallets: &[&str]) -> Value {
    // One client process per look: every table's row count, then each wallet's row.
    let counts: Vec<String> = TABLES
        .iter()
        .map(|t| format!("(SELECT count(*) FROM {t})"))
        .collect();
    let rows = sql(
        app,
        &format!(
            "SELECT 'counts', {} UNION ALL SELECT id, version, seq, (SELECT count(*) FROM ledger l WHERE l.wallet_id = w.id){} FROM wallets w ORDER BY 1",
            counts.join(", "),
            ", 0".repeat(TABLES.len() - 3),
        ),
    );
    let in_place = sql(app, CHANGED_IN_PLACE);
    let mut balances = Vec::new();
    for w in wallets {
        balances.push(app.balance(w).await);
    }
    json!({ "tables": TABLES, "rows": rows, "in_place": in_place, "balances": balances })
}

/// The ledger length of one wallet.
pub fn ledger_len(app: &App, wallet: &str) -> i64 {
    sql(
        app,
        &format!("SELECT count(*) FROM ledger WHERE wallet_id = '{wallet}'"),
    )
    .trim()
    .parse()
    .unwrap()
}

const RECORD: &str = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { replayed } }";
const RESERVE: &str = "mutation($i: ReserveInput!) { reserveCredits(input: $i) { id } }";
const SETTLE: &str = "mutation($i: SettleInput!) { settleReservation(input: $i) { replayed } }";
const RELEASE: &str = "mutation($id: ID!) { releaseReservation(id: $id) { id } }";
const GRANT: &str = "mutation($i: GrantInput!) { grantCredits(input: $i) { id } }";
const BUNDLE: &str = "mutation($i: PurchaseBundleInput!) { purchaseBundle(input: $i) { id } }";
const PLAN: &str = "mutation($i: PlanInput!) { upsertPlan(input: $i) { id } }";
const CHANGE_PLAN: &str =
    "mutation($w: ID!, $p: ID!) { changePlan(walletId: $w, planId: $p) { id } }";
const CREATE_WALLET: &str = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }";
const ZONE: &str =
    "mutation($w: ID!, $z: String!) { setTimezone(walletId: $w, timezone: $z) { id } }";
const CREATE_TEAM: &str = "mutation($i: CreateTeamInput!) { createTeam(input: $i) { id } }";
const ADD_MEMBER: &str = "mutation($t: ID!, $u: String!, $d: Credits, $p: Credits) { addTeamMember(teamId: $t, userId: $u, dailyLimit: $d, periodLimit: $p) { userId } }";
const SET_LIMITS: &str = "mutation($t: ID!, $u: String!, $d: Credits, $p: Credits) { setMemberLimits(teamId: $t, userId: $u, dailyLimit: $d, periodLimit: $p) { userId } }";
const REMOVE_MEMBER: &str =
    "mutation($t: ID!, $u: String!) { removeTeamMember(teamId: $t, userId: $u) }";
const REPORT: &str = "mutation($i: HighUsageReportInput!) { reportHighUsage(input: $i) { id } }";
const RESOLVE: &str = "mutation($i: ResolveReviewInput!) { resolveReview(input: $i) { id } }";
const TOKEN: &str =
    "mutation($r: Role!, $o: String) { createApiToken(role: $r, ownerId: $o) { token } }";
const CLOCK: &str = "mutation($s: Int!) { advanceClock(seconds: $s) }";

/// `base` with `key` set to `value` (`Value::Null` removes it).
fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut v = base.clone();
    if value.is_null() {
        v.as_object_mut().unwrap().remove(key);
    } else {
        v[key] = value;
    }
    v
}

async fn every_mutation_refuses_bad_values_and_changes_nothing(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    // Something to settle, release, report and resolve.
    app.record(&w, "seed-use", "t-seed", "standard-chat", 1000, 1000)
        .await;
    let d = app
        .ok(
            &app.admin,
            RESERVE,
            json!({ "i": { "walletId": w, "idempotencyKey": "seed-res", "amount": "1", "ttlSeconds": 600 } }),
        )
        .await;
    let res = d["reserveCredits"]["id"].as_str().unwrap().to_owned();
    let (team, pool) = app.team("tadmin").await;
    app.ok(
        &app.admin,
        ADD_MEMBER,
        json!({ "t": team, "u": "member", "d": "1", "p": "5" }),
    )
    .await;
    let d = app
        .ok(
            &app.admin,
            REPORT,
            json!({ "i": { "walletId": w, "threadId": "t-seed", "taskDescription": "x", "previewStatus": "OK" } }),
        )
        .await;
    let review = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();

    let big = "x".repeat(100 * 1024); // over the 64 KiB string limit, under the body limit
    let huge = "x".repeat(1024 * 1024); // over the body limit
    let k129 = "k".repeat(129);
    let t4097 = "t".repeat(4097);
    let bad_amounts = [
        ("negative", json!("-1")),
        ("negative int", json!(-1)),
        ("7 decimals", json!("1.0000001")),
        ("7 decimals, zero", json!("1.0000000")),
        ("overflow", json!("9223372036855")),
        ("overflow int", json!(9_223_372_036_855_i64)),
        ("float", json!(1.5)),
        ("exponent", json!("1e3")),
        ("empty", json!("")),
        ("huge", json!(huge.clone())),
    ];
    let bad_keys = [
        ("empty key", json!("")),
        ("129-char key", json!(k129.clone())),
        ("100 KiB key", json!(big.clone())),
        ("1 MiB key", json!(huge.clone())),
        ("key holding U+0000", json!("k\u{0}")),
    ];
    let mut rows: Vec<(String, &str, Value, &str)> = Vec::new();
    let mut row = |name: String, q: &'static str, vars: Value, code: &'static str| {
        rows.push((name, q, vars, code));
    };

    // createWallet
    let cw = json!({ "ownerId": "carol", "planId": "pro", "timezone": "UTC" });
    for (n, v, c) in [
        (
            "ownerId empty",
            with(&cw, "ownerId", json!("")),
            "INVALID_INPUT",
        ),
        (
            "ownerId 129",
            with(&cw, "ownerId", json!(k129)),
            "INVALID_INPUT",
        ),
        (
            "ownerId 100 KiB",
            with(&cw, "ownerId", json!(big)),
            "INVALID_INPUT",
        ),
        (
            "ownerId 1 MiB",
            with(&cw, "ownerId", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "unknown plan",
            with(&cw, "planId", json!("nope")),
            "NOT_FOUND",
        ),
        (
            "bad plan id",
            with(&cw, "planId", json!("Bad Plan!")),
            "INVALID_INPUT",
        ),
        (
            "unknown zone",
            with(&cw, "timezone", json!("Mars/Olympus")),
            "INVALID_INPUT",
        ),
        (
            "empty zone",
            with(&cw, "timezone", json!("")),
            "INVALID_INPUT",
        ),
        (
            "future anchor",
            with(&cw, "billingAnchor", json!("2030-01-01T00:00:00Z")),
            "INVALID_INPUT",
        ),
        (
            "bad anchor",
            with(&cw, "billingAnchor", json!("yesterday")),
            "INVALID_INPUT",
        ),
    ] {
        row(
            format!("createWallet {n}"),
            CREATE_WALLET,
            json!({ "i": v }),
            c,
        );
    }
    for (n, k) in &bad_keys {
        row(
            format!("createWallet {n}"),
            CREATE_WALLET,
            json!({ "i": with(&cw, "idempotencyKey", k.clone()) }),
            "INVALID_INPUT",
        );
    }

    // setTimezone
    for (n, wal, z, c) in [
        ("unknown wallet", "wal_nope", json!("UTC"), "NOT_FOUND"),
        (
            "unknown zone",
            w.as_str(),
            json!("Mars/Olympus"),
            "INVALID_INPUT",
        ),
        ("empty zone", w.as_str(), json!(""), "INVALID_INPUT"),
        ("offset zone", w.as_str(), json!("+02:00"), "INVALID_INPUT"),
        ("100 KiB zone", w.as_str(), json!(big), "INVALID_INPUT"),
        ("1 MiB zone", w.as_str(), json!(huge), "INVALID_INPUT"),
    ] {
        row(
            format!("setTimezone {n}"),
            ZONE,
            json!({ "w": wal, "z": z }),
            c,
        );
    }

    // recordUsage
    let ru = json!({ "walletId": w, "idempotencyKey": "ru", "threadId": "t", "model": "economy-mini",
        "inputTokens": 10, "cachedTokens": 0, "outputTokens": 10 });
    for (n, v, c) in [
        (
            "unknown wallet",
            with(&ru, "walletId", json!("wal_nope")),
            "NOT_FOUND",
        ),
        (
            "threadId empty",
            with(&ru, "threadId", json!("")),
            "INVALID_INPUT",
        ),
        (
            "threadId 129",
            with(&ru, "threadId", json!(k129)),
            "INVALID_INPUT",
        ),
        (
            "threadId 1 MiB",
            with(&ru, "threadId", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "threadId holding U+0000",
            with(&ru, "threadId", json!("t\u{0}")),
            "INVALID_INPUT",
        ),
        (
            "model empty",
            with(&ru, "model", json!("")),
            "UNKNOWN_MODEL",
        ),
        (
            "unknown model",
            with(&ru, "model", json!("gpt-nope")),
            "UNKNOWN_MODEL",
        ),
        (
            "model 100 KiB",
            with(&ru, "model", json!(big)),
            "INVALID_INPUT",
        ),
        (
            "model not in plan",
            with(&ru, "model", json!("premium-max")),
            "MODEL_NOT_ALLOWED",
        ),
        (
            "negative input",
            with(&ru, "inputTokens", json!(-1)),
            "INVALID_INPUT",
        ),
        (
            "negative output",
            with(&ru, "outputTokens", json!(-1)),
            "INVALID_INPUT",
        ),
        (
            "negative cached",
            with(&ru, "cachedTokens", json!(-1)),
            "INVALID_INPUT",
        ),
        (
            "cached over input",
            with(&ru, "cachedTokens", json!(11)),
            "INVALID_INPUT",
        ),
        (
            "tokens over Int",
            with(&ru, "inputTokens", json!(2_147_483_648_i64)),
            "INVALID_INPUT",
        ),
        (
            "fractional tokens",
            with(&ru, "outputTokens", json!(1.5)),
            "INVALID_INPUT",
        ),
        (
            "tokens as string",
            with(&ru, "outputTokens", json!("10")),
            "INVALID_INPUT",
        ),
        (
            "more than the balance",
            with(&ru, "outputTokens", json!(2_000_000_000)),
            "INSUFFICIENT_CREDITS",
        ),
        (
            "memberId on a personal wallet",
            with(&ru, "memberId", json!("member")),
            "INVALID_INPUT",
        ),
        (
            "pool without memberId",
            with(&ru, "walletId", json!(pool)),
            "INVALID_INPUT",
        ),
        (
            "pool, memberId empty",
            with(&with(&ru, "walletId", json!(pool)), "memberId", json!("")),
            "INVALID_INPUT",
        ),
        (
            "pool, memberId 129",
            with(&with(&ru, "walletId", json!(pool)), "memberId", json!(k129)),
            "INVALID_INPUT",
        ),
        (
            "pool, not a member",
            with(
                &with(&ru, "walletId", json!(pool)),
                "memberId",
                json!("stranger"),
            ),
            "FORBIDDEN",
        ),
        (
            "pool, over the member limit",
            with(
                &with(
                    &with(&ru, "walletId", json!(pool)),
                    "memberId",
                    json!("member"),
                ),
                "outputTokens",
                json!(1_000_000),
            ),
            "MEMBER_LIMIT_EXCEEDED",
        ),
        (
            "replayed key, other input",
            with(
                &with(&ru, "idempotencyKey", json!("seed-use")),
                "threadId",
                json!("t-seed"),
            ),
            "IDEMPOTENCY_CONFLICT",
        ),
    ] {
        row(format!("recordUsage {n}"), RECORD, json!({ "i": v }), c);
    }
    for (n, k) in &bad_keys {
        row(
            format!("recordUsage {n}"),
            RECORD,
            json!({ "i": with(&ru, "idempotencyKey", k.clone()) }),
            "INVALID_INPUT",
        );
    }

    // reserveCredits
    let rc = json!({ "walletId": w, "idempotencyKey": "rc", "amount": "1", "ttlSeconds": 60 });
    for (n, a) in &bad_amounts {
        row(
            format!("reserveCredits amount {n}"),
            RESERVE,
            json!({ "i": with(&rc, "amount", a.clone()) }),
            "INVALID_INPUT",
        );
    }
    for (n, v, c) in [
        (
            "zero amount",
            with(&rc, "amount", json!("0")),
            "INVALID_INPUT",
        ),
        (
            "zero TTL",
            with(&rc, "ttlSeconds", json!(0)),
            "INVALID_INPUT",
        ),
        (
            "negative TTL",
            with(&rc, "ttlSeconds", json!(-60)),
            "INVALID_INPUT",
        ),
        (
            "TTL over an hour",
            with(&rc, "ttlSeconds", json!(3601)),
            "INVALID_INPUT",
        ),
        (
            "TTL over Int",
            with(&rc, "ttlSeconds", json!(4_294_967_296_i64)),
            "INVALID_INPUT",
        ),
        (
            "unknown wallet",
            with(&rc, "walletId", json!("wal_nope")),
            "NOT_FOUND",
        ),
        (
            "zero TTL on an unknown wallet (input first)",
            with(
                &with(&rc, "walletId", json!("wal_nope")),
                "ttlSeconds",
                json!(0),
            ),
            "INVALID_INPUT",
        ),
        (
            "more than the balance",
            with(&rc, "amount", json!("1000000")),
            "INSUFFICIENT_CREDITS",
        ),
        (
            "memberId on a personal wallet",
            with(&rc, "memberId", json!("member")),
            "INVALID_INPUT",
        ),
        (
            "pool, memberId empty",
            with(&with(&rc, "walletId", json!(pool)), "memberId", json!("")),
            "INVALID_INPUT",
        ),
        (
            "pool without memberId",
            with(&rc, "walletId", json!(pool)),
            "INVALID_INPUT",
        ),
        (
            "pool, not a member",
            with(
                &with(&rc, "walletId", json!(pool)),
                "memberId",
                json!("stranger"),
            ),
            "FORBIDDEN",
        ),
    ] {
        row(format!("reserveCredits {n}"), RESERVE, json!({ "i": v }), c);
    }
    for (n, k) in &bad_keys {
        row(
            format!("reserveCredits {n}"),
            RESERVE,
            json!({ "i": with(&rc, "idempotencyKey", k.clone()) }),
            "INVALID_INPUT",
        );
    }

    // settleReservation (the seeded reservation stays ACTIVE through every refusal)
    let sr = json!({ "reservationId": res, "threadId": "t", "model": "economy-mini",
        "inputTokens": 1, "outputTokens": 1 });
    for (n, v, c) in [
        (
            "unknown reservation",
            with(&sr, "reservationId", json!("res_nope")),
            "NOT_FOUND",
        ),
        (
            "empty reservation id",
            with(&sr, "reservationId", json!("")),
            "NOT_FOUND",
        ),
        (
            "threadId empty",
            with(&sr, "threadId", json!("")),
            "INVALID_INPUT",
        ),
        (
            "threadId 1 MiB",
            with(&sr, "threadId", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "unknown model",
            with(&sr, "model", json!("gpt-nope")),
            "UNKNOWN_MODEL",
        ),
        (
            "model not in plan",
            with(&sr, "model", json!("premium-max")),
            "MODEL_NOT_ALLOWED",
        ),
        (
            "negative input",
            with(&sr, "inputTokens", json!(-1)),
            "INVALID_INPUT",
        ),
        (
            "negative output",
            with(&sr, "outputTokens", json!(-5)),
            "INVALID_INPUT",
        ),
        (
            "cached over input",
            with(&sr, "cachedTokens", json!(2)),
            "INVALID_INPUT",
        ),
    ] {
        row(
            format!("settleReservation {n}"),
            SETTLE,
            json!({ "i": v }),
            c,
        );
    }

    // releaseReservation
    for (n, id, c) in [
        ("unknown reservation", json!("res_nope"), "NOT_FOUND"),
        ("empty id", json!(""), "NOT_FOUND"),
        ("1 MiB id", json!(huge), "INVALID_INPUT"),
        ("int id", json!(5), "NOT_FOUND"),
    ] {
        row(
            format!("releaseReservation {n}"),
            RELEASE,
            json!({ "id": id }),
            c,
        );
    }

    // grantCredits
    let gc = json!({ "walletId": w, "idempotencyKey": "gc", "amount": "1", "kind": "PROMOTION",
        "reason": "r" });
    for (n, a) in &bad_amounts {
        row(
            format!("grantCredits amount {n}"),
            GRANT,
            json!({ "i": with(&gc, "amount", a.clone()) }),
            "INVALID_INPUT",
        );
    }
    for (n, v, c) in [
        (
            "zero amount",
            with(&gc, "amount", json!("0")),
            "INVALID_INPUT",
        ),
        (
            "more than a wallet's sum can hold",
            with(&gc, "amount", json!("9223372036854.775807")),
            "INVALID_INPUT",
        ),
        (
            "zero amount int",
            with(&gc, "amount", json!(0)),
            "INVALID_INPUT",
        ),
        (
            "reason 4097",
            with(&gc, "reason", json!(t4097)),
            "INVALID_INPUT",
        ),
        (
            "reason 100 KiB",
            with(&gc, "reason", json!(big)),
            "INVALID_INPUT",
        ),
        (
            "reason 1 MiB",
            with(&gc, "reason", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "past expiry",
            with(&gc, "expiresAt", json!("2020-01-01T00:00:00Z")),
            "INVALID_INPUT",
        ),
        (
            "expiry now",
            with(&gc, "expiresAt", json!(crate::helpers::START)),
            "INVALID_INPUT",
        ),
        (
            "bad expiry",
            with(&gc, "expiresAt", json!("tomorrow")),
            "INVALID_INPUT",
        ),
        (
            "unknown kind",
            with(&gc, "kind", json!("FREE_MONEY")),
            "INVALID_INPUT",
        ),
        (
            "kind PURCHASE",
            with(&gc, "kind", json!("PURCHASE")),
            "INVALID_INPUT",
        ),
        (
            "COMPENSATION with expiry",
            with(
                &with(&gc, "kind", json!("COMPENSATION")),
                "expiresAt",
                json!("2030-01-01T00:00:00Z"),
            ),
            "INVALID_INPUT",
        ),
        (
            "unknown wallet",
            with(&gc, "walletId", json!("wal_nope")),
            "NOT_FOUND",
        ),
        (
            "COMPENSATION with expiry on an unknown wallet (input first)",
            with(
                &with(
                    &with(&gc, "kind", json!("COMPENSATION")),
                    "expiresAt",
                    json!("2030-01-01T00:00:00Z"),
                ),
                "walletId",
                json!("wal_nope"),
            ),
            "INVALID_INPUT",
        ),
        (
            "past expiry on an unknown wallet (input first)",
            with(
                &with(&gc, "expiresAt", json!("2020-01-01T00:00:00Z")),
                "walletId",
                json!("wal_nope"),
            ),
            "INVALID_INPUT",
        ),
        (
            "replayed key, other amount",
            with(&gc, "idempotencyKey", json!("seed-use")),
            "IDEMPOTENCY_CONFLICT",
        ),
    ] {
        row(format!("grantCredits {n}"), GRANT, json!({ "i": v }), c);
    }
    for (n, k) in &bad_keys {
        row(
            format!("grantCredits {n}"),
            GRANT,
            json!({ "i": with(&gc, "idempotencyKey", k.clone()) }),
            "INVALID_INPUT",
        );
    }

    // purchaseBundle
    let pb = json!({ "walletId": w, "bundleId": "credits-100", "paymentReference": "pay" });
    for (n, v, c) in [
        (
            "unknown bundle",
            with(&pb, "bundleId", json!("credits-7")),
            "NOT_FOUND",
        ),
        (
            "bad bundle id",
            with(&pb, "bundleId", json!("NOPE!")),
            "INVALID_INPUT",
        ),
        (
            "unknown wallet",
            with(&pb, "walletId", json!("wal_nope")),
            "NOT_FOUND",
        ),
        (
            "reference empty",
            with(&pb, "paymentReference", json!("")),
            "INVALID_INPUT",
        ),
        (
            "reference 129",
            with(&pb, "paymentReference", json!(k129)),
            "INVALID_INPUT",
        ),
        (
            "reference 1 MiB",
            with(&pb, "paymentReference", json!(huge)),
            "INVALID_INPUT",
        ),
    ] {
        row(format!("purchaseBundle {n}"), BUNDLE, json!({ "i": v }), c);
    }

    // upsertPlan
    let up = json!({ "id": "acme", "name": "Acme", "dailyCredits": "1", "subscriptionCredits": "10",
        "interval": "MONTHLY", "modelTiers": ["economy"] });
    for (n, a) in &bad_amounts {
        row(
            format!("upsertPlan dailyCredits {n}"),
            PLAN,
            json!({ "i": with(&up, "dailyCredits", a.clone()) }),
            "INVALID_INPUT",
        );
    }
    for (n, v, c) in [
        (
            "dailyCredits more than a wallet can hold",
            with(&up, "dailyCredits", json!("9000000000000")),
            "INVALID_INPUT",
        ),
        (
            "subscriptionCredits more than a wallet can hold",
            with(&up, "subscriptionCredits", json!("9000000000000")),
            "INVALID_INPUT",
        ),
        (
            "subscription negative",
            with(&up, "subscriptionCredits", json!("-0.000001")),
            "INVALID_INPUT",
        ),
        (
            "subscription overflow",
            with(&up, "subscriptionCredits", json!("10000000000000")),
            "INVALID_INPUT",
        ),
        ("id empty", with(&up, "id", json!("")), "INVALID_INPUT"),
        (
            "id upper case",
            with(&up, "id", json!("Acme")),
            "INVALID_INPUT",
        ),
        (
            "id 64 chars",
            with(&up, "id", json!("a".repeat(64))),
            "INVALID_INPUT",
        ),
        (
            "id leading dash",
            with(&up, "id", json!("-acme")),
            "INVALID_INPUT",
        ),
        (
            "name 1 MiB",
            with(&up, "name", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "name 100 KiB",
            with(&up, "name", json!(big)),
            "INVALID_INPUT",
        ),
        (
            "tier name empty",
            with(&up, "modelTiers", json!([""])),
            "INVALID_INPUT",
        ),
        (
            "unknown interval",
            with(&up, "interval", json!("WEEKLY")),
            "INVALID_INPUT",
        ),
        (
            "catalogue plan id",
            with(&up, "id", json!("pro")),
            "INVALID_INPUT",
        ),
    ] {
        row(format!("upsertPlan {n}"), PLAN, json!({ "i": v }), c);
    }

    // changePlan
    for (n, wal, p, c) in [
        ("unknown wallet", "wal_nope", "max", "NOT_FOUND"),
        ("unknown plan", w.as_str(), "nope", "NOT_FOUND"),
        ("bad plan id", w.as_str(), "NOPE!", "INVALID_INPUT"),
    ] {
        row(
            format!("changePlan {n}"),
            CHANGE_PLAN,
            json!({ "w": wal, "p": p }),
            c,
        );
    }

    // createTeam
    let ct = json!({ "name": "Beta", "planId": "team", "timezone": "UTC", "adminUserIds": ["x"] });
    for (n, v, c) in [
        (
            "no admins",
            with(&ct, "adminUserIds", json!([])),
            "INVALID_INPUT",
        ),
        (
            "admin id empty",
            with(&ct, "adminUserIds", json!([""])),
            "INVALID_INPUT",
        ),
        (
            "admin id 129",
            with(&ct, "adminUserIds", json!([k129])),
            "INVALID_INPUT",
        ),
        (
            "name 1 MiB",
            with(&ct, "name", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "name 100 KiB",
            with(&ct, "name", json!(big)),
            "INVALID_INPUT",
        ),
        (
            "unknown plan",
            with(&ct, "planId", json!("nope")),
            "NOT_FOUND",
        ),
        (
            "unknown zone",
            with(&ct, "timezone", json!("Mars/Olympus")),
            "INVALID_INPUT",
        ),
    ] {
        row(format!("createTeam {n}"), CREATE_TEAM, json!({ "i": v }), c);
    }

    // addTeamMember, setMemberLimits, removeTeamMember
    let am = json!({ "t": team, "u": "newbie", "d": "1", "p": "5" });
    for (n, a) in &bad_amounts {
        row(
            format!("addTeamMember dailyLimit {n}"),
            ADD_MEMBER,
            with(&am, "d", a.clone()),
            "INVALID_INPUT",
        );
        row(
            format!("setMemberLimits periodLimit {n}"),
            SET_LIMITS,
            with(&with(&am, "u", json!("member")), "p", a.clone()),
            "INVALID_INPUT",
        );
    }
    for (n, v, c) in [
        (
            "unknown team",
            with(&am, "t", json!("team_nope")),
            "NOT_FOUND",
        ),
        ("userId empty", with(&am, "u", json!("")), "INVALID_INPUT"),
        ("userId 129", with(&am, "u", json!(k129)), "INVALID_INPUT"),
        ("userId 1 MiB", with(&am, "u", json!(huge)), "INVALID_INPUT"),
    ] {
        row(format!("addTeamMember {n}"), ADD_MEMBER, v.clone(), c);
        row(format!("setMemberLimits {n}"), SET_LIMITS, v.clone(), c);
        row(format!("removeTeamMember {n}"), REMOVE_MEMBER, v, c);
    }
    row(
        "addTeamMember unknown role".into(),
        "mutation($t: ID!) { addTeamMember(teamId: $t, userId: \"x\", role: OWNER) { userId } }",
        json!({ "t": team }),
        "INVALID_INPUT",
    );
    row(
        "setMemberLimits not a member".into(),
        SET_LIMITS,
        with(&am, "u", json!("stranger")),
        "NOT_FOUND",
    );
    // SPEC 6: false for a non-member, and nothing changes.
    row(
        "removeTeamMember not a member".into(),
        REMOVE_MEMBER,
        json!({ "t": team, "u": "stranger" }),
        r#"ok: {"removeTeamMember":false}"#,
    );

    // reportHighUsage
    let rh = json!({ "walletId": w, "threadId": "t-seed", "taskDescription": "x", "previewStatus": "OK" });
    for (n, v, c) in [
        (
            "unknown wallet",
            with(&rh, "walletId", json!("wal_nope")),
            "NOT_FOUND",
        ),
        (
            "unknown thread",
            with(&rh, "threadId", json!("t-none")),
            "NOT_FOUND",
        ),
        (
            "threadId empty",
            with(&rh, "threadId", json!("")),
            "INVALID_INPUT",
        ),
        (
            "threadId 129",
            with(&rh, "threadId", json!(k129)),
            "INVALID_INPUT",
        ),
        (
            "task 4097",
            with(&rh, "taskDescription", json!(t4097)),
            "INVALID_INPUT",
        ),
        (
            "task 1 MiB",
            with(&rh, "taskDescription", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "negative length",
            with(&rh, "threadLength", json!(-1)),
            "INVALID_INPUT",
        ),
        (
            "negative context",
            with(&rh, "contextSize", json!(-1)),
            "INVALID_INPUT",
        ),
        (
            "unknown status",
            with(&rh, "previewStatus", json!("BROKEN")),
            "INVALID_INPUT",
        ),
    ] {
        row(format!("reportHighUsage {n}"), REPORT, json!({ "i": v }), c);
    }

    // resolveReview
    let rr = json!({ "reviewId": review, "decision": "APPROVE", "amount": "0.5" });
    for (n, a) in &bad_amounts {
        row(
            format!("resolveReview amount {n}"),
            RESOLVE,
            json!({ "i": with(&rr, "amount", a.clone()) }),
            "INVALID_INPUT",
        );
    }
    for (n, v, c) in [
        (
            "zero amount",
            with(&rr, "amount", json!("0")),
            "INVALID_INPUT",
        ),
        (
            "unknown review",
            with(&rr, "reviewId", json!("rev_nope")),
            "NOT_FOUND",
        ),
        (
            "zero amount on an unknown review (input first)",
            with(
                &with(&rr, "amount", json!("0")),
                "reviewId",
                json!("rev_nope"),
            ),
            "INVALID_INPUT",
        ),
        (
            "note 4097 on an unknown review (input first)",
            with(
                &with(&rr, "note", json!(t4097)),
                "reviewId",
                json!("rev_nope"),
            ),
            "INVALID_INPUT",
        ),
        (
            "note 4097",
            with(&rr, "note", json!(t4097)),
            "INVALID_INPUT",
        ),
        (
            "note 1 MiB",
            with(&rr, "note", json!(huge)),
            "INVALID_INPUT",
        ),
        (
            "unknown decision",
            with(&rr, "decision", json!("MAYBE")),
            "INVALID_INPUT",
        ),
    ] {
        row(format!("resolveReview {n}"), RESOLVE, json!({ "i": v }), c);
    }

    // createApiToken
    for (n, r, o, c) in [
        ("USER without owner", "USER", json!(null), "INVALID_INPUT"),
        ("USER, owner empty", "USER", json!(""), "INVALID_INPUT"),
        ("USER, owner 129", "USER", json!(k129), "INVALID_INPUT"),
        ("USER, owner 1 MiB", "USER", json!(huge), "INVALID_INPUT"),
        (
            "SERVICE with owner",
            "SERVICE",
            json!("alice"),
            "INVALID_INPUT",
        ),
        ("ADMIN with owner", "ADMIN", json!("alice"), "INVALID_INPUT"),
        ("unknown role", "ROOT", json!(null), "INVALID_INPUT"),
    ] {
        row(
            format!("createApiToken {n}"),
            TOKEN,
            json!({ "r": r, "o": o }),
            c,
        );
    }

    // advanceClock
    for (n, s, c) in [
        ("negative", json!(-1), "INVALID_INPUT"),
        ("over Int", json!(4_294_967_296_i64), "INVALID_INPUT"),
        ("fraction", json!(1.5), "INVALID_INPUT"),
    ] {
        row(format!("advanceClock {n}"), CLOCK, json!({ "s": s }), c);
    }

    let mut before = state(&app, &[&w, &pool]).await;
    let mut wrong = Vec::new();
    for (name, q, vars, code) in &rows {
        let (_, resp) = app
            .post(Some(&app.admin), &json!({ "query": q, "variables": vars }))
            .await;
        let got = match resp["errors"].as_array() {
            Some(e) if !e.is_empty() => error_code(&resp),
            _ => format!("ok: {}", resp["data"]),
        };
        if got != *code {
            wrong.push(format!("{name}: expected {code}, got {got}"));
        }
        let data = &resp["data"];
        let no_data = data.is_null()
            || data
                .as_object()
                .is_some_and(|o| o.values().all(Value::is_null));
        if !code.starts_with("ok") && !no_data {
            wrong.push(format!("{name}: a refused mutation returned data {data}"));
        }
        let after = state(&app, &[&w, &pool]).await;
        if before != after {
            wrong.push(format!("{name} changed the state:\n{before}\n{after}"));
            before = after;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows got another code:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
    // The seeded reservation is still ACTIVE and settles normally afterwards.
    let d = app.ok(&app.admin, SETTLE, json!({ "i": sr })).await;
    assert_eq!(d["settleReservation"]["replayed"], false);
    eprintln!("hostile inputs tried: {}", rows.len());
}

async fn graphql_abuse_is_refused_and_changes_nothing(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let grant = |key: &str| {
        format!(
            "grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"{key}\", amount: 1, kind: ADMIN, reason: \"r\"}}) {{ id }}"
        )
    };
    let mut cases: Vec<(&str, Value)> = Vec::new();
    // Depth 13 (introspection types nest without end).
    let mut deep = String::from("name");
    for _ in 0..11 {
        deep = format!("ofType {{ {deep} }}");
    }
    cases.push((
        "depth 13",
        json!({ "query": format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}") }),
    ));
    // A selection nested 5,000 deep: the parser must refuse it, not overflow its stack.
    let nested = format!("{}{}", "{ viewer ".repeat(5000), "}".repeat(5000));
    cases.push(("selection 5,000 deep", json!({ "query": nested })));
    let list = format!(
        "mutation {{ upsertPlan(input: {{id: \"x\", name: \"x\", dailyCredits: 1, subscriptionCredits: 1, interval: MONTHLY, modelTiers: {}\"economy\"{}}}) {{ id }} }}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    cases.push(("list literal 5,000 deep", json!({ "query": list })));
    // Found by review: a list argument 2,000 deep (4 KB) overflowed the stack of the
    // parser's value builder and aborted the server.
    for depth in [2_000, 3_000] {
        let list = format!(
            "{{ wallet(id: {}\"{w}\"{}) {{ id }} }}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        cases.push(("list argument thousands deep", json!({ "query": list })));
    }
    // 60 mutations of about 41 fields each: complexity ~2,460 > 2,000, under 100 aliases.
    let heavy: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "u{i}: recordUsage(input: {{walletId: \"{w}\", idempotencyKey: \"c{i}\", threadId: \"t\", model: \"economy-mini\", inputTokens: 1, outputTokens: 1}}) {{ replayed usage {{ {USAGE} }} balance {{ ...Bal }} }}"
            )
        })
        .collect();
    cases.push((
        "complexity over 2,000 (mutation)",
        json!({ "query": format!("mutation {{ {} }}\n{BALANCE}", heavy.join(" ")) }),
    ));
    let reads: Vec<String> = (0..90)
        .map(|i| format!("w{i}: wallet(id: \"{w}\") {{ balance {{ ...Bal }} }}"))
        .collect();
    cases.push((
        "complexity over 2,000 (query)",
        json!({ "query": format!("{{ {} }}\n{BALANCE}", reads.join(" ")) }),
    ));
    // Found by review: a list counted once, however many rows it returns. Three pages of
    // 100 usage events, and 10 summaries (each reads every event in its range), are over
    // 2,000.
    let page = "usage(first: 100) { edges { cursor node { id threadId model memberId inputTokens cachedTokens outputTokens cost uncollected pricedBy at } } }";
    let pages: Vec<String> = (0..3)
        .map(|i| format!("p{i}: wallet(id: \"{w}\") {{ {page} }}"))
        .collect();
    cases.push((
        "three pages of 100 usage events",
        json!({ "query": format!("{{ {} }}", pages.join(" ")) }),
    ));
    let summaries: Vec<String> = (0..10)
        .map(|i| format!("s{i}: usageSummary(groupBy: THREAD) {{ key credits events }}"))
        .collect();
    cases.push((
        "10 usage summaries",
        json!({ "query": format!("{{ wallet(id: \"{w}\") {{ {} }} }}", summaries.join(" ")) }),
    ));
    let many: Vec<String> = (0..101)
        .map(|i| format!("g{i}: {}", grant(&format!("a{i}"))))
        .collect();
    cases.push((
        "101 aliases",
        json!({ "query": format!("mutation {{ {} }}", many.join(" ")) }),
    ));
    let batch: Vec<Value> = (0..11)
        .map(|i| json!({ "query": format!("mutation {{ {} }}", grant(&format!("b{i}"))) }))
        .collect();
    cases.push(("batch of 11", Value::Array(batch)));
    cases.push((
        "body over 256 KiB",
        json!({ "query": format!("mutation {{ {} }} # {}", grant("body"), "x".repeat(300 * 1024)) }),
    ));
    let reason_q = format!(
        "mutation($r: String!) {{ grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"s\", amount: 1, kind: ADMIN, reason: $r}}) {{ id }} }}"
    );
    cases.push((
        "1 MiB string variable",
        json!({ "query": reason_q, "variables": { "r": "x".repeat(1024 * 1024) } }),
    ));
    cases.push((
        "100 KiB string variable",
        json!({ "query": reason_q, "variables": { "r": "x".repeat(100 * 1024) } }),
    ));
    let inline = format!(
        "mutation {{ grantCredits(input: {{walletId: \"{w}\", idempotencyKey: \"s\", amount: 1, kind: ADMIN, reason: \"{}\"}}) {{ id }} }}",
        "x".repeat(100 * 1024)
    );
    cases.push(("100 KiB string literal", json!({ "query": inline })));
    cases.push(("empty batch", json!([])));
    cases.push(("not GraphQL", json!({ "nope": 1 })));
    cases.push((
        "unknown operation name",
        json!({ "query": format!("mutation a {{ {} }}", grant("op")), "operationName": "b" }),
    ));
    cases.push((
        "two anonymous operations",
        json!({ "query": format!("mutation {{ {} }} mutation {{ {} }}", grant("x1"), grant("x2")) }),
    ));

    let before = state(&app, &[&w]).await;
    for (name, body) in &cases {
        let (status, resp) = app.post(Some(&app.admin), body).await;
        let code = match &resp {
            Value::Array(rs) => panic!("{name}: ran as a batch of {}: {resp}", rs.len()),
            r => error_code(r),
        };
        assert_eq!(code, "INVALID_INPUT", "{name}: {resp}");
        assert!(
            resp["data"].is_null(),
            "{name}: a refused request returned data: {resp}"
        );
        assert!(
            status == 200 || status == 400 || status == 413,
            "{name}: {status}"
        );
        assert_eq!(before, state(&app, &[&w]).await, "{name} changed the state");
    }
    // The server is still serving.
    let ok = app
        .ok(
            &app.admin,
            &format!("mutation {{ {} }}", grant("after")),
            json!({}),
        )
        .await;
    assert!(ok["grantCredits"]["id"].is_string());
    // One full page with every field, and the dashboard's three summaries, are within the
    // limit.
    let page = "usage(first: 100) { edges { cursor node { id idempotencyKey threadId model memberId inputTokens cachedTokens outputTokens cost uncollected pricedBy at charged { bucket grantId amount } } } pageInfo { hasNextPage endCursor } }";
    let one = format!(
        "{{ wallet(id: \"{w}\") {{ {page} a: usageSummary(groupBy: THREAD) {{ key credits events }} b: usageSummary(groupBy: MODEL) {{ key credits events }} c: usageSummary(groupBy: DAY, thenBy: MODEL) {{ key subKey credits events }} }} }}"
    );
    let ok = app.ok(&app.admin, &one, json!({})).await;
    assert!(ok["wallet"]["usage"]["edges"].is_array(), "{ok}");
    // A model filter is as long as a model id at most, as the thread filter is.
    let model = "query($w: ID!, $m: String!) { wallet(id: $w) { usage(filter: {model: $m}) { edges { cursor } } } }";
    let long = json!({ "w": w, "m": "m".repeat(129) });
    assert_eq!(app.code(&app.admin, model, long).await, "INVALID_INPUT");
    eprintln!("graphql abuse cases tried: {}", cases.len());
}

/// A body over the limit gets its code although the client is still writing it when the
/// limit is passed: the server reads the rest (up to 16 MiB), drops it, then answers 413.
/// (Closing at once left such a client a broken pipe or a reset, and no answer.)
async fn an_oversized_body_is_read_to_its_end_then_answered(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = App::spawn(b).await;
    let chunk = vec![b' '; 64 * 1024];
    let len = 64 * chunk.len(); // 4 MiB
    let mut socket = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        app.addr(),
        app.admin
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // 512 KiB, past the limit, then a pause: the server has refused before the rest.
    for _ in 0..8 {
        socket.write_all(&chunk).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 8..64 {
        socket
            .write_all(&chunk)
            .await
            .expect("the server reads the rest of the body");
    }
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.expect("the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"INVALID_INPUT""#), "{answer}");
}

/// The server's answer to a WebSocket handshake that did not upgrade.
async fn refused_handshake(app: &App) -> (u16, String) {
    let req = app.ws_request("graphql-transport-ws");
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("the WebSocket was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("not an HTTP refusal: {e}"),
    }
}

/// A raw socket that upgraded and sends nothing (retried while places are still being
/// freed by closed sockets).
async fn idle_socket(
    app: &App,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = app.ws_request("graphql-transport-ws");
        match tokio_tungstenite::connect_async(req).await {
            Ok((s, _)) => return s,
            Err(e) => assert!(Instant::now() < deadline, "no free place: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Found by review: nothing bounded open HTTP connections, and each can hold a response
/// its client does not read. Past `--max-connections` a connection waits to be accepted,
/// and is served once another closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX: usize = 4;
    let app = App::spawn_env(
        Backend::Sqlite,
        None,
        &[("CREDITD_MAX_CONNECTIONS", &MAX.to_string())],
    )
    .await;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr());
    // Kept-alive connections, each answered once, until one is not (the test client's own
    // pooled connections may hold some of the places).
    let mut open = Vec::new();
    let mut waiting = loop {
        assert!(
            open.len() <= MAX,
            "more than {MAX} connections served at once"
        );
        let mut socket = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        match tokio::time::timeout(Duration::from_secs(1), socket.read_exact(&mut head)).await {
            Ok(read) => {
                read.unwrap();
                assert_eq!(&head, b"HTTP/1.1 200");
                open.push(socket);
            }
            Err(_) => break socket,
        }
    };
    assert!(!open.is_empty(), "no connection was served");
    drop(open.remove(0));
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), waiting.read_exact(&mut head))
        .await
        .expect("served once another connection closed")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

const MAX_WS: usize = 4;

async fn websocket_connections_are_bounded(b: Backend) {
    let app = App::spawn_env(
        b,
        Some(crate::helpers::START),
        &[("CREDITD_MAX_WEBSOCKETS", &MAX_WS.to_string())],
    )
    .await;
    let w = app.wallet("alice", "pro").await;
    let mut open = Vec::new();
    for _ in 0..MAX_WS {
        let (ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
        assert!(matches!(init, Init::Ack), "{init:?}");
        open.push(ws);
    }
    // A flood past the bound: every one refused before the upgrade, with a code.
    let flood = futures::future::join_all((0..50).map(|_| refused_handshake(&app))).await;
    for (status, body) in flood {
        assert_eq!(status, 503);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error_code(&body), "UNAVAILABLE");
    }
    // HTTP is unaffected, and the open sockets still work.
    assert_eq!(app.balance(&w).await["total"], "520");
    open[0]
        .subscribe(
            "b",
            "subscription($w: ID!) { balanceChanged(walletId: $w) { cause } }",
            json!({ "w": w }),
        )
        .await;
    assert_eq!(
        open[0].next_data("b").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    // A message over the body limit closes that socket with 1009 (message too big) and
    // changes nothing else. (Found by review: it closed with no close frame at all.)
    let subscribe = |size: usize| {
        let query = format!(
            "subscription($w: ID!) {{ balanceChanged(walletId: $w) {{ cause }} }} # {}",
            "x".repeat(size)
        );
        json!({ "id": "big", "type": "subscribe", "payload": { "query": query, "variables": { "w": w } } })
    };
    let mut big = open.pop().unwrap();
    big.send(subscribe(300 * 1024)).await;
    assert_eq!(big.close_code().await, Some(1009));
    drop(big);
    // One far over it is not read whole: the server may close while it is still going
    // out (a broken pipe here is that close, seen early).
    let mut huge = open.pop().unwrap();
    let written = huge.try_send(subscribe(8 * 1024 * 1024)).await;
    assert!(
        !written || huge.closed().await,
        "an 8 MiB WebSocket message was read"
    );
    drop(huge);
    // The closed socket's place is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_, init) = loop {
        match Ws::try_connect(&app, "graphql-transport-ws", &app.admin).await {
            Ok(ws) => break ws,
            Err(status) => assert_eq!(status, 503),
        }
        assert!(
            Instant::now() < deadline,
            "a closed socket's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(matches!(init, Init::Ack));
    drop(open);

    // Anonymous sockets that never send `connection_init` cannot hold the places: the
    // server closes them after its init timeout.
    let mut idle = Vec::new();
    let first_idle = Instant::now();
    for _ in 0..MAX_WS {
        idle.push(idle_socket(&app).await);
    }
    // While they all hold their places (the first is closed 10 s after it opened; on a
    // loaded machine the last may take that long to get in), one more is refused.
    if first_idle.elapsed() < Duration::from_secs(8) {
        let (status, _) = refused_handshake(&app).await;
        assert_eq!(status, 503);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &mut idle {
        use futures::StreamExt;
        let end = tokio::time::timeout_at(deadline.into(), async {
            loop {
                match s.next().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(m)) if m.is_close() => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "an idle socket was never closed");
    }
    drop(idle);
    // Their places are free again.
    idle_socket(&app).await;
}

/// Debits after which a subscriber that reads nothing has certainly fallen behind: more
/// than the wallet's event channel (256) plus what the sockets' buffers hold.
const DEBITS: usize = 600;
const LOTS: usize = 100;

/// A subscriber that stops reading falls behind the wallet's event channel; once it reads
/// again it gets every event it missed, read back from the store, in order (it used to be
/// told to resync with a SNAPSHOT; that is now for one more than 10,000 records behind,
/// tested in `credits-graphql`'s subscription tests).
async fn a_subscriber_that_stops_reading_gets_every_event_once_it_reads(b: Backend) {
    // The subscriber stops reading for as long as the debits take (30 s and more on a
    // loaded machine): a keepalive long enough that it is not let go.
    let app = App::spawn_env(
        b,
        Some(crate::helpers::START),
        &[("CREDITD_WS_KEEPALIVE", "600")],
    )
    .await;
    let w = app.wallet("alice", "pro").await;
    // A hundred lots make every event carry a large balance (~20 KB), so the socket
    // buffers fill long before the last debit.
    for i in 0..LOTS {
        app.ok(
            &app.admin,
            "mutation($w: ID!, $k: String!) { grantCredits(input: {walletId: $w, idempotencyKey: $k, amount: 1, kind: ADMIN, reason: \"padding the balance of every event\"}) { id } }",
            json!({ "w": w, "k": format!("g{i}") }),
        )
        .await;
    }
    let (mut slow, init) =
        Ws::connect_with(&app, "graphql-transport-ws", &app.admin, Some(4096)).await;
    assert!(matches!(init, Init::Ack));
    slow.subscribe(
        "s",
        "subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause balance { ...Bal } } }",
        json!({ "w": w }),
    )
    .await;
    // Wait for the subscription to be live, then stop reading.
    let first = slow.next_data("s").await;
    assert_eq!(first["balanceChanged"]["cause"], "SNAPSHOT");
    let start_seq = first["balanceChanged"]["seq"].as_i64().unwrap();

    let len_before = ledger_len(&app, &w);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut last = Value::Null;
    for i in 0..DEBITS {
        let t = Instant::now();
        let r = app
            .record(&w, &format!("u{i}"), "t", "economy-mini", 0, 1)
            .await;
        slowest = slowest.max(t.elapsed());
        assert!(
            r["errors"].is_null(),
            "debit {i} while a subscriber sleeps: {r}"
        );
        last = r["data"]["recordUsage"]["balance"].clone();
    }
    eprintln!(
        "{DEBITS} debits with a stalled subscriber: {:?} in all, slowest {slowest:?}",
        started.elapsed()
    );
    let final_seq = start_seq + DEBITS as i64;
    assert_eq!(ledger_len(&app, &w), len_before + DEBITS as i64);

    // Now read: every event follows the one before it, and the stream ends on the final
    // balance. The subscriber fell behind (the server could not write the events to the
    // socket, and the channel holds 256): what it missed is read back from the store.
    let mut prev = start_seq;
    loop {
        let e = slow.next_data("s").await["balanceChanged"].clone();
        let seq = e["seq"].as_i64().unwrap();
        assert_eq!(
            (seq, &e["cause"]),
            (prev + 1, &json!("USAGE")),
            "after {prev}"
        );
        prev = seq;
        if seq == final_seq {
            assert_eq!(e["balance"], last, "the last event shows the final balance");
            break;
        }
    }
    let reads = app
        .metric("credits_subscription_catch_up_reads_total")
        .await;
    assert!(
        reads > 0.0,
        "the subscriber never fell behind; the test proves nothing"
    );
    assert_eq!(app.metric("credits_subscription_resyncs_total").await, 0.0);
}

/// One WebSocket holds at most `MAX_SUBSCRIPTIONS_PER_SOCKET` (256) subscriptions at once:
/// completed ones free their place, and one more is refused on its own.
async fn subscriptions_on_one_socket_are_bounded(b: Backend) {
    const MAX: usize = 256;
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    let query = "subscription($w: ID!) { balanceChanged(walletId: $w) { cause } }";
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    // One subscription opened and completed by the client frees its place.
    ws.subscribe("done", query, json!({ "w": w })).await;
    assert_eq!(
        ws.next_data("done").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    ws.send(json!({ "id": "done", "type": "complete" })).await;
    for i in 0..MAX {
        ws.subscribe(&format!("s{i}"), query, json!({ "w": w }))
            .await;
    }
    // Every one of them is served (snapshots arrive in any order).
    let mut served = std::collections::HashSet::new();
    while served.len() < MAX {
        let m = ws
            .recv()
            .await
            .expect("the socket stays open within the bound");
        if m["type"] == "next" {
            assert_eq!(m["payload"]["data"]["balanceChanged"]["cause"], "SNAPSHOT");
            served.insert(m["id"].as_str().unwrap().to_owned());
        }
    }
    // Found by review: one more closed the whole socket, and with it the 256 streams
    // the client had. Only that one is refused now (graphql-transport-ws `error`).
    ws.subscribe("one-too-many", query, json!({ "w": w })).await;
    let refused = ws
        .recv()
        .await
        .expect("the socket stays open past the bound");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "one-too-many", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "INVALID_INPUT",
        "{refused}"
    );
    // The others stream on, and a completed one frees a place again.
    app.record(&w, "k", "t", "standard-chat", 1000, 100).await;
    let mut usage = 0;
    while usage < MAX {
        let m = ws.recv().await.expect("still open");
        assert_ne!(m["id"], "one-too-many", "{m}");
        if m["type"] == "next" && m["payload"]["data"]["balanceChanged"]["cause"] == "USAGE" {
            usage += 1;
        }
    }
    ws.send(json!({ "id": "s0", "type": "complete" })).await;
    ws.subscribe("in-its-place", query, json!({ "w": w })).await;
    assert_eq!(
        ws.next_data("in-its-place").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
}

/// DNS rebinding (found by review): a page the user visits points a name of its own at
/// 127.0.0.1 and calls the local server as its own origin. A server listening on loopback
/// only answers requests that name a loopback host; the page cannot make the browser send
/// one. (Every other test here reaches the server as 127.0.0.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_server_refuses_other_host_names() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Behind a reverse proxy that passes its own name, that name is allowed too.
    let app = App::spawn_env(
        Backend::Sqlite,
        Some(crate::helpers::START),
        &[(
            "CREDITD_ALLOWED_HOSTS",
            "credits.example, Proxy.Example.:8443",
        )],
    )
    .await;
    let ask = |host: &str, origin: Option<&str>| {
        let (addr, token) = (app.addr().to_owned(), app.admin.clone());
        let (host, origin) = (host.to_owned(), origin.map(str::to_owned));
        async move {
            let body = r#"{"query":"{ __typename }"}"#;
            let origin = origin
                .map(|o| format!("Origin: {o}\r\n"))
                .unwrap_or_default();
            let request = format!(
                "POST /graphql HTTP/1.1\r\nHost: {host}\r\n{origin}Authorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            socket.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            socket.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    for host in [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.evil.example",
    ] {
        let answer = ask(host, None).await;
        assert!(answer.starts_with("HTTP/1.1 421"), "{host}: {answer}");
        assert!(answer.contains(r#""code":"FORBIDDEN""#), "{host}: {answer}");
    }
    for host in [
        "localhost:1",
        "127.0.0.1",
        "[::1]:8080",
        "credits.example:443",
        "proxy.example",
    ] {
        let answer = ask(host, None).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    // A page of another site reaches 127.0.0.1 with a loopback Host, but names its own
    // origin: refused (found by review: a WebSocket from any page got through).
    let answer = ask("127.0.0.1", Some("http://evil.example")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains(r#""code":"FORBIDDEN""#), "{answer}");
    let answer = ask("127.0.0.1", Some("null")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Its own pages: the origin of this server (its port too), or the proxy's name.
    let port = app.addr().rsplit_once(':').unwrap().1.to_owned();
    let host = format!("127.0.0.1:{port}");
    for origin in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        "https://credits.example".to_owned(),
    ] {
        let answer = ask(&host, Some(&origin)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{origin}: {answer}");
    }
    // Another local app's page is another origin.
    let answer = ask(&host, Some("http://localhost:3000")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let mut upgrade = app.ws_request("graphql-transport-ws");
    upgrade
        .headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(upgrade).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!(
            "a WebSocket from another site's page: {:?}",
            other.map(|_| ())
        ),
    }
}
