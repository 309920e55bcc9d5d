//! Client connections: the handshake (server side), then every request routed
//! to a replica: writes to the leader, reads round-robin over healthy
//! replicas, `Ping` and `Status` answered by the balancer itself.
//!
//! Valid reads and writes are handed to a replica link when it can take them
//! at once, and the link's reader answers the client itself; the rest (and
//! those that could not be handed over) run as futures of the connection's
//! task. Either way a client's pipeline stays full and responses return as
//! soon as they are ready, matched by the client's id (the replica links use
//! their own ids). Bad input gets a `Reject` frame and closes that connection
//! only.

use semikv_protocol::codec::FrameClock;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use semikv_protocol::{
    ErrorReply, Message, MessageCodec, Op, Reply, Request, RequestId, Response, Role, Welcome,
    WireError, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Config;
use crate::outbox::{self, Out};
use crate::replica_conn::{ClientPort, ConnError, ForwardWrite, Read, ReplicaLink, Retry};
use crate::table::{Leader, Table};

/// Requests taken from a client's read buffer in one go (their reads going
/// to one replica) before the connection's other work gets a turn.
const MAX_BURST: usize = 256;

/// The requests of one client taken in one go.
#[derive(Debug, Default)]
struct Burst {
    /// The replica its reads go to, chosen at the first read (the rotation
    /// advances once per burst, not per read).
    reader: Option<usize>,
    /// Requests taken so far.
    taken: usize,
    /// Its valid reads, sent to `reader` together when the burst ends.
    reads: Vec<Read>,
    /// Where they are encoded (its capacity kept from burst to burst).
    frames: BytesMut,
}

/// What became of one frame from a client.
enum Accepted {
    /// Handed to a replica link, which answers the client itself.
    Forwarded,
    /// To be answered by a future of the connection's task.
    Own(Job),
    /// The connection ends (a `Reject` was queued if there was a reason).
    Stop,
}

/// Requests one client may have in flight before the balancer stops reading
/// from it.
const MAX_IN_FLIGHT: usize = 1024;

/// How long a new connection has to send its `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing one frame to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry hint given with `Unavailable`.
const RETRY_AFTER_MS: u64 = 100;

/// How a request answered by the connection's own future is routed.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// As any request: see [`Router::handle`].
    New,
    /// A read that could not be forwarded to this replica: read there first.
    ReadAt(usize),
    /// A forwarded read this replica failed: one more try elsewhere.
    RetryAfter(usize),
}

/// A request this connection's own future answers.
#[derive(Debug)]
struct Job {
    id: RequestId,
    op: Op,
    slot: OwnedSemaphorePermit,
    route: Route,
}

