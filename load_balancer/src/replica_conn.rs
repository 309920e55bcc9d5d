//! One long-lived, multiplexed connection from the balancer to a replica.
//!
//! The link connects on demand (handshake as `Role::Balancer`), gives every
//! request its own id, and matches responses by id in a pending map, so many
//! client requests share one connection with their pipelining intact. When the
//! connection breaks, every request in flight is answered
//! [`ConnError::Broken`] at once and the health loop is told (the fast path of
//! failure detection); the next request reconnects.
//!
//! Health checks and admin requests (`Status`, `Fence`, `Promote`, `Follow`)
//! travel on a second connection of their own: on the data connection they
//! queued behind thousands of pipelined writes, so a busy but healthy leader
//! missed its checks and was failed over.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use semikv_protocol::{
    Hello, Message, MessageCodec, Op, Reply, Request, RequestId, Response, Role, Welcome,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::outbox::{self, Out};

/// Requests queued for one replica's socket before senders wait.
const SEND_QUEUE: usize = 1024;

/// Longest one batch of requests may take to write: a replica that stops
/// reading for this long loses its connection (and is reconnected).
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request to a replica got no reply.
#[derive(Debug, thiserror::Error)]
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
}

impl ConnError {
    /// Whether the request certainly never reached the replica (safe to send
    /// elsewhere, even for a write).
    pub fn never_sent(&self) -> bool {
        matches!(self, ConnError::Refused | ConnError::Connect(_))
    }
}

/// How often a link looks for forwarded reads past their deadline.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A client's read forwarded without a future of its own: the replica's
/// answer goes straight to the client's outbox, under the client's id.
#[derive(Debug)]
pub struct Forward {
    /// The client connection's outbox.
    pub reply_to: mpsc::Sender<Out>,
    /// The client's id for the request.
    pub client_id: RequestId,
    /// The read, kept to retry it elsewhere.
    pub op: Op,
    /// Where a read this replica failed goes to be retried.
    pub retry: mpsc::Sender<Retry>,
    /// The client's in-flight slot, held until the answer is written.
    pub slot: OwnedSemaphorePermit,
}

/// A forwarded read that got no answer from `failed_on` (its connection
/// broke, or the deadline passed): the client connection retries it on
/// another replica, as it would a read of its own.
#[derive(Debug)]
pub struct Retry {
    /// The client's id for the request.
    pub client_id: RequestId,
    /// The read.
    pub op: Op,
    /// The replica that failed it.
    pub failed_on: usize,
    /// The client's in-flight slot.
    pub slot: OwnedSemaphorePermit,
}

impl Forward {
    fn deliver(self, reply: Reply) {
        let out = Out {
            message: Message::Response(Response {
                id: self.client_id,
                reply,
            }),
            slot: Some(self.slot),
        };
        // Room is certain (see `Out`); failing means the client is gone.
        let _ = self.reply_to.try_send(out);
    }

    fn retry(self, failed_on: usize) {
        let retry = Retry {
            client_id: self.client_id,
            op: self.op,
            failed_on,
            slot: self.slot,
        };
        // Room is certain: every queued retry holds one of the slots it
        // is sized for. Failing means the client is gone.
        let _ = self.retry.try_send(retry);
    }
}

/// What a request in flight on a replica connection is waiting with.
#[derive(Debug)]
enum Waiting {
    /// A caller's future, on a oneshot.
    Reply(oneshot::Sender<Reply>),
    /// A forwarded client read, answered by the connection's reader.
    Forward(Forward, Instant),
}

#[derive(Debug, Default)]
struct Pending {
    open: bool,
    map: HashMap<u64, Waiting>,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Out>,
    pending: Arc<Mutex<Pending>>,
    closed: CancellationToken,
}

fn lock<T>(p: &Mutex<T>) -> MutexGuard<'_, T> {
    // Updates are single map operations: a poisoned lock is still consistent.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the forwarded reads past their deadline out of the pending map.
fn expired(pending: &Mutex<Pending>, now: Instant) -> Vec<Forward> {
    let mut p = lock(pending);
    let late: Vec<u64> = p
        .map
        .iter()
        .filter(|(_, w)| matches!(w, Waiting::Forward(_, deadline) if *deadline <= now))
        .map(|(&id, _)| id)
        .collect();
    late.into_iter()
        .filter_map(|id| match p.map.remove(&id) {
            Some(Waiting::Forward(forward, _)) => Some(forward),
            _ => None,
        })
        .collect()
}

/// Takes a request's entry out of the pending map however the request ends
/// without a reply: its own timeout, or the caller dropping the future (the
/// health check wraps requests in a timeout that also covers the connect),
/// so the map cannot grow on a live connection.
struct Waiter<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
    armed: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.pending).map.remove(&self.id);
        }
    }
}

