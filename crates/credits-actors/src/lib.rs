//! The actor layer: one ractor actor per active wallet serializes every operation and due
//! event of that wallet, commits them in groups, and publishes balance events once they are
//! durable. Callers go through `Directory`; they never touch a wallet's state directly.

pub mod clock;
pub mod committer;
pub mod directory;
pub mod events;
pub mod feed;
pub mod ledger;
pub mod pool;
pub mod sql;
pub mod store;
pub mod wallet;

pub use clock::{Clock, ManualClock};
pub use directory::{ActorConfig, Directory, Metrics, PlanBook};
pub use events::{BalanceEvent, EventKind, Subscription};
pub use feed::{ReviewChange, ReviewChanges};
pub use ledger::{Ledger, Receipt, ReservationView, ServiceError, ServiceResult, UsageInput};
pub use sql::SqlWallets;
pub use store::{
    Batch, CommitError, Due, Faults, Gate, Loaded, MemoryStore, Record, StoreError, WalletStore,
};
pub use wallet::{Applied, ExecError};
