//! The typed errors that cross the wire: [`WireError`], which rejects a
//! connection, and [`ErrorReply`], which fails one request.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{Role, MAGIC};
use crate::ids::Epoch;

/// A protocol-level error, sent in [`Message::Reject`] just before the sender
/// closes the connection.
///
/// [`Message::Reject`]: super::Message::Reject
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
    ///
    /// [`Hello`]: super::Hello
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
    /// The connection did not prove what its role requires (the cluster
    /// secret), proved it wrong, or offered a proof this side cannot check
    /// (it has no secret). From protocol 4.
    AuthFailed {
        /// What was missing or wrong; never the secret or a proof.
        reason: String,
    },
    /// The listener speaks TLS and the peer sent plain TCP: sent in plain,
    /// before the close, so that the peer can say why (protocol 4).
    TlsRequired,
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
            WireError::AuthFailed { reason } => write!(f, "authentication failed: {reason}"),
            WireError::TlsRequired => {
                f.write_str("this port speaks TLS: connect with TLS (--tls-ca) or to a plain port")
            }
        }
    }
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
    /// The replica's disk has no room for the write-ahead log or the epoch
    /// file (protocol 3). A write (or admin order) refused with it was never
    /// appended or acted on, so it did not happen; reads of committed data
    /// keep working, and the replica accepts writes again by itself once
    /// space is freed.
    DiskFull {
        /// The failure, naming the file.
        reason: String,
    },
    /// The write would grow the store past the replica's `--max-memory`
    /// (protocol 3). It was never appended, so it did not happen; reads and
    /// writes that shrink the store keep working.
    OutOfMemory {
        /// Bytes the store holds now, with the writes in flight to it
        /// counted at the most they can add.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// The connection's user may not do this (its role does not allow it,
    /// or it was removed since it logged in); nothing was done (protocol 4).
    NoPermission {
        /// What was refused and why; never a password.
        reason: String,
    },
    /// An `IncrBy` found a value that is not a base-10 `i64` as Redis
    /// writes one (optional `-`, no `+`, no leading zeros or spaces);
    /// nothing was written (protocol 5). Redis: `value is not an integer or
    /// out of range`.
    NotAnInteger,
    /// An `IncrBy` would take the value past the `i64` range; nothing was
    /// written (protocol 5). Redis: `increment or decrement would
    /// overflow`.
    Overflow,
    /// A read's replica had not applied the position the read asked for
    /// within its wait (protocol 7): nothing is wrong, the read goes
    /// elsewhere (the leader has applied every acknowledged position).
    Behind {
        /// What the replica had applied.
        applied: crate::ids::LogIndex,
        /// What the read asked for.
        wanted: crate::ids::LogIndex,
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
            ErrorReply::DiskFull { reason } => write!(
                f,
                "DiskFull: {reason}; nothing was changed, reads still work"
            ),
            ErrorReply::OutOfMemory { used, limit } => write!(
                f,
                "OutOfMemory: the store holds {used} bytes of its {limit} byte limit; \
                 the write was not applied, reads still work"
            ),
            ErrorReply::NoPermission { reason } => write!(f, "NoPermission: {reason}"),
            ErrorReply::NotAnInteger => {
                f.write_str("NotAnInteger: value is not an integer or out of range")
            }
            ErrorReply::Overflow => f.write_str("Overflow: increment or decrement would overflow"),
            ErrorReply::Behind { applied, wanted } => write!(
                f,
                "Behind: this replica applied up to {applied}, the read needs {wanted}; read elsewhere"
            ),
        }
    }
}
