//! [`Client`]: one handshaken connection to a semikv process (balancer or
//! replica) that carries many requests at once.
//!
//! A writer task owns the socket's write half and a reader task its read
//! half; callers hand requests to the writer through a bounded channel and
//! wait for their response on a oneshot registered, under a fresh request id,
//! in the pending map the reader completes (the [`PendingMap`] every
//! multiplexed semikv connection uses). When the connection ends, for any
//! reason, the reader records why, drops every pending sender (each waiter
//! then reports [`ClientError::ConnectionLost`]) and later calls fail fast
//! with [`ClientError::NotConnected`]. In-flight requests are bounded by a
//! semaphore, and every wait (connect, handshake, permit, send, response)
//! ends at a deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::error::{ClientConfig, ClientError, Credentials};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use semikv_protocol::handshake::{self, HandshakeError};
use semikv_protocol::outbox;
use semikv_protocol::pending::PendingMap;
use semikv_protocol::transport::{ReadHalf, Stream, WriteHalf};
use semikv_protocol::{
    ClusterReport, ClusterStatus, ClusterView, Hello, HelloAuth, LogIndex, Message, MessageCodec,
    NodeReport, NodeStatus, Op, ProtocolError, ReplicaId, Reply, Request, RequestId, Role, Welcome,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::session::{self, Token};

/// Waiters by request id, and why the connection ended once it has (the
/// map every semikv connection shares).
type SharedPending = Arc<PendingMap<oneshot::Sender<Reply>>>;

/// Marks the connection closed (keeping the first reason) and fails every
/// waiter: dropping its sender tells it the connection was lost.
fn close(pending: &SharedPending, reason: String) {
    drop(pending.close(reason));
}

/// One connection to a semikv process. Cheap to clone; clones share the
/// connection, and may be used from many tasks at once. The connection closes
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    node: Option<ReplicaId>,
    config: ClientConfig,
    next_id: AtomicU64,
    to_writer: mpsc::Sender<Request>,
    pending: SharedPending,
    permits: Semaphore,
    shutdown: CancellationToken,
    tasks: [JoinHandle<()>; 2],
    /// The session's highest position seen.
    token: Arc<Token>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// A connection that has said Hello and been welcomed, split in halves:
/// what [`handshake`] returns, for callers that drive the frames
/// themselves (the load generator).
#[derive(Debug)]
pub struct Handshaken {
    /// The read half, with whatever the peer sent after its Welcome.
    pub reader: FramedRead<ReadHalf, MessageCodec>,
    /// The write half (its buffer is empty: the Hello was flushed).
    pub writer: FramedWrite<WriteHalf, MessageCodec>,
    /// The peer's Welcome.
    pub welcome: Welcome,
}

/// Connects to `addr` and handshakes as [`Role::Client`], all within
/// `config.connect_timeout`. [`Client::connect`] is built on it.
///
/// # Errors
/// [`ClientError::Connect`], [`ClientError::ConnectTimeout`],
/// [`ClientError::Rejected`] or [`ClientError::Handshake`].
pub async fn handshake(addr: &str, config: &ClientConfig) -> Result<Handshaken, ClientError> {
    let timed_out = || ClientError::ConnectTimeout {
        addr: addr.to_string(),
        after: config.connect_timeout,
    };
    let deadline = Instant::now() + config.connect_timeout;
    let stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    // Requests are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let stream = match &config.tls {
        None => Stream::from(stream),
        Some(tls) => timeout_at(
            deadline,
            semikv_protocol::tls::connect_client(tls, stream, addr),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| ClientError::Handshake {
            addr: addr.to_string(),
            reason: format!("TLS: {e}"),
        })?,
    };
    let (read, write) = stream.into_split();
    let codec = MessageCodec::new(config.max_frame_len);
    let mut reader = FramedRead::new(read, codec);
    let mut writer = FramedWrite::new(write, codec);
    let exchange = async {
        let hello = Hello::new(Role::Client, None);
        let hello = match &config.credentials {
            None => Message::Hello(hello),
            Some(c) => Message::HelloAuth(HelloAuth {
                hello,
                user: c.user.clone(),
                password: c.password.clone(),
            }),
        };
        writer.send(hello).await.map_err(|e| e.to_string())?;
        match handshake::welcome(reader.next().await) {
            Ok(welcome) => Ok(Ok(welcome)),
            Err(HandshakeError::Rejected(error)) => Ok(Err(error)),
            Err(other) => Err(other.to_string()),
        }
    };
    let welcome = timeout_at(deadline, exchange)
        .await
        .map_err(|_| timed_out())?
        .map_err(|reason| ClientError::Handshake {
            addr: addr.to_string(),
            reason,
        })?
        .map_err(|error| ClientError::Rejected {
            addr: addr.to_string(),
            error,
        })?;
    Ok(Handshaken {
        reader,
        writer,
        welcome,
    })
}

