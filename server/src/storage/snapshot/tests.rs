//! The snapshot tests: round trips, replacement of older files, refusal of
//! damaged files, and every check `install` makes before touching the disk;
//! each on the real file system and on the simulated disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use semikv_protocol::blocking::Blocking;
use semikv_protocol::UnixMillis;

use super::*;
use crate::storage::disk::fixture::{each_disk, Fixture};
use crate::storage::store::Store;
use crate::storage::{DataDir, StorageError, SNAPSHOT_DIR};

/// Installs `bytes` as a follower does: staged in a file first (in a dir
/// of its own beside the data dir, on the same disk, so the data dir holds
/// nothing of it unless it is installed).
fn install_bytes(
    fx: &Fixture,
    data_dir: &DataDir,
    bytes: &[u8],
    announced: &SnapshotMeta,
    floor: LogIndex,
) -> Result<(SnapshotMeta, Store), InstallError> {
    let staged = fx.dir().join("receiving.tmp");
    fx.write(&staged, bytes);
    install(data_dir, &staged, announced, floor)
}

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

fn snap_files(fx: &Fixture, data: &DataDir) -> Vec<String> {
    fx.files(&data.join(SNAPSHOT_DIR))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn write_load_read_install_round_trip() {
    each_disk(|fx| {
        let a = fx.data_dir();
        assert!(load_latest(&a).unwrap().is_none());
        assert!(read_latest(&a).unwrap().is_none());
        let s = store(3000);
        let path = write(&a, &meta(10), &s).unwrap();
        assert!(path.ends_with("snap-00000000000000000010.bin"));
        let (m, loaded) = load_latest(&a).unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(sorted(&loaded), sorted(&s));

        let (m, bytes) = read_latest(&a).unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert!(bytes.len() > 2 * CHUNK_BYTES, "expected several chunks");

        let b = fx.data_dir();
        let (m, installed) = install_bytes(fx, &b, &bytes, &meta(10), LogIndex(0)).unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(sorted(&installed), sorted(&s));
        let (m, reloaded) = load_latest(&b).unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(sorted(&reloaded), sorted(&s));
    });
}

#[test]
fn empty_store_round_trips() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        write(&dir, &meta(0), &Store::default()).unwrap();
        let (m, s) = load_latest(&dir).unwrap().unwrap();
        assert_eq!(m, meta(0));
        assert!(s.is_empty());
    });
}

#[test]
fn newer_snapshot_replaces_older_ones() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        write(&dir, &meta(5), &store(3)).unwrap();
        write(&dir, &meta(9), &store(4)).unwrap();
        assert_eq!(snap_files(fx, &dir), vec!["snap-00000000000000000009.bin"]);
        assert_eq!(load_latest(&dir).unwrap().unwrap().1.len(), 4);
        // A leader's newer snapshot replaces it and prunes it.
        let other = fx.data_dir();
        write(&other, &meta(12), &store(2)).unwrap();
        let (_, bytes) = read_latest(&other).unwrap().unwrap();
        install_bytes(fx, &dir, &bytes, &meta(12), LogIndex(12)).unwrap();
        assert_eq!(snap_files(fx, &dir), vec!["snap-00000000000000000012.bin"]);
        assert_eq!(load_latest(&dir).unwrap().unwrap().1.len(), 2);
    });
}

#[test]
fn corrupt_or_truncated_snapshot_is_refused() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        let path = write(&dir, &meta(4), &store(40)).unwrap();
        let good = fx.read(&path);
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
            fx.write(&path, bytes);
            let err = load_latest(&dir).unwrap_err();
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
            assert!(
                err.to_string().contains("snap-00000000000000000004.bin"),
                "{err}"
            );
            assert!(matches!(
                read_latest(&dir),
                Err(StorageError::Corrupt { .. })
            ));
        }
        // A file renamed to the wrong index is refused too.
        fx.write(&path, &good);
        fx.rename(
            &path,
            &dir.join(SNAPSHOT_DIR).join("snap-00000000000000000005.bin"),
        );
        assert!(matches!(
            load_latest(&dir),
            Err(StorageError::Corrupt { .. })
        ));
    });
}

#[test]
fn install_refuses_bad_bytes_without_touching_the_current_snapshot() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        let current = write(&dir, &meta(3), &store(5)).unwrap();
        let before = fx.read(&current);
        let src = fx.data_dir();
        write(&src, &meta(20), &store(50)).unwrap();
        let (_, good) = read_latest(&src).unwrap().unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        for bad in [good[..good.len() - 1].to_vec(), flipped, Vec::new()] {
            let err = install_bytes(fx, &dir, &bad, &meta(20), LogIndex(3)).unwrap_err();
            assert!(
                matches!(err, InstallError::Invalid(StorageError::Corrupt { .. })),
                "{err}"
            );
            assert_eq!(snap_files(fx, &dir), vec!["snap-00000000000000000003.bin"]);
            assert_eq!(fx.read(&current), before);
        }
    });
}

