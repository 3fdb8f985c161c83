use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

pub const ADMIN: &str = "e2e-admin-token";
pub const START: &str = "2027-03-10T12:00:00Z";
const TIERS: [&str; 3] = [
    "credits-tier-economy",
    "credits-tier-standard",
    "credits-tier-premium",
];

/// `<target>/debug`, with the tier libraries built there once per test binary.
fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let target = profile_dir.parent().unwrap();
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--target-dir"])
            .arg(target);
        for t in TIERS {
            cmd.args(["-p", t]);
        }
        let out = cmd.output().expect("cargo build the tiers");
        assert!(
            out.status.success(),
            "building tiers: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `creditd serve` in a directory of its own; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
    manual: bool,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), true).await
    }

    pub async fn start_in(dir: tempfile::TempDir, manual: bool) -> Server {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_creditd"));
        cmd.current_dir(dir.path())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--plugins",
            ])
            .arg(plugins_dir())
            .env("CREDITD_ADMIN_TOKEN", ADMIN)
            .env_remove("CREDITD_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if manual {
            cmd.args(["--manual-clock", START]);
        }
        let child = cmd.spawn().expect("start creditd");
        let server = Server {
            child: Some(child),
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            manual,
        };
        for _ in 0..300 {
            if let Ok(r) = server
                .http
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                && r.status().is_success()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("creditd did not become ready");
    }

    /// SIGTERM, wait for a clean exit, and start again on the same files.
    pub async fn restart(mut self) -> Server {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "SIGTERM drains and exits 0: {exit}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Server::start_in(dir, self.manual).await
    }

    pub async fn raw(&self, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}/graphql", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Runs an operation; returns `data`, panicking on errors.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        let (_, body) = self
            .raw(
                Some(token),
                json!({ "query": query, "variables": variables }),
            )
            .await;
        assert!(
            body.get("errors").is_none(),
            "unexpected errors for {query}: {body}"
        );
        body["data"].clone()
    }

    /// Runs an operation that must fail; returns the first error's code.
    pub async fn code(&self, token: &str, query: &str, variables: Value) -> String {
        let (_, body) = self
            .raw(
                Some(token),
                json!({ "query": query, "variables": variables }),
            )
            .await;
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code for {query}: {body}"));
        code.to_owned()
    }

    pub async fn token(&self, role: &str, owner: Option<&str>) -> String {
        let d = self.gql(ADMIN, "mutation($r: Role!, $o: String) { createApiToken(role: $r, ownerId: $o) { token } }", json!({"r": role, "o": owner})).await;
        d["createApiToken"]["token"].as_str().unwrap().to_owned()
    }

    pub async fn wallet(&self, owner: &str, plan: &str, zone: &str) -> String {
        let d = self
            .gql(ADMIN, "mutation($o: String!, $p: ID!, $z: String!) { createWallet(input: {ownerId: $o, planId: $p, timezone: $z}) { id } }", json!({"o": owner, "p": plan, "z": zone}))
            .await;
        d["createWallet"]["id"].as_str().unwrap().to_owned()
    }

    pub async fn total(&self, wallet: &str) -> String {
        let d = self
            .gql(
                ADMIN,
                "query($w: ID!) { wallet(id: $w) { balance { total } } }",
                json!({"w": wallet}),
            )
            .await;
        d["wallet"]["balance"]["total"].as_str().unwrap().to_owned()
    }

    pub async fn usage(&self, wallet: &str, key: &str, model: &str) -> Value {
        let q = "mutation($w: ID!, $k: String!, $m: String!) { recordUsage(input: {walletId: $w, idempotencyKey: $k, threadId: \"t1\", model: $m, inputTokens: 10000, cachedTokens: 2000, outputTokens: 1000}) { replayed usage { id cost pricedBy charged { bucket amount } } balance { total } } }";
        self.gql(ADMIN, q, json!({"w": wallet, "k": key, "m": model}))
            .await["recordUsage"]
            .clone()
    }

    pub fn ws_url(&self) -> String {
        self.base.replace("http://", "ws://") + "/graphql"
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
