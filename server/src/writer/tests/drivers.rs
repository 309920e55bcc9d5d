//! Both drivers end to end on a replica's node: each scenario runs once
//! with the writer thread on a multi-threaded runtime in real time, once
//! with the writer task on a current-thread runtime with paused time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use semikv_protocol::blocking::Blocking;
use tokio_util::sync::CancellationToken;

use super::super::{Writer, WriterError, WriterStats, DISK_FULL_RETRY, IDLE_WAIT};
use super::*;
use crate::config::{Config, FsyncPolicy};
use crate::replica::{Replica, Watches};

/// Runs each named scenario (an `async fn(Blocking)`) with each driver.
macro_rules! with_both_drivers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn thread() {
                super::$scenario(Blocking::Threads).await;
            }

            #[tokio::test(start_paused = true)]
            async fn task() {
                super::$scenario(Blocking::Inline).await;
            }
        }
    )*};
}

with_both_drivers!(
    writes_are_answered_once_durable_and_survive_a_reopen,
    everything_queued_goes_into_one_batch_and_one_fsync,
    interval_syncs_when_due_and_not_per_write,
    never_syncs_only_at_shutdown,
    shutdown_writes_what_is_queued_then_stops,
    a_full_disk_refuses_writes_until_the_batch_fits,
    a_wal_failure_fails_pending_writes_and_requests_shutdown,
);

/// A lone leader's replica over a fresh directory, its WAL ready for the
/// writer (the promotion's no-op written, so a segment exists).
struct Rig {
    dir: tempfile::TempDir,
    replica: Arc<Replica>,
    wal: Option<Wal>,
    stats: Arc<WriterStats>,
}

impl Rig {
    fn new(blocking: Blocking, policy: FsyncPolicy) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let signals = Signals::new();
        let watches = Watches::of(&signals);
        let (mut node, mut wal) = lone_leader(dir.path(), signals);
        write_queued(&mut node, &mut wal);
        let mut config = Config::new(ReplicaId(1), dir.path().to_path_buf());
        config.fsync = policy;
        config.blocking = blocking;
        let replica = Arc::new(Replica::new(
            node,
            watches,
            config,
            CancellationToken::new(),
        ));
        Rig {
            dir,
            replica,
            wal: Some(wal),
            stats: Arc::new(WriterStats::default()),
        }
    }

    fn wal(&mut self) -> &mut Wal {
        self.wal.as_mut().unwrap()
    }

    fn start(&mut self) -> Writer {
        Writer::start(
            self.replica.clone(),
            self.wal.take().unwrap(),
            self.stats.clone(),
        )
        .unwrap()
    }

    fn propose(&self, key: &str) -> Result<Answer, ErrorReply> {
        self.replica.with(|n| propose(n, key))
    }

    fn fsyncs(&self) -> u64 {
        self.stats.fsyncs.load(Ordering::Relaxed)
    }

    /// Requests shutdown as `run` does and waits for the writer.
    async fn stop(&self, writer: Writer) -> Result<(), WriterError> {
        self.replica.shutdown.cancel();
        self.replica.wake_writer();
        tokio::time::timeout(WAIT, writer.join())
            .await
            .expect("the writer did not stop in time")
    }
}

/// Polls `cond` every millisecond until it holds, within [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn writes_are_answered_once_durable_and_survive_a_reopen(blocking: Blocking) {
    let mut rig = Rig::new(blocking, FsyncPolicy::Always);
    let writer = rig.start();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let index = rig.propose(key).unwrap().take().await.unwrap();
        assert_eq!(index, LogIndex(i as u64 + 2));
        assert!(rig.fsyncs() > i as u64, "answered before its fsync");
    }
    assert_eq!(rig.replica.lock().durable(), LogIndex(4));
    rig.stop(writer).await.unwrap();
    assert_eq!(recovered_keys(rig.dir.path()), vec!["-", "a", "b", "c"]);
}

/// Group commit: writes queued before the writer looks make one batch.
async fn everything_queued_goes_into_one_batch_and_one_fsync(blocking: Blocking) {
    let mut rig = Rig::new(blocking, FsyncPolicy::Always);
    let mut answers: Vec<Answer> = (0..50)
        .map(|i| rig.propose(&format!("k{i}")).unwrap())
        .collect();
    let writer = rig.start();
    for (i, answer) in answers.iter_mut().enumerate() {
        assert_eq!(answer.take().await, Ok(LogIndex(i as u64 + 2)));
    }
    rig.stop(writer).await.unwrap();
    assert_eq!(rig.fsyncs(), 1);
    assert_eq!(rig.stats.entries.load(Ordering::Relaxed), 50);
    assert_eq!(recovered_keys(rig.dir.path()).len(), 51);
}

async fn interval_syncs_when_due_and_not_per_write(blocking: Blocking) {
    // Long enough that a thread starved on a busy machine does not sync
    // before the test looks.
    let every = Duration::from_secs(2);
    let mut rig = Rig::new(blocking, FsyncPolicy::Interval(every));
    let started = tokio::time::Instant::now();
    let writer = rig.start();
    rig.propose("a").unwrap().take().await.unwrap();
    assert_eq!(rig.fsyncs(), 0, "answered at once, synced later");
    until("the interval's fsync", || rig.fsyncs() == 1).await;
    assert!(started.elapsed() >= every, "{:?}", started.elapsed());
    rig.stop(writer).await.unwrap();
    assert_eq!(rig.fsyncs(), 1, "nothing left to sync at shutdown");
    assert_eq!(recovered_keys(rig.dir.path()), vec!["-", "a"]);
}

