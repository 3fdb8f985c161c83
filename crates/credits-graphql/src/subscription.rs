//! Live updates: balances (snapshot first, then every durable change in seq order; a
//! subscriber that falls behind reads what it missed from the store, or, more than
//! [`MAX_CATCH_UP`] records behind, gets a fresh snapshot instead) and the
//! status of a review.

use std::collections::VecDeque;
use std::sync::Arc;

use async_graphql::{Context, ID, Subscription as GqlSubscription};
use credits_actors::{EventKind, Ledger, ReviewChange, Subscription as Live};
use credits_core::WalletId;
use credits_store::ReviewRow;
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::access::{ANY, RoleGuard, ledger, principal, wallet_access};
use crate::error::ApiError;
use crate::objects::ReviewObject;
use crate::types::{BalanceCause, BalanceEvent};

/// Tells this node's review watchers that `row` changed (other nodes hear it from the
/// store's notice).
pub fn review_changed(ctx: &Context<'_>, row: &ReviewRow) {
    ledger(ctx).directory().reviews().announce(&row.id);
}

fn snapshot(ledger: &Ledger, live: &Live) -> BalanceEvent {
    let mut e = BalanceEvent::from(&live.snapshot);
    e.cause = BalanceCause::Snapshot;
    // A snapshot is the state as of now by the server's clock (the page counts down from it).
    e.at = ledger.now().into();
    e
}

/// How often a team member's right to a pool's events is read again while they stream,
/// when this node heard of no member change (a backstop: changes are heard at once).
pub const MEMBERSHIP_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

type Event = Arc<credits_actors::BalanceEvent>;

struct Feed {
    ledger: Ledger,
    wallet: WalletId,
    first: Option<BalanceEvent>,
    events: broadcast::Receiver<Event>,
    /// After the channel overflowed: the oldest event it still held, and the events before
    /// it read back from the store, a page at a time.
    held: Option<Event>,
    caught_up: VecDeque<Event>,
    seat: Option<Seat>,
    /// The seq and balance of the last event sent.
    sent: Option<(u64, credits_core::Balance)>,
    /// Subscriptions taken again in a row that brought nothing new.
    idle_restarts: u32,
}

/// Records a subscriber may be behind and still get every event, read back from the store
/// [`CATCH_UP_PAGE`] at a time; further behind, it gets a fresh SNAPSHOT (SPEC 8).
pub const MAX_CATCH_UP: u64 = 10_000;
const CATCH_UP_PAGE: usize = 64;
/// Catch-up reads the node runs at once. One that finds none free within
/// [`CATCH_UP_WAIT`] resyncs instead: a client that lets many subscriptions fall behind
/// (256 per socket) must not take the store's connections from the wallets' commits (found
/// by review), while a few subscribers falling behind together (one large commit) all
/// catch up.
pub const CATCH_UP_READS: usize = 2;
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
static CATCH_UPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CATCH_UP_READS);

/// Pause before subscribing again to a wallet whose actor stopped with nothing new, per such
/// restart in a row (at most [`MAX_RESTART_PAUSE`]): an actor that keeps stopping (a store
/// that refuses its commits) is not started again at once, each time.
const RESTART_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_RESTART_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// A USER streaming a team pool: their membership, checked when the stream began, is read
/// again before an event when this node heard of a member change since (`Pools::epoch`),
/// so a removed member gets no event once the removal is heard; and once
/// [`MEMBERSHIP_RECHECK`] has passed, in case a change was not heard.
struct Seat {
    team: String,
    user: String,
    checked: tokio::time::Instant,
    epoch: u64,
}

