//! What a client connection's unwritten answers cost, whatever its door:
//! each answer is charged to the connection's [`OutputBudget`] from the
//! moment it is delivered until it is encoded, so that a client that stops
//! reading is cut off at a bound instead of growing the balancer's memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use semikv_protocol::Reply;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::request::{Answer, AnswerSink};
use crate::router::Window;

/// Bytes a reply costs while it waits for its client, about: its value and
/// a little more.
pub fn reply_bytes(reply: &Reply) -> usize {
    const PER_REPLY: usize = 32;
    match reply {
        Reply::Read(answer) => reply_bytes(&answer.reply) + 8,
        Reply::Value(Some(value)) => value.len() + PER_REPLY,
        Reply::Outcome(outcome) => outcome.value.as_ref().map_or(0, |v| v.len()) + PER_REPLY,
        Reply::Cluster(status) => status.replicas.len().saturating_mul(256) + PER_REPLY,
        Reply::ClusterReport(report) => {
            report.status.replicas.len().saturating_mul(512) + PER_REPLY
        }
        Reply::ClusterView(view) => {
            view.report.status.replicas.len().saturating_mul(544) + PER_REPLY
        }
        _ => PER_REPLY,
    }
}

/// An answer's bytes in all, and its largest reply's.
pub fn answer_bytes(answer: &Answer) -> (usize, usize) {
    match answer {
        Answer::One { reply, .. } => {
            let bytes = reply_bytes(reply);
            (bytes, bytes)
        }
        Answer::Run { replies, .. } => replies.iter().fold((0, 0), |(sum, largest), (_, r)| {
            let bytes = reply_bytes(r);
            (sum + bytes, largest.max(bytes))
        }),
    }
}

/// The bytes of answers queued for one client and not yet encoded into its
/// socket's buffer: what a client that stops reading costs the balancer.
/// Past the limit the connection is closed, with a log line; other clients
/// see nothing. (The writer's own buffer is bounded apart, see
/// [`semikv_protocol::outbox::MAX_UNFLUSHED`].)
#[derive(Debug)]
pub struct OutputBudget {
    queued: AtomicUsize,
    limit: usize,
    peer: SocketAddr,
    closed: CancellationToken,
}

impl OutputBudget {
    /// A budget of `limit` bytes for the connection from `peer`; passing it
    /// cancels `closed`.
    pub fn new(limit: usize, peer: SocketAddr, closed: CancellationToken) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            queued: AtomicUsize::new(0),
            limit,
            peer,
            closed,
        })
    }

    /// Charges `bytes` for an answer until the returned charge drops.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        let after = before.saturating_add(bytes);
        if before <= self.limit && after > self.limit {
            warn!(peer = %self.peer, unread = after, limit = self.limit, "client leaves its answers unread past the output limit; disconnecting it");
            self.closed.cancel();
        }
        Charge {
            budget: self.clone(),
            bytes,
        }
    }
}

/// One answer's share of its client's [`OutputBudget`], given back when
/// the answer is encoded (or dropped with its connection).
#[derive(Debug)]
pub struct Charge {
    budget: Arc<OutputBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A connection's answer sink, whatever its door: each answer is charged
/// to the connection's [`OutputBudget`] and handed to its writer's queue
/// as the door's own item (`T: From<(Answer, Charge)>`), and the window
/// learns its size. The door sizes the queue to make room certain (see
/// [`AnswerSink::deliver`]).
#[derive(Debug)]
pub struct ChargedAnswers<T> {
    queue: mpsc::Sender<T>,
    budget: Arc<OutputBudget>,
    window: Arc<Window>,
}

impl<T> ChargedAnswers<T> {
    /// Answers into `queue`, charged to `budget`, observed by `window`.
    pub fn new(queue: mpsc::Sender<T>, budget: Arc<OutputBudget>, window: Arc<Window>) -> Self {
        ChargedAnswers {
            queue,
            budget,
            window,
        }
    }
}

impl<T> AnswerSink for ChargedAnswers<T>
where
    T: From<(Answer, Charge)> + Send + std::fmt::Debug,
{
    fn deliver(&self, answer: Answer) {
        let (bytes, largest) = answer_bytes(&answer);
        self.window.observe(largest);
        // A closing connection's writer has dropped its queue: the send
        // fails and the charge goes with the answer.
        let charge = self.budget.charge(bytes);
        let _ = self.queue.try_send(T::from((answer, charge)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use semikv_protocol::ids::LogIndex;
    use semikv_protocol::Outcome;

    #[test]
    fn a_value_carried_by_an_outcome_is_counted() {
        let value = Bytes::from(vec![0u8; 1 << 20]);
        let outcome = Reply::Outcome(Outcome {
            index: LogIndex(1),
            applied: true,
            value: Some(value),
            int: 0,
        });
        assert!(reply_bytes(&outcome) > 1 << 20);
    }
}
