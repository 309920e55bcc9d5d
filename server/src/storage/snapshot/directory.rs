//! The snapshot directory: file names, listing, and publishing a new file
//! (rename, directory fsync) before pruning the ones it replaces.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use semikv_protocol::LogIndex;

use crate::storage::disk::Disk;
use crate::storage::error::{io_err, StorageError};
use crate::storage::sync_dir;

/// Renames the fsynced `tmp` into place, fsyncs the directory, then deletes
/// the snapshots `doomed` picks.
pub(super) fn publish(
    disk: &dyn Disk,
    dir: &Path,
    tmp: &Path,
    index: LogIndex,
    doomed: impl Fn(LogIndex) -> bool,
) -> Result<PathBuf, StorageError> {
    let path = snapshot_path(dir, index);
    if let Err(e) = disk.rename(tmp, &path) {
        let _ = disk.remove_file(tmp);
        return Err(io_err("renaming", tmp)(e));
    }
    sync_dir(disk, dir)?;
    remove_snapshots(disk, dir, doomed)?;
    Ok(path)
}

fn remove_snapshots(
    disk: &dyn Disk,
    dir: &Path,
    doomed: impl Fn(LogIndex) -> bool,
) -> Result<(), StorageError> {
    let mut removed = false;
    for (path, index) in list(disk, dir)? {
        if doomed(index) {
            match disk.remove_file(&path) {
                Ok(()) => removed = true,
                // A concurrent writer may have removed it already.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
    }
    if removed {
        sync_dir(disk, dir)?;
    }
    Ok(())
}

fn snapshot_path(dir: &Path, index: LogIndex) -> PathBuf {
    dir.join(format!("snap-{:020}.bin", index.0))
}

fn parse_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".bin")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

fn list(disk: &dyn Disk, dir: &Path) -> Result<Vec<(PathBuf, LogIndex)>, StorageError> {
    let names = match disk.read_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    let mut found = Vec::new();
    for name in names {
        if let Some(index) = name.to_str().and_then(parse_name) {
            found.push((dir.join(name), index));
        }
    }
    Ok(found)
}

pub(super) fn latest(
    disk: &dyn Disk,
    dir: &Path,
) -> Result<Option<(PathBuf, LogIndex)>, StorageError> {
    Ok(list(disk, dir)?.into_iter().max_by_key(|(_, index)| *index))
}
