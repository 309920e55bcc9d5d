//! The leader's proposed state and the commands evaluated against it.
//!
//! A command must see every write the leader accepted before it, committed
//! or not, or two pipelined `INCR`s would both read the same value. The
//! leader keeps, for each key written by an entry it has not applied yet,
//! the newest such entry's index (`LeaderState::pending`); a key's proposed
//! state is that entry's mutation of it, else the applied store.
//!
//! Why a map and not a scan of the unapplied tail: the tail is as long as
//! the writes in flight (thousands under a pipelined load), and a scan per
//! command made a pipeline of them quadratic. The map costs one insert per
//! accepted write; it is not trimmed as entries apply (that would be a
//! lookup per applied key on the hot path) but ignores entries at or below
//! the applied index, and drops them in one pass once it holds twice as
//! many keys as the tail has entries. A new leader rebuilds it from the
//! tail it inherited, which it will commit before anything it proposes.
//!
//! An answer that writes nothing (a failed `NX`, an `INCR` error) may have
//! been read from an entry that is not committed yet, and that a failover
//! can still take back: it is held until that entry commits, by logging a
//! `Noop` and answering when the `Noop` commits, through the same waiter,
//! sync timeout and step-down rules as any write. An answer read from
//! committed state alone is sent at once.

use super::evaluate::{evaluate, KeyState};
use super::*;
use semikv_protocol::Command;

/// Keys the map may hold beyond twice the unapplied entries before a trim.
const PENDING_SLACK: usize = 1024;

impl Node {
    /// Records the keys `op` (appended at `index`) writes, while leading.
    pub(super) fn note_pending(&mut self, index: LogIndex, op: &WriteOp) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        for key in op.keys() {
            l.pending.insert(key.clone(), index);
        }
        let unapplied =
            usize::try_from(index.0.saturating_sub(self.applied.0)).unwrap_or(usize::MAX);
        if l.pending.len() > unapplied.saturating_mul(2).saturating_add(PENDING_SLACK) {
            let applied = self.applied;
            l.pending.retain(|_, at| *at > applied);
        }
    }

    /// Rebuilds the pending map from the unapplied tail (at promotion).
    pub(super) fn rebuild_pending(&mut self) {
        let mut pending = HashMap::new();
        let mut index = self.applied.next();
        while let Some(entry) = self.log.get(index) {
            for key in entry.op.keys() {
                pending.insert(key.clone(), index);
            }
            index = index.next();
        }
        if let Role::Leader(l) = &mut self.role {
            l.pending = pending;
        }
    }

    /// `key`'s newest proposed state, and the unapplied entry it comes from
    /// (0: the applied store). Expired keys are returned as they are: the
    /// evaluation decides what expired means.
    pub(super) fn proposed_state(&self, key: &Bytes) -> (Option<KeyState>, LogIndex) {
        let from = match &self.role {
            Role::Leader(l) => l.pending.get(key).copied().filter(|&at| at > self.applied),
            _ => None,
        };
        if let Some(state) = from
            .and_then(|at| self.log.get(at))
            .map(|e| state_in(&e.op, key))
        {
            return (state, from.unwrap_or_default());
        }
        let state = self.store.get(key).map(|value| KeyState {
            value,
            expires_at: self.store.expiry(key),
        });
        (state, LogIndex(0))
    }

    /// Evaluates `command` as leader against the proposed state (see the
    /// module doc) and logs its result as one `Batch` entry, registering
    /// `completion` for its answer as [`Node::propose`] does.
    ///
    /// # Errors
    /// The reply to send at once, nothing registered: the refusals of
    /// [`Node::propose`] (`NotLeader`, `Storage`, `DiskFull`, `Diverged`,
    /// `OutOfMemory`), a command error (`NotAnInteger`, `Overflow`,
    /// `Invalid`) read from committed state, or the outcome of a command
    /// that changed nothing and read only committed state.
    pub fn propose_command(
        &mut self,
        command: &Command,
        completion: Completion,
        now: Instant,
    ) -> Result<Proposed, Reply> {
        self.check_writable().map_err(Reply::Error)?;
        let evaluation = evaluate(command, self.clock.now(), self.max_value_len, &|key| {
            self.proposed_state(key)
        });
        let read_uncommitted = evaluation.read_from > self.commit;
        if evaluation.mutations.is_empty() {
            let answer = match evaluation.answer {
                Ok(outcome) if !read_uncommitted => {
                    return Err(Reply::Outcome(Outcome {
                        index: self.commit,
                        ..outcome
                    }))
                }
                Err(e) if !read_uncommitted => return Err(Reply::Error(e)),
                Ok(outcome) => Answer::Outcome(outcome),
                Err(e) => Answer::Error(e),
            };
            return Ok(self.register(WriteOp::Noop, completion, answer, now));
        }
        let answer = match evaluation.answer {
            Ok(outcome) => Answer::Outcome(outcome),
            // Evaluation gives no mutations with an error.
            Err(e) => return Err(Reply::Error(e)),
        };
        let op = WriteOp::Batch(evaluation.mutations);
        self.check_memory(&op).map_err(Reply::Error)?;
        Ok(self.register(op, completion, answer, now))
    }
}

/// What `op` leaves `key` as (the last of its mutations of it wins).
fn state_in(op: &WriteOp, key: &[u8]) -> Option<KeyState> {
    match op {
        WriteOp::Set { value, .. } => Some(KeyState {
            value: value.clone(),
            expires_at: None,
        }),
        WriteOp::Delete { .. } | WriteOp::Noop => None,
        WriteOp::Batch(mutations) => mutations.iter().rev().find(|m| m.key == key).and_then(|m| {
            m.value.clone().map(|value| KeyState {
                value,
                expires_at: m.expires_at,
            })
        }),
    }
}
