//! The balancer's orders to a replica (balancer connections only): promote,
//! follow, fence; and the limits a promotion's sync settings must respect.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, ReplicaId};

/// Most followers a [`Promote`] may make a write wait for: far more than
/// any cluster has. Replicas refuse more.
pub const MAX_SYNC_REPLICAS: u32 = 255;

/// Longest sync timeout a [`Promote`] may carry, in milliseconds (an hour):
/// past it a hung follower would hold every write, and the balancer's
/// patience, for good. Replicas refuse longer ones.
pub const MAX_SYNC_TIMEOUT_MS: u64 = 3_600_000;

/// Admin: become leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promote {
    /// The new epoch; must be higher than any the replica has seen.
    pub epoch: Epoch,
    /// Followers that must acknowledge a write before it commits, already
    /// capped by the balancer at the number of followers it assigned.
    pub sync_replicas: u32,
    /// How long a write waits for those acknowledgements.
    pub sync_timeout_ms: u64,
    /// On timeout, commit without the acknowledgements (asynchronous
    /// replication) instead of failing with `NotEnoughReplicas`. Off by default.
    pub async_fallback: bool,
}

/// Admin: follow a leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follow {
    /// The leader's epoch; must be at least the replica's current epoch.
    pub epoch: Epoch,
    /// The leader's id.
    pub leader: ReplicaId,
    /// Where the leader accepts replica connections.
    pub leader_addr: String,
}

/// Admin: fence.
///
/// The replica persists `epoch` and from then on rejects every stream, entry
/// and ack of a lower epoch. A leader that is fenced steps down. After the
/// answer, the replica's reported last index can only grow by entries of
/// `epoch` or later: this is what makes the balancer's choice of the most
/// up-to-date replica safe while the old leader may still be running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The new epoch; must be at least the replica's current epoch.
    pub epoch: Epoch,
}
