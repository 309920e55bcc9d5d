//! Replicas run as a deterministic simulation runs them
//! ([`Blocking::Inline`]): every task on one thread whose runtime has a
//! paused, virtual clock; the WAL writer a task of that runtime, file work
//! inline. Only the sockets are real (loopback).

use crate::support::{wait_for_snapshot_file, Peer, Server};
use bytes::Bytes;
use semikv_protocol::{LogIndex, Role};
use semikv_server::Blocking;

fn b(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

async fn start(id: u32, dir: &std::path::Path) -> Server {
    Server::start_with(id, dir, None, |c| c.blocking = Blocking::Inline).await
}

/// Elects `server` alone at `epoch`, a write committing once durable.
async fn lead_alone(server: &Server, epoch: u128) {
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    admin.fence(epoch).await.unwrap();
    admin.promote(epoch, 0).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_replica_on_one_paused_thread_serves_a_write_and_recovers_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(1, &dir.path().join("r1")).await;
    lead_alone(&server, 1).await;
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.set_ok("k", "v").await, LogIndex(2));
    assert_eq!(c.get("k").await, b("v"));
    drop(c);
    let path = server.dir.clone();
    let summary = server.stop().await.unwrap();
    assert_eq!(summary.entries, 2, "the no-op and the write");
    assert!(summary.fsyncs >= 1);

    let server = start(1, &path).await;
    lead_alone(&server, 2).await;
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.get("k").await, b("v"));
    assert_eq!(c.set_ok("k2", "v2").await, LogIndex(4));
    server.stop().await.unwrap();
}

/// A crash (the replica's task aborted: no drain, no final sync) keeps
/// every acknowledged write: with `--fsync always` the writer task synced
/// each before it was answered.
#[tokio::test(start_paused = true)]
async fn a_crash_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(1, &dir.path().join("r1")).await;
    lead_alone(&server, 1).await;
    let mut c = Peer::connect(server.addr, Role::Client).await;
    for i in 0..50 {
        c.set_ok(&format!("k{i}"), &format!("v{i}")).await;
    }
    drop(c);
    let path = server.dir.clone();
    server.abort();
    // Let the aborted tasks be dropped (the writer task with them).
    tokio::task::yield_now().await;

    let server = start(1, &path).await;
    lead_alone(&server, 2).await;
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.get("k0").await, b("v0"));
    assert_eq!(c.get("k49").await, b("v49"));
}

/// A leader ships its snapshot to a follower that is behind it (the file
/// read, the follower's staging file and its install, all inline).
#[tokio::test(start_paused = true)]
async fn a_follower_behind_the_leaders_snapshot_catches_up_inline() {
    let dir = tempfile::tempdir().unwrap();
    // Only the leader takes snapshots of its own: a snapshot file on the
    // follower is one it was sent.
    let servers = [
        Server::start_with(1, &dir.path().join("r1"), None, |c| {
            c.blocking = Blocking::Inline;
            c.snapshot_bytes = 4096;
            c.segment_bytes = 4096;
        })
        .await,
        start(2, &dir.path().join("r2")).await,
    ];
    // The follower joins only once the leader has a snapshot (on one
    // thread, the file appears with the log it covers already dropped).
    let mut leader = Peer::connect(servers[0].addr, Role::Balancer).await;
    leader.fence(1).await.unwrap();
    leader.promote(1, 0).await.unwrap();
    let mut c = Peer::connect(servers[0].addr, Role::Client).await;
    let mut last = LogIndex(0);
    for i in 0..300 {
        last = c.set_ok(&format!("key{i:04}"), &"x".repeat(64)).await;
    }
    wait_for_snapshot_file(&servers[0].dir).await;
    let mut follower = Peer::connect(servers[1].addr, Role::Balancer).await;
    follower.fence(1).await.unwrap();
    follower.follow(1, &servers[0]).await.unwrap();
    follower
        .wait_status("snapshot catch-up", |s| s.applied_index >= last)
        .await;
    wait_for_snapshot_file(&servers[1].dir).await;
    let mut r2 = Peer::connect(servers[1].addr, Role::Client).await;
    assert_eq!(r2.get("key0000").await, b(&"x".repeat(64)));
    assert_eq!(r2.get("key0299").await, b(&"x".repeat(64)));
}