/// Every file under `dir` with its contents, by relative path.
fn tree(fx: &Fixture, dir: &DataDir) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(fx: &Fixture, root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for path in fx.files(dir) {
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if fx.is_dir(&path) {
                out.push((relative, Vec::new()));
                walk(fx, root, &path, out);
            } else {
                out.push((relative, fx.read(&path)));
            }
        }
    }
    let mut out = Vec::new();
    walk(fx, dir.path(), dir.path(), &mut out);
    out.sort();
    out
}

/// Bytes of a valid snapshot of `meta` holding `n` pairs.
fn snapshot_bytes(fx: &Fixture, meta: &SnapshotMeta, n: usize) -> Vec<u8> {
    let src = fx.data_dir();
    write(&src, meta, &store(n)).unwrap();
    read_latest(&src).unwrap().unwrap().1
}

#[test]
fn install_refuses_a_snapshot_unlike_its_announcement_and_touches_nothing() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        write(&dir, &meta(3), &store(5)).unwrap();
        let before = tree(fx, &dir);
        let holds_50 = snapshot_bytes(fx, &meta(50), 20);
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
                snapshot_bytes(fx, &meta(60), 20),
            ),
            (
                "epoch history",
                other_history.clone(),
                snapshot_bytes(fx, &meta(60), 20),
            ),
            ("last epoch", meta(60), snapshot_bytes(fx, &other_epoch, 20)),
        ];
        for (field, announced, bytes) in cases {
            let err = install_bytes(fx, &dir, &bytes, &announced, LogIndex(3)).unwrap_err();
            assert!(
                matches!(err, InstallError::Mismatch { field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert_eq!(tree(fx, &dir), before, "{field}: data dir changed");
        }
        // Into an empty data dir, nothing is even created.
        let empty = fx.data_dir();
        let err = install_bytes(fx, &empty, &holds_50, &meta(60), LogIndex(0)).unwrap_err();
        assert!(matches!(err, InstallError::Mismatch { .. }), "{err}");
        assert!(tree(fx, &empty).is_empty());
        // The current snapshot still loads as it was.
        let (m, s) = load_latest(&dir).unwrap().unwrap();
        assert_eq!(m, meta(3));
        assert_eq!(sorted(&s), sorted(&store(5)));
    });
}

#[test]
fn install_refuses_a_snapshot_below_the_commit_index_or_current_snapshot() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        write(&dir, &meta(9), &store(4)).unwrap();
        let before = tree(fx, &dir);
        // Below the caller's commit index.
        let bytes = snapshot_bytes(fx, &meta(12), 2);
        let err = install_bytes(fx, &dir, &bytes, &meta(12), LogIndex(13)).unwrap_err();
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
        assert_eq!(tree(fx, &dir), before);
        // Below the snapshot already on disk, even with a lax floor.
        let bytes = snapshot_bytes(fx, &meta(7), 2);
        let err = install_bytes(fx, &dir, &bytes, &meta(7), LogIndex(0)).unwrap_err();
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
        assert_eq!(tree(fx, &dir), before);
        // At exactly the commit index it installs.
        let bytes = snapshot_bytes(fx, &meta(13), 2);
        install_bytes(fx, &dir, &bytes, &meta(13), LogIndex(13)).unwrap();
        assert_eq!(snap_files(fx, &dir), vec!["snap-00000000000000000013.bin"]);
    });
}

/// Loads `hex` as the snapshot file `name` of a fresh data directory.
fn load_frozen(fx: &Fixture, name: &std::ffi::OsStr, hex: &str) -> (SnapshotMeta, Store) {
    let frozen: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let old = fx.data_dir();
    let snapshots = &old.join(SNAPSHOT_DIR);
    fx.disk().create_dir_all(snapshots).unwrap();
    fx.write(&snapshots.join(name), &frozen);
    load_latest(&old).unwrap().unwrap()
}

