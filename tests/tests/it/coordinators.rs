//! Two balancers over the same replicas (issue #14): the way an operator
//! runs them by mistake or as a first try at high availability. Each
//! balancer knows the replicas through relays of its own, so the test can
//! cut one balancer off a replica while the other still reaches it. Load
//! goes through both; each trial cuts each balancer off a different replica
//! for a while (connections held open, nothing forwarded), then heals.
//!
//! What must hold, whatever the two coordinators believe: every write either
//! balancer acknowledged is on every replica at the end, no value whose
//! write failed for sure is anywhere, no read saw a value later rolled back
//! (the history checker over both workloads), every replica holds the same
//! values at the same applied index, no two replicas ever lead the same
//! epoch, no replica diverged, and both balancers serve writes again soon
//! after each heal.

use std::time::Duration;

use semikv_protocol::{Epoch, Role};
use semikv_tests::relayed::RelayedBalancer;
use semikv_tests::workload::{Workload, WorkloadConfig};
use semikv_tests::Cluster;

use crate::faults::{rounds, soak, verify};
use crate::CONVERGE;

/// Writes each workload must see acknowledged to count as served.
const PROGRESS: u64 = 10;

/// How long each cut lasts (a wall time of load, not a synchronisation).
fn cut_time() -> Duration {
    if soak() {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(3)
    }
}

/// The balancers' stderr tails, for failure messages.
fn balancer_logs(balancers: &[RelayedBalancer]) -> String {
    let mut out = String::new();
    for (i, balancer) in balancers.iter().enumerate() {
        out.push_str(&balancer.logs(&format!("balancer {i}")));
    }
    out
}

/// Replicas behind two balancers.
struct Rig {
    balancers: Vec<RelayedBalancer>,
    cluster: Cluster,
}

impl Rig {
    async fn start(replicas: usize, sync_replicas: u32) -> Rig {
        let cluster = Cluster::replicas(replicas, &[]).await.unwrap();
        let sync = sync_replicas.to_string();
        let mut balancers = Vec::new();
        for name in ["lb-a", "lb-b"] {
            let dir = cluster.dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let balancer =
                RelayedBalancer::start(&dir, &cluster.replica_addrs(), &["--sync-replicas", &sync])
                    .await
                    .unwrap();
            balancers.push(balancer);
        }
        Rig { balancers, cluster }
    }

    fn logs(&self) -> String {
        self.cluster.logs() + &balancer_logs(&self.balancers)
    }

    fn explain<T>(&self, result: anyhow::Result<T>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", self.logs()),
        }
    }

    /// One workload per balancer, with disjoint client ids (so disjoint
    /// values) and seeds.
    fn workloads(&self) -> Vec<Workload> {
        self.balancers
            .iter()
            .enumerate()
            .map(|(i, balancer)| {
                let config = WorkloadConfig {
                    first_client: 100 * i,
                    seed: 0x2b_a1a0 + i as u64,
                    ..WorkloadConfig::default()
                };
                Workload::start(balancer.addr(), config)
            })
            .collect()
    }
}

/// Waits until every workload has `PROGRESS` more writes acknowledged.
async fn all_progress(rig: &Rig, workloads: &[Workload]) {
    for (i, w) in workloads.iter().enumerate() {
        let r = w.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r.map_err(|e| e.context(format!("writes through balancer {i}"))));
    }
}

/// The highest epoch any replica is at; fails if two replicas lead one
/// epoch ([`Cluster::leader_index`]) or one stopped serving (diverged).
async fn max_epoch(cluster: &mut Cluster) -> anyhow::Result<Epoch> {
    cluster.leader_index().await?;
    let mut max = Epoch::ZERO;
    for i in 0..cluster.len() {
        let mut c = cluster.connect(i, Role::Client).await?;
        max = max.max(c.status().await?.epoch);
    }
    Ok(max)
}

/// The scenario of issue #14 with `replicas` replicas and `sync` sync
/// replicas: load through both balancers, each cut off a different replica
/// per trial, then the full check.
async fn two_balancers_cut_off_different_replicas(name: &str, replicas: usize, sync: u32) {
    let mut rig = Rig::start(replicas, sync).await;
    let workloads = rig.workloads();
    all_progress(&rig, &workloads).await;
    let r = max_epoch(&mut rig.cluster).await;
    let start_epoch = rig.explain(r);
    let trials = rounds(3, 8);
    let mut faults = 0;
    for trial in 0..trials {
        let (a, b) = (trial % replicas, (trial + 1) % replicas);
        // Odd trials cut every connection through the balancer's relay
        // (followers told to reach a leader through it too), even ones the
        // balancer's own connections only.
        let roles: &[Role] = if trial % 2 == 1 {
            &[Role::Balancer, Role::Replica, Role::Client]
        } else {
            &[Role::Balancer]
        };
        rig.balancers[0].proxies[a].blackhole(roles);
        rig.balancers[1].proxies[b].blackhole(roles);
        faults += 2;
        tokio::time::sleep(cut_time()).await;
        for balancer in &rig.balancers {
            balancer.heal_all();
        }
        // Both balancers serve writes again: the split does not outlive
        // the partition.
        all_progress(&rig, &workloads).await;
        // No two leaders of one epoch, at any point we look.
        let r = max_epoch(&mut rig.cluster).await;
        rig.explain(r);
    }
    let r = max_epoch(&mut rig.cluster).await;
    let end_epoch = rig.explain(r);

    let keys = semikv_tests::workload::keys(WorkloadConfig::default().keys);
    let mut history = Vec::new();
    for w in workloads {
        history.extend(w.stop().await.unwrap());
    }
    let balancers = &rig.balancers;
    let logs = |cluster: &Cluster| cluster.logs() + &balancer_logs(balancers);
    let figures = format!("terms={}..{}", start_epoch.term(), end_epoch.term());
    verify(
        name,
        &mut rig.cluster,
        history,
        keys,
        faults,
        &figures,
        logs,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_each_cut_off_a_different_replica_lose_nothing() {
    two_balancers_cut_off_different_replicas("two-balancers-3", 3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_over_five_replicas_with_one_sync_replica_lose_nothing() {
    two_balancers_cut_off_different_replicas("two-balancers-5-sync-1", 5, 1).await;
}
