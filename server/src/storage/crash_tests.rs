//! The whole data directory (log, snapshots, epoch) on a simulated disk
//! that crashes, fills and fails fsyncs at random points, against a model:
//! after every crash, recovery holds every entry that was durable (synced,
//! durably truncated to, or in a durable snapshot), nothing that was never
//! written, and the map those entries build; the epoch is the last one
//! stored (or, if that store failed, the one before).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use semikv_protocol::{Entry, Epoch, LogIndex, WriteOp};

use super::disk::fixture::Fixture;
use super::snapshot::SnapshotMeta;
use super::wal::{Record, Wal, WalOptions};
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Appends `count` entries, then a commit record for them if asked.
    Write {
        count: u64,
        commit: bool,
    },
    Sync,
    /// Cuts the log `back` entries from its end, never below what is
    /// committed (as a follower does when its leader's log differs).
    TruncateAfter {
        back: u64,
    },
    /// Snapshots the map at the commit index and compacts the log.
    Snapshot,
    StoreEpoch,
    /// The next fsync, whichever it is, fails.
    FailNextSync,
    /// Leaves `room` bytes free.
    FillDisk {
        room: u64,
    },
    FreeDisk,
    /// Power cut, then start-up.
    Crash {
        seed: u64,
    },
    /// The process exits without syncing and starts again; the page cache
    /// (the disk's current state) survives.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u64..5, any::<bool>()).prop_map(|(count, commit)| Op::Write { count, commit }),
        3 => Just(Op::Sync),
        1 => (0u64..8).prop_map(|back| Op::TruncateAfter { back }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::StoreEpoch),
        1 => Just(Op::FailNextSync),
        1 => (0u64..300).prop_map(|room| Op::FillDisk { room }),
        1 => Just(Op::FreeDisk),
        3 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        1 => Just(Op::Restart),
    ]
}

/// An entry no other entry equals (its value carries `serial`), so an
/// entry that was cut off can never pass for the one that replaced it.
fn entry(index: u64, serial: u64) -> Entry {
    let key = Bytes::from(format!("k{}", serial % 5));
    let op = if serial % 4 == 3 {
        WriteOp::Delete { key }
    } else {
        WriteOp::Set {
            key,
            value: Bytes::from(format!("v{serial}")),
        }
    };
    Entry {
        index: LogIndex(index),
        epoch: Epoch::from_raw(1),
        op,
    }
}

/// The map `entries` build.
fn map_of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    for e in entries {
        match &e.op {
            WriteOp::Set { key, value } => {
                map.insert(key.to_vec(), value.to_vec());
            }
            WriteOp::Delete { key } => {
                map.remove(&key[..]);
            }
            WriteOp::Noop => {}
            WriteOp::Batch(mutations) => {
                for m in mutations {
                    match &m.value {
                        Some(value) => map.insert(m.key.to_vec(), value.to_vec()),
                        None => map.remove(&m.key[..]),
                    };
                }
            }
        }
    }
    map
}

/// What the test knows the data directory must hold.
#[derive(Debug, Default)]
struct Model {
    /// The log as written (entry `i` at `log[i - 1]`).
    log: Vec<Entry>,
    /// A batch the disk had no room for: retried before anything else, as
    /// the writer does; a crash may keep a prefix of it.
    refused: Vec<Entry>,
    /// A crash keeps at least this many entries.
    durable: u64,
    /// Highest commit record written; and the highest one synced.
    committed: u64,
    committed_synced: u64,
    /// The latest snapshot that surely exists.
    snapshot: u64,
    /// The stored epoch: one of these.
    epochs: Vec<u128>,
    serial: u64,
    /// An fsync failed since the last power cut (see [`Op::Restart`]).
    sync_failed: bool,
}

struct Run<'a> {
    fx: &'a Fixture,
    path: std::path::PathBuf,
    opts: WalOptions,
    wal: Option<Wal>,
    model: Model,
}

