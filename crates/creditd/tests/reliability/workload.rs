//! The load and the checks shared by the scenarios: concurrent clients sending key-carrying
//! mutations (recordUsage, reserve/settle/release, grantCredits, purchaseBundle) and
//! recording each outcome, then a verifier that reads the ledger straight from the store,
//! retries every operation with its key, and checks SPEC 11 for every wallet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credits_core::ledger::{EntryKind, ReleaseReason};
use credits_core::wallet::LotOrigin;
use credits_core::{Credits, Entry};
use credits_store::Store;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::helpers::App;

/// Bound on one client request: a request to a killed server fails at once, one to a
/// server that stopped answering must not hold a client for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause of a client after an answer that says the server is down or shedding load.
const BACKOFF: Duration = Duration::from_millis(20);
/// How many failures the verifier prints in full.
const SHOWN_FAILURES: usize = 20;

/// A small deterministic generator (splitmix64): one seed replays a run's choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `RELIABILITY_SEED`, or a fresh random seed.
pub fn seed() -> u64 {
    match std::env::var("RELIABILITY_SEED") {
        Ok(s) => s.parse().expect("RELIABILITY_SEED is an unsigned integer"),
        Err(_) => u64::from_str_radix(&crate::helpers::random_hex()[..16], 16).unwrap(),
    }
}

/// An environment variable as a number, or a default.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

/// A wallet under load: a personal wallet, or a team pool with its members.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub members: Vec<String>,
}

/// Creates the wallets of a run: `personal` personal wallets on `pro` (520 credits), and
/// last one team pool, the hot wallet, with three admin members on a custom plan with 40
/// credits, so that spending soon outpaces the grants and purchases that refill it.
pub async fn wallets(app: &App, personal: usize) -> Vec<Target> {
    app.ok(
        &app.admin,
        "mutation { upsertPlan(input: {id: \"tight\", name: \"Tight\", dailyCredits: \"0\", subscriptionCredits: \"40\", interval: MONTHLY, modelTiers: [\"economy\", \"standard\", \"premium\"]}) { id } }",
        json!({}),
    )
    .await;
    let mut targets = Vec::new();
    for i in 0..personal {
        targets.push(Target {
            id: app.wallet(&format!("user{i}"), "pro").await,
            members: Vec::new(),
        });
    }
    let members = vec!["m1".to_owned(), "m2".to_owned(), "m3".to_owned()];
    let d = app
        .ok(
            &app.admin,
            "mutation($a: [String!]!) { createTeam(input: {name: \"Pool\", planId: \"tight\", timezone: \"UTC\", adminUserIds: $a}) { wallet { id } } }",
            json!({ "a": members }),
        )
        .await;
    targets.push(Target {
        id: d["createTeam"]["wallet"]["id"].as_str().unwrap().to_owned(),
        members,
    });
    targets
}

/// What one operation is, by the identity the ledger knows it by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// recordUsage, reserveCredits and grantCredits: (wallet, idempotency key).
    Key(String, String),
    Settled(String),
    Released(String),
    /// purchaseBundle: its payment reference.
    Payment(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Usage,
    Reserve,
    Settle,
    Release,
    Grant,
    Purchase,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Usage => "recordUsage",
            Kind::Reserve => "reserveCredits",
            Kind::Settle => "settleReservation",
            Kind::Release => "releaseReservation",
            Kind::Grant => "grantCredits",
            Kind::Purchase => "purchaseBundle",
        }
    }
}

/// What the service answered.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The mutation's field (the receipt).
    Acked(Value),
    /// A definite refusal with this code.
    Refused(String),
    /// No answer, a non-GraphQL answer or `UNAVAILABLE`: the outcome is unknown.
    Unknown(String),
}

impl Outcome {
    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }
}

/// One operation sent, with its request (for retries) and what came back.
#[derive(Clone, Debug)]
pub struct Op {
    pub kind: Kind,
    pub identity: Identity,
    pub body: Value,
    pub outcome: Outcome,
    /// Which of the run's URLs (nodes) it was sent to first.
    pub url: usize,
}

