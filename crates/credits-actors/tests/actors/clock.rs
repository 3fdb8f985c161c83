use chrono::Duration;
use credits_actors::{ActorConfig, Clock, EventKind};
use credits_core::{Cause, replay};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wallet_publishes_each_due_event_at_its_instant() {
    let app = app_at("2027-03-31T20:00:00Z");
    let id = app.wallet("wal_t", "pro", "UTC").await;
    app.dir
        .execute(&id, grant("g", "7", Some("2027-04-01T06:00:00Z")))
        .await
        .unwrap();
    let mut sub = app.dir.subscribe(&id).await.unwrap();
    assert_eq!(sub.snapshot.kind, EventKind::Snapshot);
    assert_eq!(sub.snapshot.seq, 1);

    // Midnight, then the grant's expiry at 06:00.
    app.dir.advance_clock(Duration::hours(12)).await.unwrap();
    let e1 = sub
        .events
        .try_recv()
        .expect("reset published by the time advance returns");
    assert_eq!(
        (e1.seq, e1.kind, e1.at),
        (
            2,
            EventKind::Change(Cause::DailyReset),
            at("2027-04-01T00:00:00Z")
        )
    );
    let e2 = sub.events.try_recv().unwrap();
    assert_eq!(
        (e2.seq, e2.kind, e2.at),
        (
            3,
            EventKind::Change(Cause::Expiry),
            at("2027-04-01T06:00:00Z")
        )
    );
    assert!(sub.events.try_recv().is_err());

    // The renewal on Apr 31 → clamped... the anchor is Mar 31 20:00, so Apr 30 20:00.
    app.dir.advance_clock(Duration::days(30)).await.unwrap();
    let mut causes = Vec::new();
    while let Ok(e) = sub.events.try_recv() {
        causes.push((e.kind, e.at));
    }
    assert!(
        causes.contains(&(
            EventKind::Change(Cause::Renewal),
            at("2027-04-30T20:00:00Z")
        )),
        "{causes:?}"
    );
    assert_eq!(
        causes
            .iter()
            .filter(|(k, _)| *k == EventKind::Change(Cause::DailyReset))
            .count(),
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wallet_ends_in_the_state_of_one_touched_every_minute() {
    let idle = app_at("2027-03-31T20:00:00Z");
    let busy = app_at("2027-03-31T20:00:00Z");
    for app in [&idle, &busy] {
        let id = app.wallet("wal_x", "pro", "Asia/Kolkata").await;
        app.dir
            .execute(&id, grant("g", "7", Some("2027-04-02T06:00:00Z")))
            .await
            .unwrap();
    }
    let id = credits_core::WalletId::from("wal_x");
    idle.dir.advance_clock(Duration::hours(60)).await.unwrap();
    for _ in 0..60 * 60 {
        busy.dir.advance_clock(Duration::minutes(1)).await.unwrap();
    }
    let (a, b) = (
        idle.dir.read(&id).await.unwrap(),
        busy.dir.read(&id).await.unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(idle.ledger(&id), busy.ledger(&id));
    assert_eq!(
        replay(&idle.ledger(&id)).unwrap().spendable(),
        a.spendable()
    );
}

/// Found by review: a passivated wallet recorded what fell due only when it was next used,
/// so `advanceClock` returned before its reset, renewal or reservation expiry was
/// committed (SPEC 9), and the reservation's row stayed ACTIVE. The directory now finds
/// such wallets in the store and brings them up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_the_clock_records_due_events_of_passivated_wallets() {
    let app = app_idle_after(std::time::Duration::from_millis(20));
    let ids = [
        app.wallet("wal_p1", "pro", "UTC").await,
        app.wallet("wal_p2", "pro", "Asia/Tokyo").await,
    ];
    for id in &ids {
        app.dir
            .execute(id, usage(&format!("{}-k", id.0), "5"))
            .await
            .unwrap();
    }
    assert!(eventually(|| ids.iter().all(|id| app.dir.active_actor(id).is_none())).await);
    // Past midnight in both zones (Tokyo: 15:00Z; UTC: 00:00Z).
    app.dir.advance_clock(Duration::hours(13)).await.unwrap();
    for id in &ids {
        let ledger = app.ledger(id);
        assert_eq!(
            ledger.last().map(|e| e.cause()),
            Some(Cause::DailyReset),
            "{id:?}: the reset is recorded by the time advance returns"
        );
        assert_eq!(replay(&ledger).unwrap().daily.remaining, cr("20"));
    }
    // Nothing is due any more: nothing to tick.
    assert_eq!(app.dir.tick_due().await, 0);
}

/// Found by review: one catch-up step of up to 1,024 records overflowed a subscriber's
/// 256-event channel, so even a subscriber that kept up was told to resync and never saw
/// most resets. A step now fits the channel: reading between commits (each held until the
/// test has read what came before), the subscriber gets every record, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_keeping_up_sees_every_record_of_a_catch_up() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::sync::broadcast::error::TryRecvError;
    let clock = credits_actors::Clock::manual(at("2027-03-10T12:00:00Z"));
    let app = app_with(clock.clone(), credits_actors::ActorConfig::default());
    let id = app.wallet("wal_sub", "free", "UTC").await;
    let mut sub = app.dir.subscribe(&id).await.unwrap();
    let first = sub.snapshot.seq;
    let faults = &app.store.faults;
    faults.commits.hold.store(1_000_000, SeqCst);
    // Two years: about 730 resets and 24 renewals to catch up on.
    clock.as_manual().unwrap().advance(Duration::days(730));
    let now = clock.now();
    let caught_up = || app.store.stored(&id).unwrap().wallet.next_due() > now;
    let mut seqs = Vec::new();
    loop {
        // A step is held in its commit: the actor starts it only after publishing the last.
        // None, once the stored wallet has nothing due: caught up.
        assert!(eventually(|| faults.commits.held.load(SeqCst) == 1 || caught_up()).await);
        let held = faults.commits.held.load(SeqCst) == 1;
        loop {
            match sub.events.try_recv() {
                Ok(e) => {
                    assert!(matches!(e.kind, EventKind::Change(_)), "{e:?}");
                    seqs.push(e.seq);
                }
                Err(TryRecvError::Empty) => break,
                Err(e) => panic!("the subscriber was told to resync: {e:?}"),
            }
        }
        if !held {
            break;
        }
        // Released, the step lands (and only then can the next commit be held).
        let before = app.store.stored(&id).unwrap().wallet.seq;
        faults.commits.release.notify_one();
        assert!(eventually(|| app.store.stored(&id).unwrap().wallet.seq > before).await);
    }
    faults.commits.hold.store(0, SeqCst);
    let last = app.store.stored(&id).unwrap().wallet.seq;
    // The last step's records are published once its commit has landed.
    while seqs.last() < Some(&last) {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.events.recv())
            .await
            .expect("the last records are published")
            .expect("no resync");
        seqs.push(e.seq);
    }
    assert!(last - first > 700, "{} records", last - first);
    assert_eq!(seqs, (first + 1..=last).collect::<Vec<_>>());
}

