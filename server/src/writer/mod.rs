//! The WAL writer: drains the node's outbox, writes it in one batch, fsyncs
//! per policy and reports the durable index back. Everything queued while
//! one fsync runs goes into the next batch: that is group commit.
//!
//! A batch the disk has no room for is kept and written again every
//! [`DISK_FULL_RETRY`] until it fits, while the node refuses new writes
//! (`DiskFull`) and serves reads; nothing after it is written before it,
//! so the disk keeps the node's order. Any other failure stops the replica.
//!
//! What to do next is decided by one core (`core.rs`), which also does
//! the WAL work; a driver waits and wakes it, as the replica's
//! [`Blocking`] says:
//! - [`Blocking::Threads`]: an OS thread of its own (`thread.rs`), woken
//!   through a condition variable under the node lock; a real process.
//! - [`Blocking::Inline`]: an async task on the replica's runtime
//!   (`task.rs`), woken through a `Notify`, with `tokio::time` for its waits
//!   and the WAL work inline; a deterministic simulation. Dropping the
//!   runtime (a simulated crash) drops the task: nothing of it survives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use semikv_protocol::blocking::{Blocking, BlockingError};
use semikv_protocol::http::metrics::Histogram;
use tokio_util::task::AbortOnDropHandle;

use crate::replica::Replica;
use crate::storage::error::StorageError;
use crate::storage::wal::Wal;

mod core;
mod task;
mod thread;

use self::core::{Core, Report};

/// How long the writer sleeps when idle before looking at the shutdown flag.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How often a batch the disk had no room for is tried again: a write to a
/// full disk fails at once, so this costs nothing, and a replica accepts
/// writes again within this long of space being freed.
pub const DISK_FULL_RETRY: Duration = Duration::from_millis(250);

/// Counters for the group-commit figures, and the WAL's latencies for
/// `/metrics`.
#[derive(Debug)]
pub struct WriterStats {
    /// fsync calls made.
    pub fsyncs: AtomicU64,
    /// Entries written.
    pub entries: AtomicU64,
    /// How long each batch took to write (without its fsync).
    pub append_seconds: Histogram,
    /// How long each fsync took.
    pub fsync_seconds: Histogram,
    /// Entries made durable by each fsync: the group-commit factor.
    pub entries_per_fsync: Histogram,
    /// Entries written since the last fsync.
    unsynced_entries: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> WriterStats {
        WriterStats {
            fsyncs: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            append_seconds: Histogram::latency(),
            fsync_seconds: Histogram::latency(),
            entries_per_fsync: Histogram::counts(semikv_protocol::http::metrics::COUNT_BUCKETS),
            unsynced_entries: AtomicU64::new(0),
        }
    }
}

impl WriterStats {
    /// Counts `entries` written in `took`.
    pub(crate) fn appended(&self, entries: u64, took: Duration) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.unsynced_entries.fetch_add(entries, Ordering::Relaxed);
        self.append_seconds.observe_duration(took);
    }

    /// Counts an fsync that took `took`.
    pub(crate) fn synced(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_seconds.observe_duration(took);
        // An fsync of epoch or truncation records only is no commit batch.
        let entries = self.unsynced_entries.swap(0, Ordering::Relaxed);
        if entries > 0 {
            self.entries_per_fsync.observe(entries as f64);
        }
    }
}

/// Why the writer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The write-ahead log failed; the node was told to fail every pending
    /// write and refuse new ones, and shutdown was requested.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The writer panicked.
    #[error("the WAL writer panicked")]
    Panicked,
    /// The writer could not be joined: its runtime shut down first.
    #[error("joining the WAL writer: {0}")]
    Join(BlockingError),
}

/// A running writer: an OS thread or a task on the replica's runtime.
#[derive(Debug)]
pub struct Writer {
    driver: Driver,
}

#[derive(Debug)]
enum Driver {
    Thread(std::thread::JoinHandle<Result<(), StorageError>>),
    /// Aborted if dropped unjoined (`run` itself dropped): a writer task
    /// never outlives the replica that owns it.
    Task(AbortOnDropHandle<Result<(), StorageError>>),
}

impl Writer {
    /// Starts the writer of `replica` on `wal`, as `replica.config.blocking`
    /// says. It runs until shutdown is requested and the outbox is empty,
    /// then syncs the WAL one last time.
    ///
    /// # Errors
    /// The OS refused to start the writer thread.
    pub fn start(
        replica: Arc<Replica>,
        wal: Wal,
        stats: Arc<WriterStats>,
    ) -> std::io::Result<Writer> {
        let policy = replica.config.fsync;
        let driver = match replica.config.blocking {
            Blocking::Threads => {
                let core = Core::new(wal, policy, stats, std::time::Instant::now);
                let name = format!("wal-writer-{}", replica.config.id);
                let thread = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || finish(&replica, thread::run(&replica, core)))?;
                Driver::Thread(thread)
            }
            Blocking::Inline => {
                let core = Core::new(wal, policy, stats, task::now);
                let task = tokio::spawn(async move {
                    let result = task::run(&replica, core).await;
                    finish(&replica, result)
                });
                Driver::Task(AbortOnDropHandle::new(task))
            }
        };
        Ok(Writer { driver })
    }

    /// Waits for the writer to end: call it once shutdown is requested and
    /// [`Replica::wake_writer`] called.
    ///
    /// # Errors
    /// [`WriterError::Storage`]: the first WAL failure;
    /// [`WriterError::Panicked`]; [`WriterError::Join`] if the runtime shut
    /// down under the join.
    pub async fn join(self) -> Result<(), WriterError> {
        let joined = match self.driver {
            // Only ever a thread with `Blocking::Threads`: joining it blocks,
            // so it goes to the blocking pool, not the runtime's thread.
            Driver::Thread(thread) => Blocking::Threads
                .run(move || thread.join())
                .await
                .map_err(WriterError::Join)?
                .map_err(|_| WriterError::Panicked)?,
            Driver::Task(task) => task.await.map_err(|e| {
                if e.is_panic() {
                    WriterError::Panicked
                } else {
                    WriterError::Join(BlockingError::Cancelled)
                }
            })?,
        };
        Ok(joined?)
    }
}

/// On a WAL failure, tells the node (every pending write fails, new ones are
/// refused) and requests shutdown; passes `result` on.
fn finish(replica: &Replica, result: Result<(), StorageError>) -> Result<(), StorageError> {
    if let Err(e) = &result {
        tracing::error!(error = %e, "write-ahead log failed; this replica stops acknowledging writes and shuts down");
        replica.with(|n| n.on_storage_failure(e.to_string()));
        replica.shutdown.cancel();
    }
    result
}

/// Tells the node what a step of the core asks it to learn.
fn tell(replica: &Replica, report: Report) {
    match report {
        Report::Nothing => {}
        Report::DiskFull(reason) => {
            tracing::warn!(error = %reason, "disk full: this replica refuses writes (DiskFull) and keeps serving reads; retrying until space is freed");
            replica.with(|n| n.on_disk_full(reason));
        }
        Report::Durable {
            generation,
            last,
            full_for,
        } => replica.with(|n| {
            if let Some(full_for) = full_for {
                let full_ms = u64::try_from(full_for.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(full_ms, "disk has room again: this replica accepts writes");
                n.on_disk_room();
            }
            n.on_durable(generation, last);
        }),
    }
}

#[cfg(test)]
mod tests;
