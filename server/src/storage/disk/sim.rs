//! An in-memory disk for deterministic simulation, with the failures of a
//! real one on demand: power cuts that keep only what was synced (and an
//! arbitrary part of the rest), failing fsyncs, a full disk.
//!
//! The model: what POSIX promises for files; for directories, the in-order
//! commits of a journaling file system (ext4, XFS):
//! - A file has its current bytes (what reads see) and its durable bytes
//!   (what a crash keeps for sure), plus the changes made since its last
//!   sync, oldest first. A sync makes them durable. A crash keeps an
//!   arbitrary prefix of them, the next one possibly torn (a prefix of its
//!   bytes, and perhaps the rest of its length as zeros, as when the file
//!   size reached the disk before the data).
//! - A directory has its current entries and its durable ones. Creations,
//!   renames and removals go to one journal in the order they are made,
//!   like a journaling file system's: syncing a directory commits the
//!   journal up to its own last change (so earlier changes elsewhere commit
//!   too, and a rename between two directories is never half done); a
//!   crash commits an arbitrary prefix of the rest. A directory whose own
//!   creation was never committed is gone after a crash, with all it held.
//! - A failed fsync (see [`SimDisk::fail_next_syncs`]) returns `EIO` and,
//!   as Linux may, drops the file's unsynced changes for good: reads still
//!   return them, no later sync makes them durable.
//! - Writes past [`SimDisk::set_capacity`] write what fits and then fail
//!   with `ENOSPC`.
//! - Nothing depends on anything but the calls made and the seeds given:
//!   maps are ordered, there is no clock and no other randomness.
//!
//! Paths are absolute from the disk's root (`/`, which always exists);
//! relative ones are taken from the root too. Only files are renamed or
//! removed; directories are only ever created, as storage does.

mod file;
mod state;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;

use super::{Access, Disk, DiskFile, Space};
use file::SimFile;
use state::{Change, Dir, DirOp, Node, SplitMix64, State};

/// The size [`Disk::space`] reports for a disk without a capacity: 1 TiB.
pub const UNLIMITED_BYTES: u64 = 1 << 40;

/// An in-memory disk. Clones are handles on the same disk; see
/// [`SimDisk::crash`] for which of them a crash leaves usable.
pub struct SimDisk {
    state: Arc<Mutex<State>>,
    /// The disk's generation this handle belongs to: a crash ends it.
    generation: AtomicU64,
}

impl SimDisk {
    /// An empty disk holding only its root directory, with no capacity
    /// limit and no failures planned.
    pub fn new() -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State::new())),
            generation: AtomicU64::new(0),
        }
    }

    /// Cuts the power: the disk keeps what the module docs say a crash
    /// keeps, the arbitrary choices made from `seed` alone (the same seed on
    /// the same history keeps the same bytes).
    ///
    /// The process that used the disk died with it: every other handle on
    /// this disk, and every file opened before, fails from now on with
    /// `EIO`, so a thread of the dead process cannot write into the state a
    /// restarted one recovers. This handle stays usable: clone it for the
    /// restarted process.
    pub fn crash(&self, seed: u64) {
        let mut state = self.lock();
        state.crash(&mut SplitMix64(seed));
        self.generation.store(state.generation, Ordering::SeqCst);
    }

    /// Limits the bytes all files together may hold (`None`: no limit).
    /// Writes past it write what fits, then fail with `ENOSPC`; files
    /// already past it keep their bytes.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.lock().capacity = capacity;
    }

    /// Makes the next `n` fsyncs (of files or directories, through any
    /// handle) fail with `EIO`, as the module docs describe.
    pub fn fail_next_syncs(&self, n: u64) {
        self.lock().failing_syncs = n;
    }

    /// Bytes all files hold now: the ones a directory names, and the
    /// removed ones still open or whose removal a crash could still undo.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should a caller's panic
        // poison it anyway, the state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, if this handle is not from before a crash.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.lock();
        if state.generation != self.generation.load(Ordering::SeqCst) {
            return Err(Errno::EIO.into());
        }
        Ok(state)
    }
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}

