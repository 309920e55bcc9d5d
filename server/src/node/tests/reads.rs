//! Reads at a consistency level: a leader's read index waits for a round of
//! confirmation that started after it, from followers of its epoch, and is
//! refused once the leadership it was taken in is over; a follower confirms
//! only while it follows the epoch checked.

use super::*;

/// A leader at epoch 1 needing one follower, with its promotion no-op
/// committed by replica 2.
fn confirmed_leader() -> Node {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    flush(&mut n);
    let last = n.log.last_index();
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), last);
    assert_eq!(n.commit_index(), last);
    n.take_effects();
    n
}

#[test]
fn a_read_index_waits_for_a_round_that_started_after_it() {
    let mut n = confirmed_leader();
    let first = n.begin_read_index().unwrap().unwrap();
    assert_eq!(n.take_effects().lead_check, Some(1));
    assert_eq!(first.index, n.commit_index());
    assert!(!n.read_index_ready(&first).unwrap());

    // A confirmation of an earlier round (sent before the read arrived)
    // does not count.
    let second = n.begin_read_index().unwrap().unwrap();
    n.on_lead_confirm(ReplicaId(2), Epoch::from_raw(1), 1);
    assert!(n.take_effects().confirmed);
    assert!(n.read_index_ready(&first).unwrap());
    assert!(!n.read_index_ready(&second).unwrap());

    // One confirmation answers every round up to it.
    n.on_lead_confirm(ReplicaId(2), Epoch::from_raw(1), 2);
    assert!(n.read_index_ready(&second).unwrap());
}

#[test]
fn confirmations_of_another_epoch_or_unasked_rounds_do_not_count() {
    let mut n = confirmed_leader();
    let at = n.begin_read_index().unwrap().unwrap();
    n.on_lead_confirm(ReplicaId(2), Epoch::from_raw(0), 1);
    assert!(!n.read_index_ready(&at).unwrap());
    // A round from the future is clamped to the last one asked, so it
    // cannot answer a read that arrives later.
    n.on_lead_confirm(ReplicaId(2), Epoch::from_raw(1), 99);
    assert!(n.read_index_ready(&at).unwrap());
    let later = n.begin_read_index().unwrap().unwrap();
    assert!(!n.read_index_ready(&later).unwrap());
}

#[test]
fn a_read_index_needs_the_read_index_applied() {
    let mut n = confirmed_leader();
    let (index, _waiter) = propose(&mut n, set("a", "1")).unwrap();
    flush(&mut n);
    // Not committed: the read index is the commit before it.
    let at = n.begin_read_index().unwrap().unwrap();
    assert!(at.index < index);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), index);
    n.on_lead_confirm(ReplicaId(2), Epoch::from_raw(1), 1);
    assert!(n.read_index_ready(&at).unwrap());
    assert!(n.applied_index() >= index);
}

#[test]
fn a_deposed_leader_refuses_its_waiting_reads() {
    let mut n = confirmed_leader();
    let at = n.begin_read_index().unwrap().unwrap();
    n.persist_and_fence(Epoch::from_raw(2)).unwrap();
    assert!(matches!(
        n.read_index_ready(&at),
        Err(ErrorReply::NotLeader { .. })
    ));
    assert!(matches!(
        n.begin_read_index(),
        Err(ErrorReply::NotLeader { .. })
    ));
}

#[test]
fn a_new_leader_holds_linearizable_reads_until_its_first_commit() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    assert_eq!(n.begin_read_index(), Ok(None));
}

#[test]
fn a_lone_leader_confirms_at_once() {
    let mut n = lone_leader();
    flush(&mut n);
    let at = n.begin_read_index().unwrap().unwrap();
    assert!(n.read_index_ready(&at).unwrap());
}

#[test]
fn followers_do_not_take_linearizable_reads() {
    let (mut n, _) = streaming_follower();
    assert!(matches!(
        n.begin_read_index(),
        Err(ErrorReply::NotLeader { .. })
    ));
}

#[test]
fn a_follower_confirms_only_the_epoch_it_follows() {
    let (mut n, gen) = streaming_follower();
    assert!(n.confirmable(gen, Epoch::from_raw(1)).is_ok());
    assert_eq!(
        n.confirmable(gen, Epoch::from_raw(2)),
        Err(StreamError::Superseded)
    );
    n.persist_and_fence(Epoch::from_raw(2)).unwrap();
    assert_eq!(
        n.confirmable(gen, Epoch::from_raw(1)),
        Err(StreamError::Superseded)
    );
}
