//! The balancer's metrics: what its doors, router and replica groups count
//! as they go (relaxed atomics, one or two per request, no lock), and the
//! Prometheus page that reads them, and the groups' tables, at scrape time.
//! No series carries a key: the label sets are fixed (door, operation,
//! outcome, replica address), well under 500 series.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Unit;
use semikv_protocol::http::metrics::{self, Histogram, Labels, Page, Samples};
use semikv_protocol::{Command, ErrorReply, NodeRole, Op, Reply};

use crate::group::ReplicaGroup;

/// The door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The semikv protocol's.
    Semikv = 0,
    /// Redis's (`--resp`).
    Resp = 1,
    /// HTTP's (`--http`).
    Http = 2,
}

const DOORS: [Door; 3] = [Door::Semikv, Door::Resp, Door::Http];

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Semikv => "semikv",
            Door::Resp => "resp",
            Door::Http => "http",
        }
    }
}

/// What a request does, as metrics tell it apart: its op, with a read
/// counted as what it reads and a command as what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `Get`.
    Get = 0,
    /// `Set`, and `SET` with options.
    Set,
    /// `Delete`, and `DEL` of several keys.
    Delete,
    /// `MSET`, `MSETNX` (and the HTTP door's multi-key write).
    MSet,
    /// `INCR` and its kin.
    Incr,
    /// `APPEND`.
    Append,
    /// `GETDEL`.
    GetDel,
    /// `EXPIRE` and its kin, `PERSIST`.
    Expire,
    /// `GETEX`.
    GetEx,
    /// A key's TTL.
    Ttl,
    /// A page of the key space.
    Scan,
    /// The number of keys.
    DbSize,
    /// `Ping`.
    Ping,
    /// The cluster's status.
    Status,
    /// Anything else (an admin op a door refused).
    Other,
}

const OPS: usize = OpKind::Other as usize + 1;
const OP_NAMES: [&str; OPS] = [
    "get", "set", "delete", "mset", "incr", "append", "getdel", "expire", "getex", "ttl", "scan",
    "dbsize", "ping", "status", "other",
];

impl OpKind {
    /// The kind of `op`.
    pub fn of(op: &Op) -> OpKind {
        match op {
            Op::Get { .. } => OpKind::Get,
            Op::Set { .. } => OpKind::Set,
            Op::Delete { .. } => OpKind::Delete,
            Op::Ping => OpKind::Ping,
            Op::Status => OpKind::Status,
            Op::Ttl { .. } => OpKind::Ttl,
            Op::Scan(_) => OpKind::Scan,
            Op::DbSize => OpKind::DbSize,
            Op::Read(read) => OpKind::of(&read.op),
            Op::Command(command) => match command {
                Command::Set { .. } => OpKind::Set,
                Command::MSet { .. } => OpKind::MSet,
                Command::Delete { .. } => OpKind::Delete,
                Command::IncrBy { .. } => OpKind::Incr,
                Command::Append { .. } => OpKind::Append,
                Command::GetDel { .. } => OpKind::GetDel,
                Command::Expire { .. } => OpKind::Expire,
                Command::GetEx { .. } => OpKind::GetEx,
            },
            Op::Promote(_) | Op::Follow(_) | Op::Fence(_) => OpKind::Other,
        }
    }

    /// Its label value.
    pub fn name(self) -> &'static str {
        OP_NAMES[self as usize]
    }
}

/// How a request ended, as its client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (a missing key included).
    Ok = 0,
    /// Refused as invalid, or by the data (not an integer, overflow).
    Invalid,
    /// Refused by the user's role.
    Denied,
    /// No leader, or no replica, in time: nothing happened.
    Unavailable,
    /// A write whose outcome is unknown.
    Indeterminate,
    /// A write the followers did not acknowledge in time (unknown too).
    NotEnoughReplicas,
    /// Refused for lack of disk or memory: nothing happened.
    NoRoom,
    /// Any other error.
    Error,
    /// The client left before its answer (an HTTP request whose connection
    /// closed): a write may still have happened.
    Cancelled,
}

const OUTCOMES: usize = Outcome::Cancelled as usize + 1;
const OUTCOME_NAMES: [&str; OUTCOMES] = [
    "ok",
    "invalid",
    "denied",
    "unavailable",
    "indeterminate",
    "not_enough_replicas",
    "no_room",
    "error",
    "cancelled",
];