/// Frozen bytes of a whole snapshot file (header, one pairs record, one
/// expiries record, end): a change here means existing snapshots no
/// longer load, which needs a snapshot format version bump.
#[test]
fn golden_snapshot_bytes() {
    each_disk(|fx| {
        const GOLDEN: &str = "0000001196bd52e50073656d696b76535302070202010102040000000b3356b79a\
                              010201610131016b0200ff0000000ae03070c30301016b80d095ffbc31\
                              000000029de111510202";
        let dir = fx.data_dir();
        let pairs: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"k", &[0x00, 0xff])];
        let expiries: [(&[u8], UnixMillis); 1] = [(b"k", UnixMillis(1_700_000_000_000))];
        let path = write_pairs(
            &dir,
            &meta(7),
            pairs.iter().copied(),
            expiries.iter().copied(),
        )
        .unwrap();
        let bytes = fx.read(&path);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN, "the snapshot format changed");
        // A file holding the frozen bytes loads back to that snapshot.
        let (m, s) = load_frozen(fx, path.file_name().unwrap(), GOLDEN);
        assert_eq!(m, meta(7));
        assert_eq!(s.get(b"a"), Some(Bytes::from_static(b"1")));
        assert_eq!(s.get(b"k"), Some(Bytes::from_static(&[0x00, 0xff])));
        assert_eq!(s.expiry(b"a"), None);
        assert_eq!(s.expiry(b"k"), Some(UnixMillis(1_700_000_000_000)));
        assert_eq!(s.len(), 2);
    });
}

/// A snapshot of format version 1 (before expiries: header, one pairs
/// record, end), as written until protocol 5, still loads.
#[test]
fn version_1_snapshots_still_load() {
    each_disk(|fx| {
        const VERSION_1: &str =
            "00000011183255060073656d696b76535301070202010102040000000b3356b79a\
                          010201610131016b0200ff000000029de111510202";
        let (m, s) = load_frozen(
            fx,
            std::ffi::OsStr::new("snap-00000000000000000007.bin"),
            VERSION_1,
        );
        assert_eq!(m, meta(7));
        assert_eq!(s.get(b"a"), Some(Bytes::from_static(b"1")));
        assert_eq!(s.get(b"k"), Some(Bytes::from_static(&[0x00, 0xff])));
        assert!(!s.has_expiries());
        assert_eq!(s.len(), 2);
    });
}

/// Expiries round-trip through a snapshot of a store, and an expiry for a
/// key the file never gave a value is corruption.
#[test]
fn expiries_round_trip_and_orphans_are_refused() {
    each_disk(|fx| {
        let dir = fx.data_dir();
        let mut s = Store::default();
        s.apply(&semikv_protocol::WriteOp::Batch(vec![
            semikv_protocol::Mutation {
                key: Bytes::from_static(b"ttl"),
                value: Some(Bytes::from_static(b"v")),
                expires_at: Some(UnixMillis(99)),
            },
            semikv_protocol::Mutation {
                key: Bytes::from_static(b"plain"),
                value: Some(Bytes::from_static(b"w")),
                expires_at: None,
            },
        ]));
        write(&dir, &meta(3), &s).unwrap();
        let (_, back) = load_latest(&dir).unwrap().unwrap();
        assert_eq!(back.expiry(b"ttl"), Some(UnixMillis(99)));
        assert_eq!(back.expiry(b"plain"), None);
        assert_eq!(back.bytes(), s.bytes());
        let other = fx.data_dir();
        let pairs: [(&[u8], &[u8]); 1] = [(b"a", b"1")];
        let expiries: [(&[u8], UnixMillis); 1] = [(b"b", UnixMillis(5))];
        write_pairs(
            &other,
            &meta(4),
            pairs.iter().copied(),
            expiries.iter().copied(),
        )
        .unwrap();
        let err = load_latest(&other).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    });
}

/// A leader's snapshot is refused before a byte is staged when the disk
/// cannot hold it and keep its margin, and at the chunk that would eat
/// into the margin; nothing staged is left behind.
#[tokio::test]
async fn receiving_on_a_full_simulated_disk_is_refused() {
    let fx = Fixture::sim();
    let sim = fx.sim_disk();
    let data = fx.data_dir();
    // A 2000-byte disk keeps a margin of a twentieth: 100 bytes.
    sim.set_capacity(Some(2000));
    let used = sim.used_bytes();
    let too_big = 2000 - used - 100 + 1;
    let err = Receiving::start(&data, too_big, Blocking::Inline)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReceiveError::NoRoom { received: 0, .. }),
        "{err}"
    );
    assert!(fx.files(&data.join(SNAPSHOT_DIR)).is_empty());

    let mut receiving = Receiving::start(&data, 1000, Blocking::Inline)
        .await
        .unwrap();
    receiving
        .append(0, Bytes::from(vec![7; 600]))
        .await
        .unwrap();
    // Another file grows meanwhile: the next chunk no longer fits.
    fx.write(&fx.path("other"), &[1; 1000]);
    let err = receiving
        .append(600, Bytes::from(vec![7; 400]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReceiveError::NoRoom { received: 600, .. }),
        "{err}"
    );
    drop(receiving);
    assert!(
        fx.files(&data.join(SNAPSHOT_DIR)).is_empty(),
        "staging file left"
    );
}
