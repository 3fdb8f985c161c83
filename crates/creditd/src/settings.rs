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
/// GraphQL-over-HTTP requests served at once; past it the server sheds load with
/// `UNAVAILABLE` (HTTP 503) instead of queueing without bound. With bodies of at most
/// 256 KiB this also bounds the memory held by requests (about 256 MiB at worst).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Open WebSocket connections a node serves at once; each holds a task, buffers and its
/// subscriptions' channels, so a flood of them must not grow without bound.
pub const DEFAULT_MAX_WEBSOCKETS: usize = 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Seconds between the server's pings on a WebSocket. A peer that sends nothing (not even
/// the pong every WebSocket client answers with) for two of them is gone: a sleeping
/// laptop, a lost NAT entry. Its socket is closed and its subscriptions let go.
pub const DEFAULT_WS_KEEPALIVE_SECS: u64 = 30;
pub const MAX_WS_KEEPALIVE_SECS: u64 = 3600;
/// A request head (request line and headers) must arrive whole within this, and an idle
/// keep-alive connection is closed after it: a client that trickles its headers a byte at
/// a time (slowloris) holds no connection for longer.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 30;

/// Options of `creditd serve`; each is also an environment variable and a config key.
#[derive(Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port; either way, once bound, `serve`
    /// prints `listening on <addr>` as the first line on stdout (logs go to stderr).
    #[arg(long, env = "CREDITD_LISTEN")]
    pub listen: Option<String>,
    /// `sqlite://…` or `postgres://…`.
    // Its value is not shown by `--help`: it may hold a password (found by review).
    #[arg(long, env = "CREDITD_DATABASE_URL", hide_env_values = true)]
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
    /// Turn GraphQL introspection off (production). The flag alone means true; as a value
    /// or in the environment it takes true/false, 1/0, yes/no, on/off, so that
    /// `CREDITD_NO_INTROSPECTION=false` turns it back on over the config file.
    #[arg(
        long,
        env = "CREDITD_NO_INTROSPECTION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_introspection: Option<bool>,
    /// GraphQL requests served at once over HTTP; more are answered `UNAVAILABLE` (503).
    #[arg(long, env = "CREDITD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Most WebSocket connections open at once; one more is refused with 503 and
    /// `UNAVAILABLE` (default 1024).
    #[arg(long, env = "CREDITD_MAX_WEBSOCKETS")]
    pub max_websockets: Option<usize>,
    /// Most HTTP connections open at once (WebSockets count under `--max-websockets` once
    /// upgraded); more wait to be accepted (default 4096).
    #[arg(long, env = "CREDITD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds between pings on a WebSocket; a peer silent for two of them is disconnected
    /// (default 30).
    #[arg(long, env = "CREDITD_WS_KEEPALIVE")]
    pub ws_keepalive: Option<u64>,
    /// Seconds a request's head may take to arrive whole, and an idle keep-alive HTTP
    /// connection stays open (default 30).
    #[arg(long, env = "CREDITD_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// A host name requests may carry in `Host` and `Origin` besides the loopback names, on
    /// a server listening on loopback (the public name behind a reverse proxy); repeatable,
    /// or comma-separated in the environment.
    #[arg(
        long = "allowed-host",
        env = "CREDITD_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    database: Option<String>,
    plugins: Option<PathBuf>,
    plugin_cache: Option<PathBuf>,
    catalogue: Option<PathBuf>,
    manual_clock: Option<FileInstant>,
    introspection: Option<bool>,
    max_in_flight: Option<usize>,
    max_websockets: Option<usize>,
    max_connections: Option<usize>,
    ws_keepalive: Option<u64>,
    header_timeout: Option<u64>,
    allowed_hosts: Option<Vec<String>>,
}

/// An instant in the config file: a TOML datetime (`manual_clock = 2027-03-10T12:00:00Z`)
/// or a string holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum FileInstant {
    Toml(toml::value::Datetime),
    Text(String),
}

