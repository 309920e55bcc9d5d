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

use semikv_protocol::{CoordinatorId, Epoch, LogIndex, NodeRole, NodeStatus, ReplicaId};

/// The parts of a replica's status the decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSummary {
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

impl From<&NodeStatus> for StatusSummary {
    fn from(s: &NodeStatus) -> StatusSummary {
        StatusSummary {
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
    pub seen: Option<StatusSummary>,
}

/// What the balancer itself remembers (in memory only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalancerView {
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
    /// The highest epoch this balancer ever fenced with: it never mints
    /// at or below it again (but for `ballot`).
    pub minted: Epoch,
    /// How many fence answers an election needs
    /// ([`election_quorum`]); 0 counts as 1.
    pub quorum: usize,
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
pub fn plan(observed: &[Observed], current: BalancerView) -> Plan {
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
/// id, and above every epoch it minted before. `None` when the terms are
/// exhausted.
pub fn election_epoch(max_seen: Epoch, current: BalancerView) -> Option<Epoch> {
    let floor = max_seen.max(current.minted);
    match current.ballot {
        Some(ballot) if ballot == floor && ballot.coordinator() == current.coordinator => {
            Some(ballot)
        }
        _ => floor.successor(current.coordinator),
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

/// The highest epoch that counts: elections mint above it, and a leader
/// must lead at it to be kept. It is the highest epoch any replica reported
/// or the balancer remembers, passing over any epoch whose successor fewer
/// than `quorum` of the replicas seen would move to
/// ([`Epoch::acceptable_after`]).
///
/// Passing over matters only when a peer has pushed a minority of replicas
/// past [`semikv_protocol::MAX_TERM`] (or near it): minting above them
/// would gather too few fence answers, and the cluster would stay without a
/// leader for good. The replicas pushed there stay out (they refuse the
/// lower epoch) until the rest catch up with them; everyone else elects as
/// before. Among honest coordinators every epoch is far below the last
/// term, every seen replica would take the successor of the highest, and
/// this is simply the highest.
pub fn max_epoch(observed: &[Observed], current: BalancerView) -> Epoch {
    let seen: Vec<Epoch> = observed
        .iter()
        .filter_map(|o| o.seen.map(|s| s.epoch))
        .collect();
    let mut candidates: Vec<Epoch> = seen.iter().copied().chain([current.max_epoch]).collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    let highest = candidates.first().copied().unwrap_or(Epoch::ZERO);
    let quorum = current.quorum.max(1);
    let takers = |e: Epoch| {
        e.successor(current.coordinator).map_or(0, |next| {
            seen.iter().filter(|&&at| next.acceptable_after(at)).count()
        })
    };
    candidates
        .into_iter()
        .find(|&e| takers(e) >= quorum)
        .unwrap_or(highest)
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
pub fn choose_leader(fenced: &[(usize, StatusSummary)]) -> Option<usize> {
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

mod stall;
#[cfg(test)]
mod tests;

pub use stall::{
    choose_successor, LeaderReport, StallRule, StallVerdict, StallWatch, MAX_STALL_BACKOFF,
    MIN_STALL_DAMPING, MIN_STALL_GRACE,
};
