//! A follower installing a leader's snapshot: it refuses, without touching
//! its data directory, a snapshot that is not what the leader announced or
//! that would roll back what it already committed, and a good one survives a
//! restart. The test plays the leader on a loopback socket.

use std::path::{Path, PathBuf};

use crate::support::{next, Conn, FakeLeader, Peer, Server};
use bytes::Bytes;
use futures::SinkExt;
use semikv_protocol::{
    Ack, Entries, Entry, Epoch, EpochStart, Follow, LogIndex, Message, NodeRole, Op, ReplicaId,
    Reply, Role, SnapshotChunk, SnapshotOffer, WriteOp,
};
use semikv_server::storage::{
    self, meta, snapshot, snapshot::SnapshotMeta, store::Store, wal, DataDir,
};

/// Id the fake leader claims.
const LEADER: u32 = 9;
/// Epoch the follower is told to follow at.
const EPOCH: u128 = 2;
/// The follower's commit index after recovery.
const COMMIT: u64 = 8;
/// Its own snapshot's index.
const OWN_SNAPSHOT: u64 = 5;

fn b(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn set(index: u64, epoch: u128, key: &str, value: &str) -> Entry {
    Entry {
        index: LogIndex(index),
        epoch: Epoch::from_raw(epoch),
        op: WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        },
    }
}

/// A data dir as a follower leaves it: epoch 1, entries 1..=8 all
/// committed, a snapshot at 5.
fn prepare_follower(data: &Path) {
    let data = &DataDir::on_os(data);
    let mut opened = storage::open(data, wal::WalOptions::default()).unwrap();
    meta::store_epoch(data, Epoch::from_raw(1)).unwrap();
    let mut store = Store::default();
    let mut records = Vec::new();
    for i in 1..=COMMIT {
        let entry = set(i, 1, &format!("k{i}"), "old");
        if i <= OWN_SNAPSHOT {
            store.apply(&entry.op);
        }
        records.push(wal::Record::Entry(entry));
    }
    records.push(wal::Record::Commit(LogIndex(COMMIT)));
    opened.wal.append(&records).unwrap();
    opened.wal.sync().unwrap();
    drop(opened);
    let meta = SnapshotMeta {
        last_index: LogIndex(OWN_SNAPSHOT),
        last_epoch: Epoch::from_raw(1),
        history: vec![EpochStart {
            epoch: Epoch::from_raw(1),
            start: LogIndex(1),
        }],
    };
    snapshot::write(data, &meta, &store).unwrap();
}

/// A snapshot's metadata at `index`, epoch 2 from index 7 on.
fn meta_at(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_epoch: Epoch::from_raw(2),
        history: vec![
            EpochStart {
                epoch: Epoch::from_raw(1),
                start: LogIndex(1),
            },
            EpochStart {
                epoch: Epoch::from_raw(2),
                start: LogIndex(7),
            },
        ],
    }
}

/// The bytes of a valid snapshot of `meta` holding `pairs` keys
/// `{prefix}{i}` (big enough values to need several chunks).
fn snapshot_bytes(meta: &SnapshotMeta, prefix: &str, pairs: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::default();
    for i in 0..pairs {
        store.insert(
            Bytes::from(format!("{prefix}{i}")),
            Bytes::from(vec![b'x'; 300]),
        );
    }
    let dir = DataDir::on_os(dir.path());
    snapshot::write(&dir, meta, &store).unwrap();
    snapshot::read_latest(&dir).unwrap().unwrap().1
}

