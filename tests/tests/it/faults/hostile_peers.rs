//! Hostile peers on every port (replicas and balancer) while the workload
//! runs: idle connections, a Hello trickled a byte a second, and waves of
//! every [`HostilePeer`]; they may cost nothing but their own connection.

use std::time::Duration;

use semikv_protocol::{Reply, Role};
use semikv_tests::hostile::{trickle_hello, HostilePeer};
use semikv_tests::{Client, RawConn};

use super::rig::loaded_cluster;
use super::verify::finish;
use super::{rounds, soak, PROGRESS};
use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_on_every_port_cost_nothing_but_their_connection() {
    let (mut rig, workload) = loaded_cluster().await;
    let mut ports = rig.cluster.replica_addrs();
    ports.push(rig.cluster.balancer_addr());
    let mut faults = 0;

    // Idle connections (500 on the balancer, 100 on each replica) and one
    // peer per port trickling a Hello one byte per second, held open while
    // the other hostile peers run and the workload keeps going.
    let mut idle = Vec::new();
    for (p, addr) in ports.iter().enumerate() {
        let n = if p + 1 == ports.len() { 500 } else { 100 };
        for _ in 0..n {
            idle.push(RawConn::connect(*addr).await.unwrap());
        }
        faults += n;
    }
    let slow_for = if soak() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3)
    };
    let slow: Vec<_> = ports
        .iter()
        .map(|&addr| tokio::spawn(trickle_hello(addr, slow_for)))
        .collect();
    faults += slow.len();

    for round in 0..rounds(2, 10) {
        let mut peers = Vec::new();
        for (p, &addr) in ports.iter().enumerate() {
            for (k, &kind) in HostilePeer::ALL.iter().enumerate() {
                let seed = (round * 1000 + p * 100 + k) as u64;
                peers.push((addr, kind, tokio::spawn(kind.run(addr, seed))));
            }
        }
        faults += peers.len();
        for (addr, kind, peer) in peers {
            let r = peer.await.unwrap();
            rig.explain(r.map_err(|e| e.context(format!("{kind:?} on {addr}"))));
        }
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    for s in slow {
        s.await.unwrap().unwrap();
    }
    let r = workload.wait_progress(PROGRESS, CONVERGE).await;
    rig.explain(r);
    drop(idle);

    // Nobody died, and a fresh client is served on every port.
    for i in 0..rig.cluster.len() {
        assert!(
            rig.cluster.replica_mut(i).proc.is_running(),
            "replica {i} died:\n{}",
            rig.logs()
        );
        let mut c = rig.cluster.connect(i, Role::Client).await.unwrap();
        assert_eq!(c.ping().await.unwrap(), Reply::Pong);
    }
    let mut c: Client = rig.cluster.connect_balancer().await.unwrap();
    assert_eq!(c.ping().await.unwrap(), Reply::Pong);
    finish("hostile-peers", rig, workload, Vec::new(), faults).await;
}
