//! Small tmpfs mounts for disk-full tests: a replica's data directory on a
//! file system of a few MiB, filled and freed by the test.
//!
//! Mounting needs root (the CI runs as root). Where it is impossible,
//! [`Tmpfs::mount`] says why, and the caller prints that reason and skips:
//! never silently.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory; lazily unmounted on drop (the processes
/// using it may still be running when a failed test unwinds).
#[derive(Debug)]
pub struct Tmpfs {
    at: PathBuf,
}

/// Name of the file [`Tmpfs::fill`] takes the free space with.
const FILLER: &str = "filler";

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` at `at` (created if missing).
    ///
    /// # Errors
    /// Why it cannot be mounted (not root, no `mount`, refused): the caller
    /// prints it and skips.
    pub fn mount(at: &Path, size_bytes: u64) -> Result<Tmpfs, String> {
        fs::create_dir_all(at).map_err(|e| format!("creating {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes}"))
            .arg("tmpfs")
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs at {} failed ({}): {}",
                at.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            at: at.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Takes every free byte with a filler file: large writes, then smaller
    /// ones, until the file system refuses even one byte more.
    ///
    /// # Errors
    /// The filler cannot be created, or a write fails for another reason
    /// than a full disk.
    pub fn fill(&self) -> std::io::Result<u64> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.at.join(FILLER))?;
        let mut total = 0u64;
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0x5au8; chunk];
            loop {
                match file.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => return Err(e),
                }
            }
        }
        file.sync_all()?;
        Ok(total)
    }

    /// Gives back what [`Tmpfs::fill`] took.
    ///
    /// # Errors
    /// The filler cannot be removed.
    pub fn free(&self) -> std::io::Result<()> {
        match fs::remove_file(self.at.join(FILLER)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
