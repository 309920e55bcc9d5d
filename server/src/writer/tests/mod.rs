//! The writer's tests: the core's decisions step by step on a paused clock
//! ([`core`]), and both drivers end to end against a replica's node
//! ([`drivers`]), each scenario run once per driver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod core;
mod drivers;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::{Epoch, ErrorReply, LogIndex, ReplicaId, Reply, RequestId, WriteOp};
use tokio::sync::mpsc;

use crate::log::MemLog;
use crate::node::{Completion, LeaderSettings, Node, Recovered, Signals, WriteDone};
use crate::storage::wal::{Wal, WalOptions};
use crate::storage::{self, DataDir, WAL_DIR};

/// Bound on every wait; generous because CI has 2 cores.
const WAIT: Duration = Duration::from_secs(30);

/// A fresh data directory's node, leading epoch 1 alone (a write commits
/// once durable), and its WAL. The no-op of the promotion is queued.
fn lone_leader(dir: &Path, signals: Signals) -> (Node, Wal) {
    let opened = storage::open(&DataDir::on_os(dir), WalOptions::default()).unwrap();
    let mut node = Node::new(
        ReplicaId(1),
        "127.0.0.1:1".to_string(),
        Recovered {
            epoch: opened.epoch,
            log: MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new()),
            store: opened.store,
            commit: opened.commit_index,
        },
        signals,
    );
    node.persist_and_promote(
        Epoch::from_raw(1),
        LeaderSettings {
            sync_replicas: 0,
            sync_timeout: Duration::from_secs(1),
            async_fallback: false,
        },
    )
    .unwrap();
    (node, opened.wal)
}

/// Writes what the node queued straight to `wal` and tells the node, as
/// the writer would: a segment exists afterwards, for faults to replace.
fn write_queued(node: &mut Node, wal: &mut Wal) {
    let (cmds, generation, last) = node.take_outbox();
    for cmd in cmds {
        match cmd {
            crate::node::WalCmd::Append(records) => wal.append(&records).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }
    wal.sync().unwrap();
    node.on_durable(generation, last);
}

/// Receives one write's answer, as the connection's queue would.
#[derive(Debug)]
struct Answer(mpsc::Receiver<WriteDone>);

impl Answer {
    /// Waits for the answer (virtual time under a paused clock).
    async fn take(&mut self) -> Result<LogIndex, ErrorReply> {
        let done = tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("no answer in time")
            .expect("the node dropped the write unanswered");
        match done.response.reply {
            Reply::Written { index } => Ok(index),
            Reply::Error(e) => Err(e),
            other => panic!("a write answered {other:?}"),
        }
    }

    /// The answer, if it came.
    fn try_take(&mut self) -> Option<Result<LogIndex, ErrorReply>> {
        self.0
            .try_recv()
            .ok()
            .map(|done| match done.response.reply {
                Reply::Written { index } => Ok(index),
                Reply::Error(e) => Err(e),
                other => panic!("a write answered {other:?}"),
            })
    }
}

/// Proposes setting `key`, with a completion queue of its own.
fn propose(node: &mut Node, key: &str) -> Result<Answer, ErrorReply> {
    let (to, rx) = mpsc::channel(1);
    node.propose(
        WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        },
        Completion {
            to,
            id: RequestId(1),
        },
        Instant::now(),
    )?;
    Ok(Answer(rx))
}

/// The segment files of the WAL in `data_dir`.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join(WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A handle that fails every write with ENOSPC, as a full disk does.
fn full_disk() -> File {
    OpenOptions::new()
        .append(true)
        .open("/dev/full")
        .expect("this test needs /dev/full (Linux)")
}

/// A handle that fails every write with EBADF: a failure that is not a
/// full disk.
fn failing_disk(data_dir: &Path) -> File {
    File::open(segments(data_dir).last().unwrap()).unwrap()
}

/// The keys of the entries a reopen of `data_dir` recovers, in log order
/// (the promotion's no-op as `-`).
fn recovered_keys(data_dir: &Path) -> Vec<String> {
    storage::open(&DataDir::on_os(data_dir), WalOptions::default())
        .unwrap()
        .entries
        .iter()
        .map(|e| match &e.op {
            WriteOp::Set { key, .. } => String::from_utf8_lossy(key).into_owned(),
            _ => "-".to_string(),
        })
        .collect()
}
