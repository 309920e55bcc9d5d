//! The leader fails: killed -9 round after round, each new leader killed
//! before the previous one caught up, or frozen (SIGSTOP) past failure
//! detection and resumed while deposed.

use semikv_protocol::{Epoch, NodeRole, Role};
use semikv_tests::Deadline;

use super::rig::{
    cluster_epoch, loaded_cluster, probe_deposed, wait_balancer_leader, wait_caught_up_follower,
};
use super::verify::finish;
use super::{load_time, rounds, PROGRESS};
use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_9_under_load_repeatedly() {
    let (mut rig, workload) = loaded_cluster().await;
    let mut faults = 0;
    for _ in 0..rounds(5, 20) {
        tokio::time::sleep(load_time()).await;
        let old = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        rig.cluster.kill_replica(old).unwrap();
        faults += 1;
        let new = wait_balancer_leader(&rig, Some(old)).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
        rig.cluster.restart_replica(old).await.unwrap();
        wait_caught_up_follower(&rig, old, new, epoch).await;
    }
    finish("leader-kill-9", rig, workload, Vec::new(), faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_leader_kills_before_the_old_leader_catches_up() {
    // Each new leader is killed as soon as it has acknowledged a write and
    // the previous one is merely restarted (not caught up): one replica is
    // down at a time, so a follower holding every acknowledged write is
    // always reachable (guarantee 1's condition) while the election has to
    // choose between a lagging and an up-to-date replica.
    let (mut rig, workload) = loaded_cluster().await;
    let mut faults = 0;
    let mut down: Option<usize> = None;
    for _ in 0..rounds(4, 15) {
        let leader = wait_balancer_leader(&rig, down).await;
        let r = workload.wait_progress(1, CONVERGE).await;
        rig.explain(r);
        if let Some(d) = down.take() {
            rig.cluster.restart_replica(d).await.unwrap();
        }
        rig.cluster.kill_replica(leader).unwrap();
        faults += 1;
        down = Some(leader);
    }
    let leader = wait_balancer_leader(&rig, down).await;
    let epoch = cluster_epoch(&rig).await;
    if let Some(d) = down {
        rig.cluster.restart_replica(d).await.unwrap();
        wait_caught_up_follower(
            &rig,
            d,
            leader,
            Epoch::from_raw(epoch.raw().saturating_sub(1)),
        )
        .await;
    }
    let r = workload.wait_progress(PROGRESS, CONVERGE).await;
    rig.explain(r);
    finish(
        "back-to-back-leader-kills",
        rig,
        workload,
        Vec::new(),
        faults,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_acknowledges_nothing_and_rejoins() {
    let (mut rig, workload) = loaded_cluster().await;
    let mut faults = 0;
    let mut probes = Vec::new();
    for round in 0..rounds(1, 5) {
        tokio::time::sleep(load_time()).await;
        let old = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        rig.cluster.replica_mut(old).proc.stop().unwrap();
        faults += 1;
        // Past failure detection: the balancer elected someone else, and
        // writes flow again.
        let new = wait_balancer_leader(&rig, Some(old)).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
        rig.cluster.replica_mut(old).proc.cont().unwrap();

        // Straight to the resumed old leader, before and while it learns it
        // was deposed: nothing it answers may be an acknowledgement.
        let deadline = Deadline::new(CONVERGE, "the old leader to step down");
        for n in 0.. {
            probes.push(probe_deposed(&rig, old, &format!("{round}-{n}")).await);
            let mut direct = rig.cluster.connect(old, Role::Client).await.unwrap();
            let s = direct.status().await.unwrap();
            if s.role == NodeRole::Follower && s.epoch > epoch {
                break;
            }
            let r = deadline.tick().await;
            rig.explain(r);
        }
        wait_caught_up_follower(&rig, old, new, epoch).await;
    }
    finish("leader-sigstop", rig, workload, probes, faults).await;
}
