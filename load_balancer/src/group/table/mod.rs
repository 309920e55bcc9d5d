//! The replica table: the balancer's in-memory view of every configured
//! replica (health, last status) and of the leader it routes writes to.
//!
//! A std `Mutex` guards it: every method is short and none is held across an
//! `.await`. Leader changes are also published on a `watch` channel so that
//! writes waiting out a failover wake as soon as a leader exists.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use semikv_protocol::{
    ClusterReport, ClusterStatus, ClusterView, Epoch, LeaderTerms, LogIndex, NodeReport, NodeRole,
    NodeStatus, ReplicaView, Resources,
};
use tokio::sync::watch;

use super::failover::{BalancerView, LeaderReport, Observed, StatusSummary};

/// The leader writes go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    /// Its slot.
    pub slot: usize,
    /// The epoch it leads at.
    pub epoch: Epoch,
}

#[derive(Debug)]
struct Row {
    addr: String,
    healthy: bool,
    /// The last check was refused: nothing listens at the address.
    refused: bool,
    misses: u32,
    status: Option<NodeStatus>,
    /// Its disk and memory, as it last reported them.
    resources: Option<Resources>,
    /// The terms it leads with, as it last reported them.
    leading: Option<LeaderTerms>,
    /// Statuses recorded so far: tells a fresh report from one already judged.
    reports: u64,
}

/// Full health rounds a follower gets to apply what the leader had
/// committed: it stays in the read rotation while it has applied at least
/// the leader's commit index of this many rounds ago (1 s at the default
/// heartbeat), and leaves it (until it catches up) when it falls further
/// behind: a stream that fails, a snapshot it cannot install, a backlog
/// that keeps growing.
pub const CATCH_UP_ROUNDS: usize = 10;

/// Full rounds whose leader commit index is kept with its time, to tell how
/// far (in time) each follower lags: 25 s at the default heartbeat. A
/// follower behind all of them has no known lag.
pub const LAG_ROUNDS: usize = 256;

#[derive(Debug)]
struct Inner {
    rows: Vec<Row>,
    leader: Option<Leader>,
    max_epoch: Epoch,
    next_read: usize,
    /// The leader's commit index at each of the last full rounds with a
    /// leader, oldest first (at most [`CATCH_UP_ROUNDS`]); kept across
    /// leader changes (see [`Table::note_round`]).
    leader_commits: VecDeque<LogIndex>,
    /// When each of the last [`LAG_ROUNDS`] full rounds with a leader was
    /// asked for, and the leader's commit index it reported (reached by
    /// then at the latest), oldest first.
    commit_times: VecDeque<(Instant, LogIndex)>,
}

impl Inner {
    /// How long ago `slot` was last known to hold every write the leader
    /// had committed: 0 for the leader; for a readable follower, the age of
    /// the newest round whose leader commit index it has applied. `None`
    /// when unknown (not readable, or behind every round kept).
    fn lag(&self, slot: usize, now: Instant) -> Option<Duration> {
        if !self.readable(slot) {
            return None;
        }
        if self.leader.is_some_and(|l| l.slot == slot) {
            return Some(Duration::ZERO);
        }
        let applied = self.rows.get(slot)?.status.as_ref()?.applied_index;
        // Writes committed before `asked` have indexes up to `commit`; the
        // follower has applied them all.
        self.commit_times
            .iter()
            .rev()
            .find(|&&(_, commit)| commit <= applied)
            .map(|&(asked, _)| now.saturating_duration_since(asked))
    }

    /// Whether reads may go to `slot`: it is healthy, and it is the leader,
    /// or a follower that has applied what the leader had committed
    /// `CATCH_UP_ROUNDS - 1` full rounds ago (any follower until that many
    /// rounds were seen, at start-up). An idle replica (restarted and not
    /// yet following: its data may be anything, even wiped) gets no reads,
    /// and neither does a follower last seen at another epoch than the
    /// leader's (the newest epoch known while there is no leader).
    fn readable(&self, slot: usize) -> bool {
        let Some(status) = self
            .rows
            .get(slot)
            .filter(|r| r.healthy)
            .and_then(|r| r.status.as_ref())
        else {
            return false;
        };
        if self.leader.is_some_and(|l| l.slot == slot) {
            return true;
        }
        // A follower last seen at an older epoch than the newest one known
        // may since have been moved anywhere (a peer may have promoted it on
        // its own at a higher epoch, where it never commits, or commits
        // alone): its cached status says nothing about what it serves now.
        let current = self.leader.map_or(self.max_epoch, |l| l.epoch);
        if status.role != NodeRole::Follower || status.epoch != current {
            return false;
        }
        match self.leader_commits.front() {
            Some(&due) if self.leader_commits.len() >= CATCH_UP_ROUNDS => {
                status.applied_index >= due
            }
            _ => true,
        }
    }
}

