//! Segment files: their names (the index of their first entry), listing
//! them in order, and cutting one at a byte offset (fsynced).

use std::path::{Path, PathBuf};

use semikv_protocol::LogIndex;

use super::{NAME_DIGITS, SEGMENT_EXT};
use crate::storage::disk::{Access, Disk};
use crate::storage::error::{io_err, StorageError};

/// One segment file: the index of its first entry, its path, its length.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) first: LogIndex,
    pub(super) path: PathBuf,
    pub(super) len: u64,
}

/// The file of the segment whose first entry is `first`.
pub(super) fn segment_path(dir: &Path, first: LogIndex) -> PathBuf {
    dir.join(format!(
        "{:0width$}.{SEGMENT_EXT}",
        first.0,
        width = NAME_DIGITS
    ))
}

/// The index a segment file name stands for, or `None` if it is not one.
pub(super) fn parse_segment_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

/// Every segment file in `dir`, by first index (other files are ignored,
/// with a warning).
pub(super) fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<Segment>, StorageError> {
    let mut segments = Vec::new();
    for name in disk.read_dir(dir).map_err(io_err("listing", dir))? {
        let path = dir.join(&name);
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => segments.push(Segment {
                first,
                path,
                len: 0,
            }),
            None => {
                tracing::warn!(file = %path.display(), "ignoring unexpected file in the write-ahead log directory")
            }
        }
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Cuts `path` to `offset` bytes, durably.
pub(super) fn truncate_file(disk: &dyn Disk, path: &Path, offset: u64) -> Result<(), StorageError> {
    let file = disk
        .open(path, Access::Write)
        .map_err(io_err("opening", path))?;
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .map_err(io_err("truncating", path))
}
