//! Test clients. [`Client`] speaks the protocol properly (handshake, request
//! ids, timeouts); [`RawConn`] writes whatever bytes a hostile test wants and
//! reads back whatever frames arrive.
//!
//! Every network wait is bounded by [`IO_TIMEOUT`] (or a given timeout).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use semikv_protocol::handshake;
use semikv_protocol::transport::Stream;
use semikv_protocol::{
    ClusterReport, ClusterStatus, Epoch, ErrorReply, Fence, Follow, Hello, LogIndex, Message,
    MessageCodec, NodeStatus, Op, Promote, ReplicaId, Reply, Request, RequestId, Response, Role,
    Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Framed};

/// Bound on connecting, the handshake, and each request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests [`Client::get_many`] keeps in flight.
pub const GET_WINDOW: usize = 256;

/// How to reach a peer beyond a plain `Hello`: TLS, the cluster secret, a
/// login.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    /// TLS with this configuration.
    pub tls: Option<std::sync::Arc<semikv_protocol::tls::TlsClientConfig>>,
    /// Prove this cluster secret.
    pub secret: Option<semikv_protocol::auth::ClusterSecret>,
    /// Log in as this user, with this password.
    pub login: Option<(String, String)>,
}

impl Dial {
    /// A login as `user` with `password`.
    pub fn login(user: &str, password: &str) -> Dial {
        Dial {
            login: Some((user.to_string(), password.to_string())),
            ..Dial::default()
        }
    }
}

/// A connection that has completed the handshake.
#[derive(Debug)]
pub struct Client {
    framed: Framed<Stream, MessageCodec>,
    next_id: u64,
    welcome: Welcome,
}

impl Client {
    /// Connects to `addr` and handshakes as `role`.
    ///
    /// # Errors
    /// Connecting or the handshake failed or timed out, or the peer rejected
    /// it (the error names the [`semikv_protocol::WireError`]).
    pub async fn connect(addr: SocketAddr, role: Role) -> anyhow::Result<Client> {
        Client::connect_as(addr, Hello::new(role, None)).await
    }

