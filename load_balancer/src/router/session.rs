//! One client connection's routing, whatever door it came through: its
//! bound on requests in flight, the order of its writes, its bursts of reads,
//! the requests answered by the router's own path and the reads to retry.
//!
//! A door drives it: it takes the requests it decoded in one go as a burst
//! ([`Session::submit`] each, then [`Session::end_burst`]), polls
//! [`Session::progress`] beside its socket, and ends with
//! [`Session::finish`]. Answers reach the door's [`AnswerSink`], tagged with
//! the door's own ids, in whatever order they complete.

use std::sync::Arc;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use semikv_protocol::{Consistency, LogIndex, Op, Reply};
use tokio::sync::{mpsc, watch, Semaphore};

use super::consistency::{self, ReadPlan};
use super::{Router, Window};
use crate::group::link::{ForwardRead, ForwardWrite};
use crate::group::table::Leader;
use crate::metrics::{Door, Meter, OpKind};
use crate::request::{Answer, AnswerSink, ClientPort, Position, Retry, Slot, Tag, Target};
use tokio::time::Instant;

/// Requests taken in one burst (their reads going to one replica) before
/// the connection's other work gets a turn.
pub const MAX_BURST: usize = 256;

/// How a request answered by the router's own path is routed.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// As any request: see [`Router::handle`].
    New,
    /// A read that could not be forwarded to this replica: read there first.
    ReadAt(usize),
    /// A forwarded read this replica failed (if any): one more try
    /// elsewhere.
    RetryAfter(Option<usize>),
}

/// A request the router's own path answers.
#[derive(Debug)]
struct OwnPathRequest {
    tag: Tag,
    /// A read as planned (what the replica is sent); anything else as the
    /// client sent it.
    op: Op,
    slot: Slot,
    route: Route,
    /// A read: whether the client sent it plain (see [`ReadPlan::plain`]).
    plain: bool,
    /// A read: the replicas that may answer it.
    target: Target,
    /// When the request was taken (or first sent): its latency counts
    /// from there.
    since: Instant,
}

impl From<Retry> for OwnPathRequest {
    fn from(retry: Retry) -> OwnPathRequest {
        OwnPathRequest {
            tag: retry.tag,
            op: retry.op,
            slot: retry.slot,
            route: Route::RetryAfter(retry.failed_on),
            plain: retry.plain,
            target: retry.target,
            since: retry.since,
        }
    }
}

/// The requests of one client taken in one go.
#[derive(Debug, Default)]
struct Burst {
    /// The group its reads go to, what they allow, and the replica there,
    /// chosen at the first read (the rotation advances once per burst, not
    /// per read).
    reader: Option<(usize, Target, usize)>,
    /// Requests taken so far.
    taken: usize,
    /// Its valid reads, sent to `reader` together when the burst ends.
    reads: Vec<ForwardRead>,
    /// Where they are encoded (its capacity kept from burst to burst).
    frames: BytesMut,
}

/// A request [`Session::submit`] could not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free slot for another request in flight")]
pub struct NoSlot;

/// One client connection's routing state; see the module doc.
pub struct Session<'r> {
    router: &'r Router,
    answers: Arc<dyn AnswerSink>,
    /// Handed to forwarded requests; dropped by [`Self::finish`] so that
    /// the retry queue closes once none is left.
    port: Arc<ClientPort>,
    /// A slot per request until its answer is written: forwarded requests
    /// and the router's own futures share the bound, under the window.
    window: Arc<Window>,
    retries: mpsc::Receiver<Retry>,
    /// Requests on the router's own path; each says whether it was a write.
    own: FuturesUnordered<BoxFuture<'r, (Answer, bool)>>,
    /// Writes on the router's own path not yet answered: while there are
    /// any, later writes take that path too, so that a write forwarded at
    /// once cannot overtake an earlier one that had to wait (the leader
    /// applies them in the order it reads them).
    slow_writes: usize,
    /// Each group's leader, as it changes (by group index).
    leaders: Vec<watch::Receiver<Option<Leader>>>,
    burst: Burst,
    /// The level of this client's reads that name none.
    level: Consistency,
    /// Where its requests are counted.
    meter: Meter,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("in_flight", &self.window.in_flight())
            .field("own", &self.own.len())
            .field("slow_writes", &self.slow_writes)
            .finish_non_exhaustive()
    }
}

