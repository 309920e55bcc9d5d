//! [`RetryingClient`]: a [`Client`] to one address that reconnects when its
//! connection is lost and retries exactly what is safe to retry.
//!
//! Retried, with backoff, up to [`RetryPolicy::attempts`] tries in all:
//! - anything that certainly never reached the server (a failed connect or
//!   handshake, a listener full of connections, a connection already known
//!   dead);
//! - anything answered `Unavailable` (no leader during a failover: nothing
//!   was applied), waiting the server's retry hint (at most the policy's
//!   longest backoff);
//! - a read (`get`, `ping`, `status`) whose connection broke in flight.
//!
//! Never retried: a write whose outcome is unknown (`Indeterminate`,
//! `NotEnoughReplicas`, or its connection lost or timed out in flight). It
//! may have been applied; retrying it could apply it twice, or after a
//! later write. The caller gets the error and decides. Nor a request that
//! timed out: a server that does not answer within the request timeout
//! would only make the caller wait that long again per try. Every retry is
//! announced to the notice sink, if one is set.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use semikv_protocol::{Consistency, ErrorReply, LogIndex, Op, Reply, WireError};

use crate::conn::{value_of, written, Client, ClientConfig, ClientError};
use crate::session::Token;

/// How a [`RetryingClient`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled after each.
    pub first_backoff: Duration,
    /// Longest wait between two tries, a server's retry hint included.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, 100 ms doubling to at most 2 s: rides out a failover (a few
    /// ms after a crash, about half a second for a silent leader).
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Where retry notices go: one line of text per retry.
pub type NoticeSink = Box<dyn FnMut(&str) + Send>;

/// A client of one semikv address that reconnects and retries (see the
/// module docs for exactly what). One request at a time per handle; for
/// many requests in flight at once, share a [`Client`].
///
/// ```no_run
/// use semikv_client::{ClientConfig, RetryingClient};
///
/// # async fn demo() -> Result<(), semikv_client::ClientError> {
/// let mut kv = RetryingClient::new("127.0.0.1:8080", ClientConfig::default());
/// kv.set("k", "v").await?;
/// assert_eq!(kv.get("k").await?.as_deref(), Some(&b"v"[..]));
/// # Ok(())
/// # }
/// ```
pub struct RetryingClient {
    addr: String,
    config: ClientConfig,
    policy: RetryPolicy,
    client: Option<Client>,
    notice: Option<NoticeSink>,
    /// The session's highest position seen, kept across reconnections.
    token: Arc<Token>,
}