async fn never_syncs_only_at_shutdown(blocking: Blocking) {
    let mut rig = Rig::new(blocking, FsyncPolicy::Never);
    let writer = rig.start();
    for key in ["a", "b"] {
        rig.propose(key).unwrap().take().await.unwrap();
    }
    tokio::time::sleep(IDLE_WAIT * 3).await;
    assert_eq!(rig.fsyncs(), 0);
    rig.stop(writer).await.unwrap();
    assert_eq!(rig.fsyncs(), 1, "the final sync");
    assert_eq!(recovered_keys(rig.dir.path()), vec!["-", "a", "b"]);
}

async fn shutdown_writes_what_is_queued_then_stops(blocking: Blocking) {
    let mut rig = Rig::new(blocking, FsyncPolicy::Always);
    let mut answers: Vec<Answer> = ["a", "b", "c"]
        .into_iter()
        .map(|key| rig.propose(key).unwrap())
        .collect();
    rig.replica.shutdown.cancel();
    let writer = rig.start();
    rig.stop(writer).await.unwrap();
    for (i, answer) in answers.iter_mut().enumerate() {
        assert_eq!(answer.take().await, Ok(LogIndex(i as u64 + 2)));
    }
    assert_eq!(recovered_keys(rig.dir.path()), vec!["-", "a", "b", "c"]);
}

/// The batch the disk refused waits for room while the node refuses new
/// writes; once it fits, it is answered and writes are taken again.
async fn a_full_disk_refuses_writes_until_the_batch_fits(blocking: Blocking) {
    let mut rig = Rig::new(blocking, FsyncPolicy::Always);
    // The failed append's cut-back reopens the real segment: the first
    // retry finds room.
    rig.wal().replace_active_for_test(full_disk());
    let started = tokio::time::Instant::now();
    let writer = rig.start();
    let mut held = rig.propose("held").unwrap();
    // The full disk lasts DISK_FULL_RETRY at least: a thread starved for
    // that long may miss it, on a paused clock it is always seen.
    until("the node to hear of the full disk", || {
        let node = rig.replica.lock();
        node.disk_full().is_some() || node.durable() >= LogIndex(2)
    })
    .await;
    let refused = rig.replica.with(|n| {
        n.disk_full()
            .is_some()
            .then(|| propose(n, "refused").map(|_| ()))
    });
    assert!(
        matches!(refused, None | Some(Err(ErrorReply::DiskFull { .. }))),
        "{refused:?}"
    );
    if blocking == Blocking::Inline {
        assert!(refused.is_some(), "the full disk went unseen");
    }
    assert_eq!(held.take().await, Ok(LogIndex(2)));
    assert!(
        started.elapsed() >= DISK_FULL_RETRY,
        "{:?}",
        started.elapsed()
    );
    assert!(rig.replica.lock().disk_full().is_none());
    assert_eq!(rig.propose("after").unwrap().take().await, Ok(LogIndex(3)));
    rig.stop(writer).await.unwrap();
    assert_eq!(recovered_keys(rig.dir.path()), vec!["-", "held", "after"]);
}

/// A failure that is not a full disk is fatal: the pending write is
/// answered `Indeterminate`, new ones are refused, shutdown is requested
/// and the writer ends with the WAL's error.
async fn a_wal_failure_fails_pending_writes_and_requests_shutdown(blocking: Blocking) {
    let mut rig = Rig::new(blocking, FsyncPolicy::Always);
    let failing = failing_disk(rig.dir.path());
    rig.wal().replace_active_for_test(failing);
    let writer = rig.start();
    let answer = rig.propose("doomed").unwrap().take().await;
    assert!(
        matches!(answer, Err(ErrorReply::Indeterminate { .. })),
        "{answer:?}"
    );
    tokio::time::timeout(WAIT, rig.replica.shutdown.cancelled())
        .await
        .expect("shutdown requested");
    assert!(matches!(
        rig.propose("refused"),
        Err(ErrorReply::Storage { .. })
    ));
    let err = rig.stop(writer).await.unwrap_err();
    assert!(matches!(err, WriterError::Storage(_)), "{err:?}");
}

/// An idle task is woken by each write: on a paused clock no time passes
/// between a write and its answer, so none waited out a timed wait.
#[tokio::test(start_paused = true)]
async fn the_task_is_woken_by_each_write_without_waiting_for_time() {
    let mut rig = Rig::new(Blocking::Inline, FsyncPolicy::Always);
    let writer = rig.start();
    let started = tokio::time::Instant::now();
    for i in 0..100 {
        // Let the writer find the outbox empty and wait for work first.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        rig.propose(&format!("k{i}")).unwrap().take().await.unwrap();
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(rig.fsyncs(), 100);
    rig.stop(writer).await.unwrap();
}

/// A simulated crash drops the runtime: the writer task goes with it,
/// holding nothing of the replica (the WAL's handles close with it).
#[test]
fn dropping_the_runtime_drops_the_writer_task() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let mut rig = Rig::new(Blocking::Inline, FsyncPolicy::Always);
    let writer = runtime.block_on(async {
        let writer = rig.start();
        rig.propose("a").unwrap().take().await.unwrap();
        writer
    });
    assert_eq!(Arc::strong_count(&rig.replica), 2, "the task holds one");
    drop(runtime);
    assert_eq!(Arc::strong_count(&rig.replica), 1, "the task is gone");
    drop(writer);
    assert_eq!(recovered_keys(rig.dir.path()), vec!["-", "a"]);
}