/// Found by review: the due sweep read the first 256 due wallets and stopped once none of
/// them was new, so 256 that kept failing (here: their loads fail) kept every wallet due
/// after them from its reset. It reads on, page after page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_due_after_failing_ones_are_still_brought_up_to_date() {
    let app = app_at("2027-03-10T12:00:00Z");
    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push(app.wallet(&format!("wal_{n:03}"), "pro", "UTC").await);
    }
    // Past midnight: every wallet is due; the first 256 loads fail.
    app.dir
        .clock()
        .as_manual()
        .unwrap()
        .advance(Duration::hours(13));
    app.store
        .faults
        .fail_loads
        .store(256, std::sync::atomic::Ordering::SeqCst);
    app.dir.tick_due().await;
    let reset = ids
        .iter()
        .filter(|id| app.ledger(id).last().map(|e| e.cause()) == Some(Cause::DailyReset))
        .count();
    assert_eq!(reset, 300 - 256);
}

/// Found by review (Session 13): a subscriber's first SNAPSHOT carried the last durable
/// balance even when a reset had fallen due but was not committed yet, stamped "now" by the
/// API: a state that never held at that instant (SPEC 3). And (Session 14) showing the
/// balance as of now at the older seq made the events after it go back in time when more
/// than one record was due. A subscription now waits until what fell due is durable: the
/// snapshot is the state as of now, at its own seq, and no older balance follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_for_what_fell_due() {
    use std::sync::atomic::Ordering;
    let clock = Clock::manual(at("2027-03-10T12:00:00Z"));
    let app = app_with(clock.clone(), ActorConfig::default());
    let id = app.wallet("wal_snap", "pro", "UTC").await;
    app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    // Past midnight, with the reset's commit held.
    let commits = &app.store.faults.commits;
    commits.hold.store(1, Ordering::SeqCst);
    clock
        .as_manual()
        .unwrap()
        .advance(chrono::Duration::hours(13));
    let before = calls(&app.dir);
    let subscribing = {
        let (dir, id) = (app.dir.clone(), id.clone());
        tokio::spawn(async move { dir.subscribe(&id).await })
    };
    assert!(eventually(|| commits.held.load(Ordering::SeqCst) == 1).await);
    assert!(reached(&app.dir, before + 1).await);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !subscribing.is_finished(),
        "answered before the reset was durable"
    );
    commits.release.notify_one();
    let mut sub = subscribing.await.unwrap().unwrap();
    assert_eq!(sub.snapshot.seq, 2);
    assert_eq!(sub.snapshot.balance.daily.remaining, cr("20"));
    assert_eq!(sub.snapshot.at, at("2027-03-11T01:00:00Z"));
    assert!(sub.events.try_recv().is_err(), "nothing older follows");
}

