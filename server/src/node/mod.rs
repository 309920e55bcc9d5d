//! The replica's state machine: role, epoch, log, commit index and map, and
//! every rule that changes them. No I/O happens here: disk writes are queued
//! in an outbox that the WAL writer drains (one batch per fsync, which is
//! what makes group commit), and network tasks call in with events.
//!
//! Invariants:
//! - only entries up to `commit` are applied to the map, so no read ever sees
//!   a value a failover can take back;
//! - a leader commits an index only when it is durable locally, at least
//!   `sync_replicas` followers of its epoch acknowledged it, and the entry at
//!   that index is of the leader's own epoch (earlier entries commit with it);
//! - after the epoch moves on (promote, follow, fence), nothing of an older
//!   epoch is appended or acknowledged any more;
//! - one role per epoch: a replica leads an epoch only if it was promoted at
//!   it before taking any other role at it in this process's life, and never
//!   follows a second leader at an epoch (see "One leader per epoch" below);
//! - a follower whose log disagrees with its leader's at the point where
//!   their logs are said to agree stops (diverged) rather than merge.
//!
//! # One leader per epoch
//!
//! Log matching (two entries with the same index and epoch are the same
//! entry, with the same entries before them) is what lets a follower find
//! where its log and its leader's part from their epoch histories alone
//! ([`MemLog::common_prefix`]). It holds if every epoch has at most one
//! leader, and that leader never writes two different entries at one index:
//!
//! 1. An epoch names the coordinator that minted it (`term.coordinator`,
//!    see [`Epoch`]), and a coordinator sends `Promote` for at most one
//!    replica per epoch it mints. Two coordinators never share an epoch,
//!    however many run and whatever they believe.
//! 2. A replica refuses `Promote` at an epoch below its own, and at its own
//!    epoch unless a fence moved it there in this process's life and it has
//!    taken no role since ([`Node::promote`]). So a paused coordinator's
//!    late `Promote` meets a newer epoch, and a leader that crashed or
//!    stepped down never leads its old epoch again: after a crash it may
//!    have lost unsynced entries that a follower holds, and writing other
//!    entries at those indexes would break log matching.
//! 3. A leader appends only at the end of its own log and truncates nothing
//!    while it leads; a follower refuses `Follow` naming another leader at
//!    the epoch it follows or leads (an `EpochConflict`).
//!
//! Why a deposed leader cannot commit once a newer election has promoted:
//! the coordinator promotes only after `replicas - sync_replicas` replicas
//! answered its fence (each persisted the new epoch before answering and
//! refuses older streams from then on), and a commit at an older epoch needs
//! its leader plus `sync_replicas` followers of that epoch. The two sets add
//! up to more than the replicas, so they share one: it acknowledged the
//! write before its fence (after it, it refuses the old stream), hence the
//! fence answers show a log holding the write, and the coordinator promotes
//! the most up-to-date answer, `(last_epoch, last_index)` first. With one
//! leader per epoch that log holds every committed entry (Raft's leader
//! completeness argument), for any number of coordinators.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::{
    Entry, Epoch, EpochStart, ErrorReply, FollowerProgress, LeaderTerms, LogIndex, NodeReport,
    NodeRole, NodeStatus, Outcome, ReplicaId, Reply, RequestId, Resources, UnixMillis, WriteOp,
    DEFAULT_MAX_VALUE_LEN, MAX_SYNC_REPLICAS, MAX_SYNC_TIMEOUT_MS,
};

mod effects;
mod reads;
use effects::answer;
pub use effects::{Completion, Effects, Expiry, Proposal, Proposed, Signals, Ticket, WriteDone};
pub use reads::ReadIndex;

use crate::clock::Clock;
use crate::log::MemLog;
use crate::storage::snapshot::SnapshotMeta;
use crate::storage::store::Store;
use crate::storage::wal::Record;

