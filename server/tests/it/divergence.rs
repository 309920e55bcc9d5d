//! A follower whose log breaks log matching with its leader's stops instead
//! of merging: it truncates nothing, answers every request `Diverged`, and
//! refuses to start on that data directory again until an operator acts.
//! The test plays the leader on a loopback socket and hands the follower a
//! stream start whose entry at the common prefix differs from its own (what
//! two leaders of one epoch would leave behind).

use crate::support::{next, FakeLeader, Peer, Server};
use bytes::Bytes;
use futures::SinkExt;
use semikv_protocol::{
    Entry, Epoch, ErrorReply, Follow, LogIndex, Message, Op, ReplicaId, Reply, Role, StreamFrom,
    WriteOp,
};
use semikv_server::storage::{self, meta, wal, DataDir};

const LEADER: u32 = 9;

fn set(index: u64, epoch: u128, value: &str) -> Entry {
    Entry {
        index: LogIndex(index),
        epoch: Epoch::from_raw(epoch),
        op: WriteOp::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::copy_from_slice(value.as_bytes()),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_finds_another_entry_at_the_prefix_stops_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("replica-1");
    // Its log: entries 1..=4 of epoch 1, committed up to 2.
    {
        let mut opened = storage::open(&DataDir::on_os(&data), wal::WalOptions::default()).unwrap();
        meta::store_epoch(&DataDir::on_os(&data), Epoch::from_raw(1)).unwrap();
        let mut records: Vec<wal::Record> = (1..=4)
            .map(|i| wal::Record::Entry(set(i, 1, &format!("ours-{i}"))))
            .collect();
        records.push(wal::Record::Commit(LogIndex(2)));
        opened.wal.append(&records).unwrap();
        opened.wal.sync().unwrap();
    }
    let server = Server::start(1, &data, None).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    let leader = FakeLeader::bind(LEADER).await;
    admin.fence(2).await.unwrap();
    let reply = admin
        .request(Op::Follow(Follow {
            epoch: Epoch::from_raw(2),
            leader: ReplicaId(LEADER),
            leader_addr: leader.addr(),
        }))
        .await;
    assert!(matches!(reply, Reply::NodeReport(_)), "{reply:?}");

    // The leader says the logs agree up to 3, where its entry of epoch 1
    // holds another value than the follower's.
    let (mut conn, sub) = leader.accept().await;
    assert_eq!(sub.last_index, LogIndex(4));
    let theirs = set(3, 1, "theirs-3");
    conn.send(Message::StreamFrom(StreamFrom {
        epoch: Epoch::from_raw(2),
        prefix: LogIndex(3),
        prefix_epoch: Epoch::from_raw(1),
        prefix_crc: theirs.checksum(),
    }))
    .await
    .unwrap();
    assert_eq!(
        next(&mut conn).await,
        None,
        "the follower must hang up, not ack"
    );

    // It serves nothing now, and says why.
    let status = admin.request(Op::Status).await;
    let Reply::Error(ErrorReply::Diverged { reason }) = status else {
        panic!("status answered {status:?}");
    };
    assert!(reason.contains("index 3"), "{reason}");
    let mut client = Peer::connect(server.addr, Role::Client).await;
    let read = client
        .request(Op::Get {
            key: Bytes::from_static(b"k"),
        })
        .await;
    assert!(
        matches!(read, Reply::Error(ErrorReply::Diverged { .. })),
        "{read:?}"
    );
    let follow_again = admin
        .request(Op::Follow(Follow {
            epoch: Epoch::from_raw(3),
            leader: ReplicaId(LEADER),
            leader_addr: leader.addr(),
        }))
        .await;
    assert!(
        matches!(follow_again, Reply::Error(ErrorReply::Diverged { .. })),
        "{follow_again:?}"
    );

    // Nothing was truncated, and a restart does not serve that log again.
    drop(admin);
    drop(client);
    server.stop().await.unwrap();
    let again = Server::start(1, &data, None).await;
    let refused = again.stop().await.unwrap_err();
    let text = format!("{refused:#}");
    assert!(
        text.contains("diverged") && text.contains("index 3"),
        "{text}"
    );
    std::fs::remove_file(data.join(meta::DIVERGED_FILE)).unwrap();
    let opened = storage::open(&DataDir::on_os(&data), wal::WalOptions::default()).unwrap();
    assert_eq!(
        opened.entries.len(),
        4,
        "the follower's entries are all kept"
    );
}