/// Shared replica table.
#[derive(Debug)]
pub struct Table {
    inner: Mutex<Inner>,
    leader_tx: watch::Sender<Option<Leader>>,
}

impl Table {
    /// A table of these addresses, all unhealthy and unknown, no leader.
    pub fn new(addrs: &[String]) -> Table {
        let rows = addrs
            .iter()
            .map(|addr| Row {
                addr: addr.clone(),
                healthy: false,
                refused: false,
                misses: 0,
                status: None,
                resources: None,
                leading: None,
                reports: 0,
            })
            .collect();
        Table {
            inner: Mutex::new(Inner {
                rows,
                leader: None,
                max_epoch: Epoch::ZERO,
                next_read: 0,
                leader_commits: VecDeque::new(),
                commit_times: VecDeque::new(),
            }),
            leader_tx: watch::channel(None).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the table inconsistent
        // (every update is a plain field store), so a poisoned lock is usable.
        semikv_protocol::sync::lock(&self.inner)
    }

    /// The last status `slot` reported, if any.
    pub fn status(&self, slot: usize) -> Option<NodeStatus> {
        self.lock().rows.get(slot).and_then(|r| r.status.clone())
    }

    /// Whether `slot` is healthy now.
    pub fn is_healthy(&self, slot: usize) -> bool {
        self.lock().rows.get(slot).is_some_and(|r| r.healthy)
    }

    /// Records a successful check: healthy, misses reset, status and
    /// resources stored, and its epoch folded into the highest epoch seen.
    pub fn record_report(&self, slot: usize, report: NodeReport) {
        let mut inner = self.lock();
        inner.max_epoch = inner.max_epoch.max(report.status.epoch);
        if let Some(row) = inner.rows.get_mut(slot) {
            row.healthy = true;
            row.refused = false;
            row.misses = 0;
            row.status = Some(report.status);
            row.resources = Some(report.resources);
            row.leading = report.leading;
            row.reports = row.reports.wrapping_add(1);
        }
    }

    /// [`Table::record_report`] of a status with room on disk and in memory.
    #[cfg(test)]
    pub fn record_ok(&self, slot: usize, status: NodeStatus) {
        self.record_report(
            slot,
            NodeReport {
                status,
                resources: Resources::default(),
                leading: None,
            },
        );
    }

    /// Records a missed check; returns whether `slot` just went down (its
    /// `down_after`-th miss in a row).
    pub fn record_miss(&self, slot: usize, down_after: u32) -> bool {
        let mut inner = self.lock();
        let Some(row) = inner.rows.get_mut(slot) else {
            return false;
        };
        row.misses = row.misses.saturating_add(1);
        row.refused = false;
        if row.healthy && row.misses >= down_after.max(1) {
            row.healthy = false;
            return true;
        }
        false
    }

    /// Marks `slot` down at once (its connection was refused); returns whether
    /// it was healthy before.
    pub fn mark_down(&self, slot: usize) -> bool {
        let mut inner = self.lock();
        let Some(row) = inner.rows.get_mut(slot) else {
            return false;
        };
        let was = row.healthy;
        row.healthy = false;
        row.refused = true;
        row.misses = row.misses.max(1);
        was
    }

    /// Raises the highest epoch seen (after fencing or a `StaleEpoch` answer).
    pub fn raise_epoch(&self, epoch: Epoch) {
        let mut inner = self.lock();
        inner.max_epoch = inner.max_epoch.max(epoch);
    }

    /// The decision core's view of every slot.
    pub fn observed(&self) -> Vec<Observed> {
        self.lock()
            .rows
            .iter()
            .map(|r| Observed {
                healthy: r.healthy,
                refused: r.refused,
                seen: r.status.as_ref().map(StatusSummary::from),
            })
            .collect()
    }

    /// What the table remembers: the leader and the highest epoch seen (the
    /// health loop adds what it keeps itself).
    pub fn current(&self) -> BalancerView {
        let inner = self.lock();
        BalancerView {
            leader: inner.leader.map(|l| l.slot),
            max_epoch: inner.max_epoch,
            ..BalancerView::default()
        }
    }

    /// The stall rule's view of the leader at `slot` leading at `epoch`: its
    /// last status's connected followers and how many other healthy replicas
    /// report following at `epoch`. `None` unless its last status says it
    /// leads at `epoch`.
    pub fn leader_report(&self, slot: usize, epoch: Epoch) -> Option<LeaderReport> {
        let inner = self.lock();
        let row = inner.rows.get(slot)?;
        let status = row
            .status
            .as_ref()
            .filter(|s| s.role == NodeRole::Leader && s.epoch == epoch)?;
        let followers: Vec<&Row> = inner
            .rows
            .iter()
            .enumerate()
            .filter(|&(other, r)| {
                other != slot
                    && r.healthy
                    && r.status
                        .as_ref()
                        .is_some_and(|s| s.role == NodeRole::Follower && s.epoch == epoch)
            })
            .map(|(_, r)| r)
            .collect();
        let full = |r: &Row| r.resources.as_ref().is_some_and(|r| r.disk_full.is_some());
        Some(LeaderReport {
            slot,
            epoch,
            seq: row.reports,
            connected: status.followers.iter().filter(|f| f.connected).count(),
            // A follower whose disk is full could not write as leader either.
            healthy_others: followers.iter().filter(|r| !full(r)).count(),
            // Moving leadership only helps if a follower can write.
            disk_full: full(row) && followers.iter().any(|r| !full(r)),
            // More followers than the cluster has: it can never commit.
            unmeetable: row.leading.is_some_and(|t| {
                usize::try_from(t.sync_replicas).unwrap_or(usize::MAX) >= inner.rows.len()
            }),
        })
    }

    /// The leader writes go to now.
    pub fn leader(&self) -> Option<Leader> {
        self.lock().leader
    }

    /// Sets (or clears) the leader and wakes every waiting write.
    pub fn set_leader(&self, leader: Option<Leader>) {
        {
            let mut inner = self.lock();
            if let Some(l) = leader {
                inner.max_epoch = inner.max_epoch.max(l.epoch);
            }
            inner.leader = leader;
        }
        self.leader_tx.send_replace(leader);
    }

    /// A receiver of leader changes.
    pub fn watch_leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader_tx.subscribe()
    }

