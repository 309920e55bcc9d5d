//! The write-ahead log: append-only segment files of framed records.
//!
//! ```text
//! <wal_dir>/<first index, 20 digits>.wal
//! record = len u32 BE | crc32 u32 BE | postcard(Record)
//! ```
//!
//! Invariants (checked on every replay, as etcd's WAL does):
//! - segments, in name order, hold consecutive entries with no gap: a
//!   segment's name is the index of its first entry (or, if it holds none,
//!   of the next entry anyone appends);
//! - a record's length is checked against the bytes left before it is read;
//! - only the end of the last segment may be torn (a crash mid-write). A
//!   torn record there (incomplete header or payload, a bad checksum or
//!   length, or a zero-filled tail) with no valid record starting anywhere
//!   after it is truncated with a warning and the truncation fsynced.
//!   Anything else (including a checksummed payload that does not decode) is
//!   [`StorageError::Corrupt`]: never guess, never drop data silently.
//!
//! Once a write or fsync fails the log is poisoned: what the page cache holds
//! is unknown, so every later call fails with [`StorageError::Poisoned`].
//! One exception: an append whose write finds the disk full (ENOSPC,
//! EDQUOT) is cut back off the segment, which then holds exactly what it
//! held before; the log stays usable and the caller may retry the same
//! records once space is freed. No fsync failed, so nothing already written
//! is in doubt. (A failed fsync still poisons: after one, Linux may have
//! dropped the dirty pages while reads still show them.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use semikv_protocol::frame::{self, DEFAULT_MAX_FRAME_LEN};
use semikv_protocol::{Entry, LogIndex};
use serde::{Deserialize, Serialize};

use super::disk::{Access, Disk, OpenFile};
use super::error::{io_err, StorageError};
use replay::{find_entry, replay_segment};
use segment::{list_segments, segment_path, truncate_file, Segment};

/// Default size after which the log rolls to a new segment: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Extension of segment files.
const SEGMENT_EXT: &str = "wal";
/// Digits of the zero-padded index in a segment's name.
const NAME_DIGITS: usize = 20;

/// One record of the log. Variants only ever grow at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A log entry.
    Entry(Entry),
    /// Every entry up to this index is committed.
    Commit(LogIndex),
}

/// Tuning of a [`Wal`].
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// A segment that has reached this size is closed before the next append
    /// and a new one started.
    pub segment_bytes: u64,
    /// Largest record payload written or accepted on replay.
    pub max_record_len: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// What replaying the log found.
#[derive(Debug)]
pub struct Recovered {
    /// Entries after `after`, consecutive from `after + 1`.
    pub entries: Vec<Entry>,
    /// The highest `Commit` record seen, capped at the last entry's index and
    /// never below `after` (a snapshot only holds committed entries).
    pub commit_index: LogIndex,
    /// The file and offset a torn tail was truncated at, if one was.
    pub truncated_tail: Option<(PathBuf, u64)>,
}

/// The write-ahead log, open for appending after its last entry.
#[derive(Debug)]
pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    opts: WalOptions,
    /// In name order; the last one is the active segment.
    segments: Vec<Segment>,
    /// Append handle on the last segment; `None` iff `segments` is empty.
    active: Option<OpenFile>,
    /// Index the next appended entry must have.
    next: LogIndex,
    /// A segment was created or deleted since the directory was last fsynced.
    dir_dirty: bool,
    /// The active segment's length at its last successful fsync, when
    /// known: what a failed fsync cuts it back to.
    synced_len: Option<u64>,
    poisoned: bool,
    buf: BytesMut,
}