/// Overlay entries folded into the store at each snapshot check (every
/// 100 ms), under the node lock: about a millisecond of work.
const FOLD_PER_SNAPSHOT_CHECK: usize = 16_384;

/// Log entries dropped from memory per step after a snapshot (at each
/// snapshot check, every 100 ms): a few milliseconds under the node lock,
/// and over 300,000 entries a second, faster than any write rate.
const COMPACT_PER_STEP: usize = 32_768;

/// The leader a follower pulls from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowTarget {
    /// Epoch of the leadership.
    pub epoch: Epoch,
    /// Leader's id.
    pub leader: ReplicaId,
    /// Leader's address.
    pub addr: String,
    /// Role generation this target belongs to; stream events of another
    /// generation are refused.
    pub role_gen: u64,
}

/// Work for the WAL writer, in the order it must happen on disk.
#[derive(Debug)]
pub enum WalCmd {
    /// Append records.
    Append(Vec<Record>),
    /// Drop entries after an index.
    TruncateAfter(LogIndex),
    /// Delete segments covered by a snapshot at this index.
    Compact(LogIndex),
    /// Throw the whole log away: a snapshot at this index replaced it.
    Reset(LogIndex),
}

/// Leader-only state.
#[derive(Debug)]
struct LeaderState {
    sync_replicas: u32,
    sync_timeout: Duration,
    async_fallback: bool,
    followers: HashMap<ReplicaId, Progress>,
    waiters: BTreeMap<LogIndex, Waiter>,
    /// Each key written by an entry not yet applied, and the newest such
    /// entry: the leader's proposed state, which commands are evaluated
    /// against (see `pending.rs`). Entries at or below the applied index
    /// are stale and ignored until trimmed.
    pending: HashMap<Bytes, LogIndex>,
    /// Each waiter's sync deadline, earliest first (in proposal order
    /// while the sync timeout stays the same). Entries of writes answered
    /// otherwise are dropped when a commit passes them, or when due.
    deadlines: VecDeque<(Instant, LogIndex)>,
    /// When entries were appended: the first index proposed at each
    /// instant, at most one per [`APPEND_TIME_STEP`], for how long each
    /// follower has lacked its oldest missing entry (`/metrics`).
    appended: VecDeque<(Instant, LogIndex)>,
}

/// The resolution of [`LeaderState::appended`].
const APPEND_TIME_STEP: Duration = Duration::from_millis(1);

/// Times kept in [`LeaderState::appended`] before those every follower has
/// passed are dropped (and never more than twice this).
const MAX_APPEND_TIMES: usize = 1024;

impl LeaderState {
    fn note_appended(&mut self, index: LogIndex, now: Instant) {
        if self
            .appended
            .back()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) < APPEND_TIME_STEP)
        {
            return;
        }
        self.appended.push_back((now, index));
        if self.appended.len() > MAX_APPEND_TIMES {
            let slowest = self
                .followers
                .values()
                .map(|p| p.match_index)
                .min()
                .unwrap_or(index);
            // Keep the newest time at or before the slowest follower's
            // first missing entry.
            while self
                .appended
                .get(1)
                .is_some_and(|&(_, i)| i <= slowest.next())
            {
                self.appended.pop_front();
            }
            while self.appended.len() > 2 * MAX_APPEND_TIMES {
                self.appended.pop_front();
            }
        }
    }

    /// How long ago the entry after `matched` was appended, as far as the
    /// times kept tell (at least the oldest's age when it is older).
    fn missing_for(&self, matched: LogIndex, now: Instant) -> Option<Duration> {
        let first_missing = matched.next();
        let at = self.appended.partition_point(|&(_, i)| i <= first_missing);
        let (appended, _) = self.appended.get(at.saturating_sub(1))?;
        Some(now.saturating_duration_since(*appended))
    }
}

