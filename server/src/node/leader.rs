//! The leader's side of the state machine: proposing writes, counting
//! acknowledgements into the commit index, answering and expiring waiters,
//! and planning each follower's stream.

use super::*;

impl Node {
    /// Whether this node leads, and with which sync timeout.
    pub fn leader_timeout(&self) -> Option<Duration> {
        match &self.role {
            Role::Leader(l) => Some(l.sync_timeout),
            _ => None,
        }
    }

    /// Appends a write to the log as leader and registers `completion` as
    /// its waiter: exactly one answer is pushed to it, `Written` once the
    /// write commits, `Indeterminate` if this leadership ends first,
    /// `Storage` if the disk fails, or what [`Node::expire`] decides once
    /// its sync deadline (`now` plus the sync timeout) passes; unless
    /// [`Node::forget`] drops it first. Nothing is registered on error.
    ///
    /// # Errors
    /// `NotLeader` on a non-leader; `Storage` once the disk has failed;
    /// `DiskFull` while the disk has no room ([`Node::on_disk_full`]);
    /// `Diverged` once diverged; `OutOfMemory` when a `Set` would grow the
    /// store past its limit, counting the writes not yet applied (see
    /// [`Node::set_memory_limit`]).
    pub fn propose(
        &mut self,
        op: WriteOp,
        completion: Completion,
        now: Instant,
    ) -> Result<Proposed, ErrorReply> {
        self.check_writable()?;
        self.check_memory(&op)?;
        Ok(self.register(op, completion, Answer::Written, now))
    }

