//! Reading segments back: every record checked, a torn tail told from
//! damage, and an entry found by index.

use std::io::ErrorKind;

use semikv_protocol::frame::{self, Header, HEADER_LEN};
use semikv_protocol::{Entry, LogIndex};

use super::segment::Segment;
use super::{Record, WalOptions};
use crate::storage::disk::Disk;
use crate::storage::error::{io_err, StorageError};

/// What replaying one segment found.
pub(super) struct Replayed {
    /// Index after the segment's last entry (its first index if it has none).
    pub(super) next: LogIndex,
    pub(super) max_commit: LogIndex,
    /// Offset of a torn tail to cut (last segment only).
    pub(super) torn_at: Option<u64>,
}

/// Why a record could not be read.
pub(super) enum Bad {
    /// The file ends inside the record, its checksum fails, or its length is
    /// over the limit: a crash mid-write explains it if no valid record
    /// follows.
    Damaged(String),
    /// The checksum holds but the payload is not a record: only a crash's
    /// zero-fill explains that, anything else is corruption.
    Undecodable(String),
}

/// Replays `seg`, adding its entries after `after` to `entries`; `is_last`:
/// it is the last segment, whose end alone may be torn.
pub(super) fn replay_segment(
    disk: &dyn Disk,
    seg: &mut Segment,
    after: LogIndex,
    is_last: bool,
    opts: WalOptions,
    entries: &mut Vec<Entry>,
) -> Result<Replayed, StorageError> {
    let bytes = disk.read(&seg.path).map_err(io_err("reading", &seg.path))?;
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
pub(super) fn read_record(buf: &[u8], max_len: usize) -> Result<(Record, usize), Bad> {
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
pub(super) fn valid_record_after(rest: &[u8], max_len: usize) -> Option<usize> {
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

/// Byte offset of entry `index` in `seg`, if it holds it. The segment was
/// replayed at open or written by us since, so anything unreadable is
/// corruption.
pub(super) fn find_entry(
    disk: &dyn Disk,
    seg: &Segment,
    index: LogIndex,
    opts: WalOptions,
) -> Result<Option<u64>, StorageError> {
    let bytes = match disk.read(&seg.path) {
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
