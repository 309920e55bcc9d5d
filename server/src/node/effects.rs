//! What the node asks of the tasks around it: answers to registered writes
//! (tickets, completions) and wake-ups (signals), recorded by the node's
//! methods and carried out when its lock is let go.

use std::time::Duration;

use semikv_protocol::{LogIndex, Reply, RequestId, Response};
use tokio::sync::{mpsc, watch};

use super::FollowTarget;

/// One proposed write, for as long as its leadership lasts: the role
/// generation it was proposed in and its log index. Within a generation an
/// index is proposed at most once, so a ticket names one waiter. Ordered by
/// generation, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// Role generation of the leadership that proposed it.
    pub role_gen: u64,
    /// Its log index.
    pub index: LogIndex,
}

/// Where a write's answer goes: a connection's completion queue and the
/// request it answers.
///
/// The queue must have room for every write its connection has registered
/// and not yet received back: the answer is pushed with `try_send` under
/// the node's lock, never waiting.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The connection's completion queue.
    pub to: mpsc::Sender<WriteDone>,
    /// The request this write answers.
    pub id: RequestId,
}

/// A write's answer, as pushed to its connection's completion queue. Every
/// registered write gets exactly one, unless its connection forgot it
/// ([`Node::forget`]).
#[derive(Debug)]
pub struct WriteDone {
    /// The answer for the client.
    pub response: Response,
    /// Every write whose ticket is at most this one had its answer pushed by
    /// the time this one was: the connection may stop tracking them.
    pub settled: Ticket,
}

/// A write for the leader to propose: a plain one, or a command it
/// evaluates first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// Logged as it is; answered `Written`.
    Write(semikv_protocol::WriteOp),
    /// Evaluated against the newest state; answered `Outcome`.
    Command(semikv_protocol::Command),
}

impl From<semikv_protocol::WriteOp> for Proposal {
    fn from(op: semikv_protocol::WriteOp) -> Proposal {
        Proposal::Write(op)
    }
}

/// A registered write: what [`Node::propose`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// Names the write's waiter until it is answered.
    pub ticket: Ticket,
    /// How long it may wait for its acknowledgements before
    /// [`Node::expire`] is due.
    pub sync_timeout: Duration,
}

/// What [`Node::expire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing: the write was already answered (or its leadership is over,
    /// which answered it).
    AlreadyAnswered,
    /// Committed without the sync acknowledgements (async fallback is on);
    /// `Written` was pushed.
    CommittedAsync,
    /// `NotEnoughReplicas` was pushed.
    NotEnoughReplicas,
}

/// What the node asks of the tasks around it after a change: the node's
/// methods only record these, and whoever holds the node's lock carries them
/// out when it lets go ([`Node::flush_effects`], which the replica's lock
/// guard calls), so no method of the node sends on a channel and a test can
/// see what a call asked for ([`Node::take_effects`]).
#[derive(Debug, Default)]
pub struct Effects {
    /// Answers to registered writes, in the order they were settled.
    pub answers: Vec<(Completion, WriteDone)>,
    /// The log grew or the commit index moved: wake the follower streams
    /// and the reads held for a new leader's first commit.
    pub progress: bool,
    /// The WAL outbox has work: wake the writer.
    pub outbox: bool,
    /// The durable last index moved here (followers acknowledge it).
    pub durable: Option<LogIndex>,
    /// The leader to follow changed to this.
    pub target: Option<Option<FollowTarget>>,
    /// The earliest sync deadline moved earlier (or appeared): the expiry
    /// timer must re-arm ([`Node::next_deadline`]).
    pub deadline: bool,
    /// A new round of leadership confirmation was asked for: the follower
    /// streams send it.
    pub lead_check: Option<u64>,
    /// A follower confirmed a newer round: wake the reads waiting on it.
    pub confirmed: bool,
}

impl Effects {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
            && !self.progress
            && !self.outbox
            && self.durable.is_none()
            && self.target.is_none()
            && !self.deadline
            && self.lead_check.is_none()
            && !self.confirmed
    }

    /// Carries them out on `signals`: each answer pushed to its
    /// connection's queue (room is guaranteed by the connection, see
    /// [`Completion`]; a closed queue means nobody is left to tell), each
    /// signal sent once, however many changes asked for it.
    pub fn apply(self, signals: &Signals) {
        for (completion, done) in self.answers {
            let pushed = completion.to.try_send(done);
            debug_assert!(
                !matches!(pushed, Err(mpsc::error::TrySendError::Full(_))),
                "a completion queue had no room for a write it registered"
            );
        }
        if let Some(target) = self.target {
            signals.target.send_replace(target);
        }
        if let Some(durable) = self.durable {
            signals.durable.send_replace(durable);
        }
        if self.outbox {
            signals.outbox.send_modify(|n| *n += 1);
        }
        if self.progress {
            signals.progress.send_modify(|p| *p += 1);
        }
        if self.deadline {
            signals.deadline.send_modify(|d| *d += 1);
        }
        if let Some(round) = self.lead_check {
            signals.lead_check.send_replace(round);
        }
        if self.confirmed {
            signals.confirmed.send_modify(|c| *c += 1);
        }
    }
}

/// Records the answer `reply` to a registered write.
pub(super) fn answer(effects: &mut Effects, completion: Completion, reply: Reply, settled: Ticket) {
    let done = WriteDone {
        response: Response {
            id: completion.id,
            reply,
        },
        settled,
    };
    effects.answers.push((completion, done));
}

/// Channels that wake the async tasks when the node changes.
#[derive(Debug)]
pub struct Signals {
    /// Bumped whenever entries are appended or the commit index moves.
    pub progress: watch::Sender<u64>,
    /// The durable last index (followers acknowledge it).
    pub durable: watch::Sender<LogIndex>,
    /// The leader to follow, if any.
    pub target: watch::Sender<Option<FollowTarget>>,
    /// Bumped when the outbox has work for the writer.
    pub outbox: watch::Sender<u64>,
    /// Bumped when the earliest sync deadline moved earlier.
    pub deadline: watch::Sender<u64>,
    /// The last round of leadership confirmation asked for.
    pub lead_check: watch::Sender<u64>,
    /// Bumped when a follower confirmed a newer round.
    pub confirmed: watch::Sender<u64>,
}

impl Signals {
    /// Fresh channels.
    pub fn new() -> Signals {
        Signals {
            progress: watch::Sender::new(0),
            durable: watch::Sender::new(LogIndex(0)),
            target: watch::Sender::new(None),
            outbox: watch::Sender::new(0),
            deadline: watch::Sender::new(0),
            lead_check: watch::Sender::new(0),
            confirmed: watch::Sender::new(0),
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}
