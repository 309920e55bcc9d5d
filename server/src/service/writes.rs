//! One connection's writes registered with the node: the queue their answers
//! come back on, and their sync deadlines behind one timer.

use std::collections::VecDeque;

use semikv_protocol::{Reply, RequestId, Response, WriteOp};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::MAX_IN_FLIGHT;
use crate::node::{Completion, Expiry, Ticket, WriteDone};
use crate::replica::Replica;

/// One connection's writes registered with the node: the queue their
/// answers come back on and their sync deadlines.
pub(super) struct Writes {
    pub(super) tx: mpsc::Sender<WriteDone>,
    pub(super) rx: mpsc::Receiver<WriteDone>,
    /// Registered and not received back yet; the node pushes exactly one
    /// answer for each (unless forgotten), so this also bounds what the
    /// queue holds.
    pub(super) pending: usize,
    /// Sync deadlines, earliest first: in proposal order while the sync
    /// timeout stays the same. Entries of writes already answered stay until
    /// an answer settles them (see [`WriteDone::settled`]) or they expire; a
    /// still-registered write is always here.
    pub(super) deadlines: VecDeque<(Instant, Ticket)>,
    /// What the timer is set for. It may fire early (the front was settled
    /// meanwhile), never late: it is only moved earlier, or set after firing.
    pub(super) armed: Option<Instant>,
}

impl Writes {
    pub(super) fn new() -> Writes {
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
    pub(super) fn propose(
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

    pub(super) fn track(&mut self, deadline: Instant, ticket: Ticket) {
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
    pub(super) fn answers(&mut self, done: WriteDone) -> Vec<Response> {
        let mut batch = vec![self.received(done)];
        while let Ok(more) = self.rx.try_recv() {
            batch.push(self.received(more));
        }
        batch
    }

    pub(super) fn received(&mut self, done: WriteDone) -> Response {
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
    pub(super) fn rearm(&mut self) -> Option<Instant> {
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
    pub(super) fn expire_due(&mut self, replica: &Replica) {
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
    pub(super) fn abandon(&mut self, replica: &Replica) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use semikv_protocol::LogIndex;

    use super::*;

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
