//! One long-lived, multiplexed connection from the balancer to a replica.
//!
//! The link connects on demand (handshake as `Role::Balancer`), gives every
//! request its own id, and matches responses by id in a pending map, so many
//! client requests share one connection with their pipelining intact. When the
//! connection breaks, every request in flight is answered
//! [`ConnError::Broken`] at once and the health loop is told (the fast path of
//! failure detection); the next request reconnects.
//!
//! Client reads and writes can also be forwarded without a future of their
//! own ([`ReplicaLink::forward_reads`], [`ReplicaLink::forward_write`]): the
//! pending map then holds where the answer goes, and the connection's reader
//! hands it to the client's [`ClientPort`], in no client's wire format.
//! The map is the shared [`PendingMap`]: whoever takes an entry out (the
//! reader with the reply, the reader's sweep at the deadline, the reader's
//! drain when the connection breaks) answers it, so each request is
//! answered exactly once, and nothing is added once it is drained.
//!
//! Health checks and admin requests (`Status`, `Fence`, `Promote`, `Follow`)
//! travel on a second connection of their own: on the data connection they
//! queued behind thousands of pipelined writes, so a busy but healthy leader
//! missed its checks and was failed over.

mod encode;
mod pending;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use semikv_protocol::auth::ClusterSecret;
use semikv_protocol::handshake::{self, HandshakeError};
use semikv_protocol::net::Net;
use semikv_protocol::sync::lock;
use semikv_protocol::throttle::LogThrottle;
use semikv_protocol::{Hello, Message, MessageCodec, Op, Reply, Response, Role, WireError};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use crate::request::ClientPort;
use encode::{checked_frame, encode_request, request_out};
use pending::{
    answer_all, Forward, Waiting, WriteInFlight, MAX_REPLIES_PER_LOCK, MAX_REPLY_BYTES_PER_LOCK,
    SWEEP_EVERY,
};
pub use pending::{ForwardRead, ForwardWrite};
use semikv_protocol::outbox::{self, Outbound};
use semikv_protocol::pending::PendingMap;

/// Requests queued for one replica's socket before senders wait.
const SEND_QUEUE: usize = 1024;

/// Longest one batch of requests may take to write: a replica that stops
/// reading for this long loses its connection (and is reconnected).
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection may stay silent while a request on it is past
/// its deadline before it is presumed dead and closed. TCP retransmits
/// for many minutes before it gives up on a connection whose segments a
/// middlebox black-holes (or whose peer wedged): without this, every
/// request sent on it would wait out its whole timeout until then. A
/// replica that is merely slow keeps answering something, and keeps it.
const SILENT_LINK: Duration = Duration::from_secs(1);

/// How often a replica that refuses our cluster secret is said.
const AUTH_FAILED_EVERY: Duration = Duration::from_secs(10);

/// Why a request to a replica got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// The replica refused the connection: it is not running.
    #[error("connection refused")]
    Refused,
    /// No connection could be made (other than a refusal), or the handshake
    /// failed. The request was never sent.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The connection broke after the request was handed to it: the replica
    /// may or may not have executed it.
    #[error("connection broke with the request in flight")]
    Broken,
    /// No reply within the timeout; the request may still be executed.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The request does not fit in a frame under the link's request id
    /// (longer than the client's): it was not sent, and sending it anywhere
    /// else would fail the same way.
    #[error("request too large for a frame to the replica: {0}")]
    TooLarge(String),
}

impl ConnError {
    /// Whether the request certainly never reached the replica (safe to send
    /// elsewhere, even for a write).
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ConnError::Refused | ConnError::Connect(_) | ConnError::TooLarge(_)
        )
    }
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Outbound>,
    pending: Arc<PendingMap<Waiting>>,
    closed: CancellationToken,
}

/// One connection slot of a link.
#[derive(Debug, Default)]
struct Channel {
    /// The open connection, read by every request: a std lock held for a
    /// clone only (an async mutex here serialised every request).
    current: Mutex<Option<Arc<Conn>>>,
    /// Serialises (re)connecting, so one broken link makes one new
    /// connection. Holds why the last attempt failed, if it did.
    connecting: tokio::sync::Mutex<Option<ConnError>>,
    /// Connection attempts made (counted under `connecting`, read without
    /// it: a caller notes it before queueing for the lock).
    attempts: AtomicU64,
}

impl Channel {
    fn open_connection(&self) -> Option<Arc<Conn>> {
        let current = lock(&self.current);
        current
            .as_ref()
            .filter(|conn| !conn.closed.is_cancelled())
            .cloned()
    }

    async fn disconnect(&self) {
        let _attempts = self.connecting.lock().await;
        let taken = lock(&self.current).take();
        if let Some(conn) = taken {
            conn.closed.cancel();
        }
    }
}

