//! The running replica: the node state machine behind its lock, the guard
//! that carries out what each change asks for, the signal that wakes the
//! WAL writer, and what every task shares.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};

use semikv_protocol::blocking::Blocking;
use semikv_protocol::budget::ReadBudget;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::{Node, Signals};

/// Shared by every task of one replica.
#[derive(Debug)]
pub struct Replica {
    node: Mutex<Node>,
    writer_wake: WriterWake,
    /// The replica's configuration.
    pub config: Config,
    /// Cancelled on shutdown, or when the disk fails.
    pub shutdown: CancellationToken,
    /// Serialises admin operations, so epochs are persisted in order.
    pub admin: tokio::sync::Mutex<()>,
    /// Receivers of the node's signals are cloned from these.
    pub watch: Watches,
    /// Bytes of large frames the connections accepted may buffer together
    /// while they arrive (see [`semikv_protocol::budget`]).
    pub read_budget: ReadBudget,
    /// What it counts for `/metrics`.
    pub metrics: std::sync::Arc<crate::metrics::ReplicaMetrics>,
}

/// Receivers for the node's signals.
#[derive(Debug, Clone)]
pub struct Watches {
    /// Appends and commit moves.
    pub progress: tokio::sync::watch::Receiver<u64>,
    /// Durable last index.
    pub durable: tokio::sync::watch::Receiver<semikv_protocol::LogIndex>,
    /// Leader to follow.
    pub target: tokio::sync::watch::Receiver<Option<crate::node::FollowTarget>>,
    /// An earlier sync deadline appeared.
    pub deadline: tokio::sync::watch::Receiver<u64>,
    /// The last round of leadership confirmation asked for.
    pub lead_check: tokio::sync::watch::Receiver<u64>,
    /// Followers confirmed a newer round.
    pub confirmed: tokio::sync::watch::Receiver<u64>,
}

impl Watches {
    /// Subscribes to `signals`.
    pub fn of(signals: &Signals) -> Watches {
        Watches {
            progress: signals.progress.subscribe(),
            durable: signals.durable.subscribe(),
            target: signals.target.subscribe(),
            deadline: signals.deadline.subscribe(),
            lead_check: signals.lead_check.subscribe(),
            confirmed: signals.confirmed.subscribe(),
        }
    }
}

impl Replica {
    /// Wraps a node.
    pub fn new(
        mut node: Node,
        watch: Watches,
        config: Config,
        shutdown: CancellationToken,
    ) -> Replica {
        // What building the node asked for (its durable index) goes out now.
        node.flush_effects();
        let read_budget = ReadBudget::covering(config.max_buffered_input, config.max_frame_len);
        Replica {
            read_budget,
            node: Mutex::new(node),
            writer_wake: WriterWake::new(config.blocking),
            config,
            shutdown,
            admin: tokio::sync::Mutex::new(()),
            watch,
            metrics: std::sync::Arc::default(),
        }
    }

    /// Locks the node; what the changes made through the guard ask for is
    /// carried out when it drops. A poisoned lock means a task panicked
    /// mid-change; the state is still the last consistent one every rule
    /// left it in, because node methods validate before they mutate.
    pub fn lock(&self) -> NodeGuard<'_> {
        NodeGuard {
            node: semikv_protocol::sync::lock(&self.node),
            writer_wake: &self.writer_wake,
        }
    }

    /// Locks the node for the WAL writer's wait ([`Self::wait_for_work`]),
    /// without the guard: the writer only takes the outbox, which asks for
    /// nothing.
    pub fn lock_for_writer(&self) -> MutexGuard<'_, Node> {
        semikv_protocol::sync::lock(&self.node)
    }

    /// Runs `f` on the node, then carries out what it asked for (answers,
    /// wake-ups of the streams and of the WAL writer). Never call it across
    /// an `.await`.
    pub fn with<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let mut node = self.lock();
        f(&mut node)
    }

    /// For the writer thread ([`Blocking::Threads`]): waits on the node
    /// lock until woken or `timeout`.
    pub fn wait_for_work<'a>(
        &'a self,
        guard: MutexGuard<'a, Node>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, Node> {
        match self.writer_wake.condvar.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    /// For the writer task ([`Blocking::Inline`]): resolves once woken. A
    /// wake-up while nobody waited is kept for the next wait, so one that
    /// comes between looking at the outbox and awaiting this is not lost.
    pub async fn writer_woken(&self) {
        self.writer_wake.notify.notified().await;
    }

    /// Wakes the writer (at shutdown).
    pub fn wake_writer(&self) {
        self.writer_wake.wake();
    }
}

/// What wakes the WAL writer: a condition variable its thread waits on
/// under the node lock ([`Blocking::Threads`]), or a `Notify` its task
/// awaits ([`Blocking::Inline`]). Only the one in use is signalled.
#[derive(Debug)]
struct WriterWake {
    driver: Blocking,
    condvar: Condvar,
    notify: Notify,
}

impl WriterWake {
    fn new(driver: Blocking) -> WriterWake {
        WriterWake {
            driver,
            condvar: Condvar::new(),
            notify: Notify::new(),
        }
    }

    /// Wakes the writer (there is one), or, for a task not waiting yet,
    /// leaves it a permit.
    fn wake(&self) {
        match self.driver {
            Blocking::Threads => self.condvar.notify_one(),
            Blocking::Inline => self.notify.notify_one(),
        }
    }
}

/// The locked node. Dropping it carries out what the changes made through
/// it asked for ([`Node::flush_effects`]), still under the lock so that
/// effects leave in the order of the changes, and wakes the WAL writer when
/// it has work.
#[derive(Debug)]
pub struct NodeGuard<'a> {
    node: MutexGuard<'a, Node>,
    writer_wake: &'a WriterWake,
}

impl Deref for NodeGuard<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for NodeGuard<'_> {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        if self.node.flush_effects() {
            self.writer_wake.wake();
        }
    }
}
