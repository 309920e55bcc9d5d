//! Client connections: the handshake (server side), then every request routed
//! to a replica: writes to the leader, reads round-robin over healthy
//! replicas, `Ping` and `Status` answered by the balancer itself.
//!
//! Each request runs as its own future (polled by the connection's task), so
//! a client's pipeline stays full and responses return as soon as they are
//! ready, matched by the client's id (the
//! replica links use their own ids). Bad input gets a `Reject` frame and
//! closes that connection only.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use semikv_protocol::{
    ErrorReply, Message, MessageCodec, Op, Reply, Response, Role, Welcome, WireError,
    PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Config;
use crate::outbox;
use crate::replica_conn::{ConnError, ReplicaLink};
use crate::table::{Leader, Table};

/// Requests one client may have in flight before the balancer stops reading
/// from it.
const MAX_IN_FLIGHT: usize = 1024;

/// How long a new connection has to send its `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing one frame to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry hint given with `Unavailable`.
const RETRY_AFTER_MS: u64 = 100;

/// What request routing needs, shared by all client connections.
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    table: Arc<Table>,
    links: Arc<Vec<Arc<ReplicaLink>>>,
    kick: Arc<Notify>,
}

impl Router {
    /// A router over `links` (one per slot of `table`); `kick` asks the health
    /// loop for an immediate round when a replica misbehaves.
    pub fn new(
        config: Arc<Config>,
        table: Arc<Table>,
        links: Arc<Vec<Arc<ReplicaLink>>>,
        kick: Arc<Notify>,
    ) -> Router {
        Router {
            config,
            table,
            links,
            kick,
        }
    }

