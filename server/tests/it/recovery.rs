//! Start-up recovery of a replica from what a crash left on disk.

use crate::support::{Peer, Server};
use bytes::Bytes;
use semikv_protocol::{Entry, Epoch, EpochStart, LogIndex, Role, WriteOp};
use std::sync::Arc;

use semikv_server::storage::{self, snapshot::SnapshotMeta, store::Store, wal, DataDir, OsDisk};

fn set(index: u64, epoch: u64, key: &str) -> wal::Record {
    wal::Record::Entry(Entry {
        index: LogIndex(index),
        epoch: Epoch::from_raw(epoch.into()),
        op: WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        },
    })
}

/// A follower crashed after installing a leader's snapshot (epoch 2, index
/// 2) but before resetting its log, which still holds an uncommitted tail
/// of epoch 1 past the snapshot. It must start, without that tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_tail_behind_an_installed_snapshot_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    drop(storage::open(&DataDir::on_os(&data), wal::WalOptions::default()).unwrap());
    let (mut log, _) = wal::Wal::open(
        Arc::new(OsDisk),
        &data.join(storage::WAL_DIR),
        LogIndex(0),
        wal::WalOptions::default(),
    )
    .unwrap();
    log.append(&[
        set(1, 1, "a"),
        set(2, 1, "b"),
        set(3, 1, "stale"),
        set(4, 1, "stale2"),
    ])
    .unwrap();
    log.sync().unwrap();
    drop(log);
    let mut store = Store::default();
    store.apply(&WriteOp::Set {
        key: Bytes::from_static(b"snap"),
        value: Bytes::from_static(b"shot"),
    });
    let meta = SnapshotMeta {
        last_index: LogIndex(2),
        last_epoch: Epoch::from_raw(2),
        history: vec![EpochStart {
            epoch: Epoch::from_raw(2),
            start: LogIndex(1),
        }],
    };
    storage::snapshot::write(&DataDir::on_os(&data), &meta, &store).unwrap();

    let server = Server::start(1, &data, None).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    let status = admin.status().await;
    assert_eq!(status.last_index, LogIndex(2), "{status:?}");
    assert_eq!(status.last_epoch, Epoch::from_raw(2));
    admin.fence(3).await.unwrap();
    admin.promote(3, 0).await.unwrap();
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.get("snap").await, Some(Bytes::from_static(b"shot")));
    assert_eq!(c.get("stale").await, None);
    assert_eq!(
        c.set_ok("new", "1").await,
        LogIndex(4),
        "no-op at 3, then this"
    );
}

/// Corruption in the middle of the log stops start-up with an error naming
/// the file, instead of serving a silently shortened history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_log_corruption_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    drop(storage::open(&DataDir::on_os(&data), wal::WalOptions::default()).unwrap());
    let wal_dir = data.join(storage::WAL_DIR);
    let (mut log, _) = wal::Wal::open(
        Arc::new(OsDisk),
        &wal_dir,
        LogIndex(0),
        wal::WalOptions::default(),
    )
    .unwrap();
    log.append(&[set(1, 1, "a"), set(2, 1, "b"), set(3, 1, "c")])
        .unwrap();
    log.sync().unwrap();
    drop(log);
    let segment = std::fs::read_dir(&wal_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[12] ^= 0x40; // inside the first record's payload
    std::fs::write(&segment, bytes).unwrap();

    let server = Server::start(1, &data, None).await;
    let err = server.stop().await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(".wal"), "{message}");
    assert!(message.contains("corrupt at byte 0"), "{message}");
}
