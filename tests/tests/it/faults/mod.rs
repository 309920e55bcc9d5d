//! Fault injection against real processes (issue #6): three replicas behind
//! `semikv-lb` under a recorded concurrent workload, while the test kills
//! (-9), pauses (SIGSTOP/SIGCONT), partitions, tears logs and throws
//! hostile peers at them. Every scenario ends by stopping the workload,
//! waiting for every replica to converge on the leader's committed state,
//! reading every key back from every replica, and running
//! [`semikv_tests::checker`] over the history (guarantees 1–3; see that module for exactly what is proven).
//!
//! Each scenario prints one `faults: scenario=... faults_injected=...` line
//! with its figures (visible with `--nocapture`).
//!
//! Network faults go through [`semikv_tests::proxy::Proxy`] relays the
//! balancer knows the replicas by (and so do followers, for the leader).
//!
//! Soak: `SEMIKV_SOAK=1 cargo test -p semikv-tests --test it faults:: --
//! --nocapture` raises the rounds (leader kills 5 → 20, back-to-back leader
//! kills 4 → 15, crashed unacknowledged tails 1 → 4, leader SIGSTOPs 1 → 5,
//! follower and balancer SIGSTOPs 1 → 4, follower crashes 2 → 8,
//! whole-cluster kills 2 → 5, torn tails 2 → 6 (with default and with
//! constant snapshots), crashes under constant snapshots 3 → 12,
//! partitions either way 1 → 4, long leader/follower partitions that
//! replace the leader 1 → 3, slow/cut links 3 → 12, hostile waves
//! 2 → 10) and the durations (load between faults 0.5 s → 2 s, partitions
//! 2.5 s → 8 s, the one-byte-per-second peers 3 s → 20 s). It takes about
//! two and a half minutes on 2 cores.
//!
//! One file per area of faults: [`leader_failures`] (kill -9, back-to-back
//! kills, SIGSTOP of the leader), [`follower_and_balancer_failures`],
//! [`whole_cluster`], [`partitions`] (per-role cuts through relays, slow
//! and cut links, a crashed unacknowledged tail), [`wal_and_snapshots`]
//! (torn WAL tails, constant snapshots) and [`hostile_peers`]. The cluster
//! under test and the workload on it are set up in [`rig`]; every scenario
//! ends in [`verify::finish`].

mod follower_and_balancer_failures;
mod hostile_peers;
mod leader_failures;
mod partitions;
mod rig;
mod verify;
mod wal_and_snapshots;
mod whole_cluster;

use std::time::Duration;

pub(crate) use verify::verify;

/// Whether the long soak was asked for.
pub(crate) fn soak() -> bool {
    std::env::var_os("SEMIKV_SOAK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `normal` rounds, or `soaked` under `SEMIKV_SOAK`.
pub(crate) fn rounds(normal: usize, soaked: usize) -> usize {
    if soak() {
        soaked
    } else {
        normal
    }
}

/// How long the workload runs between faults (a fixed wall time of load,
/// not a synchronisation).
fn load_time() -> Duration {
    if soak() {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(500)
    }
}

/// How long a partition lasts: past the sync timeout (2 s), so writes stuck
/// on a cut-off leader time out as `NotEnoughReplicas`.
fn partition_time() -> Duration {
    if soak() {
        Duration::from_secs(8)
    } else {
        Duration::from_millis(2500)
    }
}

/// Acknowledged writes that prove the cluster serves again after a fault.
const PROGRESS: u64 = 10;
