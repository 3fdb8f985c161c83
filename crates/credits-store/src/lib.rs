//! The durable store of the credits service: wallet snapshots behind a version fence, the
//! append-only ledger, and the relational projections of it that queries need (usage
//! events, grant lots, reservations), plus plans, bundles, teams, reviews and API tokens,
//! on SQLite (embedded default) or PostgreSQL (production). It owns SQL and transactions
//! and nothing else: it never decides what an operation does to a wallet (that is
//! `credits-core`), never holds a wallet in memory between calls, and never writes a
//! wallet's rows outside a fenced commit.
//!
//! Every per-wallet read and write is keyed by wallet id and a fenced commit touches one
//! wallet per savepoint, so the tables can be distributed by wallet id.

mod catalogue;
mod core;
mod entity;
mod error;
mod feed;
mod lookups;
mod queries;
mod reviews;
mod rows;
mod sql;
mod teams;
mod time;
mod tokens;
mod usage;
mod wallet;

use std::time::Duration;

use migration::MigratorTrait;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

pub use catalogue::PlanUpsert;
pub use core::{cause_name, grant_kind};
pub use error::{CommitError, StoreError};
pub use feed::{CHANNEL, CommitListener, Notice};
pub use queries::{check_cursor, cursor_of};
pub use rows::*;
pub use usage::UsageQuery;

/// Most usage events one history page returns (SPEC 8: `first` ≤ 100).
pub const MAX_PAGE: usize = 100;
/// Most ledger records, usage rows, grant rows or reservation rows one wallet batch may
/// carry; the wallet actor bounds its batch well below this (its queue of calls plus what
/// falls due, in bounded steps).
pub const MAX_BATCH_RECORDS: usize = 16_384;
/// Most wallet batches one multi-wallet commit may carry (DESIGN: e.g. 512 batches).
pub const MAX_GROUP_BATCHES: usize = 1_024;
/// Most rows any listing query returns (due wallets, due reservations, events above a
/// seq, grants of a wallet, reviews, members, …).
pub const MAX_LIST: usize = 10_000;
/// Most local days one DAY summary may span (about ten years).
pub const MAX_SUMMARY_DAYS: usize = 3_700;
/// Most groups one usage summary returns.
pub const MAX_SUMMARY_GROUPS: usize = 100_000;
/// Rows per multi-row INSERT: keeps every statement well under SQLite's and
/// PostgreSQL's bound-parameter limits (17 columns × 256 rows ≈ 4.4k parameters).
pub(crate) const INSERT_CHUNK: usize = 256;

/// SQLite connections in the pool: one writer at a time anyway (BEGIN IMMEDIATE), the
/// others serve reads concurrently under WAL.
const SQLITE_POOL: u32 = 4;
/// PostgreSQL connections in the pool.
const POSTGRES_POOL: u32 = 16;
/// How long a SQLite writer waits for the write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL's `idle_in_transaction_session_timeout` on the store's connections: no
/// transaction of the service waits on its client that long.
const IDLE_IN_TRANSACTION: &str = "60s";
/// The PostgreSQL advisory lock key migrations hold ("credits" in ASCII).
const MIGRATION_LOCK: i64 = 0x63_72_65_64_69_74_73;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database: cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
}

/// How SQLite makes a commit durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// `synchronous=FULL`: an acknowledged commit survives power loss. What the service uses.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit may be lost on power loss (not on a crash). Only for
    /// measuring what FULL costs.
    Normal,
}

impl Store {
    /// Opens `sqlite://path?mode=rwc` (WAL, `synchronous=FULL` so an acknowledged commit
    /// survives power loss, a busy timeout) or `postgres://…` (a pool). Does not migrate.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, SqliteSync::Full).await
    }

    /// [`Store::connect`] with a chosen SQLite durability (benchmarks).
    pub async fn connect_with(url: &str, sync: SqliteSync) -> Result<Store, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        // SPEC 9: the SQLite file is created on first start, whatever its URL, unless the
        // URL says otherwise (`mode=ro`, `mode=rw`).
        let create = !url.contains("mode=");
        let mut options = ConnectOptions::new(url.to_owned());
        options.sqlx_logging(false).acquire_timeout(ACQUIRE_TIMEOUT);
        match backend {
            Backend::Sqlite => {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                options
                    .max_connections(SQLITE_POOL)
                    .map_sqlx_sqlite_opts(move |o| {
                        // `mode=rwc` in the URL already sets it; `false` would undo that.
                        let o = if create { o.create_if_missing(true) } else { o };
                        o.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(match sync {
                                SqliteSync::Full => SqliteSynchronous::Full,
                                SqliteSync::Normal => SqliteSynchronous::Normal,
                            })
                            .busy_timeout(SQLITE_BUSY_TIMEOUT)
                            .foreign_keys(false)
                    });
            }
            Backend::Postgres => {
                // A transaction whose client went silent (a commit given up on, see the
                // actors' commit timeout) ends on the server and lets go of its row locks.
                options
                    .max_connections(POSTGRES_POOL)
                    .map_sqlx_postgres_opts(|o| {
                        o.options([("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION)])
                    });
            }
        }
        let db = Database::connect(options).await.map_err(StoreError::Db)?;
        Ok(Store { db, backend })
    }

    /// Applies every pending migration, all in one write transaction that nodes starting
    /// together take in turn (PostgreSQL: an advisory lock; SQLite: `BEGIN IMMEDIATE`):
    /// the first migrates, the others then find nothing pending.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let txn = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await
                .map_err(StoreError::Db)?;
        }
        migration::Migrator::up(&txn, None)
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::Db)
    }

    /// Whether every migration this build knows is applied, read without writing (an
    /// error for a database a newer build migrated past them).
    pub async fn migrated(&self) -> Result<bool, StoreError> {
        Ok(
            migration::Migrator::get_pending_migrations_read_only(&self.db)
                .await
                .map_err(StoreError::Db)?
                .is_empty(),
        )
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying connection, for tests and tools (e.g. the migration CLI).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Closes the pool; pending writes are already committed or failed.
    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await.map_err(StoreError::Db)
    }

    pub(crate) fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Sqlite => DbBackend::Sqlite,
            Backend::Postgres => DbBackend::Postgres,
        }
    }
}

/// Rows after the one at (`at_us`, `id`) in (instant, id) order: where a keyset page that
/// follows it starts.
pub(crate) fn after_in_order<C: sea_orm::ColumnTrait>(
    at_column: C,
    id_column: C,
    at_us: i64,
    id: &str,
) -> sea_orm::Condition {
    use sea_orm::Condition;
    Condition::any().add(at_column.gt(at_us)).add(
        Condition::all()
            .add(at_column.eq(at_us))
            .add(id_column.gt(id)),
    )
}

/// Fails with [`StoreError::TooLarge`] when `n` exceeds `limit`.
pub(crate) fn bound(what: &'static str, n: usize, limit: usize) -> Result<(), StoreError> {
    if n > limit {
        Err(StoreError::TooLarge { what, limit })
    } else {
        Ok(())
    }
}
