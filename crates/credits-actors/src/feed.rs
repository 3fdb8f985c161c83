//! Balance events across nodes. Several `creditd` processes may hold the same wallet; each
//! commits behind the store's fence, and every commit on PostgreSQL is announced on a
//! notice channel (`credits_store::CommitListener`). This task hands each notice to the
//! local actor of the wallet, if there is one; the actor reloads what it missed and
//! publishes it to its subscribers in seq order. A change of a team member's limits is
//! announced the same way, and restarts that member's seat. A lost listening connection
//! makes every active wallet check itself and every seat read its limits again.

use std::time::Duration;

use credits_core::WalletId;
use credits_store::{CommitListener, Notice, Store};
use tokio::task::JoinHandle;

use crate::directory::Directory;

/// Pause before listening again after the listening connection failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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
    Some(tokio::spawn(run(dir, store, first)))
}

async fn run(dir: Directory, store: Store, mut listener: Option<CommitListener>) {
    loop {
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(RETRY_AFTER).await;
            listener = store.listen_commits().await.ok().flatten();
            // Whatever was announced while nobody listened is unknown.
            dir.announce_all();
            dir.pools().forget_all();
            continue;
        };
        match l.next().await {
            Ok(Notice::Committed(moved)) => {
                for (id, seq) in moved {
                    dir.announce(&WalletId(id), Some(seq));
                }
            }
            Ok(Notice::Member(team_id, user_id)) => dir.pools().forget(&team_id, &user_id),
            Ok(Notice::Gap) => {
                dir.announce_all();
                dir.pools().forget_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, "lost the commit notice feed; listening again");
                listener = None;
            }
        }
    }
}