impl<'r> Session<'r> {
    /// A session whose answers go to `answers`, with at most `max_in_flight`
    /// requests unanswered. The door must make room in its queue for that
    /// many answers (see [`AnswerSink::deliver`]).
    pub fn new(router: &'r Router, answers: Arc<dyn AnswerSink>, max_in_flight: usize) -> Self {
        Session::windowed(router, answers, Arc::new(Window::new(max_in_flight)))
    }

    /// A session whose answers go to `answers`, taking requests only while
    /// `window` has room. The door must make room in its queue for
    /// `window.max()` answers, and tell the window each answer's size.
    pub fn windowed(router: &'r Router, answers: Arc<dyn AnswerSink>, window: Arc<Window>) -> Self {
        Session::at_door(router, Door::Semikv, answers, window)
    }

    /// [`Self::windowed`] for a client of `door`: its requests are counted
    /// under it.
    pub fn at_door(
        router: &'r Router,
        door: Door,
        answers: Arc<dyn AnswerSink>,
        window: Arc<Window>,
    ) -> Self {
        let (retry_tx, retries) = mpsc::channel(window.max());
        let meter = Meter::new(router.metrics().clone(), door);
        let port = Arc::new(ClientPort::new(answers.clone(), retry_tx, meter.clone()));
        let leaders = (0..router.groups.len())
            .map(|i| router.group(i).watch_leader())
            .collect();
        Session {
            router,
            answers,
            port,
            window,
            retries,
            own: FuturesUnordered::new(),
            slow_writes: 0,
            leaders,
            burst: Burst::default(),
            level: router.default_consistency(),
            meter,
        }
    }

    /// The level of this client's reads that name none: the balancer's
    /// default until a door changes it (e.g. RESP's `CLIENT CONSISTENCY`).
    pub fn consistency(&self) -> Consistency {
        self.level
    }

    /// Sets the level of this client's later reads that name none.
    pub fn set_consistency(&mut self, level: Consistency) {
        self.level = level;
    }

    /// The highest log position this client has seen in an answer: what
    /// its `session` reads reflect at least.
    pub fn seen(&self) -> LogIndex {
        self.port.seen.get()
    }

    /// The semaphore of the session's slots: a door reads a request only
    /// while one is free (see [`Self::room`]).
    pub fn slots(&self) -> &Arc<Semaphore> {
        self.window.slots()
    }

    /// The window over the slots.
    pub fn window(&self) -> &Arc<Window> {
        &self.window
    }

    /// Whether another request can be taken now.
    pub fn has_room(&self) -> bool {
        self.window.has_room()
    }

    /// Whether the current burst may take another request.
    pub fn burst_has_room(&self) -> bool {
        self.burst.taken < MAX_BURST && self.has_room()
    }

    /// Takes one request of the current burst: a valid read joins the
    /// burst's reads (sent at [`Self::end_burst`]), a valid write goes to
    /// its group's leader at once when it can, the rest run on the router's
    /// own path. Admin ops are the door's to refuse before this.
    ///
    /// # Errors
    /// [`NoSlot`] when every slot is taken: the door read a request it had
    /// no room for.
    pub fn submit(&mut self, tag: Tag, op: Op) -> Result<(), NoSlot> {
        let slot = self.take_slot()?;
        self.meter.taken();
        let read = consistency::is_read(&op) && op.validate(usize::MAX).is_ok();
        let (op, plain, target) = if read {
            let ReadPlan { target, op, plain } = consistency::plan(op, self.level, self.seen());
            (op, plain, target)
        } else {
            (op, true, Target::Rotation)
        };
        let job = OwnPathRequest {
            tag,
            op,
            slot,
            route: Route::New,
            plain,
            target,
            since: Instant::now(),
        };
        let unforwarded = if read {
            self.take_read(job)
        } else if !job.op.is_write() || self.slow_writes > 0 {
            Some(job)
        } else {
            self.forward_write(job)
        };
        if let Some(job) = unforwarded {
            self.run_own(job);
        }
        Ok(())
    }

