//! Full disks (issue #16): a replica whose disk fills refuses writes with
//! `DiskFull`, keeps serving reads of what it committed, says so in its
//! status and takes writes again by itself once space is freed; a leader
//! in that state is replaced by one with room; with every disk full the
//! cluster stays up read-only. Before, each replica exited on its first
//! failed write, all three at the same moment when every disk was full.
//!
//! Each replica's data directory is a tmpfs of a few MiB that the test
//! fills and frees. Mounting needs root (the CI runs as root); where it is
//! impossible the test prints why and skips, unless `SEMIKV_REQUIRE_TMPFS`
//! is set, as `.ci/run` does: then it fails.

use std::collections::BTreeMap;
use std::path::Path;

use semikv_protocol::{ErrorReply, Reply};
use semikv_tests::tmpfs::Tmpfs;
use semikv_tests::{Client, Cluster, Deadline};

use crate::CONVERGE;

/// Room for each replica's data: plenty for the test's writes, small
/// enough to fill in a moment.
const DISK_BYTES: u64 = 16 << 20;

/// The replicas' disks, then the cluster: the mounts are lazily unmounted
/// before the processes die and the temp dir goes.
struct Rig {
    disks: Vec<Tmpfs>,
    cluster: Cluster,
}

/// Three replicas, each on a tmpfs of its own, and a balancer; `None` (with
/// the reason printed) where tmpfs cannot be mounted.
async fn rig() -> Option<Rig> {
    let mut disks = Vec::new();
    let mut refusal = None;
    let cluster = Cluster::with_balancer_prepared(3, &[], &[], |dir: &Path| {
        for id in 1..=3 {
            match Tmpfs::mount(&dir.join(format!("replica-{id}")), DISK_BYTES) {
                Ok(disk) => disks.push(disk),
                Err(why) => {
                    refusal = Some(why);
                    anyhow::bail!("cannot mount tmpfs");
                }
            }
        }
        Ok(())
    })
    .await;
    match (cluster, refusal) {
        (Ok(cluster), None) => Some(Rig { disks, cluster }),
        (_, Some(why)) => {
            // CI runs as root and sets this: there a skip would hide a
            // broken test, so it fails instead.
            assert!(
                std::env::var_os("SEMIKV_REQUIRE_TMPFS").is_none(),
                "SEMIKV_REQUIRE_TMPFS is set but tmpfs cannot be mounted: {why}"
            );
            eprintln!("SKIPPED: disk-full tests need tmpfs mounts (run as root): {why}");
            None
        }
        (Err(e), None) => panic!("starting the cluster: {e:#}"),
    }
}

/// Writes `key` once; whether it was acknowledged, and the error if not.
async fn write(
    c: &mut Client,
    key: &str,
    acked: &mut BTreeMap<String, String>,
) -> Option<ErrorReply> {
    let value = format!("value-of-{key}");
    match c.set(key.to_string(), value.clone()).await.unwrap() {
        Reply::Written { .. } => {
            acked.insert(key.to_string(), value);
            None
        }
        Reply::Error(e) => Some(e),
        other => panic!("a write answered {other:?}"),
    }
}

/// Every acknowledged key reads back its value through the balancer.
async fn assert_all_readable(c: &mut Client, acked: &BTreeMap<String, String>) {
    for (key, value) in acked {
        let reply = c.get(key.clone()).await.unwrap();
        assert_eq!(
            reply,
            Reply::Value(Some(value.clone().into())),
            "acknowledged key {key}"
        );
    }
}

