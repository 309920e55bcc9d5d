//! Client, balancer and replica connections: handshake, role checks, and
//! pipelined request handling. One bad peer costs only its own connection.
//!
//! Writes take no future, channel or timer of their own: a connection
//! registers each with the node together with its completion queue
//! ([`crate::node::Completion`]), the node pushes the answer when the write
//! commits or fails, and the connection keeps the writes' sync deadlines in
//! one queue behind one timer. Every accepted request gets exactly one
//! answer; at most [`MAX_IN_FLIGHT`] are unanswered per connection, which is
//! also the completion queue's capacity, so the node never finds it full.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use semikv_protocol::codec::FrameClock;
use semikv_protocol::{
    ErrorReply, Message, MessageCodec, Op, Reply, Request, RequestId, Response, Role, Welcome,
    WireError, WriteOp, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;

use crate::node::{Completion, Expiry, LeaderSettings, Ticket, WriteDone};
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
    /// A valid write: proposed to the node with the rest of its batch.
    Write(RequestId, WriteOp),
    /// A valid read: answered with the rest of its batch under one lock.
    Read(Request),
    /// Has to wait for something else (an admin request, a read held by a
    /// new leader).
    Later(Request),
    /// Stop reading; say why if there is a reason to give.
    Close(Option<WireError>),
}

/// One connection's writes registered with the node: the queue their
/// answers come back on and their sync deadlines.
struct Writes {
    tx: mpsc::Sender<WriteDone>,
    rx: mpsc::Receiver<WriteDone>,
    /// Registered and not received back yet; the node pushes exactly one
    /// answer for each (unless forgotten), so this also bounds what the
    /// queue holds.
    pending: usize,
    /// Sync deadlines, earliest first: in proposal order while the sync
    /// timeout stays the same. Entries of writes already answered stay until
    /// an answer settles them (see [`WriteDone::settled`]) or they expire; a
    /// still-registered write is always here.
    deadlines: VecDeque<(Instant, Ticket)>,
    /// What the timer is set for. It may fire early (the front was settled
    /// meanwhile), never late: it is only moved earlier, or set after firing.
    armed: Option<Instant>,
}

impl Writes {
    fn new() -> Writes {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        Writes {
            tx,
            rx,
            pending: 0,
            deadlines: VecDeque::new(),
            armed: None,
        }
    }

    /// Proposes a batch under one lock; what the node refuses is answered
    /// into `ready`.
    fn propose(
        &mut self,
        replica: &Replica,
        batch: &mut Vec<(RequestId, WriteOp)>,
        ready: &mut Vec<Response>,
    ) {
        let now = Instant::now();
        let tx = &self.tx;
        let writes = batch.drain(..).map(|(id, op)| {
            let to = tx.clone();
            (op, Completion { to, id })
        });
        let mut proposed_ok = Vec::new();
        replica.with(|n| {
            n.propose_batch(writes, |id, outcome| match outcome {
                Ok(proposed) => proposed_ok.push(proposed),
                Err(e) => ready.push(Response {
                    id,
                    reply: Reply::Error(e),
                }),
            });
        });
        for proposed in proposed_ok {
            self.pending += 1;
            self.track(now + proposed.sync_timeout, proposed.ticket);
        }
    }

    fn track(&mut self, deadline: Instant, ticket: Ticket) {
        match self.deadlines.back() {
            // A re-promotion shortened the sync timeout: keep the order.
            Some(&(last, _)) if last > deadline => {
                let at = self.deadlines.partition_point(|&(d, _)| d <= deadline);
                self.deadlines.insert(at, (deadline, ticket));
            }
            _ => self.deadlines.push_back((deadline, ticket)),
        }
    }

    /// The answer in `done` and every other one already queued.
    fn answers(&mut self, done: WriteDone) -> Vec<Response> {
        let mut batch = vec![self.received(done)];
        while let Ok(more) = self.rx.try_recv() {
            batch.push(self.received(more));
        }
        batch
    }

