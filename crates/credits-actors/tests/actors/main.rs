//! Wallet actors against the in-memory store: concurrency, group commit, idempotency under
//! races, fault injection, crashes, the manual clock and subscriptions.

mod helpers;

mod clock;
mod concurrency;
mod faults;
mod pools;
mod sql;