/// The refusals this workload can earn: spending beyond a wallet or a member's limit.
/// Anything else (a pricing failure, FORBIDDEN, a conflict, an error without a code) is a
/// failure of the run, also on a retry (found by review: any code passed).
const EARNABLE: &[&str] = &["INSUFFICIENT_CREDITS", "MEMBER_LIMIT_EXCEEDED"];

/// Output tokens of one usage, at most: up to 15 credits on `standard-chat`, so that with
/// the mix of [`next_op`] spending outpaces grants and purchases and wallets run dry
/// (all-or-nothing refusals, and any credit spent twice would show as an overdraft).
const MAX_OUTPUT_TOKENS: u64 = 100_000;

const USAGE_FIELDS: &str = "id cost uncollected charged { bucket grantId amount }";

pub fn usage_body(wallet: &Target, key: &str, rng: &mut Rng) -> Value {
    let model = ["economy-mini", "standard-chat"][rng.below(2) as usize];
    let member = (!wallet.members.is_empty())
        .then(|| wallet.members[rng.below(wallet.members.len() as u64) as usize].clone());
    json!({
        "query": format!("mutation($i: RecordUsageInput!) {{ recordUsage(input: $i) {{ replayed usage {{ {USAGE_FIELDS} }} }} }}"),
        "variables": { "i": {
            "walletId": wallet.id, "idempotencyKey": key, "threadId": format!("t{}", rng.below(5)),
            "model": model, "inputTokens": 1 + rng.below(5_000), "outputTokens": 1 + rng.below(MAX_OUTPUT_TOKENS),
            "memberId": member,
        }},
    })
}

fn reserve_body(wallet: &Target, key: &str, rng: &mut Rng) -> Value {
    let member = (!wallet.members.is_empty())
        .then(|| wallet.members[rng.below(wallet.members.len() as u64) as usize].clone());
    json!({
        "query": "mutation($i: ReserveInput!) { reserveCredits(input: $i) { id amount } }",
        "variables": { "i": {
            "walletId": wallet.id, "idempotencyKey": key,
            "amount": format!("{}.{:02}", 1 + rng.below(3), rng.below(100)),
            "ttlSeconds": 3600, "memberId": member,
        }},
    })
}

fn settle_body(reservation: &str, rng: &mut Rng) -> Value {
    json!({
        "query": format!("mutation($i: SettleInput!) {{ settleReservation(input: $i) {{ replayed usage {{ {USAGE_FIELDS} }} }} }}"),
        "variables": { "i": {
            "reservationId": reservation, "threadId": "settled", "model": "standard-chat",
            "inputTokens": rng.below(10_000), "outputTokens": rng.below(20_000),
        }},
    })
}

fn release_body(reservation: &str) -> Value {
    json!({
        "query": "mutation($id: ID!) { releaseReservation(id: $id) { id amount status } }",
        "variables": { "id": reservation },
    })
}

fn grant_body(wallet: &Target, key: &str, rng: &mut Rng) -> Value {
    json!({
        "query": "mutation($i: GrantInput!) { grantCredits(input: $i) { id amount } }",
        "variables": { "i": {
            "walletId": wallet.id, "idempotencyKey": key,
            "amount": format!("{}.5", 1 + rng.below(5)), "kind": "ADMIN", "reason": "reliability",
        }},
    })
}

fn purchase_body(wallet: &Target, payment: &str) -> Value {
    json!({
        "query": "mutation($i: PurchaseBundleInput!) { purchaseBundle(input: $i) { id amount } }",
        "variables": { "i": { "walletId": wallet.id, "bundleId": "credits-100", "paymentReference": payment } },
    })
}

