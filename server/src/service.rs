//! Client, balancer and replica connections: handshake, role checks, and
//! pipelined request handling. One bad peer costs only its own connection.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use semikv_protocol::{
    ErrorReply, Message, MessageCodec, Op, Reply, Request, Response, Role, Welcome, WireError,
    WriteOp, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

use crate::node::LeaderSettings;
use crate::replica::Replica;
use crate::{replication, storage};

/// How long a new connection may take to say Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one connection may have in flight; past it we stop reading.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Longest a read waits for a new leader to commit its first entry.
const READ_HOLD: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish when a connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on writing one response batch to a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

type Conn = Framed<TcpStream, MessageCodec>;

/// Serves one accepted connection to its end.
pub async fn serve(replica: Arc<Replica>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, MessageCodec::new(replica.config.max_frame_len));
    let hello = match timeout(HANDSHAKE_TIMEOUT, conn.next()).await {
        Err(_) | Ok(None) => return,
        Ok(Some(Err(e))) => return reject_protocol(&mut conn, &e).await,
        Ok(Some(Ok(Message::Hello(hello)))) => hello,
        Ok(Some(Ok(_))) => return reject(&mut conn, WireError::HandshakeRequired).await,
    };
    if let Err(e) = hello.check() {
        return reject(&mut conn, e).await;
    }
    let welcome = Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node: Some(replica.config.id),
    });
    if timeout(SEND_TIMEOUT, conn.send(welcome)).await.is_err() {
        return;
    }
    match hello.role {
        Role::Replica => replication::serve_follower(replica, conn, hello.node).await,
        Role::Client | Role::Balancer => serve_requests(replica, conn, hello.role).await,
    }
}

async fn reject(conn: &mut Conn, error: WireError) {
    tracing::debug!(error = %error, "rejecting connection");
    let _ = timeout(Duration::from_secs(1), conn.send(Message::Reject(error))).await;
}

async fn reject_protocol(conn: &mut Conn, error: &semikv_protocol::ProtocolError) {
    tracing::info!(error = %error, "protocol error from peer; closing its connection");
    if let Some(wire) = error.to_wire() {
        reject(conn, wire).await;
    }
}

/// Frames taken from the read buffer per wake-up before the answers ready so
/// far are written: bounds the batch a pipelining peer can make us hold.
const MAX_DRAIN: usize = 256;

/// What one message from a client or balancer asks of the loop.
enum Next {
    /// Answered at once.
    Ready(Response),
    /// Has to wait (a write, an admin request, a read held by a new leader).
    Later(Request),
    /// Stop reading; say why if there is a reason to give.
    Close(Option<WireError>),
}

async fn serve_requests(replica: Arc<Replica>, conn: Conn, role: Role) {
    let (mut sink, mut stream) = conn.split();
    let mut in_flight = FuturesUnordered::new();
    // Answers known at once (reads, pings, status), written together.
    let mut ready: Vec<Response> = Vec::new();
    let mut closing: Option<WireError> = None;
    'serve: loop {
        tokio::select! {
            Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                let mut batch = vec![response];
                while let Some(Some(more)) = in_flight.next().now_or_never() {
                    batch.push(more);
                }
                if send_batch(&mut sink, batch).await.is_err() {
                    return;
                }
            }
            msg = stream.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                // Everything already in the read buffer is taken now too, and
                // what can be answered at once is, without a future per
                // request: a pipelined batch of reads costs one wake-up and
                // one write.
                let mut msg = Some(msg);
                let mut taken = 0;
                let mut close = None;
                while let Some(one) = msg.take() {
                    match accept(&replica, role, one) {
                        Next::Ready(response) => ready.push(response),
                        Next::Later(request) => in_flight.push(handle(replica.clone(), request)),
                        Next::Close(why) => {
                            close = Some(why);
                            break;
                        }
                    }
                    taken += 1;
                    if taken < MAX_DRAIN && in_flight.len() < MAX_IN_FLIGHT {
                        msg = stream.next().now_or_never();
                    }
                }
                if !ready.is_empty() && send_batch(&mut sink, std::mem::take(&mut ready)).await.is_err() {
                    return;
                }
                if let Some(why) = close {
                    closing = why;
                    break 'serve;
                }
            }
            () = replica.shutdown.cancelled() => break,
        }
    }
    // Answer what was already accepted, within a bound, then say why we close.
    let drain = async {
        while let Some(response) = in_flight.next().await {
            if send_batch(&mut sink, vec![response]).await.is_err() {
                return;
            }
        }
    };
    let _ = timeout(DRAIN_TIMEOUT, drain).await;
    if let Some(error) = closing {
        tracing::debug!(error = %error, "rejecting connection");
        let _ = timeout(Duration::from_secs(1), sink.send(Message::Reject(error))).await;
    }
}

