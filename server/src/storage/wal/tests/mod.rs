//! The write-ahead log's tests: appending and reopening, damage and torn
//! tails, and random operations against a `Vec` model, each on the real
//! file system and on the simulated disk; crashes on the simulated one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crash;
mod damage;
mod model;
mod writer;

use super::replay::read_record;
use super::segment::parse_segment_name;
use super::*;
use crate::storage::disk::fixture::{each_disk, Fixture};
use bytes::Bytes;
use semikv_protocol::frame::Header;
use semikv_protocol::Entry;
use semikv_protocol::{Epoch, WriteOp};
use std::path::Path;

pub(super) fn entry(i: u64, epoch: u64) -> Entry {
    Entry {
        index: LogIndex(i),
        epoch: Epoch::from_raw(epoch.into()),
        op: WriteOp::Set {
            key: Bytes::from(format!("key-{i}")),
            value: Bytes::from(format!("value-{i}-{epoch}")),
        },
    }
}

pub(super) fn entries(range: std::ops::RangeInclusive<u64>, epoch: u64) -> Vec<Record> {
    range.map(|i| Record::Entry(entry(i, epoch))).collect()
}

pub(super) fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 60,
        max_record_len: 1024,
    }
}

pub(super) fn reopen(fx: &Fixture, dir: &Path, after: u64, opts: WalOptions) -> (Wal, Recovered) {
    Wal::open(fx.disk(), dir, LogIndex(after), opts).unwrap()
}

pub(super) fn indexes(r: &Recovered) -> Vec<u64> {
    r.entries.iter().map(|e| e.index.0).collect()
}

/// Byte offsets where each record of a segment starts.
pub(super) fn record_offsets(fx: &Fixture, path: &Path) -> Vec<usize> {
    let bytes = fx.read(path);
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        offsets.push(at);
        at += Header::parse(&bytes[at..]).unwrap().frame_len();
    }
    offsets
}