    /// Refuses a write unless this node leads and its disk takes writes.
    ///
    /// # Errors
    /// As [`Node::propose`], less `OutOfMemory`.
    pub(super) fn check_writable(&self) -> Result<(), ErrorReply> {
        self.check_serving()?;
        if let Some(reason) = &self.failed {
            return Err(ErrorReply::Storage {
                reason: reason.clone(),
            });
        }
        if !matches!(self.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        if let Some(reason) = &self.disk_full {
            return Err(ErrorReply::DiskFull {
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    /// Appends `op` as leader and registers its waiter, to answer `answer`
    /// once it commits (see [`Node::propose`]).
    pub(super) fn register(
        &mut self,
        op: WriteOp,
        completion: Completion,
        answer: Answer,
        now: Instant,
    ) -> Proposed {
        let index = self.append_local_at(op, now);
        let mut sync_timeout = Duration::ZERO;
        if let Role::Leader(l) = &mut self.role {
            l.waiters.insert(index, Waiter { completion, answer });
            sync_timeout = l.sync_timeout;
            let deadline = now + sync_timeout;
            match l.deadlines.back() {
                // A re-promotion shortened the sync timeout: keep the order.
                Some(&(last, _)) if last > deadline => {
                    let at = l.deadlines.partition_point(|&(d, _)| d <= deadline);
                    l.deadlines.insert(at, (deadline, index));
                    self.effects.deadline |= at == 0;
                }
                Some(_) => l.deadlines.push_back((deadline, index)),
                None => {
                    l.deadlines.push_back((deadline, index));
                    self.effects.deadline = true;
                }
            }
        }
        self.advance_commit();
        Proposed {
            ticket: Ticket {
                role_gen: self.role_gen,
                index,
            },
            sync_timeout,
        }
    }

    /// Proposes each write of `writes` as [`Node::propose`] does (each
    /// command as [`Node::propose_command`]), telling `answer` the outcome
    /// under the request's id (`Err`: the reply to send at once, nothing
    /// registered), and wakes the WAL writer and the follower streams once
    /// for the whole batch rather than twice per write.
    pub fn propose_batch(
        &mut self,
        writes: impl IntoIterator<Item = (Proposal, Completion)>,
        now: Instant,
        mut answer: impl FnMut(RequestId, Result<Proposed, Reply>),
    ) {
        // The wake-ups are effects, sent once at the flush however many
        // writes asked for them.
        for (proposal, completion) in writes {
            let id = completion.id;
            let outcome = match proposal {
                Proposal::Write(op) => self.propose(op, completion, now).map_err(Reply::Error),
                Proposal::Command(command) => self.propose_command(&command, completion, now),
            };
            answer(id, outcome);
        }
    }

    /// Appends `op` as leader now, by the clock writes are proposed by
    /// (tokio's, as the service reads it): entries no client proposed (the
    /// promotion's no-op, expiry sweeps) are timed too, for the followers'
    /// lag.
    pub(super) fn append_local(&mut self, op: WriteOp) -> LogIndex {
        self.append_local_at(op, tokio::time::Instant::now().into_std())
    }

    /// Appends `op` as leader at `now`.
    pub(super) fn append_local_at(&mut self, op: WriteOp, now: Instant) -> LogIndex {
        let index = self.append_entry(op);
        if let Role::Leader(l) = &mut self.role {
            l.note_appended(index, now);
        }
        index
    }

    fn append_entry(&mut self, op: WriteOp) -> LogIndex {
        let entry = Entry {
            index: self.log.last_index().next(),
            epoch: self.epoch,
            op,
        };
        let index = entry.index;
        // Cannot fail: the index is the next one and the epoch is ours, which
        // is at least the last entry's.
        let appended = self.log.append(entry.clone());
        debug_assert!(appended.is_ok());
        self.note_pending(index, &entry.op);
        self.push_record(Record::Entry(entry));
        self.signal_progress();
        index
    }

    /// A follower of this leader acknowledged `match_index` at `epoch`.
    pub fn on_ack(&mut self, follower: ReplicaId, epoch: Epoch, match_index: LogIndex) {
        if epoch != self.epoch {
            return;
        }
        let last = self.log.last_index();
        if let Role::Leader(l) = &mut self.role {
            let p = l.followers.entry(follower).or_default();
            p.match_index = p.match_index.max(match_index.min(last));
        }
        self.advance_commit();
    }

    /// Each follower's stream lag at `now`, when this node leads.
    pub fn stream_lags(&self, now: Instant) -> Vec<StreamLag> {
        let Role::Leader(l) = &self.role else {
            return Vec::new();
        };
        let last = self.log.last_index();
        let mut lags: Vec<StreamLag> = l
            .followers
            .iter()
            .map(|(id, p)| {
                let entries = last.0.saturating_sub(p.match_index.0);
                StreamLag {
                    follower: *id,
                    entries,
                    behind_for: if entries == 0 {
                        Some(Duration::ZERO)
                    } else {
                        l.missing_for(p.match_index, now)
                    },
                    connected: p.streams > 0,
                }
            })
            .collect();
        lags.sort_by_key(|lag| lag.follower);
        lags
    }

    /// A follower's stream opened (`+1`) or closed (`-1`).
    pub fn on_follower_stream(&mut self, follower: ReplicaId, opened: bool) {
        if let Role::Leader(l) = &mut self.role {
            let p = l.followers.entry(follower).or_default();
            if opened {
                p.streams += 1;
            } else {
                p.streams = p.streams.saturating_sub(1);
            }
        }
    }

    pub(super) fn advance_commit(&mut self) {
        let Role::Leader(l) = &self.role else {
            return;
        };
        let k = l.sync_replicas as usize;
        let candidate = if k == 0 {
            self.durable
        } else {
            let mut matches: Vec<LogIndex> = l.followers.values().map(|p| p.match_index).collect();
            if matches.len() < k {
                return;
            }
            matches.sort_unstable_by(|a, b| b.cmp(a));
            matches[k - 1].min(self.durable)
        };
        if candidate > self.commit && self.log.epoch_at(candidate) == Some(self.epoch) {
            self.set_commit(candidate);
        }
    }

    /// A registered write's sync timeout passed. If it is still waiting:
    /// with async fallback on and the write durable here, commit without the
    /// followers (pushing `Written`); otherwise answer `NotEnoughReplicas`
    /// with the acknowledgement counts and drop the waiter. A write already
    /// answered is left alone, so no write is ever answered twice.
    pub fn expire(&mut self, ticket: Ticket) -> Expiry {
        if ticket.role_gen != self.role_gen {
            return Expiry::AlreadyAnswered;
        }
        let Role::Leader(l) = &self.role else {
            return Expiry::AlreadyAnswered;
        };
        if !l.waiters.contains_key(&ticket.index) {
            return Expiry::AlreadyAnswered;
        }
        // A commit at or past the index answers the waiter itself.
        if self.force_commit(ticket.index) {
            return Expiry::CommittedAsync;
        }
        let (acked, required) = self.ack_count(ticket.index);
        if let Role::Leader(l) = &mut self.role {
            if let Some(waiter) = l.waiters.remove(&ticket.index) {
                let reply = Reply::Error(ErrorReply::NotEnoughReplicas { acked, required });
                // Says nothing about other writes of this generation.
                let settled = Ticket {
                    role_gen: self.role_gen,
                    index: LogIndex(0),
                };
                answer(&mut self.effects, waiter.completion, reply, settled);
            }
        }
        Expiry::NotEnoughReplicas
    }

    /// The earliest sync deadline of a write still (possibly) waiting: when
    /// [`Node::expire_due`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.role {
            Role::Leader(l) => l.deadlines.front().map(|&(at, _)| at),
            _ => None,
        }
    }

    /// Expires every write whose sync deadline is at or before `now` and
    /// that is still waiting (see [`Node::expire`]); returns how many were
    /// committed without their acknowledgements (async fallback).
    pub fn expire_due(&mut self, now: Instant) -> usize {
        let mut due = Vec::new();
        if let Role::Leader(l) = &mut self.role {
            while let Some(&(at, index)) = l.deadlines.front() {
                if at > now {
                    break;
                }
                l.deadlines.pop_front();
                due.push(index);
            }
        }
        let role_gen = self.role_gen;
        due.into_iter()
            .filter(|&index| self.expire(Ticket { role_gen, index }) == Expiry::CommittedAsync)
            .count()
    }

    /// Drops a registered write's waiter without answering it (its
    /// connection is gone); `true` if it was still waiting.
    pub fn forget(&mut self, ticket: Ticket) -> bool {
        if ticket.role_gen != self.role_gen {
            return false;
        }
        match &mut self.role {
            Role::Leader(l) => l.waiters.remove(&ticket.index).is_some(),
            _ => false,
        }
    }

    /// Writes registered and not answered yet.
    pub fn waiting_writes(&self) -> usize {
        match &self.role {
            Role::Leader(l) => l.waiters.len(),
            _ => 0,
        }
    }

    /// After a sync timeout with asynchronous fallback on: commit what is
    /// durable here without the followers.
    pub fn force_commit(&mut self, index: LogIndex) -> bool {
        let Role::Leader(l) = &self.role else {
            return false;
        };
        if !l.async_fallback {
            return false;
        }
        let candidate = index.min(self.durable);
        if candidate > self.commit && self.log.epoch_at(candidate) == Some(self.epoch) {
            self.set_commit(candidate);
        }
        self.commit >= index
    }

    /// Acknowledged followers and required ones, for `NotEnoughReplicas`.
    pub fn ack_count(&self, index: LogIndex) -> (u32, u32) {
        match &self.role {
            Role::Leader(l) => {
                let acked = l
                    .followers
                    .values()
                    .filter(|p| p.match_index >= index)
                    .count();
                (u32::try_from(acked).unwrap_or(u32::MAX), l.sync_replicas)
            }
            _ => (0, 0),
        }
    }

    /// As leader: how to start the stream of a follower that subscribed.
    ///
    /// # Errors
    /// `NotLeader` or `StaleEpoch` when this node does not lead at `epoch`.
    pub fn plan_stream(
        &self,
        epoch: Epoch,
        their_last: LogIndex,
        their_history: &[EpochStart],
    ) -> Result<(StreamPlan, u64), ErrorReply> {
        if !matches!(self.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        if epoch != self.epoch {
            return Err(ErrorReply::StaleEpoch {
                got: epoch,
                current: self.epoch,
            });
        }
        let prefix = self.log.common_prefix(their_last, their_history);
        // Entries up to `compact_to` are being dropped in steps: a follower
        // that needs them gets the snapshot rather than a stream cut short.
        let plan = if prefix < self.log.base_index().max(self.compact_to) {
            StreamPlan::Snapshot
        } else {
            StreamPlan::FromPrefix {
                prefix,
                prefix_epoch: self.log.epoch_at(prefix).unwrap_or_default(),
                prefix_crc: self.log.get(prefix).and_then(Entry::checksum),
            }
        };
        Ok((plan, self.role_gen))
    }

    /// As leader of `role_gen`: entries from `next` on and the commit index;
    /// `Ok(None)` when they were compacted away (the follower must resubscribe).
    ///
    /// # Errors
    /// `Superseded` when this node no longer leads that generation.
    pub fn entries_for(
        &self,
        role_gen: u64,
        next: LogIndex,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Option<(Vec<Entry>, LogIndex)>, StreamError> {
        if self.role_gen != role_gen || !matches!(self.role, Role::Leader(_)) {
            return Err(StreamError::Superseded);
        }
        Ok(self
            .log
            .entries_from(next, max_count, max_bytes)
            .map(|e| (e, self.commit)))
    }
}
