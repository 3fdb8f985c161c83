//! Reliability suite (issue 10): the real `creditd` killed with SIGKILL under load and
//! restarted, two nodes on one PostgreSQL, and overload. Every scenario records, for each
//! idempotency key, whether the service acknowledged it and with what receipt, then checks
//! the durable ledger directly (SPEC 11): nothing acknowledged is lost, nothing is applied
//! twice, every wallet conserves credits and replays to its stored state.
//!
//! `RELIABILITY_CYCLES=N` sets the number of kill cycles per database (default 5);
//! `RELIABILITY_SEED=S` replays one run's random choices (the seed is printed).

#[allow(dead_code)] // shared with the e2e suite, which uses the rest
#[path = "../e2e/helpers.rs"]
mod helpers;

mod checker;
mod kill9;
mod overload;
mod two_nodes;
mod workload;
