//! `credits-loadgen`: drives a running `creditd` and prints rates and latencies.

use std::time::Duration;

use clap::Parser;

/// Drives a running creditd over HTTP (and WebSocket) and reports recordUsage/s, p50/p99
/// latency, the trivial-query ceiling and subscription delivery latency.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server's base URL.
    #[arg(
        long,
        env = "CREDITS_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// An ADMIN token (creates the plan and wallets, records usage).
    #[arg(long, env = "CREDITD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// N: wallets to create.
    #[arg(short = 'n', long, default_value_t = 1000)]
    wallets: usize,
    /// C: concurrent HTTP clients.
    #[arg(short = 'c', long, default_value_t = 64)]
    clients: usize,
    /// Seconds per measured phase.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// S: open balanceChanged subscriptions (0: skip the subscription phase).
    #[arg(short = 's', long, default_value_t = 0)]
    subscriptions: usize,
    /// Subscriptions per WebSocket connection.
    #[arg(long, default_value_t = 100)]
    subscriptions_per_connection: usize,
    /// The model every usage is priced with.
    #[arg(long, default_value = "economy-mini")]
    model: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = credits_loadgen::Config {
        url: a.url,
        admin_token: a.admin_token,
        wallets: a.wallets,
        clients: a.clients,
        duration: Duration::from_secs_f64(a.duration),
        subscriptions: a.subscriptions,
        subscriptions_per_connection: a.subscriptions_per_connection,
        model: a.model,
    };
    let report = credits_loadgen::run(&cfg).await?;
    print!("{report}");
    Ok(())
}
