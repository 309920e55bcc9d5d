//! The core's decisions, step by step on tokio's paused clock: nothing
//! waits, the test moves time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::advance;

use super::super::core::{Core, Plan, Report, Work};
use super::super::{task, WriterStats, DISK_FULL_RETRY, IDLE_WAIT};
use super::*;
use crate::config::FsyncPolicy;

/// A core over a fresh lone leader, its no-op written and synced; the
/// directory, the node, the core and its counters.
fn rig(policy: FsyncPolicy) -> (tempfile::TempDir, Node, Core, Arc<WriterStats>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, mut wal) = lone_leader(dir.path(), Signals::new());
    write_queued(&mut node, &mut wal);
    let stats = Arc::new(WriterStats::default());
    let core = Core::new(wal, policy, stats.clone(), task::now);
    (dir, node, core, stats)
}

fn fsyncs(stats: &WriterStats) -> u64 {
    stats.fsyncs.load(Ordering::Relaxed)
}

/// Takes the outbox through `plan`, insisting it is a write.
fn plan_write(core: &mut Core, node: &mut Node) -> Work {
    match core.plan(node, false) {
        Plan::Work(work @ Work::Write(_)) => work,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Tells the node a batch is durable, as the driver does; its last index.
fn durable(node: &mut Node, report: Report) -> LogIndex {
    match report {
        Report::Durable {
            generation,
            last,
            full_for,
        } => {
            if full_for.is_some() {
                node.on_disk_room();
            }
            node.on_durable(generation, last);
            // Pushes the answers out, as dropping the replica's guard does.
            node.flush_effects();
            last
        }
        other => panic!("expected durable, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_it_waits_for_work_and_stops_on_shutdown_without_a_sync() {
    let (_dir, mut node, mut core, stats) = rig(FsyncPolicy::Always);
    assert!(matches!(core.plan(&mut node, false), Plan::Wait(w) if w == IDLE_WAIT));
    assert!(matches!(core.plan(&mut node, true), Plan::Stop));
    core.stop().unwrap();
    assert_eq!(fsyncs(&stats), 0);
}

/// Group commit: everything queued goes into one batch and one fsync.
#[tokio::test(start_paused = true)]
async fn always_syncs_each_batch_once_whatever_it_holds() {
    let (dir, mut node, mut core, stats) = rig(FsyncPolicy::Always);
    let mut answers: Vec<Answer> = (0..10)
        .map(|i| propose(&mut node, &format!("k{i}")).unwrap())
        .collect();
    let work = plan_write(&mut core, &mut node);
    assert!(node.outbox_is_empty(), "the plan took the outbox");
    let last = durable(&mut node, core.work(work).unwrap());
    assert_eq!(last, LogIndex(11));
    assert_eq!(fsyncs(&stats), 1);
    assert_eq!(stats.entries.load(Ordering::Relaxed), 10);
    assert!(answers.iter_mut().all(|a| a.try_take().is_some()));
    // Nothing unsynced: stopping adds no fsync.
    assert!(matches!(core.plan(&mut node, true), Plan::Stop));
    core.stop().unwrap();
    assert_eq!(fsyncs(&stats), 1);
    assert_eq!(recovered_keys(dir.path()).len(), 11);
}

#[tokio::test(start_paused = true)]
async fn interval_syncs_when_the_interval_is_due_not_per_batch() {
    let every = Duration::from_millis(50);
    let (_dir, mut node, mut core, stats) = rig(FsyncPolicy::Interval(every));
    propose(&mut node, "a").unwrap();
    let work = plan_write(&mut core, &mut node);
    durable(&mut node, core.work(work).unwrap());
    assert_eq!(fsyncs(&stats), 0, "written, not yet synced");
    // It waits for the rest of the interval, not the idle wait.
    assert!(matches!(core.plan(&mut node, false), Plan::Wait(w) if w == every));
    advance(Duration::from_millis(30)).await;
    assert!(matches!(core.plan(&mut node, false), Plan::Wait(w) if w == Duration::from_millis(20)));
    advance(Duration::from_millis(20)).await;
    let Plan::Work(work @ Work::Sync) = core.plan(&mut node, false) else {
        panic!("expected a sync once due");
    };
    assert_eq!(core.work(work).unwrap(), Report::Nothing);
    assert_eq!(fsyncs(&stats), 1);
    assert!(matches!(core.plan(&mut node, false), Plan::Wait(w) if w == IDLE_WAIT));
    // A batch after a long quiet spell is synced at once.
    advance(every).await;
    propose(&mut node, "b").unwrap();
    let work = plan_write(&mut core, &mut node);
    durable(&mut node, core.work(work).unwrap());
    assert_eq!(fsyncs(&stats), 2);
}

#[tokio::test(start_paused = true)]
async fn never_syncs_only_at_shutdown() {
    let (dir, mut node, mut core, stats) = rig(FsyncPolicy::Never);
    for key in ["a", "b"] {
        propose(&mut node, key).unwrap();
        let work = plan_write(&mut core, &mut node);
        durable(&mut node, core.work(work).unwrap());
        advance(Duration::from_secs(10)).await;
        assert!(matches!(core.plan(&mut node, false), Plan::Wait(w) if w == IDLE_WAIT));
    }
    assert_eq!(fsyncs(&stats), 0);
    assert!(matches!(core.plan(&mut node, true), Plan::Stop));
    core.stop().unwrap();
    assert_eq!(fsyncs(&stats), 1);
    assert_eq!(recovered_keys(dir.path()), vec!["-", "a", "b"]);
}

/// Shutdown does not stop the writer while the outbox holds work.
#[tokio::test(start_paused = true)]
async fn shutdown_writes_what_is_queued_first() {
    let (dir, mut node, mut core, _stats) = rig(FsyncPolicy::Always);
    propose(&mut node, "late").unwrap();
    let Plan::Work(work @ Work::Write(_)) = core.plan(&mut node, true) else {
        panic!("expected the queued write first");
    };
    durable(&mut node, core.work(work).unwrap());
    assert!(matches!(core.plan(&mut node, true), Plan::Stop));
    core.stop().unwrap();
    assert_eq!(recovered_keys(dir.path()), vec!["-", "late"]);
}

/// A batch the disk has no room for is held and retried every
/// [`DISK_FULL_RETRY`]; what was queued after it waits behind it.
#[tokio::test(start_paused = true)]
async fn a_full_disk_holds_the_batch_and_retries_it_before_anything_else() {
    let (dir, mut node, mut core, stats) = rig(FsyncPolicy::Always);
    core.wal_mut().replace_active_for_test(full_disk());
    let mut first = propose(&mut node, "first").unwrap();
    let work = plan_write(&mut core, &mut node);
    let Report::DiskFull(reason) = core.work(work).unwrap() else {
        panic!("expected a full disk");
    };
    assert!(reason.contains("No space left"), "{reason}");
    node.on_disk_full(reason);
    assert!(matches!(
        propose(&mut node, "refused"),
        Err(ErrorReply::DiskFull { .. })
    ));
    // A write the node took before it heard the disk was full: queued
    // after the held batch.
    node.on_disk_room();
    let mut second = propose(&mut node, "second").unwrap();
    node.on_disk_full("still full".to_string());
    // Sleeps (new work does not wake it) until the retry is due.
    let mut slept = Duration::ZERO;
    while let Plan::Sleep(pause) = core.plan(&mut node, false) {
        assert!(pause <= IDLE_WAIT);
        advance(pause).await;
        slept += pause;
    }
    assert!(slept >= DISK_FULL_RETRY, "{slept:?}");
    assert!(
        !node.outbox_is_empty(),
        "the later write waits behind the batch"
    );
    // Still full: held again, for another interval.
    core.wal_mut().replace_active_for_test(full_disk());
    assert!(matches!(
        core.plan(&mut node, false),
        Plan::Work(Work::Retry)
    ));
    assert_eq!(core.work(Work::Retry).unwrap(), Report::Nothing);
    assert!(matches!(core.plan(&mut node, false), Plan::Sleep(_)));
    advance(DISK_FULL_RETRY).await;
    // Room (the failed append's cut-back reopened the real segment).
    let Plan::Work(work @ Work::Retry) = core.plan(&mut node, false) else {
        panic!("expected a retry once due");
    };
    let report = core.work(work).unwrap();
    let Report::Durable { full_for, .. } = &report else {
        panic!("expected the held batch written, got {report:?}");
    };
    assert!(*full_for >= Some(slept + DISK_FULL_RETRY), "{full_for:?}");
    assert_eq!(durable(&mut node, report), LogIndex(2));
    assert_eq!(fsyncs(&stats), 1);
    assert!(node.disk_full().is_none());
    assert!(matches!(first.try_take(), Some(Ok(LogIndex(2)))));
    assert!(second.try_take().is_none());
    // Then the write queued behind it.
    let work = plan_write(&mut core, &mut node);
    assert_eq!(durable(&mut node, core.work(work).unwrap()), LogIndex(3));
    core.stop().unwrap();
    assert_eq!(recovered_keys(dir.path()), vec!["-", "first", "second"]);
}

/// Shutdown while a batch waits for room stops at once, the batch unwritten
/// (none of it was acknowledged) and nothing after it written either.
#[tokio::test(start_paused = true)]
async fn shutdown_while_the_disk_is_full_leaves_the_batch_unwritten() {
    let (dir, mut node, mut core, stats) = rig(FsyncPolicy::Always);
    core.wal_mut().replace_active_for_test(full_disk());
    propose(&mut node, "lost").unwrap();
    let work = plan_write(&mut core, &mut node);
    assert!(matches!(core.work(work).unwrap(), Report::DiskFull(_)));
    assert!(matches!(core.plan(&mut node, true), Plan::Stop));
    core.stop().unwrap();
    assert_eq!(fsyncs(&stats), 0);
    assert_eq!(recovered_keys(dir.path()), vec!["-"]);
}

#[tokio::test(start_paused = true)]
async fn any_other_failure_is_an_error() {
    let (dir, mut node, mut core, _stats) = rig(FsyncPolicy::Always);
    core.wal_mut()
        .replace_active_for_test(failing_disk(dir.path()));
    propose(&mut node, "a").unwrap();
    let work = plan_write(&mut core, &mut node);
    let err = core.work(work).unwrap_err();
    assert!(!err.is_no_space(), "{err}");
}
