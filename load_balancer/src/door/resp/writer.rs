//! A RESP connection's writer: it receives the reader's commands in order
//! and the router's replies in any order, holds replies back until every
//! command before theirs is answered, combines those of a command that
//! became several ops, and writes the answers in the client's order.

use std::collections::{HashMap, VecDeque};

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
    // Replies that came before the ones ahead of them, with their charges.
    let mut held: HashMap<u64, (Reply, Option<Charge>)> = HashMap::new();
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
                    held.insert(tag.0, (reply, Some(charge)));
                }
                Out::Answer(Answer::Run { replies, slot }, charge) => {
                    drop(slot);
                    let mut charge = Some(charge);
                    for (tag, reply) in replies {
                        held.insert(tag.0, (reply, charge.take()));
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
                    if !(*first..*first + *count as u64).all(|t| held.contains_key(&t)) {
                        break;
                    }
                    let replies: Vec<Reply> = (*first..*first + *count as u64)
                        .filter_map(|t| held.remove(&t).map(|(r, _charge)| r))
                        .collect();
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
