//! Kill -9 under load (issue 10, item 1): many clients drive one `creditd`, which is
//! SIGKILLed at a random moment and restarted on the same database, cycle after cycle;
//! then every operation is checked against the ledger and retried with its key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use credits_store::Store;

use crate::helpers::{App, Backend};
use crate::on_both;
use crate::workload::{Rng, Shared, env_or, seed, spawn_clients, verify, wallets};

/// Kill cycles per database unless `RELIABILITY_CYCLES` says otherwise (CI's bound).
const DEFAULT_CYCLES: u64 = 5;
/// Concurrent clients unless `RELIABILITY_CLIENTS` says otherwise.
const DEFAULT_CLIENTS: u64 = 12;
/// Load runs this long, plus up to [`LOAD_JITTER_MS`], before each kill.
const LOAD_MIN_MS: u64 = 300;
const LOAD_JITTER_MS: u64 = 1_200;

on_both!(kill_9_under_load_loses_and_doubles_nothing);

async fn kill_9_under_load_loses_and_doubles_nothing(b: Backend) {
    let cycles = env_or("RELIABILITY_CYCLES", DEFAULT_CYCLES);
    let clients = env_or("RELIABILITY_CLIENTS", DEFAULT_CLIENTS) as usize;
    let seed = seed();
    let name = match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgres",
    };
    eprintln!("kill -9 on {name}: RELIABILITY_SEED={seed}");
    let started = Instant::now();
    let mut app = App::spawn(b).await;
    let targets = Arc::new(wallets(&app, 3).await);
    let shared = Arc::new(Shared::default());
    let mut rng = Rng::new(seed);
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = spawn_clients(
            clients,
            vec![app.url("/graphql")],
            app.admin.clone(),
            targets.clone(),
            shared.clone(),
            stop.clone(),
            seed ^ cycle.wrapping_mul(0x1000_0000_01b3),
        );
        tokio::time::sleep(Duration::from_millis(
            LOAD_MIN_MS + rng.below(LOAD_JITTER_MS),
        ))
        .await;
        // Mid-load: requests are in flight, batches are being committed.
        app.kill();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.await.expect("a client task");
        }
        app.start().await;
    }

    let store = Store::connect(&app.db.url).await.expect("open the store");
    let ops = shared.ops.lock().unwrap().clone();
    let tally = verify(&store, &[app.url("/graphql")], &app.admin, &targets, &ops).await;
    println!(
        "kill -9 on {name}: {cycles} cycles, {} clients, {} ops sent, {} acknowledged, {} refused {:?}, \
         {} unknown {:?} ({} of them durable, {} acknowledged on retry), lost {}, doubled {}, \
         unearned refusals {}, {:.1} s, RELIABILITY_SEED={seed}",
        clients,
        ops.len(),
        tally.acked,
        tally.refused,
        tally.refusals,
        tally.unknown,
        tally.unknowns,
        tally.unknown_durable,
        tally.acked_on_retry,
        tally.lost,
        tally.doubled,
        tally.unearned,
        started.elapsed().as_secs_f64(),
    );
    assert_eq!((tally.lost, tally.doubled, tally.unearned), (0, 0, 0));
    // The run must have exercised something: acknowledged work, and kills that met
    // requests in flight (their outcomes unknown until the retries).
    assert!(
        tally.acked as u64 >= cycles && tally.unknown > 0,
        "too little load: {tally:?}; log:\n{}",
        app.log()
    );
}