/// Sorts one message: answered now, answered later, or the end.
fn accept(
    replica: &Replica,
    role: Role,
    msg: Option<Result<Message, semikv_protocol::ProtocolError>>,
) -> Next {
    match msg {
        None => Next::Close(None),
        Some(Err(e)) => {
            tracing::info!(error = %e, "protocol error from peer; closing its connection");
            Next::Close(e.to_wire())
        }
        Some(Ok(Message::Request(request))) => {
            if request.op.is_admin() && role != Role::Balancer {
                return Next::Close(Some(WireError::WrongRole {
                    role,
                    what: request.op.name().to_string(),
                }));
            }
            answer_now(replica, request)
        }
        Some(Ok(other)) => Next::Close(Some(WireError::Unexpected {
            what: other.name().to_string(),
        })),
    }
}

/// The answer to `request` if it needs no waiting: a read the node can serve
/// now, a ping, a status, or a request that fails validation.
fn answer_now(replica: &Replica, request: Request) -> Next {
    let reply = match &request.op {
        Op::Ping => Reply::Pong,
        Op::Status => Reply::Node(replica.lock().status()),
        Op::Get { key } => {
            if let Err(reason) = request.op.validate(replica.config.max_value_len) {
                Reply::Error(ErrorReply::Invalid { reason })
            } else {
                match replica.lock().read(key) {
                    Some(value) => Reply::Value(value),
                    None => return Next::Later(request),
                }
            }
        }
        _ => return Next::Later(request),
    };
    Next::Ready(Response {
        id: request.id,
        reply,
    })
}