/// Waits until replica `i`'s reported disk state is `full`.
async fn wait_disk_state(c: &mut Client, i: usize, full: bool) {
    let deadline = Deadline::new(CONVERGE, "a replica's disk state in the balancer's status");
    loop {
        let report = c.cluster_report().await.unwrap();
        let reported = report.resources.get(i).and_then(Option::as_ref);
        if reported.is_some_and(|r| r.disk_full.is_some() == full) {
            return;
        }
        deadline.tick().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_is_replaced_and_takes_writes_again_once_space_returns() {
    let Some(mut rig) = rig().await else { return };
    let old = rig.cluster.wait_steady(CONVERGE).await.unwrap();
    let mut c = rig.cluster.connect_balancer().await.unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        c.set_until_acked(
            &format!("before-{i}"),
            &format!("value-of-before-{i}"),
            CONVERGE,
        )
        .await
        .unwrap();
        acked.insert(format!("before-{i}"), format!("value-of-before-{i}"));
    }

    let took = rig.disks[old].fill().unwrap();
    let filled = std::time::Instant::now();
    eprintln!("filled the leader's disk: {} KiB", took >> 10);
    // Writes flow again through a leader with room.
    let deadline = Deadline::new(CONVERGE, "writes through a leader with room");
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut n = 0;
    loop {
        n += 1;
        match write(&mut c, &format!("during-{n}"), &mut acked).await {
            None if rig.cluster.balancer_leader().await.unwrap() != Some(old) => break,
            None => {}
            Some(e) => {
                let kind = format!("{e}").split(':').next().unwrap_or("").to_string();
                *refusals.entry(kind).or_default() += 1;
                deadline.tick().await.unwrap();
            }
        }
    }
    eprintln!(
        "writes flowed again {} ms after the leader's disk filled; refused meanwhile: {refusals:?}",
        filled.elapsed().as_millis()
    );
    wait_disk_state(&mut c, old, true).await;
    assert!(
        rig.cluster.replica_mut(old).proc.is_running(),
        "the replica with the full disk exited:\n{}",
        rig.cluster.logs()
    );
    assert_all_readable(&mut c, &acked).await;

    rig.disks[old].free().unwrap();
    wait_disk_state(&mut c, old, false).await;
    for i in 0..20 {
        c.set_until_acked(
            &format!("after-{i}"),
            &format!("value-of-after-{i}"),
            CONVERGE,
        )
        .await
        .unwrap();
        acked.insert(format!("after-{i}"), format!("value-of-after-{i}"));
    }
    // The old leader follows and catches up: a steady cluster again.
    rig.cluster.wait_steady(CONVERGE).await.unwrap();
    assert_all_readable(&mut c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_disk_full_the_cluster_serves_reads_and_recovers_without_a_restart() {
    let Some(mut rig) = rig().await else { return };
    let leader = rig.cluster.wait_steady(CONVERGE).await.unwrap();
    let mut c = rig.cluster.connect_balancer().await.unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        c.set_until_acked(
            &format!("before-{i}"),
            &format!("value-of-before-{i}"),
            CONVERGE,
        )
        .await
        .unwrap();
        acked.insert(format!("before-{i}"), format!("value-of-before-{i}"));
    }
    for disk in &rig.disks {
        disk.fill().unwrap();
    }
    // Writes are refused with DiskFull, not left to time out.
    let deadline = Deadline::new(CONVERGE, "a DiskFull refusal");
    let mut n = 0;
    loop {
        n += 1;
        match write(&mut c, &format!("during-{n}"), &mut acked).await {
            Some(ErrorReply::DiskFull { reason }) => {
                eprintln!("refused: {reason}");
                break;
            }
            _ => deadline.tick().await.unwrap(),
        }
    }
    wait_disk_state(&mut c, leader, true).await;
    assert_all_readable(&mut c, &acked).await;
    for i in 0..3 {
        assert!(
            rig.cluster.replica_mut(i).proc.is_running(),
            "replica {i} exited with its disk full:\n{}",
            rig.cluster.logs()
        );
    }
    // No failover churn between full replicas: the leader stays.
    assert_eq!(rig.cluster.balancer_leader().await.unwrap(), Some(leader));

    for disk in &rig.disks {
        disk.free().unwrap();
    }
    let freed = std::time::Instant::now();
    for i in 0..20 {
        c.set_until_acked(
            &format!("after-{i}"),
            &format!("value-of-after-{i}"),
            CONVERGE,
        )
        .await
        .unwrap();
        acked.insert(format!("after-{i}"), format!("value-of-after-{i}"));
    }
    eprintln!(
        "20 writes acknowledged {} ms after space was freed",
        freed.elapsed().as_millis()
    );
    for i in 0..3 {
        wait_disk_state(&mut c, i, false).await;
    }
    rig.cluster.wait_steady(CONVERGE).await.unwrap();
    assert_all_readable(&mut c, &acked).await;
}
