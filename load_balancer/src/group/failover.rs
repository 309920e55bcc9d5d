//! The balancer's pure decision core: given what it knows about every replica,
//! decide to keep, adopt or elect a leader and whom to tell to follow. No I/O.
//!
//! Invariants: a leader is only kept or adopted when it is healthy, says it
//! leads, and sits at the highest epoch anyone has seen; an election always
//! uses an epoch above every epoch seen, minted by this coordinator (next
//! term, its own id) or one it minted, fenced with and promoted no one at
//! yet ([`election_epoch`]): a coordinator never promotes twice at one
//! epoch, which is its half of "one leader per epoch"; the winner of an election is the
//! fenced replica with the highest `(last_epoch, last_index)`, ties going to
//! the lowest id. A leader cut off from its followers (but not from the
//! balancer) is judged by [`StallWatch`] and replaced via
//! [`choose_successor`], which never picks it again.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use semikv_protocol::{CoordinatorId, Epoch, LogIndex, NodeRole, NodeStatus, ReplicaId};

/// The parts of a replica's status the decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The replica's id.
    pub id: ReplicaId,
    /// What it says it is doing.
    pub role: NodeRole,
    /// Highest epoch it has accepted.
    pub epoch: Epoch,
    /// Epoch of its last log entry.
    pub last_epoch: Epoch,
    /// Index of its last log entry.
    pub last_index: LogIndex,
    /// Highest index it knows committed.
    pub commit_index: LogIndex,
}

impl From<&NodeStatus> for Seen {
    fn from(s: &NodeStatus) -> Seen {
        Seen {
            id: s.id,
            role: s.role,
            epoch: s.epoch,
            last_epoch: s.last_epoch,
            last_index: s.last_index,
            commit_index: s.commit_index,
        }
    }
}

/// One configured replica as the balancer last observed it; the position in
/// the slice handed to [`plan`] is its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Whether it passes health checks now.
    pub healthy: bool,
    /// Whether its last check was refused outright: nothing listens there
    /// (the process is gone), as opposed to a check that went unanswered.
    pub refused: bool,
    /// Its last collected status, if it ever answered.
    pub seen: Option<Seen>,
}

/// What the balancer itself remembers (in memory only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Current {
    /// The slot of the leader it routes writes to.
    pub leader: Option<usize>,
    /// The highest epoch it has seen or fenced at.
    pub max_epoch: Epoch,
    /// Still in the start-up grace period: no election until every configured
    /// replica has answered (a replica that is merely slow to start may hold
    /// the most recent committed writes). Adoption is never delayed.
    pub startup_grace: bool,
    /// This balancer's id in the epochs it mints.
    pub coordinator: CoordinatorId,
    /// An epoch this balancer minted and fenced with but promoted no one at
    /// (the election was postponed): it may go on at it.
    pub ballot: Option<Epoch>,
}

/// The decision for one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The current leader is fine; the listed slots must be told to follow it.
    Steady {
        /// The leader's slot.
        leader: usize,
        /// Its epoch.
        epoch: Epoch,
        /// Healthy replicas not (yet) following it at its epoch.
        follow: Vec<usize>,
    },
    /// A live leader at the highest epoch exists but is not the one the
    /// balancer routes to (start-up, or it changed): route to it, no new epoch.
    Adopt {
        /// The leader's slot.
        leader: usize,
        /// Its epoch.
        epoch: Epoch,
        /// Healthy replicas not (yet) following it at its epoch.
        follow: Vec<usize>,
    },
    /// No usable leader: fence every reachable replica at `epoch`, then
    /// promote the best fenced one (see [`choose_leader`]).
    Elect {
        /// The epoch to elect at (see [`election_epoch`]).
        epoch: Epoch,
    },
    /// An election is due but no epoch above the highest seen can be minted
    /// (a peer pushed a replica to the last term): nothing is done.
    Exhausted {
        /// The highest epoch seen.
        max: Epoch,
    },
    /// No replica is healthy: nothing can be done this round.
    Wait,
}

/// Decides what to do this round.
///
/// Never elects while a healthy replica leads at the highest epoch seen;
/// otherwise elects (at [`election_epoch`]) if any replica is healthy (and,
/// during the start-up grace, only once every replica is).
pub fn plan(observed: &[Observed], current: Current) -> Plan {
    let max_epoch = max_epoch(observed, current);
    let is_valid_leader = |o: &Observed| {
        o.healthy
            && o.seen
                .is_some_and(|s| s.role == NodeRole::Leader && s.epoch == max_epoch)
    };
    let kept = current
        .leader
        .filter(|&slot| observed.get(slot).is_some_and(is_valid_leader));
    let leader = kept.or_else(|| observed.iter().position(is_valid_leader));
    if let Some(leader) = leader {
        let follow = followers_to_fix(observed, leader, max_epoch);
        return if kept.is_some() {
            Plan::Steady {
                leader,
                epoch: max_epoch,
                follow,
            }
        } else {
            Plan::Adopt {
                leader,
                epoch: max_epoch,
                follow,
            }
        };
    }
    let all_answered = observed.iter().all(|o| o.healthy && o.seen.is_some());
    if current.startup_grace && !all_answered {
        return Plan::Wait;
    }
    if observed.iter().any(|o| o.healthy && o.seen.is_some()) {
        match election_epoch(max_epoch, current) {
            Some(epoch) => Plan::Elect { epoch },
            None => Plan::Exhausted { max: max_epoch },
        }
    } else {
        Plan::Wait
    }
}

