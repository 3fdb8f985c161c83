use std::sync::atomic::Ordering;

use credits_actors::{ActorConfig, Clock, Directory, ExecError};
use credits_core::replay;
use credits_core::testing::catalogue;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_retried_and_applied_once() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_f", "pro", "UTC").await;
    app.store.faults.fail_commits.store(1, Ordering::SeqCst);
    let applied = app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    assert!(!applied.replayed);
    assert_eq!(app.ledger(&id).len(), 2);
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("515"));
}

/// Found by review (Session 13): a commit that failed with an unknown outcome was counted
/// twice (when it failed, and again when the reload found nothing written), so the actor
/// gave up after two transient failures instead of MAX_COMMIT_ATTEMPTS (3); and a reload
/// that found the last batch written was discarded once the limit was reached, its calls
/// answered UNAVAILABLE although durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failed_commits_then_a_lost_reply_still_answer_the_durable_call() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_f2", "pro", "UTC").await;
    app.store.faults.fail_commits.store(2, Ordering::SeqCst);
    app.store.faults.lose_replies.store(1, Ordering::SeqCst);
    let applied = app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    assert!(!applied.replayed);
    assert_eq!(app.ledger(&id).len(), 2, "written once");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("515"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_recognised_and_not_applied_twice() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_l", "pro", "UTC").await;
    app.store.faults.lose_replies.store(1, Ordering::SeqCst);
    let applied = app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    assert_eq!(applied.entry.seq, 1);
    assert_eq!(app.ledger(&id).len(), 2, "written once");
    // A retry with the key is a replay.
    let again = app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("515"));
}

/// A commit lands but its reply is lost, and another node commits on the wallet before this
/// one reloads: the call is answered as durable, not decided again (a purchase decided
/// again would be refused, its grant id being taken by its own durable record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_then_another_nodes_write_answers_the_durable_call() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_n", "pro", "UTC").await;
    app.dir.read(&id).await.unwrap();
    let other = Directory::new(
        app.store.clone(),
        Clock::manual(at("2027-03-10T12:00:00Z")),
        catalogue(),
        ActorConfig::default(),
    );
    let purchase = purchase("grt_p", "pay-1");
    let faults = &app.store.faults;
    faults.lose_replies.store(1, Ordering::SeqCst);
    faults.loads.hold.store(1, Ordering::SeqCst);
    let call = app.spawn_execute(&id, purchase);
    // The purchase is durable and this node's reload waits: the other node writes now.
    assert!(eventually(|| faults.loads.held.load(Ordering::SeqCst) == 1).await);
    other.execute(&id, usage("k-other", "5")).await.unwrap();
    faults.loads.release.notify_one();
    let applied = call
        .await
        .unwrap()
        .expect("the durable purchase is answered");
    assert!(!applied.replayed);
    let grants = app
        .ledger(&id)
        .iter()
        .filter(|e| e.cause() == credits_core::Cause::Grant)
        .count();
    assert_eq!(grants, 1, "written once");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("615"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_keeps_failing_gets_unavailable_and_changes_nothing() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_u", "pro", "UTC").await;
    app.store.faults.fail_commits.store(100, Ordering::SeqCst);
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let dir = app.dir.clone();
            let id = id.clone();
            tokio::spawn(async move { dir.execute(&id, usage(&format!("k{i}"), "1")).await })
        })
        .collect();
    for c in calls {
        assert!(
            matches!(c.await.unwrap(), Err(ExecError::Unavailable(_))),
            "never a definite refusal"
        );
    }
    assert_eq!(app.ledger(&id).len(), 1, "nothing written");
    app.store.faults.fail_commits.store(0, Ordering::SeqCst);
    // The wallet recovers: the same keys now apply.
    for i in 0..10 {
        app.dir
            .execute(&id, usage(&format!("k{i}"), "1"))
            .await
            .unwrap();
    }
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("510"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_actor_restarts_from_durable_state() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_c", "pro", "UTC").await;
    for i in 0..5 {
        app.dir
            .execute(&id, usage(&format!("k{i}"), "1"))
            .await
            .unwrap();
    }
    app.dir.crash(&id).await;
    // Calls racing the crash either land or are retried by key; none is applied twice.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let dir = app.dir.clone();
            let id = id.clone();
            tokio::spawn(async move {
                loop {
                    match dir.execute(&id, usage(&format!("c{i}"), "1")).await {
                        Err(ExecError::Unavailable(_)) => continue,
                        other => return other.unwrap(),
                    }
                }
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let ledger = app.ledger(&id);
    assert_eq!(ledger.len(), 26);
    assert_eq!(replay(&ledger).unwrap().spendable(), cr("495"));
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("495"));
}

/// Found by the seeded simulation: a retry answered while the wallet's due records (here
/// the next day's reset) were not yet durable showed the stale balance from before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_shows_the_balance_after_due_records() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_r", "pro", "UTC").await;
    app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    // Slow commits: the reset is still being written when the retry arrives.
    app.store
        .faults
        .commit_delay_micros
        .store(50_000, Ordering::SeqCst);
    let clock = app.dir.clock().as_manual().unwrap().clone();
    clock.advance(chrono::Duration::days(1));
    let again = app.dir.execute(&id, usage("k1", "5")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.balance.daily.remaining, cr("20"), "after the reset");
    assert_eq!(again.balance, app.dir.read(&id).await.unwrap().balance());
}