    /// Answers `tag`, an `op` request, with `reply` at once, under a slot
    /// like any request (a door's own refusal, e.g. of an op the user's
    /// role forbids).
    ///
    /// # Errors
    /// [`NoSlot`] when every slot is taken.
    pub fn refuse(&mut self, tag: Tag, op: OpKind, reply: Reply) -> Result<(), NoSlot> {
        let slot = self.take_slot()?;
        self.meter.refused(op, &reply);
        self.answers.deliver(Answer::One { tag, reply, slot });
        Ok(())
    }

    /// A slot for one request of the current burst.
    fn take_slot(&mut self) -> Result<Slot, NoSlot> {
        let slot = self
            .window
            .slots()
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoSlot)?;
        self.burst.taken += 1;
        Ok(slot)
    }

    /// Ends the current burst: its reads go to their replica together.
    pub fn end_burst(&mut self) {
        self.flush_reads();
        self.burst.taken = 0;
        self.burst.reader = None;
    }

    /// Waits for the router's own path to answer something, or for a read
    /// to retry, and hands on what is ready. Cancel-safe: meant for a
    /// `select!` beside the door's socket.
    pub async fn progress(&mut self) {
        tokio::select! {
            Some((answer, write)) = self.own.next(), if !self.own.is_empty() => {
                self.slow_writes = self.slow_writes.saturating_sub(usize::from(write));
                self.answers.deliver(answer);
                // Those that completed together are queued together, so
                // the door writes them with one system call.
                while let Some(Some((more, write))) = self.own.next().now_or_never() {
                    self.slow_writes = self.slow_writes.saturating_sub(usize::from(write));
                    self.answers.deliver(more);
                }
            }
            Some(retry) = self.retries.recv() => self.run_own(retry.into()),
            else => std::future::pending().await,
        }
    }

    /// Once the client sends no more: answers everything still in flight,
    /// forwarded or not (each is bounded by its own timeouts: a forwarded
    /// read by its link's sweep, after which it comes back as a retry, a
    /// forwarded write by its link's sweep too).
    pub async fn finish(mut self) {
        self.end_burst();
        // The retry queue closes once no forwarded request holds the port.
        let seen = self.port.seen.clone();
        drop(self.port);
        loop {
            tokio::select! {
                Some((answer, _)) = self.own.next(), if !self.own.is_empty() => {
                    self.answers.deliver(answer);
                }
                retry = self.retries.recv() => match retry {
                    Some(retry) => {
                        let job = OwnPathRequest::from(retry);
                        self.own.push(answer(self.router, job, seen.clone(), self.meter.clone()));
                    }
                    None => break,
                },
            }
        }
        while let Some((answer, _)) = self.own.next().await {
            self.answers.deliver(answer);
        }
    }

    fn run_own(&mut self, job: OwnPathRequest) {
        self.slow_writes += usize::from(job.op.is_write());
        self.own.push(answer(
            self.router,
            job,
            self.port.seen.clone(),
            self.meter.clone(),
        ));
    }

    /// Adds a planned get to the burst's reads, for the replica the burst
    /// reads from in the read's group with the read's target (picked by the
    /// router's policy at the burst's first such read); gives the request
    /// back when it is not a get or no replica qualifies.
    fn take_read(&mut self, job: OwnPathRequest) -> Option<OwnPathRequest> {
        let key = match &job.op {
            Op::Get { key } => key,
            Op::Read(read) => match &*read.op {
                Op::Get { key } => key,
                _ => return Some(job),
            },
            _ => return Some(job),
        };
        let group = self.router.group_for(Some(key));
        if self
            .burst
            .reader
            .is_some_and(|(g, target, _)| g != group || target != job.target)
        {
            // A burst's reads go to one replica of one group.
            self.flush_reads();
            self.burst.reader = None;
        }
        if self.burst.reader.is_none() {
            let replica = self
                .router
                .policy
                .pick_for(job.target, self.router.group(group), None);
            self.burst.reader = replica.map(|replica| (group, job.target, replica));
        }
        let Some((_, _, replica)) = self.burst.reader else {
            return Some(job);
        };
        if self.router.group(group).link(replica).is_none() {
            return Some(job);
        }
        self.burst.reads.push(ForwardRead {
            tag: job.tag,
            op: job.op,
            slot: job.slot,
            plain: job.plain,
            target: job.target,
            since: job.since,
        });
        None
    }

    /// Hands the burst's reads to the link of the replica they are for,
    /// which answers the client itself; runs them on the router's own path,
    /// at that replica first, when they could not be sent at once (its data
    /// connection may just not be open yet: the own path opens it, so the
    /// rotation still reaches every replica).
    fn flush_reads(&mut self) {
        let Some((group, _, replica)) = self.burst.reader else {
            return;
        };
        if let Some(link) = self.router.group(group).link(replica) {
            let timeout = self.router.group(group).config().request_timeout();
            link.forward_reads(
                &self.port,
                &mut self.burst.reads,
                &mut self.burst.frames,
                timeout,
            );
        }
        let unsent: Vec<ForwardRead> = self.burst.reads.drain(..).collect();
        for read in unsent {
            self.run_own(OwnPathRequest {
                tag: read.tag,
                op: read.op,
                slot: read.slot,
                route: Route::ReadAt(replica),
                plain: read.plain,
                target: read.target,
                since: read.since,
            });
        }
    }

    /// Hands a valid write to its group's leader's link, which answers the
    /// client itself; gives it back when there is no leader, or the link's
    /// data connection is not open or has no room: the write was not sent.
    fn forward_write(&mut self, job: OwnPathRequest) -> Option<OwnPathRequest> {
        if job.op.validate(usize::MAX).is_err() {
            return Some(job);
        }
        let group_index = self.router.group_for(job.op.key().map(|k| &k[..]));
        let group = self.router.group(group_index);
        let leader = self
            .leaders
            .get(group_index)
            .and_then(|leader| *leader.borrow());
        let Some(link) = leader.and_then(|leader| group.link(leader.slot)) else {
            return Some(job);
        };
        let job_since = job.since;
        let write = ForwardWrite {
            port: self.port.clone(),
            tag: job.tag,
            op: job.op,
            slot: job.slot,
        };
        link.forward_write(write, group.config().write_timeout())
            .err()
            .map(|write| OwnPathRequest {
                tag: write.tag,
                op: write.op,
                slot: write.slot,
                route: Route::New,
                plain: true,
                target: Target::Rotation,
                since: job_since,
            })
    }
}