/// A wallet with many days to catch up, in steps of two records: the snapshot comes once
/// all of it is durable, at the last seq, with the balance of now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_wallet_catching_up_comes_after_it() {
    let (app, clock, id) = catching_up("wal_month").await;
    clock
        .as_manual()
        .unwrap()
        .advance(chrono::Duration::days(30));
    let mut sub = app.dir.subscribe(&id).await.unwrap();
    let last = app.ledger(&id).last().unwrap().seq;
    assert!(last > 30, "a month of resets and the expiry: {last}");
    assert_eq!(sub.snapshot.seq, last);
    assert_eq!(
        sub.snapshot.balance,
        app.dir.read(&id).await.unwrap().balance()
    );
    assert!(sub.events.try_recv().is_err(), "nothing older follows");
}

/// Found by review: `advanceClock` answered success when it could not confirm that what
/// fell due was durable (a wallet whose commits kept failing, a store that could not be
/// asked). It is UNAVAILABLE then; the clock has moved, and advancing by 0 once the store
/// serves again waits for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_the_clock_is_unavailable_until_what_fell_due_is_durable() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_stuck", "pro", "UTC").await;
    app.store
        .faults
        .fail_commits
        .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
    let stuck = app.dir.advance_clock(Duration::hours(13)).await;
    assert!(
        matches!(stuck, Err(credits_actors::ExecError::Unavailable(_))),
        "{stuck:?}"
    );
    assert_eq!(app.ledger(&id).len(), 1, "no reset is durable");
    app.store
        .faults
        .fail_commits
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let now = app.dir.advance_clock(Duration::zero()).await.unwrap();
    assert_eq!(now, Some(at("2027-03-11T01:00:00Z")));
    assert_eq!(app.ledger(&id).len(), 2, "the reset, once");
}

