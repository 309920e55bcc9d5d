//! Faults on disk: a WAL tail torn as by a crash mid-append (with default
//! and with constant snapshots), and crashes while the replicas snapshot and
//! compact all the time.

use semikv_protocol::Epoch;
use semikv_tests::torn_tail::{last_segment, tear_tail, TORN_TAIL_WARNING};

use super::rig::{
    cluster_epoch, loaded_cluster_with, log_count, wait_balancer_leader, wait_caught_up_follower,
    SNAPSHOT_INSTALLED,
};
use super::verify::finish;
use super::{load_time, rounds, PROGRESS};
use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_truncated_with_a_warning_and_the_replica_catches_up() {
    torn_tails("torn-wal-tail", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_after_constant_snapshots_is_truncated_too() {
    // With snapshots every few KiB the last segment is often young or empty
    // when the tail is torn, and recovery starts from a snapshot.
    torn_tails("torn-wal-tail-snapshots", &["--snapshot-bytes", "4096"]).await;
}

/// Rounds of: kill -9 a follower (even rounds) or the leader (odd rounds),
/// append a torn record to its last WAL segment, restart it: it must warn
/// once, rejoin and catch up.
async fn torn_tails(name: &str, replica_args: &[&str]) {
    let (mut rig, workload) = loaded_cluster_with(replica_args).await;
    let mut faults = 0;
    for round in 0..rounds(2, 6) {
        tokio::time::sleep(load_time()).await;
        let leader = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        let victim = if round % 2 == 1 {
            leader
        } else {
            (leader + 1) % rig.cluster.len()
        };
        rig.cluster.kill_replica(victim).unwrap();
        let segment = last_segment(&rig.cluster.replica(victim).data_dir).unwrap();
        tear_tail(&segment, round as u64).unwrap();
        faults += 2;
        let warned = log_count(&rig.cluster, victim, TORN_TAIL_WARNING);
        let leader = if victim == leader {
            wait_balancer_leader(&rig, Some(victim)).await
        } else {
            leader
        };
        rig.cluster.restart_replica(victim).await.unwrap();
        assert_eq!(
            log_count(&rig.cluster, victim, TORN_TAIL_WARNING),
            warned + 1,
            "no torn-tail warning at restart:\n{}",
            rig.cluster.replica(victim).proc.stderr_tail()
        );
        let below = Epoch::from_raw(epoch.raw().saturating_sub(1));
        wait_caught_up_follower(&rig, victim, leader, below).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    finish(name, rig, workload, Vec::new(), faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_with_constant_snapshots_lose_nothing() {
    // A tiny snapshot trigger: the replicas snapshot and compact all the
    // time, so restarts recover from snapshot + log, and a follower that was
    // down may need a snapshot from the leader to catch up.
    let (mut rig, workload) = loaded_cluster_with(&["--snapshot-bytes", "4096"]).await;
    let mut faults = 0;
    for round in 0..rounds(3, 12) {
        let leader = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        // Alternate: a follower down for a while, then the leader.
        let victim = if round % 2 == 1 {
            leader
        } else {
            (leader + 1) % rig.cluster.len()
        };
        rig.cluster.kill_replica(victim).unwrap();
        faults += 1;
        tokio::time::sleep(load_time()).await;
        let leader = if victim == leader {
            wait_balancer_leader(&rig, Some(victim)).await
        } else {
            leader
        };
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
        rig.cluster.restart_replica(victim).await.unwrap();
        let below = Epoch::from_raw(epoch.raw().saturating_sub(1));
        wait_caught_up_follower(&rig, victim, leader, below).await;
    }
    let installs: usize = (0..rig.cluster.len())
        .map(|i| log_count(&rig.cluster, i, SNAPSHOT_INSTALLED))
        .sum();
    eprintln!("faults: snapshots installed from a leader: {installs}");
    finish("snapshot-churn", rig, workload, Vec::new(), faults).await;
}