/// Sends one GraphQL request and classifies the answer.
pub async fn send(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Outcome {
    let resp = match http.post(url).bearer_auth(token).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Unknown(format!("request: {e}")),
    };
    let status = resp.status();
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Outcome::Unknown(format!("body: {e}")),
    };
    let Ok(json) = serde_json::from_str::<Value>(&text) else {
        return Outcome::Unknown(format!("{status}: {text}"));
    };
    match json["errors"].as_array().filter(|e| !e.is_empty()) {
        Some(errors) => {
            let code = errors[0]["extensions"]["code"]
                .as_str()
                .unwrap_or("NO_CODE");
            if code == "UNAVAILABLE" {
                Outcome::Unknown(format!("{status}: {json}"))
            } else {
                Outcome::Refused(code.to_owned())
            }
        }
        None if json["data"].is_object() => Outcome::Acked(json["data"].clone()),
        None => Outcome::Unknown(format!("{status}: {json}")),
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client")
}

/// Everything the clients of a run share: the operations sent so far, the acknowledged
/// reservations not yet settled or released, and a counter that names keys.
#[derive(Default)]
pub struct Shared {
    pub ops: Mutex<Vec<Op>>,
    active: Mutex<Vec<(String, String)>>,
    next: AtomicU64,
}

/// Picks and builds the next operation.
fn next_op(rng: &mut Rng, targets: &[Target], shared: &Shared) -> (Kind, String, Identity, Value) {
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let key = format!("k{n}");
    // One in three operations goes to the hot pool (the last target).
    let target = if rng.below(3) == 0 {
        &targets[targets.len() - 1]
    } else {
        &targets[rng.below(targets.len() as u64) as usize]
    };
    let wallet = target.id.clone();
    let roll = rng.below(100);
    if (55..80).contains(&roll) {
        let taken = {
            let mut active = shared.active.lock().unwrap();
            if active.is_empty() {
                None
            } else {
                let i = rng.below(active.len() as u64) as usize;
                Some(active.swap_remove(i))
            }
        };
        if let Some((wallet, reservation)) = taken {
            return if roll < 70 {
                let body = settle_body(&reservation, rng);
                (Kind::Settle, wallet, Identity::Settled(reservation), body)
            } else {
                let body = release_body(&reservation);
                (Kind::Release, wallet, Identity::Released(reservation), body)
            };
        }
    }
    let id = Identity::Key(wallet.clone(), key.clone());
    match roll {
        0..40 => (Kind::Usage, wallet, id, usage_body(target, &key, rng)),
        40..55 => (Kind::Reserve, wallet, id, reserve_body(target, &key, rng)),
        // A settle or release with no reservation to finish.
        55..80 => (Kind::Usage, wallet, id, usage_body(target, &key, rng)),
        80..90 => (Kind::Grant, wallet, id, grant_body(target, &key, rng)),
        90..93 => {
            let payment = format!("pay-{n}");
            let body = purchase_body(target, &payment);
            (Kind::Purchase, wallet, Identity::Payment(payment), body)
        }
        _ => (Kind::Usage, wallet, id, usage_body(target, &key, rng)),
    }
}

/// Runs `clients` concurrent clients against `urls` (each request to a random one) until
/// `stop` is set; every operation and its outcome lands in `shared.ops`.
pub fn spawn_clients(
    clients: usize,
    urls: Vec<String>,
    token: String,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (urls, token, targets, shared, stop) = (
                urls.clone(),
                token.clone(),
                targets.clone(),
                shared.clone(),
                stop.clone(),
            );
            let mut rng = Rng::new(seed ^ ((c as u64 + 1) << 32));
            tokio::spawn(async move {
                let http = http_client();
                while !stop.load(Ordering::Relaxed) {
                    let (kind, wallet, identity, body) = next_op(&mut rng, &targets, &shared);
                    let url = rng.below(urls.len() as u64) as usize;
                    let outcome = send(&http, &urls[url], &token, &body).await;
                    if let (Kind::Reserve, Outcome::Acked(d)) = (kind, &outcome) {
                        let id = d[kind.field()]["id"].as_str().unwrap().to_owned();
                        shared.active.lock().unwrap().push((wallet, id));
                    }
                    let unknown = outcome.is_unknown();
                    shared.ops.lock().unwrap().push(Op {
                        kind,
                        identity,
                        body,
                        outcome,
                        url,
                    });
                    if unknown {
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            })
        })
        .collect()
}

