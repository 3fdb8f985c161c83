//! The SQL store (credits-store) as the actors' `WalletStore`: core records in, rows out.

use credits_core::{Entry, OnceFor, Wallet, WalletId};
use credits_store::{
    CommitError as SqlCommitError, LedgerRecord, NewWallet, Store, StoreError as SqlError,
    WalletBatch,
};

use crate::store::{Batch, CommitError, Due, Loaded, Record, StoreError, WalletStore};

/// Wallet persistence on SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct SqlWallets {
    store: Store,
}

impl SqlWallets {
    pub fn new(store: Store) -> SqlWallets {
        SqlWallets { store }
    }
}

/// What callers are told when the database fails: its own text (SQL, constraint and
/// relation names, connection details) goes to the log only.
const SEE_THE_LOG: &str = "the database failed (the server log has the details)";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    tracing::warn!(error = %e, "store error");
    StoreError(SEE_THE_LOG.into())
}

fn commit_unavailable(e: impl std::fmt::Display) -> CommitError {
    tracing::warn!(error = %e, "store error in a commit");
    CommitError::Unavailable(SEE_THE_LOG.into())
}

fn record(r: &LedgerRecord) -> Result<Record, StoreError> {
    let entry = r.entry().map_err(unavailable)?;
    let balance = r.balance().map_err(unavailable)?;
    Ok(Record { entry, balance })
}

fn rows(batch: &Batch) -> Result<WalletBatch, CommitError> {
    let entries: Vec<Entry> = batch.records.iter().map(|r| r.entry.clone()).collect();
    WalletBatch::from_core(
        &batch.before,
        batch.expected_version,
        &entries,
        &batch.wallet,
    )
    .map_err(commit_unavailable)
}

fn commit_error(e: SqlCommitError) -> CommitError {
    match e {
        SqlCommitError::Conflict { .. } | SqlCommitError::NotFound(_) => CommitError::Conflict,
        SqlCommitError::PlanChanged(_) => CommitError::PlanChanged,
        // A unique key taken by another writer is definite: nothing was written.
        SqlCommitError::Store(SqlError::Duplicate(_)) => CommitError::Conflict,
        other => commit_unavailable(other),
    }
}

fn loaded(
    row: Result<Option<credits_store::StoredWallet>, SqlError>,
) -> Result<Option<Loaded>, StoreError> {
    let Some(row) = row.map_err(unavailable)? else {
        return Ok(None);
    };
    Ok(Some(Loaded {
        wallet: row.state().map_err(unavailable)?,
        version: row.version,
        members_version: row.members_version,
    }))
}

#[async_trait::async_trait]
impl WalletStore for SqlWallets {
    async fn create(&self, wallet: &Wallet, record: &Record) -> Result<(), CommitError> {
        let row =
            NewWallet::from_core(wallet, &record.entry, None, None).map_err(commit_unavailable)?;
        match self.store.create_wallet(&row).await {
            Ok(credits_store::Created::New) => Ok(()),
            Ok(credits_store::Created::Existing { .. }) | Err(SqlError::Duplicate(_)) => {
                Err(CommitError::Conflict)
            }
            Err(e) => Err(commit_unavailable(e)),
        }
    }

    async fn load(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        loaded(self.store.load_wallet(&id.0).await)
    }

    async fn load_fenced(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        loaded(self.store.fence_and_load_wallet(&id.0).await)
    }

    fn several_nodes(&self) -> bool {
        self.store.backend() == credits_store::Backend::Postgres
    }

    async fn plans(&self) -> Result<Option<Vec<credits_core::Plan>>, StoreError> {
        crate::ledger::stored_plans(&self.store)
            .await
            .map(Some)
            .map_err(unavailable)
    }

    async fn seq(&self, id: &WalletId) -> Result<Option<u64>, StoreError> {
        self.store.wallet_seq(&id.0).await.map_err(unavailable)
    }

    async fn commit(&self, batch: &Batch) -> Result<(), CommitError> {
        self.store
            .commit(&rows(batch)?)
            .await
            .map(|_| ())
            .map_err(commit_error)
    }

    async fn commit_many(
        &self,
        batches: &[Batch],
    ) -> Result<Vec<Result<(), CommitError>>, StoreError> {
        // A batch that does not convert (a bug) fails alone; the others still commit.
        let mut results: Vec<Result<(), CommitError>> = Vec::with_capacity(batches.len());
        let mut converted = Vec::with_capacity(batches.len());
        for batch in batches {
            match rows(batch) {
                Ok(r) => {
                    converted.push(r);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut committed = self
            .store
            .commit_many(&converted)
            .await
            .map_err(unavailable)?
            .into_iter();
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            if let Some(outcome) = committed.next() {
                *result = outcome.map(|_| ()).map_err(commit_error);
            }
        }
        Ok(results)
    }

    async fn records_after(
        &self,
        id: &WalletId,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let limit = limit.min(credits_store::MAX_LIST);
        self.store
            .events_after(&id.0, seq, limit)
            .await
            .map_err(unavailable)?
            .iter()
            .map(record)
            .collect()
    }

    async fn find_key(&self, id: &WalletId, key: &str) -> Result<Option<Entry>, StoreError> {
        match self
            .store
            .entry_by_key(&id.0, key)
            .await
            .map_err(unavailable)?
        {
            Some(r) => Ok(Some(r.entry().map_err(unavailable)?)),
            None => Ok(None),
        }
    }

    async fn lot_holder(&self, once: OnceFor<'_>) -> Result<Option<WalletId>, StoreError> {
        let row = match once {
            OnceFor::Payment(reference) => self.store.grant_by_payment_reference(reference).await,
            OnceFor::Review(review) => self.store.grant_by_review(review).await,
        };
        Ok(row.map_err(unavailable)?.map(|row| WalletId(row.wallet_id)))
    }

    async fn due(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&Due>,
        limit: usize,
    ) -> Result<Vec<Due>, StoreError> {
        let after = after.map(|(at, id)| (*at, id.0.as_str()));
        let due = self
            .store
            .wallets_due(before, after, limit)
            .await
            .map_err(unavailable)?;
        Ok(due.into_iter().map(|(id, at)| (at, WalletId(id))).collect())
    }
}