/// Found while running the suite next to the simulation: after the actor gave up on the
/// store, a call made right after its UNAVAILABLE answer could still reach the stopping
/// actor and be dropped unanswered ("stopped before answering").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_giving_up_reaches_a_fresh_actor() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_g", "pro", "UTC").await;
    for i in 0..30 {
        app.store.faults.fail_commits.store(3, Ordering::SeqCst);
        let key = format!("k{i}");
        assert!(matches!(
            app.dir.execute(&id, usage(&key, "1")).await,
            Err(ExecError::Unavailable(_))
        ));
        let applied = app.dir.execute(&id, usage(&key, "1")).await.unwrap();
        assert!(
            !applied.replayed,
            "nothing was written by the failed attempt"
        );
    }
    assert_eq!(app.ledger(&id).len(), 31);
}

/// A retry whose key this actor no longer holds (a restart empties its cache) is decided as
/// new until its commit hits the key. A call refused for want of funds meanwhile must not
/// get that refusal: the retry takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_retry_ahead_does_not_refuse_the_next_call() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_k", "pro", "UTC").await;
    app.dir.execute(&id, usage("big", "502")).await.unwrap();
    app.dir.execute(&id, usage("k", "8")).await.unwrap();
    let before = app.dir.active_actor(&id);
    app.dir.crash(&id).await;
    // A fresh activation: it knows no key.
    loop {
        if let Ok(w) = app.dir.read(&id).await
            && app.dir.active_actor(&id) != before
        {
            assert_eq!(w.spendable(), cr("10"));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The retry's commit is held, so the next call is decided while it is in flight.
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    let retry = app.spawn_execute(&id, usage("k", "8"));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let mut next = std::pin::pin!(app.dir.execute(&id, usage("k2", "5")));
    // The first poll sends the call; a read sent after it is answered after it is decided.
    std::future::poll_fn(|cx| {
        assert!(next.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    app.dir.read(&id).await.unwrap();
    faults.commits.release.notify_one();
    let next = next
        .await
        .expect("10 spendable: the retry ahead takes nothing");
    assert!(!next.replayed);
    assert_eq!(next.balance.total, cr("5"));
    assert!(retry.await.unwrap().unwrap().replayed);
    assert_eq!(app.ledger(&id).len(), 4, "created, big, k, k2");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("5"));
}

/// Found by review: a reset that fell due while the actor reloaded after a lost reply was
/// not applied when the reload found the commit durable, and its timer was not armed
/// again, so the idle wallet never recorded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_due_during_a_reload_is_applied_after_it() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_d", "pro", "UTC").await;
    app.dir.read(&id).await.unwrap();
    let faults = &app.store.faults;
    faults.lose_replies.store(1, Ordering::SeqCst);
    faults.loads.hold.store(1, Ordering::SeqCst);
    let call = app.spawn_execute(&id, usage("k1", "5"));
    // The commit landed; its reply was lost and the reload waits. Midnight passes.
    assert!(eventually(|| faults.loads.held.load(Ordering::SeqCst) == 1).await);
    let clock = app.dir.clock().as_manual().unwrap().clone();
    clock.advance(chrono::Duration::hours(13));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    faults.loads.release.notify_one();
    assert!(!call.await.unwrap().unwrap().replayed);
    let reset = |app: &App| {
        app.ledger(&id)
            .iter()
            .any(|e| e.cause() == credits_core::Cause::DailyReset)
    };
    assert!(eventually(|| reset(&app)).await, "the reset is recorded");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("520"));
}

/// Found by review: a purchase sent twice (a payment webhook delivered twice at once) was
/// decided twice before either was stored; the second commit then failed on the store's
/// unique payment reference until the wallet gave up (UNAVAILABLE, with every call
/// batched beside it). The wallet now refuses the second as a conflict, and only once the
/// first is durable, so that the caller finds its lot (the refusal waits like one for
/// funds: decided again if the commit ahead fails).
/// Sends `call` (polled once) and checks it is decided (a read sent after it is answered
/// after it) but not answered: its refusal waits for the commit ahead.
async fn decided_not_answered<T>(
    app: &App,
    id: &credits_core::WalletId,
    mut call: std::pin::Pin<&mut impl std::future::Future<Output = T>>,
) {
    std::future::poll_fn(|cx| {
        assert!(call.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    app.dir.read(id).await.unwrap();
    std::future::poll_fn(|cx| {
        assert!(
            call.as_mut().poll(cx).is_pending(),
            "refused before the call ahead is durable"
        );
        std::task::Poll::Ready(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_sent_twice_is_refused_once_the_first_is_durable() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_p", "pro", "UTC").await;
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    let first = app.spawn_execute(&id, purchase("grt_1", "pay-1"));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let mut second = std::pin::pin!(app.dir.execute(&id, purchase("grt_2", "pay-1")));
    decided_not_answered(&app, &id, second.as_mut()).await;
    faults.commits.release.notify_one();
    assert!(!first.await.unwrap().unwrap().replayed);
    assert!(matches!(
        second.await,
        Err(ExecError::Op(credits_core::OpError::IdempotencyConflict))
    ));
    assert_eq!(app.ledger(&id).len(), 2, "created, one purchase");
}

/// Found by review: a wallet remembers a lot only while something is left in it or held
/// from it, so a second grant of a review's compensation or of a payment's lot, decided
/// once the first lot was spent (its caller looked for a stored lot before the first was
/// durable), was a second lot. The store refuses it, and the wallet then refuses it as a
/// conflict, so that the caller finds the first lot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_granted_again_after_it_was_spent_is_refused() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_s", "pro", "UTC").await;
    for refused in grant_spend_and_grant_again(&app.dir, &id).await {
        assert!(
            matches!(
                refused,
                Err(ExecError::Op(credits_core::OpError::IdempotencyConflict))
            ),
            "{refused:?}"
        );
    }
    assert_eq!(grants(&app.ledger(&id)), 2, "one lot each");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("0"));
}

/// The same while the first lot's commit is still in flight: the lot was spent by a call
/// decided behind it, and the second grant must not join the batch beside the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_granted_again_behind_its_spending_is_refused_once_durable() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_b", "pro", "UTC").await;
    app.dir.execute(&id, usage("all", "520")).await.unwrap();
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    let first = app.spawn_execute(&id, compensation("grt_r", "rev_1", "1"));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let spend = app.spawn_execute(&id, usage("spend", "1"));
    let mut second = std::pin::pin!(app.dir.execute(&id, compensation("grt_r", "rev_1", "1")));
    decided_not_answered(&app, &id, second.as_mut()).await;
    faults.commits.release.notify_one();
    assert!(!first.await.unwrap().unwrap().replayed);
    assert!(!spend.await.unwrap().unwrap().replayed);
    assert!(
        matches!(
            second.await,
            Err(ExecError::Op(credits_core::OpError::IdempotencyConflict))
        ),
        "refused"
    );
    assert_eq!(grants(&app.ledger(&id)), 1, "one lot");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("0"));
}

/// Found by review: a wallet actor that crashed with a commit in flight was replaced at
/// once, and the new activation could load the wallet before that commit landed, then
/// decide on the older state (here: refuse a usage the landed grant pays for). An
/// activation now waits for the wallet's commits still in flight on this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_restarted_after_a_crash_waits_for_its_commit_in_flight() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_c", "pro", "UTC").await;
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    let granting = app.spawn_execute(&id, grant("g1", "100", None));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let before = app.dir.active_actor(&id);
    app.dir.crash(&id).await;
    assert!(eventually(|| app.dir.active_actor(&id) != before).await);
    assert!(granting.await.unwrap().is_err(), "its caller is not told");
    // 520 of the plan and 100 of the grant: only payable once the grant has landed.
    let spending = app.spawn_execute(&id, usage("spend", "600"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    faults.commits.release.notify_one();
    let spent = spending.await.unwrap();
    assert!(spent.is_ok(), "{spent:?}");
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("20"));
}

/// Found by review: a refusal the actor decides from its own memory of keys (another
/// input under a key whose call is still committing) was answered at once, as a definite
/// IDEMPOTENCY_CONFLICT, though that commit could still fail and leave the key unrecorded
/// (SPEC 4). It is answered once the call ahead is durable; when that commit fails, the
/// two calls are decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_conflict_waits_for_the_call_ahead_to_be_durable() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_k", "pro", "UTC").await;
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    faults.fail_commits.store(1, Ordering::SeqCst);
    let first = app.spawn_execute(&id, usage("k", "1"));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    // The same key with another input (another thread).
    let other = match usage("k", "1") {
        credits_core::Op::Usage(mut u) => {
            u.thread_id = "another-thread".into();
            credits_core::Op::Usage(u)
        }
        _ => unreachable!(),
    };
    let mut second = std::pin::pin!(app.dir.execute(&id, other));
    decided_not_answered(&app, &id, second.as_mut()).await;
    // The held commit fails; both are decided again; the first commits this time.
    faults.commits.release.notify_one();
    assert!(!first.await.unwrap().unwrap().replayed);
    let second = second.await;
    assert!(
        matches!(
            second,
            Err(ExecError::Op(credits_core::OpError::IdempotencyConflict))
        ),
        "{second:?}"
    );
    assert_eq!(app.ledger(&id).len(), 2, "created, one usage");
}

/// Found by review: while a wallet caught up on what fell due, a call parked behind the
/// catch-up could be overtaken by a later call that arrived once the last step was applied.
/// Calls are decided in the order they came: here the first takes the day's 5 credits and
/// the second is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_parked_while_catching_up_keep_their_order() {
    let clock = credits_actors::Clock::manual(at("2027-03-10T12:00:00Z"));
    let config = credits_actors::ActorConfig {
        catch_up_records: 1,
        ..Default::default()
    };
    let app = app_with(clock.clone(), config);
    let id = app.wallet("wal_fifo", "free", "UTC").await;
    app.dir.execute(&id, usage("spent", "5")).await.unwrap();
    let faults = &app.store.faults;
    faults.commits.hold.store(2, Ordering::SeqCst);
    // Three daily resets fall due; the wallet applies them one per commit.
    clock
        .as_manual()
        .unwrap()
        .advance(chrono::Duration::days(3));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let first = app.spawn_execute(&id, usage("first", "5"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    app.dir.read(&id).await.unwrap();
    // The first reset lands; the second is held in its commit.
    faults.commits.release.notify_one();
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    app.dir.read(&id).await.unwrap();
    let second = app.spawn_execute(&id, usage("second", "5"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    app.dir.read(&id).await.unwrap();
    faults.commits.release.notify_one();
    assert!(
        !first.await.unwrap().unwrap().replayed,
        "the first call is served"
    );
    let second = second.await.unwrap();
    assert!(
        matches!(
            second,
            Err(ExecError::Op(
                credits_core::OpError::InsufficientCredits { .. }
            ))
        ),
        "{second:?}"
    );
}

/// Found by review: a call given up while its wallet was loading (the client left) left
/// an empty entry in the directory, so every wallet id ever asked for that way stayed
/// listed (and counted as active) for ever. The abandoned entry is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_while_its_wallet_loads_leaves_nothing_behind() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_gone", "pro", "UTC").await;
    let faults = &app.store.faults;
    faults.loads.hold.store(1, Ordering::SeqCst);
    let read = {
        let (dir, id) = (app.dir.clone(), id.clone());
        tokio::spawn(async move { dir.read(&id).await })
    };
    assert!(eventually(|| faults.loads.held.load(Ordering::SeqCst) == 1).await);
    read.abort();
    assert!(read.await.unwrap_err().is_cancelled());
    assert_eq!(app.dir.active_wallets(), 0);
    // The wallet still activates on the next call (its load is not held).
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("520"));
}

/// Found by review: the memory of recent keys forgot its oldest entries past 1,024 even
/// when they were not durable yet. With more keyed calls queued behind one, a retry of it
/// was decided as new: here refused for funds its first attempt had taken. Keys of calls
/// not yet durable are kept until they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_behind_many_keyed_calls_is_still_a_replay() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_m", "free", "UTC").await;
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    // Takes the day's 5 credits; its commit is held.
    let first = app.spawn_execute(&id, usage("k", "5"));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let mut behind: Vec<_> = (0..credits_actors::wallet::RECENT_KEYS + 10)
        .map(|i| {
            Box::pin(
                app.dir
                    .execute(&id, grant(&format!("grt_{i}"), "0.000001", None)),
            )
        })
        .collect();
    for call in &mut behind {
        std::future::poll_fn(|cx| {
            assert!(call.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
    }
    let mut retry = std::pin::pin!(app.dir.execute(&id, usage("k", "5")));
    decided_not_answered(&app, &id, retry.as_mut()).await;
    faults.commits.release.notify_one();
    let first = first.await.unwrap().unwrap();
    let retry = retry.await;
    assert!(
        retry
            .as_ref()
            .is_ok_and(|r| r.replayed && r.entry == first.entry),
        "{retry:?}"
    );
    for call in behind {
        call.await.unwrap();
    }
}

/// Found by review: a refusal for funds behind a settlement whose commit was still pending
/// was answered at once. A settlement has no key of its own, and pays from the spendable
/// balance what its hold does not cover: when its commit then failed for good, the funds
/// the refusal rested on had never been spent. The refusal now waits for the records ahead
/// of it, and is UNAVAILABLE when they do not become durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_behind_a_settlement_that_never_lands_is_unavailable() {
    use credits_core::{Op, ReservationId, ReserveOp};
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_settle", "pro", "UTC").await;
    app.dir
        .execute(
            &id,
            Op::Reserve(ReserveOp {
                id: ReservationId::from("res_s"),
                key: "r".into(),
                amount: cr("10"),
                ttl_seconds: 600,
                member: None,
            }),
        )
        .await
        .unwrap();
    // 510 spendable and 10 held: settling at 500 leaves 20 spendable, if it lands.
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    faults.fail_commits.store(3, Ordering::SeqCst);
    let settle = app.spawn_execute(&id, Op::Settle(settle("res_s", "500")));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let before = calls(&app.dir);
    let usage = app.spawn_execute(&id, usage("k2", "30"));
    assert!(reached(&app.dir, before + 1).await);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !usage.is_finished(),
        "refused on a settlement not durable yet"
    );
    faults.commits.release.notify_one();
    let settled = settle.await.unwrap();
    assert!(
        matches!(settled, Err(ExecError::Unavailable(_))),
        "{settled:?}"
    );
    let spent = usage.await.unwrap();
    assert!(
        !matches!(
            spent,
            Err(ExecError::Op(
                credits_core::OpError::InsufficientCredits { .. }
            ))
        ),
        "a refusal the store never held: {spent:?}"
    );
    assert_eq!(app.dir.read(&id).await.unwrap().spendable(), cr("510"));
}

/// Found by review (Session 14): a commit whose connection was lost can still land on a
/// PostgreSQL server after the writer's reload has read. The calls of that batch were
/// decided again on the state read before it, and a call that carries no key (a plan
/// change) was then applied a second time on top of the landed one. The reload now moves
/// the wallet's version first, so the late commit either shows in it or fails its fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lands_after_the_reload_read_is_not_applied_twice() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_late", "pro", "UTC").await;
    app.dir.read(&id).await.unwrap();
    let faults = &app.store.faults;
    faults.land_late.store(1, Ordering::SeqCst);
    faults.loads.hold.store(1, Ordering::SeqCst);
    let upgrade = app.spawn_execute(
        &id,
        credits_core::Op::ChangePlan(credits_core::PlanId::from("max")),
    );
    // The commit failed and the reload waits; a usage call arrives meanwhile.
    assert!(eventually(|| faults.loads.held.load(Ordering::SeqCst) == 1).await);
    let spend = app.spawn_execute(&id, usage("k-late", "5"));
    faults.loads.release.notify_one();
    let upgraded = upgrade.await.unwrap();
    spend.await.unwrap().expect("the usage is recorded");
    let ledger = app.ledger(&id);
    let changes: Vec<_> = ledger
        .iter()
        .filter(|e| e.cause() == credits_core::Cause::PlanChange)
        .collect();
    assert_eq!(changes.len(), 1, "one plan change: {ledger:#?}");
    let upgraded = upgraded.expect("the plan change is answered");
    assert_eq!(
        &upgraded.entry, changes[0],
        "answered with the record stored"
    );
    let (stored, entries) = app.store.stored_with_ledger(&id).unwrap();
    assert_eq!(
        replay(&entries).unwrap().balance(),
        stored.wallet.balance(),
        "the ledger replays to the stored balance"
    );
}

/// Found by review: a model refusal decided behind an upgrade not durable yet was answered
/// at once. An upgrade can move a wallet to a plan with fewer tiers; when its commit then
/// failed for good, the wallet had never left a plan that allows the model, yet the caller
/// held a definite MODEL_NOT_ALLOWED. Such a refusal now waits for the plan change ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_refusal_behind_a_plan_change_that_never_lands_is_not_given() {
    use credits_core::{Op, Plan, PlanId};
    let app = app_at("2027-03-10T12:00:00Z");
    let mut plans = credits_core::testing::catalogue();
    plans.push(Plan {
        id: PlanId::from("bulk"),
        name: "Bulk".into(),
        daily_credits: cr("0"),
        subscription_credits: cr("5000"),
        interval: credits_core::BillingInterval::Monthly,
        model_tiers: vec!["economy".into()],
        custom: true,
        retired: false,
        earlier: Vec::new(),
    });
    app.dir.plans().replace(plans);
    let id = app.wallet("wal_tiers", "max", "UTC").await;
    let faults = &app.store.faults;
    faults.commits.hold.store(1, Ordering::SeqCst);
    faults.fail_commits.store(3, Ordering::SeqCst);
    let change = app.spawn_execute(&id, Op::ChangePlan(PlanId::from("bulk")));
    assert!(eventually(|| faults.commits.held.load(Ordering::SeqCst) == 1).await);
    let mut premium = usage("k-premium", "1");
    if let Op::Usage(u) = &mut premium {
        u.tier = "premium".into();
        u.model = "premium-model".into();
    }
    let before = calls(&app.dir);
    let spent = app.spawn_execute(&id, premium);
    assert!(reached(&app.dir, before + 1).await);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !spent.is_finished(),
        "refused on a plan change not durable yet"
    );
    faults.commits.release.notify_one();
    let changed = change.await.unwrap();
    assert!(
        matches!(changed, Err(ExecError::Unavailable(_))),
        "{changed:?}"
    );
    let spent = spent.await.unwrap();
    assert!(
        !matches!(
            spent,
            Err(ExecError::Op(credits_core::OpError::ModelNotAllowed { .. }))
        ),
        "a refusal on a plan the wallet never had: {spent:?}"
    );
    assert_eq!(
        app.dir.read(&id).await.unwrap().plan_id,
        PlanId::from("max")
    );
}