impl Clone for SimDisk {
    fn clone(&self) -> Self {
        SimDisk {
            state: self.state.clone(),
            generation: AtomicU64::new(self.generation.load(Ordering::SeqCst)),
        }
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("generation", &self.generation.load(Ordering::SeqCst))
            .field("files", &state.inodes.len())
            .field("used", &state.used())
            .field("capacity", &state.capacity)
            .finish()
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn DiskFile>> {
        let mut state = self.live()?;
        let (dir, name) = split(path)?;
        let existing = state.dir(&dir)?.current.get(&name).copied();
        let ino = match (existing, access) {
            (Some(Node::Dir), _) => return Err(Errno::EISDIR.into()),
            (Some(Node::File(_)), Access::AppendNew) => return Err(Errno::EEXIST.into()),
            (Some(Node::File(ino)), Access::Create) => {
                state.inode(ino)?.change(Change::SetLen(0));
                ino
            }
            (Some(Node::File(ino)), _) => ino,
            (None, Access::Read | Access::Write | Access::Append) => {
                return Err(Errno::ENOENT.into())
            }
            (None, Access::AppendNew | Access::Create) => state.create(dir, name),
        };
        state.inode(ino)?.handles += 1;
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            generation: state.generation,
            ino,
            pos: 0,
            access,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.live()?;
        match state.lookup(path)? {
            Node::File(ino) => Ok(state.inode_ref(ino)?.data.clone()),
            Node::Dir => Err(Errno::EISDIR.into()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        let ino = match state.dir(&from_dir)?.current.get(&from_name) {
            Some(Node::File(ino)) => *ino,
            Some(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the simulated disk renames files only",
                ))
            }
            None => return Err(Errno::ENOENT.into()),
        };
        if let Some(Node::Dir) = state.dir(&to_dir)?.current.get(&to_name) {
            return Err(Errno::EISDIR.into());
        }
        if (&from_dir, &from_name) == (&to_dir, &to_name) {
            return Ok(());
        }
        state.dir_mut(&from_dir)?.current.remove(&from_name);
        state
            .dir_mut(&to_dir)?
            .current
            .insert(to_name.clone(), Node::File(ino));
        state.journal.push(DirOp::Rename {
            from: (from_dir, from_name),
            to: (to_dir, to_name),
            ino,
        });
        state.collect_garbage();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let (dir, name) = split(path)?;
        match state.dir(&dir)?.current.get(&name) {
            Some(Node::File(_)) => {}
            Some(Node::Dir) => return Err(Errno::EISDIR.into()),
            None => return Err(Errno::ENOENT.into()),
        }
        state.dir_mut(&dir)?.current.remove(&name);
        state.journal.push(DirOp::Unlink { dir, name });
        state.collect_garbage();
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = self.live()?;
        let dir = state.dir(&normalize(dir)?)?;
        Ok(dir.current.keys().cloned().collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let mut at = PathBuf::from("/");
        for component in normalize(dir)?.components().skip(1) {
            let name = component.as_os_str().to_os_string();
            let child = at.join(&name);
            match state.dir(&at)?.current.get(&name) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err(Errno::EEXIST.into()),
                None => {
                    state.dir_mut(&at)?.current.insert(name.clone(), Node::Dir);
                    state.dirs.insert(child.clone(), Dir::default());
                    state.journal.push(DirOp::Link {
                        dir: at.clone(),
                        name,
                        node: Node::Dir,
                    });
                }
            }
            at = child;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let dir = normalize(dir)?;
        match state.lookup(&dir)? {
            // `File::open(path).sync_all()` on a file syncs the file.
            Node::File(ino) => state.sync_file(ino),
            Node::Dir => {
                state.take_failing_sync()?;
                if let Some(last) = state.journal.iter().rposition(|op| op.touches(&dir)) {
                    let committed: Vec<DirOp> = state.journal.drain(..=last).collect();
                    for op in &committed {
                        state.commit(op);
                    }
                    state.collect_garbage();
                }
                Ok(())
            }
        }
    }

    fn space(&self, path: &Path) -> io::Result<Space> {
        let state = self.live()?;
        state.lookup(path)?;
        let total = state.capacity.unwrap_or(UNLIMITED_BYTES);
        Ok(Space {
            free: total.saturating_sub(state.used()),
            total,
        })
    }
}

/// `path` from the root, with `.` and `..` resolved.
fn normalize(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Prefix(_) => return Err(Errno::EINVAL.into()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Ok(out)
}

/// A file's directory and name; the root has none.
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let path = normalize(path)?;
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir.to_path_buf(), name.to_os_string())),
        _ => Err(Errno::EISDIR.into()),
    }
}
