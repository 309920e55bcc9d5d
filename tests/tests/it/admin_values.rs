//! Absurd admin values from a peer that plays coordinator (issue #16,
//! epochs and admin values): they cost the cluster nothing lasting. A
//! leader promoted on terms it can never meet is replaced; a replica
//! pushed to the last term is passed over, and the others go on electing
//! below it.

use semikv_protocol::{CoordinatorId, Epoch, Role, MAX_TERM};
use semikv_tests::Cluster;

/// The report: a Promote with more sync replicas than the cluster has
/// made every write answer `Indeterminate` and the balancer never failed
/// over. A leader now reports the terms it leads with, and the balancer
/// replaces one that can never commit (here, one promoted by a peer that
/// plays coordinator) with one promoted on its own terms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_promoted_needing_more_followers_than_exist_is_replaced() {
    let cluster = Cluster::with_balancer(3, &[], &[]).await.unwrap();
    let leader = cluster.wait_steady(crate::CONVERGE).await.unwrap();
    let mut c = cluster.connect_balancer().await.unwrap();
    let epoch = c.cluster_status().await.unwrap().epoch;
    // A peer that plays coordinator at the next term: fences everyone,
    // promotes the leader needing 200 followers, points the others at it.
    let hostile =
        semikv_protocol::Epoch::new(epoch.term() + 1, semikv_protocol::CoordinatorId(0xbad)).raw();
    for i in 0..3 {
        let mut admin = cluster.connect(i, Role::Balancer).await.unwrap();
        let fenced = admin.fence(hostile).await.unwrap();
        assert!(semikv_tests::client::node(&fenced).is_ok(), "{fenced:?}");
    }
    let mut admin = cluster.connect(leader, Role::Balancer).await.unwrap();
    let promoted = admin.promote(hostile, 200, 1000).await.unwrap();
    assert!(
        semikv_tests::client::node(&promoted).is_ok(),
        "{promoted:?}"
    );
    let leader_id = u32::try_from(leader + 1).unwrap();
    for i in (0..3).filter(|&i| i != leader) {
        let mut admin = cluster.connect(i, Role::Balancer).await.unwrap();
        let reply = admin
            .follow(hostile, leader_id, cluster.replica(leader).addr)
            .await
            .unwrap();
        assert!(semikv_tests::client::node(&reply).is_ok(), "{reply:?}");
    }
    // Writes flow again, at an epoch above the hostile one.
    let r = c
        .set_until_acked("after", "hostile promote", crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();
    let status = c.cluster_status().await.unwrap();
    assert!(status.epoch.raw() > hostile, "{status:?}");
}

/// The report: a fence at the last term left no epoch any replica would
/// take, and no leader for good. A replica a peer pushed there alone is now
/// passed over: the balancer keeps the leader, does not adopt the peer's
/// "leader" there, and after the leader is killed elects among the others
/// below it, with every acknowledged write kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_pushed_to_the_last_term_is_passed_over() {
    let mut cluster = Cluster::with_balancer(3, &[], &[]).await.unwrap();
    let leader = cluster.wait_steady(crate::CONVERGE).await.unwrap();
    let mut c = cluster.connect_balancer().await.unwrap();
    let r = c.set_until_acked("before", "steady", crate::CONVERGE).await;
    cluster.explain(r).unwrap();
    let victim = (leader + 1) % 3;
    let last = Epoch::new(MAX_TERM, CoordinatorId(0xbad)).raw();
    let mut admin = cluster.connect(victim, Role::Balancer).await.unwrap();
    let fenced = admin.fence(last).await.unwrap();
    assert!(semikv_tests::client::node(&fenced).is_ok(), "{fenced:?}");
    let promoted = admin.promote(last, 1, 1000).await.unwrap();
    assert!(
        semikv_tests::client::node(&promoted).is_ok(),
        "{promoted:?}"
    );
    drop(admin);
    let r = c
        .set_until_acked("beside", "a replica at the last term", crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();
    // Before, an election was due here at once and minted an epoch above
    // the last term, which the others refused.
    cluster.kill_replica(leader).unwrap();
    cluster.restart_replica(leader).await.unwrap();
    let r = c
        .set_until_acked("after", "the leader's restart", crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();
    let status = c.cluster_status().await.unwrap();
    assert!(status.epoch.raw() < last, "{status:?}");
    let victim_addr = cluster.replica(victim).addr.to_string();
    assert_ne!(status.leader, Some(victim_addr), "{status:?}");
    for key in ["before", "beside", "after"] {
        let reply = c.get(key).await.unwrap();
        let ok = matches!(semikv_tests::client::value(&reply), Ok(Some(_)));
        if !ok {
            let status = c.cluster_status().await;
            cluster
                .explain::<()>(Err(anyhow::anyhow!("{key}: {reply:?}; {status:?}")))
                .unwrap();
        }
    }
}