    /// Ends a full health round asked for at `asked`: notes the leader's
    /// commit index, which a follower must have applied within
    /// [`CATCH_UP_ROUNDS`] rounds to stay in the read rotation, and which
    /// tells how far behind in time a follower that applied it is.
    pub fn note_round(&self, asked: Instant) {
        let mut inner = self.lock();
        let commit = inner
            .leader
            .and_then(|l| inner.rows.get(l.slot))
            .and_then(|r| r.status.as_ref())
            .filter(|s| s.role == NodeRole::Leader)
            .map(|s| s.commit_index);
        // Without a leader (an election) the window keeps what it has: an
        // index once committed stays committed under any later leader, and
        // a replica's applied index never goes back, so the bar stays valid.
        if let Some(commit) = commit {
            inner.leader_commits.push_back(commit);
            while inner.leader_commits.len() > CATCH_UP_ROUNDS {
                inner.leader_commits.pop_front();
            }
            // A new leader may report less than its predecessor did (its
            // recovered commit index lags until its first commit): what
            // was committed stays committed, so the bar never goes down.
            let bar = inner
                .commit_times
                .back()
                .map_or(commit, |&(_, last)| last.max(commit));
            inner.commit_times.push_back((asked, bar));
            while inner.commit_times.len() > LAG_ROUNDS {
                inner.commit_times.pop_front();
            }
        }
    }

