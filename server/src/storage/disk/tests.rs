//! Tests of the simulated disk itself: what a crash keeps, what it may
//! drop, dead handles, capacity and failing fsyncs, determinism. (Storage's
//! own tests run on both disks through [`super::fixture`].)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::{Access, Disk, SimDisk};
use crate::storage::error::is_no_space;

/// Seeds every crash test tries.
const SEEDS: u64 = 200;

/// A disk with `/d` durably created.
fn disk() -> (SimDisk, PathBuf) {
    let disk = SimDisk::new();
    let dir = PathBuf::from("/d");
    disk.create_dir_all(&dir).unwrap();
    disk.sync_dir(Path::new("/")).unwrap();
    (disk, dir)
}

/// Appends to `path`, creating it if missing.
fn append(disk: &SimDisk, path: &Path, bytes: &[u8]) {
    let mut file = match disk.open(path, Access::Append) {
        Err(e) if e.kind() == ErrorKind::NotFound => disk.open(path, Access::AppendNew),
        opened => opened,
    }
    .unwrap();
    file.write_all(bytes).unwrap();
}

/// `path`'s bytes, `None` if it is missing.
fn read(disk: &SimDisk, path: &Path) -> Option<Vec<u8>> {
    match disk.read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// Runs `history` on a fresh disk, crashes it with each seed and returns
/// what `look` finds after each, in seed order.
fn outcomes<T>(history: impl Fn(&SimDisk, &Path), look: impl Fn(&SimDisk, &Path) -> T) -> Vec<T> {
    (0..SEEDS)
        .map(|seed| {
            let (disk, dir) = disk();
            history(&disk, &dir);
            disk.crash(seed);
            look(&disk, &dir)
        })
        .collect()
}

#[test]
fn a_crash_keeps_synced_bytes_and_a_prefix_of_the_rest() {
    let synced = b"synced record|";
    let unsynced: Vec<u8> = (1u8..=60).collect();
    let found = outcomes(
        |disk, dir| {
            let path = dir.join("f");
            let mut file = disk.open(&path, Access::AppendNew).unwrap();
            file.write_all(synced).unwrap();
            file.sync_data().unwrap();
            disk.sync_dir(dir).unwrap();
            file.write_all(&unsynced[..20]).unwrap();
            file.write_all(&unsynced[20..]).unwrap();
        },
        |disk, dir| read(disk, &dir.join("f")).unwrap(),
    );
    let mut kinds = BTreeSet::new();
    for bytes in &found {
        assert!(bytes.starts_with(synced), "{bytes:?}");
        let rest = &bytes[synced.len()..];
        // Written bytes in order, then perhaps zeros where a torn write's
        // length got out before its data.
        let written = rest
            .iter()
            .zip(&unsynced)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(rest[written..].iter().all(|&b| b == 0), "{rest:?}");
        assert!(rest.len() <= unsynced.len());
        kinds.insert(match (written, rest.len()) {
            (0, 0) => "nothing",
            (20, 20) => "first write",
            (60, 60) => "both writes",
            (w, l) if w < l => "torn, zero-filled",
            _ => "torn",
        });
    }
    // Over many seeds, every kind of outcome shows up.
    assert_eq!(kinds.len(), 5, "{kinds:?}");
}

#[test]
fn a_new_file_needs_its_directory_synced_to_survive() {
    let history = |disk: &SimDisk, dir: &Path| {
        let mut file = disk.open(&dir.join("f"), Access::Create).unwrap();
        file.write_all(b"data").unwrap();
        file.sync_all().unwrap();
    };
    let found = outcomes(history, |disk, dir| read(disk, &dir.join("f")));
    assert!(found.contains(&None));
    assert!(found.contains(&Some(b"data".to_vec())));
    let found = outcomes(
        |disk, dir| {
            history(disk, dir);
            disk.sync_dir(dir).unwrap();
        },
        |disk, dir| read(disk, &dir.join("f")),
    );
    assert!(found.iter().all(|f| f.as_deref() == Some(&b"data"[..])));
}

#[test]
fn a_rename_not_followed_by_a_directory_sync_can_be_undone() {
    let history = |disk: &SimDisk, dir: &Path| {
        for (name, bytes) in [("old", b"old"), ("tmp", b"new")] {
            let mut file = disk.open(&dir.join(name), Access::Create).unwrap();
            file.write_all(bytes).unwrap();
            file.sync_all().unwrap();
        }
        disk.sync_dir(dir).unwrap();
        disk.rename(&dir.join("tmp"), &dir.join("old")).unwrap();
    };
    let look = |disk: &SimDisk, dir: &Path| {
        (
            read(disk, &dir.join("old")).unwrap(),
            read(disk, &dir.join("tmp")),
        )
    };
    let found = outcomes(history, look);
    // Atomic either way: the old name holds the old or the new file, and
    // the temp name is gone exactly when it holds the new one.
    for (old, tmp) in &found {
        match &old[..] {
            b"old" => assert_eq!(tmp.as_deref(), Some(&b"new"[..])),
            b"new" => assert_eq!(tmp, &None),
            other => panic!("{other:?}"),
        }
    }
    assert!(found.iter().any(|(old, _)| old == b"old"), "never undone");
    assert!(found.iter().any(|(old, _)| old == b"new"), "never kept");
    let found = outcomes(
        |disk, dir| {
            history(disk, dir);
            disk.sync_dir(dir).unwrap();
        },
        look,
    );
    assert!(found
        .iter()
        .all(|(old, tmp)| old == b"new" && tmp.is_none()));
}

#[test]
fn a_directory_whose_creation_was_not_synced_can_vanish_with_its_files() {
    let found = outcomes(
        |disk, dir| {
            let sub = dir.join("sub");
            disk.create_dir_all(&sub).unwrap();
            let mut file = disk.open(&sub.join("f"), Access::Create).unwrap();
            file.write_all(b"x").unwrap();
            file.sync_all().unwrap();
            disk.sync_dir(&sub).unwrap();
        },
        |disk, dir| disk.read_dir(&dir.join("sub")).is_ok(),
    );
    // Syncing `sub` committed its own creation too (the journal is
    // committed in order) so it survives; its parent was never synced,
    // which only matters with nothing after it.
    assert!(found.iter().all(|&kept| kept));
    let found = outcomes(
        |disk, dir| disk.create_dir_all(&dir.join("a/b")).unwrap(),
        |disk, dir| {
            (
                disk.read_dir(&dir.join("a")).is_ok(),
                disk.read_dir(&dir.join("a/b")).is_ok(),
            )
        },
    );
    let kinds: BTreeSet<_> = found.into_iter().collect();
    assert_eq!(
        kinds,
        BTreeSet::from([(false, false), (true, false), (true, true)])
    );
}

#[test]
fn handles_from_before_a_crash_are_dead() {
    let (disk, dir) = disk();
    let path = dir.join("f");
    let mut file = disk.open(&path, Access::AppendNew).unwrap();
    file.write_all(b"a").unwrap();
    file.sync_all().unwrap();
    disk.sync_dir(&dir).unwrap();
    let process = disk.clone();
    disk.crash(7);
    let dead = |e: std::io::Error| assert_eq!(e.raw_os_error(), Some(5), "{e}");
    dead(file.write_all(b"b").unwrap_err());
    dead(file.sync_all().unwrap_err());
    dead(process.read(&path).unwrap_err());
    dead(process.remove_file(&path).unwrap_err());
    drop(file);
    assert_eq!(disk.read(&path).unwrap(), b"a");
    // A clone made after the crash is the restarted process's.
    append(&disk.clone(), &path, b"c");
    assert_eq!(disk.read(&path).unwrap(), b"ac");
}

#[test]
fn capacity_fills_what_fits_then_says_no_space() {
    let (disk, dir) = disk();
    let path = dir.join("f");
    append(&disk, &dir.join("other"), &[1; 30]);
    disk.set_capacity(Some(40));
    let space = disk.space(&dir).unwrap();
    assert_eq!((space.free, space.total), (10, 40));
    let mut file = disk.open(&path, Access::Create).unwrap();
    assert_eq!(file.write(&[2; 25]).unwrap(), 10);
    let err = file.write(&[2; 15]).unwrap_err();
    assert!(is_no_space(&err), "{err}");
    assert_eq!(err.raw_os_error(), Some(28));
    assert!(is_no_space(&file.set_len(11).unwrap_err()));
    // Shrinking frees room.
    file.set_len(4).unwrap();
    assert_eq!(disk.space(&dir).unwrap().free, 6);
    assert_eq!(disk.used_bytes(), 34);
    disk.set_capacity(None);
    file.write_all(&[3; 100]).unwrap();
}

#[test]
fn a_failed_fsync_loses_what_it_covered_for_good() {
    let found = outcomes(
        |disk, dir| {
            let path = dir.join("f");
            let mut file = disk.open(&path, Access::AppendNew).unwrap();
            file.sync_all().unwrap();
            disk.sync_dir(dir).unwrap();
            file.write_all(b"lost").unwrap();
            disk.fail_next_syncs(1);
            assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(5));
            // Reads still see it, and a later sync succeeds...
            assert_eq!(disk.read(&path).unwrap(), b"lost");
            file.write_all(b"+kept").unwrap();
            file.sync_data().unwrap();
        },
        |disk, dir| read(disk, &dir.join("f")).unwrap(),
    );
    // ...but what the failed one covered is gone (zeros, as a hole).
    assert!(found.iter().all(|f| f == b"\0\0\0\0+kept"), "{found:?}");
}

