//! `creditd`: the credits service. `serve` runs it; `migrate`, `plugins check` and
//! `token create | list | revoke` are the operator's tools (SPEC 12).

mod assets;
mod catalogue;
mod graphiql;
mod listener;
mod probe;
mod server;
mod settings;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use credits_actors::{ActorConfig, Clock, Directory, Ledger, SqlWallets};
use credits_pricing::PricingRegistry;
use credits_store::{Backend, BundleRow, Store, TokenHash, TokenRole, TokenRow};
use settings::{ServeArgs, Settings};

/// mimalloc, not glibc's malloc: under `recordUsage` load glibc's allocator took a fifth of
/// the server's CPU, much of it consolidating freed chunks (`docs/BENCHMARKS.md`). Plugins
/// keep their own allocator; no allocation crosses the plugin ABI.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Store transactions in flight at once on PostgreSQL, each carrying many wallets' batches
/// (SQLite has one writer: 1). See docs/BENCHMARKS.md, "Actors".
const POSTGRES_WRITERS: usize = 4;
/// How often approvals left claimed (an interrupted resolveReview) are completed.
const CLAIMED_APPROVALS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long SIGTERM waits for WebSocket operations in flight.
const WEBSOCKET_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
/// How long SIGTERM waits for HTTP responses under way.
const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "creditd",
    version,
    about = "The credits service for AI platforms"
)]
struct Cli {
    /// A TOML file of settings (keys as the long options, with underscores;
    /// `introspection = false` for --no-introspection).
    #[arg(long, env = "CREDITD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Create or upgrade the database schema.
    Migrate(ServeArgs),
    /// Pricing plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Replay each wallet's ledger and compare it with the wallet's stored snapshot: prints
    /// every wallet that differs and exits 1 if any does.
    Verify {
        /// Only this wallet.
        #[arg(long)]
        wallet: Option<String>,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Validate a plugin and print its models and prices.
    Check {
        file: PathBuf,
        /// Open the file in this process (what the check's child does; see `probe.rs`).
        #[arg(long, hide = true)]
        in_process: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Service,
    User,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token; it is printed once and stored hashed.
    Create {
        /// `ADMIN`, `SERVICE` or `USER`, as the API spells roles (any case).
        #[arg(long, value_enum, ignore_case = true)]
        role: RoleArg,
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Revoke a token: requests with it fail at once, WebSockets opened with it are closed
    /// within one keepalive period. Exits 1 when no such token is stored.
    Revoke {
        /// The token, as `token create` printed it, or `-` to read it from stdin (a secret
        /// on the command line shows in `ps` and in the shell's history).
        #[arg(required_unless_present = "id", conflicts_with = "id")]
        token: Option<String>,
        /// The token's id, as `token create` and `token list` print it (for a token whose
        /// secret is lost).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// List the stored tokens: id, role, owner and creation time (never a secret).
    List {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(cli));
    // A pricing call stuck in a plugin holds a blocking thread for good: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ledger {
            command: LedgerCommand::Verify { wallet, serve },
        } => {
            let settings = Settings::load(serve, cli.config.as_deref())?;
            let store = open_existing_store(&settings).await?;
            let (checked, differ) = verify_ledgers(&store, wallet.as_deref()).await?;
            if differ > 0 {
                anyhow::bail!("{differ} of {checked} wallets do not replay to their snapshots");
            }
            println!("{checked} wallets checked: each ledger replays to its snapshot");
            Ok(())
        }
        Command::Serve(args) => serve(Settings::load(args, cli.config.as_deref())?).await,
        Command::Migrate(args) => {
            let settings = Settings::load(args, cli.config.as_deref())?;
            open_store(&settings).await?;
            println!("migrated {}", redact(&settings.database));
            Ok(())
        }
        Command::Plugins {
            command:
                PluginsCommand::Check {
                    file,
                    in_process: false,
                },
        } => {
            let code = tokio::task::spawn_blocking(move || probe::check_command(&file)).await?;
            std::process::exit(code);
        }
        Command::Plugins {
            command:
                PluginsCommand::Check {
                    file,
                    in_process: true,
                },
        } => {
            println!("{}", probe::OPENING);
            let code = match check_in_time(&file).await {
                Ok(report) if report.is_clean() => {
                    println!("{report}");
                    0
                }
                Ok(report) => {
                    // Loads, but would fail every call to some model or be skipped by a
                    // directory scan: not deployable as it is.
                    println!("{report}");
                    eprintln!(
                        "{}: loads, but is not ready to deploy (see the report)",
                        file.display()
                    );
                    probe::LOADS_NOT_CLEAN
                }
                Err(refused) => {
                    eprintln!("{refused}");
                    1
                }
            };
            // The plugin gave control back: what the parent waits for.
            println!("{}", probe::RETURNED);
            std::process::exit(code);
        }
        Command::Token {
            command: TokenCommand::Create { role, owner, serve },
        } => {
            // Checked before the database is opened (or created): a refused call changes
            // nothing. Owners follow createApiToken's rule (SPEC 1: 1 to 128 characters).
            let (role, owner) = match (role, owner) {
                (RoleArg::User, Some(o))
                    if o.is_empty() || o.chars().count() > credits_core::wallet::MAX_KEY_CHARS =>
                {
                    anyhow::bail!("--owner must be 1 to 128 characters")
                }
                (RoleArg::User, Some(o)) => (TokenRole::User, Some(o)),
                (RoleArg::User, None) => anyhow::bail!("a USER token needs --owner"),
                (_, Some(_)) => anyhow::bail!("only USER tokens have an owner"),
                (RoleArg::Admin, None) => (TokenRole::Admin, None),
                (RoleArg::Service, None) => (TokenRole::Service, None),
            };
            let settings = Settings::load(serve, cli.config.as_deref())?;
            let store = open_store(&settings).await?;
            let token = credits_actors::ledger::new_token();
            let row = TokenRow {
                hash: TokenHash::of_secret(&token),
                role,
                owner_id: owner,
                label: None,
                created_at: clock_of(&settings).now(),
            };
            store.insert_token(&row).await?;
            // The secret alone on stdout (for scripts); its id, for `token revoke --id`.
            println!("{token}");
            eprintln!("token id {}", row.hash.id());
            Ok(())
        }
        Command::Token {
            command: TokenCommand::List { serve },
        } => {
            let settings = Settings::load(serve, cli.config.as_deref())?;
            let store = open_store(&settings).await?;
            for t in store.tokens().await? {
                println!(
                    "{}  {:<7}  {:<20}  {}",
                    t.hash.id(),
                    t.role.as_str(),
                    t.owner_id.as_deref().unwrap_or("-"),
                    t.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { token, id, serve },
        } => {
            let secret = match token.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the token from stdin")?;
                    Some(line)
                }
                other => other.map(str::to_owned),
            };
            if let Some(id) = &id {
                anyhow::ensure!(
                    id.len() == credits_store::TOKEN_ID_CHARS
                        && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "--id is the {} hex digits `token list` prints",
                    credits_store::TOKEN_ID_CHARS
                );
            }
            let settings = Settings::load(serve, cli.config.as_deref())?;
            let store = open_store(&settings).await?;
            let hash = match (secret, id) {
                (Some(secret), _) => TokenHash::of_secret(secret.trim()),
                (None, Some(id)) => {
                    let id = id.to_ascii_lowercase();
                    let mut matching = store
                        .tokens()
                        .await?
                        .into_iter()
                        .filter(|t| t.hash.id() == id);
                    match (matching.next(), matching.next()) {
                        (Some(t), None) => t.hash,
                        (None, _) => anyhow::bail!("no such token is stored"),
                        (Some(_), Some(_)) => {
                            anyhow::bail!("two tokens share id {id}: revoke by the token itself")
                        }
                    }
                }
                (None, None) => anyhow::bail!("give the token, `-` to read it from stdin, or --id"),
            };
            if !store.delete_token(&hash).await? {
                anyhow::bail!("no such token is stored");
            }
            println!("revoked");
            Ok(())
        }
    }
}

/// The check itself, in the child `plugins check` starts (`--in-process`), on the blocking
/// pool. The parent kills a child that takes longer than `probe::PROBE_TIMEOUT`; the cut-off
/// here is only a last guard for a child run by hand.
async fn check_in_time(
    file: &std::path::Path,
) -> Result<credits_pricing::CheckReport, credits_pricing::RefusedPlugin> {
    let path = file.to_owned();
    match credits_actors::ledger::plugin_work(move || credits_pricing::check_plugin(&path)).await {
        Ok(checked) => checked,
        Err(why) => {
            eprintln!("plugin {} refused: {why}", file.display());
            std::process::exit(1);
        }
    }
}

/// The one clock every time comes from: manual when the settings say so.
fn clock_of(settings: &Settings) -> Clock {
    settings.manual_clock.map_or(Clock::System, Clock::manual)
}

/// An admin token shorter than this is warned about at start.
const STRONG_TOKEN_BYTES: usize = 20;

/// A database URL for logs and messages: no user or password, and no query (which may
/// carry `password=`); one that does not parse is not shown at all (found by review: a
/// password in the query, or holding an `@`, was printed).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        // Without `//` the rest is opaque: a SQLite file name is shown, anything else may
        // hold the whole secret.
        Ok(parsed) if !parsed.has_host() && !parsed.path().starts_with('/') => {
            match parsed.scheme() {
                "sqlite" => format!("sqlite:{}", parsed.path()),
                scheme => format!("{scheme}:…"),
            }
        }
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "(a database URL that does not parse)".to_owned(),
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database)
        .await
        .with_context(|| format!("opening {}", redact(&settings.database)))?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Taken first: until a handler is installed, SIGHUP ends the process (found by review:
    // a reload signalled while the service started, which can take seconds, killed it).
    // One that comes before the plugins are loaded reloads them once they are.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let store = open_store(&settings).await?;
    let text = match &settings.catalogue {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading catalogue {}", path.display()))?,
        None => catalogue::EMBEDDED.to_owned(),
    };
    let cat = catalogue::parse(&text)?;
    let clock = clock_of(&settings);
    if let Some(t) = settings.manual_clock {
        tracing::info!(start = %t, "running on a manual clock");
    }
    let bundle_rows: Vec<_> = cat
        .bundles
        .iter()
        .enumerate()
        .map(|(i, b)| BundleRow {
            id: b.id.clone(),
            credits_ucr: b.credits.micro(),
            price_cents: b.price_cents,
            currency: b.currency.clone(),
            position: i as i64,
        })
        .collect();
    // Opening a library runs its initialisers: each new file is opened in a child process
    // first (`probe.rs`), so one that crashes or never returns is refused by name.
    let (plugins, cache) = (settings.plugins.clone(), settings.plugin_cache.clone());
    let (pricing, report) = credits_actors::ledger::plugin_work(move || {
        PricingRegistry::open_probed(&plugins, &cache, Some(probe::registry_probe()))
    })
    .await
    .map_err(|why| {
        anyhow::anyhow!(
            "loading the pricing plugins in {}: {why}",
            settings.plugins.display()
        )
    })??;
    tracing::info!(dir = %settings.plugins.display(), "pricing plugins: {report}");
    let pricing = Arc::new(pricing);

    let config = ActorConfig {
        writers: match store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_WRITERS,
        },
        ..ActorConfig::default()
    };
    // What fell due while the service was down is applied under the plans it fell due
    // under (SPEC 5: a plan's new credits count from each wallet's next reset or renewal).
    // A change of credits needs nothing here: the store keeps the credits a plan had until
    // each edit, and a wallet catching up uses those. A change of billing interval has no
    // such history, so every wallet first catches up under the old interval; otherwise the
    // sweep catches up in the background while the service serves.
    let before = credits_actors::ledger::stored_plans(&store).await?;
    let interval_change = before.iter().filter(|p| !p.custom).any(|p| {
        cat.plans
            .iter()
            .any(|n| n.id == p.id && n.interval != p.interval)
    });
    let dir = Directory::new(
        Arc::new(SqlWallets::new(store.clone())),
        clock,
        before.clone(),
        config,
    );
    if interval_change {
        let now = dir.clock().now();
        dir.catch_up(now).await.map_err(|why| {
            anyhow::anyhow!(
                "the catalogue changes a billing interval, and what fell due while stopped must first be applied under the old one, {why}: start again once the database serves"
            )
        })?;
        tracing::info!("applied what fell due while stopped");
    }
    // Stamped as written (found by review: stamped before the plugins were probed,
    // seconds earlier, an edit could fall before resets other nodes had just committed).
    let now = dir.clock().now();
    let plan_rows: Vec<_> = cat
        .plans
        .iter()
        .enumerate()
        .map(|(i, p)| credits_actors::ledger::plan_row(p, i as i64, now))
        .collect();
    store.upsert_catalogue(&plan_rows, &bundle_rows).await?;
    dir.plans()
        .replace(credits_actors::ledger::stored_plans(&store).await?);
    // Other nodes' commits reach this node's actors and subscribers (PostgreSQL only). It
    // starts after the catch-up above, which must run on the plans as they were; a wallet
    // that catch-up activated checks itself once, for what other nodes committed meanwhile,
    // and the plans are read once more, for an edit whose notice came before the listening
    // did (found by review).
    let _feed = credits_actors::feed::follow(dir.clone(), store.clone()).await;
    if _feed.is_some() {
        credits_actors::ledger::reload_plans(&dir).await?;
        dir.announce_all();
    }
    // What falls due on inactive wallets is recorded at its instant (within a second).
    let sweeper = dir.sweep_due();
    let ledger = Ledger::new(dir.clone(), store, pricing.clone());
    // An approval interrupted between claiming its review and finishing it (a crash, a
    // lost connection) is completed at start and then every minute.
    let approvals = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CLAIMED_APPROVALS_EVERY);
            loop {
                every.tick().await;
                match ledger.complete_claimed_approvals().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(finished = n, "completed claimed review approvals"),
                    Err(e) => {
                        tracing::warn!(error = %e, "completing claimed review approvals failed")
                    }
                }
            }
        })
    };
    let schema = credits_graphql::schema(
        ledger.clone(),
        &credits_graphql::ApiConfig {
            introspection: settings.introspection,
        },
    );
    // Surrounding whitespace is no part of a token (clients' is trimmed too): a secret
    // read from a file ends in a newline.
    let admin_token = std::env::var("CREDITD_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .inspect(|t| {
            if t.len() < STRONG_TOKEN_BYTES {
                tracing::warn!(
                    "CREDITD_ADMIN_TOKEN is shorter than {STRONG_TOKEN_BYTES} characters: whoever guesses it is ADMIN (fine for a local try, not for a server others reach)"
                );
            }
        })
        .map(|t| Arc::new(TokenHash::of_secret(&t)));
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    server::register_metrics();
    let draining = Arc::new(tokio::sync::RwLock::new(()));
    let state = server::AppState {
        schema,
        ledger,
        admin_token,
        metrics,
        in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
        websockets: Arc::new(tokio::sync::Semaphore::new(settings.max_websockets)),
        ws_keepalive: settings.ws_keepalive,
        draining: draining.clone(),
        loopback: settings.listen.ip().is_loopback(),
        allowed_hosts: settings
            .allowed_hosts
            .iter()
            .map(|h| server::host_name(h))
            .collect(),
    };

    reload_on_sighup(pricing, hup);
    let stop = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    // The first line on stdout, so a supervisor (or a test) that asked for port 0 learns
    // the port it got. Documented on `ServeArgs::listen`.
    println!("listening on {addr}");
    tracing::info!(%addr, database = %redact(&settings.database), "creditd listening: dashboard at http://{addr}/, GraphiQL at http://{addr}/graphql");
    // A connection that sends nothing for four keepalive periods is gone (2 min by
    // default; a live WebSocket answers a ping every period).
    let listener = listener::IdleLimited::new(listener, 4 * settings.ws_keepalive);
    listener::serve(
        listener,
        server::router(state),
        settings.header_timeout,
        settings.max_connections,
        HTTP_DRAIN,
        stop,
    )
    .await;
    // HTTP requests are done; WebSocket operations (not tracked by `serve` once upgraded)
    // finish here, and new ones are refused.
    // The write guard is kept until the process ends, so operations stay refused while
    // the wallets are flushed; so is the wait for it past the timeout, which refuses them
    // as well (a queued writer lets no reader in; found by review: dropping the wait let
    // new operations in again while the wallets were flushed).
    let mut refusing = Box::pin(draining.clone().write_owned());
    let _refusing = match tokio::time::timeout(WEBSOCKET_DRAIN, &mut refusing).await {
        Ok(guard) => Some(guard),
        Err(_) => {
            tracing::warn!("WebSocket operations still running after the drain timeout");
            None
        }
    };
    tracing::info!("draining wallets");
    sweeper.abort();
    approvals.abort();
    dir.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before `listening on`