impl Client {
    /// Connects to `addr` and handshakes as [`Role::Client`].
    ///
    /// Must be called within a tokio runtime; the connection's tasks run on it.
    /// A `Client` is cheap to clone: clones share the connection, and their
    /// requests are pipelined on it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), semikv_client::ClientError> {
    /// use semikv_client::{Client, ClientConfig};
    /// let client = Client::connect("127.0.0.1:8080", &ClientConfig::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::ConnectTimeout`],
    /// [`ClientError::Rejected`] or [`ClientError::Handshake`].
    pub async fn connect(addr: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        Client::connect_with_token(addr, config, Arc::default()).await
    }

    /// [`Client::connect`], continuing the session of `token` (another
    /// connection's, or one made with [`Token::at`] from a number another
    /// process handed over): its reads reflect at least what that session
    /// saw, and what this connection sees raises it too.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with_token(
        addr: &str,
        config: &ClientConfig,
        token: Arc<Token>,
    ) -> Result<Client, ClientError> {
        let Handshaken {
            reader,
            writer,
            welcome,
        } = handshake(addr, config).await?;

        let pending: SharedPending = Arc::default();
        let shutdown = CancellationToken::new();
        let max_in_flight = config.max_in_flight.max(1);
        let (to_writer, from_callers) = mpsc::channel(max_in_flight);
        let write_task = tokio::spawn(write_loop(
            writer,
            from_callers,
            pending.clone(),
            shutdown.clone(),
            config.request_timeout,
        ));
        let read_task = tokio::spawn(read_loop(reader, pending.clone(), shutdown.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                node: welcome.node,
                config: config.clone(),
                next_id: AtomicU64::new(1),
                to_writer,
                pending,
                permits: Semaphore::new(max_in_flight),
                shutdown,
                tasks: [write_task, read_task],
                token,
            }),
        })
    }

    /// The session's token: the highest log position this connection (and
    /// any sharing its token) has seen. Hand its number to another
    /// connection to read your writes there too.
    pub fn token(&self) -> LogIndex {
        self.inner.token.get()
    }

    /// The session's token itself, to share with another connection
    /// ([`Client::connect_with_token`]).
    pub fn shared_token(&self) -> Arc<Token> {
        self.inner.token.clone()
    }

    /// Raises the session's token to `index` (a position another session
    /// handed over): later reads reflect at least it.
    pub fn observe(&self, index: LogIndex) {
        self.inner.token.observe(index);
    }

    /// The address this client dialled.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The peer's replica id from its `Welcome` (`None` for the balancer).
    pub fn peer_node(&self) -> Option<ReplicaId> {
        self.inner.node
    }

    /// Whether the connection has ended; requests would fail with
    /// [`ClientError::NotConnected`].
    pub fn is_closed(&self) -> bool {
        self.inner.pending.closed().is_some()
    }

    /// Sends `op` under a fresh request id and waits for its reply. A plain
    /// read (get, ttl, scan, dbsize) goes as a consistent read at the
    /// configured level after the session's token, and its answer comes
    /// back unwrapped; every answer's position raises the token (see
    /// [`Token`]).
    ///
    /// Error replies from the server are `Ok(Reply::Error(..))`.
    ///
    /// # Errors
    /// [`ClientError::NotConnected`] (not sent), [`ClientError::Encode`] (not
    /// sent), [`ClientError::ConnectionLost`] or [`ClientError::Timeout`]
    /// (outcome unknown).
    pub async fn request(&self, op: Op) -> Result<Reply, ClientError> {
        let inner = &*self.inner;
        let after = inner.config.request_timeout;
        let deadline = Instant::now() + after;
        let _permit = timeout_at(deadline, inner.permits.acquire())
            .await
            .map_err(|_| ClientError::Timeout { after })?
            .map_err(|_| ClientError::NotConnected {
                reason: "client shut down".to_string(),
            })?;
        let (op, wrapped) = session::wrap(op, inner.config.consistency, inner.token.get());
        let request = Request {
            id: RequestId(inner.next_id.fetch_add(1, Ordering::Relaxed)),
            op,
        };
        let id = request.id;
        let (tx, rx) = oneshot::channel();
        if let Err((_, reason)) = inner.pending.insert(id.0, tx) {
            return Err(ClientError::NotConnected { reason });
        }
        // Takes the entry out if the wait ends without an answer (timeout,
        // the caller's future dropped); a no-op once the reader took it.
        let _guard = inner.pending.guard(id.0);
        // Reject what cannot be framed here: past the writer, an encode error
        // would look like a broken connection.
        check_encodable(&request, inner.config.max_frame_len).map_err(ClientError::Encode)?;
        match timeout_at(deadline, inner.to_writer.send(request)).await {
            Err(_) => return Err(ClientError::Timeout { after }),
            Ok(Err(_)) => {
                return Err(ClientError::NotConnected {
                    reason: self.close_reason(),
                })
            }
            Ok(Ok(())) => {}
        }
        match timeout_at(deadline, rx).await {
            Err(_) => Err(ClientError::Timeout { after }),
            Ok(Err(_)) => Err(ClientError::ConnectionLost {
                reason: self.close_reason(),
            }),
            Ok(Ok(reply)) => {
                inner.token.note(&reply);
                Ok(session::unwrap(reply, wrapped))
            }
        }
    }

    fn close_reason(&self) -> String {
        self.inner
            .pending
            .closed()
            .unwrap_or_else(|| "connection closed".to_string())
    }

    /// Reads `key`: its committed value or `None`.
    ///
    /// ```no_run
    /// # async fn demo(client: semikv_client::Client) -> Result<(), semikv_client::ClientError> {
    /// if let Some(value) = client.get("greeting").await? {
    ///     println!("{}", String::from_utf8_lossy(&value));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::request`], plus [`ClientError::Server`] and
    /// [`ClientError::UnexpectedReply`].
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        value_of(self.request(Op::Get { key: key.into() }).await?)
    }

    /// Writes `key`; returns the write's log index once committed.
    ///
    /// ```no_run
    /// # async fn demo(client: semikv_client::Client) -> Result<(), semikv_client::ClientError> {
    /// let index = client.set("greeting", "hello").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::get`]. `Indeterminate` and `NotEnoughReplicas` error
    /// replies, [`ClientError::ConnectionLost`] and [`ClientError::Timeout`]
    /// mean the write may or may not have been applied.
    pub async fn set(
        &self,
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
    /// ```no_run
    /// # async fn demo(client: semikv_client::Client) -> Result<(), semikv_client::ClientError> {
    /// client.delete("greeting").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::set`].
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<LogIndex, ClientError> {
        written(
            "delete",
            self.request(Op::Delete { key: key.into() }).await?,
        )
    }

    /// Checks the peer answers.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(Op::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(unexpected("ping", other)),
        }
    }

    /// The cluster status through a balancer.
    ///
    /// # Errors
    /// As [`Client::get`]; a replica's status is
    /// [`ClientError::UnexpectedReply`].
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        Ok(self.cluster_report().await?.status)
    }

    /// The cluster status through a balancer, with each replica's disk and
    /// memory as last reported.
    ///
    /// # Errors
    /// As [`Client::cluster_status`].
    pub async fn cluster_report(&self) -> Result<ClusterReport, ClientError> {
        self.request(Op::Status)
            .await?
            .into_cluster_report()
            .map_err(|other| unexpected("status", other))
    }

    /// The cluster status through a balancer, with each replica's disk and
    /// memory and its read lag in milliseconds, as the balancer's router
    /// judges `bounded` reads by.
    ///
    /// # Errors
    /// As [`Client::cluster_status`].
    pub async fn cluster_view(&self) -> Result<ClusterView, ClientError> {
        self.request(Op::Status)
            .await?
            .into_cluster_view()
            .map_err(|other| unexpected("status", other))
    }

    /// A replica's own status.
    ///
    /// # Errors
    /// As [`Client::get`]; a balancer's status is
    /// [`ClientError::UnexpectedReply`].
    pub async fn node_status(&self) -> Result<NodeStatus, ClientError> {
        Ok(self.node_report().await?.status)
    }

    /// A replica's own status with its disk and memory.
    ///
    /// # Errors
    /// As [`Client::node_status`].
    pub async fn node_report(&self) -> Result<NodeReport, ClientError> {
        self.request(Op::Status)
            .await?
            .into_node_report()
            .map_err(|other| unexpected("status", other))
    }
}

