//! The writer's decisions, shared by both drivers: what to do next given
//! the outbox, the shutdown flag, the fsync policy and the time
//! ([`Core::plan`]), and doing it on the WAL ([`Core::work`]). It neither
//! waits nor locks: the driver holds the node lock for `plan` only, waits
//! as told, and passes what `work` reports on to the node.
//!
//! Time comes from the driver's clock (std's for the thread, tokio's for
//! the task, virtual under a paused clock), so the same decisions hold in a
//! simulation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use semikv_protocol::LogIndex;

use super::{WriterStats, DISK_FULL_RETRY, IDLE_WAIT};
use crate::config::FsyncPolicy;
use crate::node::{Node, WalCmd};
use crate::storage::error::StorageError;
use crate::storage::wal::{Record, Wal};

/// How long the writer sleeps between looks at the shutdown flag while a
/// batch waits for room.
const FULL_POLL: Duration = if IDLE_WAIT.as_nanos() < DISK_FULL_RETRY.as_nanos() {
    IDLE_WAIT
} else {
    DISK_FULL_RETRY
};

/// The writer's time source.
pub(super) type Clock = fn() -> Instant;

/// What the driver does next.
#[derive(Debug)]
pub(super) enum Plan {
    /// Work on the WAL, without the node lock ([`Core::work`]).
    Work(Work),
    /// Wait for work this long at most; new work wakes the writer early.
    Wait(Duration),
    /// Sleep this long whatever is queued: a batch waits for room on the
    /// disk, and nothing queued after it may be written first.
    Sleep(Duration),
    /// Stop ([`Core::stop`]): shutdown was requested and the outbox is
    /// empty, or a batch still waits for room.
    Stop,
}

/// Work on the WAL.
#[derive(Debug)]
pub(super) enum Work {
    /// Write what the outbox held, fsync per policy.
    Write(Batch),
    /// fsync: the interval came due while idle.
    Sync,
    /// Write the batch the full disk refused again.
    Retry,
}

/// What the outbox held, with the generation and last index the disk
/// matches once it is written.
#[derive(Debug)]
pub(super) struct Batch {
    cmds: VecDeque<WalCmd>,
    generation: u64,
    last: LogIndex,
}

/// What the node must learn after a step.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// Nothing.
    Nothing,
    /// The disk had no room for a batch: writes are refused until it is
    /// written.
    DiskFull(String),
    /// A batch is written (and fsynced if the policy says so).
    Durable {
        /// Role generation it was taken at.
        generation: u64,
        /// The log's last index it covers.
        last: LogIndex,
        /// How long the disk had been full, if it was until this batch.
        full_for: Option<Duration>,
    },
}

/// A batch the disk had no room for.
#[derive(Debug)]
struct Full {
    /// The commands not yet written, first the one that failed.
    batch: Batch,
    since: Instant,
    retry_at: Instant,
}

/// The writer between two steps: the WAL and what it knows of it.
#[derive(Debug)]
pub(super) struct Core {
    wal: Wal,
    policy: FsyncPolicy,
    stats: Arc<WriterStats>,
    clock: Clock,
    /// Something was written since the last fsync.
    unsynced: bool,
    last_sync: Instant,
    full: Option<Full>,
}

impl Core {
    /// A writer of `wal` with `policy`, counting into `stats`, telling time
    /// by `clock`.
    pub(super) fn new(
        wal: Wal,
        policy: FsyncPolicy,
        stats: Arc<WriterStats>,
        clock: Clock,
    ) -> Core {
        Core {
            wal,
            policy,
            stats,
            clock,
            unsynced: false,
            last_sync: clock(),
            full: None,
        }
    }

    /// Decides the next step; takes the outbox when it writes it. Called
    /// under the node lock (the driver may wait on it when told to wait).
    pub(super) fn plan(&mut self, node: &mut Node, shutdown: bool) -> Plan {
        let now = (self.clock)();
        if let Some(full) = &self.full {
            return if shutdown {
                Plan::Stop
            } else if now < full.retry_at {
                Plan::Sleep(FULL_POLL)
            } else {
                Plan::Work(Work::Retry)
            };
        }
        if !node.outbox_is_empty() {
            let (cmds, generation, last) = node.take_outbox();
            return Plan::Work(Work::Write(Batch {
                cmds: VecDeque::from(cmds),
                generation,
                last,
            }));
        }
        if shutdown {
            return Plan::Stop;
        }
        let wait = match self.policy {
            FsyncPolicy::Interval(every) if self.unsynced => {
                every.saturating_sub(now.saturating_duration_since(self.last_sync))
            }
            _ => IDLE_WAIT,
        };
        if wait.is_zero() {
            Plan::Work(Work::Sync)
        } else {
            Plan::Wait(wait)
        }
    }

