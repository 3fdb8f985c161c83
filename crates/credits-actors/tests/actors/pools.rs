//! Team pools under their supervisor: member seats hand out limits read from durable state,
//! a crashed seat or pool wallet actor comes back from durable state while the pool keeps
//! serving, and limit changes reach the seat (on SQLite and PostgreSQL).

use credits_actors::pool::SeatMsg;
use credits_actors::{ExecError, ServiceError};
use credits_core::{OpError, PlanId};
use credits_store::MemberRole;

use crate::helpers::*;
use crate::sql::{cleanup, databases, node};

fn refused_for_limit(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::Exec(ExecError::Op(OpError::MemberLimitExceeded { .. }))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_members_at_their_limits_and_crashes_under_supervision() {
    let plugins = tempfile::tempdir().unwrap();
    for (url, pg) in databases().await {
        let (dir, store) = node(&url).await;
        let ledger = ledger_without_plugins(&dir, &store, plugins.path());
        let (team, pool) = team(&ledger).await;
        ledger
            .add_member(
                &team.id,
                "m1".into(),
                MemberRole::Member,
                Some(cr("5")),
                None,
            )
            .await
            .unwrap();
        ledger
            .add_member(&team.id, "m2".into(), MemberRole::Member, None, None)
            .await
            .unwrap();
        let mut n = 0;
        let mut hold = |member: &str, amount: &str| {
            n += 1;
            let (ledger, pool, key) = (ledger.clone(), pool.clone(), format!("k{n}"));
            let member = member.to_owned();
            let amount = cr(amount);
            async move { ledger.reserve(&pool, key, amount, 600, Some(member)).await }
        };

        // m1 may hold 5 today.
        hold("m1", "3").await.unwrap();
        let over = hold("m1", "3").await.unwrap_err();
        assert!(refused_for_limit(&over), "{over:?}");
        hold("m2", "30").await.unwrap();

        // A crashed seat comes back from durable state; the pool keeps serving.
        let seat = dir.pools().seat(&pool, "m1").await.expect("m1 has a seat");
        let _ = seat.send_message(SeatMsg::Crash);
        let pools = dir.pools().clone();
        let pool_id = pool.clone();
        assert!(
            eventually_async(|| {
                let pools = pools.clone();
                let pool_id = pool_id.clone();
                async move { pools.seat(&pool_id, "m1").await.is_none() }
            })
            .await,
            "the crashed seat left"
        );
        hold("m2", "1").await.unwrap();
        hold("m1", "1").await.unwrap();
        assert!(refused_for_limit(&hold("m1", "2").await.unwrap_err()));

        // An admin raises the limit: the seat reads it back.
        ledger
            .set_member_limits(&team.id, "m1", Some(cr("10")), None)
            .await
            .unwrap();
        hold("m1", "2").await.unwrap();

        // The pool's wallet actor crashes: its supervisor activates it again from durable
        // state, and every acknowledged hold is still there.
        let supervisor = dir.pools().active(&pool).expect("a supervisor");
        let crashed = dir.active_actor(&pool).expect("the pool wallet is active");
        dir.crash(&pool).await;
        // Nobody calls it: its supervisor brings it back.
        assert!(
            eventually(|| dir.active_actor(&pool).is_some_and(|a| a != crashed)).await,
            "the pool wallet was re-activated by its supervisor"
        );
        assert_eq!(
            supervisor.get_status(),
            ractor::ActorStatus::Running,
            "the supervisor kept running"
        );
        let wallet = ledger.wallet(&pool).await.unwrap().unwrap();
        assert_eq!(wallet.reservations.len(), 5);
        hold("m1", "1").await.unwrap();

        // A removed member is refused.
        ledger.remove_member(&team.id, "m2").await.unwrap();
        let gone = hold("m2", "1").await.unwrap_err();
        assert!(matches!(gone, ServiceError::Forbidden(_)), "{gone:?}");

        let replayed = store.replay_wallet(&pool.0).await.unwrap().unwrap();
        let (stored, _) = store.load_state(&pool.0).await.unwrap().unwrap();
        assert_eq!(replayed.balance(), stored.balance());
        assert_eq!(stored.reservations.len(), 6);
        dir.shutdown().await;
        cleanup(&url, pg).await;
    }
}

/// Node A changes a member's limits or removes them; node B, which never hears of it (no
/// notices here), must not spend on the limits its seat read before: the change moved the
/// pool wallet's version, so B's commit is fenced out, and B's wallet actor, reloaded, sees
/// the members version moved and has the seat read the limits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_limit_change_fences_spends_decided_on_the_old_limits() {
    let plugins = tempfile::tempdir().unwrap();
    for (url, pg) in databases().await {
        let (dir_a, store_a) = node(&url).await;
        let (dir_b, store_b) = node(&url).await;
        let a = ledger_without_plugins(&dir_a, &store_a, plugins.path());
        let b = ledger_without_plugins(&dir_b, &store_b, plugins.path());
        let (team, pool) = team(&a).await;
        for m in ["m1", "m2"] {
            a.add_member(&team.id, m.into(), MemberRole::Member, None, None)
                .await
                .unwrap();
        }
        let mut n = 0;
        let mut hold = |ledger: &credits_actors::Ledger, member: &str, amount: &str| {
            n += 1;
            let (ledger, pool, key) = (ledger.clone(), pool.clone(), format!("k{n}"));
            let (member, amount) = (member.to_owned(), cr(amount));
            async move { ledger.reserve(&pool, key, amount, 600, Some(member)).await }
        };
        // B's seats read "no limit".
        hold(&b, "m1", "1").await.unwrap();
        hold(&b, "m2", "1").await.unwrap();

        // A limits m1 to 2 a day: B may not hold 3 more for them.
        a.set_member_limits(&team.id, "m1", Some(cr("2")), None)
            .await
            .unwrap();
        let over = hold(&b, "m1", "3").await.unwrap_err();
        assert!(refused_for_limit(&over), "{url}: {over:?}");
        hold(&b, "m1", "1").await.unwrap();
        assert!(refused_for_limit(&hold(&b, "m1", "1").await.unwrap_err()));

        // A raises m1's limit to 10: B, which has not heard of it either, spends on it. A
        // raise moves no record of the pool, so only a check of the stored members version
        // sees it (on PostgreSQL: a SQLite file has one node, which hears its own changes).
        let mut held = 4;
        if pg.is_some() {
            a.set_member_limits(&team.id, "m1", Some(cr("10")), None)
                .await
                .unwrap();
            hold(&b, "m1", "3").await.unwrap();
            held += 1;
        }

        // B's seat for m2 read again, at the members version B's wallet actor has.
        hold(&b, "m2", "1").await.unwrap();
        held += 1;
        // A removes m2: B may not spend for them any more.
        assert!(a.remove_member(&team.id, "m2").await.unwrap());
        if pg.is_some() {
            // Not even a refusal decided on the old seat (found by review: more than the
            // pool holds was INSUFFICIENT_CREDITS, which B answered without a commit to be
            // fenced out; FORBIDDEN comes first).
            let gone = hold(&b, "m2", "100000").await.unwrap_err();
            assert!(
                matches!(gone, ServiceError::Forbidden(_)),
                "{url}: {gone:?}"
            );
        }
        let gone = hold(&b, "m2", "1").await.unwrap_err();
        assert!(
            matches!(gone, ServiceError::Forbidden(_)),
            "{url}: {gone:?}"
        );

        // A's own wallet actor, fenced out by the changes too, still serves.
        hold(&a, "admin", "1").await.unwrap();
        let stored = store_a.replay_wallet(&pool.0).await.unwrap().unwrap();
        assert_eq!(stored.reservations.len(), held, "{url}");
        dir_a.shutdown().await;
        dir_b.shutdown().await;
        cleanup(&url, pg).await;
    }
}

