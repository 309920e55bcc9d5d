//! The in-memory replicated log: entries since the last snapshot, and the
//! epoch history of the whole log.
//!
//! Invariants: entries are consecutive, starting at `base + 1`; `history` is
//! sorted by epoch and by start index, and its last element's epoch is the
//! epoch of the last entry. Entries of one epoch always form one contiguous
//! range starting at the index where that epoch's leader began writing, in
//! every replica's log: that is what lets [`MemLog::common_prefix`] find the
//! point where two logs diverge from their histories alone.
//!
//! The log keeps a running total of its entries' sizes ([`entry_size`])
//! beside them, so the bytes of any suffix, such as the entries not yet
//! applied, are one subtraction ([`MemLog::bytes_after`]).

use std::collections::VecDeque;

use semikv_protocol::{Entry, Epoch, EpochStart, LogIndex, WriteOp};

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The entry's index is not the next one.
    #[error("entry {got} does not follow the last index {last}")]
    Gap {
        /// Index received.
        got: LogIndex,
        /// Index of the current last entry.
        last: LogIndex,
    },
    /// The entry's epoch is lower than the last entry's.
    #[error("entry epoch {got} is older than the log's last epoch {last}")]
    EpochRegression {
        /// Epoch received.
        got: Epoch,
        /// Epoch of the current last entry.
        last: Epoch,
    },
}

/// Entries after the snapshot base plus the epoch history.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    base_index: LogIndex,
    base_epoch: Epoch,
    entries: VecDeque<Entry>,
    /// `ends[i]`: [`entry_size`] summed over every entry appended since the
    /// log was made or reset, up to and including `entries[i]`. Only ever
    /// subtracted from one another, so the origin does not matter.
    ends: VecDeque<usize>,
    /// The running total at the base: `ends` of the last entry compacted
    /// away (0 if none).
    base_end: usize,
    history: Vec<EpochStart>,
}

/// What [`entry_size`] adds to an entry's key and value bytes.
pub const ENTRY_OVERHEAD: usize = 32;

/// Approximate in-memory size of an entry, for snapshot triggers and batching:
/// its key and value bytes plus [`ENTRY_OVERHEAD`]. A `Batch` counts each
/// mutation at the most it can add to the store
/// ([`crate::storage::store::mutation_bytes`], at least its key), which
/// keeps the leader's memory bound (see `node/memory.rs`) a bound for
/// entries of many keys.
pub fn entry_size(entry: &Entry) -> usize {
    ENTRY_OVERHEAD
        + match &entry.op {
            WriteOp::Set { key, value } => key.len() + value.len(),
            WriteOp::Delete { key } => key.len(),
            WriteOp::Noop => 0,
            WriteOp::Batch(mutations) => mutations
                .iter()
                .map(|m| crate::storage::store::mutation_bytes(m).max(m.key.len()))
                .fold(0, usize::saturating_add),
        }
}

impl MemLog {
    /// A log whose entries start after a snapshot at `base_index` (epoch
    /// `base_epoch`, history `history` up to it).
    pub fn new(base_index: LogIndex, base_epoch: Epoch, history: Vec<EpochStart>) -> MemLog {
        MemLog {
            base_index,
            base_epoch,
            entries: VecDeque::new(),
            ends: VecDeque::new(),
            base_end: 0,
            history,
        }
    }

    /// Index of the last entry (the base if there are none).
    pub fn last_index(&self) -> LogIndex {
        self.entries.back().map_or(self.base_index, |e| e.index)
    }

    /// Epoch of the last entry.
    pub fn last_epoch(&self) -> Epoch {
        self.entries.back().map_or(self.base_epoch, |e| e.epoch)
    }

    /// The snapshot base: entries at or below it are only in the snapshot.
    pub fn base_index(&self) -> LogIndex {
        self.base_index
    }

    /// Bytes held in memory by entries after the base ([`entry_size`] summed).
    pub fn bytes(&self) -> usize {
        self.end() - self.base_end
    }

