//! The replica's metrics: what its WAL writer, snapshotter, follower stream
//! and listener count as they go, and the Prometheus page that reads them
//! and the node's state (under its lock, briefly) at scrape time.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Unit;
use semikv_protocol::http::metrics::{Histogram, Labels, Page, Samples};
use semikv_protocol::NodeRole;

use crate::replica::Replica;
use crate::writer::WriterStats;

/// What a replica counts besides its node's own state.
#[derive(Debug)]
pub struct ReplicaMetrics {
    /// The WAL writer's counters and latencies.
    pub writer: Arc<WriterStats>,
    snapshots: AtomicU64,
    snapshot_failures: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshot_seconds: Histogram,
    connections: AtomicI64,
    connections_total: AtomicU64,
    /// Whether this replica's stream from its leader is established.
    following: AtomicBool,
}

impl Default for ReplicaMetrics {
    fn default() -> ReplicaMetrics {
        ReplicaMetrics {
            writer: Arc::default(),
            snapshots: AtomicU64::new(0),
            snapshot_failures: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            snapshot_seconds: Histogram::seconds(&[
                0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            connections: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            following: AtomicBool::new(false),
        }
    }
}

impl ReplicaMetrics {
    /// Counts a snapshot written, of `bytes`, in `took`.
    pub fn snapshot_written(&self, bytes: u64, took: Duration) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes.store(bytes, Ordering::Relaxed);
        self.snapshot_seconds.observe_duration(took);
    }

    /// Counts a snapshot that failed.
    pub fn snapshot_failed(&self) {
        self.snapshot_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection open until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Notes the stream from the leader established until the guard drops.
    pub fn following(self: &Arc<Self>) -> FollowingGuard {
        self.following.store(true, Ordering::Relaxed);
        FollowingGuard(self.clone())
    }

    /// Whether the stream from the leader is established.
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }
}

/// A connection counted open.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<ReplicaMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stream from the leader, while established.
#[derive(Debug)]
pub struct FollowingGuard(Arc<ReplicaMetrics>);

impl Drop for FollowingGuard {
    fn drop(&mut self) {
        self.0.following.store(false, Ordering::Relaxed);
    }
}

fn labels(pairs: &[(&'static str, String)]) -> Labels<'static> {
    pairs
        .iter()
        .map(|(k, v)| (*k, Cow::Owned(v.clone())))
        .collect()
}

/// Writes the replica's page.
///
/// # Errors
/// The encoder's.
pub fn write(page: &mut Page<'_, '_>, replica: &Replica) -> std::fmt::Result {
    // The clock writes are proposed by (tokio's: virtual in a simulation).
    let now = tokio::time::Instant::now().into_std();
    let (report, lags, keys) = {
        let node = replica.lock();
        (node.report(), node.stream_lags(now), node.key_total())
    };
    let status = &report.status;
    let m = &replica.metrics;
    page.gauge(
        "semikv_replica_id",
        "This replica's id.",
        f64::from(status.id.0),
    )?;
    page.family(
        "semikv_replica_role",
        "1 for the role this replica has now.",
        None,
        Samples::Gauge(
            [NodeRole::Idle, NodeRole::Leader, NodeRole::Follower]
                .iter()
                .map(|r| {
                    (
                        labels(&[("role", r.to_string())]),
                        f64::from(u8::from(*r == status.role)),
                    )
                })
                .collect(),
        ),
    )?;
    page.gauge(
        "semikv_replica_epoch",
        "The term of the highest epoch this replica accepted.",
        status.epoch.term() as f64,
    )?;
    page.gauge(
        "semikv_replica_last_index",
        "The index of the last entry in the log.",
        status.last_index.0 as f64,
    )?;
    page.gauge(
        "semikv_replica_commit_index",
        "The highest index this replica knows committed.",
        status.commit_index.0 as f64,
    )?;
    page.gauge(
        "semikv_replica_applied_index",
        "The highest index applied to the store (what reads see).",
        status.applied_index.0 as f64,
    )?;
    let w = &m.writer;
    page.counter(
        "semikv_replica_wal_entries",
        "Log entries written to the WAL.",
        w.entries.load(Ordering::Relaxed),
    )?;
    page.counter(
        "semikv_replica_wal_fsyncs",
        "fsync calls on the WAL.",
        w.fsyncs.load(Ordering::Relaxed),
    )?;
    page.family(
        "semikv_replica_wal_append_duration",
        "Time to write one batch to the WAL (without its fsync).",
        Some(Unit::Seconds),
        Samples::Histogram(vec![(Vec::new(), &w.append_seconds)]),
    )?;
    page.family(
        "semikv_replica_wal_fsync_duration",
        "Time of one fsync of the WAL.",
        Some(Unit::Seconds),
        Samples::Histogram(vec![(Vec::new(), &w.fsync_seconds)]),
    )?;
    page.family(
        "semikv_replica_wal_entries_per_fsync",
        "Entries made durable by one fsync (group commit).",
        None,
        Samples::Histogram(vec![(Vec::new(), &w.entries_per_fsync)]),
    )?;
    page.counter(
        "semikv_replica_snapshots",
        "Snapshots written.",
        m.snapshots.load(Ordering::Relaxed),
    )?;
    page.counter(
        "semikv_replica_snapshot_failures",
        "Snapshots that failed.",
        m.snapshot_failures.load(Ordering::Relaxed),
    )?;
    page.family(
        "semikv_replica_snapshot_size",
        "The size of the last snapshot written.",
        Some(Unit::Bytes),
        Samples::Gauge(vec![(
            Vec::new(),
            m.snapshot_bytes.load(Ordering::Relaxed) as f64,
        )]),
    )?;
    page.family(
        "semikv_replica_snapshot_duration",
        "Time to write one snapshot.",
        Some(Unit::Seconds),
        Samples::Histogram(vec![(Vec::new(), &m.snapshot_seconds)]),
    )?;
    let follower = |id: u32| labels(&[("follower", id.to_string())]);
    page.family(
        "semikv_replica_follower_lag_entries",
        "Entries each follower has not acknowledged, as this leader sees it.",
        None,
        Samples::Gauge(
            lags.iter()
                .map(|l| (follower(l.follower.0), l.entries as f64))
                .collect(),
        ),
    )?;
    page.family(
        "semikv_replica_follower_lag",
        "How long ago the oldest entry each follower lacks was appended, as this leader sees it.",
        Some(Unit::Seconds),
        Samples::Gauge(
            lags.iter()
                .filter_map(|l| {
                    l.behind_for
                        .map(|d| (follower(l.follower.0), d.as_secs_f64()))
                })
                .collect(),
        ),
    )?;
    page.family(
        "semikv_replica_follower_connected",
        "1 while each follower's stream is connected, as this leader sees it.",
        None,
        Samples::Gauge(
            lags.iter()
                .map(|l| (follower(l.follower.0), f64::from(u8::from(l.connected))))
                .collect(),
        ),
    )?;
    page.family(
        "semikv_replica_store",
        "Bytes the store holds: keys, values and per-key overhead.",
        Some(Unit::Bytes),
        Samples::Gauge(vec![(Vec::new(), report.resources.memory_used as f64)]),
    )?;
    if let Some(limit) = report.resources.memory_limit {
        page.family(
            "semikv_replica_store_limit",
            "The store's limit (--max-memory).",
            Some(Unit::Bytes),
            Samples::Gauge(vec![(Vec::new(), limit as f64)]),
        )?;
    }
    page.gauge("semikv_replica_keys", "Keys in the store.", keys as f64)?;
    page.gauge(
        "semikv_replica_disk_full",
        "1 while the replica refuses writes for lack of disk space.",
        f64::from(u8::from(report.resources.disk_full.is_some())),
    )?;
    page.gauge(
        "semikv_replica_connections",
        "Connections open (clients, balancers, followers).",
        m.connections.load(Ordering::Relaxed) as f64,
    )?;
    page.counter(
        "semikv_replica_connections_accepted",
        "Connections accepted.",
        m.connections_total.load(Ordering::Relaxed),
    )
}
