//! When a leader the balancer reaches counts as cut off from its followers
//! ([`StallWatch`]), and who succeeds it ([`choose_successor`]).

use std::time::{Duration, Instant};

use semikv_protocol::{Epoch, LogIndex};

use super::{choose_leader, StatusSummary};

/// Shortest time a leader leads before it can be judged stalled. Right after
/// a promotion (or an adoption by a restarted balancer) its followers are
/// still being told to follow, connecting and subscribing, so it legitimately
/// reports no connected follower for a while.
pub const MIN_STALL_GRACE: Duration = Duration::from_secs(1);

/// Shortest pause between two stall failovers.
pub const MIN_STALL_DAMPING: Duration = Duration::from_secs(5);

/// The pause between stall failovers doubles after each one whose successor
/// never had enough followers either (a network where no leader can reach
/// its followers), up to this many times [`StallRule::damping`].
pub const MAX_STALL_BACKOFF: u32 = 16;

/// When a leader the balancer reaches counts as cut off from its followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallRule {
    /// Connected followers a leader needs to commit anything (the
    /// `sync_replicas` it was promoted with, see [`sync_replicas`]).
    pub sync: usize,
    /// Consecutive status reports short of followers that make it stalled.
    pub checks: u32,
    /// How long it must have led before the rule applies.
    pub grace: Duration,
    /// Shortest pause after a stall failover before the next one.
    pub damping: Duration,
    /// Healthy followers needed besides the leader for a stall failover to
    /// be possible at all: `sync`, and enough that with the leader they make
    /// an [`election_quorum`] (see [`StallRule::with_quorum`]).
    pub others_needed: usize,
}

impl StallRule {
    /// The same rule, judging a leader stalled only while enough replicas
    /// are healthy to elect its successor: with the leader's own answer,
    /// `quorum` fence answers. Moving leadership needs that many answers
    /// (another balancer's leader may hold writes this one's does not), so
    /// with fewer it would only depose a leader whose followers may yet come
    /// back, and leave the cluster with none.
    pub fn with_quorum(self, quorum: usize) -> StallRule {
        StallRule {
            others_needed: self.sync.max(quorum.saturating_sub(1)),
            ..self
        }
    }

    /// The rule for a balancer with these settings: `checks = down_after`
    /// (the same patience as for a dead replica); `grace =
    /// max(election_wait, 1 s)`, since an election waits that long for a
    /// replica to answer and a new leader's followers connect only after
    /// theirs; `damping = max(10 × heartbeat × down_after, 5 s)`: several
    /// times longer than it takes to judge a new leader stalled (grace plus
    /// `down_after` checks), so a network where no replica reaches another
    /// moves leadership at most once per damping period instead of every
    /// couple of seconds, while a genuine second partition is still handled
    /// within seconds.
    pub fn new(
        sync: u32,
        down_after: u32,
        heartbeat: Duration,
        election_wait: Duration,
    ) -> StallRule {
        let sync = usize::try_from(sync).unwrap_or(usize::MAX);
        StallRule {
            sync,
            others_needed: sync,
            checks: down_after.max(1),
            grace: election_wait.max(MIN_STALL_GRACE),
            damping: heartbeat
                .saturating_mul(down_after.max(1))
                .saturating_mul(10)
                .max(MIN_STALL_DAMPING),
        }
    }
}

/// One status report of the leader the balancer routes writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderReport {
    /// The leader's slot.
    pub slot: usize,
    /// The epoch it leads at.
    pub epoch: Epoch,
    /// Which report of that slot this is (grows with every status recorded),
    /// so that a round without a fresh check is not counted twice.
    pub seq: u64,
    /// Followers whose stream to it is connected, as it reports them.
    pub connected: usize,
    /// Replicas other than it that are healthy in the balancer's table and
    /// report being its followers (role Follower at its epoch): told to
    /// follow it, whether connected or not. Idle (restarted) or stale
    /// replicas do not count: they are first told to follow, and only then
    /// can their missing stream be held against the leader. Nor do
    /// followers that report a full disk: leading, they could not write.
    pub healthy_others: usize,
    /// It refuses writes for lack of disk space while one of those
    /// followers has room: it counts as stalled (it commits nothing) and
    /// leadership moves to a replica that can write.
    pub disk_full: bool,
    /// It was promoted (by some coordinator) needing more followers than
    /// the cluster has: it commits nothing, ever, and counts as stalled.
    pub unmeetable: bool,
}

