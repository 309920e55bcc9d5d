//! The replication stream between replicas: the log [`Entry`] and its
//! [`WriteOp`], the follower's [`Subscribe`], and the leader's stream
//! start, entries, snapshot chunks, and the follower's acks.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, LogIndex, ReplicaId, UnixMillis};

/// A write in the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its position.
    pub index: LogIndex,
    /// The epoch of the leader that wrote it.
    pub epoch: Epoch,
    /// What it does.
    pub op: WriteOp,
}

impl Entry {
    /// crc32 of its postcard encoding: what two replicas compare to tell
    /// whether they hold the same entry. `None` only if it cannot be encoded.
    pub fn checksum(&self) -> Option<u32> {
        let mut hasher = crc32fast::Hasher::new();
        let bytes = postcard::to_allocvec(self).ok()?;
        hasher.update(&bytes);
        Some(hasher.finalize())
    }
}

/// The operation an [`Entry`] applies. Row-based and idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set a key.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Changes nothing. A new leader appends one at promotion so that it can
    /// commit the tail it inherited (an entry of its own epoch, as Raft does).
    Noop,
    /// Several keys set (each with its expiry) or deleted, all by this one
    /// entry (protocol 5): the result a leader logged for a
    /// [`Command`](super::Command), or its deletion of expired keys.
    /// Applied in order (a key named twice ends as the last says); nothing
    /// is evaluated, so replaying it is idempotent like `Set` and `Delete`.
    Batch(Vec<Mutation>),
}

/// One key's new state in a [`WriteOp::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutation {
    /// The key.
    pub key: Bytes,
    /// Its new value; `None` deletes it.
    pub value: Option<Bytes>,
    /// When it expires (ignored when `value` is `None`); `None`: never.
    pub expires_at: Option<UnixMillis>,
}

impl WriteOp {
    /// The keys it writes, in order (a `Noop` none).
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many) = match self {
            WriteOp::Set { key, .. } | WriteOp::Delete { key } => (Some(key), &[][..]),
            WriteOp::Noop => (None, &[][..]),
            WriteOp::Batch(mutations) => (None, &mutations[..]),
        };
        one.into_iter().chain(many.iter().map(|m| &m.key))
    }
}

/// The first index written in an epoch. A replica's list of these is its
/// epoch history: which epoch wrote each index of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: Epoch,
    /// Its first index.
    pub start: LogIndex,
}

/// Follower to leader, first message on a replication stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The epoch the follower was told to follow at.
    pub epoch: Epoch,
    /// The follower's id.
    pub follower: ReplicaId,
    /// Index of its last entry.
    pub last_index: LogIndex,
    /// Epoch of its last entry.
    pub last_epoch: Epoch,
    /// Its epoch history, so the leader can find the common prefix in one step.
    pub history: Vec<EpochStart>,
}

/// Leader to follower: the stream continues after `prefix` (protocol 1;
/// leaders of protocol 2 send [`StreamFrom`] instead, and followers refuse
/// this one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStart {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The last index both logs agree on; the follower truncates after it.
    pub prefix: LogIndex,
}

/// Leader to follower: the stream continues after `prefix`, which both logs
/// hold. The follower checks that its own entry at `prefix` is the leader's
/// (same epoch and, when the leader still holds it in memory, the same
/// bytes) before it truncates anything after it: two logs that disagree
/// there broke log matching, and merging them would corrupt the follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFrom {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The last index both logs agree on; the follower truncates after it.
    pub prefix: LogIndex,
    /// The epoch of the leader's entry at `prefix` (0 for index 0).
    pub prefix_epoch: Epoch,
    /// crc32 of the postcard encoding of the leader's entry at `prefix`, or
    /// `None` when that entry is only in its snapshot (or `prefix` is 0).
    pub prefix_crc: Option<u32>,
}

/// Leader to follower: entries after `prev_index`, and the commit index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The index just before the first entry (the follower must have it).
    pub prev_index: LogIndex,
    /// Consecutive entries, possibly none (a heartbeat).
    pub entries: Vec<Entry>,
    /// The leader's commit index: the follower may apply up to it.
    pub commit_index: LogIndex,
}

/// Follower to leader: everything up to `match_index` is durably appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The follower's epoch.
    pub epoch: Epoch,
    /// Its last durable entry matching the leader's log.
    pub match_index: LogIndex,
}

/// Leader to follower, before the first [`SnapshotChunk`] (protocol 3):
/// how large the snapshot it is about to stream is. The follower checks the
/// size against its free disk before taking any of it, and refuses a stream
/// that sends more than it announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotOffer {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The last index the snapshot covers.
    pub last_index: LogIndex,
    /// The snapshot's size in bytes: the sum of its chunks' data.
    pub total_len: u64,
}

/// Leader to follower: part of a snapshot; chunks arrive in order and the
/// last one has `done` set. The follower replaces its state with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The last index the snapshot covers.
    pub last_index: LogIndex,
    /// The epoch of that index.
    pub last_epoch: Epoch,
    /// The leader's epoch history up to `last_index`.
    pub history: Vec<EpochStart>,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// Snapshot bytes.
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}
