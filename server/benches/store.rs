//! Criterion micro-benchmarks of the in-memory store: the copy a snapshot
//! takes under the node lock (and, for comparison, what the same copy of a
//! flat `std` hash map costs), the per-write and per-read costs, and a
//! scan page's, on a big store and on one the size of the SET benchmark's
//! working set.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use semikv_protocol::{UnixMillis, WriteOp};
use semikv_server::storage::store::Store;

/// Keys in the big store: about 60 MB of keys and values, what a modest
/// deployment holds.
const KEYS: u64 = 1_000_000;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("bench-abcdef-7-{i}"))
}

fn set(i: u64) -> WriteOp {
    WriteOp::Set {
        key: key(i),
        value: Bytes::from_static(b"7:12345:xxxxxxxx"),
    }
}

fn store(c: &mut Criterion) {
    let mut big = Store::default();
    let mut flat: HashMap<Bytes, Bytes> = HashMap::new();
    for i in 0..KEYS {
        big.apply(&set(i));
        if let WriteOp::Set { key, value } = set(i) {
            flat.insert(key, value);
        }
    }
    let mut group = c.benchmark_group("store_1m_keys");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("snapshot_copy", |b| b.iter(|| black_box(big.clone())));
    group.bench_function("snapshot_copy_flat_std_map", |b| {
        b.iter(|| black_box(flat.clone()))
    });
    let mut i = 0u64;
    group.bench_function("apply_set_flat_std_map", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            if let WriteOp::Set { key, value } = set(i) {
                flat.insert(key, value);
            }
        })
    });
    drop(flat);
    group.bench_function("apply_set", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            big.apply(&set(i));
        })
    });
    group.bench_function("apply_set_while_a_snapshot_holds_a_copy", |b| {
        let held = big.clone();
        b.iter(|| {
            i = (i + 7919) % KEYS;
            big.apply(&set(i));
        });
        drop(held);
    });
    // A key created and deleted: the writes that touch the scan index
    // (overwrites above do not).
    let mut fresh = KEYS;
    group.bench_function("create_and_delete_a_key", |b| {
        b.iter(|| {
            fresh += 1;
            big.apply(&set(fresh));
            big.apply(&WriteOp::Delete { key: key(fresh) });
        })
    });
    let mut cursor = 0;
    group.bench_function("scan_page_of_10", |b| {
        b.iter(|| {
            let page = big.scan(cursor, 10, usize::MAX, UnixMillis(0));
            cursor = page.cursor;
            black_box(page)
        })
    });
    group.bench_function("scan_page_of_1000", |b| {
        b.iter(|| {
            let page = big.scan(cursor, 1000, usize::MAX, UnixMillis(0));
            cursor = page.cursor;
            black_box(page)
        })
    });
    let keys: Vec<Bytes> = (0..1024).map(|i| key(i * 977 % KEYS)).collect();
    group.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 1) % 1024;
            black_box(big.get(&keys[i as usize]))
        })
    });
    group.finish();
}

/// Distinct keys the SET pipeline benchmark writes: the whole store fits in
/// cache, so what a write costs is the store's own work.
const SMALL_KEYS: u64 = 12_800;

/// The SET benchmark's shape: 20-byte keys, 16-byte values.
fn small_set(i: u64) -> WriteOp {
    WriteOp::Set {
        key: Bytes::from(format!("bench-abcdef-7-{i:05}")),
        value: Bytes::from_static(b"7:12345:xxxxxxxx"),
    }
}

/// Writes and reads on a store the size of the SET benchmark's, with the
/// operations built beforehand so only the store is measured.
fn store_small(c: &mut Criterion) {
    let ops: Vec<WriteOp> = (0..SMALL_KEYS).map(small_set).collect();
    let mut small = Store::default();
    for op in &ops {
        small.apply(op);
    }
    let mut group = c.benchmark_group("store_12800_keys");
    group.measurement_time(Duration::from_secs(3));
    let mut i = 0u64;
    group.bench_function("apply_set", |b| {
        b.iter(|| {
            i = (i + 7919) % SMALL_KEYS;
            small.apply(&ops[i as usize]);
        })
    });
    group.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 7919) % SMALL_KEYS;
            if let WriteOp::Set { key, .. } = &ops[i as usize] {
                black_box(small.get(key));
            }
        })
    });
    group.bench_function("snapshot_copy", |b| b.iter(|| black_box(small.clone())));
    group.finish();
}

criterion_group!(benches, store, store_small);
criterion_main!(benches);
