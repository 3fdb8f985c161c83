//! A load generator for a running `creditd` (issue 7): N wallets, C concurrent HTTP
//! clients, S open `balanceChanged` subscriptions over WebSocket.
//!
//! One run measures, against the same server, one phase after the other:
//! 1. the ceiling: a trivial query (`{ __typename }`) at C clients;
//! 2. `recordUsage` at C clients spread over the N wallets;
//! 3. with S subscriptions open (`graphql-transport-ws`, many per connection), `recordUsage`
//!    on the subscribed wallets, timing each event from its `at` (the instant the server
//!    stamped on the ledger record) to its arrival at the subscriber.
//!
//! It creates its own plan and wallets with an admin token; every key carries a run tag,
//! so runs against the same database do not collide.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub admin_token: String,
    /// N: wallets created for the run.
    pub wallets: usize,
    /// C: concurrent HTTP clients.
    pub clients: usize,
    /// Length of each measured phase.
    pub duration: Duration,
    /// S: open `balanceChanged` subscriptions in the third phase (0 skips it).
    pub subscriptions: usize,
    /// Subscriptions multiplexed on one WebSocket connection.
    pub subscriptions_per_connection: usize,
    /// The model every usage is priced with.
    pub model: String,
}

/// Requests of one phase.
#[derive(Debug, Default)]
pub struct Phase {
    /// Successful requests answered by the phase's end.
    pub ok: u64,
    /// Successful requests answered after it (sent before it ended): not in the rate.
    pub late: u64,
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// The phase's length: the rate is `ok` over it.
    pub elapsed: Duration,
    /// Latencies of successful requests (late ones too), sorted.
    pub latencies: Vec<Duration>,
    /// CPU time the load generator itself used during the phase (Linux), to tell how much
    /// of the two cores it took from the server.
    pub loadgen_cpu: Option<Duration>,
}

impl Phase {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `q`-quantile (0..=1) of sorted latencies; zero when there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Subscription deliveries of the third phase.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub subscriptions: usize,
    pub connections: usize,
    /// Time to open every subscription and receive every snapshot.
    pub setup: Duration,
    /// The writes that caused the events.
    pub record: Phase,
    /// Events the subscribers should have seen (successful writes × subscribers of the wallet).
    pub expected: u64,
    /// Usage event latencies (`at` → arrival), sorted.
    pub latencies: Vec<Duration>,
    /// What each subscription's seqs showed: events missed, events seen twice, fresh
    /// SNAPSHOTs sent to a subscriber that fell behind, events of other causes, and events
    /// that arrived before their `at` (a clock difference, counted as 0 ms).
    pub seqs: SeqCheck,
}

/// Per-subscription accounting of a subscriber's events (see [`Deliveries::seqs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCheck {
    pub missed: u64,
    pub repeated: u64,
    pub resyncs: u64,
    pub other_causes: u64,
    pub before_at: u64,
}

impl SeqCheck {
    fn add(&mut self, o: SeqCheck) {
        self.missed += o.missed;
        self.repeated += o.repeated;
        self.resyncs += o.resyncs;
        self.other_causes += o.other_causes;
        self.before_at += o.before_at;
    }
}

/// The CPU time this process has used (Linux: `/proc/self/stat`, in USER_HZ = 100 ticks).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

impl Deliveries {
    /// Every expected event arrived once, in seq order.
    pub fn complete(&self) -> bool {
        self.latencies.len() as u64 == self.expected
            && self.seqs.missed == 0
            && self.seqs.repeated == 0
            && self.seqs.resyncs == 0
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub clients: usize,
    pub wallets: usize,
    pub trivial: Phase,
    pub record: Phase,
    pub deliveries: Option<Deliveries>,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = |f: &mut std::fmt::Formatter<'_>, name: &str, p: &Phase| {
            writeln!(
                f,
                "{name:<22} {:>9.0}/s  p50 {:>10}  p99 {:>10}  ok {} late {} errors {}{}{}",
                p.rate(),
                ms(p.percentile(0.5)),
                ms(p.percentile(0.99)),
                p.ok,
                p.late,
                p.errors,
                p.loadgen_cpu
                    .map(|c| format!(
                        "  loadgen CPU {:.2} cores",
                        c.as_secs_f64() / p.elapsed.as_secs_f64().max(1e-9)
                    ))
                    .unwrap_or_default(),
                p.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            )
        };
        writeln!(f, "C={} clients, N={} wallets", self.clients, self.wallets)?;
        line(f, "{ __typename }", &self.trivial)?;
        line(f, "recordUsage", &self.record)?;
        writeln!(
            f,
            "recordUsage / trivial  {:.1}%",
            100.0 * self.record.rate() / self.trivial.rate().max(1e-9)
        )?;
        if let Some(d) = &self.deliveries {
            writeln!(
                f,
                "S={} subscriptions on {} connections, open in {}",
                d.subscriptions,
                d.connections,
                ms(d.setup)
            )?;
            line(f, "recordUsage (with S)", &d.record)?;
            writeln!(
                f,
                "delivery (at->recv)    {} of {} events  p50 {}  p99 {}  max {}",
                d.latencies.len(),
                d.expected,
                ms(percentile(&d.latencies, 0.5)),
                ms(percentile(&d.latencies, 0.99)),
                ms(d.latencies.last().copied().unwrap_or_default())
            )?;
            let s = &d.seqs;
            writeln!(
                f,
                "delivery check         missed {}  repeated {}  resyncs {}  other causes {}  before their at {}{}",
                s.missed,
                s.repeated,
                s.resyncs,
                s.other_causes,
                s.before_at,
                if d.complete() {
                    ""
                } else {
                    "  (INCOMPLETE: the percentiles cover delivered events only)"
                }
            )?;
        }
        Ok(())
    }
}

