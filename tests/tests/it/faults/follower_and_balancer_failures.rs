//! A follower or the balancer fails while the leader runs on: a follower
//! killed -9 and restarted (it must catch up from its log, not a full
//! snapshot), a follower frozen past failure detection, the balancer frozen
//! with requests in flight.

use semikv_protocol::Epoch;

use super::rig::{
    cluster_epoch, loaded_cluster, log_count, wait_balancer_leader, wait_caught_up_follower,
    SNAPSHOT_INSTALLED,
};
use super::verify::finish;
use super::{load_time, partition_time, rounds, PROGRESS};
use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_crashes_and_restarts_under_load() {
    let (mut rig, workload) = loaded_cluster().await;
    let mut faults = 0;
    for _ in 0..rounds(2, 8) {
        let leader = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        let follower = (leader + 1) % rig.cluster.len();
        rig.cluster.kill_replica(follower).unwrap();
        faults += 1;
        // The other follower keeps acknowledging: writes go on.
        tokio::time::sleep(load_time()).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
        rig.cluster.restart_replica(follower).await.unwrap();
        let leader = wait_balancer_leader(&rig, None).await;
        let below = Epoch::from_raw(epoch.raw().saturating_sub(1));
        wait_caught_up_follower(&rig, follower, leader, below).await;
        // Guarantee 4: its log allowed an incremental catch-up (nothing was
        // compacted away at this size), so no full copy was shipped.
        assert_eq!(
            log_count(&rig.cluster, follower, SNAPSHOT_INSTALLED),
            0,
            "a restarted follower was sent a full snapshot:\n{}",
            rig.logs()
        );
    }
    finish("follower-crash", rig, workload, Vec::new(), faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_and_a_paused_balancer_cost_no_acknowledged_write() {
    let (mut rig, workload) = loaded_cluster().await;
    let mut faults = 0;
    for _ in 0..rounds(1, 4) {
        // A follower frozen past failure detection: the other one keeps
        // acknowledging; once resumed it catches up.
        let leader = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        let follower = (leader + 1) % rig.cluster.len();
        rig.cluster.replica_mut(follower).proc.stop().unwrap();
        faults += 1;
        tokio::time::sleep(partition_time()).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
        rig.cluster.replica_mut(follower).proc.cont().unwrap();
        let leader = wait_balancer_leader(&rig, None).await;
        let below = Epoch::from_raw(epoch.raw().saturating_sub(1));
        wait_caught_up_follower(&rig, follower, leader, below).await;

        // The balancer frozen with requests in flight, then resumed.
        let lb = rig.cluster.balancer_mut().unwrap();
        lb.proc.stop().unwrap();
        faults += 1;
        tokio::time::sleep(load_time()).await;
        rig.cluster.balancer_mut().unwrap().proc.cont().unwrap();
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    finish(
        "paused-follower-and-balancer",
        rig,
        workload,
        Vec::new(),
        faults,
    )
    .await;
}