impl FileInstant {
    fn into_text(self) -> String {
        match self {
            FileInstant::Toml(t) => t.to_string(),
            FileInstant::Text(t) => t,
        }
    }
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
    /// At least 1.
    pub max_in_flight: usize,
    pub max_websockets: usize,
    /// At least 1.
    pub max_connections: usize,
    /// At least 1 s.
    pub ws_keepalive: std::time::Duration,
    /// At least 1 s.
    pub header_timeout: std::time::Duration,
    /// Host names (lowercase, no port) allowed besides the loopback ones.
    pub allowed_hosts: Vec<String>,
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
        let manual_clock = match args
            .manual_clock
            .or(file.manual_clock.map(FileInstant::into_text))
        {
            Some(t) => Some(
                DateTime::parse_from_rfc3339(&t)
                    .with_context(|| format!("--manual-clock {t:?} is not RFC 3339"))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        let max_in_flight = count(
            "--max-in-flight",
            args.max_in_flight.or(file.max_in_flight),
            DEFAULT_MAX_IN_FLIGHT,
            1,
        )?;
        let max_connections = count(
            "--max-connections",
            args.max_connections.or(file.max_connections),
            DEFAULT_MAX_CONNECTIONS,
            1,
        )?;
        let max_websockets = count(
            "--max-websockets",
            args.max_websockets.or(file.max_websockets),
            DEFAULT_MAX_WEBSOCKETS,
            0,
        )?;
        let ws_keepalive = seconds(
            "--ws-keepalive",
            args.ws_keepalive.or(file.ws_keepalive),
            DEFAULT_WS_KEEPALIVE_SECS,
        )?;
        let header_timeout = seconds(
            "--header-timeout",
            args.header_timeout.or(file.header_timeout),
            DEFAULT_HEADER_TIMEOUT_SECS,
        )?;
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
            introspection: args
                .no_introspection
                .map(|off| !off)
                .or(file.introspection)
                .unwrap_or(true),
            max_in_flight,
            max_websockets,
            max_connections,
            ws_keepalive,
            header_timeout,
            allowed_hosts: if args.allowed_hosts.is_empty() {
                file.allowed_hosts.unwrap_or_default()
            } else {
                args.allowed_hosts
            }
            .into_iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
        })
    }
}

/// A count option, `min` to what a semaphore holds (it bounds one).
fn count(flag: &str, value: Option<usize>, default: usize, min: usize) -> anyhow::Result<usize> {
    let n = value.unwrap_or(default);
    let most = tokio::sync::Semaphore::MAX_PERMITS;
    anyhow::ensure!((min..=most).contains(&n), "{flag} must be {min} to {most}");
    Ok(n)
}

