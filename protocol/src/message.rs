//! Every message semikv processes exchange, in one enum per direction-free
//! family, all carried by [`Message`].
//!
//! Wire rules (postcard encodes an enum variant as its position): variants and
//! fields are frozen once shipped. Append new variants at the end of an enum;
//! never reorder, remove, or add a field to an existing variant. The golden
//! vectors in `tests/golden.rs` fail on any change; changing one is a protocol
//! version bump.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ids::{Epoch, LogIndex, ReplicaId, RequestId};

/// First field of every [`Hello`]: "SKV1". A peer that sends anything else is
/// not speaking semikv.
pub const MAGIC: u32 = 0x534b_5631;

/// The protocol version this build speaks.
///
/// Version 2: epochs are ballots (`term << 64 | coordinator`, a `u128`; see
/// [`crate::Epoch`]), leaders open streams with [`Message::StreamFrom`],
/// [`ErrorReply`] gained `EpochConflict` and `Diverged`, and [`WireError`]
/// `TooManyConnections`.
pub const PROTOCOL_VERSION: u16 = 2;

/// Longest key accepted: 64 KiB.
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// Default longest value accepted: 8 MiB. Servers may be configured lower, and
/// higher up to what fits in a frame.
pub const DEFAULT_MAX_VALUE_LEN: usize = 8 * 1024 * 1024;

/// One frame's worth: the unit the codec reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on every connection, from the side that connected.
    Hello(Hello),
    /// The accepting side's answer to a valid [`Hello`].
    Welcome(Welcome),
    /// A protocol error; the sender closes the connection after it.
    Reject(WireError),
    /// A client or admin operation.
    Request(Request),
    /// The answer to the [`Request`] with the same id.
    Response(Response),
    /// Follower to leader: start streaming the log to me.
    Subscribe(Subscribe),
    /// Leader to follower: where the stream starts; truncate after it.
    StreamStart(StreamStart),
    /// Leader to follower: a batch of entries (possibly empty: a heartbeat).
    Entries(Entries),
    /// Follower to leader: entries durably appended.
    Ack(Ack),
    /// Leader to follower: part of a snapshot of the whole map.
    Snapshot(SnapshotChunk),
    /// Leader to follower: where the stream starts, and what the follower
    /// must hold there (replaces [`Message::StreamStart`] from protocol 2).
    StreamFrom(StreamFrom),
}

/// The role a connection declares in its handshake. Admin messages are
/// accepted only from `Balancer` connections, replication messages only from
/// `Replica` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// An application or the `semikv` REPL.
    Client,
    /// The load balancer / coordinator.
    Balancer,
    /// Another replica (a follower subscribing to its leader).
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Balancer => "balancer",
            Role::Replica => "replica",
        })
    }
}

/// Handshake opener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`MAGIC`].
    pub magic: u32,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// What the sender is.
    pub role: Role,
    /// The sender's replica id, when `role` is `Replica`.
    pub node: Option<ReplicaId>,
}

impl Message {
    /// The variant's name, for errors and logs: never the payload, which may
    /// carry user data.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Reject(_) => "Reject",
            Message::Request(_) => "Request",
            Message::Response(_) => "Response",
            Message::Subscribe(_) => "Subscribe",
            Message::StreamStart(_) => "StreamStart",
            Message::Entries(_) => "Entries",
            Message::Ack(_) => "Ack",
            Message::Snapshot(_) => "Snapshot",
            Message::StreamFrom(_) => "StreamFrom",
        }
    }
}

impl Hello {
    /// A hello of this build's magic and version.
    pub fn new(role: Role, node: Option<ReplicaId>) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role,
            node,
        }
    }

    /// Checks magic and version.
    ///
    /// # Errors
    /// The [`WireError`] to reject the connection with.
    pub fn check(&self) -> Result<(), WireError> {
        if self.magic != MAGIC {
            return Err(WireError::BadMagic { got: self.magic });
        }
        if self.version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                got: self.version,
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(())
    }
}

/// Handshake answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The accepting side's protocol version.
    pub version: u16,
    /// The accepting side's replica id, or `None` for the balancer.
    pub node: Option<ReplicaId>,
}