/// How far one follower's stream is behind, as its leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLag {
    /// The follower.
    pub follower: ReplicaId,
    /// Entries of the leader's log it has not acknowledged.
    pub entries: u64,
    /// How long ago the oldest of them was appended (zero when none;
    /// `None` when no time is known for it).
    pub behind_for: Option<Duration>,
    /// Whether its stream is connected.
    pub connected: bool,
}

/// A registered write: where its answer goes and what it answers once its
/// entry commits.
#[derive(Debug)]
struct Waiter {
    completion: Completion,
    answer: Answer,
}

/// What a waiter answers on commit.
#[derive(Debug)]
enum Answer {
    /// `Written` with the index (a plain `Set` or `Delete`).
    Written,
    /// A command's outcome, with the index filled in.
    Outcome(Outcome),
    /// A command's error that was read from uncommitted state, held back
    /// until that state committed.
    Error(ErrorReply),
}

impl Answer {
    fn reply(self, index: LogIndex) -> Reply {
        match self {
            Answer::Written => Reply::Written { index },
            Answer::Outcome(outcome) => Reply::Outcome(Outcome { index, ..outcome }),
            Answer::Error(e) => Reply::Error(e),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    match_index: LogIndex,
    streams: u32,
    /// The highest leadership-confirmation round it answered (see `reads`).
    confirmed: u64,
}

#[derive(Debug)]
enum Role {
    Idle,
    Leader(LeaderState),
    Follower(FollowTarget),
}

/// Settings of a leadership, from `Promote`.
#[derive(Debug, Clone, Copy)]
pub struct LeaderSettings {
    /// Followers whose acknowledgement a commit needs.
    pub sync_replicas: u32,
    /// How long a write waits for them.
    pub sync_timeout: Duration,
    /// Whether to commit without them after the timeout.
    pub async_fallback: bool,
}

impl LeaderSettings {
    /// Checks the settings a `Promote` carries against the protocol's
    /// bounds ([`MAX_SYNC_REPLICAS`], [`MAX_SYNC_TIMEOUT_MS`]).
    ///
    /// # Errors
    /// `Invalid`, naming the value and its bound.
    pub fn check(&self) -> Result<(), ErrorReply> {
        if self.sync_replicas > MAX_SYNC_REPLICAS {
            return Err(ErrorReply::Invalid {
                reason: format!(
                    "sync_replicas {} is above the most a replica accepts ({MAX_SYNC_REPLICAS})",
                    self.sync_replicas
                ),
            });
        }
        if self.sync_timeout > Duration::from_millis(MAX_SYNC_TIMEOUT_MS) {
            return Err(ErrorReply::Invalid {
                reason: format!(
                    "a sync timeout of {} ms is above the most a replica accepts \
                     ({MAX_SYNC_TIMEOUT_MS} ms)",
                    self.sync_timeout.as_millis()
                ),
            });
        }
        Ok(())
    }
}

/// Why a replication event was refused; the stream is closed on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The role or epoch changed since the stream started.
    #[error("stream superseded by a newer role or epoch")]
    Superseded,
    /// The peer sent something inconsistent with our log.
    #[error("inconsistent stream: {0}")]
    Inconsistent(String),
    /// Our log and the leader's disagree where the protocol says they
    /// cannot: this replica stopped (see [`Node::diverged`]).
    #[error("log diverged from the leader's: {0}")]
    Diverged(String),
    /// The disk has no room for the entries: the stream ends, and is taken
    /// up again once the WAL writer finds room (see [`Node::disk_full`]).
    #[error("no room on disk for the leader's entries: {0}")]
    DiskFull(String),
}

/// How a leader starts a follower's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPlan {
    /// Send `StreamFrom` with these and entries after `prefix`.
    FromPrefix {
        /// Common prefix of both logs.
        prefix: LogIndex,
        /// The epoch of the leader's entry at `prefix`.
        prefix_epoch: Epoch,
        /// The checksum of the leader's entry at `prefix`, if held in memory.
        prefix_crc: Option<u32>,
    },
    /// The follower needs entries that only the snapshot holds.
    Snapshot,
}

