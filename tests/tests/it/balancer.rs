//! Three replicas behind `semikv-lb`: routing, cluster status, failover.

use std::time::Duration;

use bytes::Bytes;
use semikv_protocol::*;
use semikv_tests::client::{value, written};
use semikv_tests::{Client, Cluster, Deadline, RawConn};

use crate::CONVERGE;

/// A cluster whose balancer has elected a leader: a write went through.
async fn ready_cluster() -> (Cluster, Client) {
    let cluster = Cluster::with_balancer(3, &[], &[]).await.unwrap();
    let mut c = cluster.connect_balancer().await.unwrap();
    assert_eq!(c.welcome().node, None, "the balancer has no replica id");
    let r = c.set_until_acked("warmup", "1", CONVERGE).await;
    cluster.explain(r).unwrap();
    (cluster, c)
}

#[tokio::test]
async fn round_trip_through_the_balancer() {
    let (cluster, mut c) = ready_cluster().await;
    let i = written(&c.set("k", "v").await.unwrap()).unwrap();
    // Reads may go to a follower that has not applied yet (stale reads are
    // allowed); once every replica applied the write, every read sees it.
    for r in 0..3 {
        let mut rc = cluster.connect(r, Role::Client).await.unwrap();
        let deadline = Deadline::new(CONVERGE, "replicas to apply");
        while rc.status().await.unwrap().applied_index < i {
            deadline.tick().await.unwrap();
        }
    }
    for _ in 0..9 {
        assert_eq!(value(&c.get("k").await.unwrap()).unwrap(), Some("v".into()));
    }
    let d = written(&c.del("k").await.unwrap()).unwrap();
    assert!(d > i);
    assert_eq!(c.ping().await.unwrap(), Reply::Pong);
}

#[tokio::test]
async fn cluster_status_lists_every_replica_and_the_leader() {
    let (mut cluster, mut c) = ready_cluster().await;
    let status = c.cluster_status().await.unwrap();
    assert_eq!(status.replicas.len(), 3, "{status:?}");
    let leader = cluster.leader_index().await.unwrap().unwrap();
    assert_eq!(
        status.leader,
        Some(cluster.replica(leader).addr.to_string()),
        "{status:?}"
    );
    assert!(status.epoch >= Epoch::from_raw(1));
    for (i, addr) in cluster.replica_addrs().iter().enumerate() {
        let row = status
            .replicas
            .iter()
            .find(|r| r.addr == addr.to_string())
            .unwrap_or_else(|| panic!("replica {addr} missing from {status:?}"));
        assert_eq!(row.id, Some(ReplicaId(cluster.replica(i).id)));
        assert!(row.healthy, "{row:?}");
    }
}

#[tokio::test]
async fn gets_keep_working_when_a_follower_dies() {
    let (mut cluster, mut c) = ready_cluster().await;
    let i = written(&c.set("k", "v").await.unwrap()).unwrap();
    let leader = cluster.leader_index().await.unwrap().unwrap();
    let follower = (leader + 1) % 3;
    let survivor = 3 - leader - follower;
    let mut sc = cluster.connect(survivor, Role::Client).await.unwrap();
    let deadline = Deadline::new(CONVERGE, "the surviving follower to apply");
    while sc.status().await.unwrap().applied_index < i {
        deadline.tick().await.unwrap();
    }
    cluster.kill_replica(follower).unwrap();
    // The balancer takes the dead replica out of rotation; after that every
    // read succeeds.
    let addr = cluster.replica(follower).addr.to_string();
    let deadline = Deadline::new(CONVERGE, "the balancer to mark the follower down");
    loop {
        let status = c.cluster_status().await.unwrap();
        if status.replicas.iter().any(|r| r.addr == addr && !r.healthy) {
            break;
        }
        deadline.tick().await.unwrap();
    }
    for _ in 0..12 {
        assert_eq!(value(&c.get("k").await.unwrap()).unwrap(), Some("v".into()));
    }
}

