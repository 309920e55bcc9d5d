//! Reads a replica fails or never answers, health checks beside client
//! traffic, and a replica rejoining the rotation.

use crate::support::*;

#[tokio::test]
async fn reads_lost_with_a_replica_are_retried_on_another() {
    let (_a, b, lb, mut client) = leader_and_reading_follower().await;
    // b swallows reads, then dies with them in flight: every read must
    // still be answered, by a, under its own id.
    b.s().hang_reads = true;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..40 {
        ids.insert(
            client
                .send(Op::Get {
                    key: Bytes::from_static(b"k"),
                })
                .await,
        );
    }
    until("b holds some of the reads", || b.s().gets_served >= 5).await;
    b.kill();
    while !ids.is_empty() {
        let response = client.recv().await;
        assert!(ids.remove(&response.id), "unknown or repeated id");
        assert_eq!(
            response.reply,
            Reply::Value(Some(Bytes::from_static(b"v"))),
            "a read lost with b was not retried"
        );
    }
    lb.stop().await;
}

#[tokio::test]
async fn reads_a_live_replica_never_answers_are_retried_after_their_timeout() {
    let (_a, b, lb, mut client) = leader_and_reading_follower().await;
    // b keeps answering health checks but swallows reads: only the read
    // timeout (3 s) can send them elsewhere.
    b.s().hang_reads = true;
    let seen = b.s().gets_served;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        ids.insert(
            client
                .send(Op::Get {
                    key: Bytes::from_static(b"k"),
                })
                .await,
        );
    }
    while !ids.is_empty() {
        let response = client.recv().await;
        assert!(ids.remove(&response.id), "unknown or repeated id");
        assert_eq!(response.reply, Reply::Value(Some(Bytes::from_static(b"v"))));
    }
    assert!(
        b.s().gets_served > seen,
        "no read went to b: nothing was tested"
    );
    lb.stop().await;
}

#[tokio::test]
async fn health_checks_do_not_queue_behind_client_requests() {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    // The next set wedges the connection it arrives on, like a long queue
    // of pipelined writes: whatever is sent after it there waits.
    a.s().wedge_on_set = true;
    client
        .send(Op::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v2"),
        })
        .await;
    until("the set reached the leader", || a.s().sets_seen >= 2).await;
    let seen = a.s().statuses;
    // Many times down_after heartbeats of checks answered: the leader is
    // busy, not dead, and keeps leading.
    until("health checks keep being answered", || {
        a.s().statuses >= seen + 20
    })
    .await;
    assert!(is_leader_at(&a, 2), "the busy leader was deposed");
    assert!(b.s().promotes.is_empty(), "the follower was promoted");
    lb.stop().await;
}

#[tokio::test]
async fn a_replica_that_comes_back_rejoins_the_read_rotation() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let b = Fake::start(2, NodeRole::Follower, 1, 0).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    let addr = b.addr;
    b.kill();
    let mut status = Client::connect(lb.addr).await;
    let deadline = Instant::now() + T;
    loop {
        let Ok(report) = status.call(Op::Status).await.into_cluster_report() else {
            panic!("status is not a cluster view")
        };
        let c = report.status;
        if !c.replicas[1].healthy {
            break;
        }
        assert!(Instant::now() < deadline, "b never marked down");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b2 = Fake::restart(
        addr,
        FakeState {
            id: 2,
            role: Some(NodeRole::Follower),
            epoch: Epoch::new(1, PAST),
            last_epoch: Epoch::new(1, PAST),
            ..FakeState::default()
        },
    )
    .await;
    let deadline = Instant::now() + T;
    while b2.s().gets_served == 0 {
        assert!(Instant::now() < deadline, "b never served a read again");
        assert!(matches!(client.get("k").await, Reply::Value(_)));
    }
    lb.stop().await;
}

#[tokio::test]
async fn a_follower_that_stops_applying_gets_no_reads_until_it_catches_up() {
    use semikv_lb::group::table::CATCH_UP_ROUNDS;
    let (a, b, lb, mut client) = leader_and_reading_follower().await;
    // The leader commits on; b applies nothing more (a stream that fails,
    // a snapshot it cannot install): its status says so.
    let applied = b.s().last_index;
    a.s().last_index = applied + 1000;
    let rounds = |f: &Fake| f.s().statuses;
    let seen = rounds(&a);
    until("the window of rounds passes", || {
        rounds(&a) >= seen + CATCH_UP_ROUNDS as u64 + 2
    })
    .await;
    let served = b.s().gets_served;
    for _ in 0..20 {
        assert!(matches!(client.get("k").await, Reply::Value(_)));
    }
    assert_eq!(
        b.s().gets_served,
        served,
        "a follower that fell behind was read from"
    );
    // Caught up: back in the rotation.
    b.s().last_index = applied + 1000;
    let seen = rounds(&a);
    until("two more rounds", || rounds(&a) >= seen + 2).await;
    for _ in 0..20 {
        assert!(matches!(client.get("k").await, Reply::Value(_)));
    }
    assert!(
        b.s().gets_served > served,
        "a follower that caught up got no reads"
    );
    lb.stop().await;
}