impl Wal {
    /// Opens the log in `wal_dir` on `disk` (created if missing) and replays it. Entries
    /// at or below `after` (already in the snapshot) are checked but not
    /// returned. A log that ends before `after` is wholly covered by the
    /// snapshot and is deleted; appends then continue at `after + 1`.
    /// Everything it returns is durable: the last segment and the directory
    /// are fsynced before it returns.
    ///
    /// # Errors
    /// [`StorageError::Io`] on a failed read, truncation, deletion or fsync;
    /// [`StorageError::Corrupt`] for anything but a torn tail (see the module
    /// docs), naming the file and byte offset.
    pub fn open(
        disk: Arc<dyn Disk>,
        wal_dir: &Path,
        after: LogIndex,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered), StorageError> {
        disk.create_dir_all(wal_dir)
            .map_err(io_err("creating directory", wal_dir))?;
        let mut segments = list_segments(&*disk, wal_dir)?;
        let mut entries = Vec::new();
        let mut max_commit = LogIndex(0);
        let mut truncated_tail = None;
        let mut expected: Option<LogIndex> = None;
        let count = segments.len();
        for (i, seg) in segments.iter_mut().enumerate() {
            if let Some(want) = expected {
                if seg.first != want {
                    return Err(StorageError::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason: format!(
                            "segment starts at entry {} but the previous segment ends before entry {want}",
                            seg.first
                        ),
                    });
                }
            }
            let replayed = replay_segment(&*disk, seg, after, i + 1 == count, opts, &mut entries)?;
            max_commit = max_commit.max(replayed.max_commit);
            if let Some(offset) = replayed.torn_at {
                truncate_file(&*disk, &seg.path, offset)?;
                seg.len = offset;
                truncated_tail = Some((seg.path.clone(), offset));
            }
            expected = Some(replayed.next);
        }

