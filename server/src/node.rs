//! The replica's state machine: role, epoch, log, commit index and map, and
//! every rule that changes them. No I/O happens here: disk writes are queued
//! in an outbox that the WAL writer thread drains (one batch per fsync, which
//! is what makes group commit), and network tasks call in with events.
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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use semikv_protocol::{
    Entry, Epoch, EpochStart, ErrorReply, FollowerProgress, LogIndex, NodeRole, NodeStatus,
    ReplicaId, Reply, RequestId, Response, WriteOp,
};
use tokio::sync::{mpsc, watch};

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

/// One proposed write, for as long as its leadership lasts: the role
/// generation it was proposed in and its log index. Within a generation an
/// index is proposed at most once, so a ticket names one waiter. Ordered by
/// generation, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// Role generation of the leadership that proposed it.
    pub role_gen: u64,
    /// Its log index.
    pub index: LogIndex,
}

/// Where a write's answer goes: a connection's completion queue and the
/// request it answers.
///
/// The queue must have room for every write its connection has registered
/// and not yet received back: the node pushes with `try_send` under its
/// lock and never waits.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The connection's completion queue.
    pub to: mpsc::Sender<WriteDone>,
    /// The request this write answers.
    pub id: RequestId,
}

/// A write's answer, as pushed to its connection's completion queue. Every
/// registered write gets exactly one, unless its connection forgot it
/// ([`Node::forget`]).
#[derive(Debug)]
pub struct WriteDone {
    /// The answer for the client.
    pub response: Response,
    /// Every write whose ticket is at most this one had its answer pushed by
    /// the time this one was: the connection may stop tracking them.
    pub settled: Ticket,
}

/// A registered write: what [`Node::propose`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// Names the write's waiter until it is answered.
    pub ticket: Ticket,
    /// How long it may wait for its acknowledgements before
    /// [`Node::expire`] is due.
    pub sync_timeout: Duration,
}

/// What [`Node::expire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing: the write was already answered (or its leadership is over,
    /// which answered it).
    AlreadyAnswered,
    /// Committed without the sync acknowledgements (async fallback is on);
    /// `Written` was pushed.
    CommittedAsync,
    /// `NotEnoughReplicas` was pushed.
    NotEnoughReplicas,
}

/// Pushes `reply` to the write's connection. Room is guaranteed by the
/// connection (see [`Completion`]); a closed queue means the connection is
/// gone and nobody is left to tell.
fn deliver(completion: Completion, reply: Reply, settled: Ticket) {
    let pushed = completion.to.try_send(WriteDone {
        response: Response {
            id: completion.id,
            reply,
        },
        settled,
    });
    debug_assert!(
        !matches!(pushed, Err(mpsc::error::TrySendError::Full(_))),
        "a completion queue had no room for a write it registered"
    );
}

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

/// Work for the WAL writer thread, in the order it must happen on disk.
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
    waiters: BTreeMap<LogIndex, Completion>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    match_index: LogIndex,
    streams: u32,
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

/// Channels that wake the async tasks when the node changes.
#[derive(Debug)]
pub struct Signals {
    /// Bumped whenever entries are appended or the commit index moves.
    pub progress: watch::Sender<u64>,
    /// The durable last index (followers acknowledge it).
    pub durable: watch::Sender<LogIndex>,
    /// The leader to follow, if any.
    pub target: watch::Sender<Option<FollowTarget>>,
    /// Bumped when the outbox has work for the writer.
    pub outbox: watch::Sender<u64>,
}

impl Signals {
    /// Fresh channels.
    pub fn new() -> Signals {
        Signals {
            progress: watch::Sender::new(0),
            durable: watch::Sender::new(LogIndex(0)),
            target: watch::Sender::new(None),
            outbox: watch::Sender::new(0),
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
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
    durable: LogIndex,
    generation: u64,
    outbox: Vec<WalCmd>,
    recorded_commit: LogIndex,
    failed: Option<String>,
    snapshot_running: bool,
    /// The in-memory log is dropped up to here, a step at a time.
    compact_to: LogIndex,
    signals: Signals,
    /// While [`Node::propose_batch`] runs, the progress and outbox signals
    /// are noted here and sent once at its end.
    held: Option<HeldSignals>,
    /// The epoch a fence moved this node to, while it has taken no role at
    /// it since: the only current epoch it may still be promoted at.
    promotable: Option<Epoch>,
    /// Set when the log was found inconsistent with the leader's in a way
    /// the protocol rules out; the node then serves nothing.
    diverged: Option<String>,
}

/// Signals owed while they are held back: one wake-up for a batch of
/// writes instead of two per write.
#[derive(Debug, Default, Clone, Copy)]
struct HeldSignals {
    progress: bool,
    outbox: bool,
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
            durable: last,
            generation: 0,
            outbox: Vec::new(),
            recorded_commit: recovered.commit,
            failed: None,
            snapshot_running: false,
            compact_to: LogIndex(0),
            log: recovered.log,
            signals,
            held: None,
            promotable: None,
            diverged: None,
        };
        let commit = recovered.commit.min(last).max(base);
        node.set_commit(commit);
        node.signals.durable.send_replace(last);
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
    pub fn read(&self, key: &[u8]) -> Option<Option<Bytes>> {
        if matches!(self.role, Role::Leader(_))
            && self.log.epoch_at(self.commit) != Some(self.epoch)
        {
            return None;
        }
        Some(self.store.get(key))
    }

    /// This replica's status report.
    pub fn status(&self) -> NodeStatus {
        let (role, leader, followers) = match &self.role {
            Role::Idle => (NodeRole::Idle, None, Vec::new()),
            Role::Follower(t) => (NodeRole::Follower, Some(t.addr.clone()), Vec::new()),
            Role::Leader(l) => {
                let mut followers: Vec<_> = l
                    .followers
                    .iter()
                    .map(|(id, p)| FollowerProgress {
                        id: *id,
                        match_index: p.match_index,
                        connected: p.streams > 0,
                    })
                    .collect();
                followers.sort_by_key(|f| f.id);
                (NodeRole::Leader, Some(self.addr.clone()), followers)
            }
        };
        NodeStatus {
            id: self.id,
            role,
            epoch: self.epoch,
            last_index: self.log.last_index(),
            last_epoch: self.log.last_epoch(),
            commit_index: self.commit,
            applied_index: self.applied,
            leader,
            followers,
        }
    }

    /// The answer to a `Status` request: this replica's status, or
    /// `Diverged` once it stopped serving (so that balancers take it out of
    /// every rotation at once).
    pub fn status_reply(&self) -> Reply {
        match self.check_serving() {
            Ok(()) => Reply::Node(self.status()),
            Err(refused) => Reply::Error(refused),
        }
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
    /// `Storage` if the disk fails, or what [`Node::expire`] decides; unless
    /// [`Node::forget`] drops it first. Nothing is registered on error.
    ///
    /// # Errors
    /// `NotLeader` on a non-leader; `Storage` once the disk has failed;
    /// `Diverged` once diverged.
    pub fn propose(&mut self, op: WriteOp, completion: Completion) -> Result<Proposed, ErrorReply> {
        self.check_serving()?;
        if let Some(reason) = &self.failed {
            return Err(ErrorReply::Storage {
                reason: reason.clone(),
            });
        }
        if !matches!(self.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        let index = self.append_local(op);
        let mut sync_timeout = Duration::ZERO;
        if let Role::Leader(l) = &mut self.role {
            l.waiters.insert(index, completion);
            sync_timeout = l.sync_timeout;
        }
        self.advance_commit();
        Ok(Proposed {
            ticket: Ticket {
                role_gen: self.role_gen,
                index,
            },
            sync_timeout,
        })
    }

    /// Proposes each write of `writes` as [`Node::propose`] does, telling
    /// `answer` the outcome under the request's id, and wakes the WAL writer
    /// and the follower streams once for the whole batch rather than twice
    /// per write.
    pub fn propose_batch(
        &mut self,
        writes: impl IntoIterator<Item = (WriteOp, Completion)>,
        mut answer: impl FnMut(RequestId, Result<Proposed, ErrorReply>),
    ) {
        /// Sends what was held when dropped, so a panic mid-batch (the
        /// node's lock recovers from poisoning) cannot leave every later
        /// signal held back.
        struct Release<'a>(&'a mut Node);

        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.release_signals();
            }
        }

        self.held = Some(HeldSignals::default());
        let node = Release(self);
        for (op, completion) in writes {
            let id = completion.id;
            answer(id, node.0.propose(op, completion));
        }
    }

