//! Criterion micro-benchmarks of the WAL append path: encoding and writing a
//! batch of entries (what one group commit writes), with and without the
//! fdatasync that `--fsync always` adds. The log is reset outside the timed
//! part every few thousand batches so the benchmark never fills the disk.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use semikv_protocol::{Entry, Epoch, LogIndex, WriteOp};
use semikv_server::storage::wal::{Record, Wal, WalOptions};
use semikv_server::storage::OsDisk;

/// Batches appended between two resets (about 20 MB at 64 entries of 16-byte
/// values).
const RESET_EVERY: u64 = 4096;

fn batch(first: u64, n: u64) -> Vec<Record> {
    let mut records: Vec<Record> = (first..first + n)
        .map(|i| {
            Record::Entry(Entry {
                index: LogIndex(i),
                epoch: Epoch::from_raw(1),
                op: WriteOp::Set {
                    key: Bytes::from(format!("bench-abcdef-7-{i}")),
                    value: Bytes::from_static(b"7:12345:xxxxxxxx"),
                },
            })
        })
        .collect();
    records.push(Record::Commit(LogIndex(first + n - 1)));
    records
}

/// Times `iters` appends of `n`-entry batches, `sync` after each if asked.
fn run(wal: &mut Wal, n: u64, sync: bool, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for k in 0..iters {
        if k % RESET_EVERY == 0 {
            wal.reset(LogIndex(0)).unwrap();
        }
        let first = wal.last_index().0 + 1;
        let records = batch(first, n);
        let started = Instant::now();
        wal.append(&records).unwrap();
        if sync {
            wal.sync().unwrap();
        }
        total += started.elapsed();
    }
    total
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(
        Arc::new(OsDisk),
        &dir.path().join("wal"),
        LogIndex(0),
        WalOptions::default(),
    )
    .unwrap();
    let mut group = c.benchmark_group("wal_append");
    for n in [1u64, 64] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("batch_{n}"), |b| {
            b.iter_custom(|iters| run(&mut wal, n, false, iters))
        });
    }
    group.finish();

    // Disk-bound: few samples, or the default settings take minutes.
    let mut group = c.benchmark_group("wal_append_fsync");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for n in [1u64, 64] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("batch_{n}"), |b| {
            b.iter_custom(|iters| run(&mut wal, n, true, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