    /// How far `slot` is known to lag the leader's commits at `now` (see
    /// [`LAG_ROUNDS`]): zero for the leader, `None` when unknown or when it
    /// gets no reads.
    pub fn lag_ms(&self, slot: usize, now: Instant) -> Option<u64> {
        self.lock()
            .lag(slot, now)
            .map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX))
    }

    /// The next replica for a read that accepts at most `bound` of
    /// staleness at `now`: round-robin over the readable replicas known to
    /// lag less (the leader always qualifies), skipping `exclude`.
    pub fn next_fresh_reader(
        &self,
        bound: Duration,
        now: Instant,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let mut inner = self.lock();
        let n = inner.rows.len();
        for step in 0..n {
            let slot = (inner.next_read + step) % n;
            if Some(slot) != exclude && inner.lag(slot, now).is_some_and(|lag| lag < bound) {
                inner.next_read = (slot + 1) % n;
                return Some(slot);
            }
        }
        None
    }

    /// The leader's slot if it may take reads now.
    pub fn leader_reader(&self, exclude: Option<usize>) -> Option<usize> {
        let inner = self.lock();
        inner
            .leader
            .map(|l| l.slot)
            .filter(|&slot| Some(slot) != exclude && inner.readable(slot))
    }

    /// Whether reads may go to `slot` now (see [`CATCH_UP_ROUNDS`]).
    pub fn is_readable(&self, slot: usize) -> bool {
        self.lock().readable(slot)
    }

    /// The next replica for a read, round-robin over the healthy ones that
    /// keep up (see [`CATCH_UP_ROUNDS`]), leader included, skipping
    /// `exclude`; `None` when no (other) replica qualifies.
    pub fn next_reader(&self, exclude: Option<usize>) -> Option<usize> {
        let mut inner = self.lock();
        let n = inner.rows.len();
        for step in 0..n {
            let slot = (inner.next_read + step) % n;
            if Some(slot) != exclude && inner.readable(slot) {
                inner.next_read = (slot + 1) % n;
                return Some(slot);
            }
        }
        None
    }

    /// The cluster view with each replica's last reported resources.
    pub fn cluster_report(&self) -> ClusterReport {
        let status = self.cluster_status();
        let resources = self
            .lock()
            .rows
            .iter()
            .map(|r| r.resources.clone())
            .collect();
        ClusterReport { status, resources }
    }

    /// The cluster view with resources and each replica's read lag at
    /// `now` (see [`Table::lag_ms`]): what a client's `Status` is answered.
    pub fn cluster_view(&self, now: Instant) -> ClusterView {
        let report = self.cluster_report();
        let lag_ms = (0..report.status.replicas.len())
            .map(|slot| self.lag_ms(slot, now))
            .collect();
        ClusterView { report, lag_ms }
    }

    /// The cluster view answered to a client's `Status`.
    pub fn cluster_status(&self) -> ClusterStatus {
        let inner = self.lock();
        let leader_row = inner.leader.and_then(|l| inner.rows.get(l.slot));
        let leader_last = leader_row
            .and_then(|r| r.status.as_ref())
            .map_or(0, |s| s.last_index.0);
        let replicas = inner
            .rows
            .iter()
            .map(|r| {
                let s = r.status.as_ref();
                ReplicaView {
                    id: s.map(|s| s.id),
                    addr: r.addr.clone(),
                    role: s.map_or(NodeRole::Idle, |s| s.role),
                    healthy: r.healthy,
                    epoch: s.map(|s| s.epoch).unwrap_or_default(),
                    last_index: s.map(|s| s.last_index).unwrap_or_default(),
                    commit_index: s.map(|s| s.commit_index).unwrap_or_default(),
                    applied_index: s.map(|s| s.applied_index).unwrap_or_default(),
                    lag: leader_last.saturating_sub(s.map_or(0, |s| s.last_index.0)),
                }
            })
            .collect();
        ClusterStatus {
            leader: leader_row.map(|r| r.addr.clone()),
            epoch: inner.leader.map_or(inner.max_epoch, |l| l.epoch),
            replicas,
        }
    }
}

#[cfg(test)]
mod tests;
