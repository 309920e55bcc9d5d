//! A follower's stream: applying what the leader committed, refusing
//! what does not continue its log, truncating a deposed leader's tail.

use super::*;

#[test]
fn a_follower_applies_only_what_the_leader_committed() {
    let (mut n, gen) = streaming_follower();
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
    n.persist_and_follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
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
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    propose(&mut n, set("lost", "x")).unwrap();
    flush(&mut n);
    assert_eq!(n.log.last_index(), LogIndex(2));
    n.persist_and_follow(Epoch::from_raw(2), ReplicaId(2), "l2".to_string())
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
    let (mut n, gen) = streaming_follower();
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
    n.persist_and_follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
        .unwrap();
    let old = n.role_gen;
    n.persist_and_follow(Epoch::from_raw(2), ReplicaId(3), "l3".to_string())
        .unwrap();
    assert_eq!(stream_from(&mut n, old, 1, 0), Err(StreamError::Superseded));
    assert_eq!(
        n.ackable(old, Epoch::from_raw(1)),
        Err(StreamError::Superseded)
    );
}

#[test]
fn durability_reports_of_an_older_generation_are_ignored() {
    let (mut n, gen) = streaming_follower();
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

/// A follower whose disk is full takes no more entries (they would pile up
/// in memory) but still learns the commit index from heartbeats.
#[test]
fn a_follower_with_a_full_disk_refuses_entries_but_not_heartbeats() {
    let (mut n, gen) = streaming_follower();
    n.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(0),
        vec![entry(1, 1, set("a", "1"))],
        LogIndex(0),
    )
    .unwrap();
    n.on_disk_full("no space".to_string());
    let refused = n.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(1),
        vec![entry(2, 1, set("b", "2"))],
        LogIndex(1),
    );
    assert!(
        matches!(refused, Err(StreamError::DiskFull(_))),
        "{refused:?}"
    );
    assert_eq!(n.log.last_index(), LogIndex(1));
    n.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(1),
        Vec::new(),
        LogIndex(1),
    )
    .unwrap();
    assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
}