    /// Serves one client connection until it closes, errs, or `shutdown`.
    /// Never panics on bad input: protocol errors are answered with `Reject`.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, MessageCodec::new(self.config.max_frame_len));
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await;
        let hello = match first {
            Ok(Some(Ok(Message::Hello(hello)))) => hello,
            Ok(Some(Ok(_))) => return reject(framed, WireError::HandshakeRequired).await,
            Ok(Some(Err(e))) => {
                if let Some(wire) = e.to_wire() {
                    reject(framed, wire).await;
                }
                return;
            }
            Ok(None) => return,
            Err(_) => return reject(framed, WireError::HandshakeRequired).await,
        };
        if let Err(wire) = hello.check() {
            return reject(framed, wire).await;
        }
        if hello.role == Role::Replica {
            return reject(
                framed,
                WireError::WrongRole {
                    role: hello.role,
                    what: "connecting to the balancer".into(),
                },
            )
            .await;
        }
        let welcome = Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node: None,
        });
        if !matches!(
            tokio::time::timeout(WRITE_TIMEOUT, framed.send(welcome)).await,
            Ok(Ok(()))
        ) {
            return;
        }

        let (sink, mut stream) = framed.split();
        let (tx, rx) = mpsc::channel::<Message>(MAX_IN_FLIGHT);
        let conn_closed = shutdown.child_token();
        let writer = tokio::spawn(outbox::run(sink, rx, conn_closed.clone(), WRITE_TIMEOUT));

        // Requests run as futures of this task rather than one spawned task
        // each: no spawn, no task tracker and no Arc clone per request, and
        // the answers that complete together are queued together, so the
        // outbox writes them with one system call.
        let router = &*self;
        let mut in_flight = FuturesUnordered::new();
        let role = hello.role;
        loop {
            tokio::select! {
                _ = conn_closed.cancelled() => break,
                Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                    if tx.send(Message::Response(response)).await.is_err() {
                        break;
                    }
                    let mut gone = false;
                    while let Some(Some(more)) = in_flight.next().now_or_never() {
                        if tx.send(Message::Response(more)).await.is_err() {
                            gone = true;
                            break;
                        }
                    }
                    if gone {
                        break;
                    }
                }
                frame = stream.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let request = match frame {
                        Some(Ok(Message::Request(request))) => request,
                        Some(Ok(other)) => {
                            let what = other.name().to_string();
                            let _ = tx
                                .send(Message::Reject(WireError::Unexpected { what }))
                                .await;
                            break;
                        }
                        Some(Err(e)) => {
                            if let Some(wire) = e.to_wire() {
                                let _ = tx.send(Message::Reject(wire)).await;
                            }
                            break;
                        }
                        None => break,
                    };
                    if request.op.is_admin() {
                        let what = request.op.name().to_string();
                        let _ = tx
                            .send(Message::Reject(WireError::WrongRole { role, what }))
                            .await;
                        break;
                    }
                    in_flight.push(async move {
                        Response {
                            id: request.id,
                            reply: router.handle(request.op).await,
                        }
                    });
                }
            }
        }
        // The socket closes once the writer also lets go of its half: at once
        // after a Reject, otherwise when the in-flight answers are written
        // (each request is bounded by its own timeouts).
        drop(stream);
        while let Some(response) = in_flight.next().await {
            if tx.send(Message::Response(response)).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Routes one operation and returns its reply.
    pub async fn handle(&self, op: Op) -> Reply {
        match &op {
            Op::Ping => return Reply::Pong,
            Op::Status => return Reply::Cluster(self.table.cluster_status()),
            _ => {}
        }
        if let Err(reason) = op.validate(usize::MAX) {
            return Reply::Error(ErrorReply::Invalid { reason });
        }
        if op.is_write() {
            self.write(op).await
        } else {
            self.read(op).await
        }
    }

    async fn write(&self, op: Op) -> Reply {
        let deadline = Instant::now() + self.config.write_wait;
        let mut skip: Option<Leader> = None;
        loop {
            let Some(leader) = self.wait_leader(deadline, skip).await else {
                return unavailable("no leader; failover in progress");
            };
            let Some(link) = self.links.get(leader.slot) else {
                return unavailable("no leader");
            };
            match link.request(op.clone(), self.config.write_timeout()).await {
                Ok(Reply::Error(ErrorReply::NotLeader { .. })) => {
                    // Definitely not applied: the leader changed under us.
                    self.kick.notify_one();
                    return unavailable("leader changed; failover in progress");
                }
                Ok(reply) => return reply,
                Err(e) if e.never_sent() => {
                    // Safe to wait for another leader: the write never left.
                    self.kick.notify_one();
                    skip = Some(leader);
                }
                Err(ConnError::Timeout(_)) => {
                    return Reply::Error(ErrorReply::Indeterminate {
                        reason: "the leader did not answer in time".into(),
                    })
                }
                Err(_) => {
                    self.kick.notify_one();
                    return Reply::Error(ErrorReply::Indeterminate {
                        reason: "the connection to the leader broke with the write in flight"
                            .into(),
                    });
                }
            }
        }
    }

    /// Waits until a leader other than `skip` is known, or `deadline`.
    async fn wait_leader(&self, deadline: Instant, skip: Option<Leader>) -> Option<Leader> {
        let mut rx = self.table.watch_leader();
        loop {
            let current = *rx.borrow_and_update();
            if let Some(leader) = current {
                if Some(leader) != skip {
                    return Some(leader);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    async fn read(&self, op: Op) -> Reply {
        let timeout = self.config.request_timeout();
        let mut tried = None;
        for _ in 0..2 {
            let slot = match self.table.next_reader(tried) {
                Some(slot) => slot,
                None if tried.is_none() => {
                    // Nothing healthy yet (start-up or failover): wait a bounded
                    // time for a leader, which is healthy by definition.
                    let deadline = Instant::now() + self.config.write_wait;
                    match self.wait_leader(deadline, None).await {
                        Some(leader) => leader.slot,
                        None => return unavailable("no healthy replica"),
                    }
                }
                None => break,
            };
            let Some(link) = self.links.get(slot) else {
                break;
            };
            match link.request(op.clone(), timeout).await {
                Ok(reply) => return reply,
                Err(e) => {
                    debug!(slot, error = %e, "read failed; retrying elsewhere");
                    self.kick.notify_one();
                    tried = Some(slot);
                }
            }
        }
        unavailable("read failed on every replica tried")
    }
}

fn unavailable(reason: &str) -> Reply {
    Reply::Error(ErrorReply::Unavailable {
        retry_after_ms: RETRY_AFTER_MS,
        reason: reason.into(),
    })
}

async fn reject(mut framed: Framed<TcpStream, MessageCodec>, error: WireError) {
    debug!(error = %error, "rejecting client connection");
    let _ = tokio::time::timeout(WRITE_TIMEOUT, framed.send(Message::Reject(error))).await;
}