/// A GraphQL-over-HTTP client with the admin token.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    endpoint: Arc<str>,
    token: Arc<str>,
}

impl Client {
    async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(&*self.endpoint)
            .bearer_auth(&*self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?;
        let status = resp.status();
        let mut body: Value = resp
            .json()
            .await
            .with_context(|| format!("HTTP {status}"))?;
        if let Some(e) = body["errors"].as_array().and_then(|e| e.first()) {
            bail!("{}: {}", e["extensions"]["code"], e["message"]);
        }
        if !status.is_success() {
            bail!("HTTP {status}");
        }
        Ok(body["data"].take())
    }
}

const PLAN: &str = "mutation($i: PlanInput!) { upsertPlan(input: $i) { id } }";
const WALLET: &str = "mutation($o: String!, $p: ID!) { createWallet(input: {ownerId: $o, planId: $p, timezone: \"UTC\"}) { id } }";
const RECORD: &str =
    "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { replayed usage { cost } } }";
const TRIVIAL: &str = "{ __typename }";
const SUBSCRIBE: &str = "subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause at } }";
const PLAN_ID: &str = "loadgen";

/// Runs `f(client, n)` on `clients` tasks for `duration`.
async fn drive<F, Fut>(clients: usize, duration: Duration, f: F) -> Phase
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let cpu_before = cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut p = Phase::default();
                let mut n = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match f(c, n).await {
                        Ok(()) => {
                            let answered = Instant::now();
                            if answered <= deadline {
                                p.ok += 1;
                            } else {
                                p.late += 1;
                            }
                            p.latencies.push(answered - t);
                        }
                        Err(e) => {
                            p.errors += 1;
                            p.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    n += 1;
                }
                p
            })
        })
        .collect();
    let mut all = Phase::default();
    for t in tasks {
        let p = t.await.expect("a load task panicked");
        all.ok += p.ok;
        all.late += p.late;
        all.errors += p.errors;
        if all.first_error.is_none() {
            all.first_error = p.first_error;
        }
        all.latencies.extend(p.latencies);
    }
    // The rate is over the phase itself: a request that hangs past its end does not
    // stretch it (it is counted late, or as an error).
    all.elapsed = duration;
    all.loadgen_cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    all.latencies.sort_unstable();
    all
}

fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("lg{nanos:x}")
}

