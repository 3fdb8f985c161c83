//! The credits ledger core: exact amounts, the three kinds of credit a wallet holds, the
//! order they are spent in, and the calendar that resets and renews them. Pure code: no I/O,
//! no async, no clock of its own — time arrives as an argument, so every rule is tested
//! deterministically. Everything above (store, actors, GraphQL) builds on these types.

pub mod amount;
pub mod calendar;
pub mod ledger;
pub mod plan;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wallet;

pub use amount::{AmountError, Credits};
pub use calendar::BillingInterval;
pub use ledger::{
    Cause, Charge, Entry, EntryKind, Flows, GrantKind, ReleaseReason, ReplayError, Request, Source,
    Tokens, UsageRecord, replay,
};
pub use plan::{EarlierCredits, GrantId, Plan, PlanId, Plans, ReservationId, UsageId, WalletId};
pub use wallet::{
    Balance, GrantOp, Hold, KeyCheck, Lot, LotOrigin, Member, NewWallet, OnceFor, Op, OpError,
    RESERVATION_TTL_SECONDS, Reservation, ReserveOp, SettleOp, UsageOp, Wallet, check_key,
};