    fn received(&mut self, done: WriteDone) -> Response {
        self.pending = self.pending.saturating_sub(1);
        while let Some(&(_, ticket)) = self.deadlines.front() {
            if ticket > done.settled {
                break;
            }
            self.deadlines.pop_front();
        }
        done.response
    }

    /// When the timer must next fire, if it has to be set (again).
    fn rearm(&mut self) -> Option<Instant> {
        let front = self.deadlines.front()?.0;
        match self.armed {
            Some(at) if at <= front => None,
            _ => {
                self.armed = Some(front);
                Some(front)
            }
        }
    }

    /// The timer fired: every write past its deadline and still waiting is
    /// answered by the node, through the queue like any other answer.
    fn expire_due(&mut self, replica: &Replica) {
        self.armed = None;
        let now = Instant::now();
        let due = self.deadlines.partition_point(|&(d, _)| d <= now);
        if due == 0 {
            return;
        }
        let mut fallbacks = 0usize;
        replica.with(|n| {
            for (_, ticket) in self.deadlines.drain(..due) {
                if n.expire(ticket) == Expiry::CommittedAsync {
                    fallbacks += 1;
                }
            }
        });
        if fallbacks > 0 {
            tracing::warn!(
                writes = fallbacks,
                "sync replicas did not acknowledge in time; committed asynchronously (async fallback is on)"
            );
        }
    }

