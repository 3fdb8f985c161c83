//! Two nodes (two directories) on one store: a node that has heard of another node's
//! commit decides nothing on its older state, so it never refuses what it has not read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use credits_actors::{ActorConfig, Clock, Directory, MemoryStore};
use credits_core::testing::catalogue;
use credits_core::{NewWallet, Op, PlanId, ReservationId, ReserveOp, SettleOp, WalletId};

use crate::helpers::*;

/// Two nodes (directories) on one memory store, and a wallet created on A that B has
/// read as it is now.
async fn two_nodes(wallet: &str) -> (Arc<MemoryStore>, Directory, Directory, WalletId) {
    let (store, a, b, id) = two_nodes_b_unread(wallet).await;
    b.read(&id).await.unwrap();
    (store, a, b, id)
}

/// [`two_nodes`] with the wallet not active on B.
async fn two_nodes_b_unread(wallet: &str) -> (Arc<MemoryStore>, Directory, Directory, WalletId) {
    let store = Arc::new(MemoryStore::new());
    let clock = Clock::manual(at("2027-03-10T12:00:00Z"));
    let a = Directory::new(
        store.clone(),
        clock.clone(),
        catalogue(),
        ActorConfig::default(),
    );
    let b = Directory::new(store.clone(), clock, catalogue(), ActorConfig::default());
    let id = a
        .create(NewWallet {
            id: WalletId::from(wallet),
            owner_id: "owner".into(),
            pool: false,
            timezone: "UTC".parse().unwrap(),
            plan_id: PlanId::from("pro"),
            billing_anchor: None,
        })
        .await
        .unwrap()
        .id;
    (store, a, b, id)
}

/// A reservation `res_1` of 5 credits.
fn reserve_op() -> Op {
    Op::Reserve(ReserveOp {
        id: ReservationId::from("res_1"),
        key: "r1".into(),
        amount: cr("5"),
        ttl_seconds: 600,
        member: None,
    })
}

/// The settlement of `res_1` at 2 credits.
fn settle_op() -> SettleOp {
    settle("res_1", "2")
}

/// Regression (reliability suite, two nodes): a settle sent to node B right after node A
/// acknowledged the reservation was refused RESERVATION_NOT_ACTIVE when B had a commit in
/// flight, because B decided it on its speculative state although A's notice had arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_another_waits_for_the_reload_before_deciding() {
    // B holds the wallet as it is now; A then reserves on it.
    let (store, a, b, id) = two_nodes("wal_nodes").await;
    let reserved = a.execute(&id, reserve_op()).await.unwrap();

    // B is busy committing a call of its own, decided on its older state: the commit is
    // held in flight (found by review: a pause stood for it, which a loaded machine could
    // outlast).
    let commits = &store.faults.commits;
    commits.hold.store(1, Ordering::SeqCst);
    let busy = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.execute(&id, usage("u1", "1")).await })
    };
    assert!(eventually(|| commits.held.load(Ordering::SeqCst) == 1).await);
    // A's notice reaches B, then the settle of A's reservation; then B's commit lands.
    b.announce(&id, Some(reserved.entry.seq));
    let before = calls(&b);
    let settled = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.execute(&id, Op::Settle(settle_op())).await })
    };
    assert!(reached(&b, before + 1).await);
    commits.release.notify_one();
    let settled = settled.await.unwrap();
    assert!(settled.is_ok(), "{settled:?}");
    busy.await.unwrap().unwrap();
    // Created, reserved, then B's usage and the settlement: each once.
    let ledger = store.ledger(&id);
    assert_eq!(ledger.len(), 4, "{ledger:#?}");
    let w = b.read(&id).await.unwrap();
    assert_eq!(w.reserved(), cr("0"));
    // 520 − 1 (usage) − 2 (settled)
    assert_eq!(w.spendable(), cr("517"));
}

/// Regression (CI, concurrent review approvals on PostgreSQL): calls parked because a
/// notice named a seq inside the commit in flight were never decided once that commit
/// landed, and timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_parked_behind_a_notice_run_once_the_commit_lands() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_notice", "pro", "UTC").await;
    let call = |key: &str| {
        let (dir, id, key) = (app.dir.clone(), id.clone(), key.to_owned());
        tokio::spawn(async move { dir.execute(&id, usage(&key, "1")).await })
    };
    // A commits alone (seq 1); B and C queue behind it and commit together (seqs 2, 3).
    // Both commits are held until the test lets them go.
    let commits = &app.store.faults.commits;
    commits.hold.store(2, Ordering::SeqCst);
    let before = calls(&app.dir);
    let a = call("a");
    assert!(eventually(|| commits.held.load(Ordering::SeqCst) == 1).await);
    let (b, c) = (call("b"), call("c"));
    assert!(reached(&app.dir, before + 3).await);
    commits.release.notify_one();
    a.await.unwrap().unwrap();
    assert!(eventually(|| commits.held.load(Ordering::SeqCst) == 1).await);
    // A notice of seq 2 (this batch's own first record) arrives while it is in flight.
    app.dir.announce(&id, Some(2));
    let d = call("d");
    assert!(reached(&app.dir, before + 4).await);
    commits.release.notify_one();
    b.await.unwrap().unwrap();
    c.await.unwrap().unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(3), d)
        .await
        .expect("the parked call is decided once the commit lands")
        .unwrap()
        .unwrap();
    assert_eq!(applied.entry.seq, 4);
}