#[tokio::test]
async fn kill_9_of_the_leader_fails_over_without_losing_acked_writes() {
    let (mut cluster, mut c) = ready_cluster().await;
    let mut acked = Vec::new();
    for i in 0..50u32 {
        let reply = c.set(format!("k{i}"), format!("v{i}")).await.unwrap();
        written(&reply).unwrap();
        acked.push(i);
    }
    let old = cluster.leader_index().await.unwrap().unwrap();
    let old_epoch = c.cluster_status().await.unwrap().epoch;
    cluster.kill_replica(old).unwrap();

    let r = c.set_until_acked("after", "failover", CONVERGE).await;
    cluster.explain(r).unwrap();
    let new = cluster.leader_index().await.unwrap().unwrap();
    assert_ne!(new, old);
    let status = c.cluster_status().await.unwrap();
    assert!(status.epoch > old_epoch, "{status:?}");

    // Every acknowledged write is on the new leader.
    let mut lc = cluster.connect(new, Role::Client).await.unwrap();
    for i in &acked {
        assert_eq!(
            value(&lc.get(format!("k{i}")).await.unwrap()).unwrap(),
            Some(Bytes::from(format!("v{i}"))),
            "acknowledged k{i} lost"
        );
    }

    // The old leader returns, is told to follow, and catches up.
    cluster.restart_replica(old).await.unwrap();
    let mut oc = cluster.connect(old, Role::Client).await.unwrap();
    let deadline = Deadline::new(CONVERGE, "the old leader to rejoin as a follower");
    loop {
        let s = oc.status().await.unwrap();
        if s.role == NodeRole::Follower
            && value(&oc.get("after").await.unwrap()).unwrap() == Some("failover".into())
        {
            break;
        }
        deadline.tick().await.unwrap();
    }
    assert_eq!(cluster.leader_index().await.unwrap(), Some(new));
}

#[tokio::test]
async fn hostile_input_on_the_balancer_costs_one_connection() {
    let (cluster, mut c) = ready_cluster().await;
    let mut raw = RawConn::connect(cluster.balancer_addr()).await.unwrap();
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await
        .unwrap();
    let got = raw.recv_until_closed().await.unwrap();
    assert!(
        matches!(
            got.as_slice(),
            [Message::Reject(WireError::FrameTooLarge { .. })]
        ),
        "{got:?}"
    );
    let mut hello = Hello::new(Role::Client, None);
    hello.magic = 1;
    let err = Client::connect_as(cluster.balancer_addr(), hello)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("magic"), "{err:#}");
    // The existing client was not disturbed.
    let reply = tokio::time::timeout(Duration::from_secs(10), c.ping())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, Reply::Pong);
}

#[tokio::test]
async fn writes_in_flight_through_the_balancer_when_the_leader_dies() {
    let (mut cluster, mut c) = ready_cluster().await;
    let mut keys = std::collections::BTreeMap::new();
    for i in 0..300u32 {
        let id = c
            .send(Op::Set {
                key: format!("k{i}").into(),
                value: format!("v{i}").into(),
            })
            .await
            .unwrap();
        keys.insert(id, i);
    }
    let mut acked = Vec::new();
    let mut answered = 0;
    while acked.len() < 20 {
        let resp = c.recv().await.unwrap();
        answered += 1;
        if let Reply::Written { .. } = resp.reply {
            acked.push(keys[&resp.id]);
        }
    }
    let old = cluster.leader_index().await.unwrap().unwrap();
    cluster.kill_replica(old).unwrap();
    // The balancer answers every request: written, or an error saying the
    // outcome is unknown / no leader. It never drops one.
    while answered < keys.len() {
        let resp = cluster.explain(c.recv().await).unwrap();
        answered += 1;
        match resp.reply {
            Reply::Written { .. } => acked.push(keys[&resp.id]),
            Reply::Error(
                ErrorReply::Indeterminate { .. }
                | ErrorReply::Unavailable { .. }
                | ErrorReply::NotEnoughReplicas { .. }
                | ErrorReply::NotLeader { .. },
            ) => {}
            other => panic!("unexpected reply to a write: {other:?}"),
        }
    }
    let r = c.set_until_acked("after", "failover", CONVERGE).await;
    cluster.explain(r).unwrap();
    let new = cluster.leader_index().await.unwrap().unwrap();
    let mut lc = cluster.connect(new, Role::Client).await.unwrap();
    for i in &acked {
        assert_eq!(
            value(&lc.get(format!("k{i}")).await.unwrap()).unwrap(),
            Some(Bytes::from(format!("v{i}"))),
            "acknowledged k{i} lost ({} acknowledged)",
            acked.len()
        );
    }
}