impl Feed {
    /// The next event: `Err` ends the stream.
    async fn next(&mut self) -> Result<BalanceEvent, ApiError> {
        let event = loop {
            if let Some(first) = self.first.take() {
                break first;
            }
            let next = match self.caught_up.pop_front() {
                Some(e) => Ok(e),
                None if self.held.is_some() => match self.catch_up().await {
                    Some(page) => {
                        self.caught_up = page;
                        continue;
                    }
                    // Too far behind to fill in: resync below.
                    None => Err(RecvError::Lagged(0)),
                },
                None => self.events.recv().await,
            };
            match next {
                Ok(e) => {
                    self.sent = Some((e.seq, e.balance.clone()));
                    break BalanceEvent::from(&*e);
                }
                // Fell behind: the channel's events follow the missed ones, read back from
                // the store (found by review: one commit of more records than the channel
                // holds sent every subscriber, keeping up or not, a SNAPSHOT instead).
                Err(RecvError::Lagged(n)) if n > 0 => {
                    self.held = loop {
                        match self.events.recv().await {
                            Ok(e) => break Some(e),
                            Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => break None,
                        }
                    };
                }
                // Too far behind, or the wallet's actor restarted: start again from a
                // snapshot.
                Err(e) => {
                    self.held = None;
                    self.caught_up.clear();
                    if matches!(e, RecvError::Closed) && self.idle_restarts > 0 {
                        let pause = RESTART_PAUSE * self.idle_restarts;
                        tokio::time::sleep(pause.min(MAX_RESTART_PAUSE)).await;
                    }
                    let mut live = self.ledger.subscribe(&self.wallet).await?;
                    std::mem::swap(&mut self.events, &mut live.events);
                    // A restart that brought nothing new is not sent again (found by review:
                    // a wallet whose commits kept failing sent the same SNAPSHOT every few
                    // seconds, and was started again at once each time).
                    let same = (live.snapshot.seq, &live.snapshot.balance);
                    if self.sent.as_ref().is_some_and(|(s, b)| (*s, b) == same) {
                        self.idle_restarts += 1;
                        continue;
                    }
                    self.idle_restarts = 0;
                    self.sent = Some((live.snapshot.seq, live.snapshot.balance.clone()));
                    metrics::counter!("credits_subscription_resyncs_total").increment(1);
                    break snapshot(&self.ledger, &live);
                }
            }
        };
        let pools = self.ledger.directory().pools();
        if let Some(seat) = &mut self.seat
            && (seat.epoch != pools.epoch() || seat.checked.elapsed() >= MEMBERSHIP_RECHECK)
        {
            let epoch = pools.epoch();
            let store = self.ledger.store();
            if store.member(&seat.team, &seat.user).await?.is_none() {
                return Err(ApiError::forbidden());
            }
            seat.checked = tokio::time::Instant::now();
            seat.epoch = epoch;
        }
        Ok(event)
    }

