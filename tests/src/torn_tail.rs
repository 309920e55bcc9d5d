//! A write-ahead log torn as by a crash mid-append, made on purpose: the
//! last segment of a stopped replica's log gets a record whose header
//! announces more bytes than follow. On restart the replica must truncate
//! it with one warning ([`TORN_TAIL_WARNING`]) and serve on.
//!
//! The layout relied on, as `semikv-server` writes it:
//!
//! ```text
//! <data dir>/wal/<first index, 20 digits>.wal
//! record = len: u32 BE | crc32: u32 BE | payload: len bytes
//! ```
//!
//! Segment names sort in log order, so the last name is the live segment.
//! Tear only a replica that is not running: a live one may be appending.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

use crate::workload::Rng;

/// The log's directory inside a replica's data dir.
pub const WAL_DIR: &str = "wal";

/// Extension of a log segment file.
pub const SEGMENT_EXT: &str = "wal";

/// What a replica logs when it truncates a torn record at restart.
pub const TORN_TAIL_WARNING: &str = "truncating a torn record";

/// The length a torn record's header announces.
pub const TORN_RECORD_LEN: u32 = 300;

/// The payload bytes that follow it: fewer than announced.
pub const TORN_PAYLOAD_BYTES: usize = 57;

/// The last log segment in the replica data dir `data_dir`.
///
/// # Errors
/// The log directory cannot be read, or holds no segment.
pub fn last_segment(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let wal = data_dir.join(WAL_DIR);
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(&wal).with_context(|| format!("reading {}", wal.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", wal.display()))?
            .path();
        if path.extension().is_some_and(|x| x == SEGMENT_EXT) {
            segments.push(path);
        }
    }
    segments.sort();
    segments
        .pop()
        .ok_or_else(|| anyhow!("no WAL segment in {}", wal.display()))
}

/// Appends to `segment` what a crash mid-append leaves: a record header
/// announcing [`TORN_RECORD_LEN`] bytes (with a random checksum), then
/// [`TORN_PAYLOAD_BYTES`] random bytes of payload; fsynced. `seed` drives
/// the random bytes.
///
/// # Errors
/// The segment cannot be opened, written or synced.
pub fn tear_tail(segment: &Path, seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed);
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&TORN_RECORD_LEN.to_be_bytes());
    // Truncations are the point: any checksum, any byte will do.
    garbage.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
    garbage.extend((0..TORN_PAYLOAD_BYTES).map(|_| rng.next_u64() as u8));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(segment)
        .with_context(|| format!("opening {}", segment.display()))?;
    f.write_all(&garbage)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("tearing {}", segment.display()))
}
