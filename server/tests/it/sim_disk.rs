//! A whole replica (`run`, its WAL writer thread, snapshotter and
//! admin) on a simulated disk: a full disk is refused and recovered from
//! as on a real one (the tmpfs tests of the `semikv-tests` crate), and
//! every acknowledged write survives a power cut, whatever the seed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use semikv_protocol::{ErrorReply, Message, Op, Reply, Request, RequestId, Role};
use semikv_server::storage::{DataDir, SimDisk};
use semikv_server::Blocking;

use crate::support::{default_blocking, Peer, Server, WAIT};

/// Where the replica keeps its data on the simulated disk.
const DATA: &str = "/data/replica-1";

/// Replica 1 on `disk` (a fresh handle: the process's own), with small
/// segments and snapshots so that both roll during a test; its blocking
/// work where the test's environment says.
async fn start(disk: &SimDisk) -> Server {
    start_with(disk, default_blocking()).await
}

async fn start_with(disk: &SimDisk, blocking: Blocking) -> Server {
    let handle = disk.clone();
    Server::start_with(1, Path::new(DATA), None, move |config| {
        config.blocking = blocking;
        config.data_dir = DataDir::new(Arc::new(handle), DATA);
        config.segment_bytes = 4096;
        config.snapshot_bytes = 8192;
    })
    .await
}

/// Fences and promotes it at `epoch` with no followers (a write stuck
/// behind a full disk times out after a second); a client of it.
async fn lead(server: &Server, epoch: u128) -> (Peer, Peer) {
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    admin.fence(epoch).await.unwrap();
    admin.promote_with(epoch, 0, 1000).await.unwrap();
    (admin, Peer::connect(server.addr, Role::Client).await)
}

/// What the replica says of its disk: why it is full, if it is.
async fn disk_full(admin: &mut Peer) -> Option<String> {
    match admin.request(Op::Status).await {
        Reply::NodeReport(report) => report.resources.disk_full,
        other => panic!("status failed: {other:?}"),
    }
}

async fn wait_disk_full(admin: &mut Peer, full: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while disk_full(admin).await.is_some() != full {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never reported its disk {}",
            if full { "full" } else { "with room" }
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn assert_readable(c: &mut Peer, acked: &BTreeMap<String, String>) {
    for (key, value) in acked {
        assert_eq!(
            c.get(key).await,
            Some(Bytes::copy_from_slice(value.as_bytes())),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_simulated_disk_refuses_writes_serves_reads_and_takes_writes_once_freed() {
    let disk = SimDisk::new();
    let server = start(&disk).await;
    let (mut admin, mut c) = lead(&server, 1).await;
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("before-{i}"), format!("value-{i}"));
        c.set_ok(&key, &value).await;
        acked.insert(key, value);
    }

    disk.set_capacity(Some(disk.used_bytes() + 300));
    let mut refused = None;
    for i in 0..1000 {
        let (key, value) = (format!("during-{i}"), format!("value-{i}"));
        match c.set(&key, &value).await {
            Reply::Written { .. } => {
                acked.insert(key, value);
            }
            // The write whose batch met the full disk waits for it, then
            // times out with its outcome unknown (its batch is retried).
            Reply::Error(ErrorReply::NotEnoughReplicas { .. }) => {}
            Reply::Error(e @ ErrorReply::DiskFull { .. }) => {
                refused = Some(e);
                break;
            }
            other => panic!("a write on a filling disk answered {other:?}"),
        }
    }
    assert!(refused.is_some(), "1000 writes fitted in 300 bytes");
    wait_disk_full(&mut admin, true).await;
    assert_readable(&mut c, &acked).await;

    disk.set_capacity(None);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match c.set("after", "room").await {
            Reply::Written { .. } => break,
            Reply::Error(ErrorReply::DiskFull { .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never took writes again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => panic!("a write after space returned answered {other:?}"),
        }
    }
    acked.insert("after".into(), "room".into());
    wait_disk_full(&mut admin, false).await;
    assert_readable(&mut c, &acked).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_power_cut() {
    power_cuts(default_blocking()).await;
}

/// As a simulation runs a replica: one thread, a paused clock, the WAL
/// writer a task, all file work inline.
#[tokio::test(start_paused = true)]
async fn every_acknowledged_write_survives_a_power_cut_on_one_paused_thread() {
    power_cuts(Blocking::Inline).await;
}

async fn power_cuts(blocking: Blocking) {
    for seed in 0..8u64 {
        let disk = SimDisk::new();
        let server = start_with(&disk, blocking).await;
        let (_admin, mut c) = lead(&server, 1).await;
        let mut acked = BTreeMap::new();
        // Enough to roll segments and take a snapshot or two; keys are
        // overwritten and deleted too.
        for i in 0..300u64 {
            let key = format!("k{}", i % 40);
            if i % 7 == 6 {
                assert!(matches!(c.del(&key).await, Reply::Written { .. }));
                acked.remove(&key);
            } else {
                let value = format!("{}-{seed}", "v".repeat((i % 50) as usize));
                c.set_ok(&key, &value).await;
                acked.insert(key, value);
            }
        }
        // Writes in flight, unanswered, when the power goes: anywhere
        // between the socket and the disk (it varies from run to run), any
        // of them may survive, but only as written.
        let in_flight = (0..50)
            .map(|i| {
                Message::Request(Request {
                    id: RequestId(1_000_000 + i),
                    op: Op::Set {
                        key: Bytes::from(format!("in-flight-{i}")),
                        value: Bytes::from(format!("maybe-{i}")),
                    },
                })
            })
            .collect();
        c.send_all(in_flight).await;
        // On one thread, the replica runs only while the test yields: the
        // power goes at a different point of the writes for each seed.
        for _ in 0..seed {
            tokio::task::yield_now().await;
        }
        // The power goes: from now on every call the old process makes on
        // its handle fails, as its WAL writer thread (which outlives
        // `abort`) would otherwise flush the rest.
        disk.crash(seed);
        server.abort();
        eprintln!("seed {seed}: {} bytes survived", disk.used_bytes());

        let server = start_with(&disk, blocking).await;
        let (_admin, mut c) = lead(&server, 2).await;
        for i in 0..40 {
            let key = format!("k{i}");
            let want = acked
                .get(&key)
                .map(|v| Bytes::copy_from_slice(v.as_bytes()));
            assert_eq!(c.get(&key).await, want, "seed {seed}: {key}");
        }
        let mut survived = 0;
        for i in 0..50 {
            if let Some(value) = c.get(&format!("in-flight-{i}")).await {
                assert_eq!(value, format!("maybe-{i}"), "seed {seed}");
                survived += 1;
            }
        }
        eprintln!("seed {seed}: {survived} of 50 writes in flight survived");
        server.stop().await.unwrap();
    }
}