        let mut wal = Wal {
            disk,
            dir: wal_dir.to_path_buf(),
            opts,
            segments,
            active: None,
            next: after.next(),
            // Segments a dead process created may not be durable yet.
            dir_dirty: true,
            synced_len: None,
            poisoned: false,
            buf: BytesMut::new(),
        };
        if let (Some(wal_next), Some(first)) = (expected, wal.segments.first()) {
            if wal_next < after.next() {
                tracing::warn!(
                    dir = %wal_dir.display(),
                    wal_next = %wal_next,
                    snapshot = %after,
                    "write-ahead log ends before the snapshot; discarding it"
                );
                wal.reset(after)?;
            } else if first.first > after.next() {
                return Err(StorageError::Corrupt {
                    path: first.path.clone(),
                    offset: 0,
                    reason: format!(
                        "the log starts at entry {} but the snapshot ends at entry {after}",
                        first.first
                    ),
                });
            } else {
                wal.next = wal_next;
                wal.open_active()?;
            }
        }
        // The node counts what replay returns as durable (a follower acks
        // it), but a process that died between a write and its fsync left
        // those bytes in the page cache only.
        wal.sync()?;
        let last = wal.next.prev();
        let commit_index = max_commit.min(last).max(after);
        Ok((
            wal,
            Recovered {
                entries,
                commit_index,
                truncated_tail,
            },
        ))
    }

    /// Appends `records` with one write call, after rolling to a new segment
    /// if the active one has reached `segment_bytes`. Not fsynced: call
    /// [`Wal::sync`] for durability.
    ///
    /// # Errors
    /// [`StorageError::OutOfOrder`] if the entries do not continue the log, or
    /// [`StorageError::Unencodable`] if a record is over the limit (nothing is
    /// written, the log stays usable); [`StorageError::Io`] if the write
    /// fails: when it failed for lack of space
    /// ([`StorageError::is_no_space`]) and the partial write was cut back
    /// off, nothing was appended and the log stays usable; otherwise the log
    /// is poisoned. [`StorageError::Poisoned`].
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let mut next = self.next;
        for record in records {
            if let Record::Entry(entry) = record {
                if entry.index != next {
                    return Err(StorageError::OutOfOrder {
                        expected: next,
                        got: entry.index,
                    });
                }
                next = next.next();
            }
        }
        self.buf.clear();
        for record in records {
            frame::encode(record, self.opts.max_record_len, &mut self.buf).map_err(|e| {
                StorageError::Unencodable {
                    reason: e.to_string(),
                }
            })?;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.write_buf(next) {
            Err(e) if e.is_no_space() && !self.poisoned => match self.roll_back_write() {
                Ok(()) => {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "write-ahead log append found the disk full; cut back, nothing appended");
                    Err(e)
                }
                Err(undo) => self.poison_on_err(Err(undo)),
            },
            result => self.poison_on_err(result),
        }
    }

    /// Cuts whatever a failed append wrote off the active segment (its
    /// recorded length never counted it) and reopens the append handle, so
    /// the segment holds exactly what it held before the append.
    fn roll_back_write(&mut self) -> Result<(), StorageError> {
        if let Some(seg) = self.segments.last() {
            let file = self
                .disk
                .open(&seg.path, Access::Write)
                .map_err(io_err("opening", &seg.path))?;
            file.set_len(seg.len)
                .map_err(io_err("cutting back a failed append to", &seg.path))?;
        }
        self.open_active()
    }

    /// Makes everything appended so far durable: fdatasyncs the active
    /// segment, and the directory if a segment was created or deleted.
    ///
    /// # Errors
    /// [`StorageError::Io`] if an fsync fails, which poisons the log;
    /// [`StorageError::Poisoned`].
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let result = self.sync_inner();
        match &result {
            Ok(()) => self.synced_len = self.segments.last().map(|seg| seg.len),
            Err(_) => self.cut_unsynced(),
        }
        self.poison_on_err(result)
    }

    /// After a failed fsync: cuts the active segment back to its length at
    /// the last fsync that succeeded, best effort.
    ///
    /// Why: Linux may drop the dirty pages a failed fsync covered while
    /// reads still return them from the page cache. A replica restarted
    /// without a power cut would replay those never-durable entries as
    /// durable (and acknowledge them as a follower); entries synced after
    /// them would then survive a later power cut around a hole the next
    /// start refuses as corruption. None of the cut entries was reported
    /// durable, so none was acknowledged. (Found by the deterministic
    /// simulation, seed 120.)
    fn cut_unsynced(&mut self) {
        let (Some(len), Some(seg)) = (self.synced_len, self.segments.last_mut()) else {
            return;
        };
        if seg.len <= len {
            return;
        }
        self.active = None;
        let cut = self
            .disk
            .open(&seg.path, Access::Write)
            .and_then(|file| file.set_len(len));
        match cut {
            Ok(()) => {
                tracing::warn!(path = %seg.path.display(), from = seg.len, to = len, "cut the segment back to what its last successful fsync made durable");
                seg.len = len;
            }
            Err(e) => {
                tracing::error!(path = %seg.path.display(), error = %e, "could not cut the segment back after a failed fsync; a restart may replay entries that are not durable");
            }
        }
    }

    /// Durably removes every entry after `index` (and every record after the
    /// first such entry) before returning: later segments are deleted (newest
    /// first, so a crash leaves a consistent prefix), the directory fsynced,
    /// then the segment holding `index + 1` is cut and fsynced. The next
    /// appended entry is `index + 1`.
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::Corrupt`], which poison the
    /// log; [`StorageError::Poisoned`].
    pub fn truncate_after(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        if index >= self.next.prev() {
            return Ok(());
        }
        let result = self.truncate_inner(index);
        self.poison_on_err(result)
    }

    /// Deletes whole segments whose entries are all at or below `upto` (they
    /// are covered by a durable snapshot), oldest first. The active segment
    /// is never deleted.
    ///
    /// # Errors
    /// [`StorageError::Io`], which poisons the log; [`StorageError::Poisoned`].
    pub fn compact(&mut self, upto: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let result = self.compact_inner(upto);
        self.poison_on_err(result)
    }

    /// Deletes every segment (newest first) and fsyncs the directory; the
    /// next appended entry is `after + 1`. Used once a leader's snapshot at
    /// `after` is installed.
    ///
    /// # Errors
    /// [`StorageError::Io`], which poisons the log; [`StorageError::Poisoned`].
    pub fn reset(&mut self, after: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let result = self.reset_inner(after);
        self.poison_on_err(result)
    }

    /// Total bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Index of the last entry in the log (or the point it was reset or
    /// truncated to).
    pub fn last_index(&self) -> LogIndex {
        self.next.prev()
    }

    /// Whether an earlier failure has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    fn poison_on_err<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &result {
            tracing::error!(dir = %self.dir.display(), error = %e, "write-ahead log failed; refusing further use");
            self.poisoned = true;
        }
        result
    }

    fn write_buf(&mut self, next: LogIndex) -> Result<(), StorageError> {
        let roll = match self.segments.last() {
            None => true,
            // A segment without entries keeps its name (the next index), so
            // rolling it would only collide with itself.
            Some(seg) => seg.first < self.next && seg.len >= self.opts.segment_bytes,
        };
        if roll {
            self.roll()?;
        }
        let (Some(file), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
            return Err(StorageError::Poisoned);
        };
        file.write_all(&self.buf)
            .map_err(io_err("appending to", &seg.path))?;
        seg.len += self.buf.len() as u64;
        self.next = next;
        Ok(())
    }

    /// Closes the active segment (fsyncing it, since [`Wal::sync`] only
    /// covers the active one) and starts a new one named for the next entry.
    fn roll(&mut self) -> Result<(), StorageError> {
        if let (Some(file), Some(seg)) = (self.active.take(), self.segments.last()) {
            if let Err(e) = file.sync_data() {
                // A failed fsync, whatever its cause, leaves the segment's
                // pages in doubt: never retried as a full disk would be.
                let e = io_err("syncing", &seg.path)(e);
                drop(file);
                self.cut_unsynced();
                self.poisoned = true;
                return Err(e);
            }
        }
        let path = segment_path(&self.dir, self.next);
        let file = self
            .disk
            .open(&path, Access::AppendNew)
            .map_err(io_err("creating", &path))?;
        self.dir_dirty = true;
        self.segments.push(Segment {
            first: self.next,
            path,
            len: 0,
        });
        self.active = Some(file);
        self.synced_len = Some(0);
        Ok(())
    }

    fn open_active(&mut self) -> Result<(), StorageError> {
        self.active = match self.segments.last() {
            None => None,
            Some(seg) => Some(
                self.disk
                    .open(&seg.path, Access::Append)
                    .map_err(io_err("opening", &seg.path))?,
            ),
        };
        Ok(())
    }

    fn sync_inner(&mut self) -> Result<(), StorageError> {
        if let (Some(file), Some(seg)) = (self.active.as_ref(), self.segments.last()) {
            file.sync_data().map_err(io_err("syncing", &seg.path))?;
        }
        if self.dir_dirty {
            super::sync_dir(&*self.disk, &self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn truncate_inner(&mut self, index: LogIndex) -> Result<(), StorageError> {
        let keep = self.segments.iter().filter(|s| s.first <= index).count();
        if keep < self.segments.len() {
            self.drop_segments_from(keep)?;
        }
        if let Some(seg) = self.segments.last_mut() {
            if let Some(offset) = find_entry(&*self.disk, seg, index.next(), self.opts)? {
                // The cut is fsynced, and with it everything before it.
                truncate_file(&*self.disk, &seg.path, offset)?;
                seg.len = offset;
                self.synced_len = Some(offset);
            }
        }
        self.next = index.next();
        Ok(())
    }

    fn compact_inner(&mut self, upto: LogIndex) -> Result<(), StorageError> {
        // Segment i holds entries below segment i+1's first index.
        let deletable = self
            .segments
            .windows(2)
            .take_while(|pair| pair[1].first <= upto.next())
            .count();
        if deletable == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..deletable) {
            self.disk
                .remove_file(&seg.path)
                .map_err(io_err("removing", &seg.path))?;
        }
        super::sync_dir(&*self.disk, &self.dir)?;
        self.dir_dirty = false;
        Ok(())
    }

    fn reset_inner(&mut self, after: LogIndex) -> Result<(), StorageError> {
        self.drop_segments_from(0)?;
        self.next = after.next();
        Ok(())
    }

    /// Deletes segments `keep..`, newest first so a crash leaves a prefix,
    /// fsyncs the directory and reopens the last survivor (if any).
    fn drop_segments_from(&mut self, keep: usize) -> Result<(), StorageError> {
        self.active = None;
        while self.segments.len() > keep {
            if let Some(seg) = self.segments.pop() {
                self.disk
                    .remove_file(&seg.path)
                    .map_err(io_err("removing", &seg.path))?;
            }
        }
        super::sync_dir(&*self.disk, &self.dir)?;
        self.dir_dirty = false;
        // A survivor was synced when the log rolled past it.
        self.synced_len = self.segments.last().map(|seg| seg.len);
        self.open_active()
    }
}

/// Fault injection for the WAL writer's tests.
#[cfg(test)]
impl Wal {
    /// Puts `file` in the active segment's place: `/dev/full` plays a full
    /// disk (the failed append's cut-back reopens the real segment), a
    /// read-only handle a failing one.
    pub(crate) fn replace_active_for_test(&mut self, file: impl super::disk::DiskFile + 'static) {
        self.active = Some(Box::new(file));
    }
}

mod replay;
mod segment;
#[cfg(test)]
mod tests;
