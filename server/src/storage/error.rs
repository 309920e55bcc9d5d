//! The storage layer's error type: every failure names the file it concerns,
//! and corruption names the byte offset too.

use std::io;
use std::path::PathBuf;

use semikv_protocol::LogIndex;

/// Everything that can go wrong reading or writing the data directory.
///
/// `Corrupt` and `Poisoned` are fatal for the replica: the caller must stop
/// rather than serve data it cannot vouch for.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed (disk full, EIO, permissions, ...).
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file holds bytes that are not what this code wrote, somewhere a
    /// crash cannot explain. Nothing was guessed or dropped.
    #[error("{} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record (or of the file's start).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fsync failed, so what the page cache holds is
    /// unknown; the log refuses every further call.
    #[error("the write-ahead log is poisoned by an earlier write or fsync failure")]
    Poisoned,
    /// An entry was appended whose index does not follow the log's last one.
    /// Nothing was written.
    #[error("entry {got} appended where entry {expected} was expected")]
    OutOfOrder {
        /// The index the log expected next.
        expected: LogIndex,
        /// The index it was given.
        got: LogIndex,
    },
    /// A record could not be encoded (e.g. it exceeds the record limit).
    /// Nothing was written.
    #[error("record does not encode: {reason}")]
    Unencodable {
        /// Why.
        reason: String,
    },
    /// This replica stopped earlier because its log diverged from its
    /// leader's ([`super::meta::mark_diverged`]); it will not start on that
    /// log again.
    #[error(
        "{} says this replica's log diverged from its leader's ({reason}); it will not \
         serve that log again: keep the data directory for inspection, then wipe it \
         and start the replica to rejoin with a full copy",
        path.display()
    )]
    Diverged {
        /// The marker file.
        path: PathBuf,
        /// What was found, as recorded.
        reason: String,
    },
}

impl StorageError {
    /// Whether this is the disk (or the user's quota) running out of space:
    /// a condition that passes when space is freed, unlike a failing disk.
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => is_no_space(source),
            _ => false,
        }
    }
}

/// Whether `e` says the file system has no room left (ENOSPC, or EDQUOT:
/// the user's quota, which passes the same way).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Builds a `map_err` closure that wraps an `io::Error` with `op` and `path`.
pub(super) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { op, path, source }
}