/// A team on `pro` whose one admin is `admin`, and its pool wallet.
async fn team(ledger: &credits_actors::Ledger) -> (credits_store::TeamRow, credits_core::WalletId) {
    let team = ledger
        .create_team(
            "Team".into(),
            &PlanId::from("pro"),
            "UTC".parse().unwrap(),
            vec!["admin".into()],
        )
        .await
        .unwrap();
    let pool = credits_core::WalletId(team.wallet_id.clone());
    (team, pool)
}

async fn eventually_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Found by review: a seat that stopped to read its limits again kept its name until it
/// had processed the stop, and the seat started for the next call took the same name: when
/// the old one had not stopped yet, that start failed and the call was UNAVAILABLE. Each
/// seat now has a name of its own. (The window is narrow: this loop did not hit it before
/// the change either; it holds the behaviour, reseat after reseat.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_started_right_after_a_reseat_is_never_refused() {
    let plugins = tempfile::tempdir().unwrap();
    // SQLite is enough; any other database made is dropped at once.
    let mut made = databases().await.into_iter();
    let (url, pg) = made.next().expect("a SQLite database");
    for (other, other_pg) in made {
        cleanup(&other, other_pg).await;
    }
    let (dir, store) = node(&url).await;
    let ledger = ledger_without_plugins(&dir, &store, plugins.path());
    let (team, pool) = team(&ledger).await;
    ledger
        .add_member(&team.id, "m1".into(), MemberRole::Member, None, None)
        .await
        .unwrap();
    let pools = dir.pools().clone();
    for i in 0..300 {
        pools.reseat(&pool, "m1");
        let seated = pools.member(&dir, &store, &pool, "m1").await;
        assert!(seated.is_ok(), "call {i}: {seated:?}");
    }
    assert!(pools.seat(&pool, "m1").await.is_some());
    dir.shutdown().await;
    cleanup(&url, pg).await;
}
