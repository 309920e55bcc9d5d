//! Reading the current snapshot back and validating every frame of it: the
//! header first, pair chunks, an end record whose count matches, nothing after.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use semikv_protocol::frame::{self, Header, HEADER_LEN};
use semikv_protocol::LogIndex;

use super::directory::latest;
use super::{SnapshotMeta, SnapshotRecord, MAGIC, VERSION};
use crate::storage::error::{io_err, StorageError};
use crate::storage::store::Store;
use crate::storage::SNAPSHOT_DIR;

/// Reads and fully validates the current snapshot, returning its metadata and
/// raw bytes (to ship to a follower), or `None` if there is none.
///
/// # Errors
/// [`StorageError::Io`] if it cannot be read; [`StorageError::Corrupt`] if it
/// fails validation.
pub fn read_latest(data_dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    read_current(data_dir, |_, _| {})
}

/// Loads the current snapshot into a [`Store`], or `None` if there is none.
///
/// # Errors
/// [`StorageError::Io`] if it cannot be read; [`StorageError::Corrupt`] if it
/// fails validation.
pub fn load_latest(data_dir: &Path) -> Result<Option<(SnapshotMeta, Store)>, StorageError> {
    let mut store = Store::default();
    let current = read_current(data_dir, |k, v| store.insert(k, v))?;
    Ok(current.map(|(meta, _)| (meta, store)))
}

/// Reads and validates the current snapshot, handing each pair to
/// `on_pair`; returns its metadata and raw bytes.
fn read_current(
    data_dir: &Path,
    on_pair: impl FnMut(Bytes, Bytes),
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let Some((path, index)) = latest(&data_dir.join(SNAPSHOT_DIR))? else {
        return Ok(None);
    };
    let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
    let meta = decode(&path, &bytes, on_pair)?;
    check_name(&path, &meta, index)?;
    Ok(Some((meta, bytes)))
}

fn check_name(path: &Path, meta: &SnapshotMeta, index: LogIndex) -> Result<(), StorageError> {
    if meta.last_index != index {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "file is named for index {index} but holds a snapshot at {}",
                meta.last_index
            ),
        });
    }
    Ok(())
}

/// Validates a whole snapshot, handing each pair to `on_pair`.
pub(super) fn decode(
    path: &Path,
    bytes: &[u8],
    mut on_pair: impl FnMut(Bytes, Bytes),
) -> Result<SnapshotMeta, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut offset = 0usize;
    let mut meta = None;
    let mut count = 0u64;
    loop {
        let buf = &bytes[offset..];
        if buf.is_empty() {
            return Err(corrupt(
                offset,
                "snapshot ends without an end record".into(),
            ));
        }
        let header =
            Header::parse(buf).ok_or_else(|| corrupt(offset, "truncated record header".into()))?;
        if header.frame_len() > buf.len() {
            return Err(corrupt(
                offset,
                format!(
                    "record of {} bytes but only {} left",
                    header.frame_len(),
                    buf.len()
                ),
            ));
        }
        let record: SnapshotRecord =
            frame::decode_payload(header, &buf[HEADER_LEN..header.frame_len()])
                .map_err(|e| corrupt(offset, e.to_string()))?;
        match (record, &meta) {
            (
                SnapshotRecord::Header {
                    magic,
                    version,
                    meta: m,
                },
                None,
            ) => {
                if magic != MAGIC || version != VERSION {
                    return Err(corrupt(offset, format!("not a version {VERSION} snapshot")));
                }
                meta = Some(m);
            }
            (_, None) => {
                return Err(corrupt(
                    offset,
                    "snapshot does not start with a header".into(),
                ))
            }
            (SnapshotRecord::Header { .. }, Some(_)) => {
                return Err(corrupt(offset, "second header record".into()))
            }
            (SnapshotRecord::Pairs(pairs), Some(_)) => {
                count += pairs.len() as u64;
                for (k, v) in pairs {
                    on_pair(k, v);
                }
            }
            (SnapshotRecord::End { pairs }, Some(m)) => {
                if pairs != count {
                    return Err(corrupt(
                        offset,
                        format!("end record says {pairs} pairs, found {count}"),
                    ));
                }
                let end = offset + header.frame_len();
                if end != bytes.len() {
                    return Err(corrupt(
                        end,
                        format!("{} bytes after the end record", bytes.len() - end),
                    ));
                }
                return Ok(m.clone());
            }
        }
        offset += header.frame_len();
    }
}