/// The balancer's link to one replica; cheap to share.
#[derive(Debug)]
pub struct ReplicaLink {
    slot: usize,
    addr: String,
    max_frame_len: usize,
    /// Proved in every handshake, when the cluster has one.
    secret: Option<ClusterSecret>,
    /// TLS to the replica, when the balancer has a CA for them.
    tls: Option<Arc<semikv_protocol::tls::Tls>>,
    /// The network it connects over.
    net: Net,
    /// A replica that refuses our secret (or ours its) is said at most
    /// every 10 s, at error: it is a misconfiguration to fix.
    auth_failed: LogThrottle,
    connect_timeout: Duration,
    /// Client reads and writes.
    data: Channel,
    /// Health checks and admin requests.
    control: Channel,
    next_id: AtomicU64,
    broken_tx: mpsc::Sender<usize>,
    /// The group's health loop: told when a forwarded write's outcome says
    /// the leader looks wrong.
    kick: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl ReplicaLink {
    /// A link to `addr` (slot `slot`); it does not connect until used. When an
    /// established connection breaks, `slot` is sent (without waiting) on
    /// `broken_tx`; `kick` is notified when a forwarded write says the
    /// leader looks wrong.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: usize,
        addr: String,
        max_frame_len: usize,
        secret: Option<ClusterSecret>,
        tls: Option<Arc<semikv_protocol::tls::Tls>>,
        connect_timeout: Duration,
        broken_tx: mpsc::Sender<usize>,
        kick: Arc<Notify>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> ReplicaLink {
        ReplicaLink {
            slot,
            addr,
            max_frame_len,
            secret,
            tls: tls.filter(|t| t.connects()),
            net: Net::Tokio,
            auth_failed: LogThrottle::new(AUTH_FAILED_EVERY),
            connect_timeout,
            data: Channel::default(),
            control: Channel::default(),
            next_id: AtomicU64::new(1),
            broken_tx,
            kick,
            shutdown,
            tasks,
        }
    }

    /// The replica's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `op` and waits up to `timeout` for its reply, connecting first if
    /// needed (the connect has its own timeout).
    ///
    /// # Errors
    /// [`ConnError`]: see [`ConnError::never_sent`] for whether it may have run.
    pub async fn request(&self, op: Op, timeout: Duration) -> Result<Reply, ConnError> {
        let channel = if op.is_admin() || matches!(op, Op::Status) {
            &self.control
        } else {
            &self.data
        };
        let conn = self.connection(channel).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut op = op;
        let frame = checked_frame(id, &mut op, self.max_frame_len)
            .map_err(|e| ConnError::TooLarge(e.to_string()))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        if conn.pending.insert(id, Waiting::Reply(reply_tx)).is_err() {
            return Err(ConnError::Connect("connection closed".into()));
        }
        let waiter = conn.pending.guard(id);
        let out = frame.unwrap_or_else(|| request_out(id, op));
        let outcome = tokio::time::timeout(timeout, async {
            if conn.tx.send(out).await.is_err() {
                return Err(ConnError::Broken);
            }
            reply_rx.await.map_err(|_| ConnError::Broken)
        })
        .await;
        match outcome {
            Ok(Ok(reply)) => {
                // The reader took the entry out when it delivered the reply.
                waiter.answered();
                Ok(reply)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnError::Timeout(timeout)),
        }
    }

    /// Sends a client's reads (all of one burst) on the data connection if
    /// it is open and has room right now, without waiting, as one queue
    /// entry encoded here, registered under one lock: each answer (or, on
    /// failure, a [`Retry`]) goes where `port` says. Leaves `reads` empty
    /// when they were sent, untouched when not (for the caller's own path).
    ///
    /// The frames are encoded into `buf` and split off it (its capacity is
    /// kept for the next burst); it is left empty either way.
    pub fn forward_reads(
        &self,
        port: &Arc<ClientPort>,
        reads: &mut Vec<ForwardRead>,
        buf: &mut BytesMut,
        timeout: Duration,
    ) {
        if reads.is_empty() {
            return;
        }
        let Some(conn) = self.data.open_connection() else {
            return;
        };
        let Ok(room) = conn.tx.try_reserve() else {
            return;
        };
        let count = reads.len() as u64;
        let first = self.next_id.fetch_add(count, Ordering::Relaxed);
        buf.clear();
        for (id, read) in (first..).zip(reads.iter_mut()) {
            // Encoded from the op itself, which stays with its entry for a
            // retry: cloning it cost an allocation per read.
            if encode_request(id, &mut read.op, self.max_frame_len, buf).is_err() {
                // Longer than a frame under the link's ids (the client's fit):
                // the caller's own path answers it (`ConnError::TooLarge`).
                buf.clear();
                return;
            }
        }
        {
            // Open is checked under the lock the reader drains with: once
            // closed, nobody would ever answer what we insert.
            let Some(mut pending) = conn.pending.open() else {
                buf.clear();
                return;
            };
            let deadline = Instant::now() + timeout;
            pending.reserve(reads.len());
            for (id, read) in (first..).zip(reads.drain(..)) {
                let forward = Forward {
                    port: port.clone(),
                    read,
                };
                pending.insert(id, Waiting::ForwardRead(forward, deadline));
            }
        }
        // In the map before they are sent, so no reply can arrive before it
        // is known. If the connection broke in between, the drain has
        // already sent them to be retried and this goes nowhere.
        room.send(Outbound::Frames(buf.split().freeze()));
    }

    /// Sends a client's write on the data connection if it is open and has
    /// room right now, without waiting. Once sent, the client gets exactly
    /// one answer, handed by this link to `write.port` as
    /// [`ForwardWrite`] says: from the replica's reply, or `Indeterminate`
    /// when the connection breaks first or `timeout` passes (the sweep runs
    /// every 100 ms). `NotLeader` and a broken connection also kick the
    /// health loop. The write is never sent again.
    ///
    /// # Errors
    /// The `write` itself, untouched and certainly not sent, when it could
    /// not be sent at once: the caller may send it another way.
    pub fn forward_write(
        &self,
        mut write: ForwardWrite,
        timeout: Duration,
    ) -> Result<(), ForwardWrite> {
        let Some(conn) = self.data.open_connection() else {
            return Err(write);
        };
        let Ok(room) = conn.tx.try_reserve() else {
            return Err(write);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = match checked_frame(id, &mut write.op, self.max_frame_len) {
            Ok(frame) => frame,
            // Longer than a frame under the link's id (the client's fit):
            // the caller's own path answers it (`ConnError::TooLarge`).
            Err(_) => return Err(write),
        };
        let op = {
            // Open is checked under the lock the reader drains with: once
            // closed, nobody would ever answer what we insert.
            let Some(mut pending) = conn.pending.open() else {
                return Err(write);
            };
            let ForwardWrite {
                port,
                tag,
                op,
                slot,
            } = write;
            let sent = Instant::now();
            let in_flight = WriteInFlight {
                port,
                tag,
                slot,
                timeout,
                kind: crate::metrics::OpKind::of(&op),
                sent,
            };
            let deadline = sent + timeout;
            pending.insert(id, Waiting::Write(in_flight, deadline));
            op
        };
        // In the map before it is sent, so no reply can arrive before it is
        // known. If the connection broke in between, the drain has already
        // answered it (Indeterminate) and this goes nowhere.
        room.send(frame.unwrap_or_else(|| request_out(id, op)));
        Ok(())
    }

    /// Drops the current connections, if any: every request in flight on
    /// them is answered [`ConnError::Broken`] at once, and the next request
    /// reconnects. Used when the replica is deposed, so writes waiting on a
    /// silent leader do not sit out their whole timeout.
    pub async fn disconnect(&self) {
        self.data.disconnect().await;
        self.control.disconnect().await;
    }

    async fn connection(&self, channel: &Channel) -> Result<Arc<Conn>, ConnError> {
        if let Some(conn) = channel.open_connection() {
            return Ok(conn);
        }
        let seen = channel.attempts.load(Ordering::Acquire);
        let mut last_failure = channel.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(conn) = channel.open_connection() {
            return Ok(conn);
        }
        // Or tried and failed while we waited: that answer is ours too.
        // Otherwise every caller queued behind a replica that does not
        // answer would try in turn, each for up to the connect timeout (a
        // burst of reads falling back to it: hundreds of them in a row).
        if channel.attempts.load(Ordering::Acquire) != seen {
            if let Some(failed) = &*last_failure {
                return Err(failed.clone());
            }
        }
        let outcome = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .unwrap_or_else(|_| Err(ConnError::Connect("connect timed out".into())));
        *last_failure = outcome.as_ref().err().cloned();
        channel.attempts.fetch_add(1, Ordering::Release);
        let conn = outcome?;
        *lock(&channel.current) = Some(conn.clone());
        Ok(conn)
    }

    /// The same link, connecting over `net` (the operating system's TCP
    /// unless told otherwise).
    #[must_use]
    pub fn over(mut self, net: Net) -> ReplicaLink {
        self.net = net;
        self
    }

    async fn connect(&self) -> Result<Arc<Conn>, ConnError> {
        let stream = self.net.connect(&self.addr).await.map_err(|e| {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                ConnError::Refused
            } else {
                ConnError::Connect(e.to_string())
            }
        })?;
        let stream = match &self.tls {
            Some(tls) => tls
                .connect(stream, &self.addr)
                .await
                .map_err(|e| ConnError::Connect(format!("TLS: {e}")))?,
            None => stream,
        };
        let mut framed = Framed::new(stream, MessageCodec::new(self.max_frame_len));
        let hello = Hello::new(Role::Balancer, None);
        if let Err(e) = handshake::hello_proving(&mut framed, hello, self.secret.as_ref()).await {
            let auth = matches!(
                e,
                HandshakeError::PeerNotProved
                    | HandshakeError::Rejected(WireError::AuthFailed { .. })
            );
            if auth && self.auth_failed.admit().is_some() {
                error!(replica = %self.addr, error = %e, "the replica and this balancer do not share a cluster secret: check --cluster-secret-file on both; it gets no requests until they do");
            }
            return Err(ConnError::Connect(e.to_string()));
        }
        // Not under the clients' read budget: what a replica sends here
        // answers requests this link sent, bounded by those in flight, and
        // must not wait behind clients' large frames.
        let (mut stream, sink) = semikv_protocol::codec::split_unbudgeted(framed);
        let (tx, rx) = mpsc::channel::<Outbound>(SEND_QUEUE);
        let pending = Arc::new(PendingMap::new());
        let closed = self.shutdown.child_token();

        self.tasks
            .spawn(outbox::run(sink, rx, closed.clone(), WRITE_TIMEOUT));

        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        let broken_tx = self.broken_tx.clone();
        let slot = self.slot;
        let kick = self.kick.clone();
        self.tasks.spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // One wait for the whole loop: a fresh one per frame registered
            // and dropped a waiter on the token each time.
            let closed = reader_closed.cancelled();
            tokio::pin!(closed);
            // The replies of one read from the socket, matched under one lock:
            // client connections insert into the same map from other threads.
            let mut replies: Vec<Response> = Vec::new();
            let mut matched: Vec<(Waiting, Reply)> = Vec::new();
            let mut last_heard = Instant::now();
            'read: loop {
                let frame = tokio::select! {
                    _ = &mut closed => break,
                    _ = sweep.tick() => {
                        let now = Instant::now();
                        let late = reader_pending
                            .take_due(|w: &Waiting| w.deadline().is_some_and(|deadline| deadline <= now));
                        let any_late = !late.is_empty();
                        for waiting in late {
                            waiting.fail(slot, true, &kick);
                        }
                        if any_late && now.duration_since(last_heard) >= SILENT_LINK {
                            info!(slot, silent_ms = now.duration_since(last_heard).as_millis() as u64, "replica connection silent past a request's deadline; closing it");
                            break 'read;
                        }
                        continue;
                    }
                    frame = stream.next() => frame,
                };
                last_heard = Instant::now();
                let mut frame = Some(frame);
                let mut ended = false;
                let mut batch_bytes = 0usize;
                while let Some(next) = frame.take() {
                    match next {
                        Some(Ok(Message::Response(resp))) => {
                            // A command's outcome can carry a value too
                            // (GETDEL, SET ... GET, GETEX), and a read at a
                            // level carries its reply inside.
                            let reply = match &resp.reply {
                                Reply::Read(answer) => answer.reply.as_ref(),
                                reply => reply,
                            };
                            let value = match reply {
                                Reply::Value(Some(value)) => Some(value),
                                Reply::Outcome(outcome) => outcome.value.as_ref(),
                                _ => None,
                            };
                            if let Some(value) = value {
                                batch_bytes = batch_bytes.saturating_add(value.len());
                            }
                            replies.push(resp);
                        }
                        Some(Ok(_)) | Some(Err(_)) | None => {
                            ended = true;
                            break;
                        }
                    }
                    if replies.len() < MAX_REPLIES_PER_LOCK && batch_bytes < MAX_REPLY_BYTES_PER_LOCK {
                        frame = stream.next().now_or_never();
                    }
                }
                reader_pending.take_answered(
                    replies.drain(..).map(|resp| (resp.id.0, resp.reply)),
                    &mut matched,
                );
                answer_all(&mut matched, &kick, slot);
                if ended {
                    break 'read;
                }
            }
            reader_closed.cancel();
            let orphans = reader_pending.close("replica connection closed");
            // Waiters get Broken; forwarded reads go back to their clients
            // to be retried; forwarded writes are answered Indeterminate.
            for waiting in orphans {
                waiting.fail(slot, false, &kick);
            }
            debug!(slot, "replica connection closed");
            // Best effort: a full queue means the health loop already knows.
            let _ = broken_tx.try_send(slot);
        });

        Ok(Arc::new(Conn {
            tx,
            pending,
            closed,
        }))
    }
}
