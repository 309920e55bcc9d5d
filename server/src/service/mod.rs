//! Client, balancer and replica connections: handshake, role checks, and
//! pipelined request handling. One bad peer costs only its own connection.
//!
//! Writes take no future, channel or timer of their own: a connection
//! registers each with the node together with its completion queue
//! ([`crate::node::Completion`]), and the node answers it when the write
//! commits, fails, or passes its sync deadline (the replica's one expiry
//! timer, [`crate::expiry`]). Every accepted request gets exactly one
//! answer; at most [`MAX_IN_FLIGHT`] are unanswered per connection, which is
//! also the completion queue's capacity, so the node never finds it full.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use semikv_protocol::admission::RESERVED_HELLO_TIMEOUT;
use semikv_protocol::codec::{release_write_buffer, FrameClock, FrameWriter};
use semikv_protocol::handshake;
use semikv_protocol::throttle::LogThrottle;
use semikv_protocol::transport::Stream;
use semikv_protocol::{
    Consistency, ErrorReply, Message, Op, ReadAnswer, Reply, Request, RequestId, Response, Role,
    Welcome, WireError, WriteOp, PROTOCOL_VERSION,
};
use tokio::time::timeout;

use crate::node::keyspace::filter_page;
use crate::node::{Node, Proposal};
use crate::replica::Replica;
use crate::replication;
use writes::Writes;

/// How long a new connection may take to say Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one connection may have in flight; past it we stop reading.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Longest a read waits for a new leader to commit its first entry.
const READ_HOLD: Duration = Duration::from_secs(2);
/// Longest a read waits for this replica to apply its session's position
/// before it is refused `Behind` (and goes to the leader): a follower that
/// keeps up applies a write within a round trip of its commit.
pub const SESSION_WAIT: Duration = Duration::from_millis(50);
/// Longest a linearizable read waits for its leader's confirmation round.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish when a connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on writing one response batch to a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

type Conn = semikv_protocol::codec::BudgetedConn;