/// Records usage on `wallets[(client + n·C) % len]`; `done` counts successes per wallet.
fn recorder(
    client: Client,
    wallets: Arc<Vec<String>>,
    clients: usize,
    model: Arc<str>,
    tag: String,
    done: Option<Arc<Vec<AtomicU64>>>,
) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |c, n| {
        let client = client.clone();
        let i = (c + n as usize * clients) % wallets.len();
        let wallet = wallets[i].clone();
        let key = format!("{tag}-{c}-{n}");
        let model = model.clone();
        let done = done.clone();
        Box::pin(async move {
            let d = client
                .gql(
                    RECORD,
                    json!({ "i": { "walletId": wallet, "idempotencyKey": key, "threadId": "loadgen",
                        "model": &*model, "inputTokens": 1000, "outputTokens": 200 } }),
                )
                .await?;
            if d["recordUsage"]["replayed"] != json!(false) {
                bail!("unexpected receipt {d}");
            }
            if let Some(done) = done {
                done[i].fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    }
}

/// Runs the three phases.
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(
        cfg.wallets > 0 && cfg.clients > 0,
        "wallets and clients must be > 0"
    );
    let base = cfg.url.trim_end_matches('/');
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(cfg.clients.max(16))
            .build()?,
        endpoint: format!("{base}/graphql").into(),
        token: cfg.admin_token.as_str().into(),
    };
    let tag = tag();

    // Setup: a plan generous enough for any run, and the wallets, C at a time.
    client
        .gql(
            PLAN,
            json!({ "i": { "id": PLAN_ID, "name": "Load generator", "dailyCredits": "1000000000",
                "subscriptionCredits": 0, "interval": "MONTHLY", "modelTiers": ["economy", "standard", "premium"] } }),
        )
        .await
        .context("upsertPlan (is the token an ADMIN token?)")?;
    let mut wallets = Vec::with_capacity(cfg.wallets);
    for chunk in (0..cfg.wallets).collect::<Vec<_>>().chunks(cfg.clients) {
        let created = futures::future::join_all(chunk.iter().map(|i| {
            let client = client.clone();
            let owner = format!("{tag}-{i}");
            async move {
                let d = client
                    .gql(WALLET, json!({ "o": owner, "p": PLAN_ID }))
                    .await?;
                d["createWallet"]["id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("createWallet returned no id")
            }
        }))
        .await;
        for w in created {
            wallets.push(w.context("createWallet")?);
        }
    }
    let wallets = Arc::new(wallets);
    let model: Arc<str> = cfg.model.as_str().into();

    // 1. The ceiling.
    let c = client.clone();
    let trivial = drive(cfg.clients, cfg.duration, move |_, _| {
        let c = c.clone();
        async move {
            let d = c.gql(TRIVIAL, json!({})).await?;
            anyhow::ensure!(d["__typename"] == "Query", "unexpected answer {d}");
            Ok(())
        }
    })
    .await;

    // 2. recordUsage over every wallet.
    let record = drive(
        cfg.clients,
        cfg.duration,
        recorder(
            client.clone(),
            wallets.clone(),
            cfg.clients,
            model.clone(),
            format!("{tag}-r"),
            None,
        ),
    )
    .await;

    let mut report = Report {
        clients: cfg.clients,
        wallets: cfg.wallets,
        trivial,
        record,
        deliveries: None,
    };
    if cfg.subscriptions > 0 {
        report.deliveries = Some(subscriptions(cfg, &client, &wallets, model, &tag).await?);
    }
    Ok(report)
}

/// Phase 3: S subscriptions on the first min(N, S) wallets, then writes on those wallets.
async fn subscriptions(
    cfg: &Config,
    client: &Client,
    wallets: &Arc<Vec<String>>,
    model: Arc<str>,
    tag: &str,
) -> anyhow::Result<Deliveries> {
    let watched = Arc::new(wallets[..cfg.wallets.min(cfg.subscriptions)].to_vec());
    let per_conn = cfg.subscriptions_per_connection.max(1);
    let connections = cfg.subscriptions.div_ceil(per_conn);
    let ws_url = format!(
        "{}/graphql",
        cfg.url
            .trim_end_matches('/')
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(connections);
    let setup_start = Instant::now();
    let mut readers = Vec::with_capacity(connections);
    for conn in 0..connections {
        let subs: Vec<(usize, String)> = (conn * per_conn
            ..((conn + 1) * per_conn).min(cfg.subscriptions))
            .map(|k| (k, watched[k % watched.len()].clone()))
            .collect();
        readers.push(tokio::spawn(reader(
            ws_url.clone(),
            cfg.admin_token.clone(),
            subs,
            ready_tx.clone(),
            stop_rx.clone(),
            received.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..connections {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e.context("opening the subscriptions")),
            Ok(None) => bail!("a subscriber ended before its snapshots"),
            Err(_) => bail!("subscriptions not open after 120 s"),
        }
    }
    let setup = setup_start.elapsed();

    let done: Arc<Vec<AtomicU64>> =
        Arc::new((0..watched.len()).map(|_| AtomicU64::new(0)).collect());
    let record = drive(
        cfg.clients,
        cfg.duration,
        recorder(
            client.clone(),
            watched.clone(),
            cfg.clients,
            model,
            format!("{tag}-s"),
            Some(done.clone()),
        ),
    )
    .await;
    // Subscribers per watched wallet: subscription k watches wallet k % len.
    let expected: u64 = done
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let subscribers = (cfg.subscriptions - i).div_ceil(watched.len()) as u64;
            n.load(Ordering::Relaxed) * subscribers
        })
        .sum();
    // Late events still count; wait until all arrived or a grace period passed.
    let grace = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(true);
    let mut latencies = Vec::new();
    let mut seqs = SeqCheck::default();
    for r in readers {
        let (seen, check) = r.await.context("a subscriber panicked")??;
        latencies.extend(seen);
        seqs.add(check);
    }
    latencies.sort_unstable();
    Ok(Deliveries {
        subscriptions: cfg.subscriptions,
        connections,
        setup,
        record,
        expected,
        latencies,
        seqs,
    })
}

/// How far a SNAPSHOT's `at` (the server's now) may be from this machine's clock: further,
/// and latencies measured between the two clocks mean nothing (a server on its manual clock,
/// or on another machine).
const CLOCK_TOLERANCE: Duration = Duration::from_secs(1);
const CLOCK_BEHIND_TOLERANCE: Duration = Duration::from_secs(60);

/// One WebSocket connection carrying `subs`; returns the latencies of the usage events it
/// saw, and what their seqs showed.
async fn reader(
    url: String,
    token: String,
    subs: Vec<(usize, String)>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<(Vec<Duration>, SeqCheck)> {
    let open = async {
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(req).await?;
        let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
        socket.send(Message::text(init.to_string())).await?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(&t)?;
                    match m["type"].as_str() {
                        Some("connection_ack") => break,
                        Some("ping") => {}
                        _ => bail!("connection_init refused: {m}"),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before connection_ack"),
            }
        }
        for (k, wallet) in &subs {
            let sub = json!({ "id": k.to_string(), "type": "subscribe",
                "payload": { "query": SUBSCRIBE, "variables": { "w": wallet } } });
            socket.send(Message::text(sub.to_string())).await?;
        }
        anyhow::Ok(socket)
    };
    let mut socket = match open.await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e)).await;
            bail!(msg);
        }
    };
    let mut snapshots = 0;
    let mut latencies = Vec::new();
    let mut check = SeqCheck::default();
    // The last seq each subscription saw, by subscription id.
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    if subs.is_empty() {
        let _ = ready.send(Ok(())).await;
    }
    loop {
        let msg = tokio::select! {
            m = socket.next() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let arrived = chrono::Utc::now();
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => bail!("server closed the WebSocket: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the WebSocket ended"),
        };
        let m: Value = serde_json::from_str(&text)?;
        match m["type"].as_str() {
            Some("next") => {
                let event = &m["payload"]["data"]["balanceChanged"];
                if event.is_null() {
                    let e = anyhow::anyhow!("subscription error: {}", m["payload"]);
                    if snapshots < subs.len() {
                        let _ = ready.send(Err(anyhow::anyhow!("{e:#}"))).await;
                    }
                    return Err(e);
                }
                let at = event["at"]
                    .as_str()
                    .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                    .with_context(|| format!("an event without a valid `at`: {event}"))?
                    .to_utc();
                let seq = event["seq"]
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .or_else(|| event["seq"].as_u64())
                    .with_context(|| format!("an event without a valid `seq`: {event}"))?;
                let id = m["id"].as_str().unwrap_or_default().to_owned();
                if event["cause"] == "SNAPSHOT" {
                    if last.insert(id, seq).is_some() {
                        // A subscriber that fell behind is sent a fresh snapshot instead of
                        // the events it missed.
                        check.resyncs += 1;
                        continue;
                    }
                    // Ahead of this machine, or far behind (a snapshot may wait a while
                    // while thousands open at once, never minutes).
                    let ahead = (at - arrived).to_std().unwrap_or_default();
                    let behind = (arrived - at).to_std().unwrap_or_default();
                    if ahead > CLOCK_TOLERANCE || behind > CLOCK_BEHIND_TOLERANCE {
                        let e = anyhow::anyhow!(
                            "the server's clock is {ahead:?} ahead or {behind:?} behind this machine's (a manual clock?): delivery latencies would mean nothing"
                        );
                        let _ = ready.send(Err(anyhow::anyhow!("{e:#}"))).await;
                        return Err(e);
                    }
                    snapshots += 1;
                    if snapshots == subs.len() {
                        let _ = ready.send(Ok(())).await;
                    }
                    continue;
                }
                match last.get_mut(&id) {
                    Some(prev) if seq <= *prev => {
                        check.repeated += 1;
                        continue;
                    }
                    Some(prev) => {
                        check.missed += seq - *prev - 1;
                        *prev = seq;
                    }
                    None => bail!("an event before its subscription's snapshot: {m}"),
                }
                if event["cause"] != "USAGE" {
                    check.other_causes += 1;
                    continue;
                }
                match (arrived - at).to_std() {
                    Ok(latency) => latencies.push(latency),
                    Err(_) => {
                        check.before_at += 1;
                        latencies.push(Duration::ZERO);
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            Some("ping") => {
                socket
                    .send(Message::text(json!({ "type": "pong" }).to_string()))
                    .await?;
            }
            Some("pong") => {}
            Some("error") | Some("complete") => {
                let e = anyhow::anyhow!("subscription ended: {m}");
                if snapshots < subs.len() {
                    let _ = ready.send(Err(anyhow::anyhow!("{e:#}"))).await;
                }
                return Err(e);
            }
            _ => bail!("unexpected message {m}"),
        }
    }
    let _ = socket.close(None).await;
    Ok((latencies, check))
}
