//! Elections: start-up, adoption, a crashed or silent leader, the quorum of
//! answers, postponement, a promote whose answer was lost.

use super::*;

#[test]
fn startup_promotes_the_most_up_to_date_replica_and_the_others_follow() {
    let idle = |term, index| Model::new(0, NodeRole::Idle, term, index);
    let mut sim = Sim::new(cluster(vec![idle(2, 5), idle(2, 9), idle(1, 20)]), 1);
    sim.until("slot 1 leads at term 3", 10, |s| s.leads(1, 3));
    sim.until("the others follow it", 10, |s| {
        s.follows(0, 1, 3) && s.follows(2, 1, 3)
    });
    assert_eq!(sim.models[1].promotes.len(), 1);
    assert!(sim.models[0].fenced_at.is_some() && sim.models[2].fenced_at.is_some());
    assert_eq!(sim.tables[0].leader().map(|l| l.slot), Some(1));
}

#[test]
fn a_live_leader_is_adopted_without_a_new_epoch() {
    let mut sim = Sim::new(
        cluster(vec![leader(4, 10), follower(4, 10), follower(4, 9)]),
        1,
    );
    sim.until("adopted", 5, |s| s.tables[0].leader().is_some());
    for _ in 0..50 {
        sim.tick();
    }
    assert!(sim.leads(0, 4));
    assert!(sim.fence_epochs().is_empty(), "an election ran");
}

#[test]
fn a_crashed_leader_is_replaced_at_once_through_a_broken_link() {
    let mut sim = Sim::new(
        cluster(vec![leader(3, 10), follower(3, 8), follower(3, 9)]),
        1,
    );
    sim.until("adopted", 5, |s| s.tables[0].leader().is_some());
    sim.links[0] = Link::Refused;
    let before = sim.now;
    sim.feed(0, Event::Broken(vec![0]));
    assert!(sim.leads(2, 4), "the most up-to-date follower leads");
    assert!(sim.follows(1, 2, 4));
    assert_eq!(sim.now, before, "a refused leader costs no timeout");
}

#[test]
fn a_silent_leader_is_fenced_but_not_waited_for() {
    let mut sim = Sim::new(
        cluster(vec![leader(3, 10), follower(3, 10), follower(3, 9)]),
        1,
    );
    sim.until("adopted", 5, |s| s.tables[0].leader().is_some());
    sim.links[0] = Link::Silent;
    sim.until("slot 1 leads at term 4", 10, |s| s.leads(1, 4));
    let fences: Vec<&Command> = sim
        .commands
        .iter()
        .map(|(_, c)| c)
        .filter(|c| matches!(c, Command::Fence { .. }))
        .collect();
    assert_eq!(
        fences.first(),
        Some(&&Command::Fence {
            slots: vec![0],
            epoch: sim.models[1].epoch,
            wait: sim
                .config
                .election_wait
                .max(crate::group::election::MIN_CHECK_TIMEOUT),
            awaited: false,
        }),
        "the lost leader is fenced in the background: {fences:?}"
    );
    assert!(
        matches!(fences.get(1), Some(Command::Fence { slots, awaited: true, .. }) if slots == &vec![1, 2]),
        "{fences:?}"
    );
}

#[test]
fn no_election_without_enough_answers_to_know_every_acknowledged_write() {
    // Semi-sync to one follower: a write is acknowledged once the leader and
    // one follower hold it. Slot 1 holds everything; slot 2 lags.
    let mut sim = Sim::new(
        cluster(vec![leader(3, 10), follower(3, 10), follower(3, 8)]),
        1,
    );
    sim.until("adopted", 5, |s| s.tables[0].leader().is_some());
    // The leader dies while slot 1 is too busy to answer: slot 2 alone
    // cannot tell whether slot 1 holds writes it lacks.
    sim.links[1] = Link::Silent;
    sim.links[0] = Link::Refused;
    sim.until("several election attempts reached slot 2", 500, |s| {
        s.models[2].fences.len() >= 5
    });
    assert!(
        sim.models[2].promotes.is_empty(),
        "a lagging replica was promoted without hearing from slot 1"
    );
    sim.links[1] = Link::Up;
    sim.until("slot 1 (holding every write) leads", 50, |s| {
        s.models[1].role == NodeRole::Leader
    });
    assert!(sim.models[2].promotes.is_empty());
}

#[test]
fn a_postponed_election_goes_on_at_the_same_epoch_and_backs_off() {
    let mut sim = Sim::new(
        cluster(vec![leader(3, 10), follower(3, 10), follower(3, 8)]),
        1,
    );
    sim.until("adopted", 5, |s| s.tables[0].leader().is_some());
    sim.links[1] = Link::Silent;
    sim.links[0] = Link::Refused;
    // 200 heartbeats (4 s) with nothing changing: the attempts back off.
    for _ in 0..200 {
        sim.tick();
    }
    let fenced: BTreeSet<Epoch> = sim.models[2].fences.iter().copied().collect();
    assert_eq!(
        fenced.len(),
        1,
        "a postponed election minted new epochs: {fenced:?}"
    );
    let ballot = *fenced.first().unwrap();
    assert_eq!(ballot.term(), 4, "one term above the highest seen");
    assert_eq!(ballot.coordinator(), sim.engines[0].coordinator());
    let attempts = sim.models[2].fences.len();
    assert!(
        (3..=20).contains(&attempts),
        "{attempts} attempts in 200 heartbeats: the back-off does not work"
    );
    // A change of health retries at once, at that very epoch.
    sim.links[1] = Link::Up;
    sim.until("slot 1 leads", 5, |s| s.models[1].role == NodeRole::Leader);
    assert_eq!(sim.models[1].promotes, vec![ballot]);
}

#[test]
fn a_promote_whose_answer_was_lost_is_never_repeated_at_its_epoch() {
    let idle = |term, index| Model::new(0, NodeRole::Idle, term, index);
    let mut sim = Sim::new(cluster(vec![idle(1, 5), idle(1, 3), idle(1, 3)]), 1);
    sim.links[0] = Link::LosesAnswers;
    for _ in 0..100 {
        sim.tick();
    }
    let promotes = sim.promotes_sent();
    let epochs: HashSet<Epoch> = promotes.iter().map(|&(_, e)| e).collect();
    assert_eq!(
        epochs.len(),
        promotes.len(),
        "promoted twice at one epoch: {promotes:?}"
    );
    sim.links[0] = Link::Up;
    sim.until("a leader is known", 20, |s| s.tables[0].leader().is_some());
}