    /// The connection is gone: its writes still waiting are dropped from the
    /// node (they may still commit; nobody is left to tell).
    fn abandon(&mut self, replica: &Replica) {
        if self.pending == 0 {
            return;
        }
        replica.with(|n| {
            for (_, ticket) in self.deadlines.drain(..) {
                n.forget(ticket);
            }
        });
    }
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
    let mut proposals: Vec<(RequestId, WriteOp)> = Vec::new();
    // Reads taken in one wake-up, answered under one lock.
    let mut reads: Vec<Request> = Vec::new();
    let mut closing: Option<WireError> = None;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // Once reading stops (the client closed, erred, or we shut down), what
    // was already accepted is still answered, within DRAIN_TIMEOUT, by the
    // same arms; then we say why we close.
    let mut reading = true;
    let drain = tokio::time::sleep(DRAIN_TIMEOUT);
    tokio::pin!(drain);
    let mut clock = FrameClock::new(replica.config.frame_timeout);
    loop {
        if !reading && in_flight.is_empty() && writes.pending == 0 {
            break;
        }
        if let Some(at) = writes.rearm() {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            Some(done) = writes.rx.recv(), if writes.pending > 0 => {
                if send_batch(&mut sink, writes.answers(done)).await.is_err() {
                    return;
                }
            }
            () = &mut timer, if writes.armed.is_some() => writes.expire_due(replica),
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
                // Everything already in the read buffer is taken now too, and
                // what can be answered at once is, without a future per
                // request: a pipelined batch costs one wake-up, one lock for
                // its writes and one write for its answers.
                let mut msg = Some(msg);
                let mut taken = 0;
                let mut close = None;
                while let Some(one) = msg.take() {
                    match accept(replica, role, one) {
                        Next::Ready(response) => ready.push(response),
                        Next::Write(id, op) => proposals.push((id, op)),
                        Next::Read(request) => reads.push(request),
                        Next::Later(request) => in_flight.push(handle(replica.clone(), request)),
                        Next::Close(why) => {
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
        let value = match &request.op {
            Op::Get { key } => node.read(key),
            _ => None,
        };
        match value {
            Some(value) => ready.push(Response {
                id: request.id,
                reply: Reply::Value(value),
            }),
            None => later.push(request),
        }
    }
    later
}

/// The answer to `request` if it needs no waiting (a ping, a status, or a
/// request that fails validation), else the read or write to batch or the
/// request to defer.
fn answer_now(replica: &Replica, request: Request) -> Next {
    let id = request.id;
    let reply = if let Err(reason) = request.op.validate(replica.config.max_value_len) {
        Reply::Error(ErrorReply::Invalid { reason })
    } else {
        match request.op {
            Op::Ping => Reply::Pong,
            Op::Status => replica.lock().status_reply(),
            Op::Get { .. } => return Next::Read(request),
            Op::Set { key, value } => return Next::Write(id, WriteOp::Set { key, value }),
            Op::Delete { key } => return Next::Write(id, WriteOp::Delete { key }),
            Op::Promote(_) | Op::Follow(_) | Op::Fence(_) => return Next::Later(request),
        }
    };
    Next::Ready(Response { id, reply })
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

/// Answers a request that waits on something other than a write's commit:
/// a read held by a new leader, or an admin request.
async fn handle(replica: Arc<Replica>, request: Request) -> Response {
    let reply = match request.op {
        Op::Get { key } => read(&replica, &key).await,
        op @ (Op::Promote(_) | Op::Follow(_) | Op::Fence(_)) => admin(&replica, op).await,
        Op::Ping => Reply::Pong,
        Op::Status => replica.lock().status_reply(),
        // `accept` proposes writes itself; answer rather than panic if one
        // ever gets here.
        Op::Set { .. } | Op::Delete { .. } => Reply::Error(ErrorReply::Invalid {
            reason: "a write reached the deferred path".to_string(),
        }),
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
        {
            let node = replica.lock();
            if let Err(refused) = node.check_serving() {
                return Reply::Error(refused);
            }
            if let Some(value) = node.read(key) {
                return Reply::Value(value);
            }
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
    // Everything that can refuse a promotion at a new epoch is checked
    // before that epoch is persisted: a refused message changes nothing.
    if let Op::Promote(p) = &op {
        if let Err(e) = leader_settings(p).check() {
            return Reply::Error(e);
        }
    }
    let current = {
        let node = replica.lock();
        if let Err(e) = node.check_admin(epoch) {
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
            Op::Promote(p) => n.promote(p.epoch, leader_settings(&p)),
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

/// The leadership settings a `Promote` carries.
fn leader_settings(p: &semikv_protocol::Promote) -> LeaderSettings {
    LeaderSettings {
        sync_replicas: p.sync_replicas,
        sync_timeout: Duration::from_millis(p.sync_timeout_ms),
        async_fallback: p.async_fallback,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use semikv_protocol::{Epoch, Fence, Hello, LogIndex, ReplicaId};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Config;
    use crate::log::MemLog;
    use crate::node::{Node, Recovered, Signals};
    use crate::replica::Watches;
    use crate::storage::store::Store;

    /// Bound on every wait; generous for a loaded 2-core machine.
    const WAIT: Duration = Duration::from_secs(30);

    /// A replica served in-process with a stand-in for the WAL writer that
    /// makes everything durable at once while `durable` is on, and nothing
    /// while it is off: writes can be held in flight at will.
    struct Harness {
        replica: Arc<Replica>,
        addr: SocketAddr,
        durable: Arc<AtomicBool>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let signals = Signals::new();
            let watches = Watches::of(&signals);
            let mut outbox = signals.outbox.subscribe();
            let node = Node::new(
                ReplicaId(1),
                "127.0.0.1:1".to_string(),
                Recovered {
                    epoch: Epoch::from_raw(0),
                    log: MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new()),
                    store: Store::default(),
                    commit: LogIndex(0),
                },
                signals,
            );
            let config = Config::new(ReplicaId(1), dir.path().to_path_buf());
            let shutdown = CancellationToken::new();
            let replica = Arc::new(Replica::new(node, watches, config, shutdown));
            let durable = Arc::new(AtomicBool::new(true));
            {
                let replica = replica.clone();
                let durable = durable.clone();
                tokio::spawn(async move {
                    while outbox.changed().await.is_ok() {
                        if durable.load(Ordering::SeqCst) {
                            flush(&replica);
                        }
                    }
                });
            }
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            {
                let replica = replica.clone();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve(replica.clone(), stream));
                    }
                });
            }
            Harness {
                replica,
                addr,
                durable,
                _dir: dir,
            }
        }

        fn promote(&self, epoch: u64, settings: LeaderSettings) {
            self.replica
                .with(|n| n.promote(Epoch::from_raw(epoch.into()), settings))
                .unwrap();
        }

        fn hold_durability(&self) {
            self.durable.store(false, Ordering::SeqCst);
        }

        fn release_durability(&self) {
            self.durable.store(true, Ordering::SeqCst);
            flush(&self.replica);
        }

        fn waiting(&self) -> usize {
            self.replica.lock().waiting_writes()
        }

        /// Polls until `n` writes wait in the node.
        async fn until_waiting(&self, n: usize) {
            let deadline = Instant::now() + WAIT;
            while self.waiting() != n {
                assert!(
                    Instant::now() < deadline,
                    "{} writes waiting, expected {n}",
                    self.waiting()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn flush(replica: &Replica) {
        replica.with(|n| {
            let (_, generation, last) = n.take_outbox();
            n.on_durable(generation, last);
        });
    }

    async fn connect(addr: SocketAddr, role: Role) -> Conn {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut conn = Framed::new(stream, MessageCodec::default());
        let hello = semikv_protocol::handshake::hello(&mut conn, Hello::new(role, None));
        timeout(WAIT, hello).await.unwrap().unwrap();
        conn
    }

    fn set(id: u64) -> Message {
        Message::Request(Request {
            id: RequestId(id),
            op: Op::Set {
                key: Bytes::from(format!("k{id}")),
                value: Bytes::from_static(b"v"),
            },
        })
    }

    /// Sends `msgs` with one flush.
    async fn send_all(conn: &mut Conn, msgs: Vec<Message>) {
        for msg in msgs {
            conn.feed(msg).await.unwrap();
        }
        SinkExt::<Message>::flush(conn).await.unwrap();
    }

    /// Reads `n` responses; panics on a repeated id.
    async fn responses(conn: &mut Conn, n: usize) -> Vec<Response> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while out.len() < n {
            match timeout(WAIT, conn.next()).await.unwrap() {
                Some(Ok(Message::Response(r))) => {
                    assert!(seen.insert(r.id), "{:?} answered twice", r.id);
                    out.push(r);
                }
                other => panic!("after {} responses: {other:?}", out.len()),
            }
        }
        out
    }

    /// The next message is the answer to a ping: nothing else (no second
    /// answer to an earlier request) was queued before it.
    async fn ping_is_next(conn: &mut Conn) {
        conn.send(Message::Request(Request {
            id: RequestId(u64::MAX),
            op: Op::Ping,
        }))
        .await
        .unwrap();
        match timeout(WAIT, conn.next()).await.unwrap() {
            Some(Ok(Message::Response(Response {
                id: RequestId(u64::MAX),
                reply: Reply::Pong,
            }))) => {}
            other => panic!("expected only the pong, got {other:?}"),
        }
    }

    const LONE: LeaderSettings = LeaderSettings {
        sync_replicas: 0,
        sync_timeout: Duration::from_secs(60),
        async_fallback: false,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousands_of_pipelined_writes_are_each_answered_once() {
        let h = Harness::start().await;
        h.promote(1, LONE);
        let mut c = connect(h.addr, Role::Client).await;
        // More than MAX_IN_FLIGHT, so the connection has to stop reading and
        // resume as answers free room; some invalid ones mixed in.
        let total = 3 * MAX_IN_FLIGHT as u64;
        let msgs = (0..total)
            .map(|id| {
                if id % 97 == 0 {
                    Message::Request(Request {
                        id: RequestId(id),
                        op: Op::Delete { key: Bytes::new() },
                    })
                } else {
                    set(id)
                }
            })
            .collect();
        send_all(&mut c, msgs).await;
        let mut indexes = HashSet::new();
        for r in responses(&mut c, total as usize).await {
            match r.reply {
                Reply::Written { index } if r.id.0 % 97 != 0 => {
                    assert!(indexes.insert(index), "index {index} answered twice");
                }
                Reply::Error(ErrorReply::Invalid { .. }) if r.id.0 % 97 == 0 => {}
                other => panic!("{:?}: {other:?}", r.id),
            }
        }
        ping_is_next(&mut c).await;
        assert_eq!(h.waiting(), 0);
        let status = h.replica.lock().status();
        assert_eq!(status.commit_index, status.last_index);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_flight_when_the_leader_is_fenced_are_indeterminate() {
        let h = Harness::start().await;
        h.promote(1, LONE);
        h.hold_durability();
        let mut c = connect(h.addr, Role::Client).await;
        send_all(&mut c, (0..100).map(set).collect()).await;
        h.until_waiting(100).await;
        let mut admin = connect(h.addr, Role::Balancer).await;
        admin
            .send(Message::Request(Request {
                id: RequestId(1),
                op: Op::Fence(Fence {
                    epoch: Epoch::from_raw(2),
                }),
            }))
            .await
            .unwrap();
        for r in responses(&mut c, 100).await {
            assert!(
                matches!(r.reply, Reply::Error(ErrorReply::Indeterminate { .. })),
                "{r:?}"
            );
        }
        assert!(matches!(
            responses(&mut admin, 1).await[0].reply,
            Reply::Node(_)
        ));
        // Becoming durable now commits nothing and answers nothing again.
        h.release_durability();
        ping_is_next(&mut c).await;
        send_all(&mut c, vec![set(500)]).await;
        assert!(matches!(
            responses(&mut c, 1).await[0].reply,
            Reply::Error(ErrorReply::NotLeader { .. })
        ));
        assert_eq!(h.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_past_the_sync_timeout_are_each_answered_not_enough_replicas() {
        let h = Harness::start().await;
        h.promote(
            1,
            LeaderSettings {
                sync_replicas: 1,
                sync_timeout: Duration::from_millis(100),
                async_fallback: false,
            },
        );
        let mut c = connect(h.addr, Role::Client).await;
        send_all(&mut c, (0..50).map(set).collect()).await;
        for r in responses(&mut c, 50).await {
            assert_eq!(
                r.reply,
                Reply::Error(ErrorReply::NotEnoughReplicas {
                    acked: 0,
                    required: 1
                })
            );
        }
        ping_is_next(&mut c).await;
        assert_eq!(h.waiting(), 0);
        // A late acknowledgement commits the entries; nobody hears twice.
        let last = h.replica.lock().status().last_index;
        h.replica
            .with(|n| n.on_ack(ReplicaId(2), Epoch::from_raw(1), last));
        assert_eq!(h.replica.lock().status().commit_index, last);
        ping_is_next(&mut c).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_async_fallback_writes_past_the_sync_timeout_are_written() {
        let h = Harness::start().await;
        h.promote(
            1,
            LeaderSettings {
                sync_replicas: 1,
                sync_timeout: Duration::from_millis(100),
                async_fallback: true,
            },
        );
        let mut c = connect(h.addr, Role::Client).await;
        send_all(&mut c, (0..50).map(set).collect()).await;
        let mut indexes = HashSet::new();
        for r in responses(&mut c, 50).await {
            let Reply::Written { index } = r.reply else {
                panic!("{r:?}");
            };
            assert!(indexes.insert(index));
        }
        ping_is_next(&mut c).await;
        assert_eq!(h.waiting(), 0);
        let status = h.replica.lock().status();
        assert!(indexes.iter().all(|i| *i <= status.commit_index));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shorter_sync_timeout_is_honoured_behind_longer_ones() {
        let h = Harness::start().await;
        let slow = LeaderSettings {
            sync_replicas: 1,
            sync_timeout: Duration::from_secs(3600),
            async_fallback: false,
        };
        h.promote(1, slow);
        let mut c = connect(h.addr, Role::Client).await;
        send_all(&mut c, (0..10).map(set).collect()).await;
        h.until_waiting(10).await;
        // Re-promoted in the same epoch with a short timeout: later writes
        // expire first, while the earlier ones keep waiting.
        h.promote(
            1,
            LeaderSettings {
                sync_timeout: Duration::from_millis(50),
                ..slow
            },
        );
        send_all(&mut c, (10..20).map(set).collect()).await;
        for r in responses(&mut c, 10).await {
            assert!(r.id.0 >= 10, "{r:?}");
            assert!(matches!(
                r.reply,
                Reply::Error(ErrorReply::NotEnoughReplicas { .. })
            ));
        }
        assert_eq!(h.waiting(), 10);
        // The earlier ones commit once a follower acknowledges them.
        flush(&h.replica);
        let last = h.replica.lock().status().last_index;
        h.replica
            .with(|n| n.on_ack(ReplicaId(2), Epoch::from_raw(1), last));
        for r in responses(&mut c, 10).await {
            assert!(r.id.0 < 10, "{r:?}");
            assert!(matches!(r.reply, Reply::Written { .. }), "{r:?}");
        }
        ping_is_next(&mut c).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_with_writes_in_flight_leaves_no_waiters() {
        let h = Harness::start().await;
        h.promote(1, LONE);
        h.hold_durability();
        let mut c = connect(h.addr, Role::Client).await;
        send_all(&mut c, (0..200).map(set).collect()).await;
        h.until_waiting(200).await;
        drop(c);
        // After the bounded drain the connection drops what it still waits
        // for.
        h.until_waiting(0).await;
        // The replica serves on, and the abandoned writes still commit.
        h.release_durability();
        let mut c = connect(h.addr, Role::Client).await;
        send_all(&mut c, vec![set(1000)]).await;
        let r = responses(&mut c, 1).await.remove(0);
        assert_eq!(r.id, RequestId(1000));
        assert!(matches!(r.reply, Reply::Written { index } if index == LogIndex(202)));
    }

    fn done(settled: Ticket) -> WriteDone {
        WriteDone {
            response: Response {
                id: RequestId(0),
                reply: Reply::Pong,
            },
            settled,
        }
    }

    fn ticket(role_gen: u64, index: u64) -> Ticket {
        Ticket {
            role_gen,
            index: LogIndex(index),
        }
    }

    #[test]
    fn an_answer_drops_only_the_deadlines_it_settles() {
        let mut w = Writes::new();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        w.track(t0 + s, ticket(1, 2));
        w.track(t0 + 2 * s, ticket(1, 3));
        w.track(t0 + 4 * s, ticket(2, 1));
        // Out of order: lands by its deadline, not at the back.
        w.track(t0 + 3 * s, ticket(1, 4));
        let order: Vec<Ticket> = w.deadlines.iter().map(|&(_, t)| t).collect();
        assert_eq!(
            order,
            [ticket(1, 2), ticket(1, 3), ticket(1, 4), ticket(2, 1)]
        );
        assert_eq!(w.rearm(), Some(t0 + s));
        assert_eq!(w.rearm(), None, "already set");
        w.pending = 4;
        // An expiry's answer settles nothing of its own generation.
        w.received(done(ticket(1, 0)));
        assert_eq!(w.deadlines.len(), 4);
        // A commit at 3 settles 2 and 3 only.
        w.received(done(ticket(1, 3)));
        let left: Vec<Ticket> = w.deadlines.iter().map(|&(_, t)| t).collect();
        assert_eq!(left, [ticket(1, 4), ticket(2, 1)]);
        assert_eq!(w.rearm(), None, "firing early is fine, late is not");
        // A step-down of generation 1 settles all of it.
        w.received(done(ticket(1, u64::MAX)));
        let left: Vec<Ticket> = w.deadlines.iter().map(|&(_, t)| t).collect();
        assert_eq!(left, [ticket(2, 1)]);
        assert_eq!(w.pending, 1);
    }
}