/// Found by review: when the reload after another node's notice failed, the calls parked
/// for it were decided on the state it was to replace, so a settle of the other node's
/// reservation was refused RESERVATION_NOT_ACTIVE, a definite answer the wallet had not
/// earned. They are UNAVAILABLE now, and the actor stops: the next call reads the other
/// node's record and settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_parked_for_a_failed_reload_are_unavailable_and_the_next_call_reloads() {
    let (store, a, b, id) = two_nodes("wal_retry").await;
    let reserved = a.execute(&id, reserve_op()).await.unwrap();

    // A's notice reaches B; B's reload is held, a settle parks behind it, then the reload
    // fails.
    let faults = &store.faults;
    faults.loads.hold.store(1, Ordering::SeqCst);
    b.announce(&id, Some(reserved.entry.seq));
    assert!(eventually(|| faults.loads.held.load(Ordering::SeqCst) == 1).await);
    let settle = settle_op();
    let before = calls(&b);
    let parked = {
        let (b, id, settle) = (b.clone(), id.clone(), settle.clone());
        tokio::spawn(async move { b.execute(&id, Op::Settle(settle)).await })
    };
    assert!(reached(&b, before + 1).await);
    faults.fail_loads.store(1, Ordering::SeqCst);
    faults.loads.release.notify_one();
    let refused = parked.await.unwrap();
    assert!(
        matches!(refused, Err(credits_actors::ExecError::Unavailable(_))),
        "{refused:?}"
    );
    // The next call activates B's wallet afresh, up to A's record; the settle succeeds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.read(&id).await.unwrap().seq < reserved.entry.seq {
        assert!(std::time::Instant::now() < deadline, "B never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.execute(&id, Op::Settle(settle)).await.unwrap();
    assert_eq!(b.read(&id).await.unwrap().reserved(), cr("0"));
}

/// Found by review: once the reload after another node's notice had failed, the actor
/// forgot the notice and decided the next calls on the state it knew to be stale, so a
/// settle of the other node's reservation was refused RESERVATION_NOT_ACTIVE (and
/// subscribers missed the other node's record) until a retry worked. The actor now stops
/// instead: the next call activates the wallet afresh from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_reload_failed_decides_nothing_on_the_stale_state() {
    let (store, a, b, id) = two_nodes("wal_stale").await;
    let reserved = a.execute(&id, reserve_op()).await.unwrap();
    let faults = &store.faults;
    let before = b.active_actor(&id);
    assert!(before.is_some());
    faults.fail_loads.store(1, Ordering::SeqCst);
    b.announce(&id, Some(reserved.entry.seq));
    assert!(eventually(|| faults.fail_loads.load(Ordering::SeqCst) == 0).await);
    // The failed reload has been handled: the actor has left. (Before the fix it stayed,
    // and retried the reload after 1 s.)
    assert!(eventually(|| b.active_actor(&id).is_none()).await);
    let settled = b.execute(&id, Op::Settle(settle_op())).await;
    assert!(settled.is_ok(), "{settled:?}");
    assert_eq!(b.read(&id).await.unwrap().reserved(), cr("0"));
}

/// Found by review: a commit notice that came while a wallet was being activated (its
/// actor not in the directory yet) was dropped. When the load had read before that
/// commit, the actor, and its subscribers, stayed behind until some later commit. The
/// notice is now kept for the actor and handed to it once it is in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_during_an_activation_reaches_the_actor() {
    let (store, a, b, id) = two_nodes_b_unread("wal_act").await;
    a.read(&id).await.unwrap();
    // B's activation reads the wallet, then waits; A commits a usage and B hears of it.
    store.faults.loaded.hold.store(1, Ordering::SeqCst);
    let subscribing = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.subscribe(&id).await })
    };
    assert!(eventually(|| store.faults.loaded.held.load(Ordering::SeqCst) == 1).await);
    let applied = a.execute(&id, usage("k1", "1")).await.unwrap();
    b.announce(&id, Some(applied.entry.seq));
    store.faults.loaded.release.notify_one();
    let mut sub = subscribing.await.unwrap().unwrap();
    // The load read before the commit. The actor reads what it missed: before the
    // subscriber's snapshot (a subscription waits for the actor's pending work), or after
    // it, as the event. A dropped notice would leave the subscriber behind for good.
    if sub.snapshot.seq < applied.entry.seq {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.events.recv())
            .await
            .expect("the missed commit reaches the subscriber")
            .unwrap();
        assert_eq!(event.seq, applied.entry.seq);
    } else {
        assert_eq!(sub.snapshot.seq, applied.entry.seq);
    }
    assert_eq!(b.read(&id).await.unwrap().seq, applied.entry.seq);
}

/// Found by review (Session 12, multi-node): a node refused a spend INSUFFICIENT_CREDITS on
/// its older state when another node's grant was durable but its notice had not arrived
/// yet. A refusal that rests on the wallet's state is now checked against the store's seq
/// first: behind it, the node reads what it missed and decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_decided_on_what_the_store_holds_not_on_a_stale_state() {
    let (store, a, b, id) = two_nodes("wal_refuse").await;
    // A grants 1,000 credits; its notice never reaches B.
    a.execute(&id, grant("grt_1", "1000", None)).await.unwrap();

    // 600 is more than the 520 B knows of, less than the 1,520 stored.
    let spent = b.execute(&id, usage("u1", "600")).await;
    assert!(spent.is_ok(), "{spent:?}");
    let w = b.read(&id).await.unwrap();
    assert_eq!(w.spendable(), cr("920"));
    assert_eq!(store.ledger(&id).len(), 3);

    // A refusal B has earned stays one, and changes nothing.
    let refused = b.execute(&id, usage("u2", "1000")).await;
    assert!(
        matches!(
            refused,
            Err(credits_actors::ExecError::Op(
                credits_core::OpError::InsufficientCredits { .. }
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(store.ledger(&id).len(), 3);
}