/// One connection slot of a link.
#[derive(Debug, Default)]
struct Channel {
    /// The open connection, read by every request: a std lock held for a
    /// clone only (an async mutex here serialised every request).
    current: Mutex<Option<Arc<Conn>>>,
    /// Serialises (re)connecting, so one broken link makes one new connection.
    connecting: tokio::sync::Mutex<()>,
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
        let _connecting = self.connecting.lock().await;
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
    connect_timeout: Duration,
    /// Client reads and writes.
    data: Channel,
    /// Health checks and admin requests.
    control: Channel,
    next_id: AtomicU64,
    broken_tx: mpsc::Sender<usize>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl ReplicaLink {
    /// A link to `addr` (slot `slot`); it does not connect until used. When an
    /// established connection breaks, `slot` is sent (without waiting) on
    /// `broken_tx`.
    pub fn new(
        slot: usize,
        addr: String,
        max_frame_len: usize,
        connect_timeout: Duration,
        broken_tx: mpsc::Sender<usize>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> ReplicaLink {
        ReplicaLink {
            slot,
            addr,
            max_frame_len,
            connect_timeout,
            data: Channel::default(),
            control: Channel::default(),
            next_id: AtomicU64::new(1),
            broken_tx,
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
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = lock(&conn.pending);
            if !pending.open {
                return Err(ConnError::Connect("connection closed".into()));
            }
            pending.map.insert(id, Waiting::Reply(reply_tx));
        }
        let mut waiter = Waiter {
            pending: &conn.pending,
            id,
            armed: true,
        };
        let message = Message::Request(Request {
            id: RequestId(id),
            op,
        });
        let outcome = tokio::time::timeout(timeout, async {
            if conn.tx.send(message.into()).await.is_err() {
                return Err(ConnError::Broken);
            }
            reply_rx.await.map_err(|_| ConnError::Broken)
        })
        .await;
        match outcome {
            Ok(result) => {
                // The reader removed the entry when it delivered the reply.
                waiter.armed = result.is_err();
                result
            }
            Err(_) => Err(ConnError::Timeout(timeout)),
        }
    }

    /// Sends a client's read on the data connection if it is open and has
    /// room right now, without waiting: the reply (or, on failure, a
    /// [`Retry`]) goes where `forward` says. Gives `forward` back when it
    /// could not be sent, for the caller's own path.
    ///
    /// # Errors
    /// The `forward` itself, untouched, when not sent.
    pub fn forward(&self, forward: Forward, timeout: Duration) -> Result<(), Forward> {
        let Some(conn) = self.data.open_connection() else {
            return Err(forward);
        };
        let Ok(room) = conn.tx.try_reserve() else {
            return Err(forward);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = Message::Request(Request {
            id: RequestId(id),
            op: forward.op.clone(),
        });
        {
            let mut pending = lock(&conn.pending);
            if !pending.open {
                return Err(forward);
            }
            pending
                .map
                .insert(id, Waiting::Forward(forward, Instant::now() + timeout));
        }
        room.send(message.into());
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
        let _connecting = channel.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(conn) = channel.open_connection() {
            return Ok(conn);
        }
        let conn = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| ConnError::Connect("connect timed out".into()))??;
        *lock(&channel.current) = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Arc<Conn>, ConnError> {
        let stream = TcpStream::connect(&self.addr).await.map_err(|e| {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                ConnError::Refused
            } else {
                ConnError::Connect(e.to_string())
            }
        })?;
        // Latency matters more than packet count for small requests.
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, MessageCodec::new(self.max_frame_len));
        framed
            .send(Message::Hello(Hello::new(Role::Balancer, None)))
            .await
            .map_err(|e| ConnError::Connect(e.to_string()))?;
        match framed.next().await {
            Some(Ok(Message::Welcome(Welcome { .. }))) => {}
            Some(Ok(Message::Reject(e))) => {
                return Err(ConnError::Connect(format!("handshake rejected: {e}")))
            }
            Some(Ok(_)) => return Err(ConnError::Connect("unexpected handshake answer".into())),
            Some(Err(e)) => return Err(ConnError::Connect(e.to_string())),
            None => return Err(ConnError::Connect("closed during handshake".into())),
        }
        let (sink, mut stream) = framed.split();
        let (tx, rx) = mpsc::channel::<Out>(SEND_QUEUE);
        let pending = Arc::new(Mutex::new(Pending {
            open: true,
            map: HashMap::new(),
        }));
        let closed = self.shutdown.child_token();

        self.tasks
            .spawn(outbox::run(sink, rx, closed.clone(), WRITE_TIMEOUT));

        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        let broken_tx = self.broken_tx.clone();
        let slot = self.slot;
        self.tasks.spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let frame = tokio::select! {
                    _ = reader_closed.cancelled() => break,
                    _ = sweep.tick() => {
                        for forward in expired(&reader_pending, Instant::now()) {
                            forward.retry(slot);
                        }
                        continue;
                    }
                    frame = stream.next() => frame,
                };
                match frame {
                    Some(Ok(Message::Response(resp))) => {
                        let waiting = lock(&reader_pending).map.remove(&resp.id.0);
                        match waiting {
                            Some(Waiting::Reply(waiter)) => {
                                let _ = waiter.send(resp.reply);
                            }
                            Some(Waiting::Forward(forward, _)) => forward.deliver(resp.reply),
                            None => {}
                        }
                    }
                    Some(Ok(_)) | Some(Err(_)) | None => break,
                }
            }
            reader_closed.cancel();
            let orphans: Vec<Waiting> = {
                let mut p = lock(&reader_pending);
                p.open = false;
                p.map.drain().map(|(_, waiting)| waiting).collect()
            };
            // Dropping the senders answers every waiter with Broken; the
            // forwarded reads go back to their clients to be retried.
            for waiting in orphans {
                if let Waiting::Forward(forward, _) = waiting {
                    forward.retry(slot);
                }
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