/// A period option in whole seconds, 1 to [`MAX_WS_KEEPALIVE_SECS`].
fn seconds(flag: &str, value: Option<u64>, default: u64) -> anyhow::Result<std::time::Duration> {
    let secs = value.unwrap_or(default);
    anyhow::ensure!(
        (1..=MAX_WS_KEEPALIVE_SECS).contains(&secs),
        "{flag} must be 1 to {MAX_WS_KEEPALIVE_SECS} (seconds)"
    );
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: ServeArgs, toml: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creditd.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load(args, Some(&path))
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn flags(args: &[&str]) -> ServeArgs {
        use clap::Parser;
        Flags::try_parse_from(std::iter::once("creditd").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    /// Found by review: the flag took only `true`/`false` from the environment (so
    /// `CREDITD_NO_INTROSPECTION=1` stopped every command), and `false` could not turn
    /// introspection back on over the file. The environment goes through the same parser
    /// as `--no-introspection=VALUE`.
    #[test]
    fn introspection_flag_takes_booleans_and_wins_over_the_file() {
        let on = |args: &[&str], toml: &str| load(flags(args), toml).unwrap().introspection;
        assert!(on(&[], ""));
        assert!(!on(&["--no-introspection"], ""));
        assert!(!on(&["--no-introspection=1"], ""));
        assert!(!on(&["--no-introspection=yes"], ""));
        assert!(on(&["--no-introspection=0"], "introspection = false"));
        assert!(on(&["--no-introspection=false"], "introspection = false"));
        assert!(!on(&[], "introspection = false"));
        assert!(!on(&["--no-introspection"], "introspection = true"));
    }

    /// Found by review: the config file's manual clock had to be a string; TOML's own
    /// datetime (`manual_clock = 2027-03-10T12:00:00Z`) failed with "invalid type: map".
    #[test]
    fn the_manual_clock_is_a_toml_datetime_or_a_string() {
        let at = |toml: &str| load(ServeArgs::default(), toml).unwrap().manual_clock;
        let expected = Some("2027-03-10T12:00:00Z".parse().unwrap());
        assert_eq!(at("manual_clock = 2027-03-10T12:00:00Z"), expected);
        assert_eq!(at("manual_clock = 2027-03-10T13:00:00+01:00"), expected);
        assert_eq!(at("manual_clock = \"2027-03-10T12:00:00Z\""), expected);
        // A local date has no instant: refused in words.
        let local = load(ServeArgs::default(), "manual_clock = 2027-03-10")
            .unwrap_err()
            .to_string();
        assert!(local.contains("RFC 3339"), "{local}");
    }

    #[test]
    fn max_in_flight_defaults_reads_the_file_and_the_flag_wins() {
        let flag = |n| ServeArgs {
            max_in_flight: Some(n),
            ..ServeArgs::default()
        };
        assert_eq!(
            load(ServeArgs::default(), "").unwrap().max_in_flight,
            DEFAULT_MAX_IN_FLIGHT
        );
        assert_eq!(
            load(ServeArgs::default(), "max_in_flight = 7")
                .unwrap()
                .max_in_flight,
            7
        );
        assert_eq!(load(flag(3), "max_in_flight = 7").unwrap().max_in_flight, 3);
        let zero = load(flag(0), "").unwrap_err().to_string();
        assert!(zero.contains("must be 1 to"), "{zero}");
    }

    /// Found by review: a bound past what a semaphore holds panicked at start.
    #[test]
    fn connection_bounds_are_read_and_checked() {
        let toml = |key: &str, n: usize| format!("{key} = {n}");
        let loaded = load(ServeArgs::default(), &toml("max_connections", 9)).unwrap();
        assert_eq!(loaded.max_connections, 9);
        assert_eq!(
            load(ServeArgs::default(), "").unwrap().max_connections,
            DEFAULT_MAX_CONNECTIONS
        );
        let huge = tokio::sync::Semaphore::MAX_PERMITS + 1;
        for key in ["max_connections", "max_in_flight", "max_websockets"] {
            let refused = load(ServeArgs::default(), &toml(key, huge)).unwrap_err();
            assert!(refused.to_string().contains("must be"), "{key}: {refused}");
        }
        assert!(load(ServeArgs::default(), &toml("max_connections", 0)).is_err());
    }

    #[test]
    fn ws_keepalive_defaults_to_30_s_and_is_at_least_1() {
        let secs = |args: &[&str], toml: &str| load(flags(args), toml).map(|s| s.ws_keepalive);
        assert_eq!(secs(&[], "").unwrap().as_secs(), DEFAULT_WS_KEEPALIVE_SECS);
        assert_eq!(secs(&[], "ws_keepalive = 5").unwrap().as_secs(), 5);
        assert_eq!(
            secs(&["--ws-keepalive", "2"], "ws_keepalive = 5")
                .unwrap()
                .as_secs(),
            2
        );
        assert!(secs(&["--ws-keepalive", "0"], "").is_err());
        assert!(secs(&["--ws-keepalive", "18446744073709551615"], "").is_err());
    }
}
