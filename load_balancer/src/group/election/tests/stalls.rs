//! Leaders cut off from their followers: kept, replaced by a successor, or
//! re-promoted.

use super::*;

#[test]
fn a_leader_reporting_its_followers_connected_is_never_replaced() {
    let mut sim = Sim::new(
        cluster(vec![leader(4, 10), follower(4, 10), follower(4, 10)]),
        1,
    );
    // 3 s of 20 ms heartbeats: well past the stall grace and damping.
    for _ in 0..150 {
        sim.tick();
    }
    assert!(sim.leads(0, 4));
    assert!(sim.fence_epochs().is_empty(), "an election ran");
}

#[test]
fn a_leader_without_connected_followers_is_replaced_by_a_follower() {
    let mut models = cluster(vec![leader(4, 10), follower(4, 10), follower(4, 10)]);
    models[0].connected_followers = Some(0);
    let mut sim = Sim::new(models, 1);
    sim.until("a follower leads at term 5", 200, |s| {
        s.leads(1, 5) || s.leads(2, 5)
    });
    let (new, other) = if sim.leads(1, 5) { (1, 2) } else { (2, 1) };
    sim.until("the old leader and the other follower follow it", 10, |s| {
        s.follows(0, new, 5) && s.follows(other, new, 5)
    });
    assert!(
        sim.models[0].promotes.is_empty(),
        "the stalled leader was re-promoted"
    );
    let fenced_at = |slot: usize| sim.models[slot].fenced_at.unwrap();
    assert!(fenced_at(1) < fenced_at(0) && fenced_at(2) < fenced_at(0));
    assert!(
        sim.commands.iter().any(|(_, c)| *c
            == Command::Disconnect {
                slot: 0,
                awaited: true
            }),
        "the stalled leader's links were not dropped before its fence"
    );
}

#[test]
fn a_stalled_leader_is_re_promoted_when_no_follower_holds_its_commits() {
    let mut models = cluster(vec![leader(4, 10), follower(4, 8), follower(4, 8)]);
    models[0].connected_followers = Some(0);
    let mut sim = Sim::new(models, 1);
    sim.until("slot 0 re-promoted at term 5", 200, |s| s.leads(0, 5));
    sim.until("the others follow it", 10, |s| {
        s.follows(1, 0, 5) && s.follows(2, 0, 5)
    });
    assert_eq!(sim.models[0].promotes.len(), 1);
    assert!(sim.models[1].promotes.is_empty() && sim.models[2].promotes.is_empty());
}

#[test]
fn a_successor_must_hold_what_the_stalled_leader_held_when_promoted() {
    // Sim seed 25898: the leader commits index 108 with slot 1's
    // acknowledgement and dies before slot 1 learns it committed; slot 2
    // never got 108. Slot 1 is elected, its stream never reaches slot 2,
    // and it stalls: slot 2 must not succeed it.
    let mut models = cluster(vec![leader(1, 108), follower(1, 108), follower(1, 107)]);
    models[1].commit = Some(107);
    let mut sim = Sim::new(models, 1);
    sim.until("slot 0 is the leader", 50, |s| {
        s.tables[0].leader().map(|l| l.slot) == Some(0)
    });
    sim.links[0] = Link::Refused;
    sim.until("slot 1 leads at term 2", 200, |s| s.leads(1, 2));
    sim.models[1].connected_followers = Some(0);
    sim.until("a leader at term 3", 1000, |s| {
        (0..3).any(|i| s.leads(i, 3))
    });
    assert!(
        sim.models[2].promotes.is_empty(),
        "slot 2, without index 108, was promoted"
    );
    assert!(sim.leads(1, 3), "slot 1 re-promoted");
}

#[test]
fn a_stalled_leader_is_kept_when_no_other_replica_answers_the_fence() {
    let mut models = cluster(vec![leader(4, 10), follower(4, 10), follower(4, 10)]);
    models[0].connected_followers = Some(0);
    let mut sim = Sim::new(models, 1);
    sim.links[1] = Link::MutesFences;
    sim.links[2] = Link::MutesFences;
    sim.until("an election away from the leader was tried", 200, |s| {
        !s.fence_epochs().is_empty()
    });
    // Another second of heartbeats, within the 5 s damping: with no answer
    // there is no new epoch anywhere, and the leader stays.
    for _ in 0..50 {
        sim.tick();
    }
    assert!(sim.leads(0, 4));
    assert!(sim.models[0].fences.is_empty() && sim.models[0].promotes.is_empty());
    assert_eq!(sim.tables[0].leader().map(|l| l.slot), Some(0));
    assert_eq!(
        sim.tables[0].cluster_status().epoch.term(),
        4,
        "max epoch unchanged"
    );
}

#[test]
fn a_mute_stalled_leader_and_one_lagging_answer_promote_nobody() {
    // Semi-sync to one follower of three: slot 1 may hold writes slot 2
    // lacks.
    let mut sim = Sim::new(
        cluster(vec![leader(4, 10), follower(4, 10), follower(4, 8)]),
        1,
    );
    sim.until("adopted", 5, |s| s.tables[0].leader().is_some());
    sim.links[1] = Link::Silent;
    sim.models[0].connected_followers = Some(0);
    sim.links[0] = Link::MutesFences;
    sim.until("several elections reached slot 2", 2000, |s| {
        s.models[2].fences.len() >= 3
    });
    assert!(
        sim.models.iter().all(|m| m.promotes.is_empty()),
        "promoted without hearing from slot 1 or the leader"
    );
}