/// Serves one accepted connection to its end. `reserved`: it holds one of
/// the slots kept for peers, so it must say `Hello` as a balancer or a
/// replica within [`RESERVED_HELLO_TIMEOUT`], or be refused as if the
/// listener were full.
pub async fn serve(replica: Arc<Replica>, stream: Stream, reserved: bool) {
    let peer = stream.peer_addr().ok();
    let hello_timeout = if reserved {
        RESERVED_HELLO_TIMEOUT
    } else {
        HANDSHAKE_TIMEOUT
    };
    // One bound for the whole handshake, TLS and proof included.
    let deadline = tokio::time::Instant::now() + hello_timeout;
    let stream = match &replica.config.tls {
        None => stream,
        Some(tls) => match tls.accept(stream, hello_timeout).await {
            Ok(stream) => stream,
            Err(why) => {
                tracing::debug!(peer = ?peer, error = %why, "no TLS session");
                return;
            }
        },
    };
    let certified = semikv_protocol::tls::peer_verified(&stream);
    // Read under the replica's budget from the first byte: a Hello may be
    // as large as any frame.
    let mut conn =
        semikv_protocol::codec::framed(stream, replica.config.max_frame_len, &replica.read_budget);
    let first = match tokio::time::timeout_at(deadline, conn.next()).await {
        Err(_) | Ok(None) => return,
        Ok(Some(Err(e))) => return reject_protocol(&mut conn, &e).await,
        Ok(Some(Ok(first))) => first,
    };
    let secret = replica.config.cluster_secret.as_ref();
    let accepted =
        tokio::time::timeout_at(deadline, handshake::accept(&mut conn, first, secret)).await;
    let hello = match accepted {
        Err(_) | Ok(Err(None)) => return,
        Ok(Ok(accepted)) => accepted.hello,
        Ok(Err(Some(e))) => {
            if matches!(e, WireError::AuthFailed { .. }) {
                refused_peer(peer, &e);
            }
            return reject(&mut conn, e).await;
        }
    };
    let verifies = replica.config.tls.as_ref().is_some_and(|t| t.connects());
    if verifies && hello.role != Role::Client && !certified {
        let e = WireError::AuthFailed {
            reason: format!(
                "the {} role needs a TLS client certificate signed by this replica's \
                 --tls-ca",
                hello.role
            ),
        };
        refused_peer(peer, &e);
        return reject(&mut conn, e).await;
    }
    if secret.is_some() && hello.role == Role::Client {
        let e = WireError::AuthFailed {
            reason: "this replica has a cluster secret and serves its balancer and \
                     replicas only; clients connect through the balancer"
                .into(),
        };
        refused_peer(peer, &e);
        return reject(&mut conn, e).await;
    }
    if reserved && hello.role == Role::Client {
        let max = u64::try_from(replica.config.max_connections).unwrap_or(u64::MAX);
        return reject(&mut conn, WireError::TooManyConnections { max }).await;
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

/// Logs a peer refused for what it could not prove, at most once a second
/// (a flood of them must not flood the log).
fn refused_peer(peer: Option<std::net::SocketAddr>, error: &WireError) {
    static REFUSED: LogThrottle = LogThrottle::new(Duration::from_secs(1));
    if let Some(held) = REFUSED.admit() {
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        tracing::warn!(peer = %peer, error = %error, similar_since_last = held, "refused a connection");
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
enum Handling {
    /// Answered at once.
    Ready(Response),
    /// A valid write: proposed to the node with the rest of its batch.
    Write(RequestId, Proposal),
    /// A valid read: answered with the rest of its batch under one lock.
    Read(Request),
    /// Has to wait for something else (an admin request, a read held by a
    /// new leader).
    Later(Request),
    /// Stop reading; say why if there is a reason to give.
    Close(Option<WireError>),
}

async fn serve_requests(replica: Arc<Replica>, conn: Conn, role: Role) {
    let mut writes = Writes::new();
    serve_until_closed(&replica, conn, role, &mut writes).await;
    writes.abandon(&replica);
}

async fn serve_until_closed(replica: &Arc<Replica>, conn: Conn, role: Role, writes: &mut Writes) {
    let (mut stream, mut sink) = semikv_protocol::codec::split(conn);
    let mut in_flight = FuturesUnordered::new();
    // Answers known at once (reads, pings, status), written together.
    let mut ready: Vec<Response> = Vec::new();
    // Writes taken in one wake-up, proposed under one lock.
    let mut proposals: Vec<(RequestId, Proposal)> = Vec::new();
    // Reads taken in one wake-up, answered under one lock.
    let mut reads: Vec<Request> = Vec::new();
    let mut closing: Option<WireError> = None;
    // Once reading stops (the client closed, erred, or we shut down), what
    // was already accepted is still answered, within DRAIN_TIMEOUT, by the
    // same arms; then we say why we close.
    let mut reading = true;
    let drain = tokio::time::sleep(DRAIN_TIMEOUT);
    tokio::pin!(drain);
    let mut clock = FrameClock::new(replica.config.frame_timeout);
    // Closes a client connection idle for `idle_timeout`, when one is set;
    // a balancer's or a follower's link is never idle-timed out.
    let idle_after = replica.config.idle_timeout.filter(|_| role == Role::Client);
    let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(idle);
    loop {
        if !reading && in_flight.is_empty() && writes.pending == 0 {
            break;
        }
        tokio::select! {
            Some(done) = writes.rx.recv(), if writes.pending > 0 => {
                if send_batch(&mut sink, writes.answers(done)).await.is_err() {
                    return;
                }
            }
            Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                let mut batch = vec![response];
                while let Some(Some(more)) = in_flight.next().now_or_never() {
                    batch.push(more);
                }
                if send_batch(&mut sink, batch).await.is_err() {
                    return;
                }
            }
            // Only while reading: past the in-flight bound whole frames wait
            // in the buffer, and they are not stalled.
            () = clock.tick(), if reading && in_flight.len() + writes.pending < MAX_IN_FLIGHT => {
                if let Err(stalled) = clock.check(&stream) {
                    tracing::info!(error = %stalled, "closing a connection that stalled mid-frame");
                    break;
                }
            }
            msg = stream.next(), if reading && in_flight.len() + writes.pending < MAX_IN_FLIGHT => {
                clock.frame_arrived();
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
                // Everything already in the read buffer is taken now too, and
                // what can be answered at once is, without a future per
                // request: a pipelined batch costs one wake-up, one lock for
                // its writes and one write for its answers.
                let mut msg = Some(msg);
                let mut taken = 0;
                let mut close = None;
                while let Some(one) = msg.take() {
                    match accept(replica, role, one) {
                        Handling::Ready(response) => ready.push(response),
                        Handling::Write(id, op) => proposals.push((id, op)),
                        Handling::Read(request) => reads.push(request),
                        Handling::Later(request) => in_flight.push(handle(replica.clone(), request)),
                        Handling::Close(why) => {
                            close = Some(why);
                            break;
                        }
                    }
                    taken += 1;
                    if taken < MAX_DRAIN
                        && in_flight.len() + writes.pending + proposals.len() + reads.len()
                            < MAX_IN_FLIGHT
                    {
                        msg = stream.next().now_or_never();
                    }
                }
                // Reads before the batch's writes are proposed, as if each
                // had been answered when it was read.
                for request in answer_reads(replica, &mut reads, &mut ready) {
                    in_flight.push(handle(replica.clone(), request));
                }
                if !proposals.is_empty() {
                    writes.propose(replica, &mut proposals, &mut ready);
                }
                if !ready.is_empty() && send_batch(&mut sink, std::mem::take(&mut ready)).await.is_err() {
                    return;
                }
                if let Some(why) = close {
                    closing = why;
                    reading = false;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
            }
            () = &mut idle, if reading && idle_after.is_some() => {
                if in_flight.is_empty() && writes.pending == 0 {
                    tracing::debug!("closing an idle client connection");
                    break;
                }
                // Requests in flight: not idle; look again later.
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
            }
            () = replica.shutdown.cancelled(), if reading => {
                reading = false;
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
            }
            () = &mut drain, if !reading => break,
        }
    }
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
) -> Handling {
    match msg {
        None => Handling::Close(None),
        Some(Err(e)) => {
            tracing::info!(error = %e, "protocol error from peer; closing its connection");
            Handling::Close(e.to_wire())
        }
        Some(Ok(Message::Request(request))) => {
            if request.op.is_admin() && role != Role::Balancer {
                return Handling::Close(Some(WireError::WrongRole {
                    role,
                    what: request.op.name().to_string(),
                }));
            }
            answer_now(replica, request)
        }
        Some(Ok(other)) => Handling::Close(Some(WireError::Unexpected {
            what: other.name().to_string(),
        })),
    }
}

/// Answers `reads` (drained) from the node's committed state, under one lock
/// for the batch, into `ready`; gives back those the node cannot serve yet
/// (a new leader before its first commit), to wait as futures.
fn answer_reads(
    replica: &Replica,
    reads: &mut Vec<Request>,
    ready: &mut Vec<Response>,
) -> Vec<Request> {
    let mut later = Vec::new();
    if reads.is_empty() {
        return later;
    }
    let node = replica.lock();
    if let Err(refused) = node.check_serving() {
        ready.extend(reads.drain(..).map(|request| Response {
            id: request.id,
            reply: Reply::Error(refused.clone()),
        }));
        return later;
    }
    for request in reads.drain(..) {
        if pattern_of(&request.op).is_some() {
            // Matches are filtered once the node is let go: see `read`.
            later.push(request);
            continue;
        }
        match read_reply(&node, &request.op) {
            Some(reply) => ready.push(Response {
                id: request.id,
                reply,
            }),
            None => later.push(request),
        }
    }
    later
}

/// The answer to a read op (`Get`, `Ttl`, `Scan` unfiltered, `DbSize`, and
/// a `Read` of one of them that needs no more than what is applied), or
/// `None` while the node cannot serve it yet (a new leader before its first
/// commit, a session position not applied yet, a linearizable read).
fn read_reply(node: &Node, op: &Op) -> Option<Reply> {
    match op {
        Op::Get { key } => node.read(key).map(Reply::Value),
        Op::Ttl { key } => node.read_ttl(key).map(Reply::Ttl),
        Op::Scan(scan) => node.scan_page(scan).map(Reply::Keys),
        Op::DbSize => node.key_count().map(Reply::KeyCount),
        Op::Read(read) => {
            if read.level == Some(Consistency::Linearizable) || node.applied_index() < read.after {
                return None;
            }
            positioned(node, &read.op)
        }
        _ => None,
    }
}

/// The answer to `op` with the position it reflects.
fn positioned(node: &Node, op: &Op) -> Option<Reply> {
    let reply = read_reply(node, op)?;
    Some(Reply::Read(ReadAnswer {
        reply: Box::new(reply),
        index: node.applied_index(),
    }))
}

/// The pattern a scan (wrapped in a `Read` or not) filters by, if any.
fn pattern_of(op: &Op) -> Option<&[u8]> {
    match op {
        Op::Scan(scan) => scan.pattern.as_deref(),
        Op::Read(read) => pattern_of(&read.op),
        _ => None,
    }
}

/// The answer to `request` if it needs no waiting (a ping, a status, or a
/// request that fails validation), else the read or write to batch or the
/// request to defer.
fn answer_now(replica: &Replica, request: Request) -> Handling {
    let id = request.id;
    let reply = if let Err(reason) = request.op.validate(replica.config.max_value_len) {
        Reply::Error(ErrorReply::Invalid { reason })
    } else {
        match request.op {
            Op::Ping => Reply::Pong,
            Op::Status => replica.lock().status_reply(),
            Op::Get { .. } | Op::Ttl { .. } | Op::Scan(_) | Op::DbSize | Op::Read(_) => {
                return Handling::Read(request)
            }
            Op::Set { key, value } => {
                return Handling::Write(id, WriteOp::Set { key, value }.into())
            }
            Op::Delete { key } => return Handling::Write(id, WriteOp::Delete { key }.into()),
            Op::Command(command) => return Handling::Write(id, Proposal::Command(command)),
            Op::Promote(_) | Op::Follow(_) | Op::Fence(_) => return Handling::Later(request),
        }
    };
    Handling::Ready(Response { id, reply })
}

async fn send_batch(sink: &mut FrameWriter, batch: Vec<Response>) -> Result<(), ()> {
    let write = async {
        let mut peak = 0;
        for response in batch {
            sink.feed(Message::Response(response)).await?;
            peak = peak.max(sink.write_buffer().len());
        }
        SinkExt::<Message>::flush(sink).await?;
        release_write_buffer(sink, peak);
        Ok::<(), semikv_protocol::ProtocolError>(())
    };
    match timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Answers a request that waits on something other than a write's commit:
/// a read held by a new leader, or an admin request.
async fn handle(replica: Arc<Replica>, request: Request) -> Response {
    let reply = match request.op {
        Op::Read(read) if read.level == Some(Consistency::Linearizable) => {
            confirmed_read(&replica, &read.op).await
        }
        op @ (Op::Get { .. } | Op::Ttl { .. } | Op::Scan(_) | Op::DbSize | Op::Read(_)) => {
            self::read(&replica, &op).await
        }
        op @ (Op::Promote(_) | Op::Follow(_) | Op::Fence(_)) => {
            crate::admin::admin(&replica, op).await
        }
        Op::Ping => Reply::Pong,
        Op::Status => replica.lock().status_reply(),
        // `accept` proposes writes itself; answer rather than panic if one
        // ever gets here.
        Op::Set { .. } | Op::Delete { .. } | Op::Command(_) => Reply::Error(ErrorReply::Invalid {
            reason: "a write reached the deferred path".to_string(),
        }),
    };
    Response {
        id: request.id,
        reply,
    }
}

/// Answers a read, waiting (bounded) while a new leader commits its first
/// entry (see [`crate::node::Node::read`]) and, for a `Read`, while this
/// replica has not applied its session's position: past [`SESSION_WAIT`]
/// that is `Behind`.
async fn read(replica: &Replica, op: &Op) -> Reply {
    let mut progress = replica.watch.progress.clone();
    let now = tokio::time::Instant::now();
    let deadline = now + READ_HOLD;
    let position_deadline = now + SESSION_WAIT;
    loop {
        progress.borrow_and_update();
        // Until when to wait for progress if the read cannot be answered,
        // and whether it waits for its position (then `Behind` once over).
        let mut wait_until = deadline;
        let mut behind = false;
        let answer = {
            let node = replica.lock();
            if let Err(refused) = node.check_serving() {
                return Reply::Error(refused);
            }
            if let Op::Read(read) = op {
                let applied = node.applied_index();
                // A leader has applied every position it acknowledged, or
                // will once its promotion commits: it waits as for any read
                // (a position still ahead after that was never
                // acknowledged by this cluster). A follower waits briefly,
                // then sends the read to the leader.
                let limit = if node.leads() {
                    deadline
                } else {
                    position_deadline
                };
                if applied < read.after {
                    if tokio::time::Instant::now() >= limit {
                        return Reply::Error(ErrorReply::Behind {
                            applied,
                            wanted: read.after,
                        });
                    }
                    wait_until = limit;
                    behind = true;
                }
            }
            read_reply(&node, op)
        };
        if let Some(reply) = answer {
            return filtered(reply, op);
        }
        match tokio::time::timeout_at(wait_until, progress.changed()).await {
            Ok(Ok(())) => {}
            // The position's wait is over: the next turn says `Behind`.
            Err(_) if behind => {}
            _ => {
                return Reply::Error(ErrorReply::Unavailable {
                    retry_after_ms: 100,
                    reason: "new leader has not committed its first entry yet".to_string(),
                })
            }
        }
    }
}

/// A scan's page filtered by its pattern, wherever it sits in `reply`.
/// Matching may cost more than taking the page: it is done here, not under
/// the node's lock, which every write waits for.
fn filtered(mut reply: Reply, op: &Op) -> Reply {
    let pattern = pattern_of(op);
    let page = match &mut reply {
        Reply::Keys(page) => Some(page),
        Reply::Read(answer) => match answer.reply.as_mut() {
            Reply::Keys(page) => Some(page),
            _ => None,
        },
        _ => None,
    };
    if let Some(page) = page {
        filter_page(page, pattern);
    }
    reply
}

/// Answers a linearizable read (`op`, the read a `Read` wraps) on the
/// leader, once a round of leadership confirmation that started after it
/// arrived is confirmed and the commit index of its arrival is applied (see
/// `node::reads`); a replica that does not lead, or stops leading, answers
/// `NotLeader`.
async fn confirmed_read(replica: &Replica, op: &Op) -> Reply {
    let mut progress = replica.watch.progress.clone();
    let mut confirmed = replica.watch.confirmed.clone();
    let deadline = tokio::time::Instant::now() + CONFIRM_WAIT;
    let at = loop {
        progress.borrow_and_update();
        match replica.lock().begin_read_index() {
            Err(refused) => return Reply::Error(refused),
            Ok(Some(at)) => break at,
            Ok(None) => {}
        }
        if !matches!(
            tokio::time::timeout_at(deadline, progress.changed()).await,
            Ok(Ok(()))
        ) {
            return Reply::Error(ErrorReply::Unavailable {
                retry_after_ms: 100,
                reason: "new leader has not committed its first entry yet".to_string(),
            });
        }
    };
    loop {
        progress.borrow_and_update();
        confirmed.borrow_and_update();
        let answer = {
            let node = replica.lock();
            match node.read_index_ready(&at) {
                Err(refused) => return Reply::Error(refused),
                Ok(false) => None,
                Ok(true) => positioned(&node, op),
            }
        };
        if let Some(reply) = answer {
            return filtered(reply, op);
        }
        let woken = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                changed = progress.changed() => changed,
                changed = confirmed.changed() => changed,
            }
        })
        .await;
        if !matches!(woken, Ok(Ok(()))) {
            return Reply::Error(ErrorReply::Unavailable {
                retry_after_ms: 100,
                reason: format!(
                    "the leader could not confirm its leadership with its followers within {} ms",
                    CONFIRM_WAIT.as_millis()
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests;
mod writes;
