//! The semikv client library: a pipelined [`conn::Client`], the command
//! language of the `semikv` tool, its output formats, and the REPL, script and
//! local-cluster front ends built on them.

pub mod bench;
pub mod command;
pub mod conn;
pub mod local;
pub mod output;
pub mod repl;
pub mod script;
pub mod session;

pub use command::{parse_line, parse_words, quote, Command, ParseError};
pub use conn::{Client, ClientConfig, ClientError};
pub use session::{Outcome, Session};

// The same fake server the integration tests use, so the unit tests of `conn`
// and `session` exercise the real codec and handshake.
#[cfg(test)]
#[path = "../tests/support/fake_server.rs"]
pub(crate) mod testing;
