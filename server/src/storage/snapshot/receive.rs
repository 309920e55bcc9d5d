//! A snapshot a leader streams, written to a staging file as it arrives:
//! memory holds one chunk at a time however long the stream (the finished
//! file is validated a record at a time and renamed into place by
//! [`super::install`]), the stream may not send more
//! than the size its leader announced, and that size is checked against
//! the free disk (keeping a margin) before the first byte is written, and
//! again at every chunk (other files grow too).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use semikv_protocol::blocking::{Blocking, BlockingError};

use crate::storage::disk::{Access, Disk, OpenFile};
use crate::storage::{DataDir, SNAPSHOT_DIR};

/// The staging file, in the snapshot directory (not a snapshot's name, so
/// nothing mistakes it for one).
const RECEIVING: &str = "receiving.tmp";

/// Free space a receiving snapshot leaves on its disk (or a twentieth of
/// the disk, if that is less): the write-ahead log and the epoch file still
/// need room.
pub const FREE_MARGIN: u64 = 256 * 1024 * 1024;

/// Why a chunk of a streamed snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The chunk does not continue what was received.
    #[error("chunk at offset {got} but {expected} bytes received")]
    Offset {
        /// Bytes received so far.
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// Writing it would leave less than the margin ([`FREE_MARGIN`], or a
    /// twentieth of the disk) free.
    #[error(
        "no room for the snapshot: {received} bytes received, {free} bytes free, {needed} needed"
    )]
    NoRoom {
        /// Bytes received so far.
        received: u64,
        /// Free bytes on the disk.
        free: u64,
        /// Free bytes it would take: what is left to receive plus the margin.
        needed: u64,
    },
    /// The stream sent more bytes than its leader announced, or ended
    /// short of them.
    #[error("snapshot announced as {announced} bytes but {received} arrived")]
    Size {
        /// The size the leader announced.
        announced: u64,
        /// Bytes received, counting the chunk that broke the bound.
        received: u64,
    },
    /// The staging file could not be written or read.
    #[error("staging the snapshot in {path}: {source}")]
    Io {
        /// The staging file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The blocking task writing the staging file did not finish.
    #[error("staging the snapshot: {0}")]
    Blocking(#[from] BlockingError),
}

/// A snapshot being received; the staging file is removed when this drops.
#[derive(Debug)]
pub struct Receiving {
    staged: Staged,
    path: PathBuf,
    /// Shared with the blocking task writing each chunk.
    file: Arc<Mutex<OpenFile>>,
    received: u64,
    announced: u64,
    blocking: Blocking,
}

/// Bytes free on the file system holding `data_dir`, to an unprivileged
/// user, and the margin a snapshot keeps free there: [`FREE_MARGIN`], or a
/// twentieth of the file system if that is less (a small disk still takes
/// snapshots).
///
/// # Errors
/// `statvfs` failed on `data_dir`.
pub fn free_bytes(data_dir: &DataDir) -> io::Result<(u64, u64)> {
    free_bytes_at(&**data_dir.disk(), data_dir.path())
}

fn free_bytes_at(disk: &dyn Disk, path: &Path) -> io::Result<(u64, u64)> {
    let space = disk.space(path)?;
    Ok((space.free, FREE_MARGIN.min(space.total / 20)))
}

impl Receiving {
    /// Starts receiving a snapshot of `announced` bytes into a fresh
    /// staging file in `data_dir`'s snapshot directory (created if missing);
    /// its file work runs where `blocking` says.
    ///
    /// # Errors
    /// [`ReceiveError::NoRoom`] if the disk cannot hold `announced` bytes
    /// and keep its margin free (nothing is created then); the directory or
    /// the file cannot be created.
    pub async fn start(
        data_dir: &DataDir,
        announced: u64,
        blocking: Blocking,
    ) -> Result<Receiving, ReceiveError> {
        let disk = data_dir.disk().clone();
        let dir = data_dir.join(SNAPSHOT_DIR);
        let path = dir.join(RECEIVING);
        let creating = path.clone();
        let creator = disk.clone();
        let file = blocking
            .run(move || {
                let io = |source| ReceiveError::Io {
                    path: creating.clone(),
                    source,
                };
                creator.create_dir_all(&dir).map_err(io)?;
                let (free, margin) = free_bytes_at(&*creator, &dir).map_err(io)?;
                let needed = announced.saturating_add(margin);
                if free < needed {
                    return Err(ReceiveError::NoRoom {
                        received: 0,
                        free,
                        needed,
                    });
                }
                creator.open(&creating, Access::Create).map_err(io)
            })
            .await??;
        Ok(Receiving {
            staged: Staged {
                disk,
                path: path.clone(),
            },
            path,
            file: Arc::new(Mutex::new(file)),
            received: 0,
            announced,
            blocking,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends the chunk at `offset`.
    ///
    /// # Errors
    /// The chunk does not continue the stream, goes past the announced size,
    /// the disk would keep less than [`FREE_MARGIN`] free, or the write
    /// failed.
    pub async fn append(&mut self, offset: u64, data: Bytes) -> Result<(), ReceiveError> {
        if offset != self.received {
            return Err(ReceiveError::Offset {
                expected: self.received,
                got: offset,
            });
        }
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let after = self.received.saturating_add(len);
        if after > self.announced {
            return Err(ReceiveError::Size {
                announced: self.announced,
                received: after,
            });
        }
        let (file, path) = (self.file.clone(), self.path.clone());
        let disk = self.staged.disk.clone();
        let (received, left) = (self.received, self.announced.saturating_sub(self.received));
        self.blocking
            .run(move || {
                let io = |source| ReceiveError::Io {
                    path: path.clone(),
                    source,
                };
                let (free, margin) = free_bytes_at(&*disk, &path).map_err(io)?;
                if free < len.saturating_add(margin) {
                    return Err(ReceiveError::NoRoom {
                        received,
                        free,
                        needed: left.saturating_add(margin),
                    });
                }
                // Only this task writes it: a poisoned lock still holds it.
                let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
                file.write_all(&data).map_err(io)
            })
            .await??;
        self.received = after;
        Ok(())
    }

    /// The whole snapshot, in its staging file, for [`super::install`]
    /// (which fsyncs it). Every chunk was written by the time its
    /// [`Receiving::append`] returned: a disk file buffers nothing.
    ///
    /// # Errors
    /// Fewer bytes arrived than announced.
    pub fn finish(self) -> Result<Staged, ReceiveError> {
        if self.received != self.announced {
            return Err(ReceiveError::Size {
                announced: self.announced,
                received: self.received,
            });
        }
        Ok(self.staged)
    }
}

/// A received snapshot's staging file: removed when this drops, unless
/// [`super::install`] renamed it into place first.
#[derive(Debug)]
pub struct Staged {
    disk: Arc<dyn Disk>,
    path: PathBuf,
}

impl Staged {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = self.disk.remove_file(&self.path);
    }
}
