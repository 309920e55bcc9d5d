//! Snapshots: the whole map at a log index, in one checksummed file.
//!
//! ```text
//! <data_dir>/snapshot/snap-<last index, 20 digits>.bin
//! frame(Header { magic, version, meta })
//! frame(Pairs([(key, value), ...]))      zero or more, ~1 MiB each
//! frame(Expiries([(key, unix ms), ...])) zero or more (version 2), after
//!                                        every pair: the keys that expire
//! frame(End { pairs })                   total pair count; end of file
//! frame = len u32 BE | crc32 u32 BE | postcard(SnapshotRecord)
//! ```
//!
//! A snapshot is written to a temp file, fsynced, renamed into place and the
//! directory fsynced; only then are older snapshots deleted. The latest file
//! (highest index) is the current one. A snapshot that fails validation is
//! an error, never skipped: the log before it may already be compacted.
//!
//! By concept: `write` (a snapshot of the local store), `read` (loading and
//! validating the current one), `install` (one received from a leader),
//! `directory` (file names, listing, publishing and pruning).

mod directory;
mod install;
mod read;
mod receive;
#[cfg(test)]
mod tests;
mod write;

use bytes::Bytes;
use semikv_protocol::{Epoch, EpochStart, LogIndex};
use serde::{Deserialize, Serialize};

pub use install::{install, InstallError};
pub use read::{load_latest, open_latest, read_latest};
pub use receive::{free_bytes, ReceiveError, Receiving, Staged, FREE_MARGIN};
pub use write::{write, write_pairs};

/// Identifies a snapshot file.
const MAGIC: [u8; 8] = *b"semikvSS";
/// Format version; bumped on any layout change. Version 2 added the
/// `Expiries` records; version 1 files (no expiries) are still read.
const VERSION: u32 = 2;
/// The oldest format version still read.
const OLDEST_VERSION: u32 = 1;
/// Pairs are flushed into a frame once it holds this many bytes.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest frame written or read. A single pair can exceed [`CHUNK_BYTES`];
/// reads are bounded by the file's size anyway.
const MAX_SNAPSHOT_FRAME: usize = 1 << 30;

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry whose effect the snapshot includes.
    pub last_index: LogIndex,
    /// That entry's epoch.
    pub last_epoch: Epoch,
    /// Where each epoch began, up to `last_index`.
    pub history: Vec<EpochStart>,
}

/// One frame of a snapshot file. Variants only ever grow at the end.
#[derive(Debug, Serialize, Deserialize)]
enum SnapshotRecord {
    Header {
        magic: [u8; 8],
        version: u32,
        meta: SnapshotMeta,
    },
    Pairs(Vec<(Bytes, Bytes)>),
    End {
        pairs: u64,
    },
    /// Keys that expire and when (Unix ms); every key named has a pair
    /// earlier in the file.
    Expiries(Vec<(Bytes, u64)>),
}
