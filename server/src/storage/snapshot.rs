//! Snapshots: the whole map at a log index, in one checksummed file.
//!
//! ```text
//! <data_dir>/snapshot/snap-<last index, 20 digits>.bin
//! frame(Header { magic, version, meta })
//! frame(Pairs([(key, value), ...]))      zero or more, ~1 MiB each
//! frame(End { pairs })                   total pair count; end of file
//! frame = len u32 BE | crc32 u32 BE | postcard(SnapshotRecord)
//! ```
//!
//! A snapshot is written to a temp file, fsynced, renamed into place and the
//! directory fsynced; only then are older snapshots deleted. The latest file
//! (highest index) is the current one. A snapshot that fails validation is
//! an error, never skipped: the log before it may already be compacted.

use std::fs::{self, File};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use semikv_protocol::frame::{self, Header, HEADER_LEN};
use semikv_protocol::{Epoch, EpochStart, LogIndex};
use serde::{Deserialize, Serialize};

use super::error::{io_err, StorageError};
use super::store::Store;
use super::SNAPSHOT_DIR;

/// Identifies a snapshot file.
const MAGIC: [u8; 8] = *b"semikvSS";
/// Format version; bumped on any layout change.
const VERSION: u32 = 1;
/// Pairs are flushed into a frame once it holds this many bytes.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest frame written or read. A single pair can exceed [`CHUNK_BYTES`];
/// reads are bounded by the file's size anyway.
const MAX_SNAPSHOT_FRAME: usize = 1 << 30;

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry whose effect the snapshot includes.
    pub last_index: LogIndex,
    /// That entry's epoch.
    pub last_epoch: Epoch,
    /// Where each epoch began, up to `last_index`.
    pub history: Vec<EpochStart>,
}

/// One frame of a snapshot file. Variants only ever grow at the end.
#[derive(Debug, Serialize, Deserialize)]
enum SnapshotRecord {
    Header {
        magic: [u8; 8],
        version: u32,
        meta: SnapshotMeta,
    },
    Pairs(Vec<(Bytes, Bytes)>),
    End {
        pairs: u64,
    },
}

/// Durably writes a snapshot of `pairs` at `meta.last_index` and deletes
/// older snapshots. Returns the new file's path.
///
/// # Errors
/// [`StorageError::Io`] if any write, fsync, rename or deletion fails (the
/// previous snapshot is then still in place unless the rename succeeded);
/// [`StorageError::Unencodable`] for a pair too large to frame.
pub fn write<'a>(
    data_dir: &Path,
    meta: &SnapshotMeta,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<PathBuf, StorageError> {
    let dir = data_dir.join(SNAPSHOT_DIR);
    fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
    let tmp = super::temp_path(&dir, "snap");
    if let Err(e) = write_temp(&tmp, meta, pairs) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    publish(&dir, &tmp, meta.last_index, |other| other < meta.last_index)
}

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

