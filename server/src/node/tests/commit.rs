//! Commits and reads on the leader, recovery, and the epoch checks on
//! every role.

use super::*;

#[test]
fn a_write_commits_only_when_durable_and_acknowledged_by_k_followers() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    assert_eq!(n.log.last_index(), LogIndex(1), "promotion appends a no-op");
    let (index, mut rx) = propose(&mut n, set("a", "1")).unwrap();
    assert_eq!(index, LogIndex(2));
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
    assert_eq!(
        n.commit_index(),
        LogIndex(0),
        "not durable on the leader yet"
    );
    n.flush_effects();
    assert!(rx.try_recv().is_err());
    flush(&mut n);
    assert_eq!(n.commit_index(), LogIndex(2));
    n.flush_effects();
    assert_eq!(rx.try_recv().unwrap(), Ok(LogIndex(2)));
    assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
}

#[test]
fn without_enough_acknowledgements_nothing_commits_or_is_visible() {
    let mut n = fresh(1);
    n.persist_and_promote(
        Epoch::from_raw(1),
        LeaderSettings {
            sync_replicas: 2,
            ..SETTINGS
        },
    )
    .unwrap();
    let (_, mut rx) = propose(&mut n, set("a", "1")).unwrap();
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
    assert_eq!(n.commit_index(), LogIndex(0));
    assert_eq!(value(&n, "a"), None, "uncommitted writes are never read");
    assert_eq!(n.ack_count(LogIndex(2)), (1, 2));
    assert!(!n.force_commit(LogIndex(2)), "async fallback is off");
    n.on_ack(ReplicaId(3), Epoch::from_raw(1), LogIndex(2));
    n.flush_effects();
    assert_eq!(rx.try_recv().unwrap(), Ok(LogIndex(2)));
}

#[test]
fn acks_of_another_epoch_are_ignored() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(2), SETTINGS).unwrap();
    propose(&mut n, set("a", "1")).unwrap();
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
    assert_eq!(n.commit_index(), LogIndex(0));
}

#[test]
fn async_fallback_commits_without_followers_only_when_enabled() {
    let mut n = fallback_leader();
    let (index, _rx) = propose(&mut n, set("a", "1")).unwrap();
    assert!(!n.force_commit(index), "not durable yet");
    flush(&mut n);
    assert!(n.force_commit(index));
    assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
}

#[test]
fn an_inherited_tail_commits_only_with_an_entry_of_the_new_epoch() {
    // A replica that led epoch 1 and holds an unacknowledged tail.
    let mut log = MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new());
    log.append(entry(1, 1, set("a", "old"))).unwrap();
    let mut n = Node::new(
        ReplicaId(1),
        "127.0.0.1:9001".to_string(),
        Recovered {
            epoch: Epoch::from_raw(1),
            log,
            store: Store::default(),
            commit: LogIndex(0),
        },
        Signals::new(),
    );
    assert_eq!(value(&n, "a"), None, "the tail is tentative after restart");
    n.persist_and_promote(Epoch::from_raw(2), SETTINGS).unwrap();
    flush(&mut n);
    // A follower holding only the old entry does not commit it.
    n.on_ack(ReplicaId(2), Epoch::from_raw(2), LogIndex(1));
    assert_eq!(n.commit_index(), LogIndex(0));
    // Once it holds the new epoch's no-op, both commit.
    n.on_ack(ReplicaId(2), Epoch::from_raw(2), LogIndex(2));
    assert_eq!(n.commit_index(), LogIndex(2));
    assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"old")));
}

#[test]
fn a_new_leader_holds_reads_until_its_own_epoch_commits() {
    let mut log = MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new());
    log.append(entry(1, 1, set("a", "1"))).unwrap();
    log.append(entry(
        2,
        1,
        WriteOp::Delete {
            key: Bytes::from_static(b"a"),
        },
    ))
    .unwrap();
    // The delete was acknowledged, but the recorded commit index lags.
    let mut n = Node::new(
        ReplicaId(1),
        "127.0.0.1:9001".to_string(),
        Recovered {
            epoch: Epoch::from_raw(1),
            log,
            store: Store::default(),
            commit: LogIndex(1),
        },
        Signals::new(),
    );
    assert_eq!(
        n.read(b"a"),
        Some(Some(Bytes::from_static(b"1"))),
        "idle: stale is allowed"
    );
    n.persist_and_promote(Epoch::from_raw(2), SETTINGS).unwrap();
    assert_eq!(
        n.read(b"a"),
        None,
        "a leader must not answer from a lagging map"
    );
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(2), LogIndex(3));
    assert_eq!(n.read(b"a"), Some(None));
}