    /// [`entry_size`] summed over the entries after `index` (all of them if
    /// `index` is at or below the base, none past the last), in O(1): what
    /// the entries not yet applied hold, with `index` the applied one.
    pub fn bytes_after(&self, index: LogIndex) -> usize {
        let upto = match index.0.checked_sub(self.base_index.0 + 1) {
            None => self.base_end,
            Some(offset) => match usize::try_from(offset).ok().and_then(|o| self.ends.get(o)) {
                Some(&end) => end,
                None => return 0,
            },
        };
        self.end() - upto
    }

    /// The running total after the last entry.
    fn end(&self) -> usize {
        self.ends.back().copied().unwrap_or(self.base_end)
    }

    /// The epoch history.
    pub fn history(&self) -> &[EpochStart] {
        &self.history
    }

    /// The history up to and including `index`.
    pub fn history_upto(&self, index: LogIndex) -> Vec<EpochStart> {
        self.history
            .iter()
            .copied()
            .filter(|h| h.start <= index)
            .collect()
    }

    /// The entry at `index`, if it is held in memory.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.base_index.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// The epoch that wrote `index`, if `index` is in the log (0 for index 0).
    pub fn epoch_at(&self, index: LogIndex) -> Option<Epoch> {
        if index == LogIndex(0) {
            return Some(Epoch::from_raw(0));
        }
        if index > self.last_index() {
            return None;
        }
        if index == self.base_index {
            return Some(self.base_epoch);
        }
        if let Some(e) = self.get(index) {
            return Some(e.epoch);
        }
        epoch_in_history(&self.history, index)
    }

    /// Appends one entry.
    ///
    /// # Errors
    /// [`LogError`] if it is not the next index or goes back in epochs.
    pub fn append(&mut self, entry: Entry) -> Result<(), LogError> {
        let last = self.last_index();
        if entry.index != last.next() {
            return Err(LogError::Gap {
                got: entry.index,
                last,
            });
        }
        let last_epoch = self.last_epoch();
        if entry.epoch < last_epoch {
            return Err(LogError::EpochRegression {
                got: entry.epoch,
                last: last_epoch,
            });
        }
        if self.history.last().map(|h| h.epoch) != Some(entry.epoch) {
            self.history.push(EpochStart {
                epoch: entry.epoch,
                start: entry.index,
            });
        }
        self.ends.push_back(self.end() + entry_size(&entry));
        self.entries.push_back(entry);
        Ok(())
    }

    /// Removes every entry after `index` (which must not be below the base).
    pub fn truncate_after(&mut self, index: LogIndex) {
        while self.entries.back().is_some_and(|e| e.index > index) {
            self.entries.pop_back();
            self.ends.pop_back();
        }
        self.history.retain(|h| h.start <= index);
    }

    /// Drops entries up to `index` from memory after a snapshot covering them,
    /// at most `max` of them per call (the caller holds the node lock, and a
    /// snapshot can cover millions of entries).
    pub fn compact(&mut self, index: LogIndex, max: usize) {
        for _ in 0..max {
            if self.entries.front().is_none_or(|e| e.index > index) {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.base_index = e.index;
                self.base_epoch = e.epoch;
                self.base_end = self.ends.pop_front().unwrap_or(self.base_end);
            }
        }
    }

    /// Replaces the whole log by a snapshot base (after installing a snapshot).
    pub fn reset(&mut self, base_index: LogIndex, base_epoch: Epoch, history: Vec<EpochStart>) {
        *self = MemLog::new(base_index, base_epoch, history);
    }