    /// Connects and sends `hello` as given (e.g. a replica's id).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_as(addr: SocketAddr, hello: Hello) -> anyhow::Result<Client> {
        Client::connect_proving(addr, hello, None).await
    }

    /// Connects and logs in to a balancer as `user` with `password`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn login(addr: SocketAddr, user: &str, password: &str) -> anyhow::Result<Client> {
        Client::dial(
            addr,
            Hello::new(Role::Client, None),
            &Dial::login(user, password),
        )
        .await
    }

    /// Connects, sends `hello` and proves `secret` when one is given.
    ///
    /// # Errors
    /// As [`Client::connect`], or the peer's proof of the secret was wrong.
    pub async fn connect_proving(
        addr: SocketAddr,
        hello: Hello,
        secret: Option<&semikv_protocol::auth::ClusterSecret>,
    ) -> anyhow::Result<Client> {
        let dial = Dial {
            secret: secret.cloned(),
            ..Dial::default()
        };
        Client::dial(addr, hello, &dial).await
    }

    /// Connects to `addr` as `dial` says (TLS, the secret, a login) and
    /// says `hello`. In secured mode (see `crate::secured`) it logs in to
    /// balancers and proves the secret to replicas, whatever `dial` says.
    ///
    /// # Errors
    /// As [`Client::connect`], or TLS or the proof of the secret failed.
    pub async fn dial(addr: SocketAddr, hello: Hello, dial: &Dial) -> anyhow::Result<Client> {
        let mut hello = hello;
        let mut dial = dial.clone();
        if dial.tls.is_none() {
            dial.tls = crate::secured::tls()?;
        }
        if dial.secret.is_none() && dial.login.is_none() && crate::secured::enabled() {
            if crate::secured::is_balancer(addr) {
                if hello.role == Role::Client {
                    dial.login = Some((
                        crate::secured::USER.to_string(),
                        crate::secured::PASSWORD.to_string(),
                    ));
                }
            } else {
                dial.secret = crate::secured::secret()?.cloned();
                if hello.role == Role::Client {
                    hello.role = Role::Balancer;
                }
            }
        }
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream = match &dial.tls {
            None => Stream::from(stream),
            Some(tls) => timeout(
                IO_TIMEOUT,
                semikv_protocol::tls::connect_client(tls, stream, &addr.to_string()),
            )
            .await
            .with_context(|| format!("TLS with {addr} timed out"))?
            .with_context(|| format!("TLS with {addr}"))?,
        };
        let mut framed = Framed::new(stream, MessageCodec::default());
        let exchange = async {
            match &dial.login {
                Some((user, password)) => {
                    let login = semikv_protocol::HelloAuth {
                        hello,
                        user: user.clone(),
                        password: password.clone(),
                    };
                    framed.send(Message::HelloAuth(login)).await?;
                    anyhow::Ok(handshake::welcome(framed.next().await)?)
                }
                None => {
                    Ok(handshake::hello_proving(&mut framed, hello, dial.secret.as_ref()).await?)
                }
            }
        };
        let welcome = timeout(IO_TIMEOUT, exchange)
            .await
            .with_context(|| format!("handshake with {addr} timed out"))?
            .with_context(|| format!("handshake with {addr}"))?;
        Ok(Client {
            framed,
            next_id: 1,
            welcome,
        })
    }

    /// Says `hello` over a stream already connected to `peer` (a
    /// simulated network's, for instance), plainly: no TLS, no secret, no
    /// login, whatever the secured mode says.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn over(stream: Stream, hello: Hello, peer: &str) -> anyhow::Result<Client> {
        let mut framed = Framed::new(stream, MessageCodec::default());
        let welcome = timeout(
            IO_TIMEOUT,
            handshake::hello_proving(&mut framed, hello, None),
        )
        .await
        .with_context(|| format!("handshake with {peer} timed out"))?
        .with_context(|| format!("handshake with {peer}"))?;
        Ok(Client {
            framed,
            next_id: 1,
            welcome,
        })
    }

    /// What the peer said in its handshake answer.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends `op` without waiting for the answer (pipelining).
    ///
    /// # Errors
    /// Writing failed or timed out.
    pub async fn send(&mut self, op: Op) -> anyhow::Result<RequestId> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        timeout(
            IO_TIMEOUT,
            self.framed.send(Message::Request(Request { id, op })),
        )
        .await
        .context("sending a request timed out")??;
        Ok(id)
    }

    /// Sends any message as it is (replication messages, or ones the peer
    /// should refuse).
    ///
    /// # Errors
    /// Writing failed or timed out.
    pub async fn send_message(&mut self, message: Message) -> anyhow::Result<()> {
        timeout(IO_TIMEOUT, self.framed.send(message))
            .await
            .context("sending a message timed out")??;
        Ok(())
    }

    /// The next message from the peer, whatever it is; `None` at EOF.
    ///
    /// # Errors
    /// A protocol error, or nothing arrived within `wait`.
    pub async fn recv_message(&mut self, wait: Duration) -> anyhow::Result<Option<Message>> {
        next(&mut self.framed, wait).await
    }

    /// The next response.
    ///
    /// # Errors
    /// The peer sent a Reject (named in the error), another message, closed
    /// the connection, or nothing arrived within [`IO_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<Response> {
        match next(&mut self.framed, IO_TIMEOUT).await? {
            Some(Message::Response(r)) => Ok(r),
            Some(Message::Reject(e)) => Err(anyhow!("peer rejected the connection: {e}")),
            Some(other) => Err(anyhow!("expected a Response, got {other:?}")),
            None => Err(anyhow!("peer closed the connection")),
        }
    }

    /// Sends `op` and waits for its reply.
    ///
    /// # Errors
    /// As [`Client::send`] and [`Client::recv`], or the response carried
    /// another request's id.
    pub async fn request(&mut self, op: Op) -> anyhow::Result<Reply> {
        let id = self.send(op).await?;
        let response = self.recv().await?;
        if response.id != id {
            bail!("sent request {id}, got the response to {}", response.id);
        }
        Ok(response.reply)
    }

    /// `Get key`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn get(&mut self, key: impl Into<Bytes>) -> anyhow::Result<Reply> {
        self.request(Op::Get { key: key.into() }).await
    }

    /// `Get` of every one of `keys`, pipelined with up to [`GET_WINDOW`]
    /// requests in flight (a read-back of tens of thousands of keys takes
    /// a moment, not a round trip each). The replies come in the order of
    /// `keys`.
    ///
    /// # Errors
    /// As [`Client::send`] and [`Client::recv`], or a response carried an id
    /// this call did not send.
    pub async fn get_many(&mut self, keys: &[Bytes]) -> anyhow::Result<Vec<Reply>> {
        let mut replies: Vec<Option<Reply>> = vec![None; keys.len()];
        let mut slots = std::collections::HashMap::with_capacity(GET_WINDOW);
        let mut next = keys.iter().enumerate();
        loop {
            while slots.len() < GET_WINDOW {
                let Some((slot, key)) = next.next() else {
                    break;
                };
                let id = self.send(Op::Get { key: key.clone() }).await?;
                slots.insert(id, slot);
            }
            if slots.is_empty() {
                break;
            }
            let response = self.recv().await?;
            let slot = slots.remove(&response.id).with_context(|| {
                format!("a response to request {} that was not sent", response.id)
            })?;
            replies[slot] = Some(response.reply);
        }
        // Every slot was sent and answered exactly once.
        Ok(replies.into_iter().flatten().collect())
    }

    /// `Set key value`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn set(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.request(Op::Set {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    /// Sets `key` until the write is acknowledged, retrying on error replies
    /// (a new leader may need a moment for its followers to connect).
    ///
    /// # Errors
    /// As [`Client::request`], or no acknowledgement within `within`.
    pub async fn set_until_acked(
        &mut self,
        key: &str,
        value: &str,
        within: Duration,
    ) -> anyhow::Result<LogIndex> {
        let deadline = crate::wait::Deadline::new(within, "a write to be acknowledged");
        loop {
            match self.set(key.to_string(), value.to_string()).await? {
                Reply::Written { index } => return Ok(index),
                _ => deadline.tick().await?,
            }
        }
    }

    /// `Delete key`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn del(&mut self, key: impl Into<Bytes>) -> anyhow::Result<Reply> {
        self.request(Op::Delete { key: key.into() }).await
    }

    /// `Ping`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn ping(&mut self) -> anyhow::Result<Reply> {
        self.request(Op::Ping).await
    }

    /// A replica's `Status`.
    ///
    /// # Errors
    /// As [`Client::request`], or the answer is not [`Reply::Node`].
    pub async fn status(&mut self) -> anyhow::Result<NodeStatus> {
        match self.request(Op::Status).await?.into_node_report() {
            Ok(report) => Ok(report.status),
            Err(other) => bail!("Status answered {other:?}"),
        }
    }

    /// The balancer's `Status`.
    ///
    /// # Errors
    /// As [`Client::request`], or the answer is not [`Reply::Cluster`].
    pub async fn cluster_status(&mut self) -> anyhow::Result<ClusterStatus> {
        match self.request(Op::Status).await?.into_cluster_report() {
            Ok(report) => Ok(report.status),
            Err(other) => bail!("Status answered {other:?}"),
        }
    }

    /// The balancer's `Status` with each replica's disk and memory.
    ///
    /// # Errors
    /// As [`Client::request`], or the answer is no cluster status.
    pub async fn cluster_report(&mut self) -> anyhow::Result<ClusterReport> {
        match self.request(Op::Status).await?.into_cluster_report() {
            Ok(report) => Ok(report),
            Err(other) => bail!("Status answered {other:?}"),
        }
    }

    /// `Promote` at `epoch`, needing `sync_replicas` follower acks within
    /// `sync_timeout_ms`, no async fallback.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn promote(
        &mut self,
        epoch: u128,
        sync_replicas: u32,
        sync_timeout_ms: u64,
    ) -> anyhow::Result<Reply> {
        self.request(Op::Promote(Promote {
            epoch: Epoch::from_raw(epoch),
            sync_replicas,
            sync_timeout_ms,
            async_fallback: false,
        }))
        .await
    }

    /// `Follow` the leader `leader` at `leader_addr`, at `epoch`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn follow(
        &mut self,
        epoch: u128,
        leader: u32,
        leader_addr: SocketAddr,
    ) -> anyhow::Result<Reply> {
        self.request(Op::Follow(Follow {
            epoch: Epoch::from_raw(epoch),
            leader: ReplicaId(leader),
            leader_addr: leader_addr.to_string(),
        }))
        .await
    }

    /// `Fence` at `epoch`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn fence(&mut self, epoch: u128) -> anyhow::Result<Reply> {
        self.request(Op::Fence(Fence {
            epoch: Epoch::from_raw(epoch),
        }))
        .await
    }
}

