//! The state machine's unit tests, driven through `Node`'s methods; the
//! helpers shared by the files of this directory.

use super::*;
use tokio::sync::mpsc;

const SETTINGS: LeaderSettings = LeaderSettings {
    sync_replicas: 1,
    sync_timeout: Duration::from_secs(1),
    async_fallback: false,
};

/// Replica 1 leading epoch 1 with async fallback on.
fn fallback_leader() -> Node {
    let mut n = fresh(1);
    n.persist_and_promote(
        Epoch::from_raw(1),
        LeaderSettings {
            async_fallback: true,
            ..SETTINGS
        },
    )
    .unwrap();
    n
}

fn fresh(id: u32) -> Node {
    Node::new(
        ReplicaId(id),
        format!("127.0.0.1:{}", 9000 + id),
        Recovered {
            epoch: Epoch::from_raw(0),
            log: MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new()),
            store: Store::default(),
            commit: LogIndex(0),
        },
        Signals::new(),
    )
}

fn set(key: &str, value: &str) -> WriteOp {
    WriteOp::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn entry(index: u64, epoch: u64, op: WriteOp) -> Entry {
    Entry {
        index: LogIndex(index),
        epoch: Epoch::from_raw(epoch.into()),
        op,
    }
}

/// Receives one write's answer, as the connection's queue would.
#[derive(Debug)]
struct Waiter(mpsc::Receiver<WriteDone>);

impl Waiter {
    fn try_recv(&mut self) -> Result<Result<LogIndex, ErrorReply>, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|done| match done.response.reply {
            Reply::Written { index } => Ok(index),
            Reply::Error(e) => Err(e),
            other => panic!("a write answered {other:?}"),
        })
    }
}

/// Proposes `op` with a completion queue of its own.
fn propose(n: &mut Node, op: WriteOp) -> Result<(LogIndex, Waiter), ErrorReply> {
    let (to, rx) = mpsc::channel(1);
    let proposed = n.propose(
        op,
        Completion {
            to,
            id: RequestId(7),
        },
        Instant::now(),
    )?;
    Ok((proposed.ticket.index, Waiter(rx)))
}

/// Plays a consistent leader's `StreamFrom`: the prefix's epoch as this
/// log has it, no checksum.
fn stream_from(n: &mut Node, gen: u64, epoch: u128, prefix: u64) -> Result<(), StreamError> {
    let prefix_epoch = n.log.epoch_at(LogIndex(prefix)).unwrap_or_default();
    n.on_stream_from(
        gen,
        Epoch::from_raw(epoch),
        LogIndex(prefix),
        prefix_epoch,
        None,
    )
}

/// Plays the writer thread: everything queued becomes durable.
fn flush(node: &mut Node) -> Vec<WalCmd> {
    let (cmds, generation, last) = node.take_outbox();
    node.on_durable(generation, last);
    cmds
}

fn value(node: &Node, key: &str) -> Option<Bytes> {
    node.store.get(key.as_bytes())
}

/// Replica 2 following replica 1 at epoch 1, its stream open from index 0;
/// with its role generation.
fn streaming_follower() -> (Node, u64) {
    let mut n = fresh(2);
    n.persist_and_follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
        .unwrap();
    let gen = n.role_gen;
    stream_from(&mut n, gen, 1, 0).unwrap();
    (n, gen)
}

/// A leader at epoch 1 that needs no follower acknowledgement.
fn lone_leader() -> Node {
    let mut n = fresh(1);
    n.persist_and_promote(
        Epoch::from_raw(1),
        LeaderSettings {
            sync_replicas: 0,
            ..SETTINGS
        },
    )
    .unwrap();
    n
}

mod commands;
mod commit;
mod epochs;
mod follower;
mod memory;
mod reads;
mod snapshot;
mod waiters;
