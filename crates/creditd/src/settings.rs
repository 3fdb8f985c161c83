//! One typed `Settings` from defaults, an optional TOML file, `CREDITD_*` environment
//! variables and flags, in rising precedence (SPEC 12). Secrets (the admin token) come
//! only from the environment and never appear in logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "sqlite://creditd.db?mode=rwc";
/// Open WebSocket connections a node serves at once; each holds a task, buffers and its
/// subscriptions' channels, so a flood of them must not grow without bound.
pub const DEFAULT_MAX_WEBSOCKETS: usize = 1024;

/// Options of `creditd serve`; each is also an environment variable and a config key.
#[derive(Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port; either way, once bound, `serve`
    /// prints `listening on <addr>` as the first line on stdout (logs go to stderr).
    #[arg(long, env = "CREDITD_LISTEN")]
    pub listen: Option<String>,
    /// `sqlite://…` or `postgres://…`.
    #[arg(long, env = "CREDITD_DATABASE_URL")]
    pub database: Option<String>,
    /// Directory of pricing tier plugins (default: the directory of this executable).
    #[arg(long, env = "CREDITD_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Where private copies of loaded plugins are kept (default: .creditd/plugin-cache).
    #[arg(long, env = "CREDITD_PLUGIN_CACHE")]
    pub plugin_cache: Option<PathBuf>,
    /// A catalogue TOML file replacing the embedded one.
    #[arg(long, env = "CREDITD_CATALOGUE")]
    pub catalogue: Option<PathBuf>,
    /// Start on a manual clock at this RFC 3339 instant (tests, demos).
    #[arg(long, env = "CREDITD_MANUAL_CLOCK")]
    pub manual_clock: Option<String>,
    /// Turn GraphQL introspection off (production).
    #[arg(long, env = "CREDITD_NO_INTROSPECTION")]
    pub no_introspection: bool,
    /// Most WebSocket connections open at once; one more is refused with 503 and
    /// `UNAVAILABLE` (default 1024).
    #[arg(long, env = "CREDITD_MAX_WEBSOCKETS")]
    pub max_websockets: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    database: Option<String>,
    plugins: Option<PathBuf>,
    plugin_cache: Option<PathBuf>,
    catalogue: Option<PathBuf>,
    manual_clock: Option<String>,
    introspection: Option<bool>,
    max_websockets: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database: String,
    pub plugins: PathBuf,
    pub plugin_cache: PathBuf,
    pub catalogue: Option<PathBuf>,
    pub manual_clock: Option<DateTime<Utc>>,
    pub introspection: bool,
    pub max_websockets: usize,
}

/// Where cargo put this executable, and with it the built tier libraries.
pub fn executable_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Settings {
    pub fn load(args: ServeArgs, config: Option<&Path>) -> anyhow::Result<Settings> {
        let file: FileSettings = match config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let manual_clock = match args.manual_clock.or(file.manual_clock) {
            Some(t) => Some(
                DateTime::parse_from_rfc3339(&t)
                    .with_context(|| format!("--manual-clock {t:?} is not RFC 3339"))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        Ok(Settings {
            listen: listen
                .parse()
                .with_context(|| format!("--listen {listen:?} is not an address"))?,
            database: args
                .database
                .or(file.database)
                .unwrap_or_else(|| DEFAULT_DATABASE.to_owned()),
            plugins: args.plugins.or(file.plugins).unwrap_or_else(executable_dir),
            plugin_cache: args
                .plugin_cache
                .or(file.plugin_cache)
                .unwrap_or_else(|| PathBuf::from(".creditd/plugin-cache")),
            catalogue: args.catalogue.or(file.catalogue),
            manual_clock,
            introspection: !args.no_introspection && file.introspection.unwrap_or(true),
            max_websockets: args
                .max_websockets
                .or(file.max_websockets)
                .unwrap_or(DEFAULT_MAX_WEBSOCKETS),
        })
    }
}