    /// Sends the signals [`Node::propose_batch`] held back, once each.
    fn release_signals(&mut self) {
        if let Some(held) = self.held.take() {
            if held.outbox {
                self.signal_outbox();
            }
            if held.progress {
                self.signal_progress();
            }
        }
    }

    /// Tells the follower streams (and held reads) that the log or the
    /// commit index moved.
    fn signal_progress(&mut self) {
        match &mut self.held {
            Some(held) => held.progress = true,
            None => self.signals.progress.send_modify(|p| *p += 1),
        }
    }

    /// Tells the WAL writer there is work queued.
    fn signal_outbox(&mut self) {
        match &mut self.held {
            Some(held) => held.outbox = true,
            None => self.signals.outbox.send_modify(|n| *n += 1),
        }
    }

    fn append_local(&mut self, op: WriteOp) -> LogIndex {
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
        self.push_record(Record::Entry(entry));
        self.signal_progress();
        index
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
            self.signals.durable.send_replace(index);
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
            for (_, completion) in std::mem::take(&mut l.waiters) {
                let reply = Reply::Error(ErrorReply::Indeterminate {
                    reason: format!("the leader's disk failed with the write in flight: {reason}"),
                });
                deliver(completion, reply, settled);
            }
        }
        self.failed = Some(reason);
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

    fn advance_commit(&mut self) {
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
            if let Some(completion) = l.waiters.remove(&ticket.index) {
                let reply = Reply::Error(ErrorReply::NotEnoughReplicas { acked, required });
                // Says nothing about other writes of this generation.
                let settled = Ticket {
                    role_gen: self.role_gen,
                    index: LogIndex(0),
                };
                deliver(completion, reply, settled);
            }
        }
        Expiry::NotEnoughReplicas
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

    fn set_commit(&mut self, commit: LogIndex) {
        if commit <= self.commit {
            return;
        }
        self.commit = commit;
        while self.applied < self.commit {
            let next = self.applied.next();
            match self.log.get(next) {
                Some(entry) => self.store.apply(&entry.op),
                None => break,
            }
            self.applied = next;
        }
        if let Role::Leader(l) = &mut self.role {
            let settled = Ticket {
                role_gen: self.role_gen,
                index: commit,
            };
            while let Some(entry) = l.waiters.first_entry() {
                if *entry.key() > commit {
                    break;
                }
                let (index, completion) = entry.remove_entry();
                deliver(completion, Reply::Written { index }, settled);
            }
        }
        self.signal_progress();
    }