async fn send_batch<S>(sink: &mut S, batch: Vec<Response>) -> Result<(), ()>
where
    S: futures::Sink<Message, Error = semikv_protocol::ProtocolError> + Unpin,
{
    let write = async {
        for response in batch {
            sink.feed(Message::Response(response)).await?;
        }
        sink.flush().await
    };
    match timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn handle(replica: Arc<Replica>, request: Request) -> Response {
    let reply = match request.op.validate(replica.config.max_value_len) {
        Err(reason) => Reply::Error(ErrorReply::Invalid { reason }),
        Ok(()) => match request.op {
            Op::Get { key } => read(&replica, &key).await,
            Op::Set { key, value } => write(&replica, WriteOp::Set { key, value }).await,
            Op::Delete { key } => write(&replica, WriteOp::Delete { key }).await,
            Op::Ping => Reply::Pong,
            Op::Status => Reply::Node(replica.lock().status()),
            op @ (Op::Promote(_) | Op::Follow(_) | Op::Fence(_)) => admin(&replica, op).await,
        },
    };
    Response {
        id: request.id,
        reply,
    }
}

/// Answers a read, waiting (bounded) while a new leader commits its first
/// entry; see [`crate::node::Node::read`].
async fn read(replica: &Replica, key: &[u8]) -> Reply {
    let mut progress = replica.watch.progress.clone();
    let deadline = tokio::time::Instant::now() + READ_HOLD;
    loop {
        progress.borrow_and_update();
        if let Some(value) = replica.lock().read(key) {
            return Reply::Value(value);
        }
        let changed = tokio::time::timeout_at(deadline, progress.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Reply::Error(ErrorReply::Unavailable {
                retry_after_ms: 100,
                reason: "new leader has not committed its first entry yet".to_string(),
            });
        }
    }
}

async fn write(replica: &Replica, op: WriteOp) -> Reply {
    let proposed = replica.with(|n| {
        let wait = n.leader_timeout();
        n.propose(op).map(|(index, rx)| (index, rx, wait))
    });
    let (index, rx, wait) = match proposed {
        Ok((index, rx, Some(wait))) => (index, rx, wait),
        Ok((_, _, None)) => return unreachable_leader(),
        Err(e) => return Reply::Error(e),
    };
    match timeout(wait, rx).await {
        Ok(Ok(Ok(index))) => Reply::Written { index },
        Ok(Ok(Err(e))) => Reply::Error(e),
        Ok(Err(_)) => Reply::Error(ErrorReply::Indeterminate {
            reason: "the leader dropped the write while stepping down".to_string(),
        }),
        Err(_) => {
            let outcome = replica.with(|n| {
                if n.force_commit(index) {
                    return Ok(());
                }
                let counts = n.ack_count(index);
                n.forget_waiter(index);
                Err(counts)
            });
            match outcome {
                Ok(()) => {
                    tracing::warn!(index = %index, "sync replicas did not acknowledge in time; committed asynchronously (async fallback is on)");
                    Reply::Written { index }
                }
                Err((acked, required)) => {
                    Reply::Error(ErrorReply::NotEnoughReplicas { acked, required })
                }
            }
        }
    }
}

/// `propose` succeeded, so this node leads and has a timeout; this is the
/// error for the impossible other case, kept non-panicking.
fn unreachable_leader() -> Reply {
    Reply::Error(ErrorReply::Indeterminate {
        reason: "leadership changed while proposing".to_string(),
    })
}

async fn admin(replica: &Replica, op: Op) -> Reply {
    let _serial = replica.admin.lock().await;
    let epoch = match &op {
        Op::Promote(p) => p.epoch,
        Op::Follow(f) => f.epoch,
        Op::Fence(f) => f.epoch,
        _ => {
            return Reply::Error(ErrorReply::Invalid {
                reason: "not an admin op".to_string(),
            })
        }
    };
    let current = {
        let node = replica.lock();
        if let Err(e) = node.check_epoch(epoch) {
            return Reply::Error(e);
        }
        node.epoch()
    };
    if epoch > current {
        let dir = replica.config.data_dir.clone();
        let persisted =
            tokio::task::spawn_blocking(move || storage::meta::store_epoch(&dir, epoch)).await;
        match persisted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, epoch = %epoch, "could not persist the epoch");
                return Reply::Error(ErrorReply::Storage {
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                return Reply::Error(ErrorReply::Storage {
                    reason: e.to_string(),
                });
            }
        }
    }
    let result = replica.with(|n| {
        match op {
            Op::Promote(p) => n.promote(
                p.epoch,
                LeaderSettings {
                    sync_replicas: p.sync_replicas,
                    sync_timeout: Duration::from_millis(p.sync_timeout_ms),
                    async_fallback: p.async_fallback,
                },
            ),
            Op::Follow(f) => n.follow(f.epoch, f.leader, f.leader_addr),
            Op::Fence(f) => n.fence(f.epoch),
            _ => Ok(()),
        }
        .map(|()| n.status())
    });
    match result {
        Ok(status) => {
            tracing::info!(epoch = %status.epoch, role = %status.role, last_index = %status.last_index, "role changed by the balancer");
            Reply::Node(status)
        }
        Err(e) => Reply::Error(e),
    }
}
