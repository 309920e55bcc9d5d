//! The balancer's pure decision core: given what it knows about every replica,
//! decide to keep, adopt or elect a leader and whom to tell to follow. No I/O.
//!
//! Invariants: a leader is only kept or adopted when it is healthy, says it
//! leads, and sits at the highest epoch anyone has seen; an election always
//! uses an epoch above every epoch seen; the winner of an election is the
//! fenced replica with the highest `(last_epoch, last_index)`, ties going to
//! the lowest id.

use std::cmp::Reverse;

use semikv_protocol::{Epoch, LogIndex, NodeRole, NodeStatus, ReplicaId};

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
}

impl From<&NodeStatus> for Seen {
    fn from(s: &NodeStatus) -> Seen {
        Seen {
            id: s.id,
            role: s.role,
            epoch: s.epoch,
            last_epoch: s.last_epoch,
            last_index: s.last_index,
        }
    }
}

/// One configured replica as the balancer last observed it; the position in
/// the slice handed to [`plan`] is its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Whether it passes health checks now.
    pub healthy: bool,
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
        /// The new epoch: one above every epoch seen.
        epoch: Epoch,
    },
    /// No replica is healthy: nothing can be done this round.
    Wait,
}

/// Decides what to do this round.
///
/// Never elects while a healthy replica leads at the highest epoch seen;
/// otherwise elects at `max seen + 1` if any replica is healthy (and, during
/// the start-up grace, only once every replica is).
pub fn plan(observed: &[Observed], current: Current) -> Plan {
    let max_epoch = observed
        .iter()
        .filter_map(|o| o.seen.map(|s| s.epoch))
        .fold(current.max_epoch, Epoch::max);
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
        Plan::Elect {
            epoch: max_epoch.next(),
        }
    } else {
        Plan::Wait
    }
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

/// The `sync_replicas` to promote with: the configured value capped at the
/// number of *other* configured replicas (not the number healthy, so that with
/// every follower down writes fail with `NotEnoughReplicas` rather than
/// silently becoming asynchronous).
pub fn sync_replicas(configured: u32, replicas: usize) -> u32 {
    let others = u32::try_from(replicas.saturating_sub(1)).unwrap_or(u32::MAX);
    configured.min(others)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u32, role: NodeRole, epoch: u64, last_epoch: u64, last_index: u64) -> Seen {
        Seen {
            id: ReplicaId(id),
            role,
            epoch: Epoch(epoch),
            last_epoch: Epoch(last_epoch),
            last_index: LogIndex(last_index),
        }
    }

    fn up(s: Seen) -> Observed {
        Observed {
            healthy: true,
            seen: Some(s),
        }
    }

    fn down(s: Option<Seen>) -> Observed {
        Observed {
            healthy: false,
            seen: s,
        }
    }

    use NodeRole::{Follower, Idle, Leader};

    #[test]
    fn fresh_cluster_elects_at_epoch_one() {
        let obs = [
            up(seen(1, Idle, 0, 0, 0)),
            up(seen(2, Idle, 0, 0, 0)),
            up(seen(3, Idle, 0, 0, 0)),
        ];
        assert_eq!(
            plan(&obs, Current::default()),
            Plan::Elect { epoch: Epoch(1) }
        );
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
                epoch: Epoch(5),
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
                epoch: Epoch(5),
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
        assert_eq!(
            plan(&obs, Current::default()),
            Plan::Elect { epoch: Epoch(7) }
        );
    }

    #[test]
    fn balancer_memory_of_a_higher_epoch_prevents_adoption() {
        let obs = [up(seen(1, Leader, 5, 5, 10))];
        let current = Current {
            leader: None,
            max_epoch: Epoch(6),
            ..Current::default()
        };
        assert_eq!(plan(&obs, current), Plan::Elect { epoch: Epoch(7) });
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
            max_epoch: Epoch(3),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 0,
                epoch: Epoch(3),
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
            max_epoch: Epoch(3),
            ..Current::default()
        };
        assert_eq!(plan(&obs, current), Plan::Elect { epoch: Epoch(4) });
    }

    #[test]
    fn unhealthy_replica_epochs_still_raise_the_new_epoch() {
        let obs = [
            down(Some(seen(1, Follower, 9, 3, 10))),
            up(seen(2, Idle, 2, 2, 1)),
        ];
        assert_eq!(
            plan(&obs, Current::default()),
            Plan::Elect { epoch: Epoch(10) }
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
            max_epoch: Epoch(4),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 1,
                epoch: Epoch(4),
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
            max_epoch: Epoch(4),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 1,
                epoch: Epoch(4),
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
            max_epoch: Epoch(4),
            ..Current::default()
        };
        assert_eq!(
            plan(&obs, current),
            Plan::Steady {
                leader: 1,
                epoch: Epoch(4),
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
            max_epoch: Epoch(4),
            ..Current::default()
        };
        assert_eq!(plan(&obs, current), Plan::Elect { epoch: Epoch(5) });
    }

    #[test]
    fn healthy_replica_without_status_cannot_trigger_adoption() {
        let obs = [Observed {
            healthy: true,
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
        assert_eq!(plan(&all, grace), Plan::Elect { epoch: Epoch(1) });
        assert_eq!(
            plan(&partial, Current::default()),
            Plan::Elect { epoch: Epoch(1) }
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
                epoch: Epoch(2),
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
}
