//! Test support: the real `creditd` binary on a free port, its own temp dir and database
//! (a SQLite file, or a fresh PostgreSQL database when `CREDITS_TEST_DATABASE_URL` is set),
//! and small GraphQL-over-HTTP and WebSocket clients.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Where every test's manual clock starts (a Wednesday; the wallets' zones are UTC unless
/// a test says otherwise, so the next daily reset is 12 hours away).
pub const START: &str = "2027-03-10T12:00:00Z";
/// Bounds on waiting for the server.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for one WebSocket message.
pub const WS_TIMEOUT: Duration = Duration::from_secs(10);

/// The tier libraries every server loads.
const TIER_PACKAGES: &[&str] = &[
    "credits-tier-economy",
    "credits-tier-standard",
    "credits-tier-premium",
];

/// `<target>/<profile>`: where cargo put this test binary's profile, and where the tier
/// plugins are built. `cargo test` does not build other packages' cdylibs, so the first
/// caller runs `cargo build` for them in the same target dir and profile (as
/// `credits-pricing`'s tests do); later callers wait for that one build.
pub fn plugins_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_packages(TIER_PACKAGES))
}

/// The pricing test fixtures (`crates/credits-pricing/fixtures`) the server tests load.
const FIXTURE_PACKAGES: &[&str] = &[
    "credits-fixture-gate-v1",
    "credits-fixture-gate-v2",
    "credits-fixture-wrong-abi",
    "credits-fixture-hostile-init",
];

