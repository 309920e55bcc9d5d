//! What a request in flight on a replica connection waits with, the map
//! that holds it until it is answered, and how answers that arrive together
//! go to their clients together.

use std::sync::Arc;
use std::time::Duration;

use semikv_protocol::{ErrorReply, Op, Reply};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::ConnError;
use crate::group::replies::write_reply;
use crate::metrics::OpKind;
use crate::request::{Answer, ClientPort, Retry, Slot, Tag, Target};
use crate::router::consistency;

/// Replies a connection's reader takes from its buffer before matching them
/// all under one lock of the pending map.
pub(super) const MAX_REPLIES_PER_LOCK: usize = 256;

/// Bytes of values a connection's reader holds decoded before it hands
/// them on: answers to large reads go out one batch at a time instead of
/// 256 of them (up to 2 GiB of 8 MiB values) at once.
pub(super) const MAX_REPLY_BYTES_PER_LOCK: usize = 1024 * 1024;

/// How often a link looks for forwarded requests past their deadline.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// One read of a client's burst, for [`ReplicaLink::forward_reads`].
#[derive(Debug)]
pub struct ForwardRead {
    /// The request's tag.
    pub tag: Tag,
    /// The read as sent to the replica, kept to retry it elsewhere.
    pub op: Op,
    /// The request's slot, held until the answer is written.
    pub slot: Slot,
    /// Whether the client sent it plain: its answer is unwrapped from the
    /// replica's `Reply::Read` (see [`consistency::told`]).
    pub plain: bool,
    /// The replicas that may answer it.
    pub target: Target,
    /// When it was taken: its latency counts from there.
    pub since: Instant,
}

/// A client's read forwarded without a future of its own: the replica's
/// answer goes straight to the client's port, under the request's tag.
#[derive(Debug)]
pub(super) struct Forward {
    pub(super) port: Arc<ClientPort>,
    pub(super) read: ForwardRead,
}

/// A client's write forwarded to the leader without a future of its own:
/// the leader's answer goes straight to the client's port, told as
/// [`write_reply`] tells it: the reply as is, except `NotLeader`, which
/// becomes `Unavailable` with a retry hint; a broken connection or no reply
/// in time is `Indeterminate`. Once sent it is never sent again, not even
/// after a broken link: it may have been applied.
#[derive(Debug)]
pub struct ForwardWrite {
    /// Where the answer goes.
    pub port: Arc<ClientPort>,
    /// The request's tag.
    pub tag: Tag,
    /// The write (`Set` or `Delete`).
    pub op: Op,
    /// The request's slot, held until the answer is written.
    pub slot: Slot,
}

/// A forwarded write once sent: its op is gone (never needed again).
#[derive(Debug)]
pub(super) struct WriteInFlight {
    pub(super) port: Arc<ClientPort>,
    pub(super) tag: Tag,
    pub(super) slot: Slot,
    pub(super) timeout: Duration,
    /// What it was, for the metrics.
    pub(super) kind: OpKind,
    /// When it was sent.
    pub(super) sent: Instant,
}

impl Forward {
    fn retry(self, failed_on: usize) {
        let target = self.read.target;
        self.retry_at(Some(failed_on), target);
    }

    fn retry_at(self, failed_on: Option<usize>, target: Target) {
        let ForwardRead {
            tag,
            op,
            slot,
            plain,
            ..
        } = self.read;
        self.port.retry(Retry {
            tag,
            op,
            failed_on,
            slot,
            plain,
            target,
            since: self.read.since,
        });
    }
}

impl WriteInFlight {
    /// Answers the client; `kick` asks for a health round when the outcome
    /// says the leader looks wrong.
    pub(super) fn settle(self, outcome: Result<Reply, ConnError>, kick: &Notify) {
        let reply = write_reply(outcome, kick);
        self.port.meter.answered(self.kind, &reply, self.sent);
        self.port.seen.note(&reply);
        self.port.answer(self.tag, reply, self.slot);
    }
}

/// What a request in flight on a replica connection is waiting with.
#[derive(Debug)]
pub(super) enum Waiting {
    /// A caller's future, on a oneshot.
    Reply(oneshot::Sender<Reply>),
    /// A forwarded client read, answered by the connection's reader, or
    /// retried elsewhere if it fails; and its deadline.
    ForwardRead(Forward, Instant),
    /// A forwarded client write, answered by the connection's reader however
    /// it ends; and its deadline.
    Write(WriteInFlight, Instant),
}

