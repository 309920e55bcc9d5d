//! The semikv tools, built on the [`semikv_client`] library: the `semikv`
//! command (REPL, scripts, one-shot commands, `--local` clusters: its
//! command language, output formats and session with retries) and the
//! `semikv-bench` load generator. Applications use `semikv-client`, not
//! this crate: it pulls in the server and the balancer (which `--local`
//! runs), rustyline, clap and hdrhistogram.

pub mod bench;
pub mod command;
pub mod credentials;
pub mod local;
pub mod output;
pub mod repl;
pub mod script;
pub mod session;

pub use command::{parse_line, parse_words, quote, Command, ParseError};
pub use session::{Outcome, Session};

// The same fake server the integration tests use, so the unit tests of the
// session and the bench exercise the real codec and handshake.
#[cfg(test)]
#[path = "../../tests/support/fake_server.rs"]
pub(crate) mod testing;
