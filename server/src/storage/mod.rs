//! The replica's data directory: write-ahead log, snapshots, the persisted
//! epoch, and the in-memory store they rebuild.
//!
//! ```text
//! <data_dir>/epoch                                   current epoch (meta)
//! <data_dir>/DIVERGED                                why it stopped, if its log diverged (meta)
//! <data_dir>/wal/<first index, 20 digits>.wal        log segments (wal)
//! <data_dir>/snapshot/snap-<index, 20 digits>.bin    latest snapshot (snapshot)
//! ```
//!
//! All of it is synchronous code on a [`disk::Disk`] (the real file system,
//! or a simulated one), called from the WAL writer or through the replica's
//! [`Blocking`](semikv_protocol::blocking::Blocking) (tokio's blocking pool,
//! or inline in a simulation). Every file is created, renamed or deleted
//! and then its directory fsynced, so a crash leaves either the old or the
//! new state.

pub mod disk;
pub mod error;
pub mod meta;
pub mod snapshot;
pub mod store;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use semikv_protocol::{Entry, Epoch, LogIndex};

pub use disk::{Disk, OsDisk, SimDisk};
pub use error::StorageError;

use self::error::io_err;

/// Name of the write-ahead log's directory inside the data directory.
pub const WAL_DIR: &str = "wal";
/// Name of the snapshots' directory inside the data directory.
pub const SNAPSHOT_DIR: &str = "snapshot";
/// Suffix of temporary files; leftovers are removed by [`open`].
const TEMP_SUFFIX: &str = ".tmp";

/// A replica's data directory: its path and the disk it is on. Cheap to
/// clone; every storage call that touches the directory takes one.
#[derive(Debug, Clone)]
pub struct DataDir {
    disk: Arc<dyn Disk>,
    path: PathBuf,
}

impl DataDir {
    /// The directory `path` on `disk`.
    pub fn new(disk: Arc<dyn Disk>, path: impl Into<PathBuf>) -> DataDir {
        DataDir {
            disk,
            path: path.into(),
        }
    }

    /// The directory `path` on the real file system.
    pub fn on_os(path: impl Into<PathBuf>) -> DataDir {
        DataDir::new(Arc::new(OsDisk), path)
    }

    /// Where the directory is on its disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk it is on.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    /// The path, for messages.
    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// Everything recovered from a data directory, ready to run.
#[derive(Debug)]
pub struct Opened {
    /// The persisted epoch (0 if none was ever stored).
    pub epoch: Epoch,
    /// The latest snapshot's metadata, if there is one.
    pub snapshot: Option<snapshot::SnapshotMeta>,
    /// The map as of the snapshot (empty without one). `entries` are not yet
    /// applied to it.
    pub store: store::Store,
    /// Log entries after the snapshot's last index (or from index 1),
    /// consecutive.
    pub entries: Vec<Entry>,
    /// Highest commit index recorded, at least the snapshot's last index and
    /// at most the last entry's index.
    pub commit_index: LogIndex,
    /// The log, open for appending after the last entry.
    pub wal: wal::Wal,
}

/// Opens (creating it if missing) and fully recovers `data_dir`: the epoch,
/// the latest snapshot, and the write-ahead log after it. A torn record at
/// the very end of the log is truncated with a warning; leftover temporary
/// files are removed. Everything it returns is durable when it returns.
///
/// # Errors
/// [`StorageError::Io`] if a file cannot be read, written, created or
/// synced;
/// [`StorageError::Corrupt`] for a corrupt epoch file, snapshot or log
/// (anything but a torn tail); [`StorageError::Diverged`] if the replica
/// stopped on a diverged log.
pub fn open(data_dir: &DataDir, opts: wal::WalOptions) -> Result<Opened, StorageError> {
    let disk = &**data_dir.disk();
    let wal_dir = data_dir.join(WAL_DIR);
    let snapshot_dir = data_dir.join(SNAPSHOT_DIR);
    for dir in [data_dir.path(), &wal_dir, &snapshot_dir] {
        disk.create_dir_all(dir)
            .map_err(io_err("creating directory", dir))?;
    }
    meta::check_not_diverged(data_dir)?;
    // A process that died between a rename and its directory fsync left
    // the epoch or a snapshot visible but not durable: make them durable
    // before acting on them.
    sync_dir(disk, data_dir.path())?;
    sync_dir(disk, &snapshot_dir)?;
    remove_temp_files(disk, data_dir.path())?;
    remove_temp_files(disk, &snapshot_dir)?;

    let epoch = meta::load_epoch(data_dir)?;
    let (snapshot, store) = match snapshot::load_latest(data_dir)? {
        Some((meta, store)) => (Some(meta), store),
        None => (None, store::Store::default()),
    };
    let after = snapshot.as_ref().map(|m| m.last_index).unwrap_or_default();
    let (wal, recovered) = wal::Wal::open(data_dir.disk().clone(), &wal_dir, after, opts)?;
    Ok(Opened {
        epoch,
        snapshot,
        store,
        entries: recovered.entries,
        commit_index: recovered.commit_index,
        wal,
    })
}

/// Fsyncs a directory so that file creations, renames and deletions in it
/// survive a crash.
fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), StorageError> {
    disk.sync_dir(dir).map_err(io_err("syncing directory", dir))
}