/// A protocol-level error, sent in [`Message::Reject`] just before the sender
/// closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// A frame header announced more than the receiver's limit.
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The receiver's limit.
        max: u64,
    },
    /// A frame's checksum did not match.
    ChecksumMismatch,
    /// A frame's payload was not a valid message.
    Undecodable {
        /// The decoder's complaint.
        reason: String,
    },
    /// The handshake carried the wrong magic.
    BadMagic {
        /// The magic received.
        got: u32,
    },
    /// The handshake carried a protocol version the receiver does not speak.
    UnsupportedVersion {
        /// Version received.
        got: u16,
        /// Version the receiver speaks.
        supported: u16,
    },
    /// The first message was not a [`Hello`].
    HandshakeRequired,
    /// The message is not allowed for the role the connection declared.
    WrongRole {
        /// The connection's declared role.
        role: Role,
        /// What it tried.
        what: String,
    },
    /// A message that makes no sense at this point of the conversation.
    Unexpected {
        /// What was received.
        what: String,
    },
    /// The listener already holds as many connections as it allows; this
    /// one is closed right after this frame. Retry later, or elsewhere.
    TooManyConnections {
        /// The listener's limit.
        max: u64,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            WireError::ChecksumMismatch => f.write_str("frame checksum mismatch"),
            WireError::Undecodable { reason } => write!(f, "undecodable frame: {reason}"),
            WireError::BadMagic { got } => {
                write!(f, "bad handshake magic {got:#010x}, expected {MAGIC:#010x}")
            }
            WireError::UnsupportedVersion { got, supported } => {
                write!(
                    f,
                    "protocol version {got} not supported (this side speaks {supported})"
                )
            }
            WireError::HandshakeRequired => f.write_str("the first message must be Hello"),
            WireError::WrongRole { role, what } => {
                write!(f, "{what} is not allowed on a {role} connection")
            }
            WireError::Unexpected { what } => write!(f, "unexpected message: {what}"),
            WireError::TooManyConnections { max } => {
                write!(f, "too many connections: this listener allows {max}")
            }
        }
    }
}

/// A request: an operation and the id its response will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the sender, echoed in the response.
    pub id: RequestId,
    /// What to do.
    pub op: Op,
}

/// Client and admin operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read a key's committed value.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write a key (leader only).
    Set {
        /// The key.
        key: Bytes,
        /// Its new value.
        value: Bytes,
    },
    /// Remove a key (leader only).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Liveness check; answered [`Reply::Pong`].
    Ping,
    /// A replica answers [`Reply::Node`]; the balancer [`Reply::Cluster`].
    Status,
    /// Admin (balancer only): become leader at an epoch.
    Promote(Promote),
    /// Admin (balancer only): follow a leader at an epoch.
    Follow(Follow),
    /// Admin (balancer only): move to a new epoch and stop accepting the old
    /// leader's stream, before the balancer reads the log positions it will
    /// elect from. Answered with the replica's status after the fence.
    Fence(Fence),
}

impl Op {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get { .. } => "get",
            Op::Set { .. } => "set",
            Op::Delete { .. } => "delete",
            Op::Ping => "ping",
            Op::Status => "status",
            Op::Promote(_) => "promote",
            Op::Follow(_) => "follow",
            Op::Fence(_) => "fence",
        }
    }

    /// Whether only a balancer connection may send this op.
    pub fn is_admin(&self) -> bool {
        matches!(self, Op::Promote(_) | Op::Follow(_) | Op::Fence(_))
    }

    /// Whether this op changes data (and so must go to the leader).
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Set { .. } | Op::Delete { .. })
    }

    /// The key this op reads or writes; `None` for ops about no key.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } => Some(key),
            _ => None,
        }
    }

    /// Checks key and value limits.
    ///
    /// # Errors
    /// A human-readable reason, to send back as [`ErrorReply::Invalid`].
    pub fn validate(&self, max_value_len: usize) -> Result<(), String> {
        match self {
            Op::Get { key } | Op::Delete { key } => validate_key(key),
            Op::Set { key, value } => {
                validate_key(key)?;
                if value.len() > max_value_len {
                    return Err(format!(
                        "value of {} bytes exceeds the limit of {max_value_len} bytes",
                        value.len()
                    ));
                }
                Ok(())
            }
            Op::Ping | Op::Status | Op::Promote(_) | Op::Follow(_) | Op::Fence(_) => Ok(()),
        }
    }
}