/// Counts of a verified run.
#[derive(Debug, Default)]
pub struct Tally {
    pub acked: usize,
    pub refused: usize,
    pub unknown: usize,
    /// Unknown operations the ledger already held before any retry (the reply was lost).
    pub unknown_durable: usize,
    /// Unknown or refused operations that a retry acknowledged (first time or replay).
    pub acked_on_retry: usize,
    pub lost: usize,
    pub doubled: usize,
    pub refusals: HashMap<String, usize>,
    /// Why outcomes were unknown (the error's code or the transport error's kind).
    pub unknowns: HashMap<String, usize>,
    /// Definite refusals the operation had not earned: `RESERVATION_NOT_ACTIVE` for a
    /// reservation that nothing else finished (the workload settles or releases each
    /// reservation once, and the manual clock never lets one expire).
    pub unearned: usize,
    /// Operations acknowledged at their first attempt, by the URL they were sent to.
    pub acked_by_url: Vec<usize>,
}

/// Every ledger record of a wallet, in seq order, read straight from the store.
pub async fn ledger(store: &Store, wallet: &str) -> Vec<Entry> {
    let sql = match store.backend() {
        credits_store::Backend::Postgres => {
            "SELECT seq, entry FROM ledger WHERE wallet_id = $1 ORDER BY seq"
        }
        _ => "SELECT seq, entry FROM ledger WHERE wallet_id = ? ORDER BY seq",
    };
    let backend = match store.backend() {
        credits_store::Backend::Postgres => DbBackend::Postgres,
        _ => DbBackend::Sqlite,
    };
    let rows = store
        .connection()
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [wallet.into()],
        ))
        .await
        .expect("read the ledger");
    rows.iter()
        .map(|r| {
            let text: String = r.try_get("", "entry").expect("an entry column");
            serde_json::from_str(&text).expect("a ledger entry")
        })
        .collect()
}

/// What the ledger holds for each identity: (seq, the fields a receipt shows).
type Index = HashMap<Identity, Vec<(u64, Value)>>;

async fn index(store: &Store, wallets: &[String]) -> Index {
    let mut index: Index = HashMap::new();
    for w in wallets {
        for e in ledger(store, w).await {
            let mut add = |id: Identity, v: Value| index.entry(id).or_default().push((e.seq, v));
            match &e.kind {
                EntryKind::Usage { usage, .. } => add(
                    Identity::Key(w.clone(), usage.key.clone()),
                    json!({ "id": usage.id.to_string(), "cost": usage.cost.to_string() }),
                ),
                EntryKind::Reserved { reservation, .. } => add(
                    Identity::Key(w.clone(), reservation.key.clone()),
                    json!({ "id": reservation.id.to_string(), "amount": reservation.amount.to_string() }),
                ),
                EntryKind::Settled { usage, .. } => add(
                    Identity::Settled(
                        usage
                            .reservation_id
                            .as_ref()
                            .expect("a settlement names its reservation")
                            .to_string(),
                    ),
                    json!({ "id": usage.id.to_string(), "cost": usage.cost.to_string() }),
                ),
                EntryKind::Released {
                    reservation_id,
                    reason: ReleaseReason::Released,
                    ..
                } => add(
                    Identity::Released(reservation_id.to_string()),
                    json!({ "id": reservation_id.to_string() }),
                ),
                EntryKind::Granted { key, lot, .. } => {
                    let v = json!({ "id": lot.id.to_string(), "amount": lot.amount.to_string() });
                    if let Some(LotOrigin::Bundle {
                        payment_reference, ..
                    }) = &lot.origin
                    {
                        add(Identity::Payment(payment_reference.clone()), v.clone());
                    } else if let Some(k) = key {
                        add(Identity::Key(w.clone(), k.clone()), v);
                    }
                }
                _ => {}
            }
        }
    }
    index
}