#[test]
fn an_unlinked_file_stays_readable_while_open() {
    let (disk, dir) = disk();
    let path = dir.join("f");
    let mut writer = disk.open(&path, Access::Create).unwrap();
    writer.write_all(b"snapshot").unwrap();
    let mut reader = disk.open(&path, Access::Read).unwrap();
    disk.remove_file(&path).unwrap();
    assert_eq!(disk.read(&path).unwrap_err().kind(), ErrorKind::NotFound);
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, b"snapshot");
    assert_eq!(disk.used_bytes(), 8);
    drop((reader, writer));
    // Until the removal is committed a crash could bring the file back,
    // so its bytes stay.
    assert_eq!(disk.used_bytes(), 8);
    disk.sync_dir(&dir).unwrap();
    assert_eq!(disk.used_bytes(), 0);
}

#[test]
fn errors_are_the_operating_systems() {
    let (disk, dir) = disk();
    let path = dir.join("f");
    let kind = |r: std::io::Result<Box<dyn super::DiskFile>>| r.unwrap_err().kind();
    assert_eq!(kind(disk.open(&path, Access::Read)), ErrorKind::NotFound);
    assert_eq!(kind(disk.open(&path, Access::Append)), ErrorKind::NotFound);
    disk.open(&path, Access::AppendNew).unwrap();
    assert_eq!(
        kind(disk.open(&path, Access::AppendNew)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(disk.open(&dir.join("none/f"), Access::Create)),
        ErrorKind::NotFound
    );
    let mut reader = disk.open(&path, Access::Read).unwrap();
    assert_eq!(reader.write(b"x").unwrap_err().raw_os_error(), Some(9));
    assert_eq!(
        disk.remove_file(&dir.join("none")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        disk.read_dir(&dir.join("none")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        disk.read_dir(&path).unwrap_err().kind(),
        ErrorKind::NotADirectory
    );
    assert_eq!(disk.read_dir(&dir).unwrap(), vec!["f"]);
}

#[test]
fn the_same_seed_on_the_same_history_keeps_the_same_bytes() {
    let run = |seed: u64| {
        let (disk, dir) = disk();
        for i in 0..20u8 {
            let path = dir.join(format!("f{}", i % 3));
            append(&disk, &path, &[i; 7]);
            if i % 4 == 0 {
                disk.open(&path, Access::Read).unwrap().sync_all().unwrap();
            }
            if i % 5 == 0 {
                disk.sync_dir(&dir).unwrap();
            }
        }
        disk.crash(seed);
        let mut state = Vec::new();
        for name in disk.read_dir(&dir).unwrap() {
            state.push((name.clone(), disk.read(&dir.join(name)).unwrap()));
        }
        state
    };
    for seed in 0..50 {
        assert_eq!(run(seed), run(seed), "seed {seed}");
    }
    assert_ne!((0..50).map(run).collect::<BTreeSet<_>>().len(), 1);
}
