//! The schema of the durable store, as sea-orm-migration steps that run on SQLite and
//! PostgreSQL alike. This crate owns table and index definitions and nothing else: it never
//! reads or writes rows, and a released migration is never edited — a schema change is a
//! new `mYYYYMMDD_NNNNNN_name.rs` file appended to [`Migrator::migrations`].
//!
//! Conventions every table follows (the store crate relies on them):
//! - amounts are `BIGINT` micro-credits, columns suffixed `_ucr`; no floating point;
//! - instants are `BIGINT` microseconds since the Unix epoch (UTC), suffixed `_us`, so
//!   ordering, cursors and day boundaries are the same exact integer arithmetic on both
//!   databases (SQLite has no timestamp type, and zone-aware SQL is not portable);
//! - domain payloads (a wallet snapshot, a ledger entry, a balance) are JSON `TEXT`,
//!   written and read only by the store's serde conversions;
//! - every per-wallet table leads its keys with `wallet_id`, so the tables can be
//!   distributed by wallet id (e.g. Citus) without changing a query.

pub use sea_orm_migration::prelude::*;

mod m20251128_000001_catalogue;
mod m20251128_000002_wallets_ledger;
mod m20251128_000003_teams_reviews_tokens;
mod m20251128_000004_usage_covering_indexes;
mod m20251128_000005_wallet_creation_requests;
mod m20251129_000006_retired_plans;
mod m20251129_000007_members_version;
mod m20251129_000008_drop_reservations_due;
mod m20251129_000009_grants_review;
mod m20251129_000010_scheduled_plan;
mod m20251129_000011_plan_credit_history;
mod m20251130_000012_due_wallets_by_id;

/// Every migration of the store, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20251128_000001_catalogue::Migration),
            Box::new(m20251128_000002_wallets_ledger::Migration),
            Box::new(m20251128_000003_teams_reviews_tokens::Migration),
            Box::new(m20251128_000004_usage_covering_indexes::Migration),
            Box::new(m20251128_000005_wallet_creation_requests::Migration),
            Box::new(m20251129_000006_retired_plans::Migration),
            Box::new(m20251129_000007_members_version::Migration),
            Box::new(m20251129_000008_drop_reservations_due::Migration),
            Box::new(m20251129_000009_grants_review::Migration),
            Box::new(m20251129_000010_scheduled_plan::Migration),
            Box::new(m20251129_000011_plan_credit_history::Migration),
            Box::new(m20251130_000012_due_wallets_by_id::Migration),
        ]
    }
}
