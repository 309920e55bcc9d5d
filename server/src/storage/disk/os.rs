//! The real file system: each [`Disk`] call is the `std::fs` (or `statvfs`)
//! call storage made before the seam existed, with the same flags, fsyncs
//! and errors.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use super::{Access, Disk, DiskFile, Space};

/// The operating system's file system. Stateless: every instance is the
/// same disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn DiskFile>> {
        let mut options = OpenOptions::new();
        match access {
            Access::Read => options.read(true),
            Access::Write => options.write(true),
            Access::Append => options.append(true),
            Access::AppendNew => options.append(true).create_new(true),
            Access::Create => options.write(true).create(true).truncate(true),
        };
        Ok(Box::new(options.open(path)?))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|item| item.map(|item| item.file_name()))
            .collect()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    // The field types are u64 on 64-bit Linux but not everywhere.
    #[allow(clippy::useless_conversion)]
    fn space(&self, path: &Path) -> io::Result<Space> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        let unit = u64::from(stat.fragment_size());
        Ok(Space {
            free: u64::from(stat.blocks_available()).saturating_mul(unit),
            total: u64::from(stat.blocks()).saturating_mul(unit),
        })
    }
}

/// A real file is a disk file as it is: no wrapper, so the write-ahead
/// log's appends cost one virtual call over the system call.
impl DiskFile for File {
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}
