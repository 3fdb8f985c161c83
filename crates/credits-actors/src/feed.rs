//! Balance events across nodes. Several `creditd` processes may hold the same wallet; each
//! commits behind the store's fence, and every commit on PostgreSQL is announced on a
//! notice channel (`credits_store::CommitListener`). This task hands each notice to the
//! local actor of the wallet, if there is one; the actor reloads what it missed and
//! publishes it to its subscribers in seq order. A change of a team member's limits is
//! announced the same way, and restarts that member's seat; a custom plan's change makes
//! every node read the plans again; a resolved review is passed to this node's review
//! watchers ([`ReviewChanges`]). A lost listening connection makes every active wallet
//! check itself, every seat read its limits, every review watcher read its review and the
//! node read the plans again. Every node sends a keepalive notice every 30 s; a listening
//! connection that hears nothing for 75 s (a network device dropped it without a word) is
//! taken for lost.

use std::sync::Arc;
use std::time::Duration;

use credits_core::WalletId;
use credits_store::{CommitListener, Notice, Store};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::directory::Directory;

/// Pause before listening again after the listening connection failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often each node sends a keepalive notice; a listener that hears nothing for
/// [`SILENT_FOR`] takes its connection for dead (a network device dropped it without a
/// word) and listens again.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT_FOR: Duration = Duration::from_secs(75);
/// Time a sent keepalive has to come back before its absence counts.
const PING_ARRIVES: Duration = Duration::from_secs(15);

/// Follows other nodes' commits into `dir` until the task is aborted. Does nothing on a
/// store without notices (SQLite: one process).
pub async fn follow(dir: Directory, store: Store) -> Option<JoinHandle<()>> {
    let first = match store.listen_commits().await {
        Ok(None) => return None,
        Ok(Some(l)) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "listening for other nodes' commits failed; retrying");
            None
        }
    };
    let sent = Arc::new(std::sync::Mutex::new(None));
    let pinger = AbortOnDrop(tokio::spawn(ping(store.clone(), sent.clone())));
    Some(tokio::spawn(async move {
        // Aborting the follower ends its pinger too.
        let _pinger = pinger;
        run(dir, store, first, sent).await
    }))
}

/// When this node's last keepalive was sent (committed to the channel).
type LastSent = Arc<std::sync::Mutex<Option<tokio::time::Instant>>>;

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn ping(store: Store, sent: LastSent) {
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match store.ping_listeners().await {
            Ok(()) => {
                *sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "sending the notice feed's keepalive failed"),
        }
    }
}

async fn run(dir: Directory, store: Store, mut listener: Option<CommitListener>, sent: LastSent) {
    // When the listener last heard anything (or started listening).
    let mut heard = tokio::time::Instant::now();
    loop {
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(RETRY_AFTER).await;
            listener = store.listen_commits().await.ok().flatten();
            heard = tokio::time::Instant::now();
            // Whatever was announced while nobody listened is unknown.
            dir.announce_all();
            dir.pools().forget_all();
            dir.reviews().announce_any();
            reload_plans(&dir).await;
            continue;
        };
        // Past the silence bound, looked at again each second until this node's own
        // keepalive has had its time to come back (found by review: waiting a whole bound
        // again took up to 150 s to notice a dead listener).
        let wait = SILENT_FOR
            .saturating_sub(heard.elapsed())
            .max(Duration::from_secs(1));
        let Ok(next) = tokio::time::timeout(wait, l.next()).await else {
            // Silent only counts when this node's own keepalive went out and did not come
            // back (a database too busy to send it says nothing about the listener).
            let unheard = sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| t.elapsed() >= PING_ARRIVES);
            if unheard {
                tracing::warn!(
                    silent_for = ?SILENT_FOR,
                    "the commit notice feed went silent; listening again"
                );
                listener = None;
            }
            continue;
        };
        heard = tokio::time::Instant::now();
        match next {
            Ok(Notice::Ping) => {}
            Ok(Notice::Committed(moved)) => {
                for (id, seq) in moved {
                    dir.announce(&WalletId(id), Some(seq));
                }
            }
            Ok(Notice::Member(team_id, user_id)) => dir.pools().forget(&team_id, &user_id),
            Ok(Notice::Plans) => reload_plans(&dir).await,
            Ok(Notice::Review(id)) => dir.reviews().announce(&id),
            Ok(Notice::Gap) => {
                dir.announce_all();
                dir.pools().forget_all();
                dir.reviews().announce_any();
                reload_plans(&dir).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lost the commit notice feed; listening again");
                listener = None;
            }
        }
    }
}

/// Reads the plans from the store into this node's plan book (another node changed one).
async fn reload_plans(dir: &Directory) {
    if let Err(e) = crate::ledger::reload_plans(dir).await {
        tracing::warn!(error = %e, "reading the plans again failed");
    }
}

/// Review changes buffered for slow watchers (a watcher that falls behind reads its review
/// again).
pub const REVIEW_CHANNEL_CAPACITY: usize = 256;

/// What changed: one review (its id), or any of them (notices were lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewChange {
    One(String),
    Any,
}

/// Where this node's review watchers (`reviewUpdated`) hear that a review changed, on
/// this node or, through the notice feed, on another.
#[derive(Clone, Debug)]
pub struct ReviewChanges(broadcast::Sender<ReviewChange>);

impl Default for ReviewChanges {
    fn default() -> Self {
        ReviewChanges(broadcast::Sender::new(REVIEW_CHANNEL_CAPACITY))
    }
}

impl ReviewChanges {
    pub fn announce(&self, review_id: &str) {
        let _ = self.0.send(ReviewChange::One(review_id.to_owned()));
    }

    pub fn announce_any(&self) {
        let _ = self.0.send(ReviewChange::Any);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ReviewChange> {
        self.0.subscribe()
    }
}
