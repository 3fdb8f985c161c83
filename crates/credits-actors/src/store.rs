//! What a wallet actor needs from durable storage, as a trait, plus an in-memory
//! implementation with fault injection for tests and simulations. The SQL store implements
//! the same trait. Implementations must make `commit` atomic and fenced: it applies only if
//! the wallet's version is still `expected_version`, and then bumps it by one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use credits_core::{Balance, Entry, LotOrigin, OnceFor, Wallet, WalletId};

/// One ledger record with the balance right after it (what a subscriber is sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub entry: Entry,
    pub balance: Balance,
}

/// A wallet as stored: its snapshot and the fencing version it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub wallet: Wallet,
    pub version: i64,
    /// A team pool's members version: spends are decided on member limits read at it.
    pub members_version: i64,
}

/// One wallet's records to commit atomically, with the state after them.
#[derive(Clone, Debug)]
pub struct Batch {
    pub wallet_id: WalletId,
    pub expected_version: i64,
    /// The durable state the records apply to.
    pub before: Wallet,
    pub wallet: Wallet,
    pub records: Vec<Record>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Another writer committed first (the version moved); nothing of this batch was written.
    #[error("fenced out: the wallet's version moved")]
    Conflict,
    /// Decided on plans that changed meanwhile (on another node, maybe); nothing of this
    /// batch was written: read the plans again, then decide again.
    #[error("fenced out: the batch was decided on plans that changed")]
    PlanChanged,
    /// The outcome is unknown: the batch may or may not be durable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Given up on while it may still be running (the commit timeout): the batch may
    /// become durable later, on any store.
    #[error("store unavailable: {0}")]
    GivenUp(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// Durable storage of wallets, as the actors use it.
#[async_trait::async_trait]
pub trait WalletStore: Send + Sync + 'static {
    /// Inserts a new wallet with its creation record (version 0).
    async fn create(&self, wallet: &Wallet, record: &Record) -> Result<(), CommitError>;
    async fn load(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError>;
    /// Moves the wallet's version on by one and loads it, atomically: a commit whose
    /// outcome its writer could not learn is either in what this returns or can no longer
    /// land (its fence fails). What a writer reloads after such a commit, so that it never
    /// decides again a call that landed after the reload read.
    async fn load_fenced(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError>;
    /// Whether other nodes may write the same wallets (PostgreSQL; a test's memory store
    /// shared by two directories). A node alone on its store (SQLite) is never behind it.
    fn several_nodes(&self) -> bool {
        true
    }
    /// The seq of the wallet's last durable record (`None`: no such wallet). The default
    /// loads the whole wallet; stores override it with a cheaper read.
    async fn seq(&self, id: &WalletId) -> Result<Option<u64>, StoreError> {
        Ok(self.load(id).await?.map(|l| l.wallet.seq))
    }
    /// The plans as stored, for a node whose plans may be behind an edit on another node
    /// (`None`: this store keeps no plans; the node's own are the only ones).
    async fn plans(&self) -> Result<Option<Vec<credits_core::Plan>>, StoreError> {
        Ok(None)
    }
    /// Fenced, atomic commit of one wallet's batch.
    async fn commit(&self, batch: &Batch) -> Result<(), CommitError>;
    /// Several wallets' batches (one per wallet) in one transaction, each fenced on its own:
    /// one result per batch, in order. `Err` means no batch is known to be durable. The
    /// default commits them one by one.
    async fn commit_many(
        &self,
        batches: &[Batch],
    ) -> Result<Vec<Result<(), CommitError>>, StoreError> {
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            results.push(self.commit(batch).await);
        }
        Ok(results)
    }
    /// Records with seq above `seq`, in order, at most `limit`.
    async fn records_after(
        &self,
        id: &WalletId,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// The record that consumed an idempotency key on this wallet.
    async fn find_key(&self, id: &WalletId, key: &str) -> Result<Option<Entry>, StoreError>;
    /// The wallet holding the durable lot for a payment or a review (SPEC 5, 7: one lot
    /// each, on any wallet).
    async fn lot_holder(&self, once: OnceFor<'_>) -> Result<Option<WalletId>, StoreError>;
    /// Wallets whose next reset, renewal or expiry is at or before `before`, as stored,
    /// soonest first (then by id), after `after` (the last of a previous page), at most
    /// `limit`.
    async fn due(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&Due>,
        limit: usize,
    ) -> Result<Vec<Due>, StoreError>;
}

/// A wallet's next due instant, as stored, and its id: the order of [`WalletStore::due`].
pub type Due = (chrono::DateTime<chrono::Utc>, WalletId);

#[derive(Debug)]
struct Stored {
    wallet: Wallet,
    version: i64,
    records: Vec<Record>,
    keys: HashMap<String, usize>,
}

/// Faults to inject, each counting down one per affected call.
#[derive(Debug, Default)]
pub struct Faults {
    /// Commits that fail before writing anything.
    pub fail_commits: AtomicU32,
    /// Commits that are written but answer with an error (a lost reply).
    pub lose_replies: AtomicU32,
    /// Loads that fail.
    pub fail_loads: AtomicU32,
    /// Microseconds every commit takes, as an fsync would.
    pub commit_delay_micros: AtomicU32,
    /// Held loads (a test's way to put another node's write between a commit and the
    /// reload after it).
    pub loads: Gate,
    /// Held commits (a test's way to decide calls while a commit is in flight).
    pub commits: Gate,
    /// Loads held after they have read (a test's way to put another node's write between
    /// a wallet's load and the actor it starts).
    pub loaded: Gate,
    /// Commits that answer with an error at once and land (fenced, as sent) right after
    /// the wallet's next load has read: a PostgreSQL COMMIT whose connection was lost,
    /// still running on the server while the writer reloads.
    pub land_late: AtomicU32,
    /// Commits that never answer (the committer gives up on them) and land, fenced as sent,
    /// at the start of the wallet's next commit: an SQLite COMMIT still running on its
    /// worker thread after its writer gave up. `hung` counts them as they start hanging.
    pub hang_then_land: AtomicU32,
    pub hung: AtomicU32,
    /// The store says no other node writes its wallets, as SQLite does.
    pub one_node: std::sync::atomic::AtomicBool,
}

/// Calls held until a test releases them, one per [`Gate::release`] notification.
#[derive(Debug, Default)]
pub struct Gate {
    /// Calls still to hold.
    pub hold: AtomicU32,
    /// Calls waiting now.
    pub held: AtomicU32,
    pub release: tokio::sync::Notify,
}

impl Gate {
    async fn pass(&self) {
        if take(&self.hold) {
            self.held.fetch_add(1, Ordering::SeqCst);
            self.release.notified().await;
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// An in-memory store: atomic and fenced like the real one, with injectable faults.
#[derive(Debug, Default)]
pub struct MemoryStore {
    wallets: Mutex<HashMap<WalletId, Stored>>,
    /// Commits answered already that land after the next load ([`Faults::land_late`]).
    late: Mutex<Vec<Batch>>,
    /// Commits given up on that land before the next commit ([`Faults::hang_then_land`]).
    hanging: Mutex<Vec<Batch>>,
    pub faults: Faults,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every record of a wallet (for checks in tests).
    pub fn ledger(&self, id: &WalletId) -> Vec<Entry> {
        let wallets = self.wallets.lock().unwrap();
        wallets
            .get(id)
            .map(|s| s.records.iter().map(|r| r.entry.clone()).collect())
            .unwrap_or_default()
    }

    /// The stored snapshot and every record, read together (a commit in flight lands
    /// before or after both), bypassing injected faults (for checks in tests).
    pub fn stored_with_ledger(&self, id: &WalletId) -> Option<(Loaded, Vec<Entry>)> {
        let wallets = self.wallets.lock().unwrap();
        wallets.get(id).map(|s| {
            let loaded = Loaded {
                wallet: s.wallet.clone(),
                version: s.version,
                members_version: 0,
            };
            (loaded, s.records.iter().map(|r| r.entry.clone()).collect())
        })
    }

    /// The stored snapshot and version, bypassing injected faults (for checks in tests).
    pub fn stored(&self, id: &WalletId) -> Option<Loaded> {
        let wallets = self.wallets.lock().unwrap();
        wallets.get(id).map(|s| Loaded {
            wallet: s.wallet.clone(),
            version: s.version,
            members_version: 0,
        })
    }

    pub fn version(&self, id: &WalletId) -> Option<i64> {
        self.wallets.lock().unwrap().get(id).map(|s| s.version)
    }
}

impl MemoryStore {
    async fn load_with(&self, id: &WalletId, fenced: bool) -> Result<Option<Loaded>, StoreError> {
        // Held first, so that a test can make a held load fail.
        self.faults.loads.pass().await;
        if take(&self.faults.fail_loads) {
            return Err(StoreError("injected load failure".into()));
        }
        let loaded = {
            let mut wallets = self.wallets.lock().unwrap();
            wallets.get_mut(id).map(|s| {
                if fenced {
                    s.version += 1;
                }
                Loaded {
                    wallet: s.wallet.clone(),
                    version: s.version,
                    members_version: 0,
                }
            })
        };
        // A commit whose writer was told it failed lands now, if its fence still holds.
        let late: Vec<Batch> = {
            let mut pending = self.late.lock().unwrap();
            let (mine, others) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|b| &b.wallet_id == id);
            *pending = others;
            mine
        };
        for batch in late {
            let _ = self.write(&batch);
        }
        self.faults.loaded.pass().await;
        Ok(loaded)
    }

    /// Writes a batch atomically behind its fence, like the SQL store's commit.
    fn write(&self, batch: &Batch) -> Result<(), CommitError> {
        let mut wallets = self.wallets.lock().unwrap();
        // Like the grants' primary key and unique payment reference: a lot is granted once,
        // and a payment or a review has one lot, on any wallet.
        for lot in batch.records.iter().filter_map(|r| r.entry.grant()) {
            let granted = wallets.get(&batch.wallet_id).is_some_and(|s| {
                s.records
                    .iter()
                    .any(|r| r.entry.grant().is_some_and(|l| l.id == lot.id))
            });
            let once = lot.origin.as_ref().map(LotOrigin::once_for);
            if granted || once.is_some_and(|once| wallets.values().any(|s| holds(s, once))) {
                return Err(CommitError::Conflict);
            }
        }
        let stored = wallets
            .get_mut(&batch.wallet_id)
            .ok_or(CommitError::Conflict)?;
        if stored.version != batch.expected_version {
            return Err(CommitError::Conflict);
        }
        // Like the unique index on (wallet, key): a key is consumed once.
        if batch
            .records
            .iter()
            .filter_map(|r| r.entry.idempotency_key())
            .any(|k| stored.keys.contains_key(k))
        {
            return Err(CommitError::Conflict);
        }
        for r in &batch.records {
            if let Some(k) = r.entry.idempotency_key() {
                stored.keys.insert(k.to_owned(), stored.records.len());
            }
            stored.records.push(r.clone());
        }
        stored.wallet = batch.wallet.clone();
        stored.version += 1;
        Ok(())
    }
}

/// Whether a stored record of `s` grants the lot for `once`.
fn holds(s: &Stored, once: OnceFor<'_>) -> bool {
    s.records.iter().any(|r| {
        r.entry
            .grant()
            .and_then(|l| l.origin.as_ref())
            .map(LotOrigin::once_for)
            == Some(once)
    })
}

#[async_trait::async_trait]
impl WalletStore for MemoryStore {
    async fn create(&self, wallet: &Wallet, record: &Record) -> Result<(), CommitError> {
        let mut wallets = self.wallets.lock().unwrap();
        if wallets.contains_key(&wallet.id) {
            return Err(CommitError::Conflict);
        }
        let stored = Stored {
            wallet: wallet.clone(),
            version: 0,
            records: vec![record.clone()],
            keys: HashMap::new(),
        };
        wallets.insert(wallet.id.clone(), stored);
        Ok(())
    }

    async fn load(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        self.load_with(id, false).await
    }

    async fn load_fenced(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        self.load_with(id, true).await
    }

    fn several_nodes(&self) -> bool {
        !self.faults.one_node.load(Ordering::SeqCst)
    }

    async fn seq(&self, id: &WalletId) -> Result<Option<u64>, StoreError> {
        Ok(self.wallets.lock().unwrap().get(id).map(|s| s.wallet.seq))
    }

    async fn commit(&self, batch: &Batch) -> Result<(), CommitError> {
        self.faults.commits.pass().await;
        let landing: Vec<Batch> = {
            let mut hanging = self.hanging.lock().unwrap();
            let (mine, others) = std::mem::take(&mut *hanging)
                .into_iter()
                .partition(|b| b.wallet_id == batch.wallet_id);
            *hanging = others;
            mine
        };
        for late in landing {
            // Its fence decides, as the database's would.
            let _ = self.write(&late);
        }
        if take(&self.faults.hang_then_land) {
            self.hanging.lock().unwrap().push(batch.clone());
            self.faults.hung.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        let delay = self.faults.commit_delay_micros.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(u64::from(delay))).await;
        }
        if take(&self.faults.fail_commits) {
            return Err(CommitError::Unavailable("injected commit failure".into()));
        }
        if take(&self.faults.land_late) {
            self.late.lock().unwrap().push(batch.clone());
            return Err(CommitError::Unavailable("injected lost connection".into()));
        }
        self.write(batch)?;
        if take(&self.faults.lose_replies) {
            return Err(CommitError::Unavailable("injected lost reply".into()));
        }
        Ok(())
    }

    async fn records_after(
        &self,
        id: &WalletId,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let wallets = self.wallets.lock().unwrap();
        Ok(wallets
            .get(id)
            .map(|s| {
                s.records
                    .iter()
                    .filter(|r| r.entry.seq > seq)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn find_key(&self, id: &WalletId, key: &str) -> Result<Option<Entry>, StoreError> {
        let wallets = self.wallets.lock().unwrap();
        Ok(wallets
            .get(id)
            .and_then(|s| s.keys.get(key).map(|&i| s.records[i].entry.clone())))
    }

    async fn lot_holder(&self, once: OnceFor<'_>) -> Result<Option<WalletId>, StoreError> {
        let wallets = self.wallets.lock().unwrap();
        Ok(wallets
            .values()
            .find(|s| holds(s, once))
            .map(|s| s.wallet.id.clone()))
    }

    async fn due(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&Due>,
        limit: usize,
    ) -> Result<Vec<Due>, StoreError> {
        let wallets = self.wallets.lock().unwrap();
        let mut due: Vec<Due> = wallets
            .values()
            .map(|s| (s.wallet.next_due(), s.wallet.id.clone()))
            .filter(|d| d.0 <= before && after.is_none_or(|a| d > a))
            .collect();
        due.sort();
        due.truncate(limit);
        Ok(due)
    }
}