/// A get's reply as its value; an error reply or another reply is an error.
pub(crate) fn value_of(reply: Reply) -> Result<Option<Bytes>, ClientError> {
    match reply {
        Reply::Value(v) => Ok(v),
        other => Err(unexpected("get", other)),
    }
}

/// A write's reply as its log index; an error reply or another reply is an
/// error.
pub(crate) fn written(op: &'static str, reply: Reply) -> Result<LogIndex, ClientError> {
    match reply {
        Reply::Written { index } => Ok(index),
        other => Err(unexpected(op, other)),
    }
}

pub(crate) fn unexpected(op: &'static str, reply: Reply) -> ClientError {
    match reply {
        Reply::Error(e) => ClientError::Server(e),
        reply => ClientError::UnexpectedReply {
            op,
            reply: Box::new(reply),
        },
    }
}

/// Catches requests the codec would refuse, before they are queued.
fn check_encodable(request: &Request, max_frame_len: usize) -> Result<(), ProtocolError> {
    // Key and value dominate the size; only large requests pay for a trial
    // encode.
    let approx = match &request.op {
        Op::Set { key, value } => key.len() + value.len(),
        Op::Get { key } | Op::Delete { key } | Op::Ttl { key } => key.len(),
        Op::Command(command) => command.payload_len(),
        _ => 0,
    };
    if approx.saturating_add(64) < max_frame_len {
        return Ok(());
    }
    let mut scratch = bytes::BytesMut::new();
    semikv_protocol::frame::encode(
        &Message::Request(request.clone()),
        max_frame_len,
        &mut scratch,
    )
}

