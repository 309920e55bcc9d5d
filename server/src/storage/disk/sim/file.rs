//! An open file of the simulated disk: a position and an access mode on
//! an inode, dead once the disk crashes.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;

use super::state::{to_usize, Change, Ino, State};
use crate::storage::disk::{Access, DiskFile};

/// An open file of a [`SimDisk`].
pub(super) struct SimFile {
    pub(super) state: Arc<Mutex<State>>,
    pub(super) generation: u64,
    pub(super) ino: Ino,
    pub(super) pos: u64,
    pub(super) access: Access,
}

impl SimFile {
    pub(super) fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.generation != self.generation {
            return Err(Errno::EIO.into());
        }
        Ok(state)
    }

    pub(super) fn writable(&self) -> bool {
        self.access != Access::Read
    }
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .field("generation", &self.generation)
            .field("pos", &self.pos)
            .field("access", &self.access)
            .finish()
    }
}

impl Read for SimFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.writable() {
            return Err(Errno::EBADF.into());
        }
        let state = self.live()?;
        let data = &state.inode_ref(self.ino)?.data;
        let start = to_usize(self.pos).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        drop(state);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable() {
            return Err(Errno::EBADF.into());
        }
        let mut state = self.live()?;
        let room = state.room();
        let inode = state.inode(self.ino)?;
        let len = inode.data.len() as u64;
        let at = match self.access {
            Access::Append | Access::AppendNew => len,
            _ => self.pos,
        };
        // What fits: bytes up to the room past the current end.
        let limit = len.saturating_add(room);
        let n = to_usize(limit.saturating_sub(at)).min(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(Errno::ENOSPC.into());
        }
        inode.change(Change::Write {
            at,
            bytes: buf[..n].to_vec(),
        });
        drop(state);
        self.pos = at + n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SimFile {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match from {
            SeekFrom::Start(at) => (0, i128::from(at)),
            SeekFrom::Current(delta) => (self.pos, i128::from(delta)),
            SeekFrom::End(delta) => {
                let state = self.live()?;
                (
                    state.inode_ref(self.ino)?.data.len() as u64,
                    i128::from(delta),
                )
            }
        };
        let pos = u64::try_from(i128::from(base) + delta).map_err(|_| Errno::EINVAL)?;
        self.pos = pos;
        Ok(pos)
    }
}

impl DiskFile for SimFile {
    fn sync_all(&self) -> io::Result<()> {
        self.live()?.sync_file(self.ino)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable() {
            return Err(Errno::EINVAL.into());
        }
        let mut state = self.live()?;
        let room = state.room();
        let inode = state.inode(self.ino)?;
        if len.saturating_sub(inode.data.len() as u64) > room {
            return Err(Errno::ENOSPC.into());
        }
        inode.change(Change::SetLen(len));
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.live()?.inode_ref(self.ino)?.data.len() as u64)
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        if let Ok(mut state) = self.live() {
            if let Ok(inode) = state.inode(self.ino) {
                inode.handles = inode.handles.saturating_sub(1);
            }
            state.collect_garbage();
        }
    }
}
