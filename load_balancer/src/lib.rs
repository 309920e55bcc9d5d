//! semikv-lb: the clients' single entry point and the cluster's coordinator.
//! It health-checks the replicas, elects and fences leaders, routes writes to
//! the leader and reads round-robin, and fails over when the leader dies. It
//! keeps no state on disk: the replicas hold the epochs.
//!
//! Modules: [`failover`] decides (pure), [`health`] observes and acts,
//! [`table`] holds the view, [`replica_conn`] talks to replicas, [`router`]
//! serves clients, [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod failover;
pub mod health;
pub mod outbox;
pub mod replica_conn;
pub mod router;
pub mod table;

use semikv_protocol::admission::{Admission, Admitted};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Longest the balancer waits for its tasks after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Queue of "connection broke" notices from replica links to the health loop.
const BROKEN_QUEUE: usize = 64;

/// Runs the balancer on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// Fails when no replica is configured. Errors of single connections are
/// handled (and logged) without stopping the balancer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!config.replicas.is_empty(), "no replica configured");
    let config = Arc::new(config);
    let tasks = TaskTracker::new();
    let table = Arc::new(table::Table::new(&config.replicas));
    let (broken_tx, broken_rx) = mpsc::channel(BROKEN_QUEUE);
    let connect_timeout = config.election_wait.max(Duration::from_millis(200));
    let links: Arc<Vec<Arc<replica_conn::ReplicaLink>>> = Arc::new(
        config
            .replicas
            .iter()
            .enumerate()
            .map(|(slot, addr)| {
                Arc::new(replica_conn::ReplicaLink::new(
                    slot,
                    addr.clone(),
                    config.max_frame_len,
                    connect_timeout,
                    broken_tx.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                ))
            })
            .collect(),
    );
    drop(broken_tx);
    let kick = Arc::new(Notify::new());
    let health = health::HealthLoop::new(
        config.clone(),
        table.clone(),
        links.clone(),
        broken_rx,
        kick.clone(),
    );
    let coordinator = health.coordinator();
    tasks.spawn(health.run(shutdown.clone()));
    let router = Arc::new(router::Router::new(
        config.clone(),
        table.clone(),
        links.clone(),
        kick,
    ));
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, replicas = config.replicas.len(), coordinator = %coordinator, "balancer listening");
    }
    let admission = Admission::new(config.max_connections);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit(stream) {
                    Admitted::Yes(stream, slot) => {
                        tracing::debug!(peer = %peer, "client connected");
                        let serving = router.clone().serve(stream, shutdown.clone());
                        tasks.spawn(async move {
                            serving.await;
                            drop(slot);
                        });
                    }
                    Admitted::No { report } => {
                        if let Some(refused) = report {
                            warn!(peer = %peer, max = admission.max(), refused, "connection limit reached; refusing new clients until some close");
                        }
                    }
                },
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        warn!("shutdown drain timed out");
    }
    info!("balancer stopped");
    Ok(())
}
