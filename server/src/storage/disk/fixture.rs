//! Storage tests run twice through this fixture: on the real file system
//! (a temp dir) and on a [`SimDisk`], with the file look-ups tests make
//! going through the disk under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Access, Disk, OsDisk, SimDisk};
use crate::storage::DataDir;

/// One disk under test, with a fresh root directory on it.
#[derive(Debug)]
pub(crate) struct Fixture {
    /// The disk under test, as the process under test holds it: replaced
    /// by a fresh handle when the simulated disk crashes.
    disk: RefCell<Arc<dyn Disk>>,
    /// The simulated disk, if it is one: the test's own handle, which
    /// stays live through crashes.
    pub(crate) sim: Option<SimDisk>,
    root: PathBuf,
    made: Cell<u32>,
    /// Removes the real directory when the test ends.
    _temp: Option<tempfile::TempDir>,
}

/// Runs `test` on the real file system, then on a simulated disk. The disk
/// is printed first, so a failure says which one failed.
pub(crate) fn each_disk(mut test: impl FnMut(&Fixture)) {
    for fixture in [Fixture::os(), Fixture::sim()] {
        eprintln!("--- on {}", fixture.name());
        test(&fixture);
    }
}

impl Fixture {
    /// A temp dir on the real file system.
    pub(crate) fn os() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        Fixture {
            disk: RefCell::new(Arc::new(OsDisk)),
            sim: None,
            root: temp.path().to_path_buf(),
            made: Cell::new(0),
            _temp: Some(temp),
        }
    }

    /// A fresh simulated disk whose root directory is already durable, as
    /// a mount point is.
    pub(crate) fn sim() -> Fixture {
        let sim = SimDisk::new();
        let root = PathBuf::from("/test");
        sim.create_dir_all(&root).unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        Fixture {
            disk: RefCell::new(Arc::new(sim.clone())),
            sim: Some(sim),
            root,
            made: Cell::new(0),
            _temp: None,
        }
    }

    /// "os" or "sim".
    pub(crate) fn name(&self) -> &'static str {
        if self.sim.is_some() {
            "sim"
        } else {
            "os"
        }
    }

    /// The disk under test.
    pub(crate) fn disk(&self) -> Arc<dyn Disk> {
        self.disk.borrow().clone()
    }

    /// Crashes the simulated disk (see [`SimDisk::crash`]): every handle
    /// [`Fixture::disk`] gave out before is dead, later ones are live.
    pub(crate) fn crash(&self, seed: u64) {
        let sim = self.sim_disk();
        sim.crash(seed);
        *self.disk.borrow_mut() = Arc::new(sim.clone());
    }

    /// The simulated disk; panics on the real one (for tests of crashes,
    /// which only it can do).
    pub(crate) fn sim_disk(&self) -> &SimDisk {
        self.sim.as_ref().expect("a simulated disk")
    }

    /// A path under the fixture's root, not created.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A new empty directory, durable.
    pub(crate) fn dir(&self) -> PathBuf {
        let n = self.made.get() + 1;
        self.made.set(n);
        let dir = self.root.join(format!("d{n}"));
        self.disk().create_dir_all(&dir).unwrap();
        self.disk().sync_dir(&self.root).unwrap();
        dir
    }

    /// A new empty data directory, durable.
    pub(crate) fn data_dir(&self) -> DataDir {
        self.at(self.dir())
    }

    /// `path` on the disk under test, as a data directory.
    pub(crate) fn at(&self, path: impl Into<PathBuf>) -> DataDir {
        DataDir::new(self.disk().clone(), path)
    }

    pub(crate) fn read(&self, path: &Path) -> Vec<u8> {
        self.disk().read(path).unwrap()
    }

    /// Replaces the contents of `path` (created if missing), synced.
    pub(crate) fn write(&self, path: &Path, bytes: &[u8]) {
        let mut file = self.disk().open(path, Access::Create).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
    }

    pub(crate) fn len(&self, path: &Path) -> u64 {
        self.disk()
            .open(path, Access::Read)
            .unwrap()
            .size()
            .unwrap()
    }

    pub(crate) fn exists(&self, path: &Path) -> bool {
        self.disk().read(path).is_ok() || self.is_dir(path)
    }

    pub(crate) fn is_dir(&self, path: &Path) -> bool {
        self.disk().read_dir(path).is_ok()
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) {
        self.disk().rename(from, to).unwrap();
    }

    pub(crate) fn remove(&self, path: &Path) {
        self.disk().remove_file(path).unwrap();
    }

    /// Every entry of `dir`, as paths, sorted.
    pub(crate) fn files(&self, dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = self
            .disk()
            .read_dir(dir)
            .unwrap()
            .into_iter()
            .map(|name| dir.join(name))
            .collect();
        files.sort();
        files
    }
}
