use std::collections::HashSet;

use credits_actors::ExecError;
use credits_core::{Credits, OpError, replay};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_debits_on_one_wallet_are_exact_and_grouped() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_hot", "max", "UTC").await;
    app.store
        .faults
        .commit_delay_micros
        .store(1000, std::sync::atomic::Ordering::Relaxed);
    app.dir
        .execute(&id, grant("big", "10000", None))
        .await
        .unwrap();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let dir = app.dir.clone();
            let id = id.clone();
            tokio::spawn(async move { dir.execute(&id, usage(&format!("k{i}"), "1.5")).await })
        })
        .collect();
    let mut seqs = HashSet::new();
    for c in calls {
        let applied = c.await.unwrap().unwrap();
        assert!(!applied.replayed);
        assert!(
            seqs.insert(applied.entry.seq),
            "each reply has its own record"
        );
    }
    let ledger = app.ledger(&id);
    let wallet = app.dir.read(&id).await.unwrap();
    // 50 daily + 2000 subscription + 10000 bonus − 1000 × 1.5
    assert_eq!(wallet.spendable(), cr("10550"));
    assert_eq!(replay(&ledger).unwrap().spendable(), wallet.spendable());
    assert_eq!(
        replay(&ledger).unwrap(),
        app.store.stored(&id).unwrap().wallet,
        "the ledger replays to the stored state"
    );
    for s in seqs {
        assert_eq!(ledger[s as usize].seq, s, "every reply matches the ledger");
    }
    let m = app.dir.metrics();
    let (commits, records) = (
        m.commits.load(std::sync::atomic::Ordering::Relaxed),
        m.records.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(records, 1001);
    assert!(
        commits < records,
        "concurrent calls share commits: {commits} commits for {records} records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_debits_across_a_hundred_wallets() {
    let app = app_at("2027-03-10T12:00:00Z");
    let mut ids = Vec::new();
    for w in 0..100 {
        ids.push(app.wallet(&format!("wal_{w}"), "pro", "Europe/Paris").await);
    }
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let dir = app.dir.clone();
            let id = ids[i % 100].clone();
            tokio::spawn(async move { dir.execute(&id, usage(&format!("k{i}"), "2")).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    for id in &ids {
        let w = app.dir.read(id).await.unwrap();
        assert_eq!(w.spendable(), cr("500"), "520 − 10 × 2");
        assert_eq!(replay(&app.ledger(id)).unwrap().spendable(), cr("500"));
        assert_eq!(
            replay(&app.ledger(id)).unwrap(),
            app.store.stored(id).unwrap().wallet
        );
        assert!(w.is_consistent());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_balance_is_spent_under_contention() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_500", "free", "UTC").await;
    app.dir.execute(&id, grant("g", "495", None)).await.unwrap();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let dir = app.dir.clone();
            let id = id.clone();
            tokio::spawn(async move { dir.execute(&id, usage(&format!("k{i}"), "1")).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ExecError::Op(OpError::InsufficientCredits { .. })) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, refused), (500, 500));
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), Credits::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_from_fifty_concurrent_callers_applies_once() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_k", "pro", "UTC").await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let dir = app.dir.clone();
            let id = id.clone();
            tokio::spawn(async move { dir.execute(&id, usage("same-key", "3")).await.unwrap() })
        })
        .collect();
    let mut receipts = Vec::new();
    for c in calls {
        receipts.push(c.await.unwrap());
    }
    assert_eq!(receipts.iter().filter(|r| !r.replayed).count(), 1);
    assert!(receipts.iter().all(|r| r.entry == receipts[0].entry));
    assert_eq!(
        app.ledger(&id)
            .iter()
            .filter(|e| e.idempotency_key() == Some("same-key"))
            .count(),
        1
    );
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("517"));
}

