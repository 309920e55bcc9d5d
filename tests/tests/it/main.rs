//! semikv integration tests: the real `semikv-server` and `semikv-lb`
//! binaries, run as child processes on 127.0.0.1 port 0, each test in its own
//! temp dir. One test binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_values;
mod args;
mod balancer;
mod consistency;
mod coordinators;
mod disk_full;
mod faults;
mod hostile;
mod http;
mod limits;
mod max_memory;
mod replication;
mod resp;
mod secret;
mod single;
mod tls;
mod users;

use std::time::Duration;

/// Bound on waiting for a cluster to converge (catch-up, failover).
pub const CONVERGE: Duration = Duration::from_secs(30);

/// A single replica promoted by the test acting as the balancer: Fence{1}
/// then Promote{1, 0 sync replicas, 1 s sync timeout, no async fallback}.
pub async fn promote_single(
    addr: std::net::SocketAddr,
    epoch: u128,
) -> anyhow::Result<semikv_protocol::NodeStatus> {
    use semikv_protocol::{NodeRole, Role};
    let mut admin = semikv_tests::Client::connect(addr, Role::Balancer).await?;
    let fenced = semikv_tests::client::node(&admin.fence(epoch).await?)?;
    anyhow::ensure!(
        fenced.epoch.raw() == epoch,
        "fence left epoch {}",
        fenced.epoch
    );
    let status = semikv_tests::client::node(&admin.promote(epoch, 0, 1000).await?)?;
    anyhow::ensure!(
        status.role == NodeRole::Leader && status.epoch.raw() == epoch,
        "promote answered {status:?}"
    );
    Ok(status)
}

/// Writes through `cluster`'s balancer, kills its leader, writes again,
/// restarts the old leader and waits for it to rejoin, then reads both
/// writes back: a failover and a catch-up over whatever the cluster's links
/// are made of (a secret, TLS).
pub async fn fails_over_keeping_writes(cluster: &mut semikv_tests::Cluster) {
    use semikv_tests::client::value;
    let leader = cluster.wait_steady(CONVERGE).await.unwrap();
    let mut c = cluster.connect_balancer().await.unwrap();
    let r = c.set_until_acked("before", "v1", CONVERGE).await;
    cluster.explain(r).unwrap();
    cluster.kill_replica(leader).unwrap();
    let r = c.set_until_acked("after", "v2", CONVERGE).await;
    cluster.explain(r).unwrap();
    cluster.restart_replica(leader).await.unwrap();
    cluster.wait_steady(CONVERGE).await.unwrap();
    for (key, want) in [("before", "v1"), ("after", "v2")] {
        let got = value(&c.get(key).await.unwrap()).unwrap();
        assert_eq!(got.as_deref(), Some(want.as_bytes()), "{key}");
    }
}