    /// Checks that an admin message at `epoch` may be acted on, without
    /// changing anything (the epoch is persisted between check and apply).
    ///
    /// # Errors
    /// `StaleEpoch` if `epoch` is below the current one.
    pub fn check_epoch(&self, epoch: Epoch) -> Result<(), ErrorReply> {
        if epoch < self.epoch {
            return Err(ErrorReply::StaleEpoch {
                got: epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }

    fn enter_epoch(&mut self, epoch: Epoch, role: Role, reason: &str) {
        if let Role::Leader(l) = &mut self.role {
            let settled = Ticket {
                role_gen: self.role_gen,
                index: LogIndex(u64::MAX),
            };
            for (_, completion) in std::mem::take(&mut l.waiters) {
                let reply = Reply::Error(ErrorReply::Indeterminate {
                    reason: format!("leader stepped down: {reason}"),
                });
                deliver(completion, reply, settled);
            }
        }
        self.epoch = epoch;
        self.role = role;
        self.role_gen += 1;
        self.promotable = None;
        let target = match &mut self.role {
            Role::Follower(t) => {
                t.role_gen = self.role_gen;
                Some(t.clone())
            }
            _ => None,
        };
        self.signals.target.send_replace(target);
        self.signal_progress();
    }

    /// Becomes leader at `epoch` (already persisted). Appends a no-op of the
    /// new epoch so the inherited tail can commit. Promoted again at the
    /// epoch it leads, it only takes the new settings (a coordinator that
    /// lost the first answer).
    ///
    /// # Errors
    /// `StaleEpoch` for an older epoch; `EpochConflict` at its own epoch
    /// when it follows someone at it, or when no fence moved it there in
    /// this process's life (it restarted in that epoch, or already left a
    /// role at it): it may have led the epoch before and lost unsynced
    /// entries a follower holds. `Diverged` once diverged.
    pub fn promote(&mut self, epoch: Epoch, settings: LeaderSettings) -> Result<(), ErrorReply> {
        self.check_admin(epoch)?;
        if epoch == self.epoch {
            match &mut self.role {
                Role::Leader(l) => {
                    l.sync_replicas = settings.sync_replicas;
                    l.sync_timeout = settings.sync_timeout;
                    l.async_fallback = settings.async_fallback;
                    return Ok(());
                }
                Role::Follower(t) => {
                    let reason = format!("this replica follows replica {} at this epoch", t.leader);
                    return Err(self.conflict(reason));
                }
                Role::Idle if self.promotable != Some(epoch) => {
                    return Err(self.conflict(
                        "this replica took a role at this epoch before (or restarted in it) and \
                         cannot lead it now; elect at a new epoch"
                            .to_string(),
                    ));
                }
                Role::Idle => {}
            }
        }
        let state = LeaderState {
            sync_replicas: settings.sync_replicas,
            sync_timeout: settings.sync_timeout,
            async_fallback: settings.async_fallback,
            followers: HashMap::new(),
            waiters: BTreeMap::new(),
        };
        self.enter_epoch(epoch, Role::Leader(state), "promoted again");
        self.append_local(WriteOp::Noop);
        self.advance_commit();
        Ok(())
    }

    /// Follows `leader` at `epoch` (already persisted). Told again to follow
    /// the same leader at its epoch, it keeps its stream (or reconnects to
    /// the new address given).
    ///
    /// # Errors
    /// `StaleEpoch` for an older epoch; `EpochConflict` at its own epoch when
    /// it leads that epoch or follows another leader at it (an epoch has one
    /// leader, so one of the two coordinators is wrong); `Diverged` once
    /// diverged.
    pub fn follow(
        &mut self,
        epoch: Epoch,
        leader: ReplicaId,
        addr: String,
    ) -> Result<(), ErrorReply> {
        self.check_admin(epoch)?;
        if epoch == self.epoch {
            match &self.role {
                Role::Leader(_) => {
                    return Err(self.conflict("this replica leads this epoch itself".to_string()));
                }
                Role::Follower(t) if t.leader == leader && t.addr == addr => return Ok(()),
                Role::Follower(t) if t.leader != leader => {
                    return Err(self.conflict(format!(
                        "this replica follows replica {} at this epoch, not replica {leader}",
                        t.leader
                    )));
                }
                Role::Follower(_) | Role::Idle => {}
            }
        }
        let target = FollowTarget {
            epoch,
            leader,
            addr,
            role_gen: 0,
        };
        self.enter_epoch(epoch, Role::Follower(target), "told to follow");
        Ok(())
    }

    /// Moves to `epoch` (already persisted) and stops leading or following.
    /// A fence at the current epoch changes nothing.
    ///
    /// # Errors
    /// `StaleEpoch` for an older epoch; `Diverged` once diverged.
    pub fn fence(&mut self, epoch: Epoch) -> Result<(), ErrorReply> {
        self.check_admin(epoch)?;
        if epoch > self.epoch {
            self.enter_epoch(epoch, Role::Idle, "fenced");
            self.promotable = Some(epoch);
        }
        Ok(())
    }

    /// Checks that an admin message at `epoch` may be acted on, without
    /// changing anything (the epoch is persisted between check and apply).
    ///
    /// # Errors
    /// `Diverged` once diverged; `StaleEpoch` below the current epoch.
    pub fn check_admin(&self, epoch: Epoch) -> Result<(), ErrorReply> {
        self.check_serving()?;
        self.check_epoch(epoch)
    }

    fn conflict(&self, reason: String) -> ErrorReply {
        ErrorReply::EpochConflict {
            epoch: self.epoch,
            reason,
        }
    }

    /// Whether this node may serve anything.
    ///
    /// # Errors
    /// `Diverged` once its log was found inconsistent with a leader's.
    pub fn check_serving(&self) -> Result<(), ErrorReply> {
        match &self.diverged {
            Some(reason) => Err(ErrorReply::Diverged {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Why this node stopped serving, if its log diverged from a leader's.
    pub fn diverged(&self) -> Option<&str> {
        self.diverged.as_deref()
    }

    /// Stops for good (until restarted): stops following, refuses every
    /// request from now on, and returns the error that says why.
    fn diverge(&mut self, reason: String) -> StreamError {
        self.enter_epoch(self.epoch, Role::Idle, "diverged");
        self.diverged = Some(reason.clone());
        StreamError::Diverged(reason)
    }

    /// What a follower subscribes with: its epoch, last index and epoch, and
    /// history, for the target it follows now.
    pub fn subscribe_info(&self) -> (Epoch, LogIndex, Epoch, Vec<EpochStart>) {
        (
            self.epoch,
            self.log.last_index(),
            self.log.last_epoch(),
            self.log.history().to_vec(),
        )
    }

    fn check_follower(&self, role_gen: u64, epoch: Epoch) -> Result<(), StreamError> {
        match &self.role {
            Role::Follower(t)
                if self.role_gen == role_gen && t.epoch == epoch && self.epoch == epoch =>
            {
                Ok(())
            }
            _ => Err(StreamError::Superseded),
        }
    }

    /// The leader says the logs agree up to `prefix`, where its entry has
    /// `prefix_epoch` and checksum `prefix_crc`: drop everything after.
    ///
    /// # Errors
    /// `Superseded` if the role moved on; `Inconsistent` if `prefix` is past
    /// our log; `Diverged` (and the node stops) if our entry at `prefix` is
    /// not the leader's, or `prefix` would cut a committed entry: with one
    /// leader per epoch neither can happen, and merging would corrupt data.
    pub fn on_stream_from(
        &mut self,
        role_gen: u64,
        epoch: Epoch,
        prefix: LogIndex,
        prefix_epoch: Epoch,
        prefix_crc: Option<u32>,
    ) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)?;
        if prefix > self.log.last_index() {
            return Err(StreamError::Inconsistent(format!(
                "prefix {prefix} is past our last index {}",
                self.log.last_index()
            )));
        }
        if prefix < self.commit {
            return Err(self.diverge(format!(
                "the leader of epoch {epoch} would truncate committed entries: our logs agree \
                 only up to index {prefix}, but index {} is committed here",
                self.commit
            )));
        }
        // Below the base only the epoch is known (and `prefix >= commit >=
        // base` here, so the base is as low as it gets).
        let ours = self.log.epoch_at(prefix);
        if ours != Some(prefix_epoch) {
            return Err(self.diverge(format!(
                "at index {prefix}, where the leader of epoch {epoch} says our logs agree, our \
                 entry is of epoch {} and the leader's of epoch {prefix_epoch}",
                ours.unwrap_or_default()
            )));
        }
        let our_crc = self.log.get(prefix).and_then(Entry::checksum);
        if let (Some(theirs), Some(ours)) = (prefix_crc, our_crc) {
            if theirs != ours {
                return Err(self.diverge(format!(
                    "at index {prefix} (epoch {prefix_epoch}) our entry differs from the leader's \
                     (checksum {ours:08x}, the leader's {theirs:08x}): two entries of one \
                     index and epoch"
                )));
            }
        }
        if prefix < self.log.last_index() {
            self.log.truncate_after(prefix);
            self.generation += 1;
            self.durable = self.durable.min(prefix);
            self.signals.durable.send_replace(self.durable);
            self.push_wal(WalCmd::TruncateAfter(prefix));
        }
        Ok(())
    }

    /// A batch from the leader.
    ///
    /// # Errors
    /// `Superseded` if the role moved on; `Inconsistent` if the batch does not
    /// continue our log.
    pub fn on_entries(
        &mut self,
        role_gen: u64,
        epoch: Epoch,
        prev_index: LogIndex,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)?;
        if prev_index != self.log.last_index() {
            return Err(StreamError::Inconsistent(format!(
                "batch after {prev_index} but our log ends at {}",
                self.log.last_index()
            )));
        }
        if !entries.is_empty() {
            let mut records = Vec::with_capacity(entries.len());
            for entry in entries {
                if entry.epoch > epoch {
                    return Err(StreamError::Inconsistent(format!(
                        "entry of epoch {} from a leader of epoch {epoch}",
                        entry.epoch
                    )));
                }
                self.log
                    .append(entry.clone())
                    .map_err(|e| StreamError::Inconsistent(e.to_string()))?;
                records.push(Record::Entry(entry));
            }
            self.push_wal(WalCmd::Append(records));
            self.signal_progress();
        }
        let commit = leader_commit.min(self.log.last_index());
        self.set_commit(commit);
        Ok(())
    }

    /// The durable index a follower may acknowledge for `role_gen`/`epoch`.
    ///
    /// # Errors
    /// `Superseded` if the role moved on.
    pub fn ackable(&self, role_gen: u64, epoch: Epoch) -> Result<LogIndex, StreamError> {
        self.check_follower(role_gen, epoch)?;
        Ok(self.durable)
    }

    /// A snapshot from the leader replaced our state (already durable on disk).
    ///
    /// # Errors
    /// `Superseded` if the role moved on meanwhile.
    pub fn on_snapshot_installed(
        &mut self,
        role_gen: u64,
        epoch: Epoch,
        last_index: LogIndex,
        last_epoch: Epoch,
        history: Vec<EpochStart>,
        store: Store,
    ) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)?;
        self.log.reset(last_index, last_epoch, history);
        // A compaction target left from an own snapshot newer than this one
        // would drop entries streamed next before they are applied.
        self.compact_to = last_index;
        self.store = store;
        self.commit = last_index;
        self.applied = last_index;
        self.recorded_commit = last_index;
        self.generation += 1;
        self.durable = last_index;
        self.signals.durable.send_replace(last_index);
        self.push_wal(WalCmd::Reset(last_index));
        self.signal_progress();
        Ok(())
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

    /// Starts a snapshot if the log holds more than `threshold` bytes since the
    /// last one and none is running. Each call (the snapshotter's 100 ms
    /// check) also folds a step of the store's overlay and drops a step of
    /// the log the last snapshot covered; no snapshot starts until both are
    /// done.
    pub fn snapshot_job(&mut self, threshold: usize) -> Option<SnapshotJob> {
        // Writes fold the overlay the last snapshot left; this covers a
        // quiet replica. A new snapshot waits until it is gone, so its copy
        // stays O(1).
        let folded = self.store.fold(FOLD_PER_SNAPSHOT_CHECK);
        // Likewise the log the last snapshot covered; until it is gone the
        // log's size still counts it.
        let compacted = self.compact_some();
        if !folded
            || !compacted
            || self.snapshot_running
            || self.log.bytes() < threshold
            || self.applied <= self.log.base_index()
        {
            return None;
        }
        self.snapshot_running = true;
        Some(SnapshotJob {
            meta: SnapshotMeta {
                last_index: self.applied,
                last_epoch: self.log.epoch_at(self.applied).unwrap_or_default(),
                history: self.log.history_upto(self.applied),
            },
            store: self.store.clone(),
        })
    }

    /// A snapshot finished (or failed, with `None`): starts dropping the log
    /// it covers (a first step now, the rest at the next snapshot checks) and
    /// has the WAL compacted.
    pub fn snapshot_done(&mut self, covered: Option<LogIndex>) {
        self.snapshot_running = false;
        if let Some(index) = covered {
            if index > self.log.base_index() && index <= self.applied {
                self.compact_to = self.compact_to.max(index);
                self.compact_some();
                self.push_wal(WalCmd::Compact(index));
            }
        }
    }

    /// Drops a bounded number of the in-memory entries the last snapshot
    /// covers; `true` once none is left. In steps because dropping a whole
    /// snapshot's worth (hundreds of thousands of entries) under the lock
    /// stalled every request, health checks included.
    fn compact_some(&mut self) -> bool {
        // Never past `applied`: an entry not yet applied must stay.
        let target = self.compact_to.min(self.applied);
        self.log.compact(target, COMPACT_PER_STEP);
        self.log.base_index() >= target || self.log.last_index() <= self.log.base_index()
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

#[cfg(test)]
#[path = "node_epoch_tests.rs"]
mod epoch_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: LeaderSettings = LeaderSettings {
        sync_replicas: 1,
        sync_timeout: Duration::from_secs(1),
        async_fallback: false,
    };

    /// Replica 1 leading epoch 1 with async fallback on.
    fn fallback_leader() -> Node {
        let mut n = fresh(1);
        n.promote(
            Epoch::from_raw(1),
            LeaderSettings {
                async_fallback: true,
                ..SETTINGS
            },
        )
        .unwrap();
        n
    }

    fn fresh(id: u32) -> Node {
        Node::new(
            ReplicaId(id),
            format!("127.0.0.1:{}", 9000 + id),
            Recovered {
                epoch: Epoch::from_raw(0),
                log: MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new()),
                store: Store::default(),
                commit: LogIndex(0),
            },
            Signals::new(),
        )
    }

    fn set(key: &str, value: &str) -> WriteOp {
        WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn entry(index: u64, epoch: u64, op: WriteOp) -> Entry {
        Entry {
            index: LogIndex(index),
            epoch: Epoch::from_raw(epoch.into()),
            op,
        }
    }

    /// Receives one write's answer, as the connection's queue would.
    #[derive(Debug)]
    struct Waiter(mpsc::Receiver<WriteDone>);

    impl Waiter {
        fn try_recv(&mut self) -> Result<Result<LogIndex, ErrorReply>, mpsc::error::TryRecvError> {
            self.0.try_recv().map(|done| match done.response.reply {
                Reply::Written { index } => Ok(index),
                Reply::Error(e) => Err(e),
                other => panic!("a write answered {other:?}"),
            })
        }
    }

    /// Proposes `op` with a completion queue of its own.
    fn propose(n: &mut Node, op: WriteOp) -> Result<(LogIndex, Waiter), ErrorReply> {
        let (to, rx) = mpsc::channel(1);
        let proposed = n.propose(
            op,
            Completion {
                to,
                id: RequestId(7),
            },
        )?;
        Ok((proposed.ticket.index, Waiter(rx)))
    }

    /// Plays a consistent leader's `StreamFrom`: the prefix's epoch as this
    /// log has it, no checksum.
    fn stream_from(n: &mut Node, gen: u64, epoch: u128, prefix: u64) -> Result<(), StreamError> {
        let prefix_epoch = n.log.epoch_at(LogIndex(prefix)).unwrap_or_default();
        n.on_stream_from(
            gen,
            Epoch::from_raw(epoch),
            LogIndex(prefix),
            prefix_epoch,
            None,
        )
    }

    /// Plays the writer thread: everything queued becomes durable.
    fn flush(node: &mut Node) -> Vec<WalCmd> {
        let (cmds, generation, last) = node.take_outbox();
        node.on_durable(generation, last);
        cmds
    }

    fn value(node: &Node, key: &str) -> Option<Bytes> {
        node.store.get(key.as_bytes())
    }

    #[test]
    fn a_write_commits_only_when_durable_and_acknowledged_by_k_followers() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        assert_eq!(n.log.last_index(), LogIndex(1), "promotion appends a no-op");
        let (index, mut rx) = propose(&mut n, set("a", "1")).unwrap();
        assert_eq!(index, LogIndex(2));
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
        assert_eq!(
            n.commit_index(),
            LogIndex(0),
            "not durable on the leader yet"
        );
        assert!(rx.try_recv().is_err());
        flush(&mut n);
        assert_eq!(n.commit_index(), LogIndex(2));
        assert_eq!(rx.try_recv().unwrap(), Ok(LogIndex(2)));
        assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
    }

    #[test]
    fn without_enough_acknowledgements_nothing_commits_or_is_visible() {
        let mut n = fresh(1);
        n.promote(
            Epoch::from_raw(1),
            LeaderSettings {
                sync_replicas: 2,
                ..SETTINGS
            },
        )
        .unwrap();
        let (_, mut rx) = propose(&mut n, set("a", "1")).unwrap();
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
        assert_eq!(n.commit_index(), LogIndex(0));
        assert_eq!(value(&n, "a"), None, "uncommitted writes are never read");
        assert_eq!(n.ack_count(LogIndex(2)), (1, 2));
        assert!(!n.force_commit(LogIndex(2)), "async fallback is off");
        n.on_ack(ReplicaId(3), Epoch::from_raw(1), LogIndex(2));
        assert_eq!(rx.try_recv().unwrap(), Ok(LogIndex(2)));
    }

    #[test]
    fn acks_of_another_epoch_are_ignored() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(2), SETTINGS).unwrap();
        propose(&mut n, set("a", "1")).unwrap();
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
        assert_eq!(n.commit_index(), LogIndex(0));
    }

    #[test]
    fn async_fallback_commits_without_followers_only_when_enabled() {
        let mut n = fallback_leader();
        let (index, _rx) = propose(&mut n, set("a", "1")).unwrap();
        assert!(!n.force_commit(index), "not durable yet");
        flush(&mut n);
        assert!(n.force_commit(index));
        assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
    }

    #[test]
    fn an_inherited_tail_commits_only_with_an_entry_of_the_new_epoch() {
        // A replica that led epoch 1 and holds an unacknowledged tail.
        let mut log = MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new());
        log.append(entry(1, 1, set("a", "old"))).unwrap();
        let mut n = Node::new(
            ReplicaId(1),
            "127.0.0.1:9001".to_string(),
            Recovered {
                epoch: Epoch::from_raw(1),
                log,
                store: Store::default(),
                commit: LogIndex(0),
            },
            Signals::new(),
        );
        assert_eq!(value(&n, "a"), None, "the tail is tentative after restart");
        n.promote(Epoch::from_raw(2), SETTINGS).unwrap();
        flush(&mut n);
        // A follower holding only the old entry does not commit it.
        n.on_ack(ReplicaId(2), Epoch::from_raw(2), LogIndex(1));
        assert_eq!(n.commit_index(), LogIndex(0));
        // Once it holds the new epoch's no-op, both commit.
        n.on_ack(ReplicaId(2), Epoch::from_raw(2), LogIndex(2));
        assert_eq!(n.commit_index(), LogIndex(2));
        assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"old")));
    }

    #[test]
    fn a_new_leader_holds_reads_until_its_own_epoch_commits() {
        let mut log = MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new());
        log.append(entry(1, 1, set("a", "1"))).unwrap();
        log.append(entry(
            2,
            1,
            WriteOp::Delete {
                key: Bytes::from_static(b"a"),
            },
        ))
        .unwrap();
        // The delete was acknowledged, but the recorded commit index lags.
        let mut n = Node::new(
            ReplicaId(1),
            "127.0.0.1:9001".to_string(),
            Recovered {
                epoch: Epoch::from_raw(1),
                log,
                store: Store::default(),
                commit: LogIndex(1),
            },
            Signals::new(),
        );
        assert_eq!(
            n.read(b"a"),
            Some(Some(Bytes::from_static(b"1"))),
            "idle: stale is allowed"
        );
        n.promote(Epoch::from_raw(2), SETTINGS).unwrap();
        assert_eq!(
            n.read(b"a"),
            None,
            "a leader must not answer from a lagging map"
        );
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(2), LogIndex(3));
        assert_eq!(n.read(b"a"), Some(None));
    }

    #[test]
    fn recovery_applies_up_to_the_recorded_commit_index_only() {
        let mut log = MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new());
        log.append(entry(1, 1, set("a", "1"))).unwrap();
        log.append(entry(2, 1, set("b", "2"))).unwrap();
        let n = Node::new(
            ReplicaId(1),
            "127.0.0.1:9001".to_string(),
            Recovered {
                epoch: Epoch::from_raw(1),
                log,
                store: Store::default(),
                commit: LogIndex(1),
            },
            Signals::new(),
        );
        assert_eq!(n.commit_index(), LogIndex(1));
        assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
        assert_eq!(value(&n, "b"), None);
        assert_eq!(n.durable(), LogIndex(2));
    }

    #[test]
    fn a_follower_refuses_writes_naming_its_leader() {
        let mut n = fresh(2);
        assert_eq!(
            propose(&mut n, set("a", "1")).unwrap_err(),
            ErrorReply::NotLeader { leader: None }
        );
        n.follow(
            Epoch::from_raw(1),
            ReplicaId(1),
            "127.0.0.1:9001".to_string(),
        )
        .unwrap();
        assert_eq!(
            propose(&mut n, set("a", "1")).unwrap_err(),
            ErrorReply::NotLeader {
                leader: Some("127.0.0.1:9001".to_string())
            }
        );
    }

    #[test]
    fn stale_epochs_are_refused_everywhere() {
        let mut n = fresh(1);
        n.fence(Epoch::from_raw(3)).unwrap();
        let stale = ErrorReply::StaleEpoch {
            got: Epoch::from_raw(2),
            current: Epoch::from_raw(3),
        };
        assert_eq!(n.promote(Epoch::from_raw(2), SETTINGS).unwrap_err(), stale);
        assert_eq!(
            n.follow(Epoch::from_raw(2), ReplicaId(2), "x".to_string())
                .unwrap_err(),
            stale
        );
        assert_eq!(n.fence(Epoch::from_raw(2)).unwrap_err(), stale);
        // The fenced epoch itself is accepted for the election that follows.
        n.promote(Epoch::from_raw(3), SETTINGS).unwrap();
        assert_eq!(n.status().role, NodeRole::Leader);
        // A leader of an epoch cannot be told to follow in that same epoch.
        assert!(n
            .follow(Epoch::from_raw(3), ReplicaId(2), "x".to_string())
            .is_err());
    }

    #[test]
    fn a_fenced_leader_steps_down_and_pending_writes_become_indeterminate() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        let (_, mut rx) = propose(&mut n, set("a", "1")).unwrap();
        n.fence(Epoch::from_raw(2)).unwrap();
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ErrorReply::Indeterminate { .. })
        ));
        assert_eq!(n.status().role, NodeRole::Idle);
        assert!(propose(&mut n, set("b", "2")).is_err());
        // Late acks of the old epoch commit nothing.
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
        assert_eq!(n.commit_index(), LogIndex(0));
    }

    #[test]
    fn a_follower_applies_only_what_the_leader_committed() {
        let mut n = fresh(2);
        n.follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
            .unwrap();
        let gen = n.role_gen;
        stream_from(&mut n, gen, 1, 0).unwrap();
        n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(0),
            vec![entry(1, 1, WriteOp::Noop), entry(2, 1, set("a", "1"))],
            LogIndex(1),
        )
        .unwrap();
        assert_eq!(value(&n, "a"), None);
        assert_eq!(n.ackable(gen, Epoch::from_raw(1)).unwrap(), LogIndex(0));
        flush(&mut n);
        assert_eq!(n.ackable(gen, Epoch::from_raw(1)).unwrap(), LogIndex(2));
        n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(2),
            Vec::new(),
            LogIndex(2),
        )
        .unwrap();
        assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
        // The commit index is recorded in the log with the next write.
        n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(2),
            vec![entry(3, 1, WriteOp::Noop)],
            LogIndex(2),
        )
        .unwrap();
        let cmds = flush(&mut n);
        assert!(cmds.iter().any(|c| matches!(
            c,
            WalCmd::Append(r) if r.contains(&Record::Commit(LogIndex(2)))
        )));
    }

    #[test]
    fn a_batch_that_does_not_continue_the_log_is_refused() {
        let mut n = fresh(2);
        n.follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
            .unwrap();
        let gen = n.role_gen;
        let gap = n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(5),
            vec![entry(6, 1, WriteOp::Noop)],
            LogIndex(0),
        );
        assert!(matches!(gap, Err(StreamError::Inconsistent(_))));
        let future_epoch = n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(0),
            vec![entry(1, 2, WriteOp::Noop)],
            LogIndex(0),
        );
        assert!(matches!(future_epoch, Err(StreamError::Inconsistent(_))));
    }

    #[test]
    fn a_deposed_leader_truncates_its_unacknowledged_tail() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        propose(&mut n, set("lost", "x")).unwrap();
        flush(&mut n);
        assert_eq!(n.log.last_index(), LogIndex(2));
        n.follow(Epoch::from_raw(2), ReplicaId(2), "l2".to_string())
            .unwrap();
        let gen = n.role_gen;
        // The new leader shares only the no-op.
        stream_from(&mut n, gen, 2, 1).unwrap();
        assert_eq!(n.log.last_index(), LogIndex(1));
        assert_eq!(n.durable(), LogIndex(1));
        let cmds = flush(&mut n);
        assert!(matches!(
            cmds.first(),
            Some(WalCmd::TruncateAfter(LogIndex(1)))
        ));
        n.on_entries(
            gen,
            Epoch::from_raw(2),
            LogIndex(1),
            vec![entry(2, 2, set("kept", "y"))],
            LogIndex(2),
        )
        .unwrap();
        assert_eq!(value(&n, "lost"), None);
        assert_eq!(value(&n, "kept"), Some(Bytes::from_static(b"y")));
    }

    #[test]
    fn a_stream_may_never_cut_committed_entries() {
        let mut n = fresh(2);
        n.follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
            .unwrap();
        let gen = n.role_gen;
        stream_from(&mut n, gen, 1, 0).unwrap();
        n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(0),
            vec![entry(1, 1, WriteOp::Noop)],
            LogIndex(1),
        )
        .unwrap();
        assert!(matches!(
            stream_from(&mut n, gen, 1, 0),
            Err(StreamError::Diverged(_))
        ));
        assert!(n.diverged().is_some(), "it stops rather than cut them");
        assert!(matches!(
            n.status_reply(),
            Reply::Error(ErrorReply::Diverged { .. })
        ));
    }

    #[test]
    fn stream_events_of_an_old_role_are_superseded() {
        let mut n = fresh(2);
        n.follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
            .unwrap();
        let old = n.role_gen;
        n.follow(Epoch::from_raw(2), ReplicaId(3), "l3".to_string())
            .unwrap();
        assert_eq!(stream_from(&mut n, old, 1, 0), Err(StreamError::Superseded));
        assert_eq!(
            n.ackable(old, Epoch::from_raw(1)),
            Err(StreamError::Superseded)
        );
    }

    #[test]
    fn durability_reports_of_an_older_generation_are_ignored() {
        let mut n = fresh(2);
        n.follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
            .unwrap();
        let gen = n.role_gen;
        stream_from(&mut n, gen, 1, 0).unwrap();
        n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(0),
            vec![entry(1, 1, WriteOp::Noop), entry(2, 1, WriteOp::Noop)],
            LogIndex(0),
        )
        .unwrap();
        let (_, old_generation, last) = n.take_outbox();
        // Before the writer reports, the leader truncates back to 1.
        stream_from(&mut n, gen, 1, 1).unwrap();
        n.on_durable(old_generation, last);
        assert_eq!(
            n.durable(),
            LogIndex(0),
            "a stale report must not vouch for a cut entry"
        );
    }

    /// A leader at epoch 1 that needs no follower acknowledgement.
    fn lone_leader() -> Node {
        let mut n = fresh(1);
        n.promote(
            Epoch::from_raw(1),
            LeaderSettings {
                sync_replicas: 0,
                ..SETTINGS
            },
        )
        .unwrap();
        n
    }

    #[test]
    fn a_follower_behind_the_snapshot_gets_a_snapshot() {
        let mut n = lone_leader();
        for i in 0..10 {
            propose(&mut n, set(&format!("k{i}"), "v")).unwrap();
        }
        flush(&mut n);
        assert_eq!(n.commit_index(), LogIndex(11));
        let job = n.snapshot_job(0).unwrap();
        assert_eq!(job.meta.last_index, LogIndex(11));
        assert_eq!(job.store.len(), 10);
        assert!(n.snapshot_job(0).is_none(), "one snapshot at a time");
        n.snapshot_done(Some(job.meta.last_index));
        assert!(n
            .take_outbox()
            .0
            .iter()
            .any(|c| matches!(c, WalCmd::Compact(LogIndex(11)))));
        let (plan, _) = n.plan_stream(Epoch::from_raw(1), LogIndex(0), &[]).unwrap();
        assert_eq!(plan, StreamPlan::Snapshot);
        let (plan, _) = n
            .plan_stream(Epoch::from_raw(1), LogIndex(11), n.log.history())
            .unwrap();
        assert_eq!(
            plan,
            StreamPlan::FromPrefix {
                prefix: LogIndex(11),
                prefix_epoch: Epoch::from_raw(1),
                // Index 11 is the snapshot's base: only its epoch is known.
                prefix_crc: None,
            }
        );
        assert!(n.plan_stream(Epoch::from_raw(2), LogIndex(0), &[]).is_err());
    }

    #[test]
    fn a_big_snapshot_is_compacted_in_steps_and_the_next_waits_for_it() {
        let mut n = lone_leader();
        let writes = COMPACT_PER_STEP * 2 + 10;
        for i in 0..writes {
            propose(&mut n, set(&format!("k{i}"), "v")).unwrap();
        }
        flush(&mut n);
        let job = n.snapshot_job(0).unwrap();
        let covered = job.meta.last_index;
        drop(job);
        n.snapshot_done(Some(covered));
        assert_eq!(n.log.base_index(), LogIndex(COMPACT_PER_STEP as u64));
        // Each check drops one more step; no new snapshot starts before the
        // covered entries are gone, even with a zero size threshold.
        assert!(n.snapshot_job(0).is_none());
        assert_eq!(n.log.base_index(), LogIndex(2 * COMPACT_PER_STEP as u64));
        assert!(n.snapshot_job(0).is_none());
        assert_eq!(n.log.base_index(), covered);
        propose(&mut n, set("one-more", "v")).unwrap();
        flush(&mut n);
        assert!(n.snapshot_job(0).is_some());
    }

    #[test]
    fn an_installed_snapshot_resets_the_compaction_target() {
        let mut n = fresh(2);
        n.follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
            .unwrap();
        let gen = n.role_gen;
        stream_from(&mut n, gen, 1, 0).unwrap();
        let first: Vec<Entry> = (1..=10)
            .map(|i| entry(i, 1, set(&format!("k{i}"), "v")))
            .collect();
        n.on_entries(gen, Epoch::from_raw(1), LogIndex(0), first, LogIndex(10))
            .unwrap();
        flush(&mut n);
        let job = n.snapshot_job(0).unwrap();
        drop(job);
        n.snapshot_done(Some(LogIndex(10)));
        // An older snapshot from the leader (the node does not judge that;
        // the replication layer does), then entries after it.
        let history = vec![EpochStart {
            epoch: Epoch::from_raw(1),
            start: LogIndex(1),
        }];
        n.on_snapshot_installed(
            gen,
            Epoch::from_raw(1),
            LogIndex(5),
            Epoch::from_raw(1),
            history,
            Store::default(),
        )
        .unwrap();
        let next: Vec<Entry> = (6..=12)
            .map(|i| entry(i, 1, set(&format!("n{i}"), "w")))
            .collect();
        n.on_entries(gen, Epoch::from_raw(1), LogIndex(5), next, LogIndex(5))
            .unwrap();
        flush(&mut n);
        // A snapshot check compacts a step: it must not drop what is not
        // applied yet.
        let _ = n.snapshot_job(usize::MAX);
        n.on_entries(
            gen,
            Epoch::from_raw(1),
            LogIndex(12),
            Vec::new(),
            LogIndex(12),
        )
        .unwrap();
        assert_eq!(
            n.applied,
            LogIndex(12),
            "entries dropped before being applied"
        );
    }

    #[test]
    fn a_storage_failure_fails_pending_and_new_writes() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        let (_, mut rx) = propose(&mut n, set("a", "1")).unwrap();
        n.on_storage_failure("disk full".to_string());
        // In the log, perhaps on a follower already: its outcome is unknown.
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ErrorReply::Indeterminate { .. })
        ));
        assert!(matches!(
            propose(&mut n, set("b", "2")).unwrap_err(),
            ErrorReply::Storage { .. }
        ));
    }

    /// Proposes `op` and returns its ticket and answer queue.
    fn propose_ticket(n: &mut Node, op: WriteOp) -> (Ticket, mpsc::Receiver<WriteDone>) {
        let (to, rx) = mpsc::channel(4);
        let proposed = n
            .propose(
                op,
                Completion {
                    to,
                    id: RequestId(9),
                },
            )
            .unwrap();
        (proposed.ticket, rx)
    }

    #[test]
    fn an_expired_write_is_answered_not_enough_replicas_exactly_once() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        let (ticket, mut rx) = propose_ticket(&mut n, set("a", "1"));
        flush(&mut n);
        assert_eq!(n.waiting_writes(), 1);
        assert_eq!(n.expire(ticket), Expiry::NotEnoughReplicas);
        let done = rx.try_recv().unwrap();
        assert_eq!(done.response.id, RequestId(9));
        assert_eq!(
            done.response.reply,
            Reply::Error(ErrorReply::NotEnoughReplicas {
                acked: 0,
                required: 1
            })
        );
        assert!(done.settled < ticket, "an expiry settles no other write");
        assert_eq!(n.waiting_writes(), 0);
        // Expiring or forgetting it again does nothing; a late ack commits
        // the entry but answers nobody twice.
        assert_eq!(n.expire(ticket), Expiry::AlreadyAnswered);
        assert!(!n.forget(ticket));
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), ticket.index);
        assert_eq!(n.commit_index(), ticket.index);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_committed_write_is_left_alone_by_its_expiry() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        let (ticket, mut rx) = propose_ticket(&mut n, set("a", "1"));
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), ticket.index);
        let done = rx.try_recv().unwrap();
        assert_eq!(
            done.response.reply,
            Reply::Written {
                index: ticket.index
            }
        );
        assert!(ticket <= done.settled);
        assert_eq!(n.expire(ticket), Expiry::AlreadyAnswered);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_expiry_with_async_fallback_commits_and_answers_written_once() {
        let mut n = fallback_leader();
        let (first, mut rx1) = propose_ticket(&mut n, set("a", "1"));
        let (second, mut rx2) = propose_ticket(&mut n, set("b", "2"));
        // Not durable yet: the fallback cannot commit it.
        assert_eq!(n.expire(first), Expiry::NotEnoughReplicas);
        assert!(matches!(
            rx1.try_recv().unwrap().response.reply,
            Reply::Error(ErrorReply::NotEnoughReplicas { .. })
        ));
        flush(&mut n);
        assert_eq!(n.expire(second), Expiry::CommittedAsync);
        let done = rx2.try_recv().unwrap();
        assert_eq!(
            done.response.reply,
            Reply::Written {
                index: second.index
            }
        );
        assert!(second <= done.settled);
        assert_eq!(value(&n, "b"), Some(Bytes::from_static(b"2")));
        assert_eq!(n.expire(second), Expiry::AlreadyAnswered);
        assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
        assert_eq!(n.waiting_writes(), 0);
    }

    /// Writes `k0..k{n-1}` answered on `to` under request ids `0..n`.
    fn batch(n: u64, to: &mpsc::Sender<WriteDone>) -> Vec<(WriteOp, Completion)> {
        (0..n)
            .map(|i| {
                let completion = Completion {
                    to: to.clone(),
                    id: RequestId(i),
                };
                (set(&format!("k{i}"), "v"), completion)
            })
            .collect()
    }

    #[test]
    fn a_batch_of_proposals_signals_once_and_registers_each_write() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        flush(&mut n);
        let progress = *n.signals.progress.borrow();
        let outbox = *n.signals.outbox.borrow();
        let (to, mut rx) = mpsc::channel(16);
        let writes = batch(10, &to);
        let mut answered = Vec::new();
        n.propose_batch(writes, |id, outcome| answered.push((id, outcome.is_ok())));
        assert_eq!(
            answered,
            (0..10).map(|i| (RequestId(i), true)).collect::<Vec<_>>()
        );
        assert_eq!(n.waiting_writes(), 10);
        // Two wake-ups for the batch, not two per write.
        assert_eq!(*n.signals.progress.borrow(), progress + 1);
        assert_eq!(*n.signals.outbox.borrow(), outbox + 1);
        // Signals are no longer held once the batch is done.
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(11));
        assert!(*n.signals.progress.borrow() > progress + 1);
        let mut ids: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|done| {
                assert!(matches!(done.response.reply, Reply::Written { .. }));
                done.response.id.0
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert_eq!(n.waiting_writes(), 0);
    }

    #[test]
    fn a_panic_inside_a_batch_does_not_leave_signals_held() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        flush(&mut n);
        let (to, _rx) = mpsc::channel(16);
        let writes = batch(3, &to);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            n.propose_batch(writes, |_, _| panic!("an answer handler failed"));
        }));
        assert!(panicked.is_err());
        // What the batch held was sent on the way out...
        let progress = *n.signals.progress.borrow();
        let outbox = *n.signals.outbox.borrow();
        // ...and later writes signal at once again.
        propose(&mut n, set("after", "v")).unwrap();
        assert!(*n.signals.progress.borrow() > progress);
        assert!(*n.signals.outbox.borrow() > outbox);
    }

    #[test]
    fn a_ticket_of_an_older_leadership_never_touches_a_newer_waiter() {
        let mut n = fresh(1);
        n.promote(Epoch::from_raw(1), SETTINGS).unwrap();
        let (old, mut old_rx) = propose_ticket(&mut n, set("a", "1"));
        n.fence(Epoch::from_raw(2)).unwrap();
        let done = old_rx.try_recv().unwrap();
        assert!(matches!(
            done.response.reply,
            Reply::Error(ErrorReply::Indeterminate { .. })
        ));
        assert!(old <= done.settled, "a step-down settles every write");
        n.promote(Epoch::from_raw(2), SETTINGS).unwrap();
        let (new, mut new_rx) = propose_ticket(&mut n, set("b", "2"));
        assert!(old < new);
        // The same index under the old generation names nothing now.
        let stale = Ticket {
            role_gen: old.role_gen,
            index: new.index,
        };
        assert_eq!(n.expire(stale), Expiry::AlreadyAnswered);
        assert!(!n.forget(stale));
        assert_eq!(n.waiting_writes(), 1);
        assert!(new_rx.try_recv().is_err());
        assert!(n.forget(new));
        assert_eq!(n.waiting_writes(), 0);
        assert!(!n.forget(new));
        // A forgotten write still commits; it is answered to nobody.
        flush(&mut n);
        n.on_ack(ReplicaId(2), Epoch::from_raw(2), new.index);
        assert_eq!(n.commit_index(), new.index);
        assert!(new_rx.try_recv().is_err());
    }

    #[test]
    fn answers_go_to_a_closed_queue_without_harm() {
        let mut n = lone_leader();
        let (ticket, rx) = propose_ticket(&mut n, set("a", "1"));
        drop(rx);
        flush(&mut n);
        assert_eq!(n.commit_index(), ticket.index);
        assert_eq!(n.waiting_writes(), 0);
    }
}