/// is printed: a signal sent as soon as a supervisor reads that line drains the service
/// instead of killing it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: finishing the requests in flight");
    })
}

/// The store at `settings.database`, neither created nor migrated: a wrong path is an
/// error, not an empty database that checks clean, and a service beside it keeps its
/// schema.
async fn open_existing_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = match &settings.database {
        // The default URL says `mode=rwc` (create): read-write, never create.
        sqlite if sqlite.starts_with("sqlite:") && sqlite.contains("mode=rwc") => {
            sqlite.replace("mode=rwc", "mode=rw")
        }
        sqlite if sqlite.starts_with("sqlite:") && !sqlite.contains("mode=") => {
            let glue = if sqlite.contains('?') { '&' } else { '?' };
            format!("{sqlite}{glue}mode=rw")
        }
        other => other.clone(),
    };
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("opening {}", redact(&url)))?;
    anyhow::ensure!(
        store.migrated().await?,
        "{} is not migrated to this creditd's schema: run `creditd migrate` first",
        redact(&url)
    );
    Ok(store)
}

/// Replays the ledger of `only`, or of every wallet, against its snapshot (DESIGN "Ledger
/// and snapshots"); prints each that differs. Returns (wallets checked, wallets that differ).
async fn verify_ledgers(store: &Store, only: Option<&str>) -> anyhow::Result<(u64, u64)> {
    const PAGE: usize = 1_000;
    let mut counts = (0, 0);
    if let Some(id) = only {
        anyhow::ensure!(
            verify_ledger(store, id, &mut counts).await?,
            "no wallet {id}"
        );
        return Ok(counts);
    }
    let mut after: Option<String> = None;
    loop {
        let ids = store.wallet_ids_after(after.as_deref(), PAGE).await?;
        let Some(last) = ids.last().cloned() else {
            return Ok(counts);
        };
        for id in &ids {
            verify_ledger(store, id, &mut counts).await?;
        }
        after = Some(last);
    }
}

