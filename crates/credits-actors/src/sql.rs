//! The SQL store (credits-store) as the actors' `WalletStore`: core records in, rows out.

use credits_core::{Balance, Entry, Wallet, WalletId};
use credits_store::{
    CommitError as SqlCommitError, LedgerRecord, NewWallet, Store, StoreError as SqlError,
    WalletBatch,
};

use crate::store::{Batch, CommitError, Loaded, Record, StoreError, WalletStore};

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

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn record(r: &LedgerRecord) -> Result<Record, StoreError> {
    let entry = r.entry().map_err(unavailable)?;
    let balance: Balance = serde_json::from_str(&r.balance_json).map_err(unavailable)?;
    Ok(Record { entry, balance })
}

fn commit_error(e: SqlCommitError) -> CommitError {
    match e {
        SqlCommitError::Conflict { .. } | SqlCommitError::NotFound(_) => CommitError::Conflict,
        // A unique key taken by another writer is definite: nothing was written.
        SqlCommitError::Store(SqlError::Duplicate(_)) => CommitError::Conflict,
        other => CommitError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl WalletStore for SqlWallets {
    async fn create(&self, wallet: &Wallet, record: &Record) -> Result<(), CommitError> {
        let row = NewWallet::from_core(wallet, &record.entry, None, None)
            .map_err(|e| CommitError::Unavailable(e.to_string()))?;
        match self.store.create_wallet(&row).await {
            Ok(credits_store::Created::New) => Ok(()),
            Ok(credits_store::Created::Existing { .. }) | Err(SqlError::Duplicate(_)) => {
                Err(CommitError::Conflict)
            }
            Err(e) => Err(CommitError::Unavailable(e.to_string())),
        }
    }

    async fn load(&self, id: &WalletId) -> Result<Option<Loaded>, StoreError> {
        let loaded = self.store.load_state(&id.0).await.map_err(unavailable)?;
        Ok(loaded.map(|(wallet, version)| Loaded { wallet, version }))
    }

    async fn commit(&self, batch: &Batch) -> Result<(), CommitError> {
        let entries: Vec<Entry> = batch.records.iter().map(|r| r.entry.clone()).collect();
        let rows = WalletBatch::from_core(
            &batch.before,
            batch.expected_version,
            &entries,
            &batch.wallet,
        )
        .map_err(|e| CommitError::Unavailable(e.to_string()))?;
        self.store
            .commit(&rows)
            .await
            .map(|_| ())
            .map_err(commit_error)
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
}
