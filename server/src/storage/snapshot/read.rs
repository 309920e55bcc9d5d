//! Reading the current snapshot back and validating every frame of it: the
//! header first, pair chunks, an end record whose count matches, nothing after.

use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use semikv_protocol::frame::{self, Header, HEADER_LEN};
use semikv_protocol::{LogIndex, UnixMillis};

use super::directory::latest;
use super::{SnapshotMeta, SnapshotRecord, MAGIC, MAX_SNAPSHOT_FRAME, OLDEST_VERSION, VERSION};
use crate::storage::disk::{Access, OpenFile};
use crate::storage::error::{io_err, StorageError};
use crate::storage::store::Store;
use crate::storage::{DataDir, SNAPSHOT_DIR};

/// Opens the current snapshot after validating all of it (a record at a
/// time: memory holds one record, never the file), and returns its
/// metadata, the file rewound to its start, and its length: what a leader
/// streams to a follower. `None` if there is none. The open file stays
/// readable if a newer snapshot replaces it meanwhile.
///
/// # Errors
/// [`StorageError::Io`] if it cannot be read; [`StorageError::Corrupt`] if it
/// fails validation.
pub fn open_latest(
    data_dir: &DataDir,
) -> Result<Option<(SnapshotMeta, OpenFile, u64)>, StorageError> {
    let disk = &**data_dir.disk();
    let Some((path, index)) = latest(disk, &data_dir.join(SNAPSHOT_DIR))? else {
        return Ok(None);
    };
    let mut file = disk
        .open(&path, Access::Read)
        .map_err(io_err("opening", &path))?;
    let meta = decode_from(&path, BufReader::new(&mut file), None)?;
    check_name(&path, &meta, index)?;
    let len = file
        .seek(SeekFrom::End(0))
        .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(io_err("seeking in", &path))?;
    Ok(Some((meta, file, len)))
}

/// The current snapshot whole, validated, with its metadata, or `None` if
/// there is none. Holds the whole file in memory: for tests and tools; a
/// leader streams it with [`open_latest`].
///
/// # Errors
/// As [`open_latest`].
pub fn read_latest(data_dir: &DataDir) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let Some((meta, mut file, len)) = open_latest(data_dir)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(io_err("reading", data_dir.join(SNAPSHOT_DIR)))?;
    Ok(Some((meta, bytes)))
}

/// Loads the current snapshot into a [`Store`], or `None` if there is none.
///
/// # Errors
/// [`StorageError::Io`] if it cannot be read; [`StorageError::Corrupt`] if it
/// fails validation.
pub fn load_latest(data_dir: &DataDir) -> Result<Option<(SnapshotMeta, Store)>, StorageError> {
    let disk = &**data_dir.disk();
    let Some((path, index)) = latest(disk, &data_dir.join(SNAPSHOT_DIR))? else {
        return Ok(None);
    };
    let file = disk
        .open(&path, Access::Read)
        .map_err(io_err("opening", &path))?;
    let mut store = Store::default();
    let meta = decode_from(&path, BufReader::new(file), Some(&mut store))?;
    check_name(&path, &meta, index)?;
    Ok(Some((meta, store)))
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

/// Reads into `buf` until it is full or the input ends; how much it read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Validates a whole snapshot read from `reader`, a record at a time,
/// loading its pairs and expiries into `store` if given (only checking
/// them otherwise); `path` names it in errors.
///
/// # Errors
/// [`StorageError::Io`] if reading fails; [`StorageError::Corrupt`] naming
/// the byte offset of the first record that is not what this code writes
/// (a record over [`MAX_SNAPSHOT_FRAME`] included: nothing is allocated for
/// a length before it is checked).
pub(super) fn decode_from(
    path: &Path,
    mut reader: impl Read,
    mut store: Option<&mut Store>,
) -> Result<SnapshotMeta, StorageError> {
    let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let read_err = io_err("reading", path);
    let mut offset = 0u64;
    let mut meta = None;
    let mut count = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; HEADER_LEN];
        let got = read_up_to(&mut reader, &mut head).map_err(|e| io_err("reading", path)(e))?;
        if got == 0 {
            return Err(corrupt(
                offset,
                "snapshot ends without an end record".into(),
            ));
        }
        let header = Header::parse(&head[..got])
            .ok_or_else(|| corrupt(offset, "truncated record header".into()))?;
        let len = header.len as usize;
        if len > MAX_SNAPSHOT_FRAME {
            return Err(corrupt(
                offset,
                format!("record of {len} bytes, over the {MAX_SNAPSHOT_FRAME} byte limit"),
            ));
        }
        // Grows with the bytes that arrive: a corrupt length on a short file
        // allocates nothing near it.
        payload.clear();
        let got = (&mut reader)
            .take(len as u64)
            .read_to_end(&mut payload)
            .map_err(|e| io_err("reading", path)(e))?;
        if got < len {
            return Err(corrupt(
                offset,
                format!(
                    "record of {} bytes but only {} left",
                    header.frame_len(),
                    HEADER_LEN + got
                ),
            ));
        }
        let record: SnapshotRecord =
            frame::decode_payload(header, &payload).map_err(|e| corrupt(offset, e.to_string()))?;
        match (record, &meta) {
            (
                SnapshotRecord::Header {
                    magic,
                    version,
                    meta: m,
                },
                None,
            ) => {
                if magic != MAGIC || !(OLDEST_VERSION..=VERSION).contains(&version) {
                    return Err(corrupt(
                        offset,
                        format!("not a snapshot of version {OLDEST_VERSION} to {VERSION}"),
                    ));
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
                if let Some(store) = store.as_deref_mut() {
                    for (k, v) in pairs {
                        store.insert(k, v);
                    }
                }
            }
            (SnapshotRecord::Expiries(expiries), Some(_)) => {
                let Some(store) = store.as_deref_mut() else {
                    continue;
                };
                for (k, at) in expiries {
                    if !store.set_expiry_at(&k, UnixMillis(at)) {
                        return Err(corrupt(
                            offset,
                            "an expiry for a key with no value before it".into(),
                        ));
                    }
                }
            }
            (SnapshotRecord::End { pairs }, Some(m)) => {
                if pairs != count {
                    return Err(corrupt(
                        offset,
                        format!("end record says {pairs} pairs, found {count}"),
                    ));
                }
                let end = offset + header.frame_len() as u64;
                let mut extra = [0u8; 1];
                if read_up_to(&mut reader, &mut extra).map_err(read_err)? != 0 {
                    return Err(corrupt(end, "bytes after the end record".into()));
                }
                return Ok(m.clone());
            }
        }
        offset += header.frame_len() as u64;
    }
}