/// Replays one wallet's ledger against its snapshot, counting it in (checked, differ) and
/// printing it if it differs; `false` when there is no such wallet.
async fn verify_ledger(store: &Store, id: &str, counts: &mut (u64, u64)) -> anyhow::Result<bool> {
    let same = match store.replays_to_snapshot(id).await {
        Ok(None) => return Ok(false),
        Ok(Some(true)) => true,
        Ok(Some(false)) => {
            println!("wallet {id}: its ledger replays to another state than its snapshot");
            false
        }
        Err(credits_store::StoreError::Corrupt(why)) => {
            println!("wallet {id}: {why}");
            false
        }
        Err(e) => return Err(e.into()),
    };
    counts.0 += 1;
    counts.1 += u64::from(!same);
    Ok(true)
}

fn reload_on_sighup(pricing: Arc<PricingRegistry>, mut hup: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match credits_actors::ledger::reload_pricing(&pricing).await {
                Ok(report) => {
                    for refused in &report.refused {
                        tracing::warn!(%refused, "pricing plugin refused on reload");
                    }
                    tracing::info!("pricing reloaded: {report}")
                }
                Err(e) => {
                    tracing::error!(error = %e, "pricing reload failed; previous tiers keep serving")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::redact;

    /// The drain relies on it: once the wait for the write lock has been polled, no new
    /// read guard is handed out, also after the wait stopped being polled (past the drain
    /// timeout) as long as it is kept.
    #[tokio::test]
    async fn a_kept_wait_for_the_drain_lock_refuses_new_operations() {
        let lock = std::sync::Arc::new(tokio::sync::RwLock::new(()));
        let running = lock.clone().try_read_owned().unwrap();
        let mut refusing = Box::pin(lock.clone().write_owned());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), &mut refusing);
        assert!(waited.await.is_err(), "an operation still runs");
        assert!(lock.clone().try_read_owned().is_err());
        drop(running);
        assert!(lock.clone().try_read_owned().is_err());
        drop(refusing);
        assert!(lock.clone().try_read_owned().is_ok());
    }

    /// Found by review: only what came before the first `@` was cut, so a password in the
    /// query, or one holding an `@`, was logged.
    #[test]
    fn database_urls_are_logged_without_secrets() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/credits"),
            "postgres://db:5432/credits"
        );
        assert_eq!(
            redact("postgres://u:p@ss@db/credits"),
            "postgres://db/credits"
        );
        let query = redact("postgres://db/credits?user=app&password=s3cret");
        assert_eq!(query, "postgres://db/credits");
        assert_eq!(
            redact("sqlite://creditd.db?mode=rwc"),
            "sqlite://creditd.db"
        );
        assert!(!redact("not a url with s3cret").contains("s3cret"));
        assert_eq!(redact("postgres:app:s3cret@db/credits"), "postgres:…");
        assert_eq!(redact("sqlite:creditd.db?mode=rwc"), "sqlite:creditd.db");
    }
}
