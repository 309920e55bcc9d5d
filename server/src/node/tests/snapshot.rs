//! Snapshots: a follower behind the leader's, compaction in steps, and
//! installing one.

use super::*;

#[test]
fn a_follower_behind_the_snapshot_gets_a_snapshot() {
    let mut n = lone_leader();
    for i in 0..10 {
        propose(&mut n, set(&format!("k{i}"), "v")).unwrap();
    }
    flush(&mut n);
    assert_eq!(n.commit_index(), LogIndex(11));
    let job = n.snapshot_job(0).unwrap();
    assert_eq!(job.meta.last_index, LogIndex(11));
    assert_eq!(job.store.len(), 10);
    assert!(n.snapshot_job(0).is_none(), "one snapshot at a time");
    n.snapshot_done(Some(job.meta.last_index));
    assert!(n
        .take_outbox()
        .0
        .iter()
        .any(|c| matches!(c, WalCmd::Compact(LogIndex(11)))));
    let (plan, _) = n.plan_stream(Epoch::from_raw(1), LogIndex(0), &[]).unwrap();
    assert_eq!(plan, StreamPlan::Snapshot);
    let (plan, _) = n
        .plan_stream(Epoch::from_raw(1), LogIndex(11), n.log.history())
        .unwrap();
    assert_eq!(
        plan,
        StreamPlan::FromPrefix {
            prefix: LogIndex(11),
            prefix_epoch: Epoch::from_raw(1),
            // Index 11 is the snapshot's base: only its epoch is known.
            prefix_crc: None,
        }
    );
    assert!(n.plan_stream(Epoch::from_raw(2), LogIndex(0), &[]).is_err());
}

#[test]
fn a_big_snapshot_is_compacted_in_steps_and_the_next_waits_for_it() {
    let mut n = lone_leader();
    let writes = COMPACT_PER_STEP * 2 + 10;
    for i in 0..writes {
        propose(&mut n, set(&format!("k{i}"), "v")).unwrap();
    }
    flush(&mut n);
    let job = n.snapshot_job(0).unwrap();
    let covered = job.meta.last_index;
    drop(job);
    n.snapshot_done(Some(covered));
    assert_eq!(n.log.base_index(), LogIndex(COMPACT_PER_STEP as u64));
    // Each check drops one more step; no new snapshot starts before the
    // covered entries are gone, even with a zero size threshold.
    assert!(n.snapshot_job(0).is_none());
    assert_eq!(n.log.base_index(), LogIndex(2 * COMPACT_PER_STEP as u64));
    assert!(n.snapshot_job(0).is_none());
    assert_eq!(n.log.base_index(), covered);
    propose(&mut n, set("one-more", "v")).unwrap();
    flush(&mut n);
    assert!(n.snapshot_job(0).is_some());
}

#[test]
fn an_installed_snapshot_resets_the_compaction_target() {
    let (mut n, gen) = streaming_follower();
    let first: Vec<Entry> = (1..=10)
        .map(|i| entry(i, 1, set(&format!("k{i}"), "v")))
        .collect();
    n.on_entries(gen, Epoch::from_raw(1), LogIndex(0), first, LogIndex(10))
        .unwrap();
    flush(&mut n);
    let job = n.snapshot_job(0).unwrap();
    drop(job);
    n.snapshot_done(Some(LogIndex(10)));
    // An older snapshot from the leader (the node does not judge that;
    // the replication layer does), then entries after it.
    let history = vec![EpochStart {
        epoch: Epoch::from_raw(1),
        start: LogIndex(1),
    }];
    n.on_snapshot_installed(
        gen,
        Epoch::from_raw(1),
        LogIndex(5),
        Epoch::from_raw(1),
        history,
        Store::default(),
    )
    .unwrap();
    let next: Vec<Entry> = (6..=12)
        .map(|i| entry(i, 1, set(&format!("n{i}"), "w")))
        .collect();
    n.on_entries(gen, Epoch::from_raw(1), LogIndex(5), next, LogIndex(5))
        .unwrap();
    flush(&mut n);
    // A snapshot check compacts a step: it must not drop what is not
    // applied yet.
    let _ = n.snapshot_job(usize::MAX);
    n.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(12),
        Vec::new(),
        LogIndex(12),
    )
    .unwrap();
    assert_eq!(
        n.applied,
        LogIndex(12),
        "entries dropped before being applied"
    );
}