async fn next(
    framed: &mut Framed<Stream, MessageCodec>,
    wait: Duration,
) -> anyhow::Result<Option<Message>> {
    // The timeout stays in the error's chain, so [`is_timeout`] can tell it
    // from a broken connection.
    match timeout(wait, framed.next())
        .await
        .with_context(|| format!("no message within {wait:?}"))?
    {
        None => Ok(None),
        Some(Err(e)) => Err(anyhow!(e).context("reading a frame")),
        Some(Ok(m)) => Ok(Some(m)),
    }
}

/// Whether `error` (from a [`Client`] or [`RawConn`] call) is a timeout:
/// the peer did not answer in time, rather than the connection failing.
pub fn is_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<tokio::time::error::Elapsed>())
}

/// The log index of a [`Reply::Written`].
///
/// # Errors
/// Any other reply (the error shows it).
pub fn written(reply: &Reply) -> anyhow::Result<LogIndex> {
    match reply {
        Reply::Written { index } => Ok(*index),
        other => bail!("expected Written, got {other:?}"),
    }
}

/// The value of a [`Reply::Value`].
///
/// # Errors
/// Any other reply.
pub fn value(reply: &Reply) -> anyhow::Result<Option<Bytes>> {
    match reply {
        Reply::Value(v) => Ok(v.clone()),
        other => bail!("expected Value, got {other:?}"),
    }
}