/// Validates a snapshot received from a leader and, only if it passes every
/// check, durably makes it the current snapshot, then deletes older ones.
/// Returns what it holds.
///
/// The checks, all made before anything in `data_dir` is created, written,
/// renamed or deleted: `bytes` decode as a whole valid snapshot; it is the
/// snapshot `announced` describes (last index, last epoch, history); and its
/// last index is at least `floor` (the caller's commit index) and at least
/// the current snapshot's, so committed state is never rolled back.
///
/// On success the new file was fsynced, renamed into place and the directory
/// fsynced before any older snapshot was deleted; the caller may reset its
/// log only after this returns.
///
/// # Errors
/// [`InstallError::Invalid`], [`InstallError::Mismatch`] or
/// [`InstallError::Stale`] if a check fails (nothing on disk was touched);
/// [`InstallError::Storage`] if listing or writing the directory fails.
pub fn install(
    data_dir: &Path,
    bytes: &[u8],
    announced: &SnapshotMeta,
    floor: LogIndex,
) -> Result<(SnapshotMeta, Store), InstallError> {
    let dir = data_dir.join(SNAPSHOT_DIR);
    // Cheap checks first: a stale announcement is refused before decoding.
    if announced.last_index < floor {
        return Err(InstallError::Stale {
            index: announced.last_index,
            floor,
        });
    }
    let mut store = Store::default();
    let meta = decode(&dir.join("(received)"), bytes, |k, v| store.insert(k, v))
        .map_err(InstallError::Invalid)?;
    check_announced(announced, &meta)?;
    // Only reads the directory. The current snapshot is at most the commit
    // index, but this does not rely on the caller's floor being right.
    if let Some((_, current)) = latest(&dir)? {
        if current > meta.last_index {
            return Err(InstallError::Stale {
                index: meta.last_index,
                floor: current,
            });
        }
    }
    fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
    let tmp = super::temp_path(&dir, "snap");
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io_err("writing", &tmp));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    // Only older snapshots go: a newer one can appear only if a concurrent
    // writer raced the check above, and it then stays current, matching the
    // log compacted behind it.
    publish(&dir, &tmp, meta.last_index, |other| other < meta.last_index)?;
    Ok((meta, store))
}