#[test]
fn recovery_applies_up_to_the_recorded_commit_index_only() {
    let mut log = MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new());
    log.append(entry(1, 1, set("a", "1"))).unwrap();
    log.append(entry(2, 1, set("b", "2"))).unwrap();
    let n = Node::new(
        ReplicaId(1),
        "127.0.0.1:9001".to_string(),
        Recovered {
            epoch: Epoch::from_raw(1),
            log,
            store: Store::default(),
            commit: LogIndex(1),
        },
        Signals::new(),
    );
    assert_eq!(n.commit_index(), LogIndex(1));
    assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
    assert_eq!(value(&n, "b"), None);
    assert_eq!(n.durable(), LogIndex(2));
}

#[test]
fn a_follower_refuses_writes_naming_its_leader() {
    let mut n = fresh(2);
    assert_eq!(
        propose(&mut n, set("a", "1")).unwrap_err(),
        ErrorReply::NotLeader { leader: None }
    );
    n.persist_and_follow(
        Epoch::from_raw(1),
        ReplicaId(1),
        "127.0.0.1:9001".to_string(),
    )
    .unwrap();
    assert_eq!(
        propose(&mut n, set("a", "1")).unwrap_err(),
        ErrorReply::NotLeader {
            leader: Some("127.0.0.1:9001".to_string())
        }
    );
}

#[test]
fn stale_epochs_are_refused_everywhere() {
    let mut n = fresh(1);
    n.persist_and_fence(Epoch::from_raw(3)).unwrap();
    let stale = ErrorReply::StaleEpoch {
        got: Epoch::from_raw(2),
        current: Epoch::from_raw(3),
    };
    assert_eq!(
        n.persist_and_promote(Epoch::from_raw(2), SETTINGS)
            .unwrap_err(),
        stale
    );
    assert_eq!(
        n.persist_and_follow(Epoch::from_raw(2), ReplicaId(2), "x".to_string())
            .unwrap_err(),
        stale
    );
    assert_eq!(n.persist_and_fence(Epoch::from_raw(2)).unwrap_err(), stale);
    // The fenced epoch itself is accepted for the election that follows.
    n.persist_and_promote(Epoch::from_raw(3), SETTINGS).unwrap();
    assert_eq!(n.status().role, NodeRole::Leader);
    // A leader of an epoch cannot be told to follow in that same epoch.
    assert!(n
        .persist_and_follow(Epoch::from_raw(3), ReplicaId(2), "x".to_string())
        .is_err());
}

#[test]
fn a_fenced_leader_steps_down_and_pending_writes_become_indeterminate() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    let (_, mut rx) = propose(&mut n, set("a", "1")).unwrap();
    n.persist_and_fence(Epoch::from_raw(2)).unwrap();
    n.flush_effects();
    assert!(matches!(
        rx.try_recv().unwrap(),
        Err(ErrorReply::Indeterminate { .. })
    ));
    assert_eq!(n.status().role, NodeRole::Idle);
    assert!(propose(&mut n, set("b", "2")).is_err());
    // Late acks of the old epoch commit nothing.
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(2));
    assert_eq!(n.commit_index(), LogIndex(0));
}

#[test]
fn a_followers_stream_lag_is_its_missing_entries_and_how_long_it_lacked_the_first() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let propose_at = |n: &mut Node, key: &str, now: Instant| {
        let (to, _rx) = mpsc::channel(1);
        n.propose(
            set(key, "v"),
            Completion {
                to,
                id: RequestId(1),
            },
            now,
        )
        .unwrap()
        .ticket
        .index
    };
    let first = propose_at(&mut n, "a", at(0));
    propose_at(&mut n, "b", at(10));
    let third = propose_at(&mut n, "c", at(20));
    n.on_follower_stream(ReplicaId(2), true);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), third);
    n.on_ack(ReplicaId(3), Epoch::from_raw(1), first);
    let lags = n.stream_lags(at(50));
    assert_eq!(lags.len(), 2);
    assert_eq!(lags[0].follower, ReplicaId(2));
    assert_eq!(lags[0].entries, 0);
    assert_eq!(lags[0].behind_for, Some(Duration::ZERO));
    assert!(lags[0].connected);
    // Replica 3 lacks "b" (appended at 10 ms) and after: 40 ms behind.
    assert_eq!(lags[1].entries, 2);
    assert_eq!(lags[1].behind_for, Some(Duration::from_millis(40)));
    assert!(!lags[1].connected);
    assert!(
        fresh(2).stream_lags(at(50)).is_empty(),
        "only a leader has them"
    );
}