/// Everything a new snapshot needs, taken under the lock.
#[derive(Debug)]
pub struct SnapshotJob {
    /// Last index covered, its epoch and the history up to it.
    pub meta: SnapshotMeta,
    /// The map at that index.
    pub store: Store,
}

/// The replica state machine. Callers hold it behind a mutex that is never
/// held across an `.await`.
#[derive(Debug)]
pub struct Node {
    id: ReplicaId,
    addr: String,
    epoch: Epoch,
    role: Role,
    role_gen: u64,
    log: MemLog,
    commit: LogIndex,
    applied: LogIndex,
    store: Store,
    /// `--max-memory`: the bytes the store may grow to through writes this
    /// node leads (see `memory.rs`); `None`: no limit.
    memory_limit: Option<u64>,
    durable: LogIndex,
    generation: u64,
    outbox: Vec<WalCmd>,
    recorded_commit: LogIndex,
    failed: Option<String>,
    snapshot_running: bool,
    /// The in-memory log is dropped up to here, a step at a time.
    compact_to: LogIndex,
    signals: Signals,
    /// What the changes since the last flush ask of the tasks around.
    effects: Effects,
    /// The epoch a fence moved this node to, while it has taken no role at
    /// it since: the only current epoch it may still be promoted at.
    promotable: Option<Epoch>,
    /// The highest epoch known to be on disk: no role is taken at a higher
    /// one (see [`Node::epoch_to_persist`]).
    persisted: Epoch,
    /// Set when the log was found inconsistent with the leader's in a way
    /// the protocol rules out; the node then serves nothing.
    diverged: Option<String>,
    /// Set while the WAL writer cannot write for lack of disk space: new
    /// writes are refused with `DiskFull`, reads go on, and the writer
    /// clears it once its retry succeeds.
    disk_full: Option<String>,
    /// Set while something besides the log found no room on disk (the
    /// epoch file, the leader's snapshot), with the free bytes it needs;
    /// reported as a full disk, but blocks nothing by itself: what needed
    /// the room was refused, and is asked for again.
    no_room: Option<(String, u64)>,
    /// The wall clock expiries are judged by.
    clock: Clock,
    /// Longest value a command may create (an `Append`).
    max_value_len: usize,
    /// The applied store's keys that expire, by time: what the leader's
    /// sweep deletes first (see `ttl.rs`).
    expiring: BTreeSet<(UnixMillis, Bytes)>,
    /// The last round of leadership confirmation asked for (see `reads`):
    /// only grows, across leaderships too.
    lead_rounds: u64,
}

/// What recovery found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// Persisted epoch.
    pub epoch: Epoch,
    /// The log (after the snapshot base).
    pub log: MemLog,
    /// Map as of the snapshot.
    pub store: Store,
    /// Commit index recorded in the log.
    pub commit: LogIndex,
}