fn write_temp<'a>(
    tmp: &Path,
    meta: &SnapshotMeta,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(), StorageError> {
    let file = File::create(tmp).map_err(io_err("creating", tmp))?;
    let mut out = BufWriter::new(file);
    let mut buf = BytesMut::new();
    let mut emit = |record: &SnapshotRecord, out: &mut BufWriter<File>| {
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
    emit(&SnapshotRecord::End { pairs: count }, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| io_err("writing", tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing", tmp))
}

/// Renames the fsynced `tmp` into place, fsyncs the directory, then deletes
/// the snapshots `doomed` picks.
fn publish(
    dir: &Path,
    tmp: &Path,
    index: LogIndex,
    doomed: impl Fn(LogIndex) -> bool,
) -> Result<PathBuf, StorageError> {
    let path = snapshot_path(dir, index);
    if let Err(e) = fs::rename(tmp, &path) {
        let _ = fs::remove_file(tmp);
        return Err(io_err("renaming", tmp)(e));
    }
    super::sync_dir(dir)?;
    remove_snapshots(dir, doomed)?;
    Ok(path)
}

fn remove_snapshots(dir: &Path, doomed: impl Fn(LogIndex) -> bool) -> Result<(), StorageError> {
    let mut removed = false;
    for (path, index) in list(dir)? {
        if doomed(index) {
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                // A concurrent writer may have removed it already.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
    }
    if removed {
        super::sync_dir(dir)?;
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

fn list(dir: &Path) -> Result<Vec<(PathBuf, LogIndex)>, StorageError> {
    let items = match fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    let mut found = Vec::new();
    for item in items {
        let item = item.map_err(io_err("listing", dir))?;
        if let Some(index) = item.file_name().to_str().and_then(parse_name) {
            found.push((item.path(), index));
        }
    }
    Ok(found)
}

fn latest(dir: &Path) -> Result<Option<(PathBuf, LogIndex)>, StorageError> {
    Ok(list(dir)?.into_iter().max_by_key(|(_, index)| *index))
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
fn decode(
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_index: LogIndex(index),
            last_epoch: Epoch::from_raw(2),
            history: vec![
                EpochStart {
                    epoch: Epoch::from_raw(1),
                    start: LogIndex(1),
                },
                EpochStart {
                    epoch: Epoch::from_raw(2),
                    start: LogIndex(4),
                },
            ],
        }
    }

    /// A store big enough to span several pair chunks.
    fn store(n: usize) -> Store {
        let mut s = Store::default();
        for i in 0..n {
            s.insert(
                Bytes::from(format!("key-{i}")),
                Bytes::from(vec![(i % 251) as u8; 700 + i % 13]),
            );
        }
        s
    }

    fn sorted(s: &Store) -> Vec<(Bytes, Bytes)> {
        let mut v: Vec<_> = s
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect();
        v.sort();
        v
    }

    fn snap_files(data: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(data.join(SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_load_read_install_round_trip() {
        let a = tempfile::tempdir().unwrap();
        assert!(load_latest(a.path()).unwrap().is_none());
        assert!(read_latest(a.path()).unwrap().is_none());
        let s = store(3000);
        let path = write(a.path(), &meta(10), s.iter()).unwrap();
        assert!(path.ends_with("snap-00000000000000000010.bin"));
        let (m, loaded) = load_latest(a.path()).unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(sorted(&loaded), sorted(&s));

        let (m, bytes) = read_latest(a.path()).unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert!(bytes.len() > 2 * CHUNK_BYTES, "expected several chunks");

        let b = tempfile::tempdir().unwrap();
        let (m, installed) = install(b.path(), &bytes, &meta(10), LogIndex(0)).unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(sorted(&installed), sorted(&s));
        let (m, reloaded) = load_latest(b.path()).unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(sorted(&reloaded), sorted(&s));
    }

    #[test]
    fn empty_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &meta(0), Store::default().iter()).unwrap();
        let (m, s) = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(m, meta(0));
        assert!(s.is_empty());
    }

    #[test]
    fn newer_snapshot_replaces_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &meta(5), store(3).iter()).unwrap();
        write(dir.path(), &meta(9), store(4).iter()).unwrap();
        assert_eq!(
            snap_files(dir.path()),
            vec!["snap-00000000000000000009.bin"]
        );
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().1.len(), 4);
        // A leader's newer snapshot replaces it and prunes it.
        let other = tempfile::tempdir().unwrap();
        write(other.path(), &meta(12), store(2).iter()).unwrap();
        let (_, bytes) = read_latest(other.path()).unwrap().unwrap();
        install(dir.path(), &bytes, &meta(12), LogIndex(12)).unwrap();
        assert_eq!(
            snap_files(dir.path()),
            vec!["snap-00000000000000000012.bin"]
        );
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().1.len(), 2);
    }

    #[test]
    fn corrupt_or_truncated_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &meta(4), store(40).iter()).unwrap();
        let good = fs::read(&path).unwrap();
        let mut damaged = Vec::new();
        for cut in [0, 1, 7, 8, 9, good.len() / 2, good.len() - 1] {
            damaged.push(good[..cut].to_vec());
        }
        for at in [0, 5, 9, good.len() / 3, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x20;
            damaged.push(b);
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&good[..20]);
        damaged.push(longer);
        for bytes in &damaged {
            fs::write(&path, bytes).unwrap();
            let err = load_latest(dir.path()).unwrap_err();
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
            assert!(
                err.to_string().contains("snap-00000000000000000004.bin"),
                "{err}"
            );
            assert!(matches!(
                read_latest(dir.path()),
                Err(StorageError::Corrupt { .. })
            ));
        }
        // A file renamed to the wrong index is refused too.
        fs::write(&path, &good).unwrap();
        fs::rename(
            &path,
            dir.path()
                .join(SNAPSHOT_DIR)
                .join("snap-00000000000000000005.bin"),
        )
        .unwrap();
        assert!(matches!(
            load_latest(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn install_refuses_bad_bytes_without_touching_the_current_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let current = write(dir.path(), &meta(3), store(5).iter()).unwrap();
        let before = fs::read(&current).unwrap();
        let src = tempfile::tempdir().unwrap();
        write(src.path(), &meta(20), store(50).iter()).unwrap();
        let (_, good) = read_latest(src.path()).unwrap().unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        for bad in [good[..good.len() - 1].to_vec(), flipped, Vec::new()] {
            let err = install(dir.path(), &bad, &meta(20), LogIndex(3)).unwrap_err();
            assert!(
                matches!(err, InstallError::Invalid(StorageError::Corrupt { .. })),
                "{err}"
            );
            assert_eq!(
                snap_files(dir.path()),
                vec!["snap-00000000000000000003.bin"]
            );
            assert_eq!(fs::read(&current).unwrap(), before);
        }
    }

    /// Every file under `dir` with its contents, by relative path.
    fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for item in fs::read_dir(dir).unwrap() {
                let path = item.unwrap().path();
                if path.is_dir() {
                    out.push((path.strip_prefix(root).unwrap().to_path_buf(), Vec::new()));
                    walk(root, &path, out);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    out.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    /// Bytes of a valid snapshot of `meta` holding `n` pairs.
    fn snapshot_bytes(meta: &SnapshotMeta, n: usize) -> Vec<u8> {
        let src = tempfile::tempdir().unwrap();
        write(src.path(), meta, store(n).iter()).unwrap();
        read_latest(src.path()).unwrap().unwrap().1
    }

    #[test]
    fn install_refuses_a_snapshot_unlike_its_announcement_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &meta(3), store(5).iter()).unwrap();
        let before = tree(dir.path());
        let holds_50 = snapshot_bytes(&meta(50), 20);
        let mut other_epoch = meta(60);
        other_epoch.last_epoch = Epoch::from_raw(7);
        let mut other_history = meta(60);
        other_history.history.pop();
        let cases = [
            ("last index", meta(60), holds_50.clone()),
            ("last index", meta(40), holds_50.clone()),
            (
                "last epoch",
                other_epoch.clone(),
                snapshot_bytes(&meta(60), 20),
            ),
            (
                "epoch history",
                other_history.clone(),
                snapshot_bytes(&meta(60), 20),
            ),
            ("last epoch", meta(60), snapshot_bytes(&other_epoch, 20)),
        ];
        for (field, announced, bytes) in cases {
            let err = install(dir.path(), &bytes, &announced, LogIndex(3)).unwrap_err();
            assert!(
                matches!(err, InstallError::Mismatch { field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert_eq!(tree(dir.path()), before, "{field}: data dir changed");
        }
        // Into an empty data dir, nothing is even created.
        let empty = tempfile::tempdir().unwrap();
        let err = install(empty.path(), &holds_50, &meta(60), LogIndex(0)).unwrap_err();
        assert!(matches!(err, InstallError::Mismatch { .. }), "{err}");
        assert!(tree(empty.path()).is_empty());
        // The current snapshot still loads as it was.
        let (m, s) = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(m, meta(3));
        assert_eq!(sorted(&s), sorted(&store(5)));
    }

    #[test]
    fn install_refuses_a_snapshot_below_the_commit_index_or_current_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &meta(9), store(4).iter()).unwrap();
        let before = tree(dir.path());
        // Below the caller's commit index.
        let bytes = snapshot_bytes(&meta(12), 2);
        let err = install(dir.path(), &bytes, &meta(12), LogIndex(13)).unwrap_err();
        assert!(
            matches!(
                err,
                InstallError::Stale {
                    index: LogIndex(12),
                    floor: LogIndex(13)
                }
            ),
            "{err}"
        );
        assert_eq!(tree(dir.path()), before);
        // Below the snapshot already on disk, even with a lax floor.
        let bytes = snapshot_bytes(&meta(7), 2);
        let err = install(dir.path(), &bytes, &meta(7), LogIndex(0)).unwrap_err();
        assert!(
            matches!(
                err,
                InstallError::Stale {
                    index: LogIndex(7),
                    floor: LogIndex(9)
                }
            ),
            "{err}"
        );
        assert_eq!(tree(dir.path()), before);
        // At exactly the commit index it installs.
        let bytes = snapshot_bytes(&meta(13), 2);
        install(dir.path(), &bytes, &meta(13), LogIndex(13)).unwrap();
        assert_eq!(
            snap_files(dir.path()),
            vec!["snap-00000000000000000013.bin"]
        );
    }
}
