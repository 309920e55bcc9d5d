//! Replication, epochs and failover rules of real replicas on loopback
//! sockets, with the test playing the balancer.

use crate::support::{elect, start_many, wait_for_snapshot_file, Peer, Server};
use bytes::Bytes;
use semikv_protocol::{Epoch, ErrorReply, LogIndex, Message, NodeRole, Op, Reply, Role, WireError};

fn b(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_serves_set_get_delete() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(1, dir.path()).await;
    let mut admins = elect(&servers, 0, 1, 0).await;
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    assert_eq!(c.request(Op::Ping).await, Reply::Pong);
    c.set_ok("k", "v1").await;
    c.set_ok("k", "v=2").await;
    assert_eq!(c.get("k").await, b("v=2"));
    assert!(matches!(c.del("k").await, Reply::Written { .. }));
    assert_eq!(c.get("k").await, None);
    let status = admins[0].status().await;
    assert_eq!(status.role, NodeRole::Leader);
    assert_eq!(status.epoch, Epoch::from_raw(1));
    assert_eq!(
        status.last_index,
        LogIndex(4),
        "no-op, two sets, one delete"
    );
    assert_eq!(status.commit_index, LogIndex(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_mix_in_one_write_is_answered_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(1, dir.path()).await;
    let _admins = elect(&servers, 0, 1, 0).await;
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    c.set_ok("k", "v").await;
    // Reads answered at once and writes answered later, interleaved, in one
    // write: every request gets exactly its own answer.
    let mut expected = std::collections::HashMap::new();
    let mut msgs = Vec::new();
    for i in 0..600u64 {
        let (op, reply) = match i % 6 {
            0 => (
                Op::Get {
                    key: Bytes::from_static(b"k"),
                },
                Some(Reply::Value(b("v"))),
            ),
            1 => (
                Op::Get {
                    key: Bytes::from_static(b"absent"),
                },
                Some(Reply::Value(None)),
            ),
            2 => (Op::Ping, Some(Reply::Pong)),
            3 => (Op::Get { key: Bytes::new() }, None),
            4 => (
                Op::Set {
                    key: Bytes::from(format!("w{i}")),
                    value: Bytes::from_static(b"x"),
                },
                None,
            ),
            _ => (Op::Status, None),
        };
        expected.insert(i, (i % 6, reply));
        msgs.push(Message::Request(semikv_protocol::Request {
            id: semikv_protocol::RequestId(1000 + i),
            op,
        }));
    }
    // An admin request on a client connection ends it, after the answers to
    // everything before it.
    msgs.push(Message::Request(semikv_protocol::Request {
        id: semikv_protocol::RequestId(1),
        op: Op::Fence(semikv_protocol::Fence {
            epoch: Epoch::from_raw(9),
        }),
    }));
    c.send_all(msgs).await;
    for _ in 0..600 {
        let Some(Message::Response(r)) = c.next_message().await else {
            panic!("connection ended early");
        };
        let (kind, want) = expected
            .remove(&(r.id.0 - 1000))
            .unwrap_or_else(|| panic!("unknown or repeated id {:?}", r.id));
        match (kind, want) {
            (_, Some(want)) => assert_eq!(r.reply, want),
            (3, None) => assert!(matches!(r.reply, Reply::Error(ErrorReply::Invalid { .. }))),
            (4, None) => assert!(matches!(r.reply, Reply::Written { .. })),
            (_, None) => assert!(matches!(r.reply, Reply::NodeReport(_))),
        }
    }
    assert!(expected.is_empty());
    assert!(
        matches!(
            c.next_message().await,
            Some(Message::Reject(WireError::WrongRole { .. }))
        ),
        "the fence was not refused after the answers"
    );
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    assert_eq!(c.get("w4").await, b("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_on_a_leader_that_has_not_committed_are_each_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(1, dir.path()).await;
    // One synchronous follower required and none there: the promotion's
    // no-op never commits, so the new leader may not answer reads.
    let mut admin = Peer::connect(servers[0].addr, Role::Balancer).await;
    admin.promote(1, 1).await.unwrap();
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    let msgs = (0..50u64)
        .map(|i| {
            Message::Request(semikv_protocol::Request {
                id: semikv_protocol::RequestId(i),
                op: Op::Get {
                    key: Bytes::from_static(b"k"),
                },
            })
        })
        .collect();
    c.send_all(msgs).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50 {
        let Some(Message::Response(r)) = c.next_message().await else {
            panic!("connection ended early");
        };
        assert!(ids.insert(r.id.0), "id {} answered twice", r.id.0);
        assert!(
            matches!(r.reply, Reply::Error(ErrorReply::Unavailable { .. })),
            "{:?}",
            r.reply
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_on_a_follower_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(3, dir.path()).await;
    let _admins = elect(&servers, 0, 1, 1).await;
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    let mut f2 = Peer::connect(servers[1].addr, Role::Client).await;
    let mut f3 = Peer::connect(servers[2].addr, Role::Client).await;
    let mut last = LogIndex(0);
    for i in 0..100 {
        let index = c.set_ok(&format!("key{i}"), &format!("value{i}")).await;
        // No waiting here: the acknowledgement itself must imply a copy.
        let held = f2
            .status()
            .await
            .last_index
            .max(f3.status().await.last_index);
        assert!(
            held >= index,
            "write {index} acked but followers hold only {held}"
        );
        last = index;
    }
    // Followers apply everything once the leader's commit index reaches them.
    for f in [&mut f2, &mut f3] {
        f.wait_status("follower commit", |s| s.applied_index >= last)
            .await;
        assert_eq!(f.get("key99").await, b("value99"));
        assert_eq!(f.get("key0").await, b("value0"));
        // A follower refuses writes and names the leader.
        assert_eq!(
            f.set("x", "y").await,
            Reply::Error(ErrorReply::NotLeader {
                leader: Some(servers[0].addr.to_string())
            })
        );
    }
    let mut leader_admin = Peer::connect(servers[0].addr, Role::Balancer).await;
    let status = leader_admin.status().await;
    assert_eq!(status.followers.len(), 2);
    assert!(status.followers.iter().all(|f| f.connected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_follower_a_write_fails_with_not_enough_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(1, dir.path()).await;
    let mut admin = Peer::connect(servers[0].addr, Role::Balancer).await;
    admin.fence(1).await.unwrap();
    admin.promote_with(1, 1, 200).await.unwrap();
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    assert_eq!(
        c.set("k", "v").await,
        Reply::Error(ErrorReply::NotEnoughReplicas {
            acked: 0,
            required: 1
        })
    );
    // Nothing of this leader's epoch ever committed, so it cannot vouch for
    // its map: reads are refused rather than served from it.
    let read = c
        .request(Op::Get {
            key: Bytes::from_static(b"k"),
        })
        .await;
    assert!(
        matches!(read, Reply::Error(ErrorReply::Unavailable { .. })),
        "{read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_truncates_its_unacknowledged_tail() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(2, dir.path()).await;
    // Replica 1 leads epoch 1 alone: its write cannot be acknowledged.
    let mut a1 = Peer::connect(servers[0].addr, Role::Balancer).await;
    a1.fence(1).await.unwrap();
    a1.promote_with(1, 1, 200).await.unwrap();
    let mut c1 = Peer::connect(servers[0].addr, Role::Client).await;
    assert!(matches!(
        c1.set("lost", "x").await,
        Reply::Error(ErrorReply::NotEnoughReplicas { .. })
    ));
    assert_eq!(a1.status().await.last_index, LogIndex(2));
    // Replica 2 is elected at epoch 2 and replica 1 told to follow it.
    let mut a2 = Peer::connect(servers[1].addr, Role::Balancer).await;
    a1.fence(2).await.unwrap();
    a2.fence(2).await.unwrap();
    a2.promote(2, 1).await.unwrap();
    a1.follow(2, &servers[1]).await.unwrap();
    let mut c2 = Peer::connect(servers[1].addr, Role::Client).await;
    let index = c2.set_ok("kept", "y").await;
    let s1 = a1
        .wait_status("old leader follows", |s| s.applied_index >= index)
        .await;
    assert_eq!(s1.role, NodeRole::Follower);
    assert_eq!(
        s1.last_epoch,
        Epoch::from_raw(2),
        "the epoch-1 tail was replaced"
    );
    assert_eq!(c1.get("lost").await, None);
    assert_eq!(c1.get("kept").await, b("y"));
    assert_eq!(c2.get("lost").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(2, dir.path()).await;
    let mut a1 = Peer::connect(servers[0].addr, Role::Balancer).await;
    a1.fence(5).await.unwrap();
    assert_eq!(
        a1.promote(4, 0).await.unwrap_err(),
        ErrorReply::StaleEpoch {
            got: Epoch::from_raw(4),
            current: Epoch::from_raw(5)
        }
    );
    // A replica told to follow at epoch 6 a leader that only leads epoch 5
    // gets nothing from it: the leader refuses a stream of another epoch.
    a1.promote(5, 0).await.unwrap();
    let mut a2 = Peer::connect(servers[1].addr, Role::Balancer).await;
    a2.follow(6, &servers[0]).await.unwrap();
    let mut c1 = Peer::connect(servers[0].addr, Role::Client).await;
    let index = c1.set_ok("k", "v").await;
    assert!(index > LogIndex(0));
    let leader = a1.status().await;
    assert!(
        leader
            .followers
            .iter()
            .all(|f| f.match_index == LogIndex(0)),
        "{leader:?}"
    );
    assert_eq!(a2.status().await.last_index, LogIndex(0));
    // The same election at the right epoch works.
    a1.fence(6).await.unwrap();
    a1.promote(6, 1).await.unwrap();
    let index = c1.set_ok("k2", "v2").await;
    a2.wait_status("follower at epoch 6", |s| s.applied_index >= index)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ops_from_a_client_connection_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(1, dir.path()).await;
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    c.send(Message::Request(semikv_protocol::Request {
        id: semikv_protocol::RequestId(1),
        op: Op::Fence(semikv_protocol::Fence {
            epoch: Epoch::from_raw(9),
        }),
    }))
    .await;
    match c.next_message().await {
        Some(Message::Reject(WireError::WrongRole { role, what })) => {
            assert_eq!(role, Role::Client);
            assert_eq!(what, "fence");
        }
        other => panic!("expected a WrongRole rejection, got {other:?}"),
    }
    let mut admin = Peer::connect(servers[0].addr, Role::Balancer).await;
    assert_eq!(
        admin.status().await.epoch,
        Epoch::from_raw(0),
        "nothing was fenced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = start_many(3, dir.path()).await;
    let mut admins = elect(&servers, 0, 1, 1).await;
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    let mut first = LogIndex(0);
    for i in 0..50 {
        first = c.set_ok(&format!("a{i}"), "1").await;
    }
    // Semi-sync waits for one follower: follower 3 may still lag. It holds
    // the first 50 writes before it stops, so that it has a log to recover.
    admins[2]
        .wait_status("follower 3 holds the first writes", |s| {
            s.last_index >= first
        })
        .await;
    // Stop follower 3; the leader keeps committing with follower 2.
    let f3 = servers.pop().unwrap();
    let (addr, path) = (f3.addr, f3.dir.clone());
    f3.stop().await.unwrap();
    admins.pop();
    let mut last = LogIndex(0);
    for i in 0..50 {
        last = c.set_ok(&format!("b{i}"), "2").await;
    }
    // Restarted on the same address and data, it recovered its own log.
    let f3 = Server::start(3, &path, Some(addr)).await;
    let mut a3 = Peer::connect(f3.addr, Role::Balancer).await;
    let recovered = a3.status().await;
    assert_eq!(recovered.role, NodeRole::Idle);
    assert_eq!(
        recovered.epoch,
        Epoch::from_raw(1),
        "the epoch is persisted"
    );
    assert!(recovered.last_index >= first, "{recovered:?}");
    a3.follow(1, &servers[0]).await.unwrap();
    a3.wait_status("restarted follower catches up", |s| s.applied_index >= last)
        .await;
    let mut r3 = Peer::connect(f3.addr, Role::Client).await;
    assert_eq!(r3.get("a0").await, b("1"));
    assert_eq!(r3.get("b49").await, b("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(1, dir.path()).await;
    let _admins = elect(&servers, 0, 1, 0).await;
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    for i in 0..200 {
        c.set_ok(&format!("k{i}"), &format!("v{i}")).await;
    }
    assert!(matches!(c.del("k7").await, Reply::Written { .. }));
    drop(c);
    let server = servers.into_iter().next().unwrap();
    let (addr, path) = (server.addr, server.dir.clone());
    server.stop().await.unwrap();
    let server = Server::start(1, &path, Some(addr)).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    admin.fence(2).await.unwrap();
    admin.promote(2, 0).await.unwrap();
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.get("k0").await, b("v0"));
    assert_eq!(c.get("k199").await, b("v199"));
    assert_eq!(c.get("k7").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_snapshot_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for id in 1..=3 {
        servers.push(
            Server::start_with(id, &dir.path().join(format!("r{id}")), None, |c| {
                c.snapshot_bytes = 4096;
                c.segment_bytes = 4096;
            })
            .await,
        );
    }
    // Replica 3 stays out while the leader writes and compacts its log.
    let mut a1 = Peer::connect(servers[0].addr, Role::Balancer).await;
    let mut a2 = Peer::connect(servers[1].addr, Role::Balancer).await;
    let mut a3 = Peer::connect(servers[2].addr, Role::Balancer).await;
    for a in [&mut a1, &mut a2, &mut a3] {
        a.fence(1).await.unwrap();
    }
    a1.promote(1, 1).await.unwrap();
    a2.follow(1, &servers[0]).await.unwrap();
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    let mut last = LogIndex(0);
    for i in 0..400 {
        last = c.set_ok(&format!("key{i:04}"), &"x".repeat(64)).await;
    }
    a1.wait_status("leader applies", |s| s.applied_index >= last)
        .await;
    wait_for_snapshot_file(&servers[0].dir).await;
    a3.follow(1, &servers[0]).await.unwrap();
    let s3 = a3
        .wait_status("snapshot catch-up", |s| s.applied_index >= last)
        .await;
    assert_eq!(s3.last_index, last);
    // It got there through a snapshot, installed on its own disk.
    wait_for_snapshot_file(&servers[2].dir).await;
    let mut r3 = Peer::connect(servers[2].addr, Role::Client).await;
    assert_eq!(r3.get("key0000").await, b(&"x".repeat(64)));
    assert_eq!(r3.get("key0399").await, b(&"x".repeat(64)));
    // And the stream continues after the snapshot.
    let index = c.set_ok("after", "snap").await;
    a3.wait_status("stream after snapshot", |s| s.applied_index >= index)
        .await;
    assert_eq!(r3.get("after").await, b("snap"));
}
