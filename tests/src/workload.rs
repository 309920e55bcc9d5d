//! The workload recorder: concurrent clients doing sets (unique values),
//! deletes and gets through one address (the balancer), recording every
//! operation as a [`checker::Event`](crate::checker::Event).
//!
//! Each client runs one request at a time, so an operation's interval is
//! exactly the time its request was outstanding. A client whose connection
//! breaks (or whose request times out) records the operation as unknown and
//! reconnects; a connection that cannot be made records nothing (no request
//! left), and the client retries after a short backoff until stopped.
//!
//! Besides the history, a [`Tally`] counts the writes acknowledged and the
//! failures by kind, and the history so far can be looked at while the
//! clients run ([`Workload::with_history`]), so figures such as a failover's
//! longest write gap can be taken round by round.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::sync::lock;
use semikv_protocol::{ErrorReply, Op, Reply, Role};
use tokio::task::JoinHandle;

use crate::checker::{Action, Event, Outcome};
use crate::client::{is_timeout, Client};
use crate::wait::Deadline;

/// Pause before reconnecting after a failed connect or a broken connection,
/// so a dead balancer is not hammered (a backoff, not a synchronisation).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// Longest pause an `Unavailable` reply's retry hint imposes on a client
/// that honours it ([`WorkloadConfig::honour_retry_after`]).
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

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
    /// Every set writes a key of its own, `u{id}-{n}` (with value
    /// `c{id}-{n}`), instead of one of the shared `keys` (gets and deletes
    /// still use those): no later write can mask a lost one, so reading
    /// back every key the history names finds each loss.
    pub unique_keys: bool,
    /// Pause as long as an `Unavailable` reply's `retry_after_ms` asks (at
    /// most [`MAX_RETRY_PAUSE`]) before the next operation, as a
    /// well-behaved client does. Off in the fault tests, to keep the
    /// pressure on; on where the clients' experience is measured.
    pub honour_retry_after: bool,
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
            unique_keys: false,
            honour_retry_after: false,
        }
    }
}

/// A running workload. Dropping it without [`Workload::stop`] aborts the
/// clients and loses the history.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    record: Arc<Record>,
    tasks: Vec<JoinHandle<()>>,
    config: WorkloadConfig,
}

/// What the clients record, shared with the [`Workload`]. Locks are held
/// for a push, an increment or a caller's quick look (never across an
/// `.await`); every update is one push or one increment, so a poisoned lock
/// still holds consistent data.
#[derive(Debug, Default)]
struct Record {
    history: Mutex<Vec<Event>>,
    tally: Mutex<Tally>,
}

impl Record {
    fn history(&self) -> MutexGuard<'_, Vec<Event>> {
        lock(&self.history)
    }

    fn tally(&self) -> MutexGuard<'_, Tally> {
        lock(&self.tally)
    }
}

