//! Every message semikv processes exchange, in one enum per direction-free
//! family, all carried by [`Message`].
//!
//! Wire rules (postcard encodes an enum variant as its position): variants and
//! fields are frozen once shipped. Append new variants at the end of an enum;
//! never reorder, remove, or add a field to an existing variant. The golden
//! vectors in `tests/golden.rs` fail on any change; changing one is a protocol
//! version bump.
//!
//! One file per family: `hello` (the handshake), `request` (client ops and
//! their replies), `command` (the writes a leader evaluates), `consistency`
//! (reads at a consistency level), `keyspace` (reads about
//! every key), `admin` (the balancer's orders), `status` (what replicas
//! and the balancer report), `replication` (the log stream between
//! replicas) and `wire_error` (the typed errors that cross the wire).

mod admin;
mod command;
mod consistency;
mod hello;
mod keyspace;
mod replication;
mod request;
mod status;
mod wire_error;

use serde::{Deserialize, Serialize};

pub use admin::{Fence, Follow, Promote, MAX_SYNC_REPLICAS, MAX_SYNC_TIMEOUT_MS};
pub use command::{Command, Cond, ExpireCond, KeyTtl, Outcome, TtlChange, MAX_COMMAND_KEYS};
pub use consistency::{Consistency, LeadCheck, Read, ReadAnswer};
pub use hello::{
    Challenge, Hello, HelloAuth, Mac, Nonce, Proof, Role, SecureHello, Welcome, MAGIC,
    PROTOCOL_VERSION,
};
pub use keyspace::{KeyCount, KeyPage, Scan, MAX_PATTERN_LEN, MAX_SCAN_COUNT};
pub use replication::{
    Ack, Entries, Entry, EpochStart, Mutation, SnapshotChunk, SnapshotOffer, StreamFrom,
    StreamStart, Subscribe, WriteOp,
};
pub use request::{validate_key, Op, Reply, Request, Response, DEFAULT_MAX_VALUE_LEN, MAX_KEY_LEN};
pub use status::{
    ClusterReport, ClusterStatus, ClusterView, FollowerProgress, LeaderTerms, NodeReport, NodeRole,
    NodeStatus, ReplicaView, Resources,
};
pub use wire_error::{ErrorReply, WireError};

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
    /// Leader to follower: the size of the snapshot that follows (from
    /// protocol 3, always sent before its first chunk).
    SnapshotOffer(SnapshotOffer),
    /// First message of a connection that proves it holds the cluster
    /// secret (from protocol 4; see [`crate::auth`]).
    SecureHello(SecureHello),
    /// The accepting side's nonce and proof, answering a [`SecureHello`].
    Challenge(Challenge),
    /// The connecting side's proof, answering a [`Challenge`].
    Proof(Proof),
    /// First message of a client that logs in as a user (from protocol 4).
    HelloAuth(HelloAuth),
    /// Leader to follower: confirm that you still follow my epoch (from
    /// protocol 7; see [`LeadCheck`]).
    LeadCheck(LeadCheck),
    /// Follower to leader: the answer to a [`Message::LeadCheck`], sent
    /// only while still following its epoch (from protocol 7).
    LeadConfirm(LeadCheck),
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
            Message::SnapshotOffer(_) => "SnapshotOffer",
            Message::SecureHello(_) => "SecureHello",
            Message::Challenge(_) => "Challenge",
            Message::Proof(_) => "Proof",
            Message::HelloAuth(_) => "HelloAuth",
            Message::LeadCheck(_) => "LeadCheck",
            Message::LeadConfirm(_) => "LeadConfirm",
        }
    }
}
