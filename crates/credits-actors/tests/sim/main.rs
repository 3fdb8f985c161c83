//! Seeded simulation of the actor system (issue 10, item 3). One `u64` seed drives a whole
//! history against `Directory` over a `MemoryStore` with a manual clock: usage, reservations
//! (settle, release, expiry), grants with expiries, bundle purchases, plan and zone changes,
//! idempotent retries (same request and conflicting), clock jumps (small, to just around the
//! next due instant, across DST changes and month ends), store faults (failed commit, lost
//! reply, failed load), actor crashes and passivation. Every call is also run on the core's
//! `Journal`, the reference driver; after every step the store is checked against it.
//!
//! ```text
//! cargo test -p credits-actors --test sim                       # SIM_SEEDS seeds (default 2000)
//! SIM_SEED=1234 cargo test -p credits-actors --test sim         # one seed, to reproduce
//! SIM_SEEDS=100000 SIM_SEED_BASE=5000 cargo test -p credits-actors --release --test sim
//! SIM_STEPS=400 ...                                             # longer histories
//! ```

mod sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Seeds run by default: "a few thousand", sized to stay well under a minute in debug.
const DEFAULT_SEEDS: u64 = 2000;
/// Steps in one history by default.
const DEFAULT_STEPS: usize = 50;
/// Histories running at once on the runtime (they are independent: one store, clock and
/// directory each).
const CONCURRENT_SEEDS: usize = 128;
/// A history that takes longer than this is a hang (a call that never returns).
const SEED_TIMEOUT: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {v:?}")),
    )
}

#[test]
fn seeded_histories() {
    let steps = env_u64("SIM_STEPS").map_or(DEFAULT_STEPS, |s| s as usize);
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("SIM_SEED_BASE").unwrap_or(0);
            let n = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (base..base + n).collect()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let (stats, failures) = runtime.block_on(async {
        let permits = Arc::new(Semaphore::new(CONCURRENT_SEEDS));
        let mut tasks = Vec::with_capacity(seeds.len());
        for &seed in &seeds {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("open semaphore");
            tasks.push((
                seed,
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = tokio::time::timeout(SEED_TIMEOUT, sim::run(seed, steps)).await;
                    drop(permit);
                    if t.elapsed() > Duration::from_secs(30) {
                        eprintln!("sim: seed {seed} took {:.1?}", t.elapsed());
                    }
                    r.unwrap_or_else(|_| Err(format!("hung: no progress for {SEED_TIMEOUT:?}")))
                }),
            ));
        }
        let mut stats = sim::Stats::default();
        let mut failures = Vec::new();
        for (seed, task) in tasks {
            match task.await {
                Ok(Ok(s)) => stats.add(&s),
                Ok(Err(why)) => failures.push((seed, why)),
                Err(e) => failures.push((seed, format!("panicked: {e}"))),
            }
        }
        (stats, failures)
    });
    let elapsed = started.elapsed();
    eprintln!(
        "sim: {} seeds x {steps} steps in {:.1?}; {stats}",
        seeds.len(),
        elapsed
    );
    if let Some((seed, why)) = failures.first() {
        let others: Vec<u64> = failures.iter().skip(1).map(|(s, _)| *s).take(20).collect();
        panic!(
            "{} of {} seeds failed. First: seed {seed}:\n{why}\n\nReproduce with:\n  \
             SIM_SEED={seed} SIM_STEPS={steps} cargo test -p credits-actors --test sim\n\
             Other failing seeds: {others:?}",
            failures.len(),
            seeds.len()
        );
    }
}
