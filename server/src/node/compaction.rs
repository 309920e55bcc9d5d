//! Snapshots and compaction: when to take one, and dropping the log it
//! covers from memory in bounded steps.

use super::*;

impl Node {
    /// Starts a snapshot if the log holds more than `threshold` bytes since the
    /// last one and none is running. Each call (the snapshotter's 100 ms
    /// check) also folds a step of the store's overlay and drops a step of
    /// the log the last snapshot covered; no snapshot starts until both are
    /// done.
    pub fn snapshot_job(&mut self, threshold: usize) -> Option<SnapshotJob> {
        // Writes fold the overlay the last snapshot left; this covers a
        // quiet replica. A new snapshot waits until it is gone, so its copy
        // stays O(1).
        let folded = self.store.fold(FOLD_PER_SNAPSHOT_CHECK);
        // Likewise the log the last snapshot covered; until it is gone the
        // log's size still counts it.
        let compacted = self.compact_some();
        if !folded
            || !compacted
            || self.snapshot_running
            || self.log.bytes() < threshold
            || self.applied <= self.log.base_index()
        {
            return None;
        }
        self.snapshot_running = true;
        Some(SnapshotJob {
            meta: SnapshotMeta {
                last_index: self.applied,
                last_epoch: self.log.epoch_at(self.applied).unwrap_or_default(),
                history: self.log.history_upto(self.applied),
            },
            store: self.store.clone(),
        })
    }

    /// A snapshot finished (or failed, with `None`): starts dropping the log
    /// it covers (a first step now, the rest at the next snapshot checks) and
    /// has the WAL compacted.
    pub fn snapshot_done(&mut self, covered: Option<LogIndex>) {
        self.snapshot_running = false;
        if let Some(index) = covered {
            if index > self.log.base_index() && index <= self.applied {
                self.compact_to = self.compact_to.max(index);
                self.compact_some();
                self.push_wal(WalCmd::Compact(index));
            }
        }
    }

    /// Drops a bounded number of the in-memory entries the last snapshot
    /// covers; `true` once none is left. In steps because dropping a whole
    /// snapshot's worth (hundreds of thousands of entries) under the lock
    /// stalled every request, health checks included.
    pub(super) fn compact_some(&mut self) -> bool {
        // Never past `applied`: an entry not yet applied must stay.
        let target = self.compact_to.min(self.applied);
        self.log.compact(target, COMPACT_PER_STEP);
        self.log.base_index() >= target || self.log.last_index() <= self.log.base_index()
    }
}