impl Node {
    /// A node over recovered state. Entries up to the recorded commit index
    /// are applied; the rest is a tentative tail that a leader will either
    /// confirm or truncate.
    pub fn new(id: ReplicaId, addr: String, recovered: Recovered, signals: Signals) -> Node {
        let base = recovered.log.base_index();
        let last = recovered.log.last_index();
        let mut node = Node {
            id,
            addr,
            epoch: recovered.epoch,
            role: Role::Idle,
            role_gen: 0,
            commit: base,
            applied: base,
            store: recovered.store,
            memory_limit: None,
            durable: last,
            generation: 0,
            outbox: Vec::new(),
            recorded_commit: recovered.commit,
            failed: None,
            snapshot_running: false,
            compact_to: LogIndex(0),
            log: recovered.log,
            signals,
            effects: Effects::default(),
            promotable: None,
            persisted: recovered.epoch,
            diverged: None,
            disk_full: None,
            no_room: None,
            clock: Clock::system(),
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            expiring: BTreeSet::new(),
            lead_rounds: 0,
        };
        node.rebuild_expiry_index();
        let commit = recovered.commit.min(last).max(base);
        node.set_commit(commit);
        node.effects.durable = Some(last);
        node
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The value of `key` for a client read, or `None` while this node leads
    /// but has not yet committed an entry of its own epoch.
    ///
    /// A new leader may have recovered a commit index that lags what was
    /// acknowledged (the index is recorded lazily), so until its promotion
    /// no-op commits, its map can miss acknowledged writes; reading it then
    /// would break read-your-writes through the leader (Raft holds reads for
    /// the same reason). Followers answer at once: their reads may be stale
    /// by design.
    ///
    /// A key whose expiry is at or before this replica's clock reads as
    /// absent, on every replica, whether or not its delete was applied yet.
    pub fn read(&self, key: &[u8]) -> Option<Option<Bytes>> {
        if !self.reads_ready() {
            return None;
        }
        if self.store.has_expiries() {
            return Some(self.store.get_live(key, self.clock.now()));
        }
        Some(self.store.get(key))
    }

    /// Whether client reads may be answered: not while leading before an
    /// entry of this epoch committed (see [`Node::read`]).
    fn reads_ready(&self) -> bool {
        !matches!(self.role, Role::Leader(_)) || self.log.epoch_at(self.commit) == Some(self.epoch)
    }

    /// The error a non-leader answers writes with.
    fn not_leader(&self) -> ErrorReply {
        let leader = match &self.role {
            Role::Follower(t) => Some(t.addr.clone()),
            Role::Leader(_) => Some(self.addr.clone()),
            Role::Idle => None,
        };
        ErrorReply::NotLeader { leader }
    }

    /// What the changes since the last flush asked for, taken (for tests,
    /// and for callers that carry them out elsewhere).
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    /// Carries out what the changes since the last flush asked for (see
    /// [`Effects::apply`]); returns whether the WAL writer has work.
    pub fn flush_effects(&mut self) -> bool {
        let effects = self.take_effects();
        let outbox = effects.outbox;
        if !effects.is_empty() {
            effects.apply(&self.signals);
        }
        outbox
    }

    /// Tells the follower streams (and held reads) that the log or the
    /// commit index moved.
    fn signal_progress(&mut self) {
        self.effects.progress = true;
    }

    /// Tells the WAL writer there is work queued.
    fn signal_outbox(&mut self) {
        self.effects.outbox = true;
    }

    /// Queues one WAL record, into the batch already queued if there is one
    /// (no vector allocated per write).
    fn push_record(&mut self, record: Record) {
        match self.outbox.last_mut() {
            Some(WalCmd::Append(records)) => records.push(record),
            _ => self.outbox.push(WalCmd::Append(vec![record])),
        }
        self.signal_outbox();
    }

    fn push_wal(&mut self, cmd: WalCmd) {
        match (self.outbox.last_mut(), cmd) {
            (Some(WalCmd::Append(records)), WalCmd::Append(more)) => records.extend(more),
            (_, cmd) => self.outbox.push(cmd),
        }
        self.signal_outbox();
    }

    /// Gives the writer everything queued, plus the generation and last index
    /// the disk will match once it is written.
    pub fn take_outbox(&mut self) -> (Vec<WalCmd>, u64, LogIndex) {
        let mut cmds = std::mem::take(&mut self.outbox);
        if !cmds.is_empty() && self.commit > self.recorded_commit {
            cmds.push(WalCmd::Append(vec![Record::Commit(self.commit)]));
            self.recorded_commit = self.commit;
        }
        (cmds, self.generation, self.log.last_index())
    }

    /// Whether the writer has work.
    pub fn outbox_is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// The writer made the log durable up to `index` as of `generation`.
    pub fn on_durable(&mut self, generation: u64, index: LogIndex) {
        if generation != self.generation {
            return;
        }
        let index = index.min(self.log.last_index());
        if index > self.durable {
            self.durable = index;
            self.effects.durable = Some(index);
            self.advance_commit();
        }
    }

    /// The disk failed: stop acknowledging anything and fail every waiter.
    /// Waiting writes are `Indeterminate`, not `Storage`: they are in the
    /// log and may already be on a follower, which can commit them after a
    /// failover. New writes are refused with `Storage` (never appended).
    pub fn on_storage_failure(&mut self, reason: String) {
        let settled = Ticket {
            role_gen: self.role_gen,
            index: LogIndex(u64::MAX),
        };
        if let Role::Leader(l) = &mut self.role {
            for (_, waiter) in std::mem::take(&mut l.waiters) {
                let reply = Reply::Error(ErrorReply::Indeterminate {
                    reason: format!("the leader's disk failed with the write in flight: {reason}"),
                });
                answer(&mut self.effects, waiter.completion, reply, settled);
            }
        }
        self.failed = Some(reason);
    }

    fn set_commit(&mut self, commit: LogIndex) {
        if commit <= self.commit {
            return;
        }
        self.commit = commit;
        while self.applied < self.commit {
            let next = self.applied.next();
            match self.log.get(next) {
                Some(entry) => ttl::apply(&mut self.store, &mut self.expiring, &entry.op),
                None => break,
            }
            self.applied = next;
        }
        if let Role::Leader(l) = &mut self.role {
            // Committed writes need no deadline any more.
            while l
                .deadlines
                .front()
                .is_some_and(|&(_, index)| index <= commit)
            {
                l.deadlines.pop_front();
            }
            let settled = Ticket {
                role_gen: self.role_gen,
                index: commit,
            };
            while let Some(entry) = l.waiters.first_entry() {
                if *entry.key() > commit {
                    break;
                }
                let (index, waiter) = entry.remove_entry();
                answer(
                    &mut self.effects,
                    waiter.completion,
                    waiter.answer.reply(index),
                    settled,
                );
            }
        }
        self.signal_progress();
    }

    /// The WAL writer found the disk full: writes are refused with
    /// `DiskFull` (never appended) until [`Node::on_disk_room`]; reads of
    /// what was committed go on, and writes already in flight wait for the
    /// writer's retry like any write waits for its disk.
    pub fn on_disk_full(&mut self, reason: String) {
        self.disk_full = Some(reason);
    }

    /// The WAL writer wrote what the full disk had refused: writes are
    /// accepted again.
    pub fn on_disk_room(&mut self) {
        self.disk_full = None;
    }

    /// Records whether the disk had room for something besides the log (an
    /// epoch file, the leader's snapshot), with why and the free bytes it
    /// needs (`None`: it had room, or has it now); returns whether that
    /// changed, so that callers log once per episode.
    pub fn on_no_room(&mut self, lacking: Option<(String, u64)>) -> bool {
        let changed = self.no_room.is_some() != lacking.is_some();
        self.no_room = lacking;
        changed
    }

    /// The free bytes the last refused non-log write needed, while the disk
    /// is taken to have no room (see [`crate::room`]).
    pub fn no_room_needs(&self) -> Option<u64> {
        self.no_room.as_ref().map(|&(_, needed)| needed)
    }

    /// Why writes are refused for lack of disk space, while they are.
    pub fn disk_full(&self) -> Option<&str> {
        self.disk_full.as_deref()
    }

    /// Durable last index.
    pub fn durable(&self) -> LogIndex {
        self.durable
    }

    /// Commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
}

mod compaction;
pub mod evaluate;
mod follower;
pub mod keyspace;
mod leader;
mod memory;
mod pending;
mod report;
mod roles;
mod ttl;

pub use roles::{MAX_TERM, TERM_STEP};

#[cfg(test)]
mod tests;