/// The epoch for this coordinator's next election, given the highest epoch
/// seen: the ballot of its own postponed election if that is still the
/// highest (it promoted no one at it, so going on at it promotes at most
/// once, and no epoch is burnt per retry), else the next term under its own
/// id. `None` when the terms are exhausted.
pub fn election_epoch(max_seen: Epoch, current: Current) -> Option<Epoch> {
    match current.ballot {
        Some(ballot) if ballot == max_seen && ballot.coordinator() == current.coordinator => {
            Some(ballot)
        }
        _ => max_seen.successor(current.coordinator),
    }
}

/// Whether a leader at `epoch` is still committing without this balancer:
/// the highest commit index among the healthy replicas following at `epoch`
/// is higher now than in the `before` round, and no replica that reported
/// leading at `epoch` refused a connection (a dead leader commits nothing;
/// entries it sent just before dying are not worth waiting for). The
/// highest, not each one: a follower catching up a backlog, or installing
/// a snapshot, raises its own commit index without anything new committing.
///
/// When the balancer cannot reach the leader but its followers still commit,
/// the leader works for someone else (another balancer's clients); electing
/// would move leadership away from where writes succeed, the other balancer
/// would move it back, and both would flap. Waiting costs only this
/// balancer's writes until it reaches the leader again. A silent leader
/// (paused, crashed host) commits nothing, so it is replaced as before.
pub fn committing_without_us(before: &[Observed], now: &[Observed], epoch: Epoch) -> bool {
    if leader_refused(now, epoch) {
        return false;
    }
    let highest = |observed: &[Observed]| {
        observed
            .iter()
            .filter(|o| o.healthy)
            .filter_map(|o| o.seen)
            .filter(|s| s.role == NodeRole::Follower && s.epoch == epoch)
            .map(|s| s.commit_index)
            .max()
    };
    match (highest(before), highest(now)) {
        (Some(before), Some(now)) => now > before,
        _ => false,
    }
}

/// Whether a replica last seen leading at `epoch` now refuses connections.
pub fn leader_refused(observed: &[Observed], epoch: Epoch) -> bool {
    observed.iter().any(|o| {
        o.refused
            && o.seen
                .is_some_and(|s| s.role == NodeRole::Leader && s.epoch == epoch)
    })
}

/// The highest epoch any replica reported or the balancer remembers; an
/// election must use one above it.
pub fn max_epoch(observed: &[Observed], current: Current) -> Epoch {
    observed
        .iter()
        .filter_map(|o| o.seen.map(|s| s.epoch))
        .fold(current.max_epoch, Epoch::max)
}

/// Healthy replicas other than `leader` that are not following at `epoch`:
/// idle ones, stale followers, and deposed leaders that came back.
fn followers_to_fix(observed: &[Observed], leader: usize, epoch: Epoch) -> Vec<usize> {
    observed
        .iter()
        .enumerate()
        .filter(|&(slot, o)| {
            slot != leader
                && o.healthy
                && o.seen
                    .is_some_and(|s| s.role != NodeRole::Follower || s.epoch < epoch)
        })
        .map(|(slot, _)| slot)
        .collect()
}

/// Picks the election winner among replicas that answered the fence: the
/// highest `(last_epoch, last_index)`, ties to the lowest id. `None` when
/// nobody answered.
pub fn choose_leader(fenced: &[(usize, Seen)]) -> Option<usize> {
    fenced
        .iter()
        .max_by_key(|(_, s)| (s.last_epoch, s.last_index, Reverse(s.id)))
        .map(|&(slot, _)| slot)
}

/// How many fenced answers an election needs before it may promote anyone:
/// `replicas - sync` (at least one).
///
/// An acknowledged write is held by the leader and `sync` followers, that
/// is by `sync + 1` replicas. Any `replicas - sync` of them include at least
/// one of those holders (the two counts add up to more than `replicas`), and
/// the most up-to-date log among them then holds every acknowledged write
/// (Raft's leader-completeness argument; leaders commit inherited entries
/// only through one of their own epoch). With fewer answers, the holder of
/// the last writes may be exactly the replica that is slow to answer (a
/// busy sync follower), and the balancer would promote a lagging one: its
/// followers then refuse to truncate what they committed, and the cluster
/// stays without a working leader. Waiting costs availability only while
/// too many replicas are unreachable at once.
pub fn election_quorum(replicas: usize, sync: u32) -> usize {
    let sync = usize::try_from(sync).unwrap_or(usize::MAX);
    replicas.saturating_sub(sync).max(1)
}