    /// Up to `max_count` entries (and about `max_bytes`, at least one) from
    /// `from` on, or `None` if `from` is at or below the base (compacted).
    pub fn entries_from(
        &self,
        from: LogIndex,
        max_count: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        if from <= self.base_index {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while let Some(e) = self.get(index) {
            bytes += entry_size(e);
            if !out.is_empty() && (out.len() >= max_count || bytes > max_bytes) {
                break;
            }
            out.push(e.clone());
            index = index.next();
        }
        Some(out)
    }

    /// The last index on which this log and a follower's agree, given the
    /// follower's last index and epoch history. Two logs that hold an entry
    /// with the same index and epoch hold the same entries up to it, so the
    /// answer is the highest index covered by the same epoch in both.
    pub fn common_prefix(&self, their_last: LogIndex, their_history: &[EpochStart]) -> LogIndex {
        let ours = ranges(&self.history, self.last_index());
        let theirs = ranges(their_history, their_last);
        let mut best = LogIndex(0);
        for (epoch, lo, hi) in theirs {
            for &(e, olo, ohi) in &ours {
                if e == epoch {
                    let start = lo.max(olo);
                    let end = hi.min(ohi);
                    if start <= end && end > best {
                        best = end;
                    }
                }
            }
        }
        best
    }
}

/// The epoch that wrote `index` according to `history`.
fn epoch_in_history(history: &[EpochStart], index: LogIndex) -> Option<Epoch> {
    history
        .iter()
        .rev()
        .find(|h| h.start <= index)
        .map(|h| h.epoch)
}

/// `(epoch, first, last)` index ranges of a history over a log ending at `last`.
fn ranges(history: &[EpochStart], last: LogIndex) -> Vec<(Epoch, LogIndex, LogIndex)> {
    let mut out = Vec::with_capacity(history.len());
    for (i, h) in history.iter().enumerate() {
        let end = history
            .get(i + 1)
            .map_or(last, |next| next.start.prev())
            .min(last);
        if h.start <= end {
            out.push((h.epoch, h.start, end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(index: u64, epoch: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            epoch: Epoch::from_raw(epoch.into()),
            op: WriteOp::Set {
                key: Bytes::from(format!("k{index}")),
                value: Bytes::from_static(b"v"),
            },
        }
    }

    fn log_of(epochs: &[u64]) -> MemLog {
        let mut log = MemLog::default();
        for (i, e) in epochs.iter().enumerate() {
            log.append(entry(i as u64 + 1, *e)).unwrap();
        }
        log
    }

    #[test]
    fn append_tracks_history_and_refuses_gaps() {
        let mut log = log_of(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.last_index(), LogIndex(6));
        assert_eq!(log.last_epoch(), Epoch::from_raw(5));
        assert_eq!(
            log.history(),
            &[
                EpochStart {
                    epoch: Epoch::from_raw(1),
                    start: LogIndex(1)
                },
                EpochStart {
                    epoch: Epoch::from_raw(2),
                    start: LogIndex(3)
                },
                EpochStart {
                    epoch: Epoch::from_raw(5),
                    start: LogIndex(6)
                },
            ]
        );
        assert!(matches!(log.append(entry(8, 5)), Err(LogError::Gap { .. })));
        assert!(matches!(
            log.append(entry(7, 4)),
            Err(LogError::EpochRegression { .. })
        ));
    }

    #[test]
    fn truncate_drops_entries_and_history() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.truncate_after(LogIndex(2));
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.history().len(), 1);
        log.append(entry(3, 3)).unwrap();
        assert_eq!(log.epoch_at(LogIndex(3)), Some(Epoch::from_raw(3)));
    }

    #[test]
    fn compact_keeps_epochs_answerable() {
        let mut log = log_of(&[1, 1, 2, 2, 3]);
        log.compact(LogIndex(4), 3);
        assert_eq!(log.base_index(), LogIndex(3), "at most 3 per call");
        log.compact(LogIndex(4), 3);
        assert_eq!(log.base_index(), LogIndex(4));
        assert_eq!(log.epoch_at(LogIndex(4)), Some(Epoch::from_raw(2)));
        assert_eq!(log.epoch_at(LogIndex(1)), Some(Epoch::from_raw(1)));
        assert!(log.get(LogIndex(4)).is_none());
        assert!(log.entries_from(LogIndex(4), 10, 1 << 20).is_none());
        assert_eq!(log.entries_from(LogIndex(5), 10, 1 << 20).unwrap().len(), 1);
    }

    #[test]
    fn entries_from_respects_limits_but_returns_at_least_one() {
        let log = log_of(&[1; 10]);
        assert_eq!(log.entries_from(LogIndex(1), 3, 1 << 20).unwrap().len(), 3);
        assert_eq!(log.entries_from(LogIndex(1), 100, 1).unwrap().len(), 1);
        assert_eq!(
            log.entries_from(LogIndex(11), 100, 1 << 20).unwrap().len(),
            0
        );
    }

    /// `entry_size` summed over the entries after `index`, the slow way.
    fn sum_after(log: &MemLog, index: LogIndex) -> usize {
        let first = index.max(log.base_index()).next();
        (first.0..=log.last_index().0)
            .filter_map(|i| log.get(LogIndex(i)))
            .map(entry_size)
            .sum()
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// An entry with a value of this many bytes.
        Append(usize),
        /// Truncate after `last - n`, at most down to the base.
        Truncate(u64),
        /// Compact up to `base + n`, at most `max` entries.
        Compact(u64, usize),
        Reset,
    }

    proptest! {
        /// `bytes_after` and `bytes` match the sums over the entries held,
        /// whatever appends, truncations, compactions and resets come.
        #[test]
        fn bytes_after_is_the_sum_of_the_entries_after(
            steps in proptest::collection::vec(prop_oneof![
                4 => (0usize..300).prop_map(Step::Append),
                1 => (0u64..5).prop_map(Step::Truncate),
                1 => (0u64..5, 1usize..4).prop_map(|(n, max)| Step::Compact(n, max)),
                1 => Just(Step::Reset),
            ], 1..100)
        ) {
            let mut log = MemLog::default();
            for step in steps {
                match step {
                    Step::Append(len) => {
                        let index = log.last_index().next();
                        let mut e = entry(index.0, 1);
                        e.op = WriteOp::Set {
                            key: Bytes::from_static(b"k"),
                            value: Bytes::from(vec![0; len]),
                        };
                        log.append(e).unwrap();
                    }
                    Step::Truncate(n) => {
                        let to = LogIndex(log.last_index().0.saturating_sub(n));
                        log.truncate_after(to.max(log.base_index()));
                    }
                    Step::Compact(n, max) => {
                        log.compact(LogIndex(log.base_index().0 + n), max);
                    }
                    Step::Reset => {
                        let base = log.last_index();
                        log.reset(base, Epoch::from_raw(1), Vec::new());
                    }
                }
                prop_assert_eq!(log.bytes(), sum_after(&log, LogIndex(0)));
                for i in 0..=log.last_index().0 + 2 {
                    let index = LogIndex(i);
                    prop_assert_eq!(log.bytes_after(index), sum_after(&log, index), "after {}", i);
                }
            }
        }
    }

    #[test]
    fn common_prefix_of_identical_logs_is_the_end() {
        let a = log_of(&[1, 1, 2]);
        assert_eq!(a.common_prefix(LogIndex(3), a.history()), LogIndex(3));
    }

    #[test]
    fn common_prefix_of_a_lagging_follower_is_its_end() {
        let leader = log_of(&[1, 1, 2, 2, 3]);
        let follower = log_of(&[1, 1, 2]);
        assert_eq!(
            leader.common_prefix(follower.last_index(), follower.history()),
            LogIndex(3)
        );
    }

    #[test]
    fn common_prefix_cuts_a_deposed_leaders_tail() {
        // Old leader wrote 3..5 in epoch 2; only 3 reached the new leader,
        // which then wrote 4.. in epoch 3.
        let new_leader = log_of(&[1, 1, 2, 3, 3]);
        let old_leader = log_of(&[1, 1, 2, 2, 2]);
        assert_eq!(
            new_leader.common_prefix(old_leader.last_index(), old_leader.history()),
            LogIndex(3)
        );
    }

    #[test]
    fn common_prefix_with_a_follower_ahead_in_an_old_epoch() {
        let leader = log_of(&[1, 1]);
        let follower = log_of(&[1, 1, 1, 1]);
        assert_eq!(
            leader.common_prefix(follower.last_index(), follower.history()),
            LogIndex(2)
        );
    }

    #[test]
    fn common_prefix_with_nothing_in_common_is_zero() {
        let leader = log_of(&[2, 2]);
        let follower = log_of(&[1]);
        assert_eq!(
            leader.common_prefix(follower.last_index(), follower.history()),
            LogIndex(0)
        );
        let empty = MemLog::default();
        assert_eq!(
            leader.common_prefix(empty.last_index(), empty.history()),
            LogIndex(0)
        );
    }
}