    /// Does `work` on the WAL, without the node lock.
    ///
    /// # Errors
    /// A WAL failure other than a full disk: fatal for the replica.
    pub(super) fn work(&mut self, work: Work) -> Result<Report, StorageError> {
        match work {
            Work::Write(mut batch) => match self.write(&mut batch.cmds) {
                Ok(()) => self.written(&batch, None),
                Err(e) if e.is_no_space() => {
                    let since = (self.clock)();
                    self.full = Some(Full {
                        batch,
                        since,
                        retry_at: since + DISK_FULL_RETRY,
                    });
                    Ok(Report::DiskFull(e.to_string()))
                }
                Err(e) => Err(e),
            },
            Work::Sync => {
                self.sync()?;
                Ok(Report::Nothing)
            }
            Work::Retry => {
                let Some(mut full) = self.full.take() else {
                    return Ok(Report::Nothing);
                };
                match self.write(&mut full.batch.cmds) {
                    Ok(()) => {
                        let full_for = (self.clock)().saturating_duration_since(full.since);
                        self.written(&full.batch, Some(full_for))
                    }
                    Err(e) if e.is_no_space() => {
                        full.retry_at = (self.clock)() + DISK_FULL_RETRY;
                        self.full = Some(full);
                        Ok(Report::Nothing)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Ends the writer: syncs what was written since the last fsync. A
    /// batch still waiting for room stays unwritten: none of it was
    /// acknowledged, and the disk holds a clean prefix.
    ///
    /// # Errors
    /// The final fsync failed.
    pub(super) fn stop(mut self) -> Result<(), StorageError> {
        if self.full.is_none() && self.unsynced {
            self.sync()?;
        }
        Ok(())
    }

    /// After a batch is written: fsyncs if the policy says so now.
    fn written(
        &mut self,
        batch: &Batch,
        full_for: Option<Duration>,
    ) -> Result<Report, StorageError> {
        self.unsynced = true;
        let sync_now = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => {
                (self.clock)().saturating_duration_since(self.last_sync) >= every
            }
            FsyncPolicy::Never => false,
        };
        if sync_now {
            self.sync()?;
        }
        Ok(Report::Durable {
            generation: batch.generation,
            last: batch.last,
            full_for,
        })
    }

    /// Writes `cmds` in order, removing each once it is done: on an error
    /// the failed command and those after it are left for a retry.
    fn write(&mut self, cmds: &mut VecDeque<WalCmd>) -> Result<(), StorageError> {
        while let Some(cmd) = cmds.front() {
            match cmd {
                WalCmd::Append(records) => {
                    let started = (self.clock)();
                    self.wal.append(records)?;
                    let took = (self.clock)().saturating_duration_since(started);
                    let entries = records
                        .iter()
                        .filter(|r| matches!(r, Record::Entry(_)))
                        .count();
                    self.stats.appended(entries as u64, took);
                }
                WalCmd::TruncateAfter(index) => self.wal.truncate_after(*index)?,
                WalCmd::Compact(index) => self.wal.compact(*index)?,
                WalCmd::Reset(index) => self.wal.reset(*index)?,
            }
            cmds.pop_front();
        }
        Ok(())
    }

    /// Makes everything written durable, counts it, and notes when.
    fn sync(&mut self) -> Result<(), StorageError> {
        let started = (self.clock)();
        self.wal.sync()?;
        let now = (self.clock)();
        self.stats.synced(now.saturating_duration_since(started));
        self.last_sync = now;
        self.unsynced = false;
        Ok(())
    }

    /// The WAL, for tests that inject faults.
    #[cfg(test)]
    pub(super) fn wal_mut(&mut self) -> &mut Wal {
        &mut self.wal
    }
}