/// Found by review: a subscription whose wait for the catch-up timed out (a long backlog on
/// a slow store) got the balance of now at the durable seq, and the catch-up's records then
/// went back in time. While a catch-up is being written the snapshot is the durable state:
/// every event after it carries the balance after its own record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_during_a_catch_up_never_runs_ahead_of_it() {
    use std::sync::atomic::Ordering;
    let (app, clock, id) = catching_up("wal_slow").await;
    let commits = &app.store.faults.commits;
    commits.hold.store(1, Ordering::SeqCst);
    clock
        .as_manual()
        .unwrap()
        .advance(chrono::Duration::days(30));
    // The first catch-up step is held past the subscription's wait (its call times out).
    let mut sub = app.dir.subscribe(&id).await.unwrap();
    let balance_at = |seq: u64| {
        let upto: Vec<_> = app
            .ledger(&id)
            .into_iter()
            .take_while(|e| e.seq <= seq)
            .collect();
        replay(&upto).unwrap().balance()
    };
    assert_eq!(sub.snapshot.balance, balance_at(sub.snapshot.seq));
    commits.release.notify_one();
    let last = loop {
        let w = app.dir.read(&id).await.unwrap();
        if w.seq > 30 && app.ledger(&id).last().unwrap().seq == w.seq {
            break w.seq;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut seen = sub.snapshot.seq;
    while seen < last {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), sub.events.recv())
            .await
            .expect("the catch-up's events")
            .unwrap();
        assert_eq!(event.seq, seen + 1);
        assert_eq!(event.balance, balance_at(event.seq), "seq {}", event.seq);
        seen = event.seq;
    }
}

/// A wallet that catches up two records at a time, with a lot that expires ten days in:
/// a month idle then leaves many steps of resets and the expiry to write.
async fn catching_up(name: &str) -> (App, Clock, credits_core::WalletId) {
    let clock = Clock::manual(at("2027-03-10T12:00:00Z"));
    let app = app_with(
        clock.clone(),
        ActorConfig {
            catch_up_records: 2,
            ..ActorConfig::default()
        },
    );
    let id = app.wallet(name, "pro", "UTC").await;
    app.dir
        .execute(&id, grant("g", "7", Some("2027-03-20T06:00:00Z")))
        .await
        .unwrap();
    (app, clock, id)
}

/// Found by review: a subscriber whose wait for what fell due timed out (a slow store)
/// got a SNAPSHOT of the durable state advanced to now (past midnight, reset applied) while
/// a usage from before midnight was still being committed: the events after it then showed
/// the older day's balance. With calls ahead not durable yet, the SNAPSHOT is the durable
/// state as it stands, and every event after it is at or after its instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_behind_a_pending_call_shows_no_later_reset() {
    use std::sync::atomic::Ordering;
    let app = app_at("2027-03-10T23:00:00Z");
    let id = app.wallet("wal_sn", "pro", "UTC").await;
    app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    let pending = app.spawn_execute(&id, usage("k2", "5"));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    app.dir
        .clock()
        .as_manual()
        .unwrap()
        .advance(Duration::hours(2));
    // The wait for the reset outlasts its bound (the commit ahead is held), then subscribes.
    let mut sub = app.dir.subscribe(&id).await.unwrap();
    faults.commits.release.notify_one();
    // Its caller was told UNAVAILABLE (no answer in time); the call lands all the same.
    let _ = pending.await.unwrap();
    app.dir.subscribe(&id).await.unwrap();
    let mut seen = vec![sub.snapshot.clone()];
    while let Ok(e) = sub.events.try_recv() {
        seen.push((*e).clone());
    }
    let causes: Vec<_> = seen.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        causes,
        [
            (1, EventKind::Snapshot),
            (2, EventKind::Change(Cause::Usage)),
            (3, EventKind::Change(Cause::DailyReset)),
        ]
    );
    for pair in seen.windows(2) {
        assert!(pair[0].at <= pair[1].at, "{seen:#?}");
    }
    assert_eq!(seen[0].balance.daily.remaining, cr("15"));
}