/// The fields of a receipt that the ledger records (compare with [`index`]).
fn receipt_fields(kind: Kind, receipt: &Value) -> Value {
    let r = &receipt[kind.field()];
    match kind {
        Kind::Usage | Kind::Settle => {
            json!({ "id": r["usage"]["id"], "cost": r["usage"]["cost"] })
        }
        Kind::Release => json!({ "id": r["id"] }),
        Kind::Reserve | Kind::Grant | Kind::Purchase => {
            json!({ "id": r["id"], "amount": r["amount"] })
        }
    }
}

/// What a retry of an acknowledged operation must answer: the same receipt (a reservation
/// may have moved on since, so only its id and amount are compared).
fn same_receipt(kind: Kind, first: &Value, again: &Value) -> bool {
    let (a, b) = (&first[kind.field()], &again[kind.field()]);
    match kind {
        Kind::Usage | Kind::Settle => a["usage"] == b["usage"] && b["replayed"] == true,
        Kind::Reserve | Kind::Grant | Kind::Purchase => {
            a["id"] == b["id"] && a["amount"] == b["amount"]
        }
        Kind::Release => a == b,
    }
}

/// Checks a finished run against the store: every acknowledged operation is in the ledger
/// exactly once with what was acknowledged, nothing refused is there, retrying every
/// operation with its key through `urls` returns the same receipt or applies it at most
/// once, and every wallet conserves and replays (SPEC 11). Panics listing what is wrong.
pub async fn verify(
    store: &Store,
    urls: &[String],
    token: &str,
    targets: &[Target],
    ops: &[Op],
) -> Tally {
    let wallets: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
    let mut failures = Vec::new();
    let mut tally = Tally {
        acked_by_url: vec![0; urls.len()],
        ..Tally::default()
    };

    // 1. What the ledger holds now, before any retry.
    let before = index(store, &wallets).await;
    for op in ops {
        let hits = before.get(&op.identity).map_or(&[][..], Vec::as_slice);
        if hits.len() > 1 {
            tally.doubled += 1;
            failures.push(format!("applied {} times: {op:?} at {hits:?}", hits.len()));
        }
        match &op.outcome {
            Outcome::Acked(r) => {
                tally.acked += 1;
                if let Some(n) = tally.acked_by_url.get_mut(op.url) {
                    *n += 1;
                }
                match hits.first() {
                    None => {
                        tally.lost += 1;
                        failures.push(format!("acknowledged but not in the ledger: {op:?}"));
                    }
                    Some((seq, v)) if *v != receipt_fields(op.kind, r) => failures.push(format!(
                        "ledger seq {seq} holds {v} but the receipt said {r}: {op:?}"
                    )),
                    Some(_) => {}
                }
            }
            Outcome::Refused(code) => {
                tally.refused += 1;
                *tally.refusals.entry(code.clone()).or_default() += 1;
                if code == "RESERVATION_NOT_ACTIVE" {
                    tally.unearned += 1;
                } else if !EARNABLE.contains(&code.as_str()) {
                    failures.push(format!("refused with {code}, which it cannot earn: {op:?}"));
                }
                if !hits.is_empty() {
                    failures.push(format!("refused ({code}) but in the ledger: {op:?}"));
                }
            }
            Outcome::Unknown(why) => {
                let reason = if why.contains("UNAVAILABLE") {
                    "UNAVAILABLE"
                } else if why.starts_with("request") || why.starts_with("body") {
                    "no answer"
                } else {
                    "other"
                };
                *tally.unknowns.entry(reason.to_owned()).or_default() += 1;
                tally.unknown += 1;
                tally.unknown_durable += usize::from(!hits.is_empty());
            }
        }
    }

    // 2. Retry every operation with its key, in the order they were first sent.
    let http = http_client();
    let mut applied = vec![false; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        let url = &urls[i % urls.len()];
        let again = send(&http, url, token, &op.body).await;
        match (&op.outcome, &again) {
            (Outcome::Acked(first), Outcome::Acked(second)) => {
                applied[i] = true;
                if !same_receipt(op.kind, first, second) {
                    tally.doubled += 1;
                    failures.push(format!(
                        "a retry answered {second} instead of {first}: {op:?}"
                    ));
                }
            }
            (Outcome::Acked(first), other) => failures.push(format!(
                "a retry of an acknowledged operation answered {other:?} (first {first}): {op:?}"
            )),
            (_, Outcome::Acked(_)) => {
                applied[i] = true;
                tally.acked_on_retry += 1;
            }
            (_, Outcome::Refused(code)) if EARNABLE.contains(&code.as_str()) => {}
            (_, Outcome::Refused(code)) => failures.push(format!(
                "a retry was refused with {code}, which it cannot earn: {op:?}"
            )),
            (_, Outcome::Unknown(e)) => {
                failures.push(format!("a retry on a healthy server: {e}: {op:?}"))
            }
        }
    }

    // 3. Each operation is now in the ledger exactly once if it was ever applied.
    let after = index(store, &wallets).await;
    for (op, applied) in ops.iter().zip(applied) {
        let n = after.get(&op.identity).map_or(0, Vec::len);
        let expected = usize::from(applied);
        if n != expected {
            if n > expected {
                tally.doubled += 1;
            } else if matches!(op.outcome, Outcome::Acked(_)) {
                tally.lost += 1;
            }
            failures.push(format!(
                "after the retries, in the ledger {n} times, expected {expected}: {op:?}"
            ));
        }
    }

    // 4. SPEC 11 for every wallet.
    for w in &wallets {
        if let Err(e) = check_wallet(store, w).await {
            failures.push(format!("wallet {w}: {e}"));
        }
    }

    assert!(
        failures.is_empty(),
        "{} failures (first {SHOWN_FAILURES}):\n{}\n{tally:?}",
        failures.len(),
        failures
            .iter()
            .take(SHOWN_FAILURES)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    tally
}

/// Conservation, no negative bucket or lot, contiguous seqs, and the replayed ledger equal
/// to the stored snapshot (SPEC 11).
pub async fn check_wallet(store: &Store, wallet: &str) -> Result<(), String> {
    let (stored, _version) = store
        .load_state(wallet)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no wallet row")?;
    let entries = ledger(store, wallet).await;
    for (i, e) in entries.iter().enumerate() {
        if e.seq != i as u64 {
            return Err(format!("record {i} has seq {}", e.seq));
        }
    }
    if entries.last().map(|e| e.seq) != Some(stored.seq) {
        return Err(format!(
            "the snapshot is at seq {}, the ledger ends at {:?}",
            stored.seq,
            entries.last().map(|e| e.seq)
        ));
    }
    let flows = entries
        .iter()
        .map(Entry::flows)
        .fold(credits_core::ledger::Flows::default(), |a, b| a + b);
    if flows.held != stored.reserved() {
        return Err(format!(
            "held by the ledger {} != reserved {}",
            flows.held,
            stored.reserved()
        ));
    }
    let spendable: Credits = flows.granted - flows.debited - flows.expired - flows.held;
    if spendable != stored.spendable() {
        return Err(format!(
            "conservation: the ledger says {spendable}, the wallet has {}",
            stored.spendable()
        ));
    }
    if !stored.is_consistent() {
        return Err("a bucket or lot is negative or does not add up".into());
    }
    let mut replayed = store
        .replay_wallet(wallet)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("nothing to replay")?;
    // The wallet's clock moves without a record when nothing falls due.
    replayed.now = stored.now;
    if replayed != stored {
        return Err(format!(
            "replay differs:\n{replayed:#?}\nvs the snapshot\n{stored:#?}"
        ));
    }
    Ok(())
}
