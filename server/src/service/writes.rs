//! One connection's writes registered with the node: the queue their answers
//! come back on, and the tickets to forget if the connection goes first.
//! Their sync deadlines are the node's ([`crate::node::Node::expire_due`]).

use std::collections::VecDeque;

use semikv_protocol::{RequestId, Response};
use tokio::sync::mpsc;

use super::MAX_IN_FLIGHT;
use crate::node::{Completion, Proposal, Ticket, WriteDone};
use crate::replica::Replica;

/// One connection's writes registered with the node.
pub(super) struct Writes {
    pub(super) tx: mpsc::Sender<WriteDone>,
    pub(super) rx: mpsc::Receiver<WriteDone>,
    /// Registered and not received back yet; the node pushes exactly one
    /// answer for each (unless forgotten), so this also bounds what the
    /// queue holds.
    pub(super) pending: usize,
    /// Tickets of registered writes, in proposal order. Entries of writes
    /// already answered stay until an answer settles them (see
    /// [`WriteDone::settled`]); a still-registered write is always here.
    pub(super) registered: VecDeque<Ticket>,
}

impl Writes {
    pub(super) fn new() -> Writes {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        Writes {
            tx,
            rx,
            pending: 0,
            registered: VecDeque::new(),
        }
    }

    /// Proposes a batch under one lock; what the node refuses is answered
    /// into `ready`.
    pub(super) fn propose(
        &mut self,
        replica: &Replica,
        batch: &mut Vec<(RequestId, Proposal)>,
        ready: &mut Vec<Response>,
    ) {
        let now = tokio::time::Instant::now().into_std();
        let tx = &self.tx;
        let writes = batch.drain(..).map(|(id, op)| {
            let to = tx.clone();
            (op, Completion { to, id })
        });
        let registered = &mut self.registered;
        let mut accepted = 0;
        replica.with(|n| {
            n.propose_batch(writes, now, |id, outcome| match outcome {
                Ok(proposed) => {
                    registered.push_back(proposed.ticket);
                    accepted += 1;
                }
                Err(reply) => ready.push(Response { id, reply }),
            });
        });
        self.pending += accepted;
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
        while let Some(&ticket) = self.registered.front() {
            if ticket > done.settled {
                break;
            }
            self.registered.pop_front();
        }
        done.response
    }

    /// The connection is gone: its writes still waiting are dropped from the
    /// node (they may still commit; nobody is left to tell).
    pub(super) fn abandon(&mut self, replica: &Replica) {
        if self.pending == 0 {
            return;
        }
        replica.with(|n| {
            for ticket in self.registered.drain(..) {
                n.forget(ticket);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use semikv_protocol::{LogIndex, Reply};

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
    fn an_answer_drops_only_the_tickets_it_settles() {
        let mut w = Writes::new();
        w.registered
            .extend([ticket(1, 2), ticket(1, 3), ticket(1, 4), ticket(2, 1)]);
        w.pending = 4;
        // An expiry's answer settles nothing of its own generation.
        w.received(done(ticket(1, 0)));
        assert_eq!(w.registered.len(), 4);
        // A commit at 3 settles 2 and 3 only.
        w.received(done(ticket(1, 3)));
        assert_eq!(
            Vec::from(w.registered.clone()),
            [ticket(1, 4), ticket(2, 1)]
        );
        // A step-down of generation 1 settles all of it.
        w.received(done(ticket(1, u64::MAX)));
        assert_eq!(Vec::from(w.registered.clone()), [ticket(2, 1)]);
        assert_eq!(w.pending, 1);
    }
}
