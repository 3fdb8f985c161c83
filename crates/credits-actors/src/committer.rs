//! Group commit across wallets. Every wallet actor of a node hands its batch to one
//! committer; while `writers` transactions are in flight, further batches wait and then go
//! together in one transaction (`WalletStore::commit_many`), each still fenced and answered
//! on its own. One fsync then carries the operations of many wallets: with one wallet actor
//! per wallet, this is what makes debits spread over many wallets cheap (DESIGN "Group
//! commit inside a ractor actor"; `docs/BENCHMARKS.md`, "Actors").
//!
//! The queue needs no bound of its own: each wallet actor has at most one batch in flight,
//! so it never holds more jobs than there are active wallets.

use std::sync::Arc;
use std::time::Duration;

use credits_core::WalletId;
use dashmap::DashMap;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::directory::Metrics;
use crate::store::{Batch, CommitError, WalletStore};

/// Most wallet batches in one transaction (the SQL store allows 1,024).
pub const MAX_GROUP: usize = 512;

/// The default [`crate::ActorConfig::commit_timeout`]: far above any commit's time, well
/// below the hours a dead connection's read can hang for without TCP keepalive.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Called once with the batch's outcome (the wallet actor sends itself a message).
pub type Done = Box<dyn FnOnce(Result<(), CommitError>) + Send>;

struct Job {
    batch: Batch,
    done: Done,
}

/// The handle wallet actors commit through.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::UnboundedSender<Job>,
    /// Wallets with a batch here: how many, and who waits for them to settle.
    pending: Arc<DashMap<WalletId, (usize, Arc<Notify>)>>,
}

/// A wallet's batch in the committer, until its outcome is known (or the job is dropped).
struct Pending {
    wallet_id: WalletId,
    pending: Arc<DashMap<WalletId, (usize, Arc<Notify>)>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((_, (_, settled))) = self.pending.remove_if_mut(&self.wallet_id, |_, e| {
            e.0 -= 1;
            e.0 == 0
        }) {
            settled.notify_waiters();
        }
    }
}

impl Committer {
    /// Starts the committer task: at most `writers` transactions at once (1 for SQLite,
    /// which has one writer anyway; a few for PostgreSQL, whose own group commit then
    /// merges their fsyncs).
    pub fn start(
        store: Arc<dyn WalletStore>,
        writers: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(store, queue, writers.max(1), timeout, metrics));
        Committer {
            jobs,
            pending: Arc::default(),
        }
    }

    /// Commits one wallet's batch, grouped with whatever else is waiting, and calls `done`
    /// with the outcome.
    pub fn commit(&self, batch: Batch, done: Done) {
        self.pending
            .entry(batch.wallet_id.clone())
            .or_insert_with(|| (0, Arc::new(Notify::new())))
            .0 += 1;
        let pending = Pending {
            wallet_id: batch.wallet_id.clone(),
            pending: self.pending.clone(),
        };
        // Settled before the actor hears: a fresh activation waiting in `settled` then
        // loads the outcome.
        let done: Done = Box::new(move |result| {
            drop(pending);
            done(result)
        });
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { batch, done }) {
            (job.done)(Err(CommitError::Unavailable(
                "the committer stopped".into(),
            )));
        }
    }
}

impl Committer {
    /// Returns once no batch of `wallet_id` is in this committer: a wallet actor that
    /// stopped (a crash) with a commit in flight is replaced only once that commit has
    /// landed or failed, or the new one would load the state before it.
    pub async fn settled(&self, wallet_id: &WalletId) {
        loop {
            let Some(settled) = self.pending.get(wallet_id).map(|e| e.1.clone()) else {
                return;
            };
            let notified = settled.notified();
            tokio::pin!(notified);
            // Registered before looking again, so that a wake-up in between is not missed
            // (the entry may have gone, or been replaced by a new batch's).
            notified.as_mut().enable();
            let same = self
                .pending
                .get(wallet_id)
                .is_some_and(|e| Arc::ptr_eq(&e.1, &settled));
            if !same {
                continue;
            }
            notified.await;
        }
    }
}

async fn run(
    store: Arc<dyn WalletStore>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    writers: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(writers));
    while let Some(first) = queue.recv().await {
        // Waiting for a free writer is what lets the queue fill up into a group.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let store = store.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.grouped(jobs.len());
            commit_group(&*store, jobs, timeout).await;
            drop(slot);
        });
    }
}

async fn commit_group(store: &dyn WalletStore, jobs: Vec<Job>, timeout: Duration) {
    let (batches, done): (Vec<Batch>, Vec<_>) = jobs.into_iter().map(|j| (j.batch, j.done)).unzip();
    let write = async {
        if let [batch] = batches.as_slice() {
            vec![store.commit(batch).await]
        } else {
            match store.commit_many(&batches).await {
                Ok(results) => results,
                // The transaction as a whole failed: no batch of it is known to be durable.
                Err(e) => vec![Err(CommitError::Unavailable(e.0)); batches.len()],
            }
        }
    };
    let results = match tokio::time::timeout(timeout, write).await {
        Ok(results) => results,
        Err(_) => {
            tracing::warn!(
                batches = batches.len(),
                ?timeout,
                "a group commit did not finish in time: its outcome is unknown"
            );
            let gone =
                CommitError::GivenUp(format!("the commit did not finish within {timeout:?}"));
            vec![Err(gone); batches.len()]
        }
    };
    for (done, result) in done.into_iter().zip(results) {
        done(result);
    }
}
