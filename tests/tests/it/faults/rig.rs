//! The cluster a fault scenario runs against, and the moves every scenario
//! makes on it: three replicas behind a balancer (the cluster's own, or one
//! the test starts in front of relays, to partition per role) with a
//! recorded workload running through it; waiting for the balancer to name a
//! (new) leader, for a replica to rejoin; and writes and reads sent straight
//! to one replica, recorded beside the workload's history.

use std::net::SocketAddr;

use bytes::Bytes;
use semikv_protocol::{Epoch, Role};
use semikv_tests::checker::{Event, Outcome};
use semikv_tests::probe::{read_once, write_once};
use semikv_tests::proxy::Proxy;
use semikv_tests::relayed::RelayedBalancer;
use semikv_tests::workload::{Workload, WorkloadConfig};
use semikv_tests::{Client, Cluster, Deadline};

use super::PROGRESS;
use crate::CONVERGE;

/// A three-replica cluster behind a balancer, serving writes, with a
/// workload running against the balancer.
pub(super) async fn loaded_cluster() -> (Rig, Workload) {
    loaded_cluster_with(&[]).await
}

/// As [`loaded_cluster`], every replica started with `replica_args`.
pub(super) async fn loaded_cluster_with(replica_args: &[&str]) -> (Rig, Workload) {
    let cluster = Cluster::with_balancer(3, replica_args, &[]).await.unwrap();
    loaded(Rig {
        relayed: None,
        cluster,
    })
    .await
}

/// As [`loaded_cluster`], with a [`Proxy`] in front of each replica: the
/// balancer (and so the followers, for the leader's address) know the
/// replicas only by their proxies.
pub(super) async fn loaded_proxied_cluster() -> (Rig, Workload) {
    let cluster = Cluster::replicas(3, &[]).await.unwrap();
    let relayed = RelayedBalancer::start(cluster.dir(), &cluster.replica_addrs(), &[])
        .await
        .unwrap();
    loaded(Rig {
        relayed: Some(relayed),
        cluster,
    })
    .await
}

/// Starts the workload on `rig` and waits until it has writes acknowledged.
async fn loaded(rig: Rig) -> (Rig, Workload) {
    let workload = Workload::start(rig.balancer_addr(), WorkloadConfig::default());
    let r = workload.wait_progress(PROGRESS, CONVERGE).await;
    rig.explain(r);
    (rig, workload)
}

/// The processes under test: a cluster, and when proxied, the balancer the
/// test started itself in front of the proxies.
pub(super) struct Rig {
    // Dropped in this order: the balancer, the proxies, then the replicas.
    pub(super) relayed: Option<RelayedBalancer>,
    pub(super) cluster: Cluster,
}

impl Rig {
    /// Where the workload and the test reach the balancer.
    pub(super) fn balancer_addr(&self) -> SocketAddr {
        match &self.relayed {
            Some(relayed) => relayed.addr(),
            None => self.cluster.balancer_addr(),
        }
    }

    /// The relays in front of the replicas, in replica order; none unless
    /// proxied.
    pub(super) fn proxies(&self) -> &[Proxy] {
        self.relayed.as_ref().map_or(&[], |r| &r.proxies)
    }

    /// Every process's stderr tail, for failure messages.
    pub(super) fn logs(&self) -> String {
        let mut out = self.cluster.logs();
        if let Some(relayed) = &self.relayed {
            out.push_str(&relayed.logs("balancer"));
        }
        out
    }

    /// `result`'s value, or a panic carrying every process's log tail.
    pub(super) fn explain<T>(&self, result: anyhow::Result<T>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", self.logs()),
        }
    }
}

/// The replica index the balancer currently routes writes to: `None` while
/// it knows no leader, does not answer, or names no replica.
pub(super) async fn balancer_leader(rig: &Rig) -> Option<usize> {
    let leader = match &rig.relayed {
        Some(relayed) => relayed.leader().await,
        None => rig.cluster.balancer_leader().await,
    };
    leader.ok().flatten()
}

/// Waits until the balancer routes writes to a replica other than `not`.
pub(super) async fn wait_balancer_leader(rig: &Rig, not: Option<usize>) -> usize {
    let deadline = Deadline::new(CONVERGE, "the balancer to know a (new) leader");
    loop {
        if let Some(i) = balancer_leader(rig).await {
            if Some(i) != not {
                return i;
            }
        }
        let r = deadline.tick().await;
        rig.explain(r);
    }
}

/// Waits until replica `i` follows at an epoch above `above` and has applied
/// everything the leader `leader` had committed when the wait began.
pub(super) async fn wait_caught_up_follower(rig: &Rig, i: usize, leader: usize, above: Epoch) {
    let r = rig.cluster.wait_rejoined(i, leader, above, CONVERGE).await;
    rig.explain(r);
}

/// The epoch the balancer reports.
pub(super) async fn cluster_epoch(rig: &Rig) -> Epoch {
    let mut c = Client::connect(rig.balancer_addr(), Role::Client)
        .await
        .unwrap();
    c.cluster_status().await.unwrap().epoch
}

/// Client id of the events a test records itself, straight to a replica.
pub(super) const DIRECT: usize = usize::MAX;

/// Writes straight to replica `i` (bypassing the balancer and its proxy) and
/// fails the test if the write is acknowledged: `i` was deposed, and a newer
/// epoch holds its followers. Returns the attempt as a history event, so the
/// checker also sees it.
pub(super) async fn probe_deposed(rig: &Rig, i: usize, tag: &str) -> Event {
    let key = Bytes::from("probe");
    let val = Bytes::from(format!("probe-{tag}"));
    let (event, _) = write_once(rig.cluster.replica(i).addr, DIRECT, key, val).await;
    let detail = &event.detail;
    eprintln!("faults: probe of the deposed leader {i} answered {detail}");
    assert_ne!(
        event.outcome,
        Outcome::Ok,
        "the deposed leader acknowledged a write after the new epoch: {detail}\n{}",
        rig.logs()
    );
    event
}

/// A direct `Get` of `key` from replica `i`, as a history event (outcome
/// `Failed` when it did not answer with a value).
pub(super) async fn direct_read(rig: &Rig, i: usize, key: &Bytes) -> Event {
    read_once(rig.cluster.replica(i).addr, DIRECT, key.clone()).await
}

/// What a replica logs when a leader sent it a full snapshot.
pub(super) const SNAPSHOT_INSTALLED: &str = "installed snapshot from leader";

/// Occurrences of `message` in replica `i`'s stderr (all its runs).
pub(super) fn log_count(cluster: &Cluster, i: usize, message: &str) -> usize {
    cluster.replica(i).proc.count_logged(message).unwrap()
}
