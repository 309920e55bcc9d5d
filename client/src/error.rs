//! What a [`crate::Client`] is tuned with, and what can go wrong talking to
//! a semikv process (and which failures may have let a write through).

use std::time::Duration;

use semikv_protocol::frame::DEFAULT_MAX_FRAME_LEN;
use semikv_protocol::{ErrorReply, ProtocolError, Reply, WireError};

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Bound on one request, from the call to its response.
    pub request_timeout: Duration,
    /// Requests in flight at once on the connection; further callers wait
    /// (within their request timeout) for a slot.
    pub max_in_flight: usize,
    /// Largest frame sent or accepted.
    pub max_frame_len: usize,
    /// The user to log in as, for a balancer started with users; `None`:
    /// connect without logging in.
    pub credentials: Option<Credentials>,
    /// TLS to the balancer, verified with this configuration (see
    /// [`semikv_protocol::tls::client_config`]); `None`: plain TCP.
    pub tls: Option<std::sync::Arc<semikv_protocol::tls::TlsClientConfig>>,
    /// The consistency level of reads (`None`: the balancer's default,
    /// `session` unless it was started otherwise).
    pub consistency: Option<semikv_protocol::Consistency>,
}

/// A user name and its password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            credentials: None,
            tls: None,
            consistency: None,
        }
    }
}

/// What can go wrong talking to a semikv process.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connect or handshake took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// The address dialled.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The peer refused the handshake.
    #[error("{addr} rejected the connection: {error}")]
    Rejected {
        /// The address dialled.
        addr: String,
        /// The peer's reason.
        error: WireError,
    },
    /// The peer answered the handshake with something other than `Welcome`,
    /// or closed the connection during it.
    #[error("handshake with {addr} failed: {reason}")]
    Handshake {
        /// The address dialled.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The connection had already ended; the request was not sent.
    #[error("not connected: {reason}")]
    NotConnected {
        /// Why the connection ended.
        reason: String,
    },
    /// The connection ended while the request was in flight: it may or may
    /// not have been executed.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// Why the connection ended.
        reason: String,
    },
    /// No response within the request timeout: the request may or may not
    /// have been executed.
    #[error("no response within {after:?}")]
    Timeout {
        /// The timeout.
        after: Duration,
    },
    /// The request could not be encoded (e.g. over the frame limit); nothing
    /// was sent.
    #[error("request does not encode: {0}")]
    Encode(ProtocolError),
    /// The server answered with an error (typed helpers only).
    #[error("{0}")]
    Server(ErrorReply),
    /// The server answered with a reply of the wrong kind (typed helpers only).
    #[error("unexpected reply to {op}: {reply:?}")]
    UnexpectedReply {
        /// The operation's name.
        op: &'static str,
        /// What came back.
        reply: Box<Reply>,
    },
}

impl ClientError {
    /// Whether the request certainly did not reach the server, so that
    /// sending it again on a new connection cannot execute it twice.
    pub fn is_unsent(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Rejected { .. }
                | ClientError::Handshake { .. }
                | ClientError::NotConnected { .. }
                | ClientError::Encode(_)
        )
    }

    /// Whether the connection this error came from is unusable.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Rejected { .. }
                | ClientError::Handshake { .. }
                | ClientError::NotConnected { .. }
                | ClientError::ConnectionLost { .. }
        )
    }
}
