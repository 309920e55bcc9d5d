//! Installing a snapshot received from a leader: every check (whole and
//! valid, as announced, not stale) is made before anything on disk changes.

use std::io::BufReader;
use std::path::Path;

use semikv_protocol::LogIndex;

use super::directory::{latest, publish};
use super::read::decode_from;
use super::SnapshotMeta;
use crate::storage::disk::Access;
use crate::storage::error::{io_err, StorageError};
use crate::storage::store::Store;
use crate::storage::{DataDir, SNAPSHOT_DIR};

/// Why a snapshot received from a leader was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The bytes are not a whole, valid snapshot (bad frame, truncated,
    /// trailing bytes, wrong pair count). Nothing on disk was touched.
    #[error("received snapshot is invalid: {0}")]
    Invalid(#[source] StorageError),
    /// The snapshot is valid but is not the one the leader announced for it,
    /// or the stream's chunks announced different snapshots. Nothing on disk
    /// was touched.
    #[error("received snapshot has {field} {found}, but the leader announced {announced}")]
    Mismatch {
        /// What differs, e.g. "last index".
        field: &'static str,
        /// What the leader announced.
        announced: String,
        /// What the snapshot (or a later chunk) holds.
        found: String,
    },
    /// The snapshot ends before state this replica already committed or
    /// snapshotted: installing it would roll that state back. Nothing on
    /// disk was touched.
    #[error("snapshot at {index} is older than {floor}, which is already committed here")]
    Stale {
        /// The snapshot's last index.
        index: LogIndex,
        /// What this replica already has: its commit index or current
        /// snapshot, whichever is higher.
        floor: LogIndex,
    },
    /// Reading the snapshot directory or writing the snapshot failed; the
    /// previous snapshot is still current unless the rename succeeded.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Checks that `found` is the snapshot `announced` describes.
///
/// # Errors
/// [`InstallError::Mismatch`] naming the first field that differs.
fn check_announced(announced: &SnapshotMeta, found: &SnapshotMeta) -> Result<(), InstallError> {
    let mismatch = |field, announced: String, found: String| {
        Err(InstallError::Mismatch {
            field,
            announced,
            found,
        })
    };
    if found.last_index != announced.last_index {
        return mismatch(
            "last index",
            announced.last_index.to_string(),
            found.last_index.to_string(),
        );
    }
    if found.last_epoch != announced.last_epoch {
        return mismatch(
            "last epoch",
            announced.last_epoch.to_string(),
            found.last_epoch.to_string(),
        );
    }
    if found.history != announced.history {
        return mismatch(
            "epoch history",
            format!("{:?}", announced.history),
            format!("{:?}", found.history),
        );
    }
    Ok(())
}

/// Validates a snapshot a leader streamed into the file `staged` and, only
/// if it passes every check, durably makes that file the current snapshot
/// (renamed into place: `staged` must be on the data directory's disk
/// and file system), then deletes older ones. Returns what it holds. Memory holds one
/// record of the file at a time besides the store it builds.
///
/// The checks, all made before anything in `data_dir` is created, written,
/// renamed or deleted: the file decodes as a whole valid snapshot; it is the
/// snapshot `announced` describes (last index, last epoch, history); and its
/// last index is at least `floor` (the caller's commit index) and at least
/// the current snapshot's, so committed state is never rolled back.
///
/// On success the file was fsynced, renamed into place and the directory
/// fsynced before any older snapshot was deleted; the caller may reset its
/// log only after this returns.
///
/// # Errors
/// [`InstallError::Invalid`], [`InstallError::Mismatch`] or
/// [`InstallError::Stale`] if a check fails (nothing in `data_dir` was
/// touched; `staged` is left to its owner); [`InstallError::Storage`] if
/// reading `staged` or listing or writing the directory fails.
pub fn install(
    data_dir: &DataDir,
    staged: &Path,
    announced: &SnapshotMeta,
    floor: LogIndex,
) -> Result<(SnapshotMeta, Store), InstallError> {
    let disk = &**data_dir.disk();
    let dir = data_dir.join(SNAPSHOT_DIR);
    // Cheap checks first: a stale announcement is refused before decoding.
    if announced.last_index < floor {
        return Err(InstallError::Stale {
            index: announced.last_index,
            floor,
        });
    }
    let mut file = disk
        .open(staged, Access::Read)
        .map_err(io_err("opening", staged))?;
    let mut store = Store::default();
    let meta =
        decode_from(staged, BufReader::new(&mut file), Some(&mut store)).map_err(|e| match e {
            StorageError::Io { .. } => InstallError::Storage(e),
            e => InstallError::Invalid(e),
        })?;
    check_announced(announced, &meta)?;
    // Only reads the directory. The current snapshot is at most the commit
    // index, but this does not rely on the caller's floor being right.
    if let Some((_, current)) = latest(disk, &dir)? {
        if current > meta.last_index {
            return Err(InstallError::Stale {
                index: meta.last_index,
                floor: current,
            });
        }
    }
    file.sync_all().map_err(io_err("syncing", staged))?;
    drop(file);
    disk.create_dir_all(&dir)
        .map_err(io_err("creating directory", &dir))?;
    // Only older snapshots go: a newer one can appear only if a concurrent
    // writer raced the check above, and it then stays current, matching the
    // log compacted behind it.
    publish(disk, &dir, staged, meta.last_index, |other| {
        other < meta.last_index
    })?;
    Ok((meta, store))
}
