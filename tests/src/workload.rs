//! The workload recorder: concurrent clients doing sets (unique values),
//! deletes and gets through one address (the balancer), recording every
//! operation as a [`checker::Event`](crate::checker::Event).
//!
//! Each client runs one request at a time, so an operation's interval is
//! exactly the time its request was outstanding. A client whose connection
//! breaks (or whose request times out) records the operation as unknown and
//! reconnects; a connection that cannot be made records nothing (no request
//! left), and the client retries after a short backoff until stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::{ErrorReply, Op, Reply, Role};
use tokio::task::JoinHandle;

use crate::checker::{Action, Event, Outcome};
use crate::client::Client;
use crate::wait::Deadline;

/// Pause before reconnecting after a failed connect or a broken connection,
/// so a dead balancer is not hammered (a backoff, not a synchronisation).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// Shape of a workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Keys `k0..k{keys}` the clients share.
    pub keys: usize,
    /// Percent of operations that are gets.
    pub read_pct: u64,
    /// Percent of operations that are deletes (the rest are sets).
    pub delete_pct: u64,
    /// Seed of the clients' (deterministic) choices.
    pub seed: u64,
    /// Id of the first client: values are `c{id}-{n}`, so workloads with
    /// disjoint ids (one per balancer) never write the same value.
    pub first_client: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 4,
            keys: 16,
            read_pct: 40,
            delete_pct: 10,
            seed: 0x5e41_4b56,
            first_client: 0,
        }
    }
}

/// A running workload. Dropping it without [`Workload::stop`] aborts the
/// clients and loses the history.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<Event>>>,
    config: WorkloadConfig,
}

