//! SQLite WAL checkpoints off the commit path.
//!
//! By default the connection whose commit takes the WAL past 1,000 pages copies them into
//! the database file and fsyncs it before that commit returns: every few group commits one
//! of them waited for a checkpoint. A recordUsage dirties about a dozen pages of as many
//! indexes, so the checkpoints were a third of the writer's time (`docs/BENCHMARKS.md`,
//! "Server"; `docs/bench/sqlite_ceiling.py`). Here the pool's connections never checkpoint
//! (`wal_autocheckpoint=0`); one connection of its own runs `PASSIVE` checkpoints every
//! [`INTERVAL`], beside the writer rather than in its way. A passive checkpoint takes no
//! lock a writer or reader waits for; what it cannot copy yet (frames a reader still needs)
//! it copies next time. Durability does not depend on it: a commit is durable once its WAL
//! frames are synced (`synchronous=FULL`), and a WAL left behind by a crash is replayed
//! when the database is next opened.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

use crate::StoreError;

/// How often the WAL is checkpointed.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);
/// WAL frames past which a checkpoint also restarts the WAL (about 32 MiB).
const RESTART_FRAMES: i64 = 8_192;

/// The checkpointing task; stops when dropped (with the last clone of its `Store`).
#[derive(Debug)]
pub(crate) struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    pub(crate) async fn start(url: &str) -> Result<Checkpointer, StoreError> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .max_connections(1)
            .min_connections(1)
            .map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_secs(1)));
        let db = Database::connect(options).await.map_err(StoreError::Db)?;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = checkpoint(&db).await {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                }
            }
        });
        Ok(Checkpointer { task })
    }
}

/// A passive checkpoint; when it leaves the WAL long, a restarting one. Under a steady
/// stream of commits a passive checkpoint never finds the WAL fully copied, and SQLite
/// starts the WAL over only then: without the restart it would grow without bound. A
/// restart waits for the commit in progress and holds the next one while it copies the
/// frames written since the passive pass, a few milliseconds.
async fn checkpoint(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    let passive = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?;
    let frames: i64 = match passive {
        Some(row) => row.try_get_by_index(1)?,
        None => 0,
    };
    if frames >= RESTART_FRAMES {
        db.execute_unprepared("PRAGMA wal_checkpoint(RESTART)")
            .await?;
    }
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
