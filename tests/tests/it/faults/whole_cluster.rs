//! Every process killed -9 at once, then the replicas and the balancer
//! restarted: nothing acknowledged may be lost.

use super::rig::loaded_cluster;
use super::verify::finish;
use super::{load_time, rounds, PROGRESS};
use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_and_restarted_keeps_every_acked_write() {
    let (mut rig, workload) = loaded_cluster().await;
    let mut faults = 0;
    for _ in 0..rounds(2, 5) {
        tokio::time::sleep(load_time()).await;
        rig.cluster.balancer_mut().unwrap().proc.kill9().unwrap();
        for i in 0..rig.cluster.len() {
            rig.cluster.kill_replica(i).unwrap();
        }
        faults += 1 + rig.cluster.len();
        for i in 0..rig.cluster.len() {
            rig.cluster.restart_replica(i).await.unwrap();
        }
        rig.cluster.restart_balancer(&[]).await.unwrap();
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    finish("whole-cluster-kill-9", rig, workload, Vec::new(), faults).await;
}
