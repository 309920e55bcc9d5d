//! The WAL writer thread: drains the node's outbox, writes it in one batch,
//! fsyncs per policy and reports the durable index back. Everything queued
//! while one fsync runs goes into the next batch: that is group commit.
//!
//! A batch the disk has no room for is kept and written again every
//! [`DISK_FULL_RETRY`] until it fits, while the node refuses new writes
//! (`DiskFull`) and serves reads; nothing after it is written before it,
//! so the disk keeps the node's order. Any other failure stops the replica.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::FsyncPolicy;
use crate::node::WalCmd;
use crate::replica::Replica;
use crate::storage::error::StorageError;
use crate::storage::wal::{Record, Wal};

/// How long the writer sleeps when idle before looking at the shutdown flag.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How often a batch the disk had no room for is tried again: a write to a
/// full disk fails at once, so this costs nothing, and a replica accepts
/// writes again within this long of space being freed.
pub const DISK_FULL_RETRY: Duration = Duration::from_millis(250);

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
        let mut cmds = VecDeque::from(cmds);
        match write_cmds(wal, &mut cmds, stats) {
            Ok(()) => {}
            Err(e) if e.is_no_space() => {
                if !wait_for_room(replica, wal, &mut cmds, stats, &e)? {
                    // Shut down with the batch unwritten: none of it was
                    // acknowledged, and the disk holds a clean prefix.
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
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

/// Writes `cmds` in order, removing each once it is done: on an error the
/// failed command and those after it are left for a retry.
fn write_cmds(
    wal: &mut Wal,
    cmds: &mut VecDeque<WalCmd>,
    stats: &WriterStats,
) -> Result<(), StorageError> {
    while let Some(cmd) = cmds.front() {
        match cmd {
            WalCmd::Append(records) => {
                wal.append(records)?;
                let entries = records
                    .iter()
                    .filter(|r| matches!(r, Record::Entry(_)))
                    .count();
                stats.entries.fetch_add(entries as u64, Ordering::Relaxed);
            }
            WalCmd::TruncateAfter(index) => wal.truncate_after(*index)?,
            WalCmd::Compact(index) => wal.compact(*index)?,
            WalCmd::Reset(index) => wal.reset(*index)?,
        }
        cmds.pop_front();
    }
    Ok(())
}

/// The disk had no room for `cmds`: the node refuses writes until they are
/// written, which this tries every [`DISK_FULL_RETRY`]. `Ok(true)` once
/// they are (the node accepts writes again), `Ok(false)` if shutdown came
/// first.
///
/// # Errors
/// A failure other than a full disk.
fn wait_for_room(
    replica: &Replica,
    wal: &mut Wal,
    cmds: &mut VecDeque<WalCmd>,
    stats: &WriterStats,
    first: &StorageError,
) -> anyhow::Result<bool> {
    let since = Instant::now();
    tracing::warn!(error = %first, "disk full: this replica refuses writes (DiskFull) and keeps serving reads; retrying until space is freed");
    replica.with(|n| n.on_disk_full(first.to_string()));
    loop {
        let deadline = Instant::now() + DISK_FULL_RETRY;
        while Instant::now() < deadline {
            if replica.shutdown.is_cancelled() {
                return Ok(false);
            }
            std::thread::sleep(IDLE_WAIT.min(DISK_FULL_RETRY));
        }
        match write_cmds(wal, cmds, stats) {
            Ok(()) => break,
            Err(e) if e.is_no_space() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let full_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(full_ms, "disk has room again: this replica accepts writes");
    replica.with(|n| n.on_disk_room());
    Ok(true)
}

/// Makes everything written durable, counts it, and says when.
fn fsync(wal: &mut Wal, stats: &WriterStats) -> anyhow::Result<Instant> {
    wal.sync()?;
    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(Instant::now())
}