impl Waiting {
    /// When the sweep ends it; `None`: its caller's own timeout does.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Waiting::Reply(_) => None,
            Waiting::ForwardRead(_, deadline) | Waiting::Write(_, deadline) => Some(*deadline),
        }
    }

    /// Ends a request that got no reply from replica `failed_on`: `late`
    /// when its deadline passed, otherwise its connection broke.
    pub(super) fn fail(self, failed_on: usize, late: bool, kick: &Notify) {
        match self {
            // Dropping the sender answers the caller Broken.
            Waiting::Reply(_) => {}
            Waiting::ForwardRead(forward, _) => forward.retry(failed_on),
            Waiting::Write(write, _) => {
                let error = if late {
                    ConnError::Timeout(write.timeout)
                } else {
                    ConnError::Broken
                };
                write.settle(Err(error), kick);
            }
        }
    }
}

/// Answers the replies matched in one go (drained) from replica `from`:
/// each run of forwarded reads of one client goes to its port as one
/// [`Answer::Run`], freeing all their slots once written; the rest one by
/// one. A burst's reads went to one replica together, so their replies
/// mostly come back together too: one queue entry and one wake-up for the
/// run, not one per read. A read the replica was behind for goes back to
/// its session for the leader, and a leader-only read the replica no longer
/// leads for, for the next leader.
pub(super) fn answer_all(matched: &mut Vec<(Waiting, Reply)>, kick: &Notify, from: usize) {
    let mut run: Option<ReadRun> = None;
    // One clock reading for the lot: they arrived together.
    let mut now: Option<Instant> = None;
    for (waiting, reply) in matched.drain(..) {
        let forward = match waiting {
            Waiting::ForwardRead(forward, _) => forward,
            Waiting::Reply(waiter) => {
                let _ = waiter.send(reply);
                continue;
            }
            Waiting::Write(write, _) => {
                write.settle(Ok(reply), kick);
                continue;
            }
        };
        if consistency::to_leader(&reply) {
            // The replica is fine, only behind: it may be the leader, which
            // then answers the retry once it has applied the position.
            forward.retry_at(None, Target::Leader);
            continue;
        }
        if forward.read.target == Target::Leader
            && matches!(reply, Reply::Error(ErrorReply::NotLeader { .. }))
        {
            kick.notify_one();
            forward.retry(from);
            continue;
        }
        forward.port.seen.note(&reply);
        let at = *now.get_or_insert_with(Instant::now);
        forward
            .port
            .meter
            .answered_at(OpKind::Get, &reply, forward.read.since, at);
        let reply = consistency::told(reply, forward.read.plain);
        match &mut run {
            Some(same) if Arc::ptr_eq(&same.port, &forward.port) => same.add(forward.read, reply),
            _ => {
                if let Some(done) = run.take() {
                    done.send();
                }
                let mut new = ReadRun {
                    port: forward.port,
                    replies: Vec::new(),
                    slot: None,
                };
                new.add(forward.read, reply);
                run = Some(new);
            }
        }
    }
    if let Some(done) = run.take() {
        done.send();
    }
}

/// Answers to forwarded reads of one client that arrived together.
pub(super) struct ReadRun {
    pub(super) port: Arc<ClientPort>,
    pub(super) replies: Vec<(Tag, Reply)>,
    /// The slots of the answers so far, merged.
    pub(super) slot: Option<Slot>,
}

impl ReadRun {
    fn add(&mut self, read: ForwardRead, reply: Reply) {
        self.replies.push((read.tag, reply));
        // All from the client's one semaphore: `merge` requires it.
        match &mut self.slot {
            Some(slot) => slot.merge(read.slot),
            None => self.slot = Some(read.slot),
        }
    }

    fn send(mut self) {
        let Some(slot) = self.slot else { return };
        let answer = if self.replies.len() == 1 {
            let Some((tag, reply)) = self.replies.pop() else {
                return;
            };
            Answer::One { tag, reply, slot }
        } else {
            Answer::Run {
                replies: self.replies,
                slot,
            }
        };
        self.port.answers.deliver(answer);
    }
}
