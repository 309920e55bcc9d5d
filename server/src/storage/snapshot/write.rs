//! Writing a snapshot of the local store: framed in chunks into a temp file,
//! fsynced, then published in place of the older ones.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use semikv_protocol::{frame, UnixMillis};

use super::directory::publish;
use super::{SnapshotMeta, SnapshotRecord, CHUNK_BYTES, MAGIC, MAX_SNAPSHOT_FRAME, VERSION};
use crate::storage::disk::{Access, Disk, OpenFile};
use crate::storage::error::{io_err, StorageError};
use crate::storage::store::Store;
use crate::storage::{temp_path, DataDir, SNAPSHOT_DIR};

/// Durably writes a snapshot of `store` (its pairs and expiries) at
/// `meta.last_index` and deletes older snapshots. Returns the new file's
/// path.
///
/// # Errors
/// As [`write_pairs`].
pub fn write(
    data_dir: &DataDir,
    meta: &SnapshotMeta,
    store: &Store,
) -> Result<PathBuf, StorageError> {
    write_pairs(data_dir, meta, store.iter(), store.expiries())
}

/// Durably writes a snapshot of `pairs` and their `expiries` at
/// `meta.last_index` and deletes older snapshots. Returns the new file's
/// path. Every key in `expiries` must be among the `pairs`.
///
/// # Errors
/// [`StorageError::Io`] if any write, fsync, rename or deletion fails (the
/// previous snapshot is then still in place unless the rename succeeded);
/// [`StorageError::Unencodable`] for a pair too large to frame.
pub fn write_pairs<'a>(
    data_dir: &DataDir,
    meta: &SnapshotMeta,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    expiries: impl Iterator<Item = (&'a [u8], UnixMillis)>,
) -> Result<PathBuf, StorageError> {
    let disk = &**data_dir.disk();
    let dir = data_dir.join(SNAPSHOT_DIR);
    disk.create_dir_all(&dir)
        .map_err(io_err("creating directory", &dir))?;
    let tmp = temp_path(&dir, "snap");
    if let Err(e) = write_temp(disk, &tmp, meta, pairs, expiries) {
        let _ = disk.remove_file(&tmp);
        return Err(e);
    }
    publish(disk, &dir, &tmp, meta.last_index, |other| {
        other < meta.last_index
    })
}

fn write_temp<'a>(
    disk: &dyn Disk,
    tmp: &Path,
    meta: &SnapshotMeta,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    expiries: impl Iterator<Item = (&'a [u8], UnixMillis)>,
) -> Result<(), StorageError> {
    let file = disk
        .open(tmp, Access::Create)
        .map_err(io_err("creating", tmp))?;
    let mut out = BufWriter::new(file);
    let mut buf = BytesMut::new();
    let mut emit = |record: &SnapshotRecord, out: &mut BufWriter<OpenFile>| {
        buf.clear();
        frame::encode(record, MAX_SNAPSHOT_FRAME, &mut buf).map_err(|e| {
            StorageError::Unencodable {
                reason: e.to_string(),
            }
        })?;
        out.write_all(&buf).map_err(io_err("writing", tmp))
    };
    emit(
        &SnapshotRecord::Header {
            magic: MAGIC,
            version: VERSION,
            meta: meta.clone(),
        },
        &mut out,
    )?;
    let mut count = 0u64;
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    for (key, value) in pairs {
        chunk_bytes += key.len() + value.len();
        // The store keeps short keys and values inline, not as `Bytes`: a
        // small copy of each, off the node lock.
        chunk.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
        count += 1;
        if chunk_bytes >= CHUNK_BYTES {
            emit(&SnapshotRecord::Pairs(std::mem::take(&mut chunk)), &mut out)?;
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        emit(&SnapshotRecord::Pairs(chunk), &mut out)?;
    }
    // After every pair, so a reader sets each expiry on a key it holds.
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    for (key, at) in expiries {
        chunk_bytes += key.len() + 8;
        chunk.push((Bytes::copy_from_slice(key), at.0));
        if chunk_bytes >= CHUNK_BYTES {
            emit(
                &SnapshotRecord::Expiries(std::mem::take(&mut chunk)),
                &mut out,
            )?;
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        emit(&SnapshotRecord::Expiries(chunk), &mut out)?;
    }
    emit(&SnapshotRecord::End { pairs: count }, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| io_err("writing", tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing", tmp))
}