/// The `sync_replicas` to promote with: the configured value capped at the
/// number of *other* configured replicas (not the number healthy, so that with
/// every follower down writes fail with `NotEnoughReplicas` rather than
/// silently becoming asynchronous).
pub fn sync_replicas(configured: u32, replicas: usize) -> u32 {
    let others = u32::try_from(replicas.saturating_sub(1)).unwrap_or(u32::MAX);
    configured.min(others)
}

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
    /// can their missing stream be held against the leader.
    pub healthy_others: usize,
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
        if report.connected >= needed {
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
/// acknowledged only once it is on the leader and on at least
/// `sync_replicas` (>= 1) followers, so the best `(last_epoch, last_index)`
/// among the fenced followers holds every acknowledged write under the same
/// condition as guarantee 1 of DESIGN.md "Guarantees" (one follower that
/// acknowledged it answers the fence), exactly as when a dead leader is
/// replaced.
///
/// When the stalled leader answered the fence (after the followers, so its
/// commit index can no longer grow: the fenced followers refuse its
/// stream), a candidate must hold everything it committed: either its log
/// reaches `(leader's last_epoch, leader's commit_index)`, or its own
/// commit index is at least the leader's (committed prefixes never
/// diverge, and a replica holds its committed prefix; this admits a
/// follower that never saw the leader's uncommitted promotion entry). When
/// the leader did not answer, nothing here bounds what it acknowledged:
/// the caller must first have [`election_quorum`] answers, which include a
/// holder of every acknowledged write. The old leader's extra tail was
/// never acknowledged; it is truncated when it follows.
pub fn choose_successor(fenced: &[(usize, Seen)], stalled: usize) -> Option<usize> {
    let floor = fenced
        .iter()
        .find(|&&(slot, _)| slot == stalled)
        .map(|(_, s)| (s.last_epoch, s.commit_index));
    let holds = |s: &Seen, (epoch, commit): (Epoch, LogIndex)| {
        (s.last_epoch, s.last_index) >= (epoch, commit) || s.commit_index >= commit
    };
    let fit: Vec<(usize, Seen)> = fenced
        .iter()
        .filter(|&&(slot, s)| slot != stalled && floor.is_none_or(|f| holds(&s, f)))
        .copied()
        .collect();
    choose_leader(&fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch of `term` minted by the coordinator of `Current::default()`.
    fn ep(term: u64) -> Epoch {
        Epoch::new(term, CoordinatorId::default())
    }

    fn seen(id: u32, role: NodeRole, epoch: u64, last_epoch: u64, last_index: u64) -> Seen {
        Seen {
            id: ReplicaId(id),
            role,
            epoch: ep(epoch),
            last_epoch: ep(last_epoch),
            last_index: LogIndex(last_index),
            commit_index: LogIndex(last_index),
        }
    }

    fn up(s: Seen) -> Observed {
        Observed {
            healthy: true,
            refused: false,
            seen: Some(s),
        }
    }

    fn down(s: Option<Seen>) -> Observed {
        Observed {
            healthy: false,
            refused: false,
            seen: s,
        }
    }

    fn refused(s: Option<Seen>) -> Observed {
        Observed {
            refused: true,
            ..down(s)
        }
    }

    use NodeRole::{Follower, Idle, Leader};

    #[test]
    fn election_quorum_meets_every_set_of_write_holders() {
        assert_eq!(election_quorum(1, 0), 1);
        assert_eq!(election_quorum(2, 1), 1);
        assert_eq!(election_quorum(3, 1), 2);
        assert_eq!(election_quorum(3, 2), 1);
        assert_eq!(election_quorum(5, 1), 4);
        assert_eq!(election_quorum(5, 2), 3);
        assert_eq!(election_quorum(0, 0), 1);
        assert_eq!(election_quorum(3, u32::MAX), 1);
        // The point of it: every answering set meets every holding set.
        for replicas in 1..=7 {
            for sync in 0..replicas as u32 {
                let holders = sync as usize + 1;
                assert!(election_quorum(replicas, sync) + holders > replicas);
            }
        }
    }

    #[test]
    fn fresh_cluster_elects_at_epoch_one() {
        let obs = [
            up(seen(1, Idle, 0, 0, 0)),
            up(seen(2, Idle, 0, 0, 0)),
            up(seen(3, Idle, 0, 0, 0)),
        ];
        assert_eq!(plan(&obs, Current::default()), Plan::Elect { epoch: ep(1) });
    }

    #[test]
    fn an_election_mints_the_next_term_under_its_own_id() {
        let me = CoordinatorId(0x11);
        let other = CoordinatorId(0xffff);
        let current = Current {
            coordinator: me,
            max_epoch: Epoch::new(7, other),
            ..Current::default()
        };
        // Above another coordinator's epoch of the same term or not.
        assert_eq!(
            election_epoch(Epoch::new(7, other), current),
            Some(Epoch::new(8, me))
        );
        let obs = [up(seen(1, Idle, 0, 0, 0))];
        assert_eq!(
            plan(&obs, current),
            Plan::Elect {
                epoch: Epoch::new(8, me)
            }
        );
    }

    #[test]
    fn a_postponed_election_goes_on_at_its_ballot_only_while_it_is_the_highest() {
        let me = CoordinatorId(0x11);
        let ballot = Epoch::new(8, me);
        let current = Current {
            coordinator: me,
            ballot: Some(ballot),
            ..Current::default()
        };
        assert_eq!(election_epoch(ballot, current), Some(ballot));
        // Someone went above it: a new term.
        let higher = Epoch::new(8, CoordinatorId(0x12));
        assert_eq!(election_epoch(higher, current), Some(Epoch::new(9, me)));
        // A ballot of another coordinator's id is never reused.
        let theirs = Current {
            ballot: Some(higher),
            ..current
        };
        assert_eq!(election_epoch(higher, theirs), Some(Epoch::new(9, me)));
    }

    #[test]
    fn no_election_past_the_last_term() {
        let last = Epoch::new(u64::MAX, CoordinatorId(1));
        let current = Current {
            coordinator: CoordinatorId(2),
            max_epoch: last,
            ..Current::default()
        };
        let obs = [up(seen(1, Idle, 0, 0, 0))];
        assert_eq!(plan(&obs, current), Plan::Exhausted { max: last });
    }

    #[test]
    fn a_leader_whose_followers_still_commit_is_not_elected_away() {
        let with_commit = |s: Seen, commit: u64| Seen {
            commit_index: LogIndex(commit),
            ..s
        };
        let leader = seen(1, Leader, 5, 5, 20);
        let follower = |commit| up(with_commit(seen(2, Follower, 5, 5, 20), commit));
        let other = || up(with_commit(seen(3, Follower, 5, 5, 20), 8));
        let before = [up(leader), follower(10), other()];
        // The leader went silent for this balancer; its follower commits on.
        let now = [down(Some(leader)), follower(12), other()];
        assert!(committing_without_us(&before, &now, ep(5)));
        // Nothing committed since the last round: a silent leader.
        assert!(!committing_without_us(&now, &now, ep(5)));
        // A refused leader is gone, whatever arrived just before it died.
        let dead = [refused(Some(leader)), follower(12), other()];
        assert!(!committing_without_us(&before, &dead, ep(5)));
        // Followers of another epoch say nothing about this one.
        assert!(!committing_without_us(&before, &now, ep(6)));
        // A follower that is down now is no witness.
        let gone = [
            down(Some(leader)),
            down(Some(with_commit(seen(2, Follower, 5, 5, 20), 12))),
            other(),
        ];
        assert!(!committing_without_us(&before, &gone, ep(5)));
    }

    #[test]
    fn all_down_waits() {
        let obs = [down(None), down(Some(seen(2, Leader, 4, 4, 9)))];
        assert_eq!(plan(&obs, Current::default()), Plan::Wait);
        assert_eq!(plan(&[], Current::default()), Plan::Wait);
    }

    #[test]
    fn live_leader_at_highest_epoch_is_adopted_without_new_epoch() {
        let obs = [
            up(seen(1, Follower, 5, 5, 10)),
            up(seen(2, Leader, 5, 5, 12)),
            up(seen(3, Follower, 5, 5, 11)),
        ];
        assert_eq!(
            plan(&obs, Current::default()),
            Plan::Adopt {
                leader: 1,
                epoch: ep(5),
                follow: vec![]
            }
        );
    }

    #[test]
    fn adopted_leader_tells_idle_replicas_to_follow() {
        let obs = [
            up(seen(1, Idle, 0, 0, 0)),
            up(seen(2, Leader, 5, 5, 12)),
            down(Some(seen(3, Idle, 0, 0, 0))),
        ];
        assert_eq!(
            plan(&obs, Current::default()),
            Plan::Adopt {
                leader: 1,
                epoch: ep(5),
                follow: vec![0]
            }
        );
    }

    #[test]
    fn leader_below_highest_epoch_is_not_adopted() {
        // Replica 1 was fenced at 6 but nobody was promoted at 6.
        let obs = [
            up(seen(1, Follower, 6, 5, 10)),
            up(seen(2, Leader, 5, 5, 12)),
        ];
        assert_eq!(plan(&obs, Current::default()), Plan::Elect { epoch: ep(7) });
    }

    #[test]
    fn balancer_memory_of_a_higher_epoch_prevents_adoption() {
        let obs = [up(seen(1, Leader, 5, 5, 10))];
        let current = Current {
            leader: None,
            max_epoch: ep(6),
            ..Current::default()
        };
        assert_eq!(plan(&obs, current), Plan::Elect { epoch: ep(7) });
    }

    #[test]
    fn healthy_leader_at_highest_epoch_is_kept() {
        let obs = [
            up(seen(1, Leader, 3, 3, 10)),
            up(seen(2, Follower, 3, 3, 10)),
            down(Some(seen(3, Follower, 3, 3, 2))),
        ];
        let current = Current {
            leader: Some(0),
            max_epoch: ep(3),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 0,
                epoch: ep(3),
                follow: vec![]
            }
        );
    }

    #[test]
    fn dead_leader_triggers_election_above_every_epoch_seen() {
        let obs = [
            down(Some(seen(1, Leader, 3, 3, 10))),
            up(seen(2, Follower, 3, 3, 10)),
            up(seen(3, Follower, 3, 2, 4)),
        ];
        let current = Current {
            leader: Some(0),
            max_epoch: ep(3),
            ..Current::default()
        };
        assert_eq!(plan(&obs, current), Plan::Elect { epoch: ep(4) });
    }

    #[test]
    fn unhealthy_replica_epochs_still_raise_the_new_epoch() {
        let obs = [
            down(Some(seen(1, Follower, 9, 3, 10))),
            up(seen(2, Idle, 2, 2, 1)),
        ];
        assert_eq!(
            plan(&obs, Current::default()),
            Plan::Elect { epoch: ep(10) }
        );
    }

    #[test]
    fn returning_deposed_leader_is_told_to_follow() {
        let obs = [
            up(seen(1, Leader, 3, 3, 12)),
            up(seen(2, Leader, 4, 4, 11)),
            up(seen(3, Follower, 4, 4, 11)),
        ];
        let current = Current {
            leader: Some(1),
            max_epoch: ep(4),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 1,
                epoch: ep(4),
                follow: vec![0]
            }
        );
    }

    #[test]
    fn stale_follower_and_idle_replica_are_told_to_follow() {
        let obs = [
            up(seen(1, Follower, 3, 3, 12)),
            up(seen(2, Leader, 4, 4, 11)),
            up(seen(3, Idle, 4, 0, 0)),
            up(seen(4, Follower, 4, 4, 11)),
        ];
        let current = Current {
            leader: Some(1),
            max_epoch: ep(4),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 1,
                epoch: ep(4),
                follow: vec![0, 2]
            }
        );
    }

    #[test]
    fn unhealthy_replicas_are_not_told_anything() {
        let obs = [
            down(Some(seen(1, Leader, 3, 3, 12))),
            up(seen(2, Leader, 4, 4, 11)),
        ];
        let current = Current {
            leader: Some(1),
            max_epoch: ep(4),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 1,
                epoch: ep(4),
                follow: vec![]
            }
        );
    }

    #[test]
    fn current_leader_that_stepped_down_is_replaced_by_election() {
        let obs = [
            up(seen(1, Follower, 4, 4, 12)),
            up(seen(2, Follower, 4, 4, 12)),
        ];
        let current = Current {
            leader: Some(0),
            max_epoch: ep(4),
            ..Current::default()
        };
        assert_eq!(plan(&obs, current), Plan::Elect { epoch: ep(5) });
    }

    #[test]
    fn healthy_replica_without_status_cannot_trigger_adoption() {
        let obs = [Observed {
            healthy: true,
            refused: false,
            seen: None,
        }];
        assert_eq!(plan(&obs, Current::default()), Plan::Wait);
    }

    #[test]
    fn startup_grace_waits_for_every_replica_before_electing() {
        let grace = Current {
            startup_grace: true,
            ..Current::default()
        };
        let partial = [up(seen(1, Idle, 0, 0, 0)), down(None)];
        assert_eq!(plan(&partial, grace), Plan::Wait);
        let all = [up(seen(1, Idle, 0, 0, 0)), up(seen(2, Idle, 0, 0, 0))];
        assert_eq!(plan(&all, grace), Plan::Elect { epoch: ep(1) });
        assert_eq!(
            plan(&partial, Current::default()),
            Plan::Elect { epoch: ep(1) }
        );
    }

    #[test]
    fn startup_grace_does_not_delay_adoption() {
        let grace = Current {
            startup_grace: true,
            ..Current::default()
        };
        let obs = [up(seen(1, Leader, 2, 2, 5)), down(None)];
        assert_eq!(
            plan(&obs, grace),
            Plan::Adopt {
                leader: 0,
                epoch: ep(2),
                follow: vec![]
            }
        );
    }

    #[test]
    fn choose_prefers_last_epoch_over_last_index() {
        let fenced = [
            (0, seen(1, Follower, 5, 3, 100)),
            (1, seen(2, Follower, 5, 4, 7)),
            (2, seen(3, Follower, 5, 4, 6)),
        ];
        assert_eq!(choose_leader(&fenced), Some(1));
    }

    #[test]
    fn choose_prefers_last_index_within_an_epoch() {
        let fenced = [
            (0, seen(1, Follower, 5, 4, 6)),
            (2, seen(3, Follower, 5, 4, 9)),
        ];
        assert_eq!(choose_leader(&fenced), Some(2));
    }

    #[test]
    fn choose_breaks_ties_by_lowest_id() {
        let fenced = [
            (0, seen(3, Follower, 5, 4, 9)),
            (1, seen(1, Follower, 5, 4, 9)),
            (2, seen(2, Follower, 5, 4, 9)),
        ];
        assert_eq!(choose_leader(&fenced), Some(1));
    }

    #[test]
    fn choose_with_nobody_fenced_is_none() {
        assert_eq!(choose_leader(&[]), None);
    }

    #[test]
    fn sync_replicas_is_capped_by_configured_others() {
        assert_eq!(sync_replicas(1, 3), 1);
        assert_eq!(sync_replicas(5, 3), 2);
        assert_eq!(sync_replicas(1, 1), 0);
        assert_eq!(sync_replicas(2, 0), 0);
        assert_eq!(sync_replicas(0, 5), 0);
    }

    // --- the stall rule ---

    const HB: Duration = Duration::from_millis(100);

    /// The defaults: sync 1 of 3, down after 3, heartbeat 100 ms, election
    /// wait 600 ms: grace 1 s, damping 5 s.
    fn watch(sync: u32, replicas: usize) -> StallWatch {
        StallWatch::new(StallRule::new(
            sync_replicas(sync, replicas),
            3,
            HB,
            Duration::from_millis(600),
        ))
    }

    fn report(slot: usize, epoch: u64, seq: u64, connected: usize, others: usize) -> LeaderReport {
        LeaderReport {
            slot,
            epoch: ep(epoch),
            seq,
            connected,
            healthy_others: others,
        }
    }

    /// Feeds `n` fresh reports of slot 0 at epoch 1 one heartbeat apart,
    /// starting at `*at` and `*seq`; returns the last verdict.
    fn feed(
        w: &mut StallWatch,
        at: &mut Instant,
        seq: &mut u64,
        n: usize,
        connected: usize,
    ) -> StallVerdict {
        let mut last = StallVerdict::Fine;
        for _ in 0..n {
            *seq += 1;
            last = w.observe(report(0, 1, *seq, connected, 2), *at);
            *at += HB;
        }
        last
    }

    #[test]
    fn stall_rule_derives_grace_and_damping_from_the_settings() {
        let r = StallRule::new(1, 3, HB, Duration::from_millis(600));
        assert_eq!(r.sync, 1);
        assert_eq!(r.checks, 3);
        assert_eq!(r.grace, Duration::from_secs(1));
        assert_eq!(r.damping, Duration::from_secs(5));
        let slow = StallRule::new(2, 4, Duration::from_millis(500), Duration::from_secs(3));
        assert_eq!(slow.grace, Duration::from_secs(3));
        assert_eq!(slow.damping, Duration::from_secs(20));
        assert_eq!(StallRule::new(1, 0, HB, Duration::ZERO).checks, 1);
    }

    #[test]
    fn stalled_only_after_down_after_short_reports_in_a_row() {
        let mut w = watch(1, 3);
        let (mut at, mut seq) = (Instant::now(), 0);
        // Past the grace with followers connected.
        assert_eq!(feed(&mut w, &mut at, &mut seq, 15, 1), StallVerdict::Fine);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 2, 0), StallVerdict::Fine);
        // One connected report breaks the streak.
        assert_eq!(feed(&mut w, &mut at, &mut seq, 1, 1), StallVerdict::Fine);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 2, 0), StallVerdict::Fine);
        assert_eq!(
            feed(&mut w, &mut at, &mut seq, 1, 0),
            StallVerdict::Stalled {
                connected: 0,
                needed: 1
            }
        );
    }

    #[test]
    fn a_report_already_seen_is_not_counted_again() {
        let mut w = watch(1, 3);
        let (mut at, mut seq) = (Instant::now(), 0);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 15, 1), StallVerdict::Fine);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 2, 0), StallVerdict::Fine);
        for _ in 0..5 {
            assert_eq!(w.observe(report(0, 1, seq, 0, 2), at), StallVerdict::Fine);
        }
        assert!(matches!(
            feed(&mut w, &mut at, &mut seq, 1, 0),
            StallVerdict::Stalled { .. }
        ));
    }

    #[test]
    fn a_leader_is_not_judged_before_its_grace_ends() {
        let mut w = watch(1, 3);
        let (mut at, mut seq) = (Instant::now(), 0);
        // 0.9 s of reports without any follower: still in the 1 s grace.
        assert_eq!(feed(&mut w, &mut at, &mut seq, 10, 0), StallVerdict::Fine);
        // At 1 s the streak is long enough already: stalled at once.
        assert!(matches!(
            feed(&mut w, &mut at, &mut seq, 1, 0),
            StallVerdict::Stalled { .. }
        ));
    }

    #[test]
    fn a_new_leader_or_epoch_restarts_the_grace_and_the_count() {
        let mut w = watch(1, 3);
        let (mut at, mut seq) = (Instant::now(), 0);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 10, 0), StallVerdict::Fine);
        let t = at;
        // Same slot, next epoch (re-promoted): a new leader.
        assert_eq!(w.observe(report(0, 2, 100, 0, 2), t), StallVerdict::Fine);
        assert_eq!(
            w.observe(report(0, 2, 101, 0, 2), t + HB),
            StallVerdict::Fine
        );
        assert_eq!(
            w.observe(report(0, 2, 102, 0, 2), t + 2 * HB),
            StallVerdict::Fine,
            "three short reports, but within the grace of the new leader"
        );
        // Another slot.
        assert_eq!(
            w.observe(report(1, 2, 7, 0, 2), t + 20 * HB),
            StallVerdict::Fine
        );
        w.clear();
        assert_eq!(
            w.observe(report(1, 2, 8, 0, 2), t + 40 * HB),
            StallVerdict::Fine
        );
    }

    #[test]
    fn no_failover_without_enough_healthy_replicas_to_elect_a_successor() {
        // Five replicas, one sync replica: moving leadership needs four fence
        // answers, the leader's included. Two healthy followers are not
        // enough, whatever the leader's streams say; three are.
        let rule = StallRule::new(1, 3, HB, Duration::from_millis(600)).with_quorum(4);
        assert_eq!(rule.others_needed, 3);
        let mut w = StallWatch::new(rule);
        let t = Instant::now();
        for seq in 0..20 {
            let at = t + HB * u32::try_from(seq).unwrap();
            assert_eq!(w.observe(report(0, 1, seq, 0, 2), at), StallVerdict::Fine);
        }
        let verdicts: Vec<StallVerdict> = (20..23)
            .map(|seq| {
                w.observe(
                    report(0, 1, seq, 0, 3),
                    t + HB * u32::try_from(seq).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            verdicts.last(),
            Some(&StallVerdict::Stalled {
                connected: 0,
                needed: 1
            })
        );
        // The quorum never lowers what the sync replicas need.
        assert_eq!(StallRule::new(2, 3, HB, HB).with_quorum(1).others_needed, 2);
    }

    #[test]
    fn no_failover_without_enough_healthy_replicas_elsewhere() {
        let mut w = StallWatch::new(StallRule::new(2, 3, HB, Duration::from_millis(600)));
        let t = Instant::now();
        for seq in 0..20 {
            let at = t + HB * u32::try_from(seq).unwrap();
            // Two followers needed, one connected, one other healthy: a
            // leader elsewhere could not commit either.
            assert_eq!(w.observe(report(0, 1, seq, 1, 1), at), StallVerdict::Fine);
        }
        // Those reports were no streak: it starts with the first report
        // where a leader elsewhere could commit.
        for seq in 20..22 {
            let at = t + HB * u32::try_from(seq).unwrap();
            assert_eq!(w.observe(report(0, 1, seq, 1, 2), at), StallVerdict::Fine);
        }
        assert_eq!(
            w.observe(report(0, 1, 22, 1, 2), t + HB * 22),
            StallVerdict::Stalled {
                connected: 1,
                needed: 2
            }
        );
    }

    #[test]
    fn a_single_replica_is_never_stalled() {
        // N = 1: sync_replicas is 0, and there is nobody else anyway.
        let mut w = watch(1, 1);
        let (mut at, mut seq) = (Instant::now(), 0);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 50, 0), StallVerdict::Fine);
        let mut w = watch(0, 3);
        assert_eq!(feed(&mut w, &mut at, &mut seq, 50, 0), StallVerdict::Fine);
    }

    #[test]
    fn two_replicas_fail_over_to_the_other_one_only_when_it_is_healthy() {
        let mut w = watch(1, 2);
        let t = Instant::now();
        for seq in 0..20 {
            let at = t + HB * u32::try_from(seq).unwrap();
            assert_eq!(w.observe(report(0, 1, seq, 0, 0), at), StallVerdict::Fine);
        }
        for seq in 20..22 {
            let at = t + HB * u32::try_from(seq).unwrap();
            assert_eq!(w.observe(report(0, 1, seq, 0, 1), at), StallVerdict::Fine);
        }
        assert_eq!(
            w.observe(report(0, 1, 22, 0, 1), t + HB * 22),
            StallVerdict::Stalled {
                connected: 0,
                needed: 1
            }
        );
    }

    #[test]
    fn damping_refuses_a_second_stall_failover_for_a_while() {
        let mut w = watch(1, 3);
        let (mut at, mut seq) = (Instant::now(), 0);
        assert!(matches!(
            feed(&mut w, &mut at, &mut seq, 11, 0),
            StallVerdict::Stalled { .. }
        ));
        let failed_at = at;
        w.failed_over(failed_at);
        // The successor (slot 1, epoch 2) has no followers either.
        let mut verdicts = Vec::new();
        for i in 1..=30u32 {
            let now = failed_at + HB * i;
            verdicts.push(w.observe(report(1, 2, u64::from(i), 0, 2), now));
        }
        let damped: Vec<usize> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, StallVerdict::Damped { .. }))
            .map(|(i, _)| i)
            .collect();
        assert!(
            !verdicts
                .iter()
                .any(|v| matches!(v, StallVerdict::Stalled { .. })),
            "{verdicts:?}"
        );
        // Judged once its grace is over (1 s after its first report, the
        // 11th), then once every 3 reports.
        assert_eq!(damped.first(), Some(&10));
        assert!(damped.windows(2).all(|p| p[1] - p[0] == 3), "{damped:?}");
        let StallVerdict::Damped {
            connected,
            needed,
            wait,
            first,
        } = verdicts[10]
        else {
            unreachable!()
        };
        assert_eq!((connected, needed), (0, 1));
        assert_eq!(wait, Duration::from_secs(5) - HB * 11);
        assert!(first, "the first refusal after the failover is flagged");
        assert!(
            damped[1..]
                .iter()
                .all(|&i| matches!(verdicts[i], StallVerdict::Damped { first: false, .. })),
            "repeats are not"
        );
        // Once the 5 s are over, it acts again.
        let mut last = StallVerdict::Fine;
        for i in 31..=60u32 {
            last = w.observe(report(1, 2, u64::from(i), 0, 2), failed_at + HB * i);
            if matches!(last, StallVerdict::Stalled { .. }) {
                assert!(HB * i >= Duration::from_secs(5));
                break;
            }
        }
        assert!(matches!(last, StallVerdict::Stalled { .. }), "{last:?}");
    }

    /// The first stall verdict for slot `slot` at `epoch`, reports one
    /// heartbeat apart from `from`; returns when it came.
    fn first_stall(w: &mut StallWatch, slot: usize, epoch: u64, from: Instant) -> Duration {
        for i in 1..2000u32 {
            let v = w.observe(report(slot, epoch, u64::from(i), 0, 2), from + HB * i);
            if matches!(v, StallVerdict::Stalled { .. }) {
                return HB * i;
            }
        }
        panic!("never stalled");
    }

    #[test]
    fn repeated_stall_failovers_back_off_until_a_leader_recovers() {
        let mut w = watch(1, 3);
        let t0 = Instant::now();
        let mut at = t0 + first_stall(&mut w, 0, 1, t0);
        w.failed_over(at);
        // A star network: no leader ever gets a follower.
        let mut gaps = Vec::new();
        for epoch in 2..8 {
            let gap = first_stall(&mut w, usize::try_from(epoch % 3).unwrap(), epoch, at);
            gaps.push(gap);
            at += gap;
            w.failed_over(at);
        }
        let secs: Vec<u64> = gaps.iter().map(|g| g.as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 80, 80]);
        // A leader that keeps its followers for a whole (80 s) pause resets
        // it; one good report does not.
        let epoch = 8;
        assert_eq!(
            w.observe(report(1, epoch, 1, 1, 2), at + HB),
            StallVerdict::Fine
        );
        for i in 2..=801u32 {
            let now = at + HB * i;
            assert_eq!(
                w.observe(report(1, epoch, u64::from(i), 1, 2), now),
                StallVerdict::Fine
            );
        }
        at += HB * 801;
        w.failed_over(at);
        let gap = first_stall(&mut w, 2, epoch + 1, at);
        assert_eq!(gap.as_secs(), 5);
    }

    fn seen_c(id: u32, last_epoch: u64, last_index: u64, commit: u64) -> Seen {
        Seen {
            commit_index: LogIndex(commit),
            ..seen(id, Follower, 9, last_epoch, last_index)
        }
    }

    #[test]
    fn successor_is_never_the_stalled_leader_even_with_the_longest_log() {
        let fenced = [
            (0, seen_c(1, 4, 20, 15)),
            (1, seen_c(2, 4, 17, 15)),
            (2, seen_c(3, 4, 16, 15)),
        ];
        assert_eq!(choose_leader(&fenced), Some(0));
        assert_eq!(choose_successor(&fenced, 0), Some(1));
        assert_eq!(choose_successor(&fenced, 1), Some(0));
    }

    #[test]
    fn successor_must_hold_what_the_stalled_leader_committed() {
        let fenced = [
            (0, seen_c(1, 4, 20, 15)),
            (1, seen_c(2, 4, 14, 14)),
            (2, seen_c(3, 3, 30, 14)),
        ];
        // Slot 1 lacks index 15; slot 2's longer log ends in an older epoch.
        assert_eq!(choose_successor(&fenced, 0), None);
        let fenced = [(0, seen_c(1, 4, 20, 15)), (1, seen_c(2, 4, 15, 14))];
        assert_eq!(choose_successor(&fenced, 0), Some(1));
    }

    #[test]
    fn successor_without_the_stalled_leaders_answer_is_the_best_follower() {
        let fenced = [(1, seen_c(2, 4, 14, 14)), (2, seen_c(3, 4, 16, 10))];
        assert_eq!(choose_successor(&fenced, 0), Some(2));
    }

    #[test]
    fn no_successor_when_no_follower_answered() {
        assert_eq!(choose_successor(&[(0, seen_c(1, 4, 20, 15))], 0), None);
        assert_eq!(choose_successor(&[], 0), None);
    }

    #[test]
    fn a_restarted_follower_does_not_get_the_leader_deposed() {
        // Two replicas: the follower crashes, stays down for 3 s, and comes
        // back Idle. Neither a down nor an idle replica counts as a follower
        // that could serve a successor, so none of this is a stall streak.
        let mut w = watch(1, 2);
        let t = Instant::now();
        let mut seq = 0u64;
        let mut at = t;
        let mut step = |w: &mut StallWatch, connected: usize, others: usize| {
            seq += 1;
            at += HB;
            w.observe(report(0, 1, seq, connected, others), at)
        };
        for _ in 0..20 {
            assert_eq!(step(&mut w, 1, 1), StallVerdict::Fine);
        }
        for _ in 0..30 {
            assert_eq!(step(&mut w, 0, 0), StallVerdict::Fine, "follower down");
        }
        // Back, told to follow, its stream not connected yet.
        assert_eq!(step(&mut w, 0, 1), StallVerdict::Fine);
        assert_eq!(step(&mut w, 0, 1), StallVerdict::Fine);
        assert_eq!(step(&mut w, 1, 1), StallVerdict::Fine);
        // A real stall afterwards is still caught.
        let mut last = StallVerdict::Fine;
        for _ in 0..3 {
            last = step(&mut w, 0, 1);
        }
        assert!(matches!(last, StallVerdict::Stalled { .. }), "{last:?}");
    }

    #[test]
    fn a_short_recovery_does_not_reset_the_backoff() {
        let mut w = watch(1, 3);
        let t0 = Instant::now();
        let mut at = t0 + first_stall(&mut w, 0, 1, t0);
        w.failed_over(at);
        at += first_stall(&mut w, 1, 2, at);
        // Second failover in a row without a working leader: 10 s pause.
        w.failed_over(at);
        let failed_at = at;
        // The next leader has its follower for 2 s only (a flapping link).
        let mut seq = 0u64;
        for _ in 0..20 {
            seq += 1;
            at += HB;
            assert_eq!(w.observe(report(2, 3, seq, 1, 2), at), StallVerdict::Fine);
        }
        let stalled_at = loop {
            seq += 1;
            at += HB;
            if matches!(
                w.observe(report(2, 3, seq, 0, 2), at),
                StallVerdict::Stalled { .. }
            ) {
                break at;
            }
            assert!(at < failed_at + Duration::from_secs(100), "never stalled");
        };
        assert!(
            stalled_at - failed_at >= Duration::from_secs(10),
            "the pause was reset by a brief recovery: {:?}",
            stalled_at - failed_at
        );
    }

    #[test]
    fn successor_holding_the_committed_prefix_is_fit_despite_an_older_last_epoch() {
        // The stalled leader's promotion no-op is at epoch 5 and uncommitted;
        // the follower holds everything committed (index 10).
        let fenced = [(0, seen_c(1, 5, 11, 10)), (1, seen_c(2, 4, 10, 10))];
        assert_eq!(choose_successor(&fenced, 0), Some(1));
        // Behind the commit index and in an older epoch: still not fit.
        let fenced = [(0, seen_c(1, 5, 11, 10)), (1, seen_c(2, 4, 10, 9))];
        assert_eq!(choose_successor(&fenced, 0), None);
    }
}