/// Found by review: the SIGTERM drain stopped a wallet with a live subscriber, whose feed
/// subscribed again at once and so started the wallet again, unflushed, as the process
/// ended. From the start of `shutdown`, no wallet starts: a subscription or a call on a
/// wallet not active is UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_shutdown_begins_no_wallet_starts_again() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_down", "pro", "UTC").await;
    let _live = app.dir.subscribe(&id).await.unwrap();
    app.dir.shutdown().await;
    assert_eq!(app.dir.active_actor(&id), None);
    let again = app.dir.subscribe(&id).await;
    assert!(
        matches!(again, Err(ExecError::Unavailable(_))),
        "{:?}",
        again.err()
    );
    let call = app.dir.execute(&id, usage("late", "1")).await;
    assert!(matches!(call, Err(ExecError::Unavailable(_))), "{call:?}");
    assert_eq!(app.dir.active_actor(&id), None);
    assert_eq!(app.ledger(&id).len(), 1, "only the creation");
}

/// Found by review of the above: an activation that had passed the check before
/// `shutdown` began was still loading when `shutdown` listed the actors, so it started
/// its actor after the drain. `shutdown` waits for activations under way, then stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_wallet_whose_activation_was_under_way() {
    let app = app_at("2027-03-10T12:00:00Z");
    let id = app.wallet("wal_loading", "pro", "UTC").await;
    // A second node on the same store, where the wallet is not active yet.
    let other = Directory::new(
        app.store.clone(),
        app.dir.clock().clone(),
        catalogue(),
        ActorConfig::default(),
    );
    let faults = &app.store.faults;
    faults.loads.hold.store(1, Ordering::SeqCst);
    let call = {
        let (other, id) = (other.clone(), id.clone());
        tokio::spawn(async move { other.execute(&id, usage("during", "1")).await })
    };
    assert!(eventually(|| faults.loads.held.load(Ordering::SeqCst) == 1).await);
    let draining = {
        let other = other.clone();
        tokio::spawn(async move { other.shutdown().await })
    };
    assert!(eventually(|| other.closing()).await);
    faults.loads.release.notify_one();
    draining.await.unwrap();
    // Taken in before the drain began: answered, one way or the other, and never left
    // running after it.
    let _answered = call.await.unwrap();
    assert_eq!(
        other.active_actor(&id),
        None,
        "no wallet runs after the drain"
    );
}

