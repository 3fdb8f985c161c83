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

async fn eventually_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}