/// The connection's writer (the shared batched [`outbox`]); a failed or
/// blocked write ends the connection with its reason, recorded before the
/// reader sees the shutdown, so callers are told why.
async fn write_loop(
    writer: FramedWrite<WriteHalf, MessageCodec>,
    from_callers: mpsc::Receiver<Request>,
    pending: SharedPending,
    shutdown: CancellationToken,
    write_timeout: Duration,
) {
    let written = outbox::run(writer, from_callers, shutdown.child_token(), write_timeout).await;
    if let Err(failure) = written {
        tracing::debug!(reason = %failure, "client connection write side failed");
        close(&pending, failure.to_string());
        shutdown.cancel();
    }
    // Dropping the write half here closes our side of the socket.
}

async fn read_loop(
    mut reader: FramedRead<ReadHalf, MessageCodec>,
    pending: SharedPending,
    shutdown: CancellationToken,
) {
    let reason = loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break "connection shut down".to_string(),
            message = reader.next() => message,
        };
        match message {
            Some(Ok(Message::Response(response))) => {
                let waiter = pending.remove(response.id.0);
                if let Some(waiter) = waiter {
                    // The caller may have given up; its loss.
                    let _ = waiter.send(response.reply);
                }
            }
            Some(Ok(Message::Reject(error))) => {
                break format!("server rejected the connection: {error}")
            }
            Some(Ok(other)) => break format!("unexpected {} message from server", other.name()),
            Some(Err(e)) => break format!("protocol error: {e}"),
            None => break "server closed the connection".to_string(),
        }
    };
    tracing::debug!(reason = %reason, "client connection closed");
    close(&pending, reason);
    shutdown.cancel();
}

#[cfg(test)]
mod tests;