    /// The next events up to the held one (the held one last): the next page from the
    /// store, each seq one more than the last; `None` when the gap is too wide, the held
    /// event is a snapshot, every catch-up read stays taken, or the store does not answer
    /// with exactly those records.
    async fn catch_up(&mut self) -> Option<VecDeque<Event>> {
        let held = self.held.take()?;
        let sent = self.sent.as_ref()?.0;
        let gap = held.seq.checked_sub(sent)?.checked_sub(1)?;
        if held.kind == EventKind::Snapshot || gap > MAX_CATCH_UP {
            return None;
        }
        if gap == 0 {
            return Some(VecDeque::from([held]));
        }
        let page = (gap as usize).min(CATCH_UP_PAGE);
        // On a task of its own: this stream is polled only while its socket takes what it
        // is sent, and a permit handed to a wait nobody polls stayed taken for as long as
        // the socket was stuck (found by review).
        let (ledger, wallet) = (self.ledger.clone(), self.wallet.clone());
        let read = tokio::spawn(async move {
            let _read = tokio::time::timeout(CATCH_UP_WAIT, CATCH_UPS.acquire())
                .await
                .ok()?
                .ok()?;
            metrics::counter!("credits_subscription_catch_up_reads_total").increment(1);
            ledger.events_after(&wallet, sent, page).await.ok()
        });
        let read: VecDeque<Event> = read.await.ok()??.into_iter().map(Arc::new).collect();
        let contiguous = read.iter().zip(sent + 1..).all(|(e, seq)| e.seq == seq);
        if read.len() != page || !contiguous {
            return None;
        }
        self.held = Some(held);
        Some(read)
    }
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
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<BalanceEvent>> + use<>>
    {
        let l = ledger(ctx).clone();
        let wallet = WalletId(wallet_id.0);
        let state = l
            .wallet(&wallet)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("wallet"))?;
        // Read before the membership is checked: a change in between is then seen.
        let epoch = l.directory().pools().epoch();
        wallet_access(ctx, &state).await?;
        let seat = match principal(ctx)?.user() {
            Some(user) if state.pool => Some(Seat {
                team: state.owner_id.clone(),
                user: user.to_owned(),
                checked: tokio::time::Instant::now(),
                epoch,
            }),
            _ => None,
        };
        let live = l.subscribe(&wallet).await.map_err(ApiError::from)?;
        let feed = Feed {
            first: Some(snapshot(&l, &live)),
            held: None,
            caught_up: VecDeque::new(),
            sent: Some((live.snapshot.seq, live.snapshot.balance.clone())),
            idle_restarts: 0,
            events: live.events,
            ledger: l,
            wallet,
            seat,
        };
        // An error is sent once, then the stream ends.
        Ok(futures::stream::unfold(Some(feed), |feed| async move {
            let mut feed = feed?;
            match feed.next().await {
                Ok(event) => Some((Ok(event), Some(feed))),
                Err(e) => Some((Err(e.into()), None)),
            }
        }))
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn review_updated(
        &self,
        ctx: &Context<'_>,
        review_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ReviewObject>> + use<>>
    {
        // Subscribed before the row is read, so a resolution between the two is not missed
        // (it may then arrive twice: a row equal to the last one sent is skipped).
        let rx = ledger(ctx).directory().reviews().subscribe();
        let store = ledger(ctx).store().clone();
        let row = store
            .review(&review_id.0)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("review"))?;
        let team_admin = crate::mutation::review_reader(ctx, &row).await?;
        let row = ReviewObject::shown(row);
        let watch = ReviewWatch {
            rx,
            store,
            last: None,
            team_admin,
        };
        // A review that stays unreadable ends the stream with UNAVAILABLE (sent once): the
        // client subscribes again and gets its state first.
        Ok(futures::stream::unfold(
            (Some(row), Some(watch)),
            |(first, watch)| async move {
                let mut watch = watch?;
                let row = match first {
                    Some(row) => row,
                    None => match watch.next().await? {
                        Ok(row) => row,
                        Err(e) => return Some((Err(e.into()), (None, None))),
                    },
                };
                watch.last = Some(row.clone());
                Some((Ok(ReviewObject::new(row)), (None, Some(watch))))
            },
        ))
    }
}

/// How long a review watch waits before reading a review again after a failed read, and
/// how often it tries (a minute in all) before it ends the stream.
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(500);
const REREADS: u32 = 120;

/// One review's changes, each state sent once.
struct ReviewWatch {
    rx: broadcast::Receiver<ReviewChange>,
    store: credits_store::Store,
    last: Option<ReviewRow>,
    /// (team, user) when the watcher reads the review only as an admin of the pool's team:
    /// checked again before each change, so one removed or made a plain member stops
    /// hearing of it.
    team_admin: Option<(String, String)>,
}

impl ReviewWatch {
    /// The review as stored now (`None`: it is gone). A failing read is tried again rather
    /// than the change dropped (it may be the review's last), [`REREADS`] times in all.
    async fn read(&self, id: &str) -> Result<Option<ReviewRow>, credits_store::StoreError> {
        let mut tries = 1;
        loop {
            match self.store.review(id).await {
                Ok(row) => return Ok(row),
                Err(e) if tries == REREADS => return Err(e),
                Err(e) => {
                    if tries.is_power_of_two() {
                        tracing::warn!(review = %id, error = %e, tries, "reading a changed review failed");
                    }
                    tries += 1;
                    tokio::time::sleep(REREAD_AFTER).await;
                }
            }
        }
    }

