//! Routing: writes to the leader, reads in bursts over the healthy replicas,
//! pipelining, requests too large for a link, half-closed clients.

use crate::support::*;

#[tokio::test]
async fn writes_go_to_the_leader_and_reads_rotate_over_healthy_replicas() {
    let (a, b, c, lb, mut client) = leader_of_three_with_k().await;
    assert_eq!(a.s().map.len(), 1);
    assert_eq!(b.s().map.len() + c.s().map.len(), 0);
    for _ in 0..9 {
        client.get("k").await;
    }
    for f in [&a, &b, &c] {
        assert!(f.s().gets_served >= 1, "replica {} got no read", f.s().id);
    }
    // A down replica leaves the rotation.
    c.kill();
    let before = (a.s().gets_served, b.s().gets_served);
    for _ in 0..6 {
        assert!(matches!(client.get("k").await, Reply::Value(_)));
    }
    let after = (a.s().gets_served, b.s().gets_served);
    assert_eq!(
        after.0 - before.0 + after.1 - before.1,
        6,
        "every read answered by a live replica"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_burst_of_pipelined_reads_goes_to_one_replica() {
    let (a, b, c, lb, mut client) = leader_of_three_with_k().await;
    // One read at a time still rotates over every replica.
    for _ in 0..9 {
        client.get("k").await;
    }
    let served = || [a.s().gets_served, b.s().gets_served, c.s().gets_served];
    for f in [&a, &b, &c] {
        assert!(f.s().gets_served >= 1, "replica {} got no read", f.s().id);
    }
    let mut used_one = 0;
    for _ in 0..3 {
        let before = served();
        let get = || Op::Get {
            key: Bytes::from("k"),
        };
        let mut ids = client.send_burst((0..30).map(|_| get()).collect()).await;
        let mut got = Vec::new();
        for _ in 0..30 {
            let r = client.recv().await;
            assert!(matches!(r.reply, Reply::Value(_)), "{r:?}");
            got.push(r.id);
        }
        got.sort();
        ids.sort();
        assert_eq!(got, ids);
        let after = served();
        let used = (0..3).filter(|&i| after[i] > before[i]).count();
        // Written at once, the burst is taken in one go (on a slow machine
        // perhaps two): its reads go to one replica, so their answers leave
        // together, where round-robin would have used all three.
        assert!(used <= 2, "a burst of 30 reads went to {used} replicas");
        if used == 1 {
            used_one += 1;
        }
    }
    assert!(used_one >= 1, "no burst went to a single replica");
    lb.stop().await;
}

#[tokio::test]
async fn a_client_pipelining_past_its_in_flight_limit_is_still_read() {
    let (a, b, lb) = leader_and_follower(|_| {}).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    // More than the balancer's 1024 slots per client, all in one write, all
    // forwarded and held by the replicas until the balancer has stopped
    // reading at the limit: it must start again as the forwarded answers
    // free their slots, with nothing else of this client's to wake it.
    a.s().hold_reads = true;
    b.s().hold_reads = true;
    let n = 3000;
    let get = || Op::Get {
        key: Bytes::from("k"),
    };
    let mut ids = client.send_burst((0..n).map(|_| get()).collect()).await;
    until("the client's slots are all in use", || {
        a.s().gets_served + b.s().gets_served >= 1024
    })
    .await;
    a.s().hold_reads = false;
    b.s().hold_reads = false;
    let mut got = client.values(n).await;
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    lb.stop().await;
}

/// `op(n)` for the `n` whose request frame (under client id 1) carries a
/// payload of exactly `max` bytes.
fn sized_exactly(max: usize, op: impl Fn(usize) -> Op) -> Op {
    let payload = |n: usize| {
        let mut buf = bytes::BytesMut::new();
        let m = Message::Request(Request {
            id: RequestId(1),
            op: op(n),
        });
        semikv_protocol::frame::encode(&m, usize::MAX, &mut buf).unwrap();
        buf.len() - semikv_protocol::frame::HEADER_LEN
    };
    let mut n = max.saturating_sub(64).max(1);
    n += max.saturating_sub(payload(n));
    while payload(n) < max {
        n += 1;
    }
    assert_eq!(payload(n), max, "could not hit the limit exactly");
    op(n)
}

/// A client's request exactly at the balancer's frame limit is longer than
/// that once it carries the replica link's id (two bytes past 127, where the
/// client's id 1 takes one): it must be refused as invalid, without breaking
/// the link another client's write is waiting on.
async fn oversized_for_the_link_is_refused_alone(big_op: impl Fn(usize) -> Op) {
    let (a, _b, lb) = leader_and_follower(|c| {
        c.max_frame_len = 300;
        // Writes time out 3 s after this.
        c.sync_timeout = Duration::from_millis(100);
    })
    .await;
    let mut warm = Client::connect(lb.addr).await;
    set_until_written(&mut warm, "k", "v").await;
    // Both links' ids pass 127.
    for _ in 0..200 {
        warm.set("k", "v").await;
        warm.get("k").await;
    }
    a.s().hang_writes = true;
    let seen = a.s().sets_seen;
    let mut other = Client::connect(lb.addr).await;
    other
        .send(Op::Set {
            key: Bytes::from("x"),
            value: Bytes::from("1"),
        })
        .await;
    until("the other write reached the leader", || {
        a.s().sets_seen > seen
    })
    .await;
    let mut big = Client::connect(lb.addr).await;
    let reply = big.call(sized_exactly(300, big_op)).await;
    assert!(
        matches!(&reply, Reply::Error(ErrorReply::Invalid { reason }) if reason.contains("too large")),
        "{reply:?}"
    );
    // The other write, never answered by the leader, ends when its time is
    // up, not at once because its link broke.
    let other_reply = other.recv().await.reply;
    assert!(
        matches!(&other_reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains("in time")),
        "{other_reply:?}"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_write_too_large_for_the_link_is_refused_without_breaking_it() {
    oversized_for_the_link_is_refused_alone(|n| Op::Set {
        key: Bytes::from("big"),
        value: Bytes::from(vec![7u8; n]),
    })
    .await;
}

#[tokio::test]
async fn a_read_too_large_for_the_link_is_refused_without_breaking_it() {
    oversized_for_the_link_is_refused_alone(|n| Op::Get {
        key: Bytes::from(vec![b'k'; n]),
    })
    .await;
}

#[tokio::test]
async fn forwarded_reads_are_answered_after_the_client_half_closes() {
    // Both data links open, so the burst is forwarded.
    let (a, b, lb, mut client) = leader_and_reading_follower().await;
    a.s().hold_reads = true;
    b.s().hold_reads = true;
    let served = a.s().gets_served + b.s().gets_served;
    let n = 50;
    let get = || Op::Get {
        key: Bytes::from("k"),
    };
    let ids = client.send_burst((0..n).map(|_| get()).collect()).await;
    until("the burst reached a replica", || {
        a.s().gets_served + b.s().gets_served >= served + n as u64
    })
    .await;
    // The client is done sending; its reads are still in flight.
    client.framed.get_mut().shutdown().await.unwrap();
    a.s().hold_reads = false;
    b.s().hold_reads = false;
    let got = client.values(n).await;
    answered_then_closed(&mut client, got, ids).await;
    lb.stop().await;
}

/// `got` holds every id of `ids` (in any order), and then the balancer
/// closes the connection.
async fn answered_then_closed(
    client: &mut Client,
    mut got: Vec<RequestId>,
    mut ids: Vec<RequestId>,
) {
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    let end = timeout(T, client.framed.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn forwarded_reads_are_retried_when_their_replica_dies_after_a_half_close() {
    let (a, b, lb, mut client) = leader_and_reading_follower().await;
    // b takes reads and never answers; a answers. Bursts rotate over the
    // replicas, so send until one lands on b.
    b.s().hang_reads = true;
    let n = 50;
    let get = || Op::Get {
        key: Bytes::from("k"),
    };
    let mut ids = Vec::new();
    let mut got = Vec::new();
    loop {
        let before = (a.s().gets_served, b.s().gets_served);
        ids.extend(client.send_burst((0..n).map(|_| get()).collect()).await);
        until("the burst reached a replica", || {
            a.s().gets_served + b.s().gets_served >= before.0 + before.1 + n as u64
        })
        .await;
        if b.s().gets_served > before.1 {
            break;
        }
        got.extend(client.values(n).await);
    }
    client.framed.get_mut().shutdown().await.unwrap();
    b.kill();
    got.extend(client.values(ids.len() - got.len()).await);
    answered_then_closed(&mut client, got, ids).await;
    lb.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_by_id() {
    let (_a, _b, lb) = leader_and_follower(|_| {}).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "warm", "up").await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let op = if i % 2 == 0 {
            Op::Set {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from("v"),
            }
        } else {
            Op::Get {
                key: Bytes::from("warm"),
            }
        };
        ids.push(client.send(op).await);
    }
    let mut got = Vec::new();
    for _ in 0..200 {
        let r = client.recv().await;
        assert!(
            matches!(r.reply, Reply::Written { .. } | Reply::Value(_)),
            "{r:?}"
        );
        got.push(r.id);
    }
    got.sort();
    assert_eq!(got, ids);
    lb.stop().await;
}