/// What [`StallWatch::observe`] concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallVerdict {
    /// Keep the leader.
    Fine,
    /// Cut off from its followers: fail over to another replica.
    Stalled {
        /// Followers it reports connected.
        connected: usize,
        /// Followers it needs.
        needed: usize,
    },
    /// Stalled, but the last stall failover was too recent: keep it for now.
    Damped {
        /// Followers it reports connected.
        connected: usize,
        /// Followers it needs.
        needed: usize,
        /// Time left before a stall failover is allowed again.
        wait: Duration,
        /// Whether this is the first such refusal since that failover (the
        /// one worth a warning; the repeats are routine).
        first: bool,
    },
}

/// Applies a [`StallRule`] to the leader's successive status reports.
///
/// A leader is stalled when its last `checks` reports in a row show fewer
/// than `sync` connected followers while at least `sync` other healthy
/// replicas report following it (so they are reachable, and a leader among
/// them could commit), and it has led for at least `grace`. A leader cut off from its followers but not from the balancer
/// would otherwise keep leading and fail every write after the sync timeout.
#[derive(Debug, Clone)]
pub struct StallWatch {
    rule: StallRule,
    /// The leader the counters below are about, and since when.
    leader: Option<(usize, Epoch, Instant)>,
    last_seq: Option<u64>,
    short: u32,
    last_failover: Option<Instant>,
    /// The current pause after a stall failover (grows under repeated ones).
    damping: Duration,
    /// Whether a leader kept enough followers for a whole damping window
    /// since the last stall failover.
    recovered: bool,
    /// Since when the current leader has had enough followers, without a
    /// short report in between.
    enough_since: Option<Instant>,
    /// The stall failover a [`StallVerdict::Damped`] was last returned
    /// for, so only the first refusal after each one is flagged `first`.
    damped_for: Option<Instant>,
}

impl StallWatch {
    /// A watch with no leader and no failover behind it.
    pub fn new(rule: StallRule) -> StallWatch {
        StallWatch {
            rule,
            leader: None,
            last_seq: None,
            short: 0,
            last_failover: None,
            damping: rule.damping,
            recovered: true,
            enough_since: None,
            damped_for: None,
        }
    }

    /// There is no leader now: the next one starts from scratch.
    pub fn clear(&mut self) {
        self.leader = None;
        self.last_seq = None;
        self.short = 0;
        self.enough_since = None;
    }

    /// The leader was not judged this round (some healthy replica still had
    /// to be told to follow it): the streak of short reports starts over, so
    /// that it only ever spans rounds where every healthy replica was
    /// following.
    pub fn restart_streak(&mut self) {
        self.short = 0;
    }

    /// Takes one report of the current leader and judges it.
    ///
    /// Guarantees: each report is counted at most once (a `seq` already seen
    /// changes nothing and is [`StallVerdict::Fine`]); a leader is
    /// [`StallVerdict::Stalled`] only after `checks` fresh reports in a row,
    /// each short of followers while at least `sync` other healthy replicas
    /// were its followers (a report where that fails restarts the count),
    /// the last one at least `grace` after its first report, and only once
    /// the damping pause since the last stall failover is over (before that:
    /// [`StallVerdict::Damped`], and the count starts over).
    pub fn observe(&mut self, report: LeaderReport, now: Instant) -> StallVerdict {
        let since = match self.leader {
            Some((slot, epoch, since)) if slot == report.slot && epoch == report.epoch => since,
            _ => {
                self.clear();
                self.leader = Some((report.slot, report.epoch, now));
                now
            }
        };
        if self.last_seq == Some(report.seq) {
            return StallVerdict::Fine;
        }
        self.last_seq = Some(report.seq);
        let needed = self.rule.sync;
        if report.connected >= needed && !report.disk_full && !report.unmeetable {
            self.short = 0;
            // A flapping link gives a few good reports between stalls; only
            // a leader that keeps its followers for as long as the current
            // pause proves the network works again and ends the backoff.
            let enough_since = *self.enough_since.get_or_insert(now);
            if now.saturating_duration_since(enough_since) >= self.damping {
                self.recovered = true;
                self.damping = self.rule.damping;
            }
            return StallVerdict::Fine;
        }
        self.enough_since = None;
        if report.healthy_others < self.rule.others_needed {
            // Nowhere better to go (followers down, restarting or not yet
            // told to follow, or too few to elect a successor): this is no
            // stall streak.
            self.short = 0;
            return StallVerdict::Fine;
        }
        self.short = self.short.saturating_add(1);
        if self.short < self.rule.checks || now.saturating_duration_since(since) < self.rule.grace {
            return StallVerdict::Fine;
        }
        if let Some(failover) = self.last_failover {
            let until = failover + self.damping;
            if now < until {
                // Judged afresh after another `checks` reports.
                self.short = 0;
                let first = self.damped_for != Some(failover);
                self.damped_for = Some(failover);
                return StallVerdict::Damped {
                    connected: report.connected,
                    needed,
                    wait: until - now,
                    first,
                };
            }
        }
        StallVerdict::Stalled {
            connected: report.connected,
            needed,
        }
    }

