//! What the balancer's layers hand each other: a client's request and its
//! answer, in no client's wire format. A front door turns its clients' bytes
//! into [`Op`]s tagged with ids of its own and [`Answer`]s back into bytes;
//! the router and the replica groups see neither.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use semikv_protocol::{LogIndex, Op, Reply};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::metrics::Meter;

/// A door's own id for one request of one client connection: the answer
/// comes back under it. Doors whose clients match answers by position
/// rather than by id (RESP, HTTP/1.1) number their requests in order and
/// put the answers back in that order themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub u64);

/// A request's place among its connection's requests in flight: held from
/// the moment the door takes the request until its answer has been handed
/// to the socket, so a client's queued answers never outnumber its slots.
pub type Slot = OwnedSemaphorePermit;

/// The answer to one or more requests of one client connection.
#[derive(Debug)]
pub enum Answer {
    /// One request's reply.
    One {
        /// The request's tag.
        tag: Tag,
        /// Its reply.
        reply: Reply,
        /// Its slot, freed once the answer is written.
        slot: Slot,
    },
    /// Replies that arrived together (from one read of a replica's socket),
    /// in the order they arrived, under one slot: theirs, merged. One queue
    /// entry and one wake-up of the door's writer for all of them.
    Run {
        /// Each request's tag and reply.
        replies: Vec<(Tag, Reply)>,
        /// Their slots, merged (all from the connection's one semaphore).
        slot: Slot,
    },
}

/// Where one client connection's answers go: its door's writer.
pub trait AnswerSink: Send + Sync + fmt::Debug {
    /// Queues `answer` without waiting. A door sizes its queue to make room
    /// certain: every answer holds at least one slot, and the queue has a
    /// place for each slot (and one for a closing message). Failing means
    /// the client is gone: the answer is dropped, and its slot with it.
    fn deliver(&self, answer: Answer);
}

/// A read a replica did not answer (its connection broke, or its deadline
/// passed), or answered that it is behind the session's position: the
/// client's session tries it once more, on another replica or the leader.
#[derive(Debug)]
pub struct Retry {
    /// The request's tag.
    pub tag: Tag,
    /// The read, as sent to the replica.
    pub op: Op,
    /// The replica (slot in its group) that failed it, not to be tried
    /// again; `None` when it answered but another must (it was behind).
    pub failed_on: Option<usize>,
    /// The request's slot.
    pub slot: Slot,
    /// Whether the client asked with a plain read (its answer is unwrapped
    /// from the [`Reply::Read`] the replica gives).
    pub plain: bool,
    /// The replicas that may answer it now: the leader once a replica was
    /// behind the session's position.
    pub target: Target,
    /// When it was first sent: its latency counts from there.
    pub since: tokio::time::Instant,
}

/// The replicas a read may go to, by its consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Any replica of the read rotation.
    Rotation,
    /// The leader only.
    Leader,
    /// Any replica known to lag the leader's commits by less than this,
    /// else the leader.
    Fresh(std::time::Duration),
}

/// Where the answers to one client connection's requests go, and its reads
/// to retry: shared by everything it has in flight (one reference count
/// each). The slots of the requests sent with one port must all come from
/// one semaphore (the connection's): answers that arrive together have
/// their slots merged.
#[derive(Debug)]
pub struct ClientPort {
    /// The connection's writer.
    pub answers: Arc<dyn AnswerSink>,
    /// Its session's retry queue, with room for every slot.
    pub retry: mpsc::Sender<Retry>,
    /// The highest log position the connection has seen in an answer.
    pub seen: Arc<Position>,
    /// Where its answers are counted.
    pub meter: Meter,
}

/// The highest log position a client connection has seen in an answer (a
/// write's index, a read's position): its `session` reads reflect at least
/// this much. Shared by whatever answers the connection.
#[derive(Debug, Default)]
pub struct Position(AtomicU64);

impl Position {
    /// The highest position seen so far.
    pub fn get(&self) -> LogIndex {
        LogIndex(self.0.load(Ordering::Acquire))
    }

    /// Notes the position `reply` carries (a write's index, a positioned
    /// read's), if any.
    pub fn note(&self, reply: &Reply) {
        let index = match reply {
            Reply::Written { index } => *index,
            Reply::Outcome(outcome) => outcome.index,
            Reply::Read(answer) => answer.index,
            _ => return,
        };
        self.0.fetch_max(index.0, Ordering::AcqRel);
    }

    /// Lowers the position to `index` if it is above: for a position that
    /// turned out to be ahead of every replica (see the HTTP door).
    pub fn lower_to(&self, index: LogIndex) {
        self.0.fetch_min(index.0, Ordering::AcqRel);
    }
}

impl ClientPort {
    /// A port delivering to `answers`, retrying through `retry` and
    /// counting under `meter`, having seen nothing yet.
    pub fn new(
        answers: Arc<dyn AnswerSink>,
        retry: mpsc::Sender<Retry>,
        meter: Meter,
    ) -> ClientPort {
        ClientPort {
            answers,
            retry,
            seen: Arc::default(),
            meter,
        }
    }

    /// Answers one request (see [`AnswerSink::deliver`]).
    pub fn answer(&self, tag: Tag, reply: Reply, slot: Slot) {
        self.answers.deliver(Answer::One { tag, reply, slot });
    }

    /// Sends a read back to be tried elsewhere. Room is certain: every
    /// queued retry holds one of the slots the queue is sized for; failing
    /// means the client is gone.
    pub fn retry(&self, retry: Retry) {
        let _ = self.retry.try_send(retry);
    }
}