/// Found by review: a group commit whose database connection went silent (no answer, no
/// reset: a failover, a dropped NAT entry) held its writer for ever, so no wallet of the
/// node could commit again, and its own wallets' calls were never answered. A commit not
/// finished within the commit timeout is given up as of unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_finishes_gives_its_writer_back() {
    let config = ActorConfig {
        commit_timeout: std::time::Duration::from_millis(300),
        ..ActorConfig::default()
    };
    let app = app_with(Clock::manual(at("2027-03-10T12:00:00Z")), config);
    let stuck = app.wallet("wal_stuck", "pro", "UTC").await;
    let other = app.wallet("wal_other", "pro", "UTC").await;
    // Held, and never released.
    app.store.faults.commits.hold.store(1, Ordering::SeqCst);
    let call = app.spawn_execute(&stuck, usage("k1", "1"));
    assert!(eventually(|| app.store.faults.commits.held.load(Ordering::SeqCst) == 1).await);
    // The wallet reloads behind a fence, as after any commit of unknown outcome, finds
    // the call not written and writes it again, within the call's own time.
    let answer = call.await.unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    // The one writer is free again: another wallet commits too.
    let spent = app.dir.execute(&other, usage("k2", "1")).await;
    assert!(spent.is_ok(), "{spent:?}");
    let again = app.dir.execute(&stuck, usage("k1", "1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(app.ledger(&stuck).len(), 2, "applied once");
}

/// Found by review: on SQLite (one node) a commit the commit timeout gave up on can still
/// land (its COMMIT runs on a worker thread), yet the reload after it was a plain read
/// there. A zone change, which has no key, was decided again on top of it and recorded
/// twice. A commit given up on is followed by a fenced reload on every store, so it either
/// is in what the reload reads or never lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_given_up_on_lands_at_most_once_on_one_node() {
    let clock = Clock::manual(at("2027-03-10T12:00:00Z"));
    let config = ActorConfig {
        commit_timeout: std::time::Duration::from_millis(300),
        ..ActorConfig::default()
    };
    let app = app_with(clock.clone(), config);
    app.store.faults.one_node.store(true, Ordering::SeqCst);
    let id = app.wallet("wal_zone", "pro", "UTC").await;
    app.store.faults.hang_then_land.store(1, Ordering::SeqCst);
    let berlin = credits_core::Op::SetTimezone("Europe/Berlin".parse().unwrap());
    let call = app.spawn_execute(&id, berlin);
    assert!(eventually(|| app.store.faults.hung.load(Ordering::SeqCst) == 1).await);
    // Decided again a second later, the record differs from the one still running.
    let Clock::Manual(manual) = &clock else {
        unreachable!()
    };
    manual.advance(chrono::Duration::seconds(1));
    let answer = call.await.unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    let changes = app
        .ledger(&id)
        .iter()
        .filter(|e| e.cause() == credits_core::Cause::TimezoneChange)
        .count();
    assert_eq!(changes, 1, "one call, one record: {:?}", app.ledger(&id));
    let (stored, ledger) = app.store.stored_with_ledger(&id).unwrap();
    assert_eq!(replay(&ledger).unwrap(), stored.wallet);
}
