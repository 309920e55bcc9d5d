//! The simulated disk's state: files with their current and durable
//! bytes, directories with their current and durable entries, the journal
//! of directory changes between them, and what a crash makes of it all.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::normalize;

/// An inode's number.
pub(super) type Ino = u64;

/// What a directory entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    File(Ino),
    Dir,
}

/// A directory's entries, as reads see them and as a crash keeps them.
#[derive(Debug, Default)]
pub(super) struct Dir {
    pub(super) current: BTreeMap<OsString, Node>,
    pub(super) durable: BTreeMap<OsString, Node>,
}

/// A directory change, in the journal until committed.
#[derive(Debug)]
pub(super) enum DirOp {
    Link {
        dir: PathBuf,
        name: OsString,
        node: Node,
    },
    Unlink {
        dir: PathBuf,
        name: OsString,
    },
    Rename {
        from: (PathBuf, OsString),
        to: (PathBuf, OsString),
        ino: Ino,
    },
}

impl DirOp {
    pub(super) fn touches(&self, dir: &Path) -> bool {
        match self {
            DirOp::Link { dir: d, .. } | DirOp::Unlink { dir: d, .. } => d == dir,
            DirOp::Rename { from, to, .. } => from.0 == dir || to.0 == dir,
        }
    }
}

/// A change to a file's bytes not yet synced.
#[derive(Debug)]
pub(super) enum Change {
    Write { at: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Change {
    pub(super) fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Change::Write { at, bytes } => write_at(data, *at, bytes),
            Change::SetLen(len) => data.resize(to_usize(*len), 0),
        }
    }
}

/// A file's bytes: current, durable, and the changes between them.
#[derive(Debug, Default)]
pub(super) struct Inode {
    pub(super) data: Vec<u8>,
    pub(super) durable: Vec<u8>,
    pub(super) pending: Vec<Change>,
    /// Open handles: an unlinked file lives until the last one closes.
    pub(super) handles: usize,
}

impl Inode {
    pub(super) fn change(&mut self, change: Change) {
        change.apply(&mut self.data);
        self.pending.push(change);
    }
}

#[derive(Debug)]
pub(super) struct State {
    /// Bumped by every crash; handles from an earlier one are dead.
    pub(super) generation: u64,
    pub(super) inodes: BTreeMap<Ino, Inode>,
    /// Every directory there is, by normalized path; the root always.
    pub(super) dirs: BTreeMap<PathBuf, Dir>,
    /// Directory changes not yet committed, oldest first.
    pub(super) journal: Vec<DirOp>,
    pub(super) next_ino: Ino,
    pub(super) capacity: Option<u64>,
    pub(super) failing_syncs: u64,
}

impl State {
    pub(super) fn new() -> State {
        State {
            generation: 0,
            inodes: BTreeMap::new(),
            dirs: BTreeMap::from([(PathBuf::from("/"), Dir::default())]),
            journal: Vec::new(),
            next_ino: 1,
            capacity: None,
            failing_syncs: 0,
        }
    }

    pub(super) fn used(&self) -> u64 {
        self.inodes.values().map(|i| i.data.len() as u64).sum()
    }

    /// Bytes that may still be added (`u64::MAX` without a capacity).
    pub(super) fn room(&self) -> u64 {
        match self.capacity {
            Some(capacity) => capacity.saturating_sub(self.used()),
            None => u64::MAX,
        }
    }

    pub(super) fn dir(&self, path: &Path) -> io::Result<&Dir> {
        match self.dirs.get(path) {
            Some(dir) => Ok(dir),
            None => Err(self.not_a_dir(path)),
        }
    }

    pub(super) fn dir_mut(&mut self, path: &Path) -> io::Result<&mut Dir> {
        if !self.dirs.contains_key(path) {
            return Err(self.not_a_dir(path));
        }
        self.dirs.get_mut(path).ok_or_else(|| Errno::ENOENT.into())
    }

    /// Why `path`, which is no directory, cannot be used as one.
    pub(super) fn not_a_dir(&self, path: &Path) -> io::Error {
        match self.lookup(path) {
            Ok(Node::File(_)) => Errno::ENOTDIR.into(),
            _ => Errno::ENOENT.into(),
        }
    }

    pub(super) fn lookup(&self, path: &Path) -> io::Result<Node> {
        let path = normalize(path)?;
        let Some(name) = path.file_name() else {
            return Ok(Node::Dir);
        };
        let parent = path.parent().unwrap_or(Path::new("/"));
        match self.dir(parent)?.current.get(name) {
            Some(node) => Ok(*node),
            None => Err(Errno::ENOENT.into()),
        }
    }

    pub(super) fn inode(&mut self, ino: Ino) -> io::Result<&mut Inode> {
        // Live handles keep their inode: a miss is a dead handle's.
        self.inodes.get_mut(&ino).ok_or_else(|| Errno::EIO.into())
    }

    pub(super) fn inode_ref(&self, ino: Ino) -> io::Result<&Inode> {
        self.inodes.get(&ino).ok_or_else(|| Errno::EIO.into())
    }

