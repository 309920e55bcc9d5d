//! A replica group: the replicas that hold one copy of the data, the
//! balancer's view of them ([`table`]), its links to them ([`link`]) and the
//! election that picks their leader ([`health`] acts, [`failover`] decides).
//! Nothing in it is process-wide: a balancer may run several groups side by
//! side, each with its own table, links and health loop.

pub mod election;
pub mod failover;
pub mod health;
pub mod link;
pub mod replies;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use semikv_protocol::CoordinatorId;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use link::ReplicaLink;
use table::{Leader, Table};

/// Queue of "connection broke" notices from replica links to the health loop.
const BROKEN_QUEUE: usize = 64;

/// One replica group, cheap to share; its health loop runs on the tracker
/// it was started with until the shutdown token is cancelled.
#[derive(Debug)]
pub struct ReplicaGroup {
    config: Arc<Config>,
    table: Arc<Table>,
    links: Arc<Vec<Arc<ReplicaLink>>>,
    kick: Arc<Notify>,
    coordinator: CoordinatorId,
}

impl ReplicaGroup {
    /// Starts a group over `config.replicas` (a replica's slot is its
    /// position): links that connect on demand, and the health loop, which
    /// elects a leader as soon as enough replicas answer.
    pub fn start(
        config: Arc<Config>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<ReplicaGroup> {
        let table = Arc::new(Table::new(&config.replicas));
        let kick = Arc::new(Notify::new());
        let (broken_tx, broken_rx) = mpsc::channel(BROKEN_QUEUE);
        let connect_timeout = config.election_wait.max(Duration::from_millis(200));
        let links: Arc<Vec<Arc<ReplicaLink>>> = Arc::new(
            config
                .replicas
                .iter()
                .enumerate()
                .map(|(slot, addr)| {
                    Arc::new(
                        ReplicaLink::new(
                            slot,
                            addr.clone(),
                            config.max_frame_len,
                            config.cluster_secret.clone(),
                            config.tls.clone(),
                            connect_timeout,
                            broken_tx.clone(),
                            kick.clone(),
                            shutdown.clone(),
                            tasks.clone(),
                        )
                        .over(config.net),
                    )
                })
                .collect(),
        );
        drop(broken_tx);
        let health = health::HealthLoop::new(
            config.clone(),
            table.clone(),
            links.clone(),
            broken_rx,
            kick.clone(),
        );
        let coordinator = health.coordinator();
        tasks.spawn(health.run(shutdown.clone()));
        Arc::new(ReplicaGroup {
            config,
            table,
            links,
            kick,
            coordinator,
        })
    }

    /// The group's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The balancer's view of the group's replicas.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The link to the replica in `slot`, if there is one.
    pub fn link(&self, slot: usize) -> Option<&Arc<ReplicaLink>> {
        self.links.get(slot)
    }

    /// The leader writes go to, as it changes.
    pub fn watch_leader(&self) -> watch::Receiver<Option<Leader>> {
        self.table.watch_leader()
    }

    /// Asks the health loop for a round now: a replica misbehaved.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The health loop's notifier behind [`Self::kick`], for code that
    /// decides whether to kick from an outcome ([`replies::write_reply`]).
    pub fn kicker(&self) -> &Notify {
        &self.kick
    }

    /// The health loop's name in the epochs it mints.
    pub fn coordinator(&self) -> CoordinatorId {
        self.coordinator
    }
}
