//! The persisted epoch: the highest epoch this replica has been fenced,
//! promoted or told to follow at. It must never go backwards, so it is
//! replaced atomically and a damaged file is an error, never epoch 0. And
//! the divergence marker: once a replica found its log inconsistent with
//! its leader's, it never serves that log again, restarts included.
//!
//! Layout of `<data_dir>/epoch`: one frame (`len u32 BE | crc32 u32 BE |
//! postcard(Epoch)`), nothing after it.

use std::io::{ErrorKind, Write};

use bytes::BytesMut;
use semikv_protocol::frame::{self, Header, HEADER_LEN};
use semikv_protocol::Epoch;

use super::disk::Access;
use super::error::{io_err, StorageError};
use super::DataDir;

/// File name of the epoch inside the data directory.
pub const EPOCH_FILE: &str = "epoch";

/// Largest payload the epoch file may announce (a postcard u128 is at most
/// 19 bytes).
const MAX_EPOCH_PAYLOAD: usize = 24;

/// Reads the persisted epoch; `Epoch::from_raw(0)` if none was ever stored.
///
/// # Errors
/// [`StorageError::Io`] if the file exists but cannot be read;
/// [`StorageError::Corrupt`] if it does not hold exactly one valid frame.
pub fn load_epoch(data_dir: &DataDir) -> Result<Epoch, StorageError> {
    let path = data_dir.join(EPOCH_FILE);
    let bytes = match data_dir.disk().read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Epoch::from_raw(0)),
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason,
    };
    let header = Header::parse(&bytes)
        .ok_or_else(|| corrupt(format!("{} bytes, shorter than a header", bytes.len())))?;
    frame::check_len(header, MAX_EPOCH_PAYLOAD).map_err(|e| corrupt(e.to_string()))?;
    if header.frame_len() != bytes.len() {
        return Err(corrupt(format!(
            "file has {} bytes but its frame needs {}",
            bytes.len(),
            header.frame_len()
        )));
    }
    frame::decode_payload::<Epoch>(header, &bytes[HEADER_LEN..]).map_err(|e| corrupt(e.to_string()))
}