/// Every file and directory under `dir`, with file contents, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
        for item in std::fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.push((rel, None));
                walk(root, &path, out);
            } else {
                out.push((rel, Some(std::fs::read(&path).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// One chunk of a snapshot stream: what the leader announces with it.
#[derive(Clone)]
struct Announce {
    epoch: u128,
    meta: SnapshotMeta,
}

/// Sends `bytes` in three chunks announcing `first` on the first one and
/// `rest` on the others, as a leader does.
async fn send_snapshot(conn: &mut Conn, bytes: &[u8], first: &Announce, rest: &Announce) {
    offer(conn, first, bytes.len() as u64).await;
    let bytes = Bytes::copy_from_slice(bytes);
    let step = bytes.len() / 3 + 1;
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + step).min(bytes.len());
        let a = if offset == 0 { first } else { rest };
        conn.send(Message::Snapshot(SnapshotChunk {
            epoch: Epoch::from_raw(a.epoch),
            last_index: a.meta.last_index,
            last_epoch: a.meta.last_epoch,
            history: if offset == 0 {
                a.meta.history.clone()
            } else {
                Vec::new()
            },
            offset: offset as u64,
            data: bytes.slice(offset..end),
            done: end == bytes.len(),
        }))
        .await
        .unwrap();
        offset = end;
    }
}

/// Announces a snapshot of `total_len` bytes, as a leader does before its
/// first chunk.
async fn offer(conn: &mut Conn, a: &Announce, total_len: u64) {
    conn.send(Message::SnapshotOffer(SnapshotOffer {
        epoch: Epoch::from_raw(a.epoch),
        last_index: a.meta.last_index,
        total_len,
    }))
    .await
    .unwrap();
}

/// Starts the prepared follower and points it at `leader`.
async fn start_follower(data: &Path, leader: &FakeLeader) -> (Server, Peer) {
    let server = Server::start(1, data, None).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    let status = admin.status().await;
    assert_eq!(status.commit_index, LogIndex(COMMIT), "{status:?}");
    admin.fence(EPOCH).await.unwrap();
    let reply = admin
        .request(Op::Follow(Follow {
            epoch: Epoch::from_raw(EPOCH),
            leader: ReplicaId(LEADER),
            leader_addr: leader.addr(),
        }))
        .await;
    assert!(matches!(reply, Reply::NodeReport(_)), "{reply:?}");
    (server, admin)
}

/// Streams each `(first, rest, bytes)` to the follower on its own
/// connection and insists the follower refuses it: it closes the stream and
/// subscribes again, and its data dir stays byte-for-byte what it was.
async fn assert_all_refused(
    data: &Path,
    leader: &FakeLeader,
    cases: &[(&str, Announce, Announce, Vec<u8>)],
) {
    let (mut conn, sub) = leader.accept().await;
    assert_eq!(sub.epoch, Epoch::from_raw(EPOCH));
    assert_eq!(sub.last_index, LogIndex(COMMIT));
    // The follower only waits for the leader now: its disk is at rest.
    let before = tree(data);
    for (what, first, rest, bytes) in cases {
        send_snapshot(&mut conn, bytes, first, rest).await;
        // It must drop the stream rather than ack or wait for entries.
        if let Some(msg) = next(&mut conn).await {
            panic!("{what}: follower kept the stream, sent {msg:?}");
        }
        assert!(tree(data) == before, "{what}: the data dir changed");
        let (again, sub) = leader.accept().await;
        assert_eq!(sub.last_index, LogIndex(COMMIT), "{what}");
        conn = again;
    }
    assert!(tree(data) == before, "the data dir changed");
}

/// After refusals, the follower still has (and after a restart still loads)
/// exactly its own state.
async fn assert_own_state(server: Server, data: &Path) {
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.get("k1").await, b("old"));
    assert_eq!(c.get("k8").await, b("old"));
    assert_eq!(c.get("new0").await, None);
    server.stop().await.unwrap();
    let server = Server::start(1, data, None).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    let status = admin.status().await;
    assert_eq!(status.commit_index, LogIndex(COMMIT), "{status:?}");
    assert_eq!(status.last_index, LogIndex(COMMIT), "{status:?}");
    let mut c = Peer::connect(server.addr, Role::Client).await;
    assert_eq!(c.get("k1").await, b("old"));
    assert_eq!(c.get("k8").await, b("old"));
    assert_eq!(c.get("new0").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_unlike_its_announcement_is_refused_and_the_disk_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    prepare_follower(&data);
    let leader = FakeLeader::bind(LEADER).await;
    let (server, _admin) = start_follower(&data, &leader).await;

    let announce = |epoch, meta| Announce { epoch, meta };
    let holds_50 = snapshot_bytes(&meta_at(50), "new", 40);
    let mut epoch_1_at_50 = meta_at(50);
    epoch_1_at_50.last_epoch = Epoch::from_raw(1);
    epoch_1_at_50.history.pop();
    let mut other_history = meta_at(50);
    other_history.history[1].start = LogIndex(30);
    let cases = [
        (
            "announced 100, holds 50",
            announce(EPOCH, meta_at(100)),
            announce(EPOCH, meta_at(100)),
            holds_50.clone(),
        ),
        (
            "announced epoch 2, holds epoch 1",
            announce(EPOCH, meta_at(50)),
            announce(EPOCH, meta_at(50)),
            snapshot_bytes(&epoch_1_at_50, "new", 40),
        ),
        (
            "announced another history",
            announce(EPOCH, other_history.clone()),
            announce(EPOCH, other_history),
            holds_50.clone(),
        ),
        (
            "first chunk says 100, later ones 50",
            announce(EPOCH, meta_at(100)),
            announce(EPOCH, meta_at(50)),
            holds_50.clone(),
        ),
        (
            "chunks of another leader epoch",
            announce(EPOCH + 1, meta_at(50)),
            announce(EPOCH + 1, meta_at(50)),
            holds_50.clone(),
        ),
        (
            "truncated",
            announce(EPOCH, meta_at(50)),
            announce(EPOCH, meta_at(50)),
            holds_50[..holds_50.len() - 3].to_vec(),
        ),
    ];
    assert_all_refused(&data, &leader, &cases).await;
    assert_own_state(server, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_below_the_commit_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    prepare_follower(&data);
    let leader = FakeLeader::bind(LEADER).await;
    let (server, mut admin) = start_follower(&data, &leader).await;

    let mut below_own_snapshot = meta_at(3);
    below_own_snapshot.last_epoch = Epoch::from_raw(1);
    below_own_snapshot.history.pop();
    let honest = |meta: SnapshotMeta| Announce { epoch: EPOCH, meta };
    let cases = [
        (
            "one below the commit index",
            honest(meta_at(COMMIT - 1)),
            honest(meta_at(COMMIT - 1)),
            snapshot_bytes(&meta_at(COMMIT - 1), "new", 40),
        ),
        (
            "below the follower's own snapshot",
            honest(below_own_snapshot.clone()),
            honest(below_own_snapshot.clone()),
            snapshot_bytes(&below_own_snapshot, "new", 40),
        ),
    ];
    assert_all_refused(&data, &leader, &cases).await;
    let status = admin.status().await;
    assert_eq!(status.role, NodeRole::Follower);
    assert_eq!(status.commit_index, LogIndex(COMMIT), "{status:?}");
    assert_own_state(server, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_snapshot_installs_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    prepare_follower(&data);
    let leader = FakeLeader::bind(LEADER).await;
    let (server, mut admin) = start_follower(&data, &leader).await;

    let (mut conn, _) = leader.accept().await;
    let good = Announce {
        epoch: EPOCH,
        meta: meta_at(50),
    };
    send_snapshot(
        &mut conn,
        &snapshot_bytes(&meta_at(50), "new", 40),
        &good,
        &good,
    )
    .await;
    conn.send(Message::Entries(Entries {
        epoch: Epoch::from_raw(EPOCH),
        prev_index: LogIndex(50),
        entries: vec![set(51, EPOCH, "after", "snap")],
        commit_index: LogIndex(51),
    }))
    .await
    .unwrap();
    // Acked means durable on the follower.
    loop {
        match next(&mut conn).await {
            Some(Message::Ack(Ack { match_index, .. })) if match_index >= LogIndex(51) => break,
            Some(Message::Ack(_)) => {}
            other => panic!("expected acks, got {other:?}"),
        }
    }
    admin
        .wait_status("applied after the snapshot", |s| {
            s.applied_index >= LogIndex(51)
        })
        .await;
    let check = |server: &Server| {
        let addr = server.addr;
        async move {
            let mut c = Peer::connect(addr, Role::Client).await;
            assert_eq!(c.get("new0").await, Some(Bytes::from(vec![b'x'; 300])));
            assert_eq!(c.get("new39").await, Some(Bytes::from(vec![b'x'; 300])));
            assert_eq!(c.get("after").await, b("snap"));
            // The snapshot replaced the old state entirely.
            assert_eq!(c.get("k1").await, None);
        }
    };
    check(&server).await;
    let snaps: Vec<_> = std::fs::read_dir(data.join(storage::SNAPSHOT_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snaps, vec!["snap-00000000000000000050.bin"]);
    drop(conn);
    server.stop().await.unwrap();

    let server = Server::start(1, &data, None).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    let status = admin.status().await;
    assert_eq!(status.last_index, LogIndex(51), "{status:?}");
    assert_eq!(status.commit_index, LogIndex(51), "{status:?}");
    assert_eq!(status.epoch, Epoch::from_raw(EPOCH));
    check(&server).await;
}

/// The most memory this process has held resident so far (`VmHWM`).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

/// The report: a peer streaming snapshot chunks without ever finishing made
/// a follower grow past 1.9 GB. Chunks now go to a staging file as they
/// arrive, so memory stays flat however long the stream; the file goes
/// with the stream, and the disk keeps `FREE_MARGIN` free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_that_never_ends_is_staged_on_disk_not_held_in_memory() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    prepare_follower(&data);
    let leader = FakeLeader::bind(LEADER).await;
    let (server, _admin) = start_follower(&data, &leader).await;
    let (mut conn, _sub) = leader.accept().await;
    let staging = data.join(storage::SNAPSHOT_DIR).join("receiving.tmp");
    let peak_before = peak_rss_bytes();
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let meta = meta_at(50);
    let announce = Announce {
        epoch: EPOCH,
        meta: meta.clone(),
    };
    // Announced as one byte more than is ever sent: the stream never ends.
    offer(&mut conn, &announce, (CHUNKS * CHUNK) as u64 + 1).await;
    for i in 0..CHUNKS {
        conn.send(Message::Snapshot(SnapshotChunk {
            epoch: Epoch::from_raw(EPOCH),
            last_index: meta.last_index,
            last_epoch: meta.last_epoch,
            history: if i == 0 {
                meta.history.clone()
            } else {
                Vec::new()
            },
            offset: (i * CHUNK) as u64,
            data: chunk.clone(),
            done: false,
        }))
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let want = ((CHUNKS - 1) * CHUNK) as u64;
    while std::fs::metadata(&staging).map_or(0, |m| m.len()) < want {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not stage the chunks"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let grew = peak_rss_bytes().saturating_sub(peak_before);
    assert!(
        grew < 48 << 20,
        "peak memory grew by {} MiB while {} MiB of snapshot streamed in",
        grew >> 20,
        (CHUNKS * CHUNK) >> 20
    );
    // The stream ends unfinished: the follower subscribes again, and the
    // staging file is gone.
    drop(conn);
    let (_again, sub) = leader.accept().await;
    assert_eq!(sub.last_index, LogIndex(COMMIT));
    assert!(!staging.exists(), "the staging file outlived its stream");
    server.stop().await.unwrap();
}

/// A leader announces a snapshot's size before streaming it: a stream that
/// sends more than it announced, an announcement larger than the disk, and
/// chunks with no announcement are each refused at once (the follower drops
/// the stream and subscribes again), and nothing is left staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_are_bounded_by_their_offer_and_the_free_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    prepare_follower(&data);
    let leader = FakeLeader::bind(LEADER).await;
    let (server, mut admin) = start_follower(&data, &leader).await;
    let (mut conn, _sub) = leader.accept().await;
    let staging = data.join(storage::SNAPSHOT_DIR).join("receiving.tmp");
    let announce = Announce {
        epoch: EPOCH,
        meta: meta_at(50),
    };
    let chunk = |offset: u64, len: usize| {
        Message::Snapshot(SnapshotChunk {
            epoch: Epoch::from_raw(EPOCH),
            last_index: announce.meta.last_index,
            last_epoch: announce.meta.last_epoch,
            history: announce.meta.history.clone(),
            offset,
            data: Bytes::from(vec![1u8; len]),
            done: false,
        })
    };

    // More bytes than offered.
    offer(&mut conn, &announce, 10).await;
    conn.send(chunk(0, 1 << 20)).await.unwrap();
    let (mut conn, sub) = leader.accept().await;
    assert_eq!(sub.last_index, LogIndex(COMMIT));
    assert!(!staging.exists(), "an overrun stream left its staging file");

    // An offer no disk here can hold: refused before a file is created.
    offer(&mut conn, &announce, u64::MAX / 2).await;
    let (mut conn, _) = leader.accept().await;
    assert!(!staging.exists());

    // Chunks with no offer before them.
    conn.send(chunk(0, 16)).await.unwrap();
    let (_conn, _) = leader.accept().await;
    assert!(!staging.exists());

    let status = admin.status().await;
    assert_eq!(status.commit_index, LogIndex(COMMIT), "{status:?}");
    assert_own_state(server, &data).await;
}