impl Outcome {
    /// How `reply` ends its request.
    pub fn of(reply: &Reply) -> Outcome {
        let Reply::Error(error) = reply else {
            return Outcome::Ok;
        };
        match error {
            ErrorReply::Invalid { .. } | ErrorReply::NotAnInteger | ErrorReply::Overflow => {
                Outcome::Invalid
            }
            ErrorReply::NoPermission { .. } => Outcome::Denied,
            ErrorReply::Unavailable { .. } | ErrorReply::NotLeader { .. } => Outcome::Unavailable,
            ErrorReply::Indeterminate { .. } => Outcome::Indeterminate,
            ErrorReply::NotEnoughReplicas { .. } => Outcome::NotEnoughReplicas,
            ErrorReply::DiskFull { .. } | ErrorReply::OutOfMemory { .. } => Outcome::NoRoom,
            _ => Outcome::Error,
        }
    }
}

/// Everything the balancer counts; one per balancer, shared through its
/// [`crate::Config`].
#[derive(Debug)]
pub struct Metrics {
    /// Answers by door, op and outcome.
    answered: Box<[AtomicU64]>,
    /// Requests taken by door (answered or not).
    taken: [AtomicU64; 3],
    latency: Box<[Histogram]>,
    connections: [AtomicI64; 3],
    connections_total: [AtomicU64; 3],
    elections: AtomicU64,
    failovers: AtomicU64,
    election_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            answered: (0..DOORS.len() * OPS * OUTCOMES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            taken: Default::default(),
            latency: (0..OPS).map(|_| Histogram::latency()).collect(),
            connections: Default::default(),
            connections_total: Default::default(),
            elections: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            election_seconds: Histogram::latency(),
        }
    }
}

impl Metrics {
    /// Counts a request taken through `door`.
    pub fn taken(&self, door: Door) {
        self.taken[door as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request's answer, and its latency when it is known.
    pub fn answered(&self, door: Door, op: OpKind, reply: &Reply, elapsed: Option<Duration>) {
        self.ended(door, op, Outcome::of(reply), elapsed);
    }

    fn ended(&self, door: Door, op: OpKind, outcome: Outcome, elapsed: Option<Duration>) {
        let at = (door as usize * OPS + op as usize) * OUTCOMES + outcome as usize;
        if let Some(count) = self.answered.get(at) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(elapsed), Some(histogram)) = (elapsed, self.latency.get(op as usize)) {
            histogram.observe_duration(elapsed);
        }
    }

    /// Counts a request through `door` refused before it was routed (taken
    /// and answered at once).
    pub fn refused(&self, door: Door, op: OpKind, reply: &Reply) {
        self.taken(door);
        self.answered(door, op, reply, None);
    }

    /// Counts a client connection through `door` until the guard drops.
    pub fn connection(self: &Arc<Self>, door: Door) -> ConnectionGuard {
        self.connections[door as usize].fetch_add(1, Ordering::Relaxed);
        self.connections_total[door as usize].fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            door,
        }
    }

