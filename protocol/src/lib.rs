//! The semikv wire protocol: every message any two semikv processes exchange,
//! and the checksummed, length-prefixed frame that carries it.
//!
//! Layers, bottom up:
//! - [`frame`]: `len u32 BE | crc32 u32 BE | payload` around one postcard value,
//!   shared by the network codec and the server's write-ahead log.
//! - [`message`]: the message families (handshake, client ops, replies,
//!   replication, admin). Enums only ever grow at the end; golden vectors in
//!   `tests/golden.rs` freeze their encoding.
//! - [`codec`]: a `tokio_util` codec of [`Message`]s over a byte stream.
//! - [`auth`]: the cluster secret and the challenge-response proving it.
//! - [`admission`]: the connection limit every listener applies, refusing
//!   the extra ones with a frame that says so.
//! - [`budget`]: the process-wide budget for the bytes of large frames that
//!   connections are still receiving; past it they stop reading.
//! - [`blocking`]: where blocking work (file I/O, hashing) runs: tokio's
//!   blocking pool, or inline for a deterministic simulation.

pub mod admission;
pub mod auth;
pub mod blocking;
pub mod budget;
pub mod codec;
pub mod entropy;
pub mod error;
pub mod frame;
pub mod glob;
pub mod handshake;
#[cfg(feature = "http")]
pub mod http;
pub mod ids;
#[cfg(feature = "json")]
pub mod json;
pub mod message;
pub mod net;
pub mod outbox;
pub mod pending;
#[cfg(feature = "process")]
pub mod process;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod transport;

pub use codec::MessageCodec;
pub use error::ProtocolError;
pub use ids::{
    CoordinatorId, Epoch, LogIndex, ReplicaId, RequestId, UnixMillis, MAX_TERM, TERM_STEP,
};
pub use message::*;