impl std::fmt::Debug for RetryingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingClient")
            .field("addr", &self.addr)
            .field("policy", &self.policy)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl RetryingClient {
    /// A client of `addr`; nothing is dialled until the first request.
    pub fn new(addr: impl Into<String>, config: ClientConfig) -> RetryingClient {
        RetryingClient {
            addr: addr.into(),
            config,
            policy: RetryPolicy::default(),
            client: None,
            notice: None,
            token: Arc::default(),
        }
    }

    /// The session's token: the highest log position seen, across every
    /// connection this client made (see [`Token`]).
    pub fn token(&self) -> LogIndex {
        self.token.get()
    }

    /// Raises the session's token to `index` (handed over from another
    /// session): later reads reflect at least it.
    pub fn observe(&self, index: LogIndex) {
        self.token.observe(index);
    }

    /// The consistency level reads ask for (`None`: the balancer's
    /// default).
    pub fn consistency(&self) -> Option<Consistency> {
        self.config.consistency
    }

    /// Sets the consistency level of later reads (`None`: the balancer's
    /// default). The session's token is kept.
    pub fn set_consistency(&mut self, level: Option<Consistency>) {
        if self.config.consistency != level {
            self.config.consistency = level;
            // The level is a connection's setting: the next request dials
            // one with it.
            self.client = None;
        }
    }

    /// Replaces the retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> RetryingClient {
        self.policy = policy;
        self
    }

    /// Sends a line to `sink` for every retry and reconnect.
    pub fn with_notices(mut self, sink: NoticeSink) -> RetryingClient {
        self.notice = Some(sink);
        self
    }

    /// The address requests go to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `op` and returns the server's reply (an error reply included),
    /// reconnecting and retrying as the module docs say.
    ///
    /// # Errors
    /// The last [`ClientError`] once retries are exhausted or not allowed.
    pub async fn request(&mut self, op: Op) -> Result<Reply, ClientError> {
        let attempts = self.policy.attempts.max(1);
        let mut backoff = self.policy.first_backoff;
        let mut attempt = 1;
        loop {
            let result = match self.connection().await {
                Ok(client) => client.request(op.clone()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                if e.is_connection_error() {
                    self.client = None;
                }
            }
            let Some(hint) = retry_after(&result, op.is_write()) else {
                return result;
            };
            if attempt >= attempts {
                return result;
            }
            attempt += 1;
            let wait = backoff.max(hint).min(self.policy.max_backoff);
            let why = match &result {
                Ok(reply) => format!("{reply:?}"),
                Err(e) => e.to_string(),
            };
            self.notify(&format!(
                "{why}; retrying in {wait:?} (attempt {attempt}/{attempts})"
            ));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }

    /// Reads `key`: its committed value or `None`.
    ///
    /// # Errors
    /// As [`RetryingClient::request`], plus [`ClientError::Server`] for an
    /// error reply.
    pub async fn get(&mut self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        value_of(self.request(Op::Get { key: key.into() }).await?)
    }

    /// Writes `key`; returns the write's log index once committed.
    ///
    /// # Errors
    /// As [`RetryingClient::get`]; [`ClientError::Server`] with
    /// `Indeterminate` or `NotEnoughReplicas`, or
    /// [`ClientError::ConnectionLost`] / [`ClientError::Timeout`], mean the
    /// write may or may not have been applied.
    pub async fn set(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<LogIndex, ClientError> {
        let op = Op::Set {
            key: key.into(),
            value: value.into(),
        };
        written("set", self.request(op).await?)
    }

    /// Deletes `key`; returns the write's log index once committed.
    ///
    /// # Errors
    /// As [`RetryingClient::set`].
    pub async fn delete(&mut self, key: impl Into<Bytes>) -> Result<LogIndex, ClientError> {
        written(
            "delete",
            self.request(Op::Delete { key: key.into() }).await?,
        )
    }

    /// The open connection, dialling a new one if there is none or the old
    /// one has ended.
    async fn connection(&mut self) -> Result<Client, ClientError> {
        if let Some(client) = &self.client {
            if !client.is_closed() {
                return Ok(client.clone());
            }
            let notice = format!("connection to {} was lost; reconnecting", self.addr);
            self.notify(&notice);
            self.client = None;
        }
        let client =
            Client::connect_with_token(&self.addr, &self.config, self.token.clone()).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn notify(&mut self, line: &str) {
        if let Some(sink) = &mut self.notice {
            sink(line);
        }
    }
}

/// How long to wait at least before retrying a request that ended with
/// `result`, or `None` if it must not be retried.
fn retry_after(result: &Result<Reply, ClientError>, is_write: bool) -> Option<Duration> {
    match result {
        Ok(Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. })) => {
            Some(Duration::from_millis(*retry_after_ms))
        }
        Ok(_) => None,
        Err(error) => match error {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Handshake { .. }
            | ClientError::NotConnected { .. } => Some(Duration::ZERO),
            ClientError::Rejected {
                error: WireError::TooManyConnections { .. },
                ..
            } => Some(Duration::ZERO),
            ClientError::ConnectionLost { .. } if !is_write => Some(Duration::ZERO),
            ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
            | ClientError::Rejected { .. }
            | ClientError::Encode(_)
            | ClientError::Server(_)
            | ClientError::UnexpectedReply { .. } => None,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::testing::FakeServer;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(200),
        }
    }

    fn client(addr: &str) -> (RetryingClient, Arc<Mutex<Vec<String>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let kv = RetryingClient::new(addr, ClientConfig::default())
            .with_policy(quick())
            .with_notices(Box::new(move |line| {
                sink.lock().unwrap().push(line.to_string())
            }));
        (kv, notices)
    }

    #[tokio::test]
    async fn unavailable_is_retried_after_its_hint_and_announced() {
        let server = FakeServer::start().await;
        server.unavailable_for(2);
        let (mut kv, notices) = client(&server.addr());
        let started = tokio::time::Instant::now();
        kv.set("k", "v").await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "two retries, each after the 100 ms hint"
        );
        assert_eq!(notices.lock().unwrap().len(), 2);
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[tokio::test]
    async fn unavailable_past_the_attempts_is_returned() {
        let server = FakeServer::start().await;
        server.unavailable_for(u64::MAX);
        let (mut kv, notices) = client(&server.addr());
        let err = kv.set("k", "v").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Server(ErrorReply::Unavailable { .. })),
            "{err}"
        );
        assert_eq!(notices.lock().unwrap().len(), 3, "4 tries, 3 retries");
    }

    #[tokio::test]
    async fn a_read_lost_in_flight_is_retried_on_a_new_connection() {
        let server = FakeServer::start().await;
        let (mut kv, notices) = client(&server.addr());
        kv.set("hangup-once", "x").await.unwrap();
        assert_eq!(
            kv.get("hangup-once").await.unwrap().as_deref(),
            Some(&b"x"[..])
        );
        assert!(
            notices
                .lock()
                .unwrap()
                .iter()
                .any(|n| n.contains("retrying")),
            "{notices:?}"
        );
    }

    #[tokio::test]
    async fn a_write_lost_in_flight_is_never_retried() {
        let server = FakeServer::start().await;
        server.hang_up_every(1);
        let (mut kv, notices) = client(&server.addr());
        let err = kv.set("k", "v").await.unwrap_err();
        assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err}");
        assert!(notices.lock().unwrap().is_empty(), "{notices:?}");
    }

    #[tokio::test]
    async fn an_unreachable_address_fails_after_the_attempts() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let (mut kv, notices) = client(&addr);
        let err = kv.get("k").await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert_eq!(notices.lock().unwrap().len(), 3);
    }

    #[test]
    fn what_may_be_retried() {
        let lost = || ClientError::ConnectionLost { reason: "x".into() };
        assert_eq!(retry_after(&Err(lost()), false), Some(Duration::ZERO));
        assert_eq!(retry_after(&Err(lost()), true), None);
        let timeout = || ClientError::Timeout {
            after: Duration::from_secs(10),
        };
        assert_eq!(retry_after(&Err(timeout()), false), None, "a hung server");
        let full = ClientError::Rejected {
            addr: "a".into(),
            error: WireError::TooManyConnections { max: 1 },
        };
        assert_eq!(retry_after(&Err(full), true), Some(Duration::ZERO));
        let version = ClientError::Rejected {
            addr: "a".into(),
            error: WireError::UnsupportedVersion {
                got: 1,
                supported: 2,
            },
        };
        assert_eq!(retry_after(&Err(version), false), None);
        let indeterminate = Ok(Reply::Error(ErrorReply::Indeterminate {
            reason: "x".into(),
        }));
        assert_eq!(retry_after(&indeterminate, true), None);
        let not_enough = Ok(Reply::Error(ErrorReply::NotEnoughReplicas {
            acked: 0,
            required: 1,
        }));
        assert_eq!(retry_after(&not_enough, true), None);
        let unavailable = Ok(Reply::Error(ErrorReply::Unavailable {
            retry_after_ms: 250,
            reason: "x".into(),
        }));
        assert_eq!(
            retry_after(&unavailable, true),
            Some(Duration::from_millis(250))
        );
    }
}
