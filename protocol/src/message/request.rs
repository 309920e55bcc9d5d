//! Client operations and their outcomes: a [`Request`] carries an [`Op`],
//! its [`Response`] a [`Reply`]; and the key and value limits every op is
//! checked against.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    ClusterReport, ClusterStatus, ClusterView, Command, ErrorReply, Fence, Follow, KeyCount,
    KeyPage, KeyTtl, NodeReport, NodeStatus, Outcome, Promote, Read, ReadAnswer, Resources, Scan,
};
use crate::ids::{LogIndex, RequestId};

/// Longest key accepted: 64 KiB.
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// Default longest value accepted: 8 MiB. Servers may be configured lower, and
/// higher up to what fits in a frame.
pub const DEFAULT_MAX_VALUE_LEN: usize = 8 * 1024 * 1024;

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
    /// A write the leader evaluates (protocol 5): conditional and
    /// read-modify-write operations, multi-key sets and deletes, expiries.
    /// Answered [`Reply::Outcome`].
    Command(Command),
    /// Read a key's expiry (protocol 5); answered [`Reply::Ttl`]. A read,
    /// routed like `Get`.
    Ttl {
        /// The key.
        key: Bytes,
    },
    /// One page of a scan over every key (protocol 6); answered
    /// [`Reply::Keys`]. A read, routed like `Get`.
    Scan(Scan),
    /// The number of keys (protocol 6); answered [`Reply::KeyCount`]. A
    /// read, routed like `Get`.
    DbSize,
    /// A read at a consistency level (protocol 7); answered
    /// [`Reply::Read`]. See [`Read`].
    Read(Read),
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
            Op::Command(_) => "command",
            Op::Ttl { .. } => "ttl",
            Op::Scan(_) => "scan",
            Op::DbSize => "dbsize",
            Op::Read(_) => "read",
        }
    }

    /// Whether only a balancer connection may send this op.
    pub fn is_admin(&self) -> bool {
        matches!(self, Op::Promote(_) | Op::Follow(_) | Op::Fence(_))
    }

    /// Whether this op is a plain read (get, ttl, scan, dbsize): what a
    /// [`Op::Read`] may wrap.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Op::Get { .. } | Op::Ttl { .. } | Op::Scan(_) | Op::DbSize
        )
    }

    /// Whether this op changes data (and so must go to the leader).
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Set { .. } | Op::Delete { .. } | Op::Command(_))
    }

    /// The key this op reads or writes (a command's first); `None` for ops
    /// about no key.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } | Op::Ttl { key } => {
                Some(key)
            }
            Op::Command(command) => command.first_key(),
            Op::Read(read) => read.op.key(),
            _ => None,
        }
    }

    /// Checks key and value limits.
    ///
    /// # Errors
    /// A human-readable reason, to send back as [`ErrorReply::Invalid`].
    pub fn validate(&self, max_value_len: usize) -> Result<(), String> {
        match self {
            Op::Get { key } | Op::Delete { key } | Op::Ttl { key } => validate_key(key),
            Op::Command(command) => command.validate(max_value_len),
            Op::Scan(scan) => scan.validate(),
            Op::Read(read) => read.validate(max_value_len),
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
            Op::Ping | Op::Status | Op::Promote(_) | Op::Follow(_) | Op::Fence(_) | Op::DbSize => {
                Ok(())
            }
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
    /// A replica's status with its disk and memory (protocol 3: replaces
    /// [`Reply::Node`] as the answer to `Status`, `Promote` and `Follow`).
    NodeReport(Box<NodeReport>),
    /// The balancer's view with each replica's resources (protocol 3:
    /// replaces [`Reply::Cluster`] as the balancer's answer to `Status`).
    ClusterReport(Box<ClusterReport>),
    /// What an [`Op::Command`] did, once it committed (protocol 5).
    Outcome(Outcome),
    /// A key's expiry, the answer to [`Op::Ttl`] (protocol 5).
    Ttl(KeyTtl),
    /// A page of keys, the answer to [`Op::Scan`] (protocol 6).
    Keys(KeyPage),
    /// The number of keys, the answer to [`Op::DbSize`] (protocol 6).
    KeyCount(KeyCount),
    /// The answer to [`Op::Read`], with the position it reflects
    /// (protocol 7).
    Read(ReadAnswer),
    /// The balancer's view with each replica's resources and read lag
    /// (protocol 7: replaces [`Reply::ClusterReport`] as the balancer's
    /// answer to `Status`).
    ClusterView(Box<ClusterView>),
}

impl Reply {
    /// The replica status this reply carries, whichever of
    /// [`Reply::Node`] and [`Reply::NodeReport`] it is.
    pub fn node_status(&self) -> Option<&NodeStatus> {
        match self {
            Reply::Node(status) => Some(status),
            Reply::NodeReport(report) => Some(&report.status),
            _ => None,
        }
    }

    /// A replica's status report, from [`Reply::NodeReport`] or (with
    /// default resources) [`Reply::Node`]; any other reply is given back.
    ///
    /// # Errors
    /// The reply, when it carries no replica status.
    pub fn into_node_report(self) -> Result<NodeReport, Reply> {
        match self {
            Reply::NodeReport(report) => Ok(*report),
            Reply::Node(status) => Ok(NodeReport {
                status,
                resources: Resources::default(),
                leading: None,
            }),
            other => Err(other),
        }
    }

    /// The balancer's report, from [`Reply::ClusterView`],
    /// [`Reply::ClusterReport`] or (with no resources known)
    /// [`Reply::Cluster`]; any other reply is given back.
    ///
    /// # Errors
    /// The reply, when it carries no cluster status.
    pub fn into_cluster_report(self) -> Result<ClusterReport, Reply> {
        match self {
            Reply::ClusterView(view) => Ok(view.report),
            Reply::ClusterReport(report) => Ok(*report),
            Reply::Cluster(status) => Ok(ClusterReport {
                resources: vec![None; status.replicas.len()],
                status,
            }),
            other => Err(other),
        }
    }

    /// The balancer's view, from [`Reply::ClusterView`] or (with no lag
    /// known) any reply [`Reply::into_cluster_report`] takes.
    ///
    /// # Errors
    /// The reply, when it carries no cluster status.
    pub fn into_cluster_view(self) -> Result<ClusterView, Reply> {
        match self {
            Reply::ClusterView(view) => Ok(*view),
            other => other.into_cluster_report().map(|report| ClusterView {
                lag_ms: vec![None; report.status.replicas.len()],
                report,
            }),
        }
    }
}
