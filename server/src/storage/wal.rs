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

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use semikv_protocol::frame::{self, Header, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use semikv_protocol::{Entry, LogIndex};
use serde::{Deserialize, Serialize};

use super::error::{io_err, StorageError};

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

#[derive(Debug)]
struct Segment {
    first: LogIndex,
    path: PathBuf,
    len: u64,
}

/// The write-ahead log, open for appending after its last entry.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// In name order; the last one is the active segment.
    segments: Vec<Segment>,
    /// Append handle on the last segment; `None` iff `segments` is empty.
    active: Option<File>,
    /// Index the next appended entry must have.
    next: LogIndex,
    /// A segment was created or deleted since the directory was last fsynced.
    dir_dirty: bool,
    poisoned: bool,
    buf: BytesMut,
}

impl Wal {
    /// Opens the log in `wal_dir` (created if missing) and replays it. Entries
    /// at or below `after` (already in the snapshot) are checked but not
    /// returned. A log that ends before `after` is wholly covered by the
    /// snapshot and is deleted; appends then continue at `after + 1`.
    ///
    /// # Errors
    /// [`StorageError::Io`] on a failed read, truncation or deletion;
    /// [`StorageError::Corrupt`] for anything but a torn tail (see the module
    /// docs), naming the file and byte offset.
    pub fn open(
        wal_dir: &Path,
        after: LogIndex,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered), StorageError> {
        fs::create_dir_all(wal_dir).map_err(io_err("creating directory", wal_dir))?;
        let mut segments = list_segments(wal_dir)?;
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
            let replayed = replay_segment(seg, after, i + 1 == count, opts, &mut entries)?;
            max_commit = max_commit.max(replayed.max_commit);
            if let Some(offset) = replayed.torn_at {
                truncate_file(&seg.path, offset)?;
                seg.len = offset;
                truncated_tail = Some((seg.path.clone(), offset));
            }
            expected = Some(replayed.next);
        }