/// Durably replaces the persisted epoch: writes a temp file, fsyncs it,
/// renames it over the old one and fsyncs the directory. Callers serialize
/// their calls; the last one to return wins.
///
/// # Errors
/// [`StorageError::Io`] if any step fails; the old epoch is then still in
/// place (or the new one, if only the final directory fsync failed).
pub fn store_epoch(data_dir: &DataDir, epoch: Epoch) -> Result<(), StorageError> {
    let disk = &**data_dir.disk();
    disk.create_dir_all(data_dir.path())
        .map_err(io_err("creating directory", data_dir.path()))?;
    let path = data_dir.join(EPOCH_FILE);
    let tmp = super::temp_path(data_dir.path(), EPOCH_FILE);
    let mut buf = BytesMut::new();
    frame::encode(&epoch, MAX_EPOCH_PAYLOAD, &mut buf).map_err(|e| StorageError::Unencodable {
        reason: e.to_string(),
    })?;
    let written = disk
        .open(&tmp, Access::Create)
        .and_then(|mut f| {
            f.write_all(&buf)?;
            f.sync_all()
        })
        .map_err(io_err("writing", &tmp));
    if let Err(e) = written {
        let _ = disk.remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = disk.rename(&tmp, &path) {
        let _ = disk.remove_file(&tmp);
        return Err(io_err("renaming", &tmp)(e));
    }
    super::sync_dir(disk, data_dir.path())
}

/// File name of the divergence marker inside the data directory.
pub const DIVERGED_FILE: &str = "DIVERGED";

/// Durably records that this replica's log diverged from its leader's, with
/// why: [`super::open`] then refuses the directory until an operator acts.
///
/// # Errors
/// [`StorageError::Io`] if the marker cannot be written and synced.
pub fn mark_diverged(data_dir: &DataDir, reason: &str) -> Result<(), StorageError> {
    let disk = &**data_dir.disk();
    let path = data_dir.join(DIVERGED_FILE);
    disk.open(&path, Access::Create)
        .and_then(|mut f| {
            f.write_all(reason.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        })
        .map_err(io_err("writing", &path))?;
    super::sync_dir(disk, data_dir.path())
}

/// Fails if this data directory holds the divergence marker.
///
/// # Errors
/// [`StorageError::Diverged`] with the recorded reason, or
/// [`StorageError::Io`] if the marker exists but cannot be read.
pub fn check_not_diverged(data_dir: &DataDir) -> Result<(), StorageError> {
    let path = data_dir.join(DIVERGED_FILE);
    match data_dir.disk().read(&path) {
        Ok(bytes) => Err(StorageError::Diverged {
            reason: String::from_utf8_lossy(&bytes).trim().to_string(),
            path,
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("reading", &path)(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::storage::disk::fixture::{each_disk, Fixture};

    #[test]
    fn a_diverged_directory_is_refused_with_its_reason() {
        each_disk(|fx| {
            let dir = fx.data_dir();
            check_not_diverged(&dir).unwrap();
            mark_diverged(&dir, "at index 9 our entry differs").unwrap();
            let err = check_not_diverged(&dir).unwrap_err();
            assert!(matches!(err, StorageError::Diverged { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("at index 9 our entry differs"), "{text}");
            assert!(text.contains("wipe it"), "{text}");
        });
    }

    #[test]
    fn absent_is_zero_and_store_load_round_trips() {
        each_disk(|fx| {
            let dir = fx.data_dir();
            assert_eq!(load_epoch(&dir).unwrap(), Epoch::from_raw(0));
            store_epoch(&dir, Epoch::from_raw(7)).unwrap();
            assert_eq!(load_epoch(&dir).unwrap(), Epoch::from_raw(7));
            store_epoch(&dir, Epoch::from_raw(u128::MAX)).unwrap();
            assert_eq!(load_epoch(&dir).unwrap(), Epoch::from_raw(u128::MAX));
            assert_eq!(fx.files(dir.path()).len(), 1, "temp file left behind");
        });
    }

    #[test]
    fn corrupt_file_is_refused_not_zero() {
        each_disk(|fx| {
            let dir = fx.data_dir();
            store_epoch(&dir, Epoch::from_raw(5)).unwrap();
            let path = dir.join(EPOCH_FILE);
            let good = fx.read(&path);
            let mut cases: Vec<Vec<u8>> = vec![
                Vec::new(),
                good[..3].to_vec(),
                good[..good.len() - 1].to_vec(),
            ];
            let mut flipped = good.clone();
            *flipped.last_mut().unwrap() ^= 0x10;
            cases.push(flipped);
            let mut longer = good.clone();
            longer.push(0);
            cases.push(longer);
            for bytes in cases {
                fx.write(&path, &bytes);
                let err = load_epoch(&dir).unwrap_err();
                assert!(
                    matches!(err, StorageError::Corrupt { .. }),
                    "{bytes:?}: {err}"
                );
                assert!(err.to_string().contains("epoch"));
            }
        });
    }

    #[test]
    fn a_full_disk_keeps_the_old_epoch_and_no_temp_file() {
        let fx = Fixture::sim();
        let sim = fx.sim_disk();
        let dir = fx.data_dir();
        store_epoch(&dir, Epoch::from_raw(5)).unwrap();
        sim.set_capacity(Some(sim.used_bytes()));
        let err = store_epoch(&dir, Epoch::from_raw(6)).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert_eq!(load_epoch(&dir).unwrap(), Epoch::from_raw(5));
        assert_eq!(fx.files(dir.path()).len(), 1, "temp file left behind");
        sim.set_capacity(None);
        store_epoch(&dir, Epoch::from_raw(6)).unwrap();
        assert_eq!(load_epoch(&dir).unwrap(), Epoch::from_raw(6));
    }

    #[test]
    fn a_stored_epoch_survives_any_crash() {
        for seed in 0..100 {
            let fx = Fixture::sim();
            let dir = fx.data_dir();
            store_epoch(&dir, Epoch::from_raw(5)).unwrap();
            store_epoch(&dir, Epoch::from_raw(6)).unwrap();
            fx.crash(seed);
            let dir = fx.at(dir.path());
            assert_eq!(load_epoch(&dir).unwrap(), Epoch::from_raw(6), "seed {seed}");
        }
    }
}
