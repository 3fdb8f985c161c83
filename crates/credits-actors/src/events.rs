//! Balance events as subscribers see them (SPEC 8): one per ledger record, in seq order,
//! after the record is durable; a subscription starts with a snapshot. Channels are bounded:
//! a subscriber that falls behind reads what it missed back from the store (or, far behind,
//! resyncs with a fresh snapshot); it never slows the wallet.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use credits_core::{Balance, Cause, Entry, WalletId};
use tokio::sync::broadcast;

/// Events a wallet's channel holds for slow subscribers before they must read back from the
/// store.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// Why a balance event was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The current state, first on every subscription and after a resync.
    Snapshot,
    Change(Cause),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceEvent {
    pub wallet_id: WalletId,
    pub seq: u64,
    pub kind: EventKind,
    pub balance: Balance,
    pub at: DateTime<Utc>,
}

impl BalanceEvent {
    /// The event of the durable record `entry`, with the balance right after it.
    pub fn change(wallet_id: WalletId, entry: &Entry, balance: Balance) -> BalanceEvent {
        BalanceEvent {
            wallet_id,
            seq: entry.seq,
            kind: EventKind::Change(entry.cause()),
            balance,
            at: entry.at,
        }
    }
}

/// A live subscription: the snapshot to send first, then every later event.
#[derive(Debug)]
pub struct Subscription {
    pub snapshot: BalanceEvent,
    pub events: broadcast::Receiver<Arc<BalanceEvent>>,
}
