//! Live updates: balances (snapshot first, then every durable change in seq order; a
//! subscriber that falls behind gets a fresh snapshot instead of what it missed) and the
//! status of a review.

use async_graphql::{Context, ID, Subscription as GqlSubscription};
use credits_actors::{Ledger, Subscription as Live};
use credits_core::WalletId;
use credits_store::ReviewRow;
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::access::{ANY, RoleGuard, ledger, wallet_access};
use crate::error::ApiError;
use crate::objects::ReviewObject;
use crate::types::{BalanceCause, BalanceEvent};

/// Review changes buffered for slow subscribers.
pub const REVIEW_CHANNEL_CAPACITY: usize = 256;

/// Where resolved reviews are announced.
#[derive(Clone, Debug)]
pub struct ReviewHub(pub broadcast::Sender<ReviewRow>);

impl Default for ReviewHub {
    fn default() -> Self {
        ReviewHub(broadcast::Sender::new(REVIEW_CHANNEL_CAPACITY))
    }
}

pub fn review_changed(ctx: &Context<'_>, row: &ReviewRow) {
    if let Some(hub) = ctx.data_opt::<ReviewHub>() {
        let _ = hub.0.send(row.clone());
    }
}

fn snapshot(ledger: &Ledger, live: &Live) -> BalanceEvent {
    let mut e = BalanceEvent::from(&live.snapshot);
    e.cause = BalanceCause::Snapshot;
    // A snapshot is the state as of now by the server's clock (the page counts down from it).
    e.at = ledger.now().into();
    e
}

struct Feed {
    ledger: Ledger,
    wallet: WalletId,
    first: Option<BalanceEvent>,
    events: broadcast::Receiver<std::sync::Arc<credits_actors::BalanceEvent>>,
}

#[derive(Default)]
pub struct Subscription;

#[GqlSubscription]
impl Subscription {
    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn balance_changed(
        &self,
        ctx: &Context<'_>,
        wallet_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = BalanceEvent> + use<>> {
        let l = ledger(ctx).clone();
        let wallet = WalletId(wallet_id.0);
        let state = l
            .wallet(&wallet)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("wallet"))?;
        wallet_access(ctx, &state).await?;
        let live = l.subscribe(&wallet).await.map_err(ApiError::from)?;
        let feed = Feed {
            first: Some(snapshot(&l, &live)),
            events: live.events,
            ledger: l,
            wallet,
        };
        Ok(futures::stream::unfold(feed, |mut feed| async move {
            if let Some(first) = feed.first.take() {
                return Some((first, feed));
            }
            match feed.events.recv().await {
                Ok(e) => Some((BalanceEvent::from(&*e), feed)),
                // Fell behind, or the wallet's actor restarted: start again from a snapshot.
                Err(RecvError::Lagged(_) | RecvError::Closed) => {
                    let live = feed.ledger.subscribe(&feed.wallet).await.ok()?;
                    let first = snapshot(&feed.ledger, &live);
                    feed.events = live.events;
                    Some((first, feed))
                }
            }
        }))
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn review_updated(
        &self,
        ctx: &Context<'_>,
        review_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = ReviewObject> + use<>> {
        let row = ledger(ctx)
            .store()
            .review(&review_id.0)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("review"))?;
        crate::mutation::check_review_reader(ctx, &row)?;
        let rx = ctx
            .data_opt::<ReviewHub>()
            .cloned()
            .unwrap_or_default()
            .0
            .subscribe();
        let id = row.id.clone();
        let first = Some(row);
        Ok(futures::stream::unfold(
            (first, rx, id),
            |(mut first, mut rx, id)| async move {
                if let Some(row) = first.take() {
                    return Some((ReviewObject(row), (None, rx, id)));
                }
                loop {
                    match rx.recv().await {
                        Ok(row) if row.id == id => {
                            return Some((ReviewObject(row), (None, rx, id)));
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}