impl Run<'_> {
    fn data(&self) -> DataDir {
        self.fx.at(&self.path)
    }

    /// Opens the directory and checks it against the model; `exact`: no
    /// power cut since the last open, so nothing written may be missing.
    fn recover(&mut self, exact: bool) -> Result<(), TestCaseError> {
        let opened = open(&self.data(), self.opts)
            .map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
        let m = &mut self.model;
        let base = opened.snapshot.as_ref().map_or(0, |s| s.last_index.0);
        let n = base + opened.entries.len() as u64;
        let allowed: Vec<Entry> = m.log.iter().chain(&m.refused).cloned().collect();
        let floor = if exact {
            m.log.len() as u64
        } else {
            m.durable.max(m.snapshot)
        };
        prop_assert!(
            n >= floor,
            "recovered {} entries, {} were durable",
            n,
            floor
        );
        // A batch refused for lack of room was cut back off the log; only a
        // power cut can bring part of it back.
        let written = if exact { m.log.len() } else { allowed.len() };
        prop_assert!(
            n <= written as u64,
            "recovered {} entries, only {} written",
            n,
            written
        );
        prop_assert!(base >= m.snapshot);
        for e in &opened.entries {
            prop_assert_eq!(e, &allowed[e.index.0 as usize - 1]);
        }
        let mut store = opened.store.clone();
        for e in &opened.entries {
            store.apply(&e.op);
        }
        let got: BTreeMap<Vec<u8>, Vec<u8>> = store
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        prop_assert_eq!(got, map_of(&allowed[..n as usize]));
        prop_assert!(opened.commit_index.0 <= n);
        prop_assert!(opened.commit_index.0 >= m.committed_synced.min(n));
        prop_assert!(
            m.epochs.contains(&opened.epoch.raw()),
            "epoch {} not in {:?}",
            opened.epoch,
            m.epochs
        );

        m.log = allowed[..n as usize].to_vec();
        m.refused.clear();
        // Recovery makes what it returns durable (the node counts it so).
        m.durable = n;
        m.committed = opened.commit_index.0;
        m.committed_synced = m.committed_synced.min(m.committed);
        m.snapshot = base;
        m.epochs = vec![opened.epoch.raw()];
        self.wal = Some(opened.wal);
        Ok(())
    }

    /// Appends the refused batch, else a new one.
    fn write(&mut self, count: u64, commit: bool) {
        let Some(wal) = self.wal.as_mut() else { return };
        let m = &mut self.model;
        let batch = if m.refused.is_empty() {
            let start = m.log.len() as u64 + 1;
            (start..start + count)
                .map(|i| {
                    m.serial += 1;
                    entry(i, m.serial)
                })
                .collect()
        } else {
            std::mem::take(&mut m.refused)
        };
        let last = batch.last().map_or(0, |e| e.index.0);
        let mut records: Vec<Record> = batch.iter().cloned().map(Record::Entry).collect();
        if commit {
            records.push(Record::Commit(LogIndex(last)));
        }
        match wal.append(&records) {
            Ok(()) => {
                m.log.extend(batch);
                if commit {
                    m.committed = m.committed.max(last);
                }
            }
            Err(e) if e.is_no_space() && !wal.is_poisoned() => m.refused = batch,
            // Poisoned: the replica stops; nothing more is written.
            Err(_) => self.wal = None,
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let sim = self.fx.sim_disk();
        match *op {
            Op::Write { count, commit } => self.write(count, commit),
            Op::Sync => {
                if let Some(wal) = self.wal.as_mut() {
                    if wal.sync().is_ok() {
                        self.model.durable = self.model.log.len() as u64;
                        self.model.committed_synced = self.model.committed;
                    } else {
                        self.model.sync_failed = true;
                        self.wal = None;
                    }
                }
            }
            Op::TruncateAfter { back } => {
                let m = &mut self.model;
                let Some(wal) = self.wal.as_mut().filter(|_| m.refused.is_empty()) else {
                    return Ok(());
                };
                let index = (m.log.len() as u64).saturating_sub(back).max(m.committed);
                // Failed or not, what was after `index` may be gone.
                m.durable = m.durable.min(index);
                if wal.truncate_after(LogIndex(index)).is_ok() {
                    m.log.truncate(index as usize);
                } else {
                    m.sync_failed = true;
                    self.wal = None;
                }
            }
            Op::Snapshot => {
                let m = &self.model;
                let at = m.committed;
                if at <= m.snapshot || self.wal.is_none() {
                    return Ok(());
                }
                let meta = SnapshotMeta {
                    last_index: LogIndex(at),
                    last_epoch: Epoch::from_raw(1),
                    history: Vec::new(),
                };
                let mut store = store::Store::default();
                for e in &m.log[..at as usize] {
                    store.apply(&e.op);
                }
                if snapshot::write(&self.data(), &meta, &store).is_ok() {
                    self.model.snapshot = at;
                    let compacted = self.wal.as_mut().map(|wal| wal.compact(LogIndex(at)));
                    if matches!(compacted, Some(Err(_))) {
                        self.wal = None;
                    }
                }
            }
            Op::StoreEpoch => {
                let data = self.data();
                let m = &mut self.model;
                let next = m.epochs.iter().max().copied().unwrap_or(0) + 1;
                match meta::store_epoch(&data, Epoch::from_raw(next)) {
                    Ok(()) => m.epochs = vec![next],
                    Err(_) => m.epochs.push(next),
                }
            }
            Op::FailNextSync => {
                sim.fail_next_syncs(1);
                // Whichever fsync takes it may fail silently for the model
                // (a snapshot's, say): count it as failed from now.
                self.model.sync_failed = true;
            }
            Op::FillDisk { room } => sim.set_capacity(Some(sim.used_bytes() + room)),
            Op::FreeDisk => sim.set_capacity(None),
            Op::Crash { seed } => self.crash(seed)?,
            // After a failed fsync the page cache holds bytes the disk may
            // never get (Linux drops them on the floor): a restart that
            // replays them and syncs later writes on top can leave a hole
            // in the log. The replica stops on such a failure; the test
            // then cuts the power rather than restart on that page cache.
            Op::Restart if self.model.sync_failed => self.crash(0)?,
            Op::Restart => {
                self.wal = None;
                self.recover(true)?;
            }
        }
        Ok(())
    }

    fn crash(&mut self, seed: u64) -> Result<(), TestCaseError> {
        self.wal = None;
        self.fx.crash(seed);
        self.fx.sim_disk().fail_next_syncs(0);
        self.model.sync_failed = false;
        self.recover(false)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_crashes_keep_every_durable_entry_and_invent_none(
        ops in proptest::collection::vec(op(), 1..60),
        segment_bytes in 100u64..600,
        last_seed in any::<u64>(),
    ) {
        let fx = Fixture::sim();
        let mut run = Run {
            fx: &fx,
            path: fx.dir(),
            opts: WalOptions { segment_bytes, max_record_len: 1024 },
            wal: None,
            model: Model { epochs: vec![0], ..Model::default() },
        };
        run.recover(true)?;
        for op in &ops {
            run.step(op)?;
        }
        run.crash(last_seed)?;
    }
}
