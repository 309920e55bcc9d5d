//! The balancer's front doors: each owns one listener and its connections'
//! wire format (framing, handshake, and, as they come, authentication, TLS
//! and per-door metrics), turns its clients' bytes into requests for a
//! [`crate::router::Session`] and the answers back into bytes. Nothing
//! below a door knows which wire format a client speaks.

pub mod http;
pub mod output;
pub mod resp;
pub mod semikv;
