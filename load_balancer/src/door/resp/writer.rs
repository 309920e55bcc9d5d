//! A RESP connection's writer: it receives the reader's commands in order
//! and the router's replies in any order, holds replies back until every
//! command before theirs is answered, combines those of a command that
//! became several ops, and writes the answers in the client's order.

use std::collections::VecDeque;

use bytes::BytesMut;
use semikv_protocol::transport::WriteHalf;
use semikv_protocol::Reply;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::command::{self, Shape};
use super::reply::Resp;
use super::{Out, WRITE_TIMEOUT};
use crate::door::output::Charge;
use crate::request::Answer;

/// Why the writer stopped early.
#[derive(Debug)]
pub(super) enum WriteFailed {
    /// The client read nothing for [`WRITE_TIMEOUT`].
    Blocked,
    /// The socket failed.
    Io(std::io::Error),
}

/// A command waiting for its replies, in the client's order.
#[derive(Debug)]
enum Waiting {
    /// An answer known at once, charged until it is encoded.
    Ready {
        resp: Resp,
        resp3: bool,
        _charge: Charge,
    },
    Expect {
        first: u64,
        count: usize,
        shape: Shape,
        resp3: bool,
    },
}

/// Replies that came before the ones ahead of them, with their charges, by
/// tag. The reader numbers ops in order, and commands are answered in that
/// order, so replies are taken from the front: a queue indexed from the
/// first tag not yet taken, with no hashing (a `HashMap` here showed in
/// profiles of pipelined GETs).
#[derive(Debug, Default)]
struct Held {
    /// The tag of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<(Reply, Option<Charge>)>>,
}

impl Held {
    fn insert(&mut self, tag: u64, reply: Reply, charge: Option<Charge>) {
        // A tag below `base` was taken already: cannot happen, as each op
        // has one reply; ignoring it keeps the queue right if it does.
        let Some(at) = tag.checked_sub(self.base) else {
            return;
        };
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = Some((reply, charge));
        }
    }

    /// Whether the replies to tags `first..first + count` are all in.
    fn has(&self, first: u64, count: usize) -> bool {
        let Some(at) = first.checked_sub(self.base) else {
            return false;
        };
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        (at..at.saturating_add(count)).all(|i| matches!(self.slots.get(i), Some(Some(_))))
    }

    /// Takes the replies to `first..first + count`, the first tags held
    /// (see [`Held::has`]), in order.
    fn take(&mut self, first: u64, count: usize) -> Vec<Reply> {
        // Tags skipped before `first` (none, as commands come in order)
        // are dropped with their slots.
        while self.base < first && self.slots.pop_front().is_some() {
            self.base += 1;
        }
        let mut replies = Vec::with_capacity(count);
        for _ in 0..count {
            if let Some(Some((reply, _charge))) = self.slots.pop_front() {
                replies.push(reply);
            }
            self.base += 1;
        }
        replies
    }
}

/// Writes the answers in the order of the commands until `Close`, the
/// queue's end, or `closed`.
pub(super) async fn write_answers(
    mut write: WriteHalf,
    mut rx: mpsc::Receiver<Out>,
    closed: CancellationToken,
) -> Result<(), WriteFailed> {
    // However the writer ends, the reader stops too: a client whose
    // answers can no longer be written must not go on sending commands.
    let _stop_reader = closed.clone().drop_guard();
    let mut order: VecDeque<(Waiting, Option<OwnedSemaphorePermit>)> = VecDeque::new();
    let mut held = Held::default();
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut closing = false;
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => return Ok(()),
            item = rx.recv() => item,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Out::Ready {
                    resp,
                    resp3,
                    _permit,
                    _charge,
                } => order.push_back((
                    Waiting::Ready {
                        resp,
                        resp3,
                        _charge,
                    },
                    _permit,
                )),
                Out::Expect {
                    first,
                    count,
                    shape,
                    resp3,
                    _permit,
                } => order.push_back((
                    Waiting::Expect {
                        first,
                        count,
                        shape,
                        resp3,
                    },
                    Some(_permit),
                )),
                Out::Answer(Answer::One { tag, reply, slot }, charge) => {
                    // The slot goes now: the reply waits here, charged.
                    drop(slot);
                    held.insert(tag.0, reply, Some(charge));
                }
                Out::Answer(Answer::Run { replies, slot }, charge) => {
                    drop(slot);
                    let mut charge = Some(charge);
                    for (tag, reply) in replies {
                        held.insert(tag.0, reply, charge.take());
                    }
                }
                Out::Close => closing = true,
            }
            next = rx.try_recv().ok();
        }
        // Encodes every command at the front whose replies are all in.
        while let Some((front, _)) = order.front() {
            match front {
                Waiting::Ready { resp, resp3, .. } => resp.encode(*resp3, &mut out),
                Waiting::Expect {
                    first,
                    count,
                    shape,
                    resp3,
                } => {
                    if !held.has(*first, *count) {
                        break;
                    }
                    let replies = held.take(*first, *count);
                    let resp = command::combine(shape, replies);
                    resp.encode(*resp3, &mut out);
                }
            }
            order.pop_front();
        }
        if !out.is_empty() {
            let written = tokio::select! {
                _ = closed.cancelled() => return Ok(()),
                written = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out)) => written,
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(WriteFailed::Io(e)),
                Err(_) => return Err(WriteFailed::Blocked),
            }
            out.clear();
            if out.capacity() > 1024 * 1024 {
                out = BytesMut::with_capacity(16 * 1024);
            }
        }
        if closing && order.is_empty() {
            break;
        }
    }
    let _ = write.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: u8) -> Reply {
        Reply::Value(Some(bytes::Bytes::from(vec![n])))
    }

    #[test]
    fn held_replies_come_out_by_tag_whatever_order_they_came_in() {
        let mut held = Held::default();
        held.insert(2, value(2), None);
        held.insert(1, value(1), None);
        assert!(!held.has(0, 1));
        assert!(held.has(1, 2), "tags 1 and 2 are in");
        held.insert(0, value(0), None);
        assert!(held.has(0, 1));
        assert_eq!(held.take(0, 1), vec![value(0)]);
        assert!(!held.has(1, 3), "tag 3 has not come");
        held.insert(3, value(3), None);
        assert_eq!(held.take(1, 3), vec![value(1), value(2), value(3)]);
        assert!(held.slots.is_empty());
        assert_eq!(held.base, 4);
        // A late duplicate of a taken tag changes nothing.
        held.insert(1, value(9), None);
        assert!(held.slots.is_empty());
    }
}