#[tokio::test]
async fn a_frozen_leader_is_replaced_and_cannot_acknowledge_when_it_wakes() {
    let (mut cluster, mut c) = ready_cluster().await;
    written(&c.set("k", "1").await.unwrap()).unwrap();
    let old = cluster.leader_index().await.unwrap().unwrap();
    // A connection to the old leader opened while it still leads.
    let mut direct = cluster.connect(old, Role::Client).await.unwrap();
    cluster.replica_mut(old).proc.stop().unwrap();

    let r = c.set_until_acked("k", "2", CONVERGE).await;
    cluster.explain(r).unwrap();
    cluster.replica_mut(old).proc.cont().unwrap();

    // Woken, it may still believe it leads until the balancer reaches it, but
    // its followers are fenced: it must not acknowledge a write.
    let reply = tokio::time::timeout(Duration::from_secs(20), direct.set("k", "stale"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !matches!(reply, Reply::Written { .. }),
        "a deposed leader acknowledged a write: {reply:?}"
    );

    // The balancer tells it to follow; it converges on the new value.
    let mut oc = cluster.connect(old, Role::Client).await.unwrap();
    let deadline = Deadline::new(CONVERGE, "the old leader to follow and catch up");
    loop {
        let s = oc.status().await.unwrap();
        let seen = value(&oc.get("k").await.unwrap()).unwrap();
        // Guarantee 3: its unacknowledged write is never readable.
        assert_ne!(seen, Some("stale".into()), "a rolled-back write was read");
        if s.role == NodeRole::Follower && seen == Some("2".into()) {
            break;
        }
        if deadline.tick().await.is_err() {
            panic!("old leader never rejoined: {s:?}\n{}", cluster.logs());
        }
    }
    let new = cluster.leader_index().await.unwrap().unwrap();
    assert_ne!(new, old);
}

#[tokio::test]
async fn with_every_follower_down_writes_fail_and_reads_are_served() {
    let cluster = Cluster::with_balancer(3, &[], &["--sync-timeout-ms", "300"])
        .await
        .unwrap();
    let mut cluster = cluster;
    let mut c = cluster.connect_balancer().await.unwrap();
    let i = cluster
        .explain(c.set_until_acked("k", "v", CONVERGE).await)
        .unwrap();
    let leader = cluster.leader_index().await.unwrap().unwrap();
    // The leader has the write applied; reads will only go to it.
    cluster.wait_applied(leader, i).await.unwrap();
    for f in (0..3).filter(|&f| f != leader) {
        cluster.kill_replica(f).unwrap();
    }
    let deadline = Deadline::new(CONVERGE, "the balancer to mark both followers down");
    loop {
        let status = c.cluster_status().await.unwrap();
        if status.replicas.iter().filter(|r| !r.healthy).count() == 2 {
            break;
        }
        deadline.tick().await.unwrap();
    }
    let reply = c.set("lonely", "write").await.unwrap();
    assert!(
        matches!(
            reply,
            Reply::Error(ErrorReply::NotEnoughReplicas {
                acked: 0,
                required: 1
            })
        ),
        "{reply:?}"
    );
    for _ in 0..6 {
        assert_eq!(value(&c.get("k").await.unwrap()).unwrap(), Some("v".into()));
    }
}

#[tokio::test]
async fn a_restarted_follower_catches_up_and_serves_reads_again() {
    let (mut cluster, mut c) = ready_cluster().await;
    let leader = cluster.leader_index().await.unwrap().unwrap();
    let follower = (leader + 1) % 3;
    let addr = cluster.replica(follower).addr.to_string();
    cluster.kill_replica(follower).unwrap();
    let mut last = LogIndex(0);
    for i in 0..100u32 {
        last = written(&c.set(format!("k{i}"), format!("v{i}")).await.unwrap()).unwrap();
    }
    cluster.restart_replica(follower).await.unwrap();
    let status = cluster
        .explain(cluster.wait_applied(follower, last).await)
        .unwrap();
    assert_eq!(status.role, NodeRole::Follower);
    // Back in the balancer's view as healthy, hence in the read rotation.
    let deadline = Deadline::new(CONVERGE, "the balancer to see the follower up");
    loop {
        let status = c.cluster_status().await.unwrap();
        if status.replicas.iter().any(|r| r.addr == addr && r.healthy) {
            break;
        }
        deadline.tick().await.unwrap();
    }
    let mut fc = cluster.connect(follower, Role::Client).await.unwrap();
    assert_eq!(
        value(&fc.get("k99").await.unwrap()).unwrap(),
        Some("v99".into())
    );
    // Every replica applied everything, so every read through the balancer,
    // whichever replica it lands on, sees the last write.
    for r in 0..3 {
        cluster.wait_applied(r, last).await.unwrap();
    }
    for _ in 0..9 {
        assert_eq!(
            value(&c.get("k99").await.unwrap()).unwrap(),
            Some("v99".into())
        );
    }
}

#[tokio::test]
async fn a_restarted_balancer_adopts_the_running_leader() {
    let (mut cluster, mut c) = ready_cluster().await;
    let leader = cluster.leader_index().await.unwrap().unwrap();
    let epoch = c.cluster_status().await.unwrap().epoch;
    drop(c);
    cluster.restart_balancer(&[]).await.unwrap();
    let mut c = cluster.connect_balancer().await.unwrap();
    cluster
        .explain(c.set_until_acked("after", "restart", CONVERGE).await)
        .unwrap();
    let status = c.cluster_status().await.unwrap();
    assert_eq!(status.epoch, epoch, "no new election: {status:?}");
    assert_eq!(
        status.leader,
        Some(cluster.replica(leader).addr.to_string())
    );
    assert_eq!(cluster.leader_index().await.unwrap(), Some(leader));
}