impl Workload {
    /// Starts `config.clients` clients against `addr` (role Client).
    pub fn start(addr: SocketAddr, config: WorkloadConfig) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Record::default());
        let tasks = (0..config.clients)
            .map(|c| {
                let worker = Worker {
                    id: config.first_client + c,
                    addr,
                    keys: config.keys.max(1),
                    read_pct: config.read_pct,
                    delete_pct: config.delete_pct,
                    unique_keys: config.unique_keys,
                    honour_retry_after: config.honour_retry_after,
                    rng: Rng::new(config.seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    stop: stop.clone(),
                    record: record.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Workload {
            stop,
            record,
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
        self.record.tally().acked
    }

    /// The writes acknowledged and failed so far, and the connections that
    /// could not be made (kind `connect`, or `connect-timeout`). Take one
    /// at each phase of a run and [`Tally::since`] gives each phase's share.
    pub fn tally(&self) -> Tally {
        self.record.tally().clone()
    }

    /// Runs `f` over the history so far (each client's operations in order,
    /// the clients interleaved as they finished), e.g. to take a figure while
    /// the clients go on. Clients finishing an operation wait while `f`
    /// runs, so it should be quick.
    pub fn with_history<T>(&self, f: impl FnOnce(&[Event]) -> T) -> T {
        f(&self.record.history())
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
    pub async fn stop(self) -> anyhow::Result<Vec<Event>> {
        Ok(self.stop_tallied().await?.0)
    }

    /// As [`Workload::stop`], with the final [`Tally`] (the last operations'
    /// outcomes included).
    ///
    /// # Errors
    /// A client task panicked.
    pub async fn stop_tallied(mut self) -> anyhow::Result<(Vec<Event>, Tally)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            task.await?;
        }
        let mut history = std::mem::take(&mut *self.record.history());
        history.sort_by_key(|e| e.start);
        Ok((history, self.tally()))
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
    unique_keys: bool,
    honour_retry_after: bool,
    rng: Rng,
    stop: Arc<AtomicBool>,
    record: Arc<Record>,
}

impl Worker {
    async fn run(mut self) {
        let mut conn: Option<Client> = None;
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let client = match conn.as_mut() {
                Some(c) => c,
                None => match Client::connect(self.addr, Role::Client).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        let kind = if is_timeout(&e) {
                            "connect-timeout"
                        } else {
                            "connect"
                        };
                        self.record.tally().record(Some(kind));
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let mut key = Bytes::from(format!("k{}", self.rng.below(self.keys as u64)));
            let roll = self.rng.below(100);
            let action = if roll < self.read_pct {
                Action::Get(None)
            } else if roll < self.read_pct + self.delete_pct {
                Action::Delete
            } else {
                seq += 1;
                if self.unique_keys {
                    key = Bytes::from(format!("u{}-{seq}", self.id));
                }
                Action::Set(Bytes::from(format!("c{}-{seq}", self.id)))
            };
            let op = request_for(&key, &action);
            let start = Instant::now();
            let result = client.request(op).await;
            let end = Instant::now();
            let mut pause = None;
            let (action, outcome, detail, kind) = match result {
                Ok(reply) => {
                    let kind = reply_kind(&reply);
                    if let Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) = &reply {
                        pause = self
                            .honour_retry_after
                            .then(|| Duration::from_millis(*retry_after_ms).min(MAX_RETRY_PAUSE));
                    }
                    let (action, outcome, detail) = classify(action, reply);
                    (action, outcome, detail, kind)
                }
                Err(e) => {
                    conn = None;
                    let kind = error_kind(&e);
                    let (action, outcome, detail) = unanswered(action, &e);
                    (action, outcome, detail, kind)
                }
            };
            if !matches!(action, Action::Get(_)) {
                let failure = (outcome != Outcome::Ok).then_some(kind);
                self.record.tally().record(failure);
            }
            self.record.history().push(Event {
                client: self.id,
                key,
                action,
                start,
                end,
                outcome,
                detail,
            });
            if conn.is_none() {
                pause = Some(RECONNECT_BACKOFF);
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Writes acknowledged and writes failed, by kind of failure ([`reply_kind`]
/// of the error reply, [`error_kind`] of a failed request), for a report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Writes acknowledged.
    pub acked: u64,
    /// Failures by kind.
    pub errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// Counts one write: acknowledged when `failure` is `None`, else failed
    /// that way.
    pub fn record(&mut self, failure: Option<&'static str>) {
        match failure {
            None => self.acked += 1,
            Some(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Tally) {
        self.acked += other.acked;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    /// What was counted after `earlier`, a copy of this tally taken before.
    pub fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            acked: self.acked.saturating_sub(earlier.acked),
            errors: self
                .errors
                .iter()
                .map(|(&kind, &n)| {
                    let before = earlier.errors.get(kind).copied().unwrap_or(0);
                    (kind, n.saturating_sub(before))
                })
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }

    /// The failures as `kind=n kind=n`, or `none`.
    pub fn errors(&self) -> impl fmt::Display + '_ {
        Errors(&self.errors)
    }
}

struct Errors<'a>(&'a BTreeMap<&'static str, u64>);

impl fmt::Display for Errors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, (kind, n)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{kind}={n}")?;
        }
        Ok(())
    }
}

/// A reply in a word, for tallies: `written`, `value`, or the error's kind
/// (`unavailable`, `not-leader`, `indeterminate`, ...).
pub fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Written { .. } => "written",
        Reply::Value(_) => "value",
        Reply::Pong => "pong",
        Reply::Node(_) | Reply::NodeReport(_) => "node-status",
        Reply::Cluster(_) | Reply::ClusterReport(_) | Reply::ClusterView(_) => "cluster-status",
        Reply::Outcome(_) => "outcome",
        Reply::Ttl(_) => "ttl",
        Reply::Keys(_) => "keys",
        Reply::KeyCount(_) => "key-count",
        Reply::Read(answer) => reply_kind(&answer.reply),
        Reply::Error(e) => match e {
            ErrorReply::NotLeader { .. } => "not-leader",
            ErrorReply::NotEnoughReplicas { .. } => "not-enough-replicas",
            ErrorReply::Unavailable { .. } => "unavailable",
            ErrorReply::Indeterminate { .. } => "indeterminate",
            ErrorReply::Invalid { .. } => "invalid",
            ErrorReply::StaleEpoch { .. } => "stale-epoch",
            ErrorReply::Storage { .. } => "storage",
            ErrorReply::EpochConflict { .. } => "epoch-conflict",
            ErrorReply::Diverged { .. } => "diverged",
            ErrorReply::DiskFull { .. } => "disk-full",
            ErrorReply::OutOfMemory { .. } => "out-of-memory",
            ErrorReply::NoPermission { .. } => "no-permission",
            ErrorReply::NotAnInteger => "not-an-integer",
            ErrorReply::Overflow => "overflow",
            ErrorReply::Behind { .. } => "behind",
        },
    }
}

/// A failed request in a word, for tallies: `client-timeout` when the peer
/// did not answer in time, else `connection`.
pub fn error_kind(error: &anyhow::Error) -> &'static str {
    if is_timeout(error) {
        "client-timeout"
    } else {
        "connection"
    }
}

/// The request that does `action` on `key`.
pub fn request_for(key: &Bytes, action: &Action) -> Op {
    match action {
        Action::Get(_) => Op::Get { key: key.clone() },
        Action::Delete => Op::Delete { key: key.clone() },
        Action::Set(value) => Op::Set {
            key: key.clone(),
            value: value.clone(),
        },
    }
}

/// The outcome of `action` when its request got no answer (the connection
/// broke, or a timeout): a read failed; a write may have left, so it may
/// have happened.
pub fn unanswered(action: Action, error: &anyhow::Error) -> (Action, Outcome, String) {
    let outcome = match action {
        Action::Get(_) => Outcome::Failed,
        _ => Outcome::Unknown,
    };
    (action, outcome, format!("connection error: {error:#}"))
}

/// The outcome a reply means for `action`, and the action with a read's
/// value filled in.
pub fn classify(action: Action, reply: Reply) -> (Action, Outcome, String) {
    let detail = format!("{reply:?}");
    // A read at a consistency level: what it answered, whatever its position.
    let reply = match (&action, reply) {
        (Action::Get(_), Reply::Read(answer)) => *answer.reply,
        (_, reply) => reply,
    };
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
            // A diverged replica refuses a write before appending it, and
            // so does one whose disk or memory is full.
            | ErrorReply::Diverged { .. }
            | ErrorReply::DiskFull { .. }
            | ErrorReply::OutOfMemory { .. }
            // Refused by the balancer before it was forwarded.
            | ErrorReply::NoPermission { .. }
            // A command's error: evaluated, nothing written.
            | ErrorReply::NotAnInteger
            | ErrorReply::Overflow
            // A read's refusal: never a write's answer.
            | ErrorReply::Behind { .. } => Outcome::Failed,
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
    fn a_tally_splits_into_phases() {
        let mut t = Tally::default();
        t.record(None);
        t.record(Some("unavailable"));
        let warm_up = t.clone();
        t.record(None);
        t.record(Some("unavailable"));
        t.record(Some("indeterminate"));
        let phase = t.since(&warm_up);
        assert_eq!(phase.acked, 1);
        assert_eq!(phase.errors().to_string(), "indeterminate=1 unavailable=1");
        assert_eq!(t.since(&t).errors().to_string(), "none");
        let mut sum = warm_up.clone();
        sum.add(&phase);
        assert_eq!(sum, t);
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