impl From<Retry> for Job {
    fn from(retry: Retry) -> Job {
        Job {
            id: retry.client_id,
            op: retry.op,
            slot: retry.slot,
            route: Route::RetryAfter(retry.failed_on),
        }
    }
}

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

        let (mut stream, sink) = semikv_protocol::codec::split(framed);
        // One more than the slots: a final Reject needs no slot.
        let (tx, rx) = mpsc::channel::<Out>(MAX_IN_FLIGHT + 1);
        let conn_closed = shutdown.child_token();
        let writer = tokio::spawn(outbox::run(sink, rx, conn_closed.clone(), WRITE_TIMEOUT));
        // A slot per request until its answer is written: reads forwarded to
        // a replica and this task's own futures share the bound.
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (retry_tx, mut retry_rx) = mpsc::channel::<Retry>(MAX_IN_FLIGHT);
        let port = Arc::new(ClientPort {
            reply_to: tx.clone(),
            retry: retry_tx,
        });

        // Reads and writes go to a replica link directly, which writes the
        // answer to the outbox itself: no future, oneshot or timer of their
        // own. The rest (pings, status, invalid requests, reads and writes
        // that could not be forwarded, reads to retry) run as futures of
        // this task rather than one spawned task each, and the answers that
        // complete together are queued together, so the outbox writes them
        // with one system call.
        let router = &*self;
        let leader = self.table.watch_leader();
        let mut in_flight = FuturesUnordered::new();
        // Writes of this client answered by its own futures and not yet
        // answered: while there are any, later writes take that path too, so
        // that a write forwarded at once cannot overtake an earlier one that
        // had to wait (the leader applies them in the order it reads them).
        let mut slow_writes = 0usize;
        let role = hello.role;
        // Kept between bursts for its capacity.
        let mut burst = Burst::default();
        // One wait for the whole loop, not a waiter registered per batch.
        let closed = conn_closed.cancelled();
        tokio::pin!(closed);
        // Gives up on a frame that starts arriving and stalls.
        let mut clock = FrameClock::new(self.config.frame_timeout);
        loop {
            tokio::select! {
                _ = &mut closed => break,
                Some((out, write)) = in_flight.next(), if !in_flight.is_empty() => {
                    slow_writes = slow_writes.saturating_sub(usize::from(write));
                    if tx.send(out).await.is_err() {
                        break;
                    }
                    let mut gone = false;
                    while let Some(Some((more, write))) = in_flight.next().now_or_never() {
                        slow_writes = slow_writes.saturating_sub(usize::from(write));
                        if tx.send(more).await.is_err() {
                            gone = true;
                            break;
                        }
                    }
                    if gone {
                        break;
                    }
                }
                Some(retry) = retry_rx.recv() => in_flight.push(router.answer(retry.into())),
                // Only while a slot is free: without one, whole frames wait
                // in the buffer, and they are not stalled.
                () = clock.tick(), if slots.available_permits() > 0 => {
                    if let Err(stalled) = clock.check(&stream) {
                        debug!(error = %stalled, "closing a client that stalled mid-frame");
                        break;
                    }
                }
                frame = next_frame(&mut stream, &slots) => {
                    clock.frame_arrived();
                    // Every request already buffered is taken now, and the
                    // reads among them go to one replica: their answers then
                    // come back together and leave in one write, instead of
                    // one write per replica the burst was spread over.
                    burst.reader = None;
                    burst.taken = 0;
                    let mut frame = Some(frame);
                    let mut stop = false;
                    while let Some(one) = frame.take() {
                        let accepted = router
                            .accept(one, role, &slots, &tx, &leader, &mut burst, slow_writes > 0)
                            .await;
                        match accepted {
                            Accepted::Forwarded => {}
                            Accepted::Own(job) => {
                                slow_writes += usize::from(job.op.is_write());
                                in_flight.push(router.answer(job));
                            }
                            Accepted::Stop => {
                                stop = true;
                                break;
                            }
                        }
                        burst.taken += 1;
                        if burst.taken < MAX_BURST && slots.available_permits() > 0 {
                            frame = stream.next().now_or_never();
                        }
                    }
                    // Sent even when the connection is ending: a client
                    // that only closed its sending half still gets their
                    // answers (after a Reject the outbox stops at once, and
                    // they go nowhere, as they did when sent one by one).
                    for job in router.forward_reads(&mut burst, &port) {
                        in_flight.push(router.answer(job));
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        // The socket closes once the writer also lets go of its half: at once
        // after a Reject, otherwise when the answers in flight are written
        // (each request is bounded by its own timeouts, a forwarded read by
        // its link's sweep, after which it comes back here as a retry, a
        // forwarded write by its link's sweep too: the writer runs until
        // every forwarded answer's sender is gone).
        drop(stream);
        // The retry queue closes once no forwarded read holds the port.
        drop(port);
        loop {
            tokio::select! {
                Some((out, _)) = in_flight.next(), if !in_flight.is_empty() => {
                    if tx.send(out).await.is_err() {
                        break;
                    }
                }
                retry = retry_rx.recv() => match retry {
                    Some(retry) => in_flight.push(router.answer(retry.into())),
                    // Every forwarded read is answered or retried, and no
                    // retry is left: what remains is in `in_flight`.
                    None => {
                        while let Some((out, _)) = in_flight.next().await {
                            if tx.send(out).await.is_err() {
                                break;
                            }
                        }
                        break;
                    }
                },
            }
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Takes one frame from a client: a request is forwarded to a replica
    /// link when it can be at once, or handed back to run as this task's own
    /// future; anything else ends the connection (after a `Reject` saying
    /// why).
    #[allow(clippy::too_many_arguments)]
    async fn accept(
        &self,
        frame: Option<Result<Message, semikv_protocol::ProtocolError>>,
        role: Role,
        slots: &Arc<Semaphore>,
        tx: &mpsc::Sender<Out>,
        leader: &watch::Receiver<Option<Leader>>,
        burst: &mut Burst,
        writes_waiting: bool,
    ) -> Accepted {
        let request = match frame {
            Some(Ok(Message::Request(request))) => request,
            Some(Ok(other)) => {
                let what = other.name().to_string();
                let _ = tx
                    .send(Message::Reject(WireError::Unexpected { what }).into())
                    .await;
                return Accepted::Stop;
            }
            Some(Err(e)) => {
                if let Some(wire) = e.to_wire() {
                    let _ = tx.send(Message::Reject(wire).into()).await;
                }
                return Accepted::Stop;
            }
            None => return Accepted::Stop,
        };
        if request.op.is_admin() {
            let what = request.op.name().to_string();
            let _ = tx
                .send(Message::Reject(WireError::WrongRole { role, what }).into())
                .await;
            return Accepted::Stop;
        }
        // Only this task takes slots, and the caller saw one free.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            return Accepted::Stop;
        };
        let forwarded = if request.op.is_write() {
            if writes_waiting {
                return Accepted::Own(Job {
                    id: request.id,
                    op: request.op,
                    slot,
                    route: Route::New,
                });
            }
            self.forward_write(request, slot, tx, leader)
        } else {
            self.take_read(request, slot, burst)
        };
        match forwarded {
            Ok(()) => Accepted::Forwarded,
            Err(job) => Accepted::Own(job),
        }
    }

    /// Adds a valid read to its burst's reads, for the replica the burst
    /// reads from (the next healthy one in the rotation, chosen at the
    /// burst's first read); gives the request back as a [`Job`] when it is
    /// not a valid read or no replica is healthy.
    fn take_read(
        &self,
        request: Request,
        slot: OwnedSemaphorePermit,
        burst: &mut Burst,
    ) -> Result<(), Job> {
        let readable =
            matches!(request.op, Op::Get { .. }) && request.op.validate(usize::MAX).is_ok();
        if readable && burst.reader.is_none() {
            burst.reader = self.table.next_reader(None);
        }
        let known = burst
            .reader
            .is_some_and(|replica| replica < self.links.len());
        if !(readable && known) {
            return Err(Job {
                id: request.id,
                op: request.op,
                slot,
                route: Route::New,
            });
        }
        burst.reads.push(Read {
            client_id: request.id,
            op: request.op,
            slot,
        });
        Ok(())
    }

    /// Hands a burst's reads to the link of the replica they are for, which
    /// answers the client itself; gives them back as [`Job`]s routed to that
    /// replica when they could not be sent at once (its data connection may
    /// just not be open yet: this task's own path opens it, so the rotation
    /// still reaches every replica).
    fn forward_reads(&self, burst: &mut Burst, port: &Arc<ClientPort>) -> Vec<Job> {
        let Some(replica) = burst.reader else {
            return Vec::new();
        };
        if let Some(link) = self.links.get(replica) {
            let timeout = self.config.request_timeout();
            link.forward_reads(port, &mut burst.reads, &mut burst.frames, timeout);
        }
        burst
            .reads
            .drain(..)
            .map(|read| Job {
                id: read.client_id,
                op: read.op,
                slot: read.slot,
                route: Route::ReadAt(replica),
            })
            .collect()
    }

    /// Hands a valid write to the current leader's link, which answers the
    /// client itself (as [`Self::write`] would); gives the request back as a
    /// [`Job`] for [`Self::write`] when there is no leader, or its data
    /// connection is not open or has no room: the write was not sent.
    fn forward_write(
        &self,
        request: Request,
        slot: OwnedSemaphorePermit,
        reply_to: &mpsc::Sender<Out>,
        leader: &watch::Receiver<Option<Leader>>,
    ) -> Result<(), Job> {
        let job = |op, slot| Job {
            id: request.id,
            op,
            slot,
            route: Route::New,
        };
        let current = *leader.borrow();
        let link = current
            .filter(|_| request.op.validate(usize::MAX).is_ok())
            .and_then(|leader| self.links.get(leader.slot));
        let Some(link) = link else {
            return Err(job(request.op, slot));
        };
        let write = ForwardWrite {
            reply_to: reply_to.clone(),
            client_id: request.id,
            op: request.op,
            kick: self.kick.clone(),
            slot,
        };
        link.forward_write(write, self.config.write_timeout())
            .map_err(|w| job(w.op, w.slot))
    }

    /// Answers one request through this task's own future, routed as its
    /// `route` says; also says whether it was a write.
    async fn answer(&self, job: Job) -> (Out, bool) {
        let Job {
            id,
            op,
            slot,
            route,
        } = job;
        let write = op.is_write();
        let reply = match route {
            Route::New => self.handle(op).await,
            Route::ReadAt(replica) => self.read_from(op, Some(replica), None, 2).await,
            Route::RetryAfter(failed) => self.read_from(op, None, Some(failed), 1).await,
        };
        let out = Out::Message {
            message: Message::Response(Response { id, reply }),
            slot: Some(slot),
        };
        (out, write)
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
                Err(ConnError::TooLarge(reason)) => return too_large(reason),
                Err(e) if e.never_sent() => {
                    // Safe to wait for another leader: the write never left.
                    self.kick.notify_one();
                    skip = Some(leader);
                }
                outcome => return write_reply(outcome, &self.kick),
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
        self.read_from(op, None, None, 2).await
    }

    /// Reads on up to `attempts` replicas: `first` if given, then healthy
    /// ones other than `tried`.
    async fn read_from(
        &self,
        op: Op,
        mut first: Option<usize>,
        mut tried: Option<usize>,
        attempts: usize,
    ) -> Reply {
        let timeout = self.config.request_timeout();
        for _ in 0..attempts {
            let next = first.take().or_else(|| self.table.next_reader(tried));
            let slot = match next {
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
                Err(ConnError::TooLarge(reason)) => return too_large(reason),
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

/// What a client is told about its write, from what the leader's link said:
/// the leader's reply as is, except `NotLeader` (the leader changed: the
/// write certainly did not apply, `Unavailable` with a retry hint); a write
/// that may have left but got no reply is `Indeterminate`; one that
/// certainly never left is `Unavailable`. Kicks the health loop when the
/// leader looks wrong (not the leader, unreachable, connection broke).
pub(crate) fn write_reply(outcome: Result<Reply, ConnError>, kick: &Notify) -> Reply {
    match outcome {
        Ok(Reply::Error(ErrorReply::NotLeader { .. })) => {
            // Definitely not applied: the leader changed under us.
            kick.notify_one();
            unavailable("leader changed; failover in progress")
        }
        Ok(reply) => reply,
        Err(ConnError::TooLarge(reason)) => too_large(reason),
        Err(ConnError::Timeout(_)) => Reply::Error(ErrorReply::Indeterminate {
            reason: "the leader did not answer in time".into(),
        }),
        Err(e) if e.never_sent() => {
            kick.notify_one();
            unavailable("the leader could not be reached")
        }
        Err(_) => {
            kick.notify_one();
            Reply::Error(ErrorReply::Indeterminate {
                reason: "the connection to the leader broke with the write in flight".into(),
            })
        }
    }
}

/// The client's next frame, once one of its in-flight slots is free.
///
/// Waits on the semaphore itself when every slot is taken: forwarded answers
/// free their slots from other tasks (the outbox, once written), and only a
/// waiter on the semaphore hears of it; a loop that merely stopped polling
/// the socket at the limit never read from a deep-pipelining client again.
async fn next_frame<S: futures::Stream + Unpin>(
    stream: &mut S,
    slots: &Semaphore,
) -> Option<S::Item> {
    if slots.available_permits() == 0 {
        // Given back at once: `accept` takes its own, and only this task
        // takes slots, so it is still there. The semaphore is never closed.
        drop(slots.acquire().await);
    }
    stream.next().await
}

/// A request that fits a frame from the client but not one to a replica
/// (whose request ids may take more bytes): refused like any invalid
/// request, without touching the replica's connection.
fn too_large(reason: String) -> Reply {
    Reply::Error(ErrorReply::Invalid {
        reason: format!("request too large for the replica's connection: {reason}"),
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures::FutureExt;
    use semikv_protocol::LogIndex;

    use super::*;

    /// The reply `write_reply` gives, and whether it kicked.
    fn told(outcome: Result<Reply, ConnError>) -> (Reply, bool) {
        let kick = Notify::new();
        let reply = write_reply(outcome, &kick);
        (reply, kick.notified().now_or_never().is_some())
    }

    #[test]
    fn write_replies_pass_through_except_not_leader() {
        let written = Reply::Written { index: LogIndex(4) };
        assert_eq!(told(Ok(written.clone())), (written, false));
        let not_enough = Reply::Error(ErrorReply::NotEnoughReplicas {
            acked: 0,
            required: 1,
        });
        assert_eq!(told(Ok(not_enough.clone())), (not_enough, false));
        let (reply, kicked) = told(Ok(Reply::Error(ErrorReply::NotLeader { leader: None })));
        assert!(kicked);
        assert!(
            matches!(reply, Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) if retry_after_ms == RETRY_AFTER_MS),
            "{reply:?}"
        );
    }

    #[test]
    fn a_write_that_may_have_left_is_indeterminate_and_one_that_never_did_is_not() {
        let (reply, kicked) = told(Err(ConnError::Broken));
        assert!(kicked);
        assert!(
            matches!(&reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains("broke")),
            "{reply:?}"
        );
        let (reply, _) = told(Err(ConnError::Timeout(Duration::from_secs(1))));
        assert!(
            matches!(&reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains("in time")),
            "{reply:?}"
        );
        let (reply, kicked) = told(Err(ConnError::TooLarge("payload".into())));
        assert!(!kicked, "a request too large says nothing about the leader");
        assert!(
            matches!(&reply, Reply::Error(ErrorReply::Invalid { reason }) if reason.contains("too large")),
            "{reply:?}"
        );
        for never_sent in [ConnError::Refused, ConnError::Connect("x".into())] {
            let (reply, kicked) = told(Err(never_sent));
            assert!(kicked);
            assert!(
                matches!(reply, Reply::Error(ErrorReply::Unavailable { .. })),
                "{reply:?}"
            );
        }
    }
}
