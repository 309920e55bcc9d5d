//! The running replica: the node state machine behind its lock, the guard
//! that carries out what each change asks for, the signal that wakes the
//! WAL writer, and what every task shares.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};

use semikv_protocol::budget::ReadBudget;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::{Node, Signals};

/// Shared by every task of one replica.
#[derive(Debug)]
pub struct Replica {
    node: Mutex<Node>,
    writer_wake: Condvar,
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
}

impl Watches {
    /// Subscribes to `signals`.
    pub fn of(signals: &Signals) -> Watches {
        Watches {
            progress: signals.progress.subscribe(),
            durable: signals.durable.subscribe(),
            target: signals.target.subscribe(),
            deadline: signals.deadline.subscribe(),
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
            writer_wake: Condvar::new(),
            config,
            shutdown,
            admin: tokio::sync::Mutex::new(()),
            watch,
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

    /// For the writer: waits on the node lock until woken or `timeout`.
    pub fn wait_for_work<'a>(
        &'a self,
        guard: MutexGuard<'a, Node>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, Node> {
        match self.writer_wake.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    /// Wakes the writer (at shutdown).
    pub fn wake_writer(&self) {
        self.writer_wake.notify_all();
    }
}

/// The locked node. Dropping it carries out what the changes made through
/// it asked for ([`Node::flush_effects`]), still under the lock so that
/// effects leave in the order of the changes, and wakes the WAL writer when
/// it has work.
#[derive(Debug)]
pub struct NodeGuard<'a> {
    node: MutexGuard<'a, Node>,
    writer_wake: &'a Condvar,
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
            self.writer_wake.notify_one();
        }
    }
}