    /// A new empty file named `name` in `dir`, which exists.
    pub(super) fn create(&mut self, dir: PathBuf, name: OsString) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.current.insert(name.clone(), Node::File(ino));
        }
        self.journal.push(DirOp::Link {
            dir,
            name,
            node: Node::File(ino),
        });
        ino
    }

    pub(super) fn take_failing_sync(&mut self) -> io::Result<()> {
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            return Err(Errno::EIO.into());
        }
        Ok(())
    }

    pub(super) fn sync_file(&mut self, ino: Ino) -> io::Result<()> {
        let failed = self.take_failing_sync();
        let inode = self.inode(ino)?;
        let pending = std::mem::take(&mut inode.pending);
        // A failed fsync drops the changes: Linux may have marked their
        // pages clean without writing them.
        if failed.is_ok() {
            for change in &pending {
                change.apply(&mut inode.durable);
            }
        }
        failed
    }

    /// Makes a journalled directory change durable.
    pub(super) fn commit(&mut self, op: &DirOp) {
        let dirs = &mut self.dirs;
        match op {
            DirOp::Link { dir, name, node } => {
                if let Some(d) = durable_entries(dirs, dir) {
                    d.insert(name.clone(), *node);
                }
            }
            DirOp::Unlink { dir, name } => {
                if let Some(d) = durable_entries(dirs, dir) {
                    d.remove(name);
                }
            }
            DirOp::Rename { from, to, ino } => {
                if let Some(d) = durable_entries(dirs, &from.0) {
                    d.remove(&from.1);
                }
                if let Some(d) = durable_entries(dirs, &to.0) {
                    d.insert(to.1.clone(), Node::File(*ino));
                }
            }
        }
    }

    /// Drops files nothing names, journals or holds open any more.
    pub(super) fn collect_garbage(&mut self) {
        let mut live: BTreeSet<Ino> = BTreeSet::new();
        for dir in self.dirs.values() {
            for node in dir.current.values().chain(dir.durable.values()) {
                if let Node::File(ino) = node {
                    live.insert(*ino);
                }
            }
        }
        for op in &self.journal {
            match op {
                DirOp::Link {
                    node: Node::File(ino),
                    ..
                }
                | DirOp::Rename { ino, .. } => {
                    live.insert(*ino);
                }
                _ => {}
            }
        }
        self.inodes
            .retain(|ino, inode| inode.handles > 0 || live.contains(ino));
    }

    pub(super) fn crash(&mut self, rng: &mut SplitMix64) {
        self.generation += 1;
        let journal = std::mem::take(&mut self.journal);
        let kept = rng.below(journal.len() + 1);
        for op in &journal[..kept] {
            self.commit(op);
        }
        // Only what the committed tree still reaches survives.
        let mut reachable = BTreeSet::from([PathBuf::from("/")]);
        let mut queue = vec![PathBuf::from("/")];
        while let Some(path) = queue.pop() {
            let Some(dir) = self.dirs.get(&path) else {
                continue;
            };
            for (name, node) in &dir.durable {
                if *node == Node::Dir && reachable.insert(path.join(name)) {
                    queue.push(path.join(name));
                }
            }
        }
        self.dirs.retain(|path, _| reachable.contains(path));
        for dir in self.dirs.values_mut() {
            dir.current = dir.durable.clone();
        }
        for inode in self.inodes.values_mut() {
            inode.handles = 0;
        }
        self.collect_garbage();
        for inode in self.inodes.values_mut() {
            let pending = std::mem::take(&mut inode.pending);
            let kept = rng.below(pending.len() + 1);
            for change in &pending[..kept] {
                change.apply(&mut inode.durable);
            }
            if let Some(Change::Write { at, bytes }) = pending.get(kept) {
                if rng.below(2) == 0 {
                    tear(&mut inode.durable, *at, bytes, rng);
                }
            }
            inode.data = inode.durable.clone();
        }
    }
}

fn durable_entries<'a>(
    dirs: &'a mut BTreeMap<PathBuf, Dir>,
    dir: &Path,
) -> Option<&'a mut BTreeMap<OsString, Node>> {
    dirs.get_mut(dir).map(|d| &mut d.durable)
}

/// Applies part of a write a crash interrupted: a prefix of its bytes,
/// then perhaps zeros to its end where it extended the file (the new
/// length reached the disk, the data did not).
fn tear(data: &mut Vec<u8>, at: u64, bytes: &[u8], rng: &mut SplitMix64) {
    if bytes.is_empty() {
        return;
    }
    let cut = rng.below(bytes.len());
    write_at(data, at, &bytes[..cut]);
    if rng.below(2) == 0 {
        let end = to_usize(at).saturating_add(bytes.len());
        if end > data.len() {
            data.resize(end, 0);
        }
    }
}

pub(super) fn write_at(data: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let at = to_usize(at);
    let end = at.saturating_add(bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[at..end].copy_from_slice(bytes);
}

/// Offsets and lengths within a file held in memory always fit a `usize`.
pub(super) fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A small deterministic generator (SplitMix64): a crash's choices come
/// from its seed alone, with no dependency.
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n`; 0 when `n` is 0.
    pub(super) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        to_usize(self.next() % n as u64)
    }
}