/// Checks a key against the key limits: not empty, at most [`MAX_KEY_LEN`].
///
/// # Errors
/// A human-readable reason.
pub fn validate_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".to_string());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_LEN} bytes",
            key.len()
        ));
    }
    Ok(())
}

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

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: RequestId,
    /// The outcome.
    pub reply: Reply,
}

/// Outcomes of operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A `Get`'s result: the committed value, or `None` for no such key.
    Value(Option<Bytes>),
    /// A `Set` or `Delete` committed at this log index.
    Written {
        /// The write's log index.
        index: LogIndex,
    },
    /// Answer to `Ping`.
    Pong,
    /// A replica's own status (answer to `Status`, `Promote`, `Follow`).
    Node(NodeStatus),
    /// The balancer's view of the cluster (answer to `Status` via the balancer).
    Cluster(ClusterStatus),
    /// The operation failed.
    Error(ErrorReply),
}

/// Typed failures that cross the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorReply {
    /// This replica does not lead; writes go to `leader` if known.
    NotLeader {
        /// The leader's address, if this replica knows it.
        leader: Option<String>,
    },
    /// Too few followers acknowledged within the sync timeout. The write is in
    /// the leader's log and may still commit later: its outcome is unknown.
    NotEnoughReplicas {
        /// Followers that acknowledged.
        acked: u32,
        /// Followers required.
        required: u32,
    },
    /// No leader right now; retry after the hint.
    Unavailable {
        /// Suggested wait before retrying.
        retry_after_ms: u64,
        /// Why.
        reason: String,
    },
    /// The connection to the leader broke while the write was in flight: it may
    /// or may not have committed.
    Indeterminate {
        /// Why.
        reason: String,
    },
    /// The request itself is wrong (limits, arguments).
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// An admin or replication message carried an epoch lower than the
    /// replica's current one.
    StaleEpoch {
        /// The epoch received.
        got: Epoch,
        /// The replica's current epoch.
        current: Epoch,
    },
    /// The replica could not make the write durable (e.g. disk full); nothing
    /// was acknowledged.
    Storage {
        /// The underlying failure.
        reason: String,
    },
    /// An admin message at the replica's current epoch contradicts the role
    /// it already took at that epoch (a second leader, a second promotion,
    /// a promotion after a restart). An epoch has at most one leader; the
    /// coordinator must elect again at a new epoch.
    EpochConflict {
        /// The epoch of the refused message (the replica's current one).
        epoch: Epoch,
        /// What it contradicts.
        reason: String,
    },
    /// The replica found its log inconsistent with its leader's in a way the
    /// protocol rules out, and stopped serving rather than merge them. An
    /// operator must look at it (its log line names the index); wiping its
    /// data directory makes it rejoin with a full copy.
    Diverged {
        /// What was found.
        reason: String,
    },
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorReply::NotLeader { leader: Some(l) } => write!(f, "NotLeader: leader is {l}"),
            ErrorReply::NotLeader { leader: None } => f.write_str("NotLeader: no leader known"),
            ErrorReply::NotEnoughReplicas { acked, required } => write!(
                f,
                "NotEnoughReplicas: {acked} of {required} followers acknowledged; outcome unknown"
            ),
            ErrorReply::Unavailable {
                retry_after_ms,
                reason,
            } => write!(f, "Unavailable: {reason}; retry in {retry_after_ms} ms"),
            ErrorReply::Indeterminate { reason } => {
                write!(
                    f,
                    "Indeterminate: {reason}; the write may or may not have happened"
                )
            }
            ErrorReply::Invalid { reason } => write!(f, "Invalid: {reason}"),
            ErrorReply::StaleEpoch { got, current } => {
                write!(f, "StaleEpoch: got epoch {got}, current is {current}")
            }
            ErrorReply::Storage { reason } => write!(f, "Storage: {reason}"),
            ErrorReply::EpochConflict { epoch, reason } => {
                write!(f, "EpochConflict: at epoch {epoch}: {reason}")
            }
            ErrorReply::Diverged { reason } => {
                write!(f, "Diverged: {reason}; this replica stopped serving")
            }
        }
    }
}

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
