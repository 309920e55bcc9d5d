//! The handshake: the [`Hello`] every connection opens with, the role it
//! declares, and the [`Welcome`] that accepts it.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::WireError;
use crate::ids::ReplicaId;

/// First field of every [`Hello`]: "SKV1". A peer that sends anything else is
/// not speaking semikv.
pub const MAGIC: u32 = 0x534b_5631;

/// The protocol version this build speaks.
///
/// Version 2: epochs are ballots (`term << 64 | coordinator`, a `u128`; see
/// [`crate::Epoch`]), leaders open streams with [`Message::StreamFrom`],
/// [`ErrorReply`] gained `EpochConflict` and `Diverged`, and [`WireError`]
/// `TooManyConnections`.
///
/// Version 3: [`ErrorReply`] gained `DiskFull` and `OutOfMemory`, a leader
/// announces a snapshot's size with [`Message::SnapshotOffer`] before
/// streaming it, and replicas and the balancer answer `Status` with
/// [`Reply::NodeReport`] and [`Reply::ClusterReport`] (their status plus
/// disk and memory).
///
/// Version 4: a peer that holds the cluster secret opens with
/// [`Message::SecureHello`] and proves it over fresh nonces from both
/// sides ([`Message::Challenge`], [`Message::Proof`]); [`WireError`] gained
/// `AuthFailed`; a client of a balancer with users logs in with
/// [`Message::HelloAuth`], and [`ErrorReply`] gained `NoPermission`.
///
/// Version 5: writes the leader evaluates, [`Op::Command`] answered
/// [`Reply::Outcome`], key expiries read with [`Op::Ttl`] (answered
/// [`Reply::Ttl`]) and logged in [`WriteOp::Batch`] entries, and
/// [`ErrorReply`] gained `NotAnInteger` and `Overflow`.
///
/// Version 6: reads about the whole key space, [`Op::Scan`] answered
/// [`Reply::Keys`] and [`Op::DbSize`] answered [`Reply::KeyCount`].
///
/// Version 7: reads at a consistency level, [`Op::Read`] answered
/// [`Reply::Read`] with the position the answer reflects; [`ErrorReply`]
/// gained `Behind`; the balancer answers `Status` with
/// [`Reply::ClusterView`] (its report plus each replica's read lag); a leader confirms it still leads with
/// [`Message::LeadCheck`] rounds its followers answer with
/// [`Message::LeadConfirm`].
///
/// [`Op::Scan`]: super::Op::Scan
/// [`Op::DbSize`]: super::Op::DbSize
/// [`Reply::Keys`]: super::Reply::Keys
/// [`Reply::KeyCount`]: super::Reply::KeyCount
/// [`Op::Command`]: super::Op::Command
/// [`Op::Ttl`]: super::Op::Ttl
/// [`Reply::Outcome`]: super::Reply::Outcome
/// [`Reply::Ttl`]: super::Reply::Ttl
/// [`WriteOp::Batch`]: super::WriteOp::Batch
/// [`Message::HelloAuth`]: super::Message::HelloAuth
/// [`Message::StreamFrom`]: super::Message::StreamFrom
/// [`Message::SecureHello`]: super::Message::SecureHello
/// [`Message::Challenge`]: super::Message::Challenge
/// [`Message::Proof`]: super::Message::Proof
/// [`Message::SnapshotOffer`]: super::Message::SnapshotOffer
/// [`Reply::NodeReport`]: super::Reply::NodeReport
/// [`Reply::ClusterReport`]: super::Reply::ClusterReport
/// [`ErrorReply`]: super::ErrorReply
/// [`Op::Read`]: super::Op::Read
/// [`Reply::Read`]: super::Reply::Read
/// [`Reply::ClusterView`]: super::Reply::ClusterView
/// [`Message::LeadCheck`]: super::Message::LeadCheck
/// [`Message::LeadConfirm`]: super::Message::LeadConfirm
pub const PROTOCOL_VERSION: u16 = 7;

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

/// 32 bytes drawn fresh from the operating system's randomness for one
/// handshake: each side's nonce makes the other side's proof good for that
/// handshake only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nonce(pub [u8; 32]);

/// An HMAC-SHA256 tag proving that its sender holds the cluster secret
/// (see [`crate::auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mac(pub [u8; 32]);

/// A [`Hello`] from a peer that holds the cluster secret and offers to
/// prove it (protocol 4): the accepting side answers with a
/// [`Challenge`], or rejects with `AuthFailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureHello {
    /// What a plain `Hello` says.
    pub hello: Hello,
    /// The connecting side's nonce.
    pub nonce: Nonce,
}

/// The accepting side's answer to a [`SecureHello`]: its own nonce, and its
/// proof over both nonces. The connecting side checks the proof before it
/// proves anything itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The accepting side's nonce.
    pub nonce: Nonce,
    /// The accepting side's proof.
    pub mac: Mac,
}

/// The connecting side's proof over both nonces, after a [`Challenge`];
/// the accepting side answers `Welcome` or rejects with `AuthFailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The connecting side's proof.
    pub mac: Mac,
}

/// A client's [`Hello`] with its credentials (protocol 4), for a balancer
/// started with users: answered `Welcome` once the password checks out,
/// otherwise rejected with `AuthFailed`. The password crosses the wire as
/// it is, as with Redis's `AUTH`: only TLS keeps it from the path.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAuth {
    /// What a plain `Hello` says.
    pub hello: Hello,
    /// The user's name.
    pub user: String,
    /// The user's password.
    pub password: String,
}

impl fmt::Debug for HelloAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HelloAuth")
            .field("hello", &self.hello)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}