    /// A stall failover was started at `now` (whatever its outcome).
    pub fn failed_over(&mut self, now: Instant) {
        if !self.recovered && self.last_failover.is_some() {
            let max = self.rule.damping.saturating_mul(MAX_STALL_BACKOFF);
            self.damping = self.damping.saturating_mul(2).min(max);
        }
        self.recovered = false;
        self.last_failover = Some(now);
        self.clear();
    }
}

/// Picks the winner of an election held to move leadership away from the
/// stalled leader at `stalled`, or `None` when no other replica is fit.
///
/// The stalled leader is never the winner: it likely has the longest log
/// and would be promoted again, stalled again, forever. Safety: a write is
/// acknowledged only once it is on its leader and on at least
/// `sync_replicas` (>= 1) followers. If the stalled leader acknowledged
/// it, one of those followers answered the fence (the caller's quorum) and
/// the best `(last_epoch, last_index)` among the fenced followers holds it.
/// But an earlier leader may have acknowledged a write with the stalled
/// leader's own acknowledgement, back when it followed: then the stalled
/// leader may be the only holder that answered (sim seed 25898: leader A
/// commits index 108 with B's ack and pauses; B is elected, cannot reach
/// C, stalls; C, without 108, must not succeed it). So a candidate must
/// hold:
///
/// - everything the stalled leader committed, when it answered the fence
///   (after the followers, so its commit index can no longer grow: the
///   fenced followers refuse its stream): its log reaches `(leader's
///   last_epoch, leader's commit_index)`, or its own commit index is at
///   least the leader's (committed prefixes never diverge, and a replica
///   holds its committed prefix; this admits a follower that never saw the
///   leader's uncommitted promotion entry);
/// - everything the stalled leader held when it was promoted, `base`
///   (`(last_epoch, last_index)` then), which an earlier leader may have
///   committed: by the same test. Every follower that passes both holds
///   every acknowledged write, and the best of them is chosen.
///
/// Without `base` (another balancer promoted it, or this one restarted)
/// the caller must have a quorum of the followers' answers alone: then the
/// best of *them*, by `(last_epoch, last_index)`, holds every acknowledged
/// write, and it is chosen if it also holds what the stalled leader
/// committed; no other follower is, since filtering first could drop the
/// holder and keep one that lacks a write (5 replicas, 2 sync: C holds
/// 108 with commit 106, D only 107 with commit 107, the stalled leader's
/// commit is 107: D passes the commit test, C does not, and 108 was
/// acknowledged).
///
/// The old leader's extra tail was never acknowledged; it is truncated
/// when it follows.
pub fn choose_successor(
    fenced: &[(usize, StatusSummary)],
    stalled: usize,
    base: Option<(Epoch, LogIndex)>,
) -> Option<usize> {
    let floor = fenced
        .iter()
        .find(|&&(slot, _)| slot == stalled)
        .map(|(_, s)| (s.last_epoch, s.commit_index));
    let holds = |s: &StatusSummary, (epoch, index): (Epoch, LogIndex)| {
        (s.last_epoch, s.last_index) >= (epoch, index) || s.commit_index >= index
    };
    let followers = fenced.iter().filter(|&&(slot, _)| slot != stalled);
    match base {
        Some(base) => {
            let fit: Vec<(usize, StatusSummary)> = followers
                .filter(|(_, s)| floor.is_none_or(|f| holds(s, f)) && holds(s, base))
                .copied()
                .collect();
            choose_leader(&fit)
        }
        None => {
            let followers: Vec<(usize, StatusSummary)> = followers.copied().collect();
            let best = choose_leader(&followers)?;
            let (_, s) = followers.iter().find(|&&(slot, _)| slot == best)?;
            floor.is_none_or(|f| holds(s, f)).then_some(best)
        }
    }
}
