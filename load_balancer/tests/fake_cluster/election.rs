//! Start-up election and adoption, failover, the cluster status, and several
//! replica groups in one balancer.

use crate::support::*;

#[tokio::test]
async fn startup_promotes_the_most_up_to_date_replica() {
    let a = Fake::start(1, NodeRole::Idle, 2, 5).await;
    let b = Fake::start(2, NodeRole::Idle, 2, 9).await;
    let c = Fake::start(3, NodeRole::Idle, 1, 20).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    until("b leads at epoch 3", || is_leader_at(&b, 3)).await;
    until("a and c follow b", || {
        follows(&a, &b, 3) && follows(&c, &b, 3)
    })
    .await;
    assert_eq!(b.s().promotes, vec![(3, 1)], "one promotion, sync capped");
    assert!(
        a.s().fences >= 1 && c.s().fences >= 1,
        "everyone fenced first"
    );
    lb.stop().await;
}

#[tokio::test]
async fn single_replica_is_promoted_with_no_sync_replicas() {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a])).await;
    until("a leads", || is_leader_at(&a, 1)).await;
    assert_eq!(a.s().promotes, vec![(1, 0)]);
    let mut client = Client::connect(lb.addr).await;
    assert!(matches!(
        set_until_written(&mut client, "k", "v").await,
        Reply::Written { .. }
    ));
    lb.stop().await;
}