    /// Counts an election started (replicas fenced at a new epoch).
    pub fn election_started(&self) {
        self.elections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a promotion, `took` after the leader was found missing (or
    /// the election began); a failover when it replaced a leader.
    pub fn promoted(&self, took: Duration, failover: bool) {
        self.election_seconds.observe_duration(took);
        if failover {
            self.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests taken and not yet answered, through every door.
    pub fn in_flight(&self) -> u64 {
        let taken: u64 = self.taken.iter().map(|t| t.load(Ordering::Relaxed)).sum();
        let answered: u64 = self
            .answered
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum();
        taken.saturating_sub(answered)
    }

    /// Failovers so far.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Writes the page: these counters, and `groups`' tables as they are.
    ///
    /// # Errors
    /// The encoder's.
    pub fn write(&self, page: &mut Page<'_, '_>, groups: &[Arc<ReplicaGroup>]) -> std::fmt::Result {
        let mut requests = Vec::new();
        for door in DOORS {
            for (op, op_name) in OP_NAMES.iter().enumerate() {
                for (outcome, outcome_name) in OUTCOME_NAMES.iter().enumerate() {
                    let at = (door as usize * OPS + op) * OUTCOMES + outcome;
                    let value = self.answered[at].load(Ordering::Relaxed);
                    // The main series always, so rates start at zero; the
                    // rest once they happen.
                    if value > 0 || (outcome == 0 && op < 3) {
                        requests.push((
                            labels(&[
                                ("door", door.name()),
                                ("op", op_name),
                                ("outcome", outcome_name),
                            ]),
                            value,
                        ));
                    }
                }
            }
        }
        page.family(
            "semikv_lb_requests",
            "Requests answered, by door, operation and outcome.",
            None,
            Samples::Counter(requests),
        )?;
        let latency = self
            .latency
            .iter()
            .enumerate()
            .filter(|(op, h)| *op < 3 || h.count() > 0)
            .map(|(op, h)| (labels(&[("op", OP_NAMES[op])]), h))
            .collect();
        page.family(
            "semikv_lb_request_duration",
            "Time from a request's arrival to its answer, by operation.",
            Some(Unit::Seconds),
            Samples::Histogram(latency),
        )?;
        page.gauge(
            "semikv_lb_requests_in_flight",
            "Requests taken and not yet answered.",
            self.in_flight() as f64,
        )?;
        let per_door = |values: &[AtomicI64; 3]| {
            DOORS
                .iter()
                .map(|d| {
                    let v = values[*d as usize].load(Ordering::Relaxed);
                    (labels(&[("door", d.name())]), v as f64)
                })
                .collect()
        };
        page.family(
            "semikv_lb_client_connections",
            "Client connections open, by door.",
            None,
            Samples::Gauge(per_door(&self.connections)),
        )?;
        page.family(
            "semikv_lb_client_connections_accepted",
            "Client connections accepted, by door.",
            None,
            Samples::Counter(
                DOORS
                    .iter()
                    .map(|d| {
                        let v = self.connections_total[*d as usize].load(Ordering::Relaxed);
                        (labels(&[("door", d.name())]), v)
                    })
                    .collect(),
            ),
        )?;
        page.counter(
            "semikv_lb_elections",
            "Elections started (replicas fenced at a new epoch).",
            self.elections.load(Ordering::Relaxed),
        )?;
        page.counter(
            "semikv_lb_failovers",
            "Promotions that replaced a leader this balancer had lost.",
            self.failovers(),
        )?;
        page.family(
            "semikv_lb_election_duration",
            "Time from a leader found missing (or an election begun) to the promotion of the next.",
            Some(Unit::Seconds),
            Samples::Histogram(vec![(Vec::new(), &self.election_seconds)]),
        )?;
        for group in groups {
            write_group(page, group)?;
        }
        Ok(())
    }
}

/// The group's leader, epoch and replicas, as its table shows them now.
fn write_group(page: &mut Page<'_, '_>, group: &ReplicaGroup) -> std::fmt::Result {
    let now = tokio::time::Instant::now().into_std();
    let view = group.table().cluster_view(now);
    let status = &view.report.status;
    page.gauge(
        "semikv_lb_epoch",
        "The term of the epoch writes go to (of the highest seen, with no leader).",
        status.epoch.term() as f64,
    )?;
    let leader_id = status
        .replicas
        .iter()
        .find(|r| status.leader.as_deref() == Some(r.addr.as_str()))
        .and_then(|r| r.id)
        .map_or(-1.0, |id| id.0 as f64);
    page.gauge(
        "semikv_lb_leader_id",
        "The id of the replica writes go to; -1 with no leader.",
        leader_id,
    )?;
    let rows = |f: &dyn Fn(usize) -> Option<f64>| -> Vec<(Labels<'_>, f64)> {
        status
            .replicas
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| f(slot).map(|v| (labels(&[("replica", r.addr.as_str())]), v)))
            .collect()
    };
    let replicas = &status.replicas;
    page.family(
        "semikv_lb_replica_healthy",
        "1 while the replica passes health checks.",
        None,
        Samples::Gauge(rows(&|s| Some(f64::from(u8::from(replicas[s].healthy))))),
    )?;
    page.family(
        "semikv_lb_replica_leader",
        "1 for the replica writes go to.",
        None,
        Samples::Gauge(rows(&|s| {
            Some(f64::from(u8::from(
                status.leader.as_deref() == Some(replicas[s].addr.as_str())
                    && replicas[s].role == NodeRole::Leader,
            )))
        })),
    )?;
    page.family(
        "semikv_lb_replica_applied_index",
        "The replica's applied log index, as last reported.",
        None,
        Samples::Gauge(rows(&|s| Some(replicas[s].applied_index.0 as f64))),
    )?;
    page.family(
        "semikv_lb_replica_lag_entries",
        "Entries the replica's log is behind the leader's.",
        None,
        Samples::Gauge(rows(&|s| Some(replicas[s].lag as f64))),
    )?;
    page.family(
        "semikv_lb_replica_read_lag",
        "How far behind the leader's commits the replica is known to be (what bounded reads use); absent when unknown.",
        Some(Unit::Seconds),
        Samples::Gauge(rows(&|s| {
            view.lag_ms.get(s).copied().flatten().map(|ms| ms as f64 / 1000.0)
        })),
    )
}

fn labels<'a>(pairs: &[(&'static str, &'a str)]) -> Labels<'a> {
    pairs.iter().map(|(k, v)| (*k, Cow::Borrowed(*v))).collect()
}

/// One client connection counted open; uncounted when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    door: Door,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.door as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The balancer's `/metrics` page over `metrics` and `groups`.
pub fn registry(
    metrics: Arc<Metrics>,
    groups: Vec<Arc<ReplicaGroup>>,
) -> prometheus_client::registry::Registry {
    metrics::registry(move |page| metrics.write(page, &groups))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use semikv_protocol::LogIndex;

    #[test]
    fn answers_count_by_door_op_and_outcome() {
        let m = Metrics::default();
        m.taken(Door::Resp);
        m.taken(Door::Resp);
        m.answered(
            Door::Resp,
            OpKind::Set,
            &Reply::Written { index: LogIndex(1) },
            Some(Duration::from_millis(2)),
        );
        assert_eq!(m.in_flight(), 1);
        let unavailable = crate::group::replies::unavailable("x");
        m.answered(Door::Resp, OpKind::Set, &unavailable, None);
        let text = metrics::render(&metrics::registry({
            let m = Arc::new(m);
            move |page| m.write(page, &[])
        }));
        assert!(
            text.contains(r#"semikv_lb_requests_total{door="resp",op="set",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"semikv_lb_requests_total{door="resp",op="set",outcome="unavailable"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"semikv_lb_requests_total{door="http",op="get",outcome="ok"} 0"#));
        assert!(text.contains(r#"semikv_lb_request_duration_seconds_count{op="set"} 1"#));
        assert!(text.contains("semikv_lb_requests_in_flight 0"), "{text}");
    }
}

/// What a client connection's answers are counted under: the balancer's
/// metrics and the connection's door. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Meter {
    /// The balancer's metrics.
    pub metrics: Arc<Metrics>,
    /// The connection's door.
    pub door: Door,
}

impl Meter {
    /// A meter for `door`'s connections.
    pub fn new(metrics: Arc<Metrics>, door: Door) -> Meter {
        Meter { metrics, door }
    }

    /// Counts a request taken.
    pub fn taken(&self) {
        self.metrics.taken(self.door);
    }

    /// Counts an answer to an `op` request taken at `since`.
    pub fn answered(&self, op: OpKind, reply: &Reply, since: tokio::time::Instant) {
        let elapsed = since.elapsed();
        self.metrics.answered(self.door, op, reply, Some(elapsed));
    }

    /// Counts an `op` request refused before it was routed.
    pub fn refused(&self, op: OpKind, reply: &Reply) {
        self.metrics.refused(self.door, op, reply);
    }

    /// Counts an `op` request whose client left before its answer.
    pub fn cancelled(&self, op: OpKind) {
        self.metrics.ended(self.door, op, Outcome::Cancelled, None);
    }

    /// Counts an answer to an `op` request taken at `since`, the time now
    /// being `now` (read once for answers that arrived together).
    pub fn answered_at(
        &self,
        op: OpKind,
        reply: &Reply,
        since: tokio::time::Instant,
        now: tokio::time::Instant,
    ) {
        self.metrics.answered(
            self.door,
            op,
            reply,
            Some(now.saturating_duration_since(since)),
        );
    }
}