        let mut wal = Wal {
            dir: wal_dir.to_path_buf(),
            opts,
            segments,
            active: None,
            next: after.next(),
            dir_dirty: false,
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
    /// fails, which poisons the log; [`StorageError::Poisoned`].
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
        let result = self.write_buf(next);
        self.poison_on_err(result)
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
        self.poison_on_err(result)
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
            file.sync_data().map_err(io_err("syncing", &seg.path))?;
        }
        let path = segment_path(&self.dir, self.next);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        self.dir_dirty = true;
        self.segments.push(Segment {
            first: self.next,
            path,
            len: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    fn open_active(&mut self) -> Result<(), StorageError> {
        self.active = match self.segments.last() {
            None => None,
            Some(seg) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
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
            super::sync_dir(&self.dir)?;
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
            if let Some(offset) = find_entry(seg, index.next(), self.opts)? {
                truncate_file(&seg.path, offset)?;
                seg.len = offset;
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
            fs::remove_file(&seg.path).map_err(io_err("removing", &seg.path))?;
        }
        super::sync_dir(&self.dir)?;
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
                fs::remove_file(&seg.path).map_err(io_err("removing", &seg.path))?;
            }
        }
        super::sync_dir(&self.dir)?;
        self.dir_dirty = false;
        self.open_active()
    }
}

fn segment_path(dir: &Path, first: LogIndex) -> PathBuf {
    dir.join(format!(
        "{:0width$}.{SEGMENT_EXT}",
        first.0,
        width = NAME_DIGITS
    ))
}

/// The index a segment file name stands for, or `None` if it is not one.
fn parse_segment_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, StorageError> {
    let mut segments = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let item = item.map_err(io_err("listing", dir))?;
        let name = item.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => segments.push(Segment {
                first,
                path: item.path(),
                len: 0,
            }),
            None => {
                tracing::warn!(file = %item.path().display(), "ignoring unexpected file in the write-ahead log directory")
            }
        }
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

struct Replayed {
    /// Index after the segment's last entry (its first index if it has none).
    next: LogIndex,
    max_commit: LogIndex,
    /// Offset of a torn tail to cut (last segment only).
    torn_at: Option<u64>,
}

/// Why a record could not be read.
enum Bad {
    /// The file ends inside the record, its checksum fails, or its length is
    /// over the limit: a crash mid-write explains it if no valid record
    /// follows.
    Damaged(String),
    /// The checksum holds but the payload is not a record: only a crash's
    /// zero-fill explains that, anything else is corruption.
    Undecodable(String),
}

fn replay_segment(
    seg: &mut Segment,
    after: LogIndex,
    is_last: bool,
    opts: WalOptions,
    entries: &mut Vec<Entry>,
) -> Result<Replayed, StorageError> {
    let bytes = fs::read(&seg.path).map_err(io_err("reading", &seg.path))?;
    seg.len = bytes.len() as u64;
    let mut next = seg.first;
    let mut max_commit = LogIndex(0);
    let mut offset = 0usize;
    while offset < bytes.len() {
        let record = match read_record(&bytes[offset..], opts.max_record_len) {
            Ok((record, used)) => {
                match record {
                    Record::Entry(entry) => {
                        if entry.index != next {
                            return Err(StorageError::Corrupt {
                                path: seg.path.clone(),
                                offset: offset as u64,
                                reason: format!(
                                    "entry {} where entry {next} was expected",
                                    entry.index
                                ),
                            });
                        }
                        next = next.next();
                        if entry.index > after {
                            entries.push(entry);
                        }
                    }
                    Record::Commit(index) => max_commit = max_commit.max(index),
                }
                offset += used;
                continue;
            }
            Err(bad) => bad,
        };
        let rest = &bytes[offset..];
        let (torn, reason) = match record {
            Bad::Damaged(reason) => (true, reason),
            Bad::Undecodable(reason) => (rest.iter().all(|&b| b == 0), reason),
        };
        let valid_after = if torn && is_last {
            valid_record_after(rest, opts.max_record_len)
        } else {
            None
        };
        if let Some(at) = valid_after {
            return Err(StorageError::Corrupt {
                path: seg.path.clone(),
                offset: offset as u64,
                reason: format!(
                    "{reason}, yet a valid record follows at byte {}",
                    offset + at
                ),
            });
        }
        if !(torn && is_last) {
            return Err(StorageError::Corrupt {
                path: seg.path.clone(),
                offset: offset as u64,
                reason,
            });
        }
        tracing::warn!(
            file = %seg.path.display(),
            offset = offset,
            dropped_bytes = rest.len(),
            reason = %reason,
            "truncating a torn record at the end of the write-ahead log"
        );
        return Ok(Replayed {
            next,
            max_commit,
            torn_at: Some(offset as u64),
        });
    }
    Ok(Replayed {
        next,
        max_commit,
        torn_at: None,
    })
}

/// Reads the record at the start of `buf`, which runs to the end of the file.
fn read_record(buf: &[u8], max_len: usize) -> Result<(Record, usize), Bad> {
    let Some(header) = Header::parse(buf) else {
        return Err(Bad::Damaged(format!(
            "{} bytes left, shorter than a record header",
            buf.len()
        )));
    };
    // Length against the bytes left first, so a torn header's garbage length
    // is never trusted for an allocation or a read.
    if header.frame_len() > buf.len() {
        return Err(Bad::Damaged(format!(
            "record of {} bytes but only {} bytes left",
            header.frame_len(),
            buf.len()
        )));
    }
    frame::check_len(header, max_len).map_err(|e| Bad::Damaged(e.to_string()))?;
    let payload = &buf[HEADER_LEN..header.frame_len()];
    match frame::decode_payload::<Record>(header, payload) {
        Ok(record) => Ok((record, header.frame_len())),
        Err(e @ semikv_protocol::ProtocolError::ChecksumMismatch { .. }) => {
            Err(Bad::Damaged(e.to_string()))
        }
        Err(e) => Err(Bad::Undecodable(e.to_string())),
    }
}

/// Offset of the first valid, decodable, non-empty record starting inside
/// `rest` after its first byte, if any. A torn tail has none; finding one
/// means a damaged length hides real records, which must not be dropped.
fn valid_record_after(rest: &[u8], max_len: usize) -> Option<usize> {
    (1..rest.len()).find(|&at| {
        let buf = &rest[at..];
        match Header::parse(buf) {
            Some(h) if h.len > 0 && h.len as usize <= max_len && h.frame_len() <= buf.len() => {
                frame::decode_payload::<Record>(h, &buf[HEADER_LEN..h.frame_len()]).is_ok()
            }
            _ => false,
        }
    })
}

/// Cuts `path` to `offset` bytes, durably.
fn truncate_file(path: &Path, offset: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .map_err(io_err("truncating", path))
}

/// Byte offset of entry `index` in `seg`, if it holds it. The segment was
/// replayed at open or written by us since, so anything unreadable is
/// corruption.
fn find_entry(
    seg: &Segment,
    index: LogIndex,
    opts: WalOptions,
) -> Result<Option<u64>, StorageError> {
    let bytes = match fs::read(&seg.path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", &seg.path)(e)),
    };
    let mut offset = 0usize;
    while offset < bytes.len() {
        let (record, used) = read_record(&bytes[offset..], opts.max_record_len).map_err(|bad| {
            let (Bad::Damaged(reason) | Bad::Undecodable(reason)) = bad;
            StorageError::Corrupt {
                path: seg.path.clone(),
                offset: offset as u64,
                reason,
            }
        })?;
        if let Record::Entry(entry) = record {
            if entry.index >= index {
                return Ok(Some(offset as u64));
            }
        }
        offset += used;
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use semikv_protocol::{Epoch, WriteOp};

    fn entry(i: u64, epoch: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            epoch: Epoch::from_raw(epoch.into()),
            op: WriteOp::Set {
                key: Bytes::from(format!("key-{i}")),
                value: Bytes::from(format!("value-{i}-{epoch}")),
            },
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, epoch: u64) -> Vec<Record> {
        range.map(|i| Record::Entry(entry(i, epoch))).collect()
    }

    fn small() -> WalOptions {
        WalOptions {
            segment_bytes: 60,
            max_record_len: 1024,
        }
    }

    fn reopen(dir: &Path, after: u64, opts: WalOptions) -> (Wal, Recovered) {
        Wal::open(dir, LogIndex(after), opts).unwrap()
    }

    fn indexes(r: &Recovered) -> Vec<u64> {
        r.entries.iter().map(|e| e.index.0).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// Byte offsets where each record of a segment starts.
    fn record_offsets(path: &Path) -> Vec<usize> {
        let bytes = fs::read(path).unwrap();
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            offsets.push(at);
            at += Header::parse(&bytes[at..]).unwrap().frame_len();
        }
        offsets
    }

    #[test]
    fn append_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, rec) = reopen(dir.path(), 0, WalOptions::default());
        assert!(rec.entries.is_empty());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(2))]).unwrap();
        wal.append(&entries(4..=4, 2)).unwrap();
        wal.sync().unwrap();
        assert!(wal.size_bytes() > 0);
        drop(wal);
        let (wal, rec) = reopen(dir.path(), 0, WalOptions::default());
        assert_eq!(
            rec.entries,
            vec![entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 2)]
        );
        assert_eq!(rec.commit_index, LogIndex(2));
        assert!(rec.truncated_tail.is_none());
        assert_eq!(wal.last_index(), LogIndex(4));
        // Entries covered by a snapshot are checked but not returned.
        drop(wal);
        let (_, rec) = reopen(dir.path(), 2, WalOptions::default());
        assert_eq!(indexes(&rec), vec![3, 4]);
    }

    #[test]
    fn restart_keeps_every_synced_record_and_continues() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5u64 {
            let (mut wal, rec) = reopen(dir.path(), 0, small());
            assert_eq!(indexes(&rec), (1..=round * 4).collect::<Vec<_>>());
            wal.append(&entries(round * 4 + 1..=round * 4 + 4, round))
                .unwrap();
            wal.sync().unwrap();
        }
        assert!(segment_files(dir.path()).len() > 1, "expected rolls");
    }

    #[test]
    fn commit_only_segments_do_not_roll_onto_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 1,
            max_record_len: 1024,
        };
        let (mut wal, _) = reopen(dir.path(), 0, opts);
        wal.append(&entries(1..=1, 1)).unwrap();
        for _ in 0..3 {
            wal.append(&[Record::Commit(LogIndex(1))]).unwrap();
        }
        wal.append(&entries(2..=3, 1)).unwrap();
        wal.append(&entries(4..=4, 1)).unwrap();
        wal.sync().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 3);
        drop(wal);
        let (_, rec) = reopen(dir.path(), 0, opts);
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
        assert_eq!(rec.commit_index, LogIndex(1));
    }

    #[test]
    fn out_of_order_append_is_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        let err = wal.append(&entries(4..=4, 1)).unwrap_err();
        assert!(matches!(
            err,
            StorageError::OutOfOrder {
                expected: LogIndex(3),
                got: LogIndex(4)
            }
        ));
        let err = wal.append(&entries(2..=2, 1)).unwrap_err();
        assert!(matches!(err, StorageError::OutOfOrder { .. }));
        assert!(!wal.is_poisoned());
        wal.append(&entries(3..=3, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            indexes(&reopen(dir.path(), 0, WalOptions::default()).1),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn oversized_record_is_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, small());
        let big = Entry {
            index: LogIndex(1),
            epoch: Epoch::from_raw(1),
            op: WriteOp::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![7u8; 2000]),
            },
        };
        let err = wal.append(&[Record::Entry(big)]).unwrap_err();
        assert!(matches!(err, StorageError::Unencodable { .. }));
        assert!(!wal.is_poisoned());
        assert_eq!(wal.size_bytes(), 0);
        wal.append(&entries(1..=1, 1)).unwrap();
    }

    #[test]
    fn torn_tail_at_every_byte_is_truncated_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(3))]).unwrap();
        wal.append(&entries(4..=4, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = segment_files(dir.path()).pop().unwrap();
        let full = fs::read(&path).unwrap();
        let last_start = *record_offsets(&path).last().unwrap();
        for cut in last_start..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (mut wal, rec) = reopen(dir.path(), 0, WalOptions::default());
            assert_eq!(indexes(&rec), vec![1, 2, 3], "cut at {cut}");
            assert_eq!(rec.commit_index, LogIndex(3));
            if cut == last_start {
                assert!(rec.truncated_tail.is_none());
            } else {
                assert_eq!(
                    rec.truncated_tail,
                    Some((path.clone(), last_start as u64)),
                    "cut at {cut}"
                );
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
            // The log continues cleanly after the cut.
            wal.append(&entries(4..=4, 2)).unwrap();
            wal.sync().unwrap();
            drop(wal);
            let (_, rec) = reopen(dir.path(), 0, WalOptions::default());
            assert_eq!(rec.entries.last(), Some(&entry(4, 2)));
            assert!(rec.truncated_tail.is_none());
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = segment_files(dir.path()).pop().unwrap();
        let good_len = fs::metadata(&path).unwrap().len();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, &bytes).unwrap();
        let (_, rec) = reopen(dir.path(), 0, WalOptions::default());
        assert_eq!(indexes(&rec), vec![1, 2]);
        assert_eq!(rec.truncated_tail, Some((path.clone(), good_len)));
    }

    #[test]
    fn flipped_bit_in_a_middle_record_is_refused_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=5, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = segment_files(dir.path()).pop().unwrap();
        let offsets = record_offsets(&path);
        let original = fs::read(&path).unwrap();
        // Every byte of record 3 (index 2), header included.
        for at in offsets[2]..offsets[3] {
            let mut bytes = original.clone();
            bytes[at] ^= 0x04;
            fs::write(&path, &bytes).unwrap();
            let err = Wal::open(dir.path(), LogIndex(0), WalOptions::default()).unwrap_err();
            let StorageError::Corrupt {
                path: p, offset, ..
            } = &err
            else {
                panic!("flip at {at}: {err}");
            };
            assert_eq!(p, &path);
            assert_eq!(*offset, offsets[2] as u64, "flip at {at}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains(&path.display().to_string())
                    && shown.contains(&offsets[2].to_string())
            );
            // Refusing must not have modified the file.
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn flipped_bit_in_the_final_record_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = segment_files(dir.path()).pop().unwrap();
        let last = *record_offsets(&path).last().unwrap();
        let original = fs::read(&path).unwrap();
        // Every byte of the final record, header included.
        for at in last..original.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = original.clone();
                bytes[at] ^= bit;
                fs::write(&path, &bytes).unwrap();
                let (_, rec) = reopen(dir.path(), 0, WalOptions::default());
                assert_eq!(indexes(&rec), vec![1, 2], "flip at {at}");
                assert_eq!(rec.truncated_tail, Some((path.clone(), last as u64)));
            }
        }
    }

    #[test]
    fn damage_in_an_earlier_segment_is_fatal_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, small());
        for i in 1..=10 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let files = segment_files(dir.path());
        assert!(files.len() >= 3);
        let first = &files[0];
        let bytes = fs::read(first).unwrap();
        fs::write(first, &bytes[..bytes.len() - 3]).unwrap();
        let err = Wal::open(dir.path(), LogIndex(0), small()).unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { path, .. } if path == first),
            "{err}"
        );
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, small());
        for i in 1..=10 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let files = segment_files(dir.path());
        fs::remove_file(&files[1]).unwrap();
        let err = Wal::open(dir.path(), LogIndex(0), small()).unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { path, offset: 0, .. } if path == &files[2]),
            "{err}"
        );
        // Without a snapshot, a log that does not start at 1 is missing entries.
        fs::remove_file(&files[0]).unwrap();
        let err = Wal::open(dir.path(), LogIndex(0), small()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn segment_named_wrongly_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let files = segment_files(dir.path());
        fs::rename(&files[0], segment_path(dir.path(), LogIndex(0))).unwrap();
        let err = Wal::open(dir.path(), LogIndex(0), WalOptions::default()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn commit_index_is_recovered_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(2)), Record::Commit(LogIndex(1))])
            .unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            reopen(dir.path(), 0, WalOptions::default()).1.commit_index,
            LogIndex(2)
        );
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&[Record::Commit(LogIndex(9))]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            reopen(dir.path(), 0, WalOptions::default()).1.commit_index,
            LogIndex(3)
        );
        // Truncating entries takes the commit records after them too.
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.truncate_after(LogIndex(1)).unwrap();
        drop(wal);
        assert_eq!(
            reopen(dir.path(), 0, WalOptions::default()).1.commit_index,
            LogIndex(0)
        );
        // A snapshot's index is committed even without a commit record.
        assert_eq!(
            reopen(dir.path(), 1, WalOptions::default()).1.commit_index,
            LogIndex(1)
        );
    }

    #[test]
    fn truncate_after_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=6, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(6))]).unwrap();
        wal.truncate_after(LogIndex(3)).unwrap();
        assert_eq!(wal.last_index(), LogIndex(3));
        // No sync: truncate_after must be durable on its own, and new
        // entries at the cut index replace the old ones.
        wal.append(&entries(4..=5, 2)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, rec) = reopen(dir.path(), 0, WalOptions::default());
        assert_eq!(
            rec.entries,
            vec![
                entry(1, 1),
                entry(2, 1),
                entry(3, 1),
                entry(4, 2),
                entry(5, 2)
            ]
        );
        // The commit record followed entry 4, so it went with it.
        assert_eq!(rec.commit_index, LogIndex(0));
        wal.truncate_after(LogIndex(0)).unwrap();
        wal.truncate_after(LogIndex(7)).unwrap();
        drop(wal);
        let (_, rec) = reopen(dir.path(), 0, WalOptions::default());
        assert!(rec.entries.is_empty());
        assert_eq!(rec.commit_index, LogIndex(0));
    }

    #[test]
    fn truncate_after_across_segment_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, small());
        for i in 1..=12 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        let before = segment_files(dir.path());
        assert!(before.len() >= 4, "{before:?}");
        // Cut exactly at the start of the third segment: it goes entirely.
        let third_first =
            parse_segment_name(before[2].file_name().unwrap().to_str().unwrap()).unwrap();
        wal.truncate_after(third_first.prev()).unwrap();
        assert_eq!(segment_files(dir.path()), before[..2].to_vec());
        wal.append(&entries(third_first.0..=third_first.0, 2))
            .unwrap();
        // Cut in the middle of the first segment.
        wal.truncate_after(LogIndex(1)).unwrap();
        assert_eq!(segment_files(dir.path()), before[..1].to_vec());
        wal.append(&entries(2..=8, 3)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = reopen(dir.path(), 0, small());
        assert_eq!(rec.entries[0], entry(1, 1));
        assert_eq!(
            rec.entries[1..],
            (2..=8).map(|i| entry(i, 3)).collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn segment_roll_compact_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, small());
        for i in 1..=20 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        wal.sync().unwrap();
        let files = segment_files(dir.path());
        assert!(files.len() >= 4);
        let firsts: Vec<LogIndex> = files
            .iter()
            .map(|f| parse_segment_name(f.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        let size = wal.size_bytes();
        // Everything up to just before the third segment is in a snapshot.
        let upto = firsts[2].prev();
        wal.compact(upto).unwrap();
        assert_eq!(segment_files(dir.path()), files[2..].to_vec());
        assert!(wal.size_bytes() < size);
        // Compacting past the end never deletes the active segment.
        wal.compact(LogIndex(1000)).unwrap();
        assert_eq!(segment_files(dir.path()), files[files.len() - 1..].to_vec());
        drop(wal);
        // Opening with the snapshot index works; entries after it are all there.
        let active_first = *firsts.last().unwrap();
        let (_, rec) = reopen(dir.path(), active_first.0, small());
        assert_eq!(indexes(&rec), (active_first.0 + 1..=20).collect::<Vec<_>>());
        // A snapshot older than the compaction leaves a gap: refused.
        assert!(matches!(
            Wal::open(dir.path(), LogIndex(upto.0), small()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn reset_then_append_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, small());
        wal.append(&entries(1..=9, 1)).unwrap();
        wal.reset(LogIndex(100)).unwrap();
        assert!(segment_files(dir.path()).is_empty());
        assert_eq!(wal.size_bytes(), 0);
        assert!(matches!(
            wal.append(&entries(5..=5, 1)),
            Err(StorageError::OutOfOrder { .. })
        ));
        wal.append(&entries(101..=103, 2)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = reopen(dir.path(), 100, small());
        assert_eq!(indexes(&rec), vec![101, 102, 103]);
        // Without the snapshot the log's start is a gap.
        assert!(matches!(
            Wal::open(dir.path(), LogIndex(0), small()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn append_failure_poisons_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), 0, WalOptions::default());
        wal.append(&entries(1..=1, 1)).unwrap();
        // A real OS failure: /dev/full answers every write with ENOSPC.
        let full = match OpenOptions::new().append(true).open("/dev/full") {
            Ok(f) => f,
            Err(_) => {
                // Fall back to a read-only handle, which fails with EBADF.
                let seg = &wal.segments[0].path;
                File::open(seg).unwrap()
            }
        };
        wal.active = Some(full);
        let err = wal.append(&entries(2..=2, 1)).unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(wal.is_poisoned());
        assert!(matches!(
            wal.append(&entries(2..=2, 1)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
        assert!(matches!(
            wal.truncate_after(LogIndex(0)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(
            wal.compact(LogIndex(0)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(
            wal.reset(LogIndex(0)),
            Err(StorageError::Poisoned)
        ));
    }

    #[test]
    fn failed_directory_operation_poisons_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let (mut wal, _) = reopen(&wal_dir, 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        // The segment vanishing under us is an I/O failure on reset.
        fs::remove_dir_all(&wal_dir).unwrap();
        let err = wal.reset(LogIndex(0)).unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
    }

    /// Frozen bytes of every record variant: a change here breaks every
    /// existing log on disk.
    #[test]
    fn golden_record_bytes() {
        let cases: [(Record, &[u8]); 4] = [
            (
                Record::Entry(Entry {
                    index: LogIndex(1),
                    epoch: Epoch::from_raw(2),
                    op: WriteOp::Set {
                        key: Bytes::from_static(b"k"),
                        value: Bytes::from_static(b"v"),
                    },
                }),
                &[0, 0, 0, 8, 210, 222, 211, 58, 0, 1, 2, 0, 1, 107, 1, 118],
            ),
            (
                Record::Entry(Entry {
                    index: LogIndex(300),
                    epoch: Epoch::from_raw(1),
                    op: WriteOp::Delete {
                        key: Bytes::from_static(b"k"),
                    },
                }),
                &[0, 0, 0, 7, 243, 119, 217, 72, 0, 172, 2, 1, 1, 1, 107],
            ),
            (
                Record::Entry(Entry {
                    index: LogIndex(3),
                    epoch: Epoch::from_raw(3),
                    op: WriteOp::Noop,
                }),
                &[0, 0, 0, 4, 230, 33, 83, 170, 0, 3, 3, 2],
            ),
            (
                Record::Commit(LogIndex(7)),
                &[0, 0, 0, 2, 198, 166, 182, 29, 1, 7],
            ),
        ];
        for (record, golden) in cases {
            let mut buf = BytesMut::new();
            frame::encode(&record, 1024, &mut buf).unwrap();
            assert_eq!(&buf[..], golden, "{record:?}");
            let (back, used) = read_record(golden, 1024).ok().unwrap();
            assert_eq!(back, record);
            assert_eq!(used, golden.len());
        }
    }

    #[test]
    fn errors_are_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<StorageError>();
        check::<Wal>();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            count: u64,
            epoch: u64,
            commit: bool,
        },
        TruncateAfter {
            back: u64,
        },
        Sync,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..6, 0u64..4, any::<bool>()).prop_map(|(count, epoch, commit)| Op::Append { count, epoch, commit }),
            2 => (0u64..12).prop_map(|back| Op::TruncateAfter { back }),
            1 => Just(Op::Sync),
            2 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn random_operations_match_a_vec_model(ops in proptest::collection::vec(op(), 1..40), segment_bytes in 60u64..400) {
            let dir = tempfile::tempdir().unwrap();
            let opts = WalOptions { segment_bytes, max_record_len: 1024 };
            let mut model: Vec<Entry> = Vec::new();
            // (entries before the record, committed index) per Commit record.
            let mut commits: Vec<(u64, u64)> = Vec::new();
            let (mut wal, _) = Wal::open(dir.path(), LogIndex(0), opts).unwrap();
            for op in ops {
                match op {
                    Op::Append { count, epoch, commit: with_commit } => {
                        let start = model.len() as u64 + 1;
                        let mut batch: Vec<Record> = (start..start + count).map(|i| Record::Entry(entry(i, epoch))).collect();
                        if with_commit {
                            let last = start + count - 1;
                            commits.push((last, last));
                            batch.push(Record::Commit(LogIndex(last)));
                        }
                        wal.append(&batch).unwrap();
                        model.extend(batch.into_iter().filter_map(|r| match r { Record::Entry(e) => Some(e), Record::Commit(_) => None }));
                    }
                    Op::TruncateAfter { back } => {
                        let index = (model.len() as u64).saturating_sub(back);
                        wal.truncate_after(LogIndex(index)).unwrap();
                        model.truncate(index as usize);
                        commits.retain(|&(before, _)| before <= index);
                    }
                    Op::Sync => wal.sync().unwrap(),
                    Op::Reopen => {
                        wal.sync().unwrap();
                        drop(wal);
                        let (w, rec) = Wal::open(dir.path(), LogIndex(0), opts).unwrap();
                        wal = w;
                        prop_assert!(rec.truncated_tail.is_none());
                        prop_assert_eq!(&rec.entries, &model);
                        let commit = commits.iter().map(|&(_, c)| c).max().unwrap_or(0);
                        prop_assert_eq!(rec.commit_index, LogIndex(commit));
                    }
                }
                prop_assert_eq!(wal.last_index(), LogIndex(model.len() as u64));
            }
            wal.sync().unwrap();
            drop(wal);
            let (_, rec) = Wal::open(dir.path(), LogIndex(0), opts).unwrap();
            prop_assert_eq!(&rec.entries, &model);
        }
    }
}
