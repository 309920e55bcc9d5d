//! The semikv client library: [`Client`], a pipelined connection to a
//! semikv balancer (or a replica) that carries many requests at once, and
//! [`RetryingClient`], which reconnects and retries what is safe to retry
//! (never a write whose outcome is unknown). Reads are read-your-writes by
//! default, and may ask for another consistency level (see [`Token`]).
//!
//! ```no_run
//! use semikv_client::{Client, ClientConfig};
//!
//! # async fn demo() -> Result<(), semikv_client::ClientError> {
//! let client = Client::connect("127.0.0.1:8080", &ClientConfig::default()).await?;
//! client.set("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! client.delete("greeting").await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every type in a signature here is re-exported, so an application needs
//! no other semikv crate. The `semikv` and `semikv-bench` tools live in the
//! `semikv-cli` crate; depending on this one compiles the protocol crate,
//! tokio, bytes and the small crates they share (futures, postcard, serde,
//! thiserror, tracing), never the server, the balancer or the tools'
//! dependencies.

mod commands;
mod conn;
mod error;
mod retry;
mod session;

pub use bytes::Bytes;
pub use conn::{handshake, Client, ClientConfig, ClientError, Credentials, Handshaken};
pub use retry::{NoticeSink, RetryPolicy, RetryingClient};
pub use semikv_protocol::{
    ClusterReport, ClusterStatus, ClusterView, Command, Cond, Consistency, ErrorReply, ExpireCond,
    KeyTtl, LogIndex, MessageCodec, NodeStatus, Op, Outcome, ProtocolError, ReplicaId, ReplicaView,
    Reply, TtlChange, UnixMillis, Welcome, WireError,
};
pub use session::Token;

// The same fake server the integration tests use, so the unit tests of
// `conn` exercise the real codec and handshake.
#[cfg(test)]
#[path = "../tests/support/fake_server.rs"]
pub(crate) mod testing;