/// The status in a replica's [`Reply::NodeReport`] (or [`Reply::Node`]).
///
/// # Errors
/// Any other reply.
pub fn node(reply: &Reply) -> anyhow::Result<NodeStatus> {
    match reply.node_status() {
        Some(s) => Ok(s.clone()),
        None => bail!("expected a replica's status, got {reply:?}"),
    }
}

/// The error in a [`Reply::Error`].
///
/// # Errors
/// Any other reply.
pub fn error(reply: &Reply) -> anyhow::Result<ErrorReply> {
    match reply {
        Reply::Error(e) => Ok(e.clone()),
        other => bail!("expected Error, got {other:?}"),
    }
}

/// A TCP connection with no protocol manners: sends raw bytes or frames,
/// reads frames back until the peer closes.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    codec: MessageCodec,
    buf: BytesMut,
}

impl RawConn {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// Connecting failed or timed out.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<RawConn> {
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(RawConn {
            stream,
            codec: MessageCodec::default(),
            buf: BytesMut::new(),
        })
    }

    /// Writes `bytes` as they are.
    ///
    /// # Errors
    /// Writing failed or timed out.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .context("writing timed out")??;
        Ok(())
    }

    /// Writes `message` as one proper frame.
    ///
    /// # Errors
    /// As [`RawConn::send_bytes`].
    pub async fn send(&mut self, message: &Message) -> anyhow::Result<()> {
        self.send_bytes(&encode(message)?).await
    }

    /// A handshake by hand: sends a `Hello` as `role` (no replica id) and
    /// reads the answer, which must be a `Welcome`. What follows can then be
    /// bytes no [`Client`] would send.
    ///
    /// # Errors
    /// Writing or reading failed, or the peer answered anything but a
    /// `Welcome` (the error shows what).
    pub async fn handshake(&mut self, role: Role) -> anyhow::Result<Welcome> {
        self.send(&Message::Hello(Hello::new(role, None))).await?;
        match self.recv().await? {
            Some(Message::Welcome(welcome)) => Ok(welcome),
            other => bail!("the handshake was answered with {other:?}"),
        }
    }

    /// Closes the write half: the peer sees EOF.
    ///
    /// # Errors
    /// The shutdown failed.
    pub async fn shutdown_write(&mut self) -> anyhow::Result<()> {
        timeout(IO_TIMEOUT, self.stream.shutdown())
            .await
            .context("shutdown timed out")??;
        Ok(())
    }

    /// The next frame; `None` if the peer closed (or reset) the connection.
    ///
    /// # Errors
    /// Undecodable bytes from the peer, or nothing within [`IO_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<Option<Message>> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(m));
            }
            let read = timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .with_context(|| format!("no frame within {IO_TIMEOUT:?}"))?;
            match read {
                Ok(0) => {
                    return match self.codec.decode_eof(&mut self.buf)? {
                        Some(m) => Ok(Some(m)),
                        None => Ok(None),
                    }
                }
                Ok(_) => {}
                // A peer that closes with our bytes unread sends RST.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Every frame until the peer closes.
    ///
    /// # Errors
    /// As [`RawConn::recv`]: in particular, a peer that never closes.
    pub async fn recv_until_closed(&mut self) -> anyhow::Result<Vec<Message>> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await? {
            out.push(m);
        }
        Ok(out)
    }
}

/// `message` as one frame.
///
/// # Errors
/// It does not encode within the default limit.
pub fn encode(message: &Message) -> anyhow::Result<BytesMut> {
    use tokio_util::codec::Encoder;
    let mut buf = BytesMut::new();
    MessageCodec::default().encode(message, &mut buf)?;
    Ok(buf)
}
