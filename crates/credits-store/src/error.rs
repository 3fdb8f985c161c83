//! The store's error types: what a caller can act on, and nothing about SQL dialects. The
//! store never retries on its own; whether a failed commit may be durable is the caller's
//! question (DESIGN "Group commit inside a ractor actor", step 4).

use sea_orm::{DbErr, SqlErr};

/// A failure of a store operation other than a fenced commit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached; the outcome of a write is unknown.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The URL names neither `sqlite://` nor `postgres://` (the URL itself is not echoed:
    /// it may carry a password).
    #[error("unsupported database URL scheme (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// A unique key is taken (an idempotency key, a payment reference, an id).
    #[error("duplicate key: {0}")]
    Duplicate(String),
    /// A stored value does not decode (a bad JSON payload or enum string).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The request asks for more than a named bound allows.
    #[error("{what} exceeds the bound of {limit}")]
    TooLarge { what: &'static str, limit: usize },
    /// A batch that breaks the store's contract (e.g. seqs not contiguous): a bug in the
    /// caller; nothing was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A pagination cursor that this store did not produce.
    #[error("invalid cursor")]
    InvalidCursor,
    /// A wallet was to open on its plan's old billing interval or credits: the plan
    /// changed meanwhile. Nothing was written; a retry reads the plan again.
    #[error("plan {0} changed meanwhile; retry")]
    PlanChanged(String),
    /// A catalogue lists the id of a custom plan (made with `upsertPlan`): taking it over
    /// would change the plan under the wallets on it and list it to every user. Nothing
    /// was written.
    #[error(
        "the catalogue lists plan {0}, which is a custom plan made with upsertPlan: give the catalogue's plan another id"
    )]
    CustomPlanInCatalogue(String),
    /// A catalogue would change the billing interval of a plan wallets are on (SPEC 5:
    /// never for a plan in use). Nothing was written.
    #[error("the catalogue changes the billing interval of plan {0}, which wallets are on")]
    IntervalInUse(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Duplicate`], so callers can tell
    /// "taken" (a definite refusal) from "the database failed" (outcome unknown).
    pub(crate) fn from_db(err: DbErr) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(what)) => StoreError::Duplicate(what),
            _ => StoreError::Db(err),
        }
    }
}

/// Why a fenced commit of one wallet's batch did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer moved the wallet's version first: nothing of the batch was written.
    /// The caller reloads the wallet and re-checks its operations.
    #[error(
        "wallet {wallet_id} was committed by another writer (expected version {expected_version})"
    )]
    Conflict {
        wallet_id: String,
        expected_version: i64,
    },
    /// The batch was decided on plans that changed meanwhile (an interval, or the credits
    /// of a reset or renewal by its instant): nothing was written. The caller reads the
    /// plans again, reloads the wallet and decides again.
    #[error("wallet {0}'s batch was decided on plans that changed")]
    PlanChanged(String),
    /// The wallet row does not exist.
    #[error("wallet {0} not found")]
    NotFound(String),
    /// Any other failure. [`StoreError::Duplicate`] is definite (nothing was written);
    /// [`StoreError::Db`] leaves the outcome unknown.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbErr> for CommitError {
    fn from(err: DbErr) -> Self {
        CommitError::Store(StoreError::from_db(err))
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}
