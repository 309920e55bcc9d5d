use super::*;

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
    assert_eq!(
        plan(&obs, BalancerView::default()),
        Plan::Elect { epoch: ep(1) }
    );
}

#[test]
fn an_election_mints_the_next_term_under_its_own_id() {
    let me = CoordinatorId(0x11);
    let other = CoordinatorId(0xffff);
    let current = BalancerView {
        coordinator: me,
        max_epoch: Epoch::new(7, other),
        ..BalancerView::default()
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
    let current = BalancerView {
        coordinator: me,
        ballot: Some(ballot),
        ..BalancerView::default()
    };
    assert_eq!(election_epoch(ballot, current), Some(ballot));
    // Someone went above it: a new term.
    let higher = Epoch::new(8, CoordinatorId(0x12));
    assert_eq!(election_epoch(higher, current), Some(Epoch::new(9, me)));
    // A ballot of another coordinator's id is never reused.
    let theirs = BalancerView {
        ballot: Some(higher),
        ..current
    };
    assert_eq!(election_epoch(higher, theirs), Some(Epoch::new(9, me)));
}

#[test]
fn no_election_past_the_last_term() {
    let last = Epoch::new(u64::MAX, CoordinatorId(1));
    let current = BalancerView {
        coordinator: CoordinatorId(2),
        max_epoch: last,
        ..BalancerView::default()
    };
    let obs = [up(seen(1, Idle, u64::MAX, 0, 0))];
    assert_eq!(plan(&obs, current), Plan::Exhausted { max: last });
}

/// Three replicas, one election answer short of none: `quorum` 2.
fn three(me: CoordinatorId) -> BalancerView {
    BalancerView {
        coordinator: me,
        quorum: 2,
        ..BalancerView::default()
    }
}

#[test]
fn a_replica_pushed_to_the_last_term_is_passed_over_not_followed_into_a_stall() {
    let me = CoordinatorId(0x11);
    let last = semikv_protocol::MAX_TERM;
    // A peer fenced replica 1 at the last term (it would take MAX_TERM + 1,
    // the others would refuse it): elect above the others instead.
    let mut poisoned = seen(1, Idle, last, 5, 10);
    poisoned.epoch = Epoch::new(last, CoordinatorId(0xbad));
    let obs = [
        up(poisoned),
        up(seen(2, Follower, 5, 5, 10)),
        up(seen(3, Follower, 5, 5, 10)),
    ];
    let mut current = three(me);
    // The refused fence reported its epoch: remembered, and passed over too.
    current.max_epoch = poisoned.epoch;
    assert_eq!(
        plan(&obs, current),
        Plan::Elect {
            epoch: Epoch::new(6, me)
        }
    );
    // Once the others lead and follow at 6, the leader is kept: the
    // replica above them is not a reason to elect again and again.
    let obs = [
        up(poisoned),
        up(StatusSummary {
            epoch: Epoch::new(6, me),
            ..seen(2, Leader, 5, 5, 10)
        }),
        up(StatusSummary {
            epoch: Epoch::new(6, me),
            ..seen(3, Follower, 5, 5, 10)
        }),
    ];
    current.minted = Epoch::new(6, me);
    current.leader = Some(1);
    assert_eq!(
        plan(&obs, current),
        Plan::Steady {
            leader: 1,
            epoch: Epoch::new(6, me),
            follow: vec![0],
        }
    );
    // Even a peer's "leader" up there is not adopted while too few
    // replicas could follow it.
    let mut usurper = poisoned;
    usurper.role = Leader;
    let obs = [up(usurper), obs[1], obs[2]];
    assert!(matches!(
        plan(&obs, current),
        Plan::Steady { leader: 1, .. }
    ));
}

#[test]
fn replicas_pushed_to_the_last_term_as_a_quorum_are_followed_past_it() {
    let me = CoordinatorId(0x11);
    let last = Epoch::new(semikv_protocol::MAX_TERM, CoordinatorId(0xbad));
    let at_last = |id| StatusSummary {
        epoch: last,
        ..seen(id, Idle, 0, 5, 10)
    };
    let obs = [
        up(at_last(1)),
        up(at_last(2)),
        up(seen(3, Follower, 5, 5, 10)),
    ];
    let next = last.successor(me).unwrap();
    assert!(next.acceptable_after(last));
    assert_eq!(plan(&obs, three(me)), Plan::Elect { epoch: next });
}

#[test]
fn an_election_never_mints_at_or_below_an_epoch_it_minted_before() {
    let me = CoordinatorId(0x11);
    // It fenced at 9 and promoted at 9, and nobody reported 9 yet: 10,
    // not 9 again.
    let mut current = BalancerView {
        minted: Epoch::new(9, me),
        ..three(me)
    };
    let obs = [up(seen(1, Idle, 5, 5, 10)), up(seen(2, Idle, 5, 5, 10))];
    assert_eq!(
        plan(&obs, current),
        Plan::Elect {
            epoch: Epoch::new(10, me)
        }
    );
    // Had it promoted no one at 9, it goes on at 9.
    current.ballot = Some(Epoch::new(9, me));
    assert_eq!(
        plan(&obs, current),
        Plan::Elect {
            epoch: Epoch::new(9, me)
        }
    );
}

#[test]
fn a_leader_whose_followers_still_commit_is_not_elected_away() {
    let with_commit = |s: StatusSummary, commit: u64| StatusSummary {
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
    assert_eq!(plan(&obs, BalancerView::default()), Plan::Wait);
    assert_eq!(plan(&[], BalancerView::default()), Plan::Wait);
}

#[test]
fn live_leader_at_highest_epoch_is_adopted_without_new_epoch() {
    let obs = [
        up(seen(1, Follower, 5, 5, 10)),
        up(seen(2, Leader, 5, 5, 12)),
        up(seen(3, Follower, 5, 5, 11)),
    ];
    assert_eq!(
        plan(&obs, BalancerView::default()),
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
        plan(&obs, BalancerView::default()),
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
    assert_eq!(
        plan(&obs, BalancerView::default()),
        Plan::Elect { epoch: ep(7) }
    );
}

#[test]
fn balancer_memory_of_a_higher_epoch_prevents_adoption() {
    let obs = [up(seen(1, Leader, 5, 5, 10))];
    let current = BalancerView {
        leader: None,
        max_epoch: ep(6),
        ..BalancerView::default()
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
    let current = BalancerView {
        leader: Some(0),
        max_epoch: ep(3),
        ..BalancerView::default()
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
    let current = BalancerView {
        leader: Some(0),
        max_epoch: ep(3),
        ..BalancerView::default()
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
        plan(&obs, BalancerView::default()),
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
    let current = BalancerView {
        leader: Some(1),
        max_epoch: ep(4),
        ..BalancerView::default()
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
    let current = BalancerView {
        leader: Some(1),
        max_epoch: ep(4),
        ..BalancerView::default()
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
    let current = BalancerView {
        leader: Some(1),
        max_epoch: ep(4),
        ..BalancerView::default()
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
    let current = BalancerView {
        leader: Some(0),
        max_epoch: ep(4),
        ..BalancerView::default()
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
    assert_eq!(plan(&obs, BalancerView::default()), Plan::Wait);
}

#[test]
fn startup_grace_waits_for_every_replica_before_electing() {
    let grace = BalancerView {
        startup_grace: true,
        ..BalancerView::default()
    };
    let partial = [up(seen(1, Idle, 0, 0, 0)), down(None)];
    assert_eq!(plan(&partial, grace), Plan::Wait);
    let all = [up(seen(1, Idle, 0, 0, 0)), up(seen(2, Idle, 0, 0, 0))];
    assert_eq!(plan(&all, grace), Plan::Elect { epoch: ep(1) });
    assert_eq!(
        plan(&partial, BalancerView::default()),
        Plan::Elect { epoch: ep(1) }
    );
}

#[test]
fn startup_grace_does_not_delay_adoption() {
    let grace = BalancerView {
        startup_grace: true,
        ..BalancerView::default()
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