    /// The review's next state unlike the last one sent; `None` when the hub closes or
    /// the review is gone, an error when it could not be read or the watcher may no
    /// longer read it.
    async fn next(&mut self) -> Option<Result<ReviewRow, ApiError>> {
        let id = self.last.as_ref()?.id.clone();
        loop {
            match self.rx.recv().await {
                Ok(ReviewChange::One(changed)) if changed != id => continue,
                // This review, any review (notices were lost), or fell behind the hub
                // shared by every review: read it again rather than lose its change.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
            let row = match self.read(&id).await {
                Ok(row) => ReviewObject::shown(row?),
                Err(e) => return Some(Err(e.into())),
            };
            if self.last.as_ref() != Some(&row) {
                if let Some((team, user)) = &self.team_admin {
                    match self.store.member(team, user).await {
                        Ok(Some(m)) if m.role == credits_store::MemberRole::Admin => {}
                        Ok(_) => return Some(Err(ApiError::forbidden())),
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                return Some(Ok(row));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use credits_store::{ReviewResolution, ReviewStatus, Store};

    use super::*;

    /// A watch of `last` as its reporter (no team admin to check again).
    fn watching(
        rx: broadcast::Receiver<ReviewChange>,
        store: &Store,
        last: ReviewRow,
    ) -> ReviewWatch {
        ReviewWatch {
            rx,
            store: store.clone(),
            last: Some(last),
            team_admin: None,
        }
    }

    fn review(id: &str) -> ReviewRow {
        ReviewRow {
            id: id.into(),
            wallet_id: "wal_r".into(),
            thread_id: format!("thread-{id}"),
            reporter_id: "alice".into(),
            task_description: "refactor".into(),
            model: None,
            preview_status: "OK".into(),
            thread_length: None,
            context_size: None,
            status: ReviewStatus::Submitted,
            findings_json: "{}".into(),
            suggested_refund_ucr: 1,
            credited_ucr: None,
            note: None,
            grant_id: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            resolved_at: None,
        }
    }

    /// Found by review: claiming an approval changes the stored row but nothing a caller
    /// sees (the review stays SUBMITTED), and the watch sent that unchanged state again.
    #[tokio::test]
    async fn a_claimed_approval_is_not_a_new_state() {
        let (store, path) = temp_store("claim").await;
        let submitted = review("rev_1");
        store.insert_review(&submitted).await.unwrap();
        let (hub, rx) = broadcast::channel(4);
        let mut watch = watching(rx, &store, submitted);
        assert!(
            store
                .claim_review_approval("rev_1", 1, "grt_1", Some("sorry"))
                .await
                .unwrap()
        );
        hub.send(ReviewChange::One("rev_1".into())).unwrap();
        drop(hub);
        assert!(watch.next().await.is_none());
        drop_store(store, &path).await;
    }

    fn rejection(id: &str) -> ReviewResolution {
        ReviewResolution {
            review_id: id.into(),
            status: ReviewStatus::Rejected,
            credited_ucr: None,
            note: Some("no".into()),
            grant_id: None,
            resolved_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    async fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "credits-graphql-{name}-{}-{}.db",
            std::process::id(),
            credits_actors::ledger::new_id("t")
        ));
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (store, path)
    }

    async fn drop_store(store: Store, path: &std::path::Path) {
        store.close().await.ok();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// A ledger on a manual clock over a temporary SQLite file, with no pricing tiers.
    struct Harness {
        dir: credits_actors::Directory,
        ledger: Ledger,
        store: Store,
        path: std::path::PathBuf,
        plugins: std::path::PathBuf,
    }

    impl Harness {
        async fn new(name: &str) -> Harness {
            use credits_actors::{ActorConfig, Clock, Directory, SqlWallets};
            let (store, path) = temp_store(name).await;
            let start = "2027-03-10T12:00:00Z".parse().unwrap();
            let dir = Directory::new(
                Arc::new(SqlWallets::new(store.clone())),
                Clock::manual(start),
                credits_core::testing::catalogue(),
                ActorConfig::default(),
            );
            let plugins = std::env::temp_dir().join(credits_actors::ledger::new_id("plugins"));
            std::fs::create_dir_all(&plugins).unwrap();
            let (pricing, _) =
                credits_pricing::PricingRegistry::open(&plugins, plugins.join("cache")).unwrap();
            let ledger = Ledger::new(dir.clone(), store.clone(), Arc::new(pricing));
            Harness {
                dir,
                ledger,
                store,
                path,
                plugins,
            }
        }

        async fn wallet(&self, id: &str) -> WalletId {
            let id = WalletId::from(id);
            let new = credits_core::NewWallet {
                id: id.clone(),
                owner_id: "alice".into(),
                pool: false,
                timezone: chrono_tz::UTC,
                plan_id: credits_core::PlanId::from("pro"),
                billing_anchor: None,
            };
            self.dir.create(new).await.unwrap();
            id
        }

        async fn grant(&self, id: &WalletId, key: &str) {
            use credits_core::{Credits, GrantId, GrantKind, GrantOp, Op};
            let grant = Op::Grant(GrantOp {
                id: GrantId(format!("grt_{key}")),
                key: Some(key.into()),
                amount: Credits::from_micro(1_000_000),
                kind: GrantKind::Promotion,
                reason: Some("r".into()),
                expires_at: None,
                origin: None,
            });
            self.dir.execute(id, grant).await.unwrap();
        }

        /// A feed of `id` that last sent `sent`, listening to `events`.
        fn feed(
            &self,
            id: &WalletId,
            sent: (u64, credits_core::Balance),
            events: broadcast::Receiver<Event>,
        ) -> Feed {
            Feed {
                first: None,
                held: None,
                caught_up: VecDeque::new(),
                sent: Some(sent),
                idle_restarts: 0,
                events,
                ledger: self.ledger.clone(),
                wallet: id.clone(),
                seat: None,
            }
        }

        async fn end(self) {
            self.dir.shutdown().await;
            drop_store(self.store, &self.path).await;
            let _ = std::fs::remove_dir_all(&self.plugins);
        }
    }

    /// Found by review: a wallet whose actor kept stopping (a store refusing its commits)
    /// sent its subscribers the same SNAPSHOT at each restart, and was started again at
    /// once each time. A restart that brings nothing new sends nothing; the stream goes on
    /// with the next record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_with_nothing_new_sends_no_second_snapshot() {
        let h = Harness::new("restart").await;
        let id = h.wallet("wal_restart").await;
        let live = h.ledger.subscribe(&id).await.unwrap();
        let sent = (live.snapshot.seq, live.snapshot.balance.clone());
        let first = snapshot(&h.ledger, &live);
        let mut feed = h.feed(&id, sent, live.events);
        feed.first = Some(first);
        assert_eq!(feed.next().await.unwrap().cause, BalanceCause::Snapshot);
        // Each restart is waited out (the second after a pause), then the feed listens to
        // the new actor.
        for _ in 0..2 {
            h.dir.crash(&id).await;
            let next = tokio::time::timeout(std::time::Duration::from_millis(1500), feed.next());
            assert!(next.await.is_err(), "nothing new to send");
        }
        assert_eq!(feed.idle_restarts, 2);
        h.grant(&id, "g").await;
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next());
        let event = next.await.expect("the grant").unwrap();
        assert_eq!(event.cause, BalanceCause::Grant);
        assert_eq!(event.seq.0, live.snapshot.seq + 1);
        h.end().await;
    }

    /// Found by review: one commit of more records than a wallet's channel holds sent every
    /// subscriber a SNAPSHOT in place of its events. A feed behind its channel reads what it
    /// missed back from the store, a page at a time, then takes what the channel still
    /// holds; it resyncs only when it cannot do that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_behind_its_channel_reads_what_it_missed_from_the_store() {
        const GRANTS: u64 = 150; // more than two pages
        let h = Harness::new("catch_up").await;
        let id = h.wallet("wal_catch_up").await;
        let live = h.ledger.subscribe(&id).await.unwrap();
        let start = (live.snapshot.seq, live.snapshot.balance.clone());
        for i in 0..GRANTS {
            h.grant(&id, &format!("g{i}")).await;
        }
        let events = h.ledger.events_after(&id, start.0, 1000).await.unwrap();
        assert_eq!(events.len() as u64, GRANTS);
        let last = events.last().unwrap().clone();
        // A channel of four, sent them all: it holds the last four.
        let behind = |sent: Vec<credits_actors::BalanceEvent>| {
            let (tx, rx) = broadcast::channel(4);
            for e in sent {
                tx.send(Arc::new(e)).unwrap();
            }
            (tx, h.feed(&id, start.clone(), rx))
        };
        let (_tx, mut feed) = behind(events.clone());
        for e in &events {
            let got = feed.next().await.unwrap();
            assert_eq!((got.seq.0, got.cause), (e.seq, BalanceCause::Grant));
        }
        let more = tokio::time::timeout(std::time::Duration::from_millis(200), feed.next());
        assert!(more.await.is_err(), "nothing after the last");

        // A resync instead, at the wallet's seq: when the oldest event still held is a
        // snapshot, when the gap is wider than MAX_CATCH_UP, when every catch-up read is
        // taken.
        let snapshot_kind = credits_actors::BalanceEvent {
            kind: EventKind::Snapshot,
            ..last.clone()
        };
        let too_far = credits_actors::BalanceEvent {
            seq: start.0 + MAX_CATCH_UP + 2,
            ..last.clone()
        };
        for held in [snapshot_kind, too_far] {
            // The first is pushed out; the held one is the oldest left.
            let sent = [&events[0], &held, &events[1], &events[2], &events[3]];
            let (_tx, mut feed) = behind(sent.into_iter().cloned().collect());
            let got = feed.next().await.unwrap();
            assert_eq!((got.seq.0, got.cause), (last.seq, BalanceCause::Snapshot));
        }
        let taken = CATCH_UPS.acquire_many(CATCH_UP_READS as u32).await.unwrap();
        let (_tx, mut feed) = behind(events.clone());
        let got = feed.next().await.unwrap();
        assert_eq!((got.seq.0, got.cause), (last.seq, BalanceCause::Snapshot));
        drop(taken);
        h.end().await;
    }

    /// A watcher that fell behind the shared hub reads its review again instead of
    /// losing the change; a row equal to the last one sent is not sent twice.
    #[tokio::test]
    async fn a_lagging_watch_reads_the_review_again_and_sends_each_state_once() {
        let (store, path) = temp_store("watch").await;
        let submitted = review("rev_1");
        store.insert_review(&submitted).await.unwrap();
        let (hub, rx) = broadcast::channel(2);
        let mut watch = watching(rx, &store, submitted);
        assert!(store.resolve_review(&rejection("rev_1")).await.unwrap());
        // Its own message is pushed out by three about other reviews.
        let rejected = store.review("rev_1").await.unwrap().unwrap();
        hub.send(ReviewChange::One("rev_1".into())).unwrap();
        for i in 0..3 {
            hub.send(ReviewChange::One(format!("rev_other{i}")))
                .unwrap();
        }
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next());
        assert_eq!(next.await.expect("not lost").unwrap().unwrap(), rejected);
        watch.last = Some(rejected.clone());
        // Announced again (as it may be when the row was read after subscribing, or by
        // this node's own notice), or any review changed: the same state is skipped.
        hub.send(ReviewChange::One("rev_1".into())).unwrap();
        hub.send(ReviewChange::Any).unwrap();
        drop(hub);
        assert!(watch.next().await.is_none());
        drop_store(store, &path).await;
    }

    /// Found by review: a failed read of the changed review was logged and the change
    /// dropped; a resolution is usually a review's last change, so its watcher waited
    /// for ever. The read is tried again until it succeeds.
    #[tokio::test]
    async fn a_failed_read_does_not_lose_the_change() {
        use sea_orm::ConnectionTrait;
        let (store, path) = temp_store("reread").await;
        let submitted = review("rev_1");
        store.insert_review(&submitted).await.unwrap();
        assert!(store.resolve_review(&rejection("rev_1")).await.unwrap());
        let rejected = store.review("rev_1").await.unwrap().unwrap();
        let (hub, rx) = broadcast::channel(4);
        let mut watch = watching(rx, &store, submitted);
        let sql = |q: &'static str| {
            let store = store.clone();
            async move { store.connection().execute_unprepared(q).await.unwrap() }
        };
        sql("ALTER TABLE reviews RENAME TO reviews_away").await;
        hub.send(ReviewChange::One("rev_1".into())).unwrap();
        let next = watch.next();
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut next)
                .await
                .is_err(),
            "answered while the review could not be read"
        );
        sql("ALTER TABLE reviews_away RENAME TO reviews").await;
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), next);
        assert_eq!(next.await.expect("not lost").unwrap().unwrap(), rejected);
        drop(hub);
        drop_store(store, &path).await;
    }
}