/// Found by review: an actor's idle time ran from the end of its last write, so a wallet
/// read steadily (a dashboard, a platform checking balances) left memory every
/// `idle_after` and was loaded again. Any call now starts the idle time again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_read_steadily_stays_active() {
    // Read every 100 ms for 4.5 s, three idle times: with room for a loaded machine's
    // pauses between reads (found by review: a 300 ms idle time left too little).
    let app = app_idle_after(std::time::Duration::from_millis(1500));
    let id = app.wallet("wal_a", "pro", "UTC").await;
    app.dir.execute(&id, usage("u1", "1")).await.unwrap();
    for _ in 0..45 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        app.dir.read(&id).await.unwrap();
    }
    let activations = || {
        app.dir
            .metrics()
            .activations
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(activations(), 1, "read every 100 ms, idle after 1.5 s");
    assert!(
        eventually(|| app.dir.active_wallets() == 0).await,
        "once nobody calls, it leaves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_activations_make_one_actor_and_idle_actors_passivate() {
    let app = app_idle_after(std::time::Duration::from_millis(300));
    let id = app.wallet("wal_a", "pro", "UTC").await;
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let dir = app.dir.clone();
            let id = id.clone();
            tokio::spawn(async move { dir.read(&id).await.unwrap() })
        })
        .collect();
    for r in reads {
        r.await.unwrap();
    }
    assert_eq!(
        app.dir
            .metrics()
            .activations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(app.dir.active_wallets(), 1);
    assert!(
        eventually(|| app.dir.active_wallets() == 0).await,
        "an idle wallet leaves memory"
    );
    // Activating again finds the same durable state.
    app.dir.execute(&id, usage("after", "1")).await.unwrap();
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("519"));
    assert_eq!(
        app.dir
            .metrics()
            .activations
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // A watched wallet stays while watched, and leaves once its last subscriber has gone,
    // even though nothing else happens to it.
    let sub = app.dir.subscribe(&id).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(app.dir.active_wallets(), 1, "a watched wallet stays active");
    drop(sub);
    assert!(
        eventually(|| app.dir.active_wallets() == 0).await,
        "the wallet leaves once nobody watches"
    );
}

/// A call, a read or a subscription queued behind the actor's decision to passivate is
/// answered by a fresh activation, not dropped: every idle check here finds the wallet
/// idle (zero `idle_after`, nothing watching) and stops it with the request already in its
/// mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_passivation_are_answered() {
    let app = app_idle_after(std::time::Duration::ZERO);
    let id = app.wallet("wal_a", "pro", "UTC").await;
    for n in 0..50 {
        // One µcr spent per round.
        let left = credits_core::Credits::from_micro(520_000_000 - n);
        app.dir.read(&id).await.unwrap();
        app.dir.check_idle(&id);
        assert_eq!(app.dir.read(&id).await.unwrap().spendable(), left);
        app.dir.check_idle(&id);
        let sub = app.dir.subscribe(&id).await.unwrap();
        assert_eq!(sub.snapshot.balance.total, left);
        drop(sub);
        app.dir.read(&id).await.unwrap();
        app.dir.check_idle(&id);
        let key = format!("u{n}");
        app.dir.execute(&id, usage(&key, "0.000001")).await.unwrap();
    }
}

#[tokio::test]
async fn unknown_wallet_is_not_found() {
    let app = app_at("2027-03-10T12:00:00Z");
    let err = app
        .dir
        .execute(&credits_core::WalletId::from("wal_nope"), usage("k", "1"))
        .await
        .unwrap_err();
    assert_eq!(err, ExecError::NotFound);
    assert_eq!(app.dir.active_wallets(), 0);
}

/// Found by review (Session 14): a subscriber waits (one message to the actor) until what
/// fell due is durable, and that wait took one of the wallet's places for calls. A burst of
/// subscriptions on a busy wallet made its calls UNAVAILABLE ("overloaded").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_waiting_take_no_place_of_calls() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::Ordering::SeqCst;

    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_subs", "pro", "UTC").await;
    app.dir.read(&id).await.unwrap();
    let commits = &app.store.faults.commits;
    commits.hold.store(1, SeqCst);
    let first = app.spawn_execute(&id, usage("k0", "1"));
    assert!(eventually(|| commits.held.load(SeqCst) == 1).await);
    // More subscribers than a wallet has places for calls, each waiting for the commit.
    type Subscribing = Pin<Box<dyn Future<Output = ()> + Send>>;
    let mut subscribing: Vec<Subscribing> = (0..credits_actors::wallet::MAX_QUEUED_OPERATIONS + 10)
        .map(|_| {
            let (dir, id) = (app.dir.clone(), id.clone());
            Box::pin(async move {
                dir.subscribe(&id).await.unwrap();
            }) as Subscribing
        })
        .collect();
    // Polled once each: every one has sent its message to the actor.
    for s in &mut subscribing {
        assert!(futures_poll_once(s.as_mut()).await.is_none());
    }
    // A call after them, sent (polled once) before the commit is released.
    let mut second = Box::pin({
        let (dir, id) = (app.dir.clone(), id.clone());
        async move { dir.execute(&id, usage("k1", "1")).await }
    });
    assert!(futures_poll_once(second.as_mut()).await.is_none());
    // Answered after all of them are in the actor's queue.
    app.dir.read(&id).await.unwrap();
    commits.release.notify_one();
    first.await.unwrap().unwrap();
    second
        .await
        .expect("a call is not shed for waiting subscribers");
    for s in subscribing {
        s.await;
    }
}

/// Polls a future once (so that a call sends its message); its output if it is ready.
async fn futures_poll_once<F: std::future::Future + ?Sized>(
    mut f: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