impl Workload {
    /// Starts `config.clients` clients against `addr` (role Client).
    pub fn start(addr: SocketAddr, config: WorkloadConfig) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = (0..config.clients)
            .map(|c| {
                let worker = Worker {
                    id: config.first_client + c,
                    addr,
                    keys: config.keys.max(1),
                    read_pct: config.read_pct,
                    delete_pct: config.delete_pct,
                    rng: Rng::new(config.seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    stop: stop.clone(),
                    acked: acked.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Workload {
            stop,
            acked,
            tasks,
            config,
        }
    }

    /// The keys the workload uses, for reading the final state back.
    pub fn keys(&self) -> Vec<Bytes> {
        keys(self.config.keys)
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes beyond those acknowledged now are
    /// acknowledged: the cluster is serving writes again.
    ///
    /// # Errors
    /// Not within `timeout`.
    pub async fn wait_progress(&self, more: u64, timeout: Duration) -> anyhow::Result<()> {
        let target = self.acked() + more;
        let deadline = Deadline::new(timeout, "the workload's writes to be acknowledged");
        while self.acked() < target {
            deadline.tick().await?;
        }
        Ok(())
    }

    /// Stops every client after its current operation and returns the whole
    /// history, ordered by start time.
    ///
    /// # Errors
    /// A client task panicked.
    pub async fn stop(mut self) -> anyhow::Result<Vec<Event>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut history = Vec::new();
        for task in self.tasks.drain(..) {
            history.extend(task.await?);
        }
        history.sort_by_key(|e| e.start);
        Ok(history)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The workload's key names for `n` keys.
pub fn keys(n: usize) -> Vec<Bytes> {
    (0..n.max(1))
        .map(|i| Bytes::from(format!("k{i}")))
        .collect()
}

struct Worker {
    id: usize,
    addr: SocketAddr,
    keys: usize,
    read_pct: u64,
    delete_pct: u64,
    rng: Rng,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
}

impl Worker {
    async fn run(mut self) -> Vec<Event> {
        let mut history = Vec::new();
        let mut conn: Option<Client> = None;
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let client = match conn.as_mut() {
                Some(c) => c,
                None => match Client::connect(self.addr, Role::Client).await {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let key = Bytes::from(format!("k{}", self.rng.below(self.keys as u64)));
            let roll = self.rng.below(100);
            let action = if roll < self.read_pct {
                Action::Get(None)
            } else if roll < self.read_pct + self.delete_pct {
                Action::Delete
            } else {
                seq += 1;
                Action::Set(Bytes::from(format!("c{}-{seq}", self.id)))
            };
            let op = match &action {
                Action::Get(_) => Op::Get { key: key.clone() },
                Action::Delete => Op::Delete { key: key.clone() },
                Action::Set(value) => Op::Set {
                    key: key.clone(),
                    value: value.clone(),
                },
            };
            let start = Instant::now();
            let result = client.request(op).await;
            let end = Instant::now();
            let (action, outcome, detail) = match result {
                Ok(reply) => classify(action, reply),
                Err(e) => {
                    // Whether the request left is unknown: it may have.
                    conn = None;
                    let outcome = match action {
                        Action::Get(_) => Outcome::Failed,
                        _ => Outcome::Unknown,
                    };
                    (action, outcome, format!("connection error: {e:#}"))
                }
            };
            if outcome == Outcome::Ok && !matches!(action, Action::Get(_)) {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            history.push(Event {
                client: self.id,
                key,
                action,
                start,
                end,
                outcome,
                detail,
            });
            if conn.is_none() {
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
        history
    }
}

/// The outcome a reply means for `action`, and the action with a read's
/// value filled in.
pub fn classify(action: Action, reply: Reply) -> (Action, Outcome, String) {
    let detail = format!("{reply:?}");
    let outcome = match (&action, &reply) {
        (Action::Get(_), Reply::Value(_)) => Outcome::Ok,
        (Action::Get(_), _) => Outcome::Failed,
        (_, Reply::Written { .. }) => Outcome::Ok,
        (_, Reply::Error(e)) => match e {
            // Refused before anything was appended.
            ErrorReply::NotLeader { .. }
            | ErrorReply::Unavailable { .. }
            | ErrorReply::Invalid { .. }
            | ErrorReply::StaleEpoch { .. }
            | ErrorReply::EpochConflict { .. }
            // A diverged replica refuses a write before appending it.
            | ErrorReply::Diverged { .. } => Outcome::Failed,
            // In the log, or maybe: may still commit. A storage failure may
            // have left the entry half-written too: not "failed for sure".
            ErrorReply::NotEnoughReplicas { .. }
            | ErrorReply::Indeterminate { .. }
            | ErrorReply::Storage { .. } => Outcome::Unknown,
        },
        // A write answered with something else is a protocol bug; count it
        // as unknown so the checker stays sound, and keep it in the detail.
        _ => Outcome::Unknown,
    };
    let action = match (action, reply) {
        (Action::Get(_), Reply::Value(v)) => Action::Get(v),
        (action, _) => action,
    };
    (action, outcome, detail)
}

/// The load generator's seedable SplitMix64, so both replay the same way.
pub use semikv_cli::bench::Rng;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_outcomes() {
        let set = || Action::Set(Bytes::from_static(b"v"));
        let (_, o, _) = classify(
            set(),
            Reply::Written {
                index: semikv_protocol::LogIndex(3),
            },
        );
        assert_eq!(o, Outcome::Ok);
        let (_, o, _) = classify(
            set(),
            Reply::Error(ErrorReply::NotEnoughReplicas {
                acked: 0,
                required: 1,
            }),
        );
        assert_eq!(o, Outcome::Unknown);
        let (_, o, _) = classify(
            Action::Delete,
            Reply::Error(ErrorReply::Unavailable {
                retry_after_ms: 1,
                reason: String::new(),
            }),
        );
        assert_eq!(o, Outcome::Failed);
        let (a, o, _) = classify(
            Action::Get(None),
            Reply::Value(Some(Bytes::from_static(b"x"))),
        );
        assert_eq!((a, o), (Action::Get(Some("x".into())), Outcome::Ok));
        let (_, o, _) = classify(Action::Get(None), Reply::Pong);
        assert_eq!(o, Outcome::Failed);
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }
}
