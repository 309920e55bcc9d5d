//! What a request in flight on a replica connection waits with, the map
//! that holds it until it is answered, and how answers that arrive together
//! go to their clients together.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use semikv_protocol::sync::lock;
use semikv_protocol::{Op, Reply};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::ConnError;
use crate::group::replies::write_reply;
use crate::request::{Answer, ClientPort, Retry, Slot, Tag};

/// Replies a connection's reader takes from its buffer before matching them
/// all under one lock of the pending map.
pub(super) const MAX_REPLIES_PER_LOCK: usize = 256;

/// How often a link looks for forwarded requests past their deadline.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// One read of a client's burst, for [`ReplicaLink::forward_reads`].
#[derive(Debug)]
pub struct Read {
    /// The request's tag.
    pub tag: Tag,
    /// The read, kept to retry it elsewhere.
    pub op: Op,
    /// The request's slot, held until the answer is written.
    pub slot: Slot,
}

/// A client's read forwarded without a future of its own: the replica's
/// answer goes straight to the client's port, under the request's tag.
#[derive(Debug)]
pub(super) struct Forward {
    pub(super) port: Arc<ClientPort>,
    pub(super) read: Read,
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
}

impl Forward {
    fn retry(self, failed_on: usize) {
        let Read { tag, op, slot } = self.read;
        self.port.retry(Retry {
            tag,
            op,
            failed_on,
            slot,
        });
    }
}

impl WriteInFlight {
    /// Answers the client; `kick` asks for a health round when the outcome
    /// says the leader looks wrong.
    pub(super) fn settle(self, outcome: Result<Reply, ConnError>, kick: &Notify) {
        let reply = write_reply(outcome, kick);
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
    Read(Forward, Instant),
    /// A forwarded client write, answered by the connection's reader however
    /// it ends; and its deadline.
    Write(WriteInFlight, Instant),
}

impl Waiting {
    /// When the sweep ends it; `None`: its caller's own timeout does.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Waiting::Reply(_) => None,
            Waiting::Read(_, deadline) | Waiting::Write(_, deadline) => Some(*deadline),
        }
    }

    /// Ends a request that got no reply from replica `failed_on`: `late`
    /// when its deadline passed, otherwise its connection broke.
    pub(super) fn fail(self, failed_on: usize, late: bool, kick: &Notify) {
        match self {
            // Dropping the sender answers the caller Broken.
            Waiting::Reply(_) => {}
            Waiting::Read(forward, _) => forward.retry(failed_on),
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

/// Answers the replies matched in one go (drained): each run of forwarded
/// reads of one client goes to its port as one [`Answer::Run`], freeing all
/// their slots once written; the rest one by one. A burst's reads went to
/// one replica together, so their replies mostly come back together too:
/// one queue entry and one wake-up for the run, not one per read.
pub(super) fn answer_all(matched: &mut Vec<(Waiting, Reply)>, kick: &Notify) {
    let mut run: Option<ReadRun> = None;
    for (waiting, reply) in matched.drain(..) {
        let forward = match waiting {
            Waiting::Read(forward, _) => forward,
            Waiting::Reply(waiter) => {
                let _ = waiter.send(reply);
                continue;
            }
            Waiting::Write(write, _) => {
                write.settle(Ok(reply), kick);
                continue;
            }
        };
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
    fn add(&mut self, read: Read, reply: Reply) {
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

/// Hashes a link's own request ids with one multiplication instead of
/// SipHash: every forwarded request costs the pending map an insert and a
/// remove, and the ids are a counter of ours that no peer chooses, so there
/// is no flooding to resist. Sequential ids spread over every bucket (the
/// multiplier is odd) and over the high bits the table's tags use.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) open: bool,
    pub(super) map: HashMap<u64, Waiting, BuildHasherDefault<IdHasher>>,
}

/// Takes the forwarded requests past their deadline out of the pending map.
pub(super) fn expired(pending: &Mutex<Pending>, now: Instant) -> Vec<Waiting> {
    let mut p = lock(pending);
    let late: Vec<u64> = p
        .map
        .iter()
        .filter(|(_, w)| w.deadline().is_some_and(|deadline| deadline <= now))
        .map(|(&id, _)| id)
        .collect();
    late.into_iter()
        .filter_map(|id| p.map.remove(&id))
        .collect()
}

/// Takes a request's entry out of the pending map however the request ends
/// without a reply: its own timeout, or the caller dropping the future (the
/// health check wraps requests in a timeout that also covers the connect),
/// so the map cannot grow on a live connection.
pub(super) struct Waiter<'a> {
    pub(super) pending: &'a Mutex<Pending>,
    pub(super) id: u64,
    pub(super) armed: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.pending).map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=4096u64).map(|id| build.hash_one(id)).collect();
        // A table of 4096 buckets indexes by the low bits: no two collide.
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        assert_eq!(buckets.len(), 4096);
        // The table's tags are the top 7 bits: all 128 of them are used.
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
    }
}