/// Answers one request on the router's own path, routed as its `route`
/// says; notes the position its answer carries in `seen`; also says whether
/// it was a write.
fn answer(
    router: &Router,
    job: OwnPathRequest,
    seen: Arc<Position>,
    meter: Meter,
) -> BoxFuture<'_, (Answer, bool)> {
    async move {
        let OwnPathRequest {
            tag,
            op,
            slot,
            route,
            plain,
            target,
            since,
        } = job;
        let write = op.is_write();
        let kind = OpKind::of(&op);
        let group = router.group(router.group_for(op.key().map(|k| &k[..])));
        let reply = match route {
            // Reads were planned when taken: only routing is left.
            Route::New if consistency::is_read(&op) && op.validate(usize::MAX).is_ok() => {
                router.read_from(group, op, target, None, None, 2).await
            }
            Route::New => router.handle(op).await,
            Route::ReadAt(replica) => {
                router
                    .read_from(group, op, target, Some(replica), None, 2)
                    .await
            }
            // A leader-only read is tried at the leader again: a link that
            // failed says little, and `read_from` skips a leader that is
            // gone or no longer leads.
            Route::RetryAfter(_) if target == Target::Leader => {
                router.read_from(group, op, target, None, None, 1).await
            }
            Route::RetryAfter(failed) => router.read_from(group, op, target, None, failed, 1).await,
        };
        seen.note(&reply);
        meter.answered(kind, &reply, since);
        let reply = consistency::told(reply, plain);
        (Answer::One { tag, reply, slot }, write)
    }
    .boxed()
}