#[tokio::test]
async fn live_leader_is_adopted_without_a_new_epoch() {
    let a = Fake::start(1, NodeRole::Leader, 4, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 4, 10).await;
    let c = Fake::start(3, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    until("idle c told to follow a at 4", || follows(&c, &a, 4)).await;
    let mut client = Client::connect(lb.addr).await;
    assert!(matches!(
        set_until_written(&mut client, "k", "v").await,
        Reply::Written { .. }
    ));
    assert_eq!(a.s().map.get(&b"k"[..]).map(|v| &v[..]), Some(&b"v"[..]));
    assert!(is_leader_at(&a, 4));
    assert!(a.s().promotes.is_empty() && b.s().promotes.is_empty());
    assert_eq!(a.s().fences + b.s().fences + c.s().fences, 0, "no election");
    lb.stop().await;
}

#[tokio::test]
async fn killing_the_leader_fails_over_to_the_best_follower() {
    let a = Fake::start(1, NodeRole::Leader, 3, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 3, 8).await;
    let c = Fake::start(3, NodeRole::Follower, 3, 9).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v1").await;
    assert!(is_leader_at(&a, 3));

    a.kill();
    until("c (most up to date) leads at epoch 4", || {
        is_leader_at(&c, 4)
    })
    .await;
    until("b follows c", || follows(&b, &c, 4)).await;
    set_until_written(&mut client, "k", "v2").await;
    assert_eq!(c.s().map.get(&b"k"[..]).map(|v| &v[..]), Some(&b"v2"[..]));
    assert!(b.s().promotes.is_empty());

    // The deposed leader returns, still claiming to lead at epoch 3.
    let old = FakeState {
        id: 1,
        role: Some(NodeRole::Leader),
        epoch: Epoch::new(3, PAST),
        last_epoch: Epoch::new(3, PAST),
        last_index: 11,
        ..FakeState::default()
    };
    let a2 = Fake::restart(a.addr, old).await;
    until("deposed leader follows c", || follows(&a2, &c, 4)).await;
    assert!(
        is_leader_at(&c, 4),
        "no new election for a returning replica"
    );

    let mut status_client = Client::connect(lb.addr).await;
    let Ok(cluster) = status_client.call(Op::Status).await.into_cluster_report() else {
        panic!("status is not a cluster view");
    };
    let cluster = cluster.status;
    assert_eq!(cluster.leader, Some(c.addr.to_string()));
    assert_eq!(cluster.epoch.term(), 4);
    lb.stop().await;
}

#[tokio::test]
async fn two_replica_groups_in_one_balancer_elect_and_fail_over_independently() {
    use semikv_lb::group::ReplicaGroup;
    use semikv_lb::request::Target;
    use semikv_lb::router::{ReadPolicy, Router};
    let a1 = Fake::start(1, NodeRole::Idle, 2, 9).await;
    let b1 = Fake::start(2, NodeRole::Idle, 2, 5).await;
    let a2 = Fake::start(1, NodeRole::Idle, 7, 5).await;
    let b2 = Fake::start(2, NodeRole::Idle, 7, 9).await;
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let one = ReplicaGroup::start(Arc::new(config(&[&a1, &b1])), &shutdown, &tasks);
    let two = ReplicaGroup::start(Arc::new(config(&[&a2, &b2])), &shutdown, &tasks);
    assert_ne!(one.coordinator(), two.coordinator(), "one shared election");
    until("each group elects its own most up-to-date replica", || {
        is_leader_at(&a1, 3) && follows(&b1, &a1, 3) && is_leader_at(&b2, 8) && follows(&a2, &b2, 8)
    })
    .await;
    let router = Router::new(
        vec![one.clone(), two.clone()],
        ReadPolicy::RoundRobin,
        semikv_protocol::Consistency::Stale,
    );
    a2.s().map.insert(Bytes::from("k"), Bytes::from("two"));
    b2.s().map.insert(Bytes::from("k"), Bytes::from("two"));
    let get = Op::Get {
        key: Bytes::from("k"),
    };
    assert_eq!(
        router
            .read_from(
                router.group(1),
                get.clone(),
                Target::Rotation,
                None,
                None,
                2
            )
            .await,
        Reply::Value(Some(Bytes::from("two")))
    );
    assert_eq!(
        router
            .read_from(router.group(0), get, Target::Rotation, None, None, 2)
            .await,
        Reply::Value(None),
        "a read of one group reached the other"
    );

    a1.kill();
    until("group one fails over to b1", || is_leader_at(&b1, 4)).await;
    assert!(is_leader_at(&b2, 8), "group two's leader changed");
    assert_eq!(two.table().leader().map(|l| l.slot), Some(1));
    assert!(a2.s().promotes.is_empty() && b2.s().promotes.len() == 1);
    shutdown.cancel();
    tasks.close();
    timeout(T, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn write_in_flight_when_the_leader_dies_is_indeterminate() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let b = Fake::start(2, NodeRole::Follower, 1, 0).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    a.s().hang_writes = true;
    let id = client
        .send(Op::Set {
            key: Bytes::from("k"),
            value: Bytes::from("lost?"),
        })
        .await;
    until("leader received the write", || a.s().sets_seen >= 2).await;
    a.kill();
    let r = client.recv().await;
    assert_eq!(r.id, id);
    assert!(
        matches!(r.reply, Reply::Error(ErrorReply::Indeterminate { .. })),
        "{:?}",
        r.reply
    );
    until("b takes over", || is_leader_at(&b, 2)).await;
    set_until_written(&mut client, "k", "v3").await;
    lb.stop().await;
}

#[tokio::test]
async fn no_replica_means_unavailable_after_the_bound() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let mut c = Config::new(vec![addr.to_string()]);
    c.heartbeat = Duration::from_millis(20);
    c.derive_waits();
    c.write_wait = Duration::from_millis(200);
    let lb = Balancer::start(c).await;
    let mut client = Client::connect(lb.addr).await;
    for reply in [client.set("k", "v").await, client.get("k").await] {
        match reply {
            Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) => {
                assert!(retry_after_ms > 0)
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(client.call(Op::Ping).await, Reply::Pong);
    lb.stop().await;
}

#[tokio::test]
async fn status_returns_the_cluster_view() {
    let a = Fake::start(1, NodeRole::Leader, 2, 7).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 5).await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let mut c = config(&[&a, &b]);
    c.replicas.push(gone_addr.to_string());
    let lb = Balancer::start(c).await;
    let mut client = Client::connect(lb.addr).await;
    let deadline = Instant::now() + T;
    let cluster = loop {
        if let Ok(report) = client.call(Op::Status).await.into_cluster_report() {
            let cl = report.status;
            if cl.leader.is_some() && cl.replicas.iter().filter(|r| r.healthy).count() == 2 {
                break cl;
            }
        }
        assert!(Instant::now() < deadline, "no cluster view");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(cluster.leader, Some(a.addr.to_string()));
    assert_eq!(cluster.epoch.term(), 2);
    assert_eq!(cluster.replicas.len(), 3);
    let ra = &cluster.replicas[0];
    assert_eq!(
        (ra.id, ra.role, ra.healthy),
        (Some(ReplicaId(1)), NodeRole::Leader, true)
    );
    let rb = &cluster.replicas[1];
    assert_eq!(
        (rb.id, rb.role, rb.lag),
        (Some(ReplicaId(2)), NodeRole::Follower, 2)
    );
    assert_eq!(rb.last_index, LogIndex(5));
    let rc = &cluster.replicas[2];
    assert_eq!(
        (rc.id, rc.healthy, rc.addr.clone()),
        (None, false, gone_addr.to_string())
    );
    lb.stop().await;
}

#[tokio::test]
async fn sync_replicas_is_capped_by_configured_not_healthy_replicas() {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let b = Fake::start(2, NodeRole::Idle, 0, 0).await;
    let c = Fake::start(3, NodeRole::Idle, 0, 0).await;
    b.kill();
    c.kill();
    let mut cfg = config(&[&a, &b, &c]);
    cfg.sync_replicas = 5;
    let lb = Balancer::start(cfg).await;
    until("a leads alone", || is_leader_at(&a, 1)).await;
    assert_eq!(
        a.s().promotes,
        vec![(1, 2)],
        "capped at the 2 other configured replicas"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_leader_that_stops_answering_is_replaced_after_missed_checks() {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    // Hung, not crashed: its connections stay open.
    a.s().mute = true;
    until("b leads at epoch 3", || is_leader_at(&b, 3)).await;
    set_until_written(&mut client, "k", "v2").await;
    assert_eq!(b.s().map.get(&b"k"[..]).map(|v| &v[..]), Some(&b"v2"[..]));
    // It wakes up still claiming to lead at epoch 2 and is told to follow.
    a.s().mute = false;
    until("a follows b", || follows(&a, &b, 3)).await;
    lb.stop().await;
}

#[tokio::test]
async fn a_write_hanging_on_a_stalled_leader_is_indeterminate_at_the_failover() {
    let a = Fake::start(1, NodeRole::Leader, 4, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 4, 10).await;
    let c = Fake::start(3, NodeRole::Follower, 4, 10).await;
    {
        let mut a = a.s();
        a.connected_followers = Some(0);
        a.hang_writes = true;
    }
    let mut cfg = config(&[&a, &b, &c]);
    // Far beyond the test's bounded waits: only dropping the stalled
    // leader's link can answer the write in time.
    cfg.sync_timeout = Duration::from_secs(60);
    let lb = Balancer::start(cfg).await;
    let mut client = Client::connect(lb.addr).await;
    let id = client
        .send(Op::Set {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        })
        .await;
    until("the leader received the write", || a.s().sets_seen >= 1).await;
    let r = client.recv().await;
    assert_eq!(r.id, id);
    assert!(
        matches!(r.reply, Reply::Error(ErrorReply::Indeterminate { .. })),
        "{:?}",
        r.reply
    );
    until("a follower leads at epoch 5", || {
        is_leader_at(&b, 5) || is_leader_at(&c, 5)
    })
    .await;
    lb.stop().await;
}

#[tokio::test]
async fn startup_waits_for_a_slow_replica_that_may_hold_newer_writes() {
    let a = Fake::start(1, NodeRole::Follower, 3, 5).await;
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let mut cfg = config(&[&a]);
    cfg.replicas.push(b_addr.to_string());
    cfg.election_wait = Duration::from_secs(10);
    let lb = Balancer::start(cfg).await;
    let mut status = Client::connect(lb.addr).await;
    let deadline = Instant::now() + T;
    loop {
        let Ok(report) = status.call(Op::Status).await.into_cluster_report() else {
            panic!("status is not a cluster view")
        };
        let c = report.status;
        if c.replicas[0].healthy {
            break;
        }
        assert!(Instant::now() < deadline, "a never healthy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.s().promotes.is_empty(), "elected before b could answer");
    let b = Fake::restart(
        b_addr,
        FakeState {
            id: 2,
            role: Some(NodeRole::Follower),
            epoch: Epoch::new(3, PAST),
            last_epoch: Epoch::new(3, PAST),
            last_index: 9,
            ..FakeState::default()
        },
    )
    .await;
    until("b, the most up to date, leads", || is_leader_at(&b, 4)).await;
    until("a follows b", || follows(&a, &b, 4)).await;
    lb.stop().await;
}
