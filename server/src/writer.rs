//! The WAL writer thread: drains the node's outbox, writes it in one batch,
//! fsyncs per policy and reports the durable index back. Everything queued
//! while one fsync runs goes into the next batch: that is group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::FsyncPolicy;
use crate::node::WalCmd;
use crate::replica::Replica;
use crate::storage::wal::Wal;

/// How long the writer sleeps when idle before looking at the shutdown flag.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Counters for the group-commit figures.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// fsync calls made.
    pub fsyncs: AtomicU64,
    /// Entries written.
    pub entries: AtomicU64,
}

/// Runs the writer until shutdown is requested and the outbox is empty.
/// The WAL is synced one last time before it returns.
///
/// # Errors
/// The first WAL failure; the node has already been told to fail every
/// pending write and refuse new ones, and shutdown has been requested.
pub fn run(
    replica: Arc<Replica>,
    mut wal: Wal,
    policy: FsyncPolicy,
    stats: Arc<WriterStats>,
) -> anyhow::Result<()> {
    let result = write_loop(&replica, &mut wal, policy, &stats);
    if let Err(e) = &result {
        tracing::error!(error = %e, "write-ahead log failed; this replica stops acknowledging writes and shuts down");
        replica.with(|n| n.on_storage_failure(e.to_string()));
        replica.shutdown.cancel();
    }
    result
}

fn write_loop(
    replica: &Replica,
    wal: &mut Wal,
    policy: FsyncPolicy,
    stats: &WriterStats,
) -> anyhow::Result<()> {
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    loop {
        let (cmds, generation, last) = {
            let mut node = replica.lock_for_writer();
            loop {
                if !node.outbox_is_empty() {
                    break node.take_outbox();
                }
                if replica.shutdown.is_cancelled() {
                    drop(node);
                    if unsynced {
                        fsync(wal, stats)?;
                    }
                    return Ok(());
                }
                let wait = match policy {
                    FsyncPolicy::Interval(every) if unsynced => {
                        every.saturating_sub(last_sync.elapsed())
                    }
                    _ => IDLE_WAIT,
                };
                if wait.is_zero() {
                    drop(node);
                    last_sync = fsync(wal, stats)?;
                    unsynced = false;
                    node = replica.lock_for_writer();
                    continue;
                }
                node = replica.wait_for_work(node, wait);
            }
        };
        for cmd in cmds {
            match cmd {
                WalCmd::Append(records) => {
                    let entries = records
                        .iter()
                        .filter(|r| matches!(r, crate::storage::wal::Record::Entry(_)))
                        .count();
                    stats.entries.fetch_add(entries as u64, Ordering::Relaxed);
                    wal.append(&records)?;
                }
                WalCmd::TruncateAfter(index) => wal.truncate_after(index)?,
                WalCmd::Compact(index) => wal.compact(index)?,
                WalCmd::Reset(index) => wal.reset(index)?,
            }
        }
        unsynced = true;
        let sync_now = match policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if sync_now {
            last_sync = fsync(wal, stats)?;
            unsynced = false;
        }
        replica.with(|n| n.on_durable(generation, last));
    }
}

/// Makes everything written durable, counts it, and says when.
fn fsync(wal: &mut Wal, stats: &WriterStats) -> anyhow::Result<Instant> {
    wal.sync()?;
    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(Instant::now())
}
