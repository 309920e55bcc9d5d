//! The disk under the data directory: every file and directory operation
//! storage makes goes through [`Disk`], so the same code runs on the real
//! file system ([`OsDisk`]) and on an in-memory one whose crashes, failing
//! fsyncs and full disks a simulation controls ([`SimDisk`]).
//!
//! The contract both keep, and storage relies on: a file's bytes are durable
//! only once that file is synced ([`DiskFile::sync_data`] or
//! [`DiskFile::sync_all`]); a file's creation, renaming or removal only once
//! its directory is synced ([`Disk::sync_dir`]). Errors are `io::Error`s
//! with the operating system's codes (`ENOENT`, `ENOSPC`, `EIO`, ...), so
//! `io::ErrorKind` tests such as [`super::error::is_no_space`] mean the same
//! on both.

mod os;
mod sim;

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt::Debug;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

pub use os::OsDisk;
pub use sim::{SimDisk, UNLIMITED_BYTES};

/// An open file of some disk.
pub type OpenFile = Box<dyn DiskFile>;

/// How [`Disk::open`] opens a file; each is one `std::fs::OpenOptions`
/// combination, named for what storage does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only, from offset 0; the file must exist (`File::open`).
    Read,
    /// Write only, from offset 0, keeping the contents (for `set_len`); the
    /// file must exist.
    Write,
    /// Write only, every write at the end; the file must exist.
    Append,
    /// As [`Access::Append`], on a file this call creates: `AlreadyExists`
    /// if there is one.
    AppendNew,
    /// Write only, from offset 0, on a file created or emptied by this call
    /// (`File::create`).
    Create,
}

/// Space on the file system holding a path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// What an unprivileged user may still write.
    pub free: u64,
    /// The file system's size.
    pub total: u64,
}

/// A file system, as storage uses one. Object safe: it is carried as an
/// `Arc<dyn Disk>`. Paths are the caller's; an implementation resolves them
/// as the operating system would.
pub trait Disk: Send + Sync + Debug {
    /// Opens `path` as `access` says.
    ///
    /// # Errors
    /// `NotFound` if the file (or, creating one, its directory) is missing;
    /// `AlreadyExists` for [`Access::AppendNew`] on an existing file; any
    /// other failure of the file system.
    fn open(&self, path: &Path, access: Access) -> io::Result<OpenFile>;

    /// The whole contents of the file at `path` (`std::fs::read`).
    ///
    /// # Errors
    /// `NotFound` if it is missing; any failure to read it.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Renames the file `from` to `to`, replacing any file there, atomically
    /// for anyone who looks afterwards. Durable once both directories are
    /// synced.
    ///
    /// # Errors
    /// `NotFound` if `from` or `to`'s directory is missing; any other
    /// failure of the file system.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`. Durable once its directory is synced.
    ///
    /// # Errors
    /// `NotFound` if it is missing; any other failure of the file system.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// The names of the entries in the directory `dir`, in no promised
    /// order.
    ///
    /// # Errors
    /// `NotFound` if it is missing; any failure to list it.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;

    /// Creates `dir` and its missing parents (`std::fs::create_dir_all`).
    /// Each new directory is durable once its parent is synced.
    ///
    /// # Errors
    /// Any failure of the file system, e.g. a file in the way.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Fsyncs the directory `dir` (`File::open(dir)?.sync_all()`): the
    /// creations, renames and removals made in it so far survive a crash.
    ///
    /// # Errors
    /// `NotFound` if it is missing; the fsync failed (`EIO`), after which
    /// what the directory holds on disk is unknown.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Free and total space of the file system holding `path` (`statvfs`).
    ///
    /// # Errors
    /// `NotFound` if `path` is missing; any failure of the call.
    fn space(&self, path: &Path) -> io::Result<Space>;
}

/// An open file of a [`Disk`]: read, written and sought as a
/// `std::fs::File`, with the calls storage makes on one besides.
pub trait DiskFile: Read + Write + Seek + Send + Sync + Debug {
    /// Fsyncs the file's contents and metadata: everything written to it so
    /// far survives a crash.
    ///
    /// # Errors
    /// The fsync failed (`EIO`). What was written since the last successful
    /// one may then be lost even though reads still return it; never retry
    /// and trust it.
    fn sync_all(&self) -> io::Result<()>;

    /// As [`DiskFile::sync_all`], but metadata a read does not need (times)
    /// may stay behind (`fdatasync`).
    ///
    /// # Errors
    /// As [`DiskFile::sync_all`].
    fn sync_data(&self) -> io::Result<()>;

    /// Cuts or extends the file to `len` bytes. Durable once synced.
    ///
    /// # Errors
    /// The file is not open for writing; the file system refused.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The file's length in bytes now.
    ///
    /// # Errors
    /// The file system could not say.
    fn size(&self) -> io::Result<u64>;
}
