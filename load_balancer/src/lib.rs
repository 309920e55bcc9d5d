//! semikv-lb: the clients' single entry point and the cluster's coordinator.
//! It health-checks the replicas, elects and fences leaders, routes writes to
//! the leader and reads round-robin, and fails over when the leader dies. It
//! keeps no state on disk: the replicas hold the epochs.
//!
//! Three layers, joined by the transport-neutral types of [`request`]:
//! [`door`]s speak to clients (the semikv protocol, Redis's with `--resp`,
//! HTTP with `--http`), the [`router`]
//! maps each request to a replica group and a replica, and each
//! [`group::ReplicaGroup`] holds its replicas' table, links and election.
//! [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod door;
pub mod group;
pub mod metrics;
pub mod request;
pub mod router;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use semikv_protocol::budget::ReadBudget;
use semikv_protocol::net::Listener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
use group::ReplicaGroup;
use router::{ReadPolicy, Router};

/// Longest the balancer waits for its tasks after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The bound listeners of the balancer's doors.
#[derive(Debug)]
pub struct Doors {
    /// The semikv protocol's (always open).
    pub semikv: Listener,
    /// The Redis protocol's, if asked for (`--resp`).
    pub resp: Option<Listener>,
    /// HTTP's (the key-value API, status, health, metrics), if asked for
    /// (`--http`).
    pub http: Option<Listener>,
}

/// Runs the balancer on `listener` (the semikv door only) until `shutdown`
/// is cancelled.
///
/// # Errors
/// As [`run_doors`].
pub async fn run(
    config: Config,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let doors = Doors {
        semikv: listener.into(),
        resp: None,
        http: None,
    };
    run_doors(config, doors, shutdown).await
}

/// Runs the balancer with every door in `doors` until `shutdown` is
/// cancelled.
///
/// # Errors
/// Fails when no replica is configured. Errors of single connections are
/// handled (and logged) without stopping the balancer.
pub async fn run_doors(
    config: Config,
    doors: Doors,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = doors.semikv;
    anyhow::ensure!(!config.replicas.is_empty(), "no replica configured");
    let config = Arc::new(config);
    let tasks = TaskTracker::new();
    if config.users.is_some() || config.tls.is_some() {
        let (users, tls) = (config.users.clone(), config.tls.clone());
        tasks.spawn(semikv_protocol::process::on_sighup(
            shutdown.clone(),
            move || reload(users.as_deref(), tls.as_deref()),
        ));
    }
    let group = ReplicaGroup::start(config.clone(), &shutdown, &tasks);
    let coordinator = group.coordinator();
    let router = Arc::new(Router::new(
        vec![group],
        ReadPolicy::RoundRobin,
        config.read_consistency,
    ));
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, replicas = config.replicas.len(), coordinator = %coordinator, "balancer listening");
    }
    // One budget for every door: it bounds the process, not a listener.
    let budget = ReadBudget::covering(config.max_buffered_input, config.max_frame_len);
    if let Some(resp) = doors.resp {
        if let Ok(addr) = resp.local_addr() {
            info!(addr = %addr, "RESP door listening");
        }
        tasks.spawn(door::resp::run(
            resp,
            router.clone(),
            config.clone(),
            budget.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    if let Some(http) = doors.http {
        if let Ok(addr) = http.local_addr() {
            info!(addr = %addr, "HTTP door listening");
        }
        tasks.spawn(door::http::run(
            http,
            router.clone(),
            config.clone(),
            budget.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    door::semikv::run(listener, router, config, budget, shutdown, tasks.clone()).await;
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

/// What a SIGHUP reloads: the users file and the TLS certificates. A
/// file that parses replaces what was loaded (connections logged in as a
/// removed user are refused from their next request; open TLS sessions
/// keep their certificate); one that does not keeps it, with an error.
fn reload(users: Option<&users::Users>, tls: Option<&semikv_protocol::tls::Tls>) {
    if let Some(users) = users {
        match users.reload() {
            Ok(count) => {
                info!(file = %users.path().display(), users = count, "users file reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "users file not reloaded; the users loaded before stay")
            }
        }
    }
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(()) => info!("TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificates not reloaded; the ones loaded before stay in use")
            }
        }
    }
}
