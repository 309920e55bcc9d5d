//! What replicas and the balancer report: a replica's [`NodeStatus`], the
//! balancer's [`ClusterStatus`], the rows they are made of, (from
//! protocol 3) the [`Resources`] that [`NodeReport`] and [`ClusterReport`]
//! add to them, and (from protocol 7) the read lag [`ClusterView`] adds.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ids::{Epoch, LogIndex, ReplicaId};

/// What a replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// Started, not yet told to lead or follow.
    Idle,
    /// Accepting writes.
    Leader,
    /// Pulling the log from a leader.
    Follower,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Idle => "idle",
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
        })
    }
}

/// A replica's own view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: ReplicaId,
    /// Its role.
    pub role: NodeRole,
    /// Highest epoch it has accepted.
    pub epoch: Epoch,
    /// Index of its last log entry.
    pub last_index: LogIndex,
    /// Epoch of its last log entry.
    pub last_epoch: Epoch,
    /// Highest index it knows to be committed.
    pub commit_index: LogIndex,
    /// Highest index applied to its map (visible to reads).
    pub applied_index: LogIndex,
    /// The leader's address, when following.
    pub leader: Option<String>,
    /// When leading: each follower's progress.
    pub followers: Vec<FollowerProgress>,
}

/// A leader's view of one follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerProgress {
    /// The follower's id.
    pub id: ReplicaId,
    /// Highest index it has acknowledged.
    pub match_index: LogIndex,
    /// Whether its stream is connected now.
    pub connected: bool,
}

/// The balancer's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader's address, if there is one.
    pub leader: Option<String>,
    /// The current epoch.
    pub epoch: Epoch,
    /// Every replica the balancer was given.
    pub replicas: Vec<ReplicaView>,
}

/// One row of [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Its id, once it has answered a handshake.
    pub id: Option<ReplicaId>,
    /// Its address.
    pub addr: String,
    /// Its role, as last reported.
    pub role: NodeRole,
    /// Whether it passes health checks.
    pub healthy: bool,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its last log index.
    pub last_index: LogIndex,
    /// Its commit index.
    pub commit_index: LogIndex,
    /// Its applied index.
    pub applied_index: LogIndex,
    /// Entries it is behind the leader's last index.
    pub lag: u64,
}

/// What a replica's disk and memory allow (protocol 3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Why the replica refuses writes for lack of disk space, while it does
    /// (it retries by itself and clears this once a write succeeds).
    pub disk_full: Option<String>,
    /// Bytes the store holds: keys, values and per-key overhead.
    pub memory_used: u64,
    /// The store's limit (`--max-memory`), if one is set.
    pub memory_limit: Option<u64>,
}

/// A replica's status with its resources: what a replica of protocol 3
/// answers `Status`, `Promote` and `Follow` with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Its role, epoch and log.
    pub status: NodeStatus,
    /// Its disk and memory.
    pub resources: Resources,
    /// When it leads: the terms it was promoted with, so that a balancer can
    /// tell a leader that can never commit (more followers required than
    /// the cluster has) from one that merely lost its followers.
    pub leading: Option<LeaderTerms>,
}

/// The terms a leader was promoted with (from its `Promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderTerms {
    /// Followers whose acknowledgement a commit needs.
    pub sync_replicas: u32,
    /// How long a write waits for them, in milliseconds.
    pub sync_timeout_ms: u64,
    /// Whether it commits without them after the timeout.
    pub async_fallback: bool,
}

/// The balancer's view of the cluster with each replica's resources: what a
/// balancer of protocol 3 answers `Status` with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// Leader, epoch and one row per replica.
    pub status: ClusterStatus,
    /// One entry per row of `status.replicas`, in the same order: the
    /// replica's last reported resources, `None` before its first report.
    pub resources: Vec<Option<Resources>>,
}

/// The balancer's report with what its router reads by (protocol 7): what
/// a balancer of protocol 7 answers `Status` with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Leader, epoch, one row per replica (applied index included), and
    /// resources.
    pub report: ClusterReport,
    /// One entry per row of `report.status.replicas`, in the same order:
    /// how far behind the leader's commits the replica is known to be, in
    /// milliseconds (0 for the leader), as `bounded` reads judge it; `None`
    /// when it gets no reads or its lag is unknown.
    pub lag_ms: Vec<Option<u64>>,
}