/// A built fixture library, e.g. `fixture_lib("gate_v1")` for `credits-fixture-gate-v1`.
pub fn fixture_lib(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_packages(FIXTURE_PACKAGES))
        .join(format!(
            "{}credits_fixture_{name}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ))
}

/// Builds `packages` in this test binary's target dir and profile; returns the profile dir.
fn build_packages(packages: &[&str]) -> PathBuf {
    {
        let exe = std::env::current_exe().expect("path of the test binary");
        // <target>/<profile dir>/deps/<binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a profile dir above deps/");
        let target_dir = profile_dir.parent().expect("a target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("unexpected profile dir {}", profile_dir.display()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--profile", profile, "--target-dir"])
            .arg(target_dir);
        for package in packages {
            command.args(["-p", package]);
        }
        let output = command.output().expect("run cargo build for the tiers");
        assert!(
            output.status.success(),
            "building the tier plugins failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        profile_dir.to_owned()
    }
}

/// The built library of a shipped tier, e.g. `tier_lib("standard")`.
pub fn tier_lib(name: &str) -> PathBuf {
    plugins_dir().join(format!(
        "{}credits_tier_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

pub fn creditd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_creditd"));
    // The caller's own settings must not leak into a test server.
    for var in [
        "CREDITD_CONFIG",
        "CREDITD_LISTEN",
        "CREDITD_DATABASE_URL",
        "CREDITD_PLUGINS",
        "CREDITD_PLUGIN_CACHE",
        "CREDITD_CATALOGUE",
        "CREDITD_MANUAL_CLOCK",
        "CREDITD_NO_INTROSPECTION",
        "CREDITD_MAX_IN_FLIGHT",
        "CREDITD_MAX_WEBSOCKETS",
        "CREDITD_WS_KEEPALIVE",
        "CREDITD_HEADER_TIMEOUT",
        "CREDITD_ADMIN_TOKEN",
    ] {
        c.env_remove(var);
    }
    c
}

/// 128 random bits as hex, from the standard library's per-process random keys.
pub fn random_hex() -> String {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new();
    format!("{:016x}{:016x}", s.hash_one(1u8), s.hash_one(2u8))
}

/// Which store a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// The URL of a PostgreSQL server's database through which test databases are created.
    Postgres(String),
}

impl Backend {
    pub fn postgres() -> Option<Backend> {
        std::env::var("CREDITS_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

/// A database of one test; a PostgreSQL one is dropped with it.
pub struct TestDb {
    pub url: String,
    postgres: Option<(String, String)>,
}

fn psql(admin_url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql (the PostgreSQL client) is needed for CREDITS_TEST_DATABASE_URL");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestDb {
    fn new(backend: &Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}?mode=rwc", dir.join("t.db").display()),
                postgres: None,
            },
            Backend::Postgres(admin_url) => {
                let name = format!("t_{}", random_hex());
                psql(admin_url, &format!("CREATE DATABASE {name}"));
                let (base, query) = match admin_url.split_once('?') {
                    Some((b, q)) => (b, format!("?{q}")),
                    None => (admin_url.as_str(), String::new()),
                };
                let scheme_end = base.find("://").map_or(0, |i| i + 3);
                let host = match base[scheme_end..].find('/') {
                    Some(i) => &base[..scheme_end + i],
                    None => base,
                };
                TestDb {
                    url: format!("{host}/{name}{query}"),
                    postgres: Some((admin_url.clone(), name)),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = &self.postgres {
            let _ = Command::new("psql")
                .args([
                    admin_url.as_str(),
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

/// A running `creditd serve`.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's service: a server process, its temp dir, its database and an admin token.
pub struct App {
    // Fields drop in order: the server stops before its database and directory go.
    server: Option<Running>,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub manual_clock: Option<String>,
    /// The directory the server loads its pricing plugins from.
    pub plugins: PathBuf,
    /// Extra environment of the server process (settings a test needs).
    pub env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl App {
    /// A server on the manual clock at [`START`].
    pub async fn spawn(backend: Backend) -> App {
        App::spawn_with(backend, Some(START)).await
    }

    pub async fn spawn_with(backend: Backend, manual_clock: Option<&str>) -> App {
        App::spawn_env(backend, manual_clock, &[]).await
    }

    /// A server with extra environment variables, e.g. `CREDITD_MAX_WEBSOCKETS`.
    pub async fn spawn_env(
        backend: Backend,
        manual_clock: Option<&str>,
        env: &[(&str, &str)],
    ) -> App {
        App::spawn_full(backend, manual_clock, env, plugins_dir().to_owned()).await
    }

    /// A server on the manual clock at [`START`] loading its plugins from `plugins`, with
    /// `env` set for it.
    pub async fn spawn_plugins_env(
        backend: Backend,
        plugins: PathBuf,
        env: &[(&str, &str)],
    ) -> App {
        App::spawn_full(backend, Some(START), env, plugins).await
    }

    /// A server on the manual clock at [`START`] loading its plugins from `plugins`.
    pub async fn spawn_with_plugins(backend: Backend, plugins: PathBuf) -> App {
        App::spawn_full(backend, Some(START), &[], plugins).await
    }

    async fn spawn_full(
        backend: Backend,
        manual_clock: Option<&str>,
        env: &[(&str, &str)],
        plugins: PathBuf,
    ) -> App {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = TestDb::new(&backend, dir.path());
        let mut app = App {
            server: None,
            db,
            dir,
            admin: format!("adm{}", random_hex()),
            manual_clock: manual_clock.map(str::to_owned),
            plugins,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        };
        app.start().await;
        app
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("creditd.log")
    }

    /// The server's log so far (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the server (again) on this app's directory and database.
    pub async fn start(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        let plugins = &self.plugins;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("a log file");
        let mut cmd = creditd();
        cmd.current_dir(self.dir.path())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--database", &self.db.url])
            .arg("--plugins")
            .arg(plugins)
            .arg("--plugin-cache")
            .arg(self.dir.path().join("cache"))
            .env("CREDITD_ADMIN_TOKEN", &self.admin)
            .env("RUST_LOG", "info,sqlx=warn,sea_orm=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(t) = &self.manual_clock {
            cmd.args(["--manual-clock", t]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("start creditd");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Keep draining so the server never writes into a closed pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(START_TIMEOUT).ok().flatten();
        let addr = match first
            .as_deref()
            .and_then(|l| l.strip_prefix("listening on "))
        {
            Some(a) => a.trim().to_owned(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "creditd did not print `listening on <addr>` (got {first:?}); log:\n{}",
                    self.log()
                );
            }
        };
        self.server = Some(Running { child, addr });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = self
                .http
                .get(self.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "creditd is not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut running = self.server.take().expect("a running server");
        let pid = running.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = running.child.try_wait().expect("wait for creditd") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "creditd did not stop on SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (no drain) and reaps it; `start` restarts it on the
    /// same database.
    #[allow(dead_code)] // used by the reliability suite
    pub fn kill(&mut self) {
        let mut running = self.server.take().expect("a running server");
        running.child.kill().expect("SIGKILL creditd");
        running.child.wait().expect("reap creditd");
    }

    /// A second server process on this app's database (its own directory, log and port,
    /// the same admin token): another node of the same service. Its drop stops it and
    /// leaves the database to `self`.
    pub async fn another_node(&self) -> App {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut node = App {
            server: None,
            db: TestDb {
                url: self.db.url.clone(),
                postgres: None,
            },
            dir,
            admin: self.admin.clone(),
            manual_clock: self.manual_clock.clone(),
            plugins: self.plugins.clone(),
            env: self.env.clone(),
            http: self.http.clone(),
        };
        node.start().await;
        node
    }

    /// The server's process id.
    #[allow(dead_code)] // used by the reliability suite
    pub fn pid(&self) -> u32 {
        self.server.as_ref().expect("a running server").child.id()
    }

    pub fn addr(&self) -> &str {
        &self.server.as_ref().expect("a running server").addr
    }

    /// The handshake request for a WebSocket at `/graphql` offering `protocol`.
    pub fn ws_request(
        &self,
        protocol: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}/graphql", self.addr())
            .into_client_request()
            .expect("a WebSocket request");
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        req
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// POSTs a raw body to `/graphql`: (HTTP status, JSON body).
    pub async fn post(&self, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.http.post(self.url("/graphql")).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("POST /graphql");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a response body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text}; log:\n{}", self.log()));
        (status, json)
    }

    /// One operation; the whole response (`data` and `errors`). A query that spreads
    /// `...Bal` gets the [`BALANCE`] fragment appended.
    pub async fn gql(&self, token: &str, query: &str, vars: Value) -> Value {
        let query = if query.contains("...Bal") {
            format!("{query}\n{BALANCE}")
        } else {
            query.to_owned()
        };
        self.post(Some(token), &json!({ "query": query, "variables": vars }))
            .await
            .1
    }

    /// The `data` of an operation that must succeed.
    pub async fn ok(&self, token: &str, query: &str, vars: Value) -> Value {
        let resp = self.gql(token, query, vars).await;
        assert!(
            resp.get("errors")
                .is_none_or(|e| e.as_array().is_some_and(Vec::is_empty)),
            "unexpected errors for {query}: {resp:#}"
        );
        resp["data"].clone()
    }

    /// The code of an operation that must fail; every error must carry one.
    pub async fn code(&self, token: &str, query: &str, vars: Value) -> String {
        let resp = self.gql(token, query, vars).await;
        error_code(&resp)
    }

    // ---- common steps ------------------------------------------------------------------

    pub async fn token(&self, role: &str, owner: Option<&str>) -> String {
        let d = self
            .ok(
                &self.admin,
                "mutation($r: Role!, $o: String) { createApiToken(role: $r, ownerId: $o) { token role ownerId } }",
                json!({ "r": role, "o": owner }),
            )
            .await;
        assert_eq!(d["createApiToken"]["role"], role);
        d["createApiToken"]["token"].as_str().unwrap().to_owned()
    }

    /// A team "Acme" on the `team` plan administered by `admin`: (team id, pool wallet id).
    pub async fn team(&self, admin: &str) -> (String, String) {
        let d = self
            .ok(
                &self.admin,
                "mutation($a: String!) { createTeam(input: {name: \"Acme\", planId: \"team\", timezone: \"UTC\", adminUserIds: [$a]}) { id wallet { id } } }",
                json!({ "a": admin }),
            )
            .await;
        let id = |v: &Value| v.as_str().unwrap().to_owned();
        (
            id(&d["createTeam"]["id"]),
            id(&d["createTeam"]["wallet"]["id"]),
        )
    }

    pub async fn wallet(&self, owner: &str, plan: &str) -> String {
        let d = self
            .ok(
                &self.admin,
                "mutation($o: String!, $p: ID!) { createWallet(input: {ownerId: $o, planId: $p, timezone: \"UTC\"}) { id } }",
                json!({ "o": owner, "p": plan }),
            )
            .await;
        d["createWallet"]["id"].as_str().unwrap().to_owned()
    }

    /// The wallet's balance as the admin reads it.
    pub async fn balance(&self, wallet: &str) -> Value {
        let d = self
            .ok(
                &self.admin,
                "query($id: ID!) { wallet(id: $id) { balance { ...Bal } } }",
                json!({ "id": wallet }),
            )
            .await;
        d["wallet"]["balance"].clone()
    }

    /// The wallet's usage history, newest first (at most 100 events).
    pub async fn usage(&self, wallet: &str) -> Value {
        let d = self
            .ok(
                &self.admin,
                &format!("query($id: ID!) {{ wallet(id: $id) {{ usage(first: 100) {{ edges {{ node {{ {USAGE} }} }} }} }} }}"),
                json!({ "id": wallet }),
            )
            .await;
        d["wallet"]["usage"]["edges"].clone()
    }

    /// recordUsage as the admin; the whole response.
    pub async fn record(
        &self,
        wallet: &str,
        key: &str,
        thread: &str,
        model: &str,
        input: i64,
        output: i64,
    ) -> Value {
        self.gql(
            &self.admin,
            &format!(
                "mutation($i: RecordUsageInput!) {{ recordUsage(input: $i) {{ replayed usage {{ {USAGE} }} balance {{ ...Bal }} }} }}"
            ),
            json!({ "i": {
                "walletId": wallet, "idempotencyKey": key, "threadId": thread,
                "model": model, "inputTokens": input, "outputTokens": output,
            }}),
        )
        .await
    }

    /// A counter or gauge of `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("a metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    }

    /// Waits until the committer has taken `n` more store transactions than `since`
    /// (it takes one and then waits for the database, e.g. behind a [`WriteLock`]).
    pub async fn wait_for_transactions(&self, since: f64, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric("credits_store_transactions_total").await < since + n {
            assert!(Instant::now() < deadline, "no store transaction began");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Moves the manual clock; returns the new instant.
    pub async fn advance(&self, seconds: i64) -> String {
        let d = self
            .ok(
                &self.admin,
                "mutation($s: Int!) { advanceClock(seconds: $s) }",
                json!({ "s": seconds }),
            )
            .await;
        d["advanceClock"].as_str().unwrap().to_owned()
    }
}

/// Every field of a balance.
pub const BALANCE: &str = "fragment Bal on Balance { total reserved \
    daily { remaining allowance nextResetAt } \
    subscription { remaining allowance periodStart periodEnd } \
    bonus { remaining grants { id kind amount remaining reason grantedAt expiresAt } } }";

/// Every field of a usage event.
pub const USAGE: &str = "id idempotencyKey threadId model memberId inputTokens cachedTokens \
    outputTokens cost charged { bucket grantId amount } uncollected pricedBy at";

/// The code of the first error of a failed response; asserts that there is an error, that
/// every error has a code, and that no data came with a refused mutation's field.
pub fn error_code(resp: &Value) -> String {
    let errors = resp["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("expected errors, got {resp:#}"));
    assert!(!errors.is_empty(), "expected errors, got {resp:#}");
    for e in errors {
        assert!(
            e["extensions"]["code"].is_string(),
            "an error without extensions.code: {e:#}"
        );
    }
    errors[0]["extensions"]["code"].as_str().unwrap().to_owned()
}

// ---- WebSockets ----------------------------------------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A GraphQL WebSocket client speaking `graphql-transport-ws` or the legacy `graphql-ws`.
pub struct Ws {
    socket: Socket,
    legacy: bool,
}

/// What the server answered to `connection_init`.
#[derive(Debug)]
pub enum Init {
    Ack,
    /// What came instead of the ack; only read through `Debug` in failure messages.
    Refused(#[allow(dead_code)] String),
}

impl Ws {
    /// Connects and sends `connection_init` with the token.
    pub async fn connect(app: &App, protocol: &str, token: &str) -> (Ws, Init) {
        Ws::connect_with(app, protocol, token, None).await
    }

    /// Like [`Ws::connect`], with the client socket's kernel receive buffer fixed at about
    /// `recv_buffer` bytes when given (a client that stops reading then stalls the server
    /// soon, instead of after the tens of MB loopback autotuning allows).
    pub async fn connect_with(
        app: &App,
        protocol: &str,
        token: &str,
        recv_buffer: Option<u32>,
    ) -> (Ws, Init) {
        let req = app.ws_request(protocol);
        let socket = match recv_buffer {
            None => {
                tokio_tungstenite::connect_async(req)
                    .await
                    .expect("WebSocket connect")
                    .0
            }
            Some(size) => {
                let tcp = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
                tcp.set_recv_buffer_size(size).expect("SO_RCVBUF");
                let stream = tcp
                    .connect(app.addr().parse().expect("a socket address"))
                    .await
                    .expect("TCP connect");
                tokio_tungstenite::client_async(
                    req,
                    tokio_tungstenite::MaybeTlsStream::Plain(stream),
                )
                .await
                .expect("WebSocket connect")
                .0
            }
        };
        Ws::init(socket, protocol, token).await
    }

    /// Connects offering `offered` (a `Sec-WebSocket-Protocol` list, in the client's
    /// order), speaks the protocol the handshake agreed and sends `connection_init`.
    pub async fn connect_offering(app: &App, offered: &str, token: &str) -> (Ws, String, Init) {
        let (socket, resp) = tokio_tungstenite::connect_async(app.ws_request(offered))
            .await
            .expect("WebSocket connect");
        let agreed = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .expect("an agreed protocol")
            .to_str()
            .unwrap()
            .to_owned();
        let (ws, init) = Ws::init(socket, &agreed, token).await;
        (ws, agreed, init)
    }

    /// [`Ws::connect`], or the HTTP status of a refused handshake.
    pub async fn try_connect(app: &App, protocol: &str, token: &str) -> Result<(Ws, Init), u16> {
        let req = app.ws_request(protocol);
        match tokio_tungstenite::connect_async(req).await {
            Ok((socket, _)) => Ok(Ws::init(socket, protocol, token).await),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("WebSocket connect: {e}"),
        }
    }

    /// A socket that has not sent `connection_init` yet.
    pub async fn open(app: &App, protocol: &str) -> Ws {
        let req = app.ws_request(protocol);
        let socket = tokio_tungstenite::connect_async(req)
            .await
            .expect("WebSocket connect")
            .0;
        Ws {
            socket,
            legacy: protocol == "graphql-ws",
        }
    }

    /// The close code the server ends with, skipping any other message.
    pub async fn close_code(&mut self) -> Option<u64> {
        loop {
            match self.recv().await {
                None => return None,
                Some(m) if m["type"] == "close" => return m["code"].as_u64(),
                Some(_) => {}
            }
        }
    }

    async fn init(socket: Socket, protocol: &str, token: &str) -> (Ws, Init) {
        let mut ws = Ws {
            socket,
            legacy: protocol == "graphql-ws",
        };
        ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
            .await;
        let init = loop {
            match ws.recv().await {
                Some(m) if m["type"] == "connection_ack" => break Init::Ack,
                Some(m) if m["type"] == "ka" || m["type"] == "ping" => continue,
                Some(m) => break Init::Refused(m.to_string()),
                None => break Init::Refused("closed".into()),
            }
        };
        (ws, init)
    }

    /// Sends a close frame with `code`.
    pub async fn close(&mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        self.socket
            .send(Message::Close(Some(frame)))
            .await
            .expect("WebSocket close");
    }

    pub async fn send(&mut self, msg: Value) {
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .expect("WebSocket send");
    }

    /// Sends a message the server may refuse by closing the socket while it is still being
    /// written (one over the size limit): whether the whole of it was written.
    pub async fn try_send(&mut self, msg: Value) -> bool {
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .is_ok()
    }

    /// The next JSON message, or `None` when the server closed; panics after [`WS_TIMEOUT`].
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WS_TIMEOUT, self.socket.next())
                .await
                .expect("a WebSocket message in time");
            match msg {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return Some(json!({
                        "type": "close",
                        "code": frame.as_ref().map(|f| u16::from(f.code)),
                        "frame": frame.map(|f| f.reason.to_string()),
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Whether the server closes the socket (within [`WS_TIMEOUT`]) before sending a result.
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.recv().await {
                None => return true,
                Some(m) if m["type"] == "close" => return true,
                Some(m) if m["type"] == "ka" || m["type"] == "ping" || m["type"] == "pong" => {}
                Some(_) => return false,
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, vars: Value) {
        let query = if query.contains("...Bal") {
            format!("{query}\n{BALANCE}")
        } else {
            query.to_owned()
        };
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(
            json!({ "id": id, "type": kind, "payload": { "query": query, "variables": vars } }),
        )
        .await;
    }

    /// The next result payload (`{data, errors}`) of subscription `id`.
    pub async fn next(&mut self, id: &str) -> Value {
        loop {
            let m = self.recv().await.expect("the server closed the WebSocket");
            match m["type"].as_str() {
                Some("next" | "data") if m["id"] == id => return m["payload"].clone(),
                // graphql-transport-ws sends a list of errors, the legacy protocol one.
                Some("error") if m["id"] == id => {
                    let errors = match &m["payload"] {
                        Value::Array(_) => m["payload"].clone(),
                        one => json!([one]),
                    };
                    return json!({ "errors": errors });
                }
                Some("ping") => self.send(json!({ "type": "pong" })).await,
                // Another subscription ending (e.g. one refused with an error) is no concern.
                Some("ka" | "pong" | "complete") if m["id"] != id => {}
                Some("ka" | "pong") => {}
                _ => panic!("unexpected WebSocket message {m}"),
            }
        }
    }

    /// Runs `query` (no variables) as operation `id` and returns its first result payload.
    pub async fn next_with(&mut self, id: &str, query: &str) -> Value {
        self.subscribe(id, query, json!({})).await;
        self.next(id).await
    }

    /// The `data` of the next result; it must have no errors.
    pub async fn next_data(&mut self, id: &str) -> Value {
        let p = self.next(id).await;
        assert!(p.get("errors").is_none_or(Value::is_null), "errors: {p:#}");
        p["data"].clone()
    }
}

/// Runs a scenario `async fn name(backend: Backend)` as two tests, `name::sqlite` and
/// `name::postgres`; the PostgreSQL one passes with a note when `CREDITS_TEST_DATABASE_URL`
/// is unset.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match $crate::helpers::Backend::postgres() {
                    Some(b) => super::$name(b).await,
                    None => eprintln!("CREDITS_TEST_DATABASE_URL is unset: skipped"),
                }
            }
        }
    )* };
}

/// The database's write lock, held by the test: commits wait behind it, reads go on
/// (SQLite: a write transaction; PostgreSQL: the wallets table locked EXCLUSIVE, which the
/// fenced wallet UPDATE of every commit needs).
pub struct WriteLock(sea_orm::DatabaseTransaction);

impl WriteLock {
    pub async fn take(app: &App) -> WriteLock {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let db = sea_orm::Database::connect(app.db.url.as_str())
            .await
            .expect("connect to the test database");
        let txn = db.begin().await.expect("begin");
        let sql = if app.db.url.starts_with("sqlite:") {
            // Any write statement takes SQLite's one write lock, even one that changes nothing.
            "DELETE FROM wallets WHERE 0 = 1"
        } else {
            "LOCK TABLE wallets IN EXCLUSIVE MODE"
        };
        txn.execute_unprepared(sql)
            .await
            .expect("take the write lock");
        WriteLock(txn)
    }

    pub async fn release(self) {
        self.0.rollback().await.expect("release the write lock");
    }
}
