//! Wallet actors against the in-memory store: concurrency, group commit, idempotency under
//! races, fault injection, crashes, the manual clock and subscriptions.

mod helpers;
#[path = "../../../credits-pricing/tests/pricing/helpers.rs"]
#[allow(dead_code)] // a pricing plugin for the settles of `sql`
mod plugins;

mod clock;
mod concurrency;
mod faults;
mod nodes;
mod pools;
mod sql;