/// Removes `*.tmp` files a crash left behind in `dir`.
fn remove_temp_files(disk: &dyn Disk, dir: &Path) -> Result<(), StorageError> {
    let mut removed = false;
    for name in disk.read_dir(dir).map_err(io_err("listing", dir))? {
        if name.to_string_lossy().ends_with(TEMP_SUFFIX) {
            let path = dir.join(name);
            tracing::warn!(file = %path.display(), "removing leftover temporary file");
            disk.remove_file(&path).map_err(io_err("removing", &path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(disk, dir)?;
    }
    Ok(())
}

/// A temporary file name in `dir` unique within this process, so concurrent
/// writers (say, two epoch stores) never share one.
fn temp_path(dir: &Path, stem: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{stem}.{}.{n}{TEMP_SUFFIX}", std::process::id()))
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::storage::disk::fixture::each_disk;
    use bytes::Bytes;
    use semikv_protocol::{EpochStart, WriteOp};

    fn set(i: u64, epoch: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            epoch: Epoch::from_raw(epoch.into()),
            op: WriteOp::Set {
                key: Bytes::from(format!("k{}", i % 7)),
                value: Bytes::from(format!("v{i}")),
            },
        }
    }

    #[test]
    fn fresh_directory_opens_empty() {
        each_disk(|fx| {
            let data = fx.at(fx.path("nested/replica-1"));
            let opened = open(&data, wal::WalOptions::default()).unwrap();
            assert_eq!(opened.epoch, Epoch::from_raw(0));
            assert!(opened.snapshot.is_none());
            assert!(opened.store.is_empty());
            assert!(opened.entries.is_empty());
            assert_eq!(opened.commit_index, LogIndex(0));
            assert!(fx.is_dir(&data.join(WAL_DIR)));
            assert!(fx.is_dir(&data.join(SNAPSHOT_DIR)));
        });
    }

    #[test]
    fn end_to_end_snapshot_then_wal_after_it() {
        each_disk(|fx| {
            let data = &fx.data_dir();
            let opts = wal::WalOptions {
                segment_bytes: 200,
                ..Default::default()
            };
            let mut model = store::Store::default();
            {
                let mut opened = open(data, opts).unwrap();
                meta::store_epoch(data, Epoch::from_raw(3)).unwrap();
                for i in 1..=30 {
                    let e = set(i, 3);
                    model.apply(&e.op);
                    opened
                        .wal
                        .append(&[wal::Record::Entry(e), wal::Record::Commit(LogIndex(i))])
                        .unwrap();
                    if i == 20 {
                        let meta = snapshot::SnapshotMeta {
                            last_index: LogIndex(20),
                            last_epoch: Epoch::from_raw(3),
                            history: vec![EpochStart {
                                epoch: Epoch::from_raw(3),
                                start: LogIndex(1),
                            }],
                        };
                        snapshot::write(data, &meta, &model).unwrap();
                        opened.wal.compact(LogIndex(20)).unwrap();
                    }
                }
                opened.wal.sync().unwrap();
            }
            // A crash mid-write leaves temp files; open must clear them.
            fx.write(&data.join("epoch.1.2.tmp"), b"junk");
            fx.write(&data.join(SNAPSHOT_DIR).join("snap-x.tmp"), b"junk");
            let opened = open(data, opts).unwrap();
            assert_eq!(opened.epoch, Epoch::from_raw(3));
            let snap = opened.snapshot.clone().unwrap();
            assert_eq!(snap.last_index, LogIndex(20));
            let idx: Vec<u64> = opened.entries.iter().map(|e| e.index.0).collect();
            assert_eq!(idx, (21..=30).collect::<Vec<_>>());
            assert_eq!(opened.commit_index, LogIndex(30));
            let mut store = opened.store.clone();
            for e in &opened.entries {
                store.apply(&e.op);
            }
            let mut got: Vec<_> = store.iter().collect();
            let mut want: Vec<_> = model.iter().collect();
            got.sort();
            want.sort();
            assert_eq!(got, want);
            assert!(!fx.exists(&data.join("epoch.1.2.tmp")));
            assert!(!fx.exists(&data.join(SNAPSHOT_DIR).join("snap-x.tmp")));
        });
    }

    #[test]
    fn wal_entirely_behind_an_installed_snapshot_is_discarded() {
        each_disk(|fx| {
            let data = &fx.data_dir();
            {
                let mut opened = open(data, wal::WalOptions::default()).unwrap();
                let batch: Vec<_> = (1..=5).map(|i| wal::Record::Entry(set(i, 1))).collect();
                opened.wal.append(&batch).unwrap();
                opened.wal.sync().unwrap();
            }
            // Crash between installing a leader's snapshot and resetting the log.
            let meta = snapshot::SnapshotMeta {
                last_index: LogIndex(50),
                last_epoch: Epoch::from_raw(2),
                history: vec![],
            };
            snapshot::write(data, &meta, &store::Store::default()).unwrap();
            let mut opened = open(data, wal::WalOptions::default()).unwrap();
            assert!(opened.entries.is_empty());
            assert_eq!(opened.commit_index, LogIndex(50));
            opened
                .wal
                .append(&[wal::Record::Entry(set(51, 2))])
                .unwrap();
            opened.wal.sync().unwrap();
            drop(opened);
            let opened = open(data, wal::WalOptions::default()).unwrap();
            assert_eq!(opened.entries, vec![set(51, 2)]);
        });
    }
}
