//! The service over real sockets with a stand-in WAL writer: pipelined
//! writes, their sync deadlines, and connections that close mid-flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use semikv_protocol::{Epoch, Fence, Hello, LogIndex, ReplicaId};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::log::MemLog;
use crate::node::{LeaderSettings, Node, Recovered, Signals};
use crate::replica::Watches;

/// The test's own end of a connection, a client's: read without a budget.
type Conn = tokio_util::codec::Framed<TcpStream, semikv_protocol::MessageCodec>;
use crate::storage::store::Store;

/// Bound on every wait; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// A replica served in-process with a stand-in for the WAL writer that
/// makes everything durable at once while `durable` is on, and nothing
/// while it is off: writes can be held in flight at will.
struct Harness {
    replica: Arc<Replica>,
    addr: SocketAddr,
    durable: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let signals = Signals::new();
        let watches = Watches::of(&signals);
        let mut outbox = signals.outbox.subscribe();
        let node = Node::new(
            ReplicaId(1),
            "127.0.0.1:1".to_string(),
            Recovered {
                epoch: Epoch::from_raw(0),
                log: MemLog::new(LogIndex(0), Epoch::from_raw(0), Vec::new()),
                store: Store::default(),
                commit: LogIndex(0),
            },
            signals,
        );
        let config = Config::new(ReplicaId(1), dir.path().to_path_buf());
        let shutdown = CancellationToken::new();
        let replica = Arc::new(Replica::new(node, watches, config, shutdown));
        let durable = Arc::new(AtomicBool::new(true));
        {
            let replica = replica.clone();
            let durable = durable.clone();
            tokio::spawn(async move {
                while outbox.changed().await.is_ok() {
                    if durable.load(Ordering::SeqCst) {
                        flush(&replica);
                    }
                }
            });
        }
        tokio::spawn(crate::expiry::run(replica.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        {
            let replica = replica.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(replica.clone(), stream.into(), false));
                }
            });
        }
        Harness {
            replica,
            addr,
            durable,
            _dir: dir,
        }
    }

    fn promote(&self, epoch: u64, settings: LeaderSettings) {
        self.replica
            .with(|n| n.persist_and_promote(Epoch::from_raw(epoch.into()), settings))
            .unwrap();
    }

    fn hold_durability(&self) {
        self.durable.store(false, Ordering::SeqCst);
    }

    fn release_durability(&self) {
        self.durable.store(true, Ordering::SeqCst);
        flush(&self.replica);
    }

    fn waiting(&self) -> usize {
        self.replica.lock().waiting_writes()
    }

    /// Polls until `n` writes wait in the node.
    async fn until_waiting(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.waiting() != n {
            assert!(
                Instant::now() < deadline,
                "{} writes waiting, expected {n}",
                self.waiting()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn flush(replica: &Replica) {
    replica.with(|n| {
        let (_, generation, last) = n.take_outbox();
        n.on_durable(generation, last);
    });
}

async fn connect(addr: SocketAddr, role: Role) -> Conn {
    let stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut conn = Conn::new(stream, semikv_protocol::MessageCodec::default());
    let hello = semikv_protocol::handshake::hello(&mut conn, Hello::new(role, None));
    timeout(WAIT, hello).await.unwrap().unwrap();
    conn
}

fn set(id: u64) -> Message {
    Message::Request(Request {
        id: RequestId(id),
        op: Op::Set {
            key: Bytes::from(format!("k{id}")),
            value: Bytes::from_static(b"v"),
        },
    })
}

/// Sends `msgs` with one flush.
async fn send_all(conn: &mut Conn, msgs: Vec<Message>) {
    for msg in msgs {
        conn.feed(msg).await.unwrap();
    }
    SinkExt::<Message>::flush(conn).await.unwrap();
}

/// Reads `n` responses; panics on a repeated id.
async fn responses(conn: &mut Conn, n: usize) -> Vec<Response> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        match timeout(WAIT, conn.next()).await.unwrap() {
            Some(Ok(Message::Response(r))) => {
                assert!(seen.insert(r.id), "{:?} answered twice", r.id);
                out.push(r);
            }
            other => panic!("after {} responses: {other:?}", out.len()),
        }
    }
    out
}

/// The next message is the answer to a ping: nothing else (no second
/// answer to an earlier request) was queued before it.
async fn ping_is_next(conn: &mut Conn) {
    conn.send(Message::Request(Request {
        id: RequestId(u64::MAX),
        op: Op::Ping,
    }))
    .await
    .unwrap();
    match timeout(WAIT, conn.next()).await.unwrap() {
        Some(Ok(Message::Response(Response {
            id: RequestId(u64::MAX),
            reply: Reply::Pong,
        }))) => {}
        other => panic!("expected only the pong, got {other:?}"),
    }
}

const LONE: LeaderSettings = LeaderSettings {
    sync_replicas: 0,
    sync_timeout: Duration::from_secs(60),
    async_fallback: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_writes_are_each_answered_once() {
    let h = Harness::start().await;
    h.promote(1, LONE);
    let mut c = connect(h.addr, Role::Client).await;
    // More than MAX_IN_FLIGHT, so the connection has to stop reading and
    // resume as answers free room; some invalid ones mixed in.
    let total = 3 * MAX_IN_FLIGHT as u64;
    let msgs = (0..total)
        .map(|id| {
            if id % 97 == 0 {
                Message::Request(Request {
                    id: RequestId(id),
                    op: Op::Delete { key: Bytes::new() },
                })
            } else {
                set(id)
            }
        })
        .collect();
    send_all(&mut c, msgs).await;
    let mut indexes = HashSet::new();
    for r in responses(&mut c, total as usize).await {
        match r.reply {
            Reply::Written { index } if r.id.0 % 97 != 0 => {
                assert!(indexes.insert(index), "index {index} answered twice");
            }
            Reply::Error(ErrorReply::Invalid { .. }) if r.id.0 % 97 == 0 => {}
            other => panic!("{:?}: {other:?}", r.id),
        }
    }
    ping_is_next(&mut c).await;
    assert_eq!(h.waiting(), 0);
    let status = h.replica.lock().status();
    assert_eq!(status.commit_index, status.last_index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_when_the_leader_is_fenced_are_indeterminate() {
    let h = Harness::start().await;
    h.promote(1, LONE);
    h.hold_durability();
    let mut c = connect(h.addr, Role::Client).await;
    send_all(&mut c, (0..100).map(set).collect()).await;
    h.until_waiting(100).await;
    let mut admin = connect(h.addr, Role::Balancer).await;
    admin
        .send(Message::Request(Request {
            id: RequestId(1),
            op: Op::Fence(Fence {
                epoch: Epoch::from_raw(2),
            }),
        }))
        .await
        .unwrap();
    for r in responses(&mut c, 100).await {
        assert!(
            matches!(r.reply, Reply::Error(ErrorReply::Indeterminate { .. })),
            "{r:?}"
        );
    }
    assert!(matches!(
        responses(&mut admin, 1).await[0].reply,
        Reply::NodeReport(_)
    ));
    // Becoming durable now commits nothing and answers nothing again.
    h.release_durability();
    ping_is_next(&mut c).await;
    send_all(&mut c, vec![set(500)]).await;
    assert!(matches!(
        responses(&mut c, 1).await[0].reply,
        Reply::Error(ErrorReply::NotLeader { .. })
    ));
    assert_eq!(h.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_sync_timeout_are_each_answered_not_enough_replicas() {
    let h = Harness::start().await;
    h.promote(
        1,
        LeaderSettings {
            sync_replicas: 1,
            sync_timeout: Duration::from_millis(100),
            async_fallback: false,
        },
    );
    let mut c = connect(h.addr, Role::Client).await;
    send_all(&mut c, (0..50).map(set).collect()).await;
    for r in responses(&mut c, 50).await {
        assert_eq!(
            r.reply,
            Reply::Error(ErrorReply::NotEnoughReplicas {
                acked: 0,
                required: 1
            })
        );
    }
    ping_is_next(&mut c).await;
    assert_eq!(h.waiting(), 0);
    // A late acknowledgement commits the entries; nobody hears twice.
    let last = h.replica.lock().status().last_index;
    h.replica
        .with(|n| n.on_ack(ReplicaId(2), Epoch::from_raw(1), last));
    assert_eq!(h.replica.lock().status().commit_index, last);
    ping_is_next(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_async_fallback_writes_past_the_sync_timeout_are_written() {
    let h = Harness::start().await;
    h.promote(
        1,
        LeaderSettings {
            sync_replicas: 1,
            sync_timeout: Duration::from_millis(100),
            async_fallback: true,
        },
    );
    let mut c = connect(h.addr, Role::Client).await;
    send_all(&mut c, (0..50).map(set).collect()).await;
    let mut indexes = HashSet::new();
    for r in responses(&mut c, 50).await {
        let Reply::Written { index } = r.reply else {
            panic!("{r:?}");
        };
        assert!(indexes.insert(index));
    }
    ping_is_next(&mut c).await;
    assert_eq!(h.waiting(), 0);
    let status = h.replica.lock().status();
    assert!(indexes.iter().all(|i| *i <= status.commit_index));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_sync_timeout_is_honoured_behind_longer_ones() {
    let h = Harness::start().await;
    let slow = LeaderSettings {
        sync_replicas: 1,
        sync_timeout: Duration::from_secs(3600),
        async_fallback: false,
    };
    h.promote(1, slow);
    let mut c = connect(h.addr, Role::Client).await;
    send_all(&mut c, (0..10).map(set).collect()).await;
    h.until_waiting(10).await;
    // Re-promoted in the same epoch with a short timeout: later writes
    // expire first, while the earlier ones keep waiting.
    h.promote(
        1,
        LeaderSettings {
            sync_timeout: Duration::from_millis(50),
            ..slow
        },
    );
    send_all(&mut c, (10..20).map(set).collect()).await;
    for r in responses(&mut c, 10).await {
        assert!(r.id.0 >= 10, "{r:?}");
        assert!(matches!(
            r.reply,
            Reply::Error(ErrorReply::NotEnoughReplicas { .. })
        ));
    }
    assert_eq!(h.waiting(), 10);
    // The earlier ones commit once a follower acknowledges them.
    flush(&h.replica);
    let last = h.replica.lock().status().last_index;
    h.replica
        .with(|n| n.on_ack(ReplicaId(2), Epoch::from_raw(1), last));
    for r in responses(&mut c, 10).await {
        assert!(r.id.0 < 10, "{r:?}");
        assert!(matches!(r.reply, Reply::Written { .. }), "{r:?}");
    }
    ping_is_next(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_with_writes_in_flight_leaves_no_waiters() {
    let h = Harness::start().await;
    h.promote(1, LONE);
    h.hold_durability();
    let mut c = connect(h.addr, Role::Client).await;
    send_all(&mut c, (0..200).map(set).collect()).await;
    h.until_waiting(200).await;
    drop(c);
    // After the bounded drain the connection drops what it still waits
    // for.
    h.until_waiting(0).await;
    // The replica serves on, and the abandoned writes still commit.
    h.release_durability();
    let mut c = connect(h.addr, Role::Client).await;
    send_all(&mut c, vec![set(1000)]).await;
    let r = responses(&mut c, 1).await.remove(0);
    assert_eq!(r.id, RequestId(1000));
    assert!(matches!(r.reply, Reply::Written { index } if index == LogIndex(202)));
}

fn request(id: u64, op: Op) -> Message {
    Message::Request(Request {
        id: RequestId(id),
        op,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_evaluated_in_order_and_answered_with_outcomes() {
    use semikv_protocol::{Command, Cond, KeyTtl, TtlChange};
    let h = Harness::start().await;
    h.promote(1, LONE);
    let mut c = connect(h.addr, Role::Client).await;
    let key = Bytes::from_static(b"n");
    let incr = |id| {
        request(
            id,
            Op::Command(Command::IncrBy {
                key: key.clone(),
                by: 2,
            }),
        )
    };
    // Held in flight, so each increment reads the one before uncommitted.
    h.hold_durability();
    send_all(&mut c, (0..100).map(incr).collect()).await;
    h.until_waiting(100).await;
    h.release_durability();
    let mut answers = responses(&mut c, 100).await;
    answers.sort_by_key(|r| r.id);
    for r in answers {
        match r.reply {
            Reply::Outcome(o) => assert_eq!(o.int, 2 * (r.id.0 as i64 + 1), "{:?}", r.id),
            other => panic!("{:?}: {other:?}", r.id),
        }
    }
    let nx = Op::Command(Command::Set {
        key: key.clone(),
        value: Bytes::from_static(b"x"),
        cond: Cond::IfAbsent,
        ttl: TtlChange::AfterMs(60_000),
        get_old: true,
    });
    let empty = Op::Command(Command::Delete { keys: Vec::new() });
    send_all(
        &mut c,
        vec![
            request(200, nx),
            request(201, Op::Ttl { key: key.clone() }),
            request(202, empty),
            request(203, Op::Get { key: key.clone() }),
        ],
    )
    .await;
    let mut answers = responses(&mut c, 4).await;
    answers.sort_by_key(|r| r.id);
    let replies: Vec<Reply> = answers.into_iter().map(|r| r.reply).collect();
    match &replies[0] {
        Reply::Outcome(o) => {
            assert!(!o.applied);
            assert_eq!(o.value, Some(Bytes::from_static(b"200")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(replies[1], Reply::Ttl(KeyTtl::Persistent));
    assert!(matches!(
        replies[2],
        Reply::Error(ErrorReply::Invalid { .. })
    ));
    assert_eq!(replies[3], Reply::Value(Some(Bytes::from_static(b"200"))));
    ping_is_next(&mut c).await;
    assert_eq!(h.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_holds_a_session_read_until_its_first_commit() {
    let h = Harness::start().await;
    h.hold_durability();
    h.promote(1, LONE);
    let mut c = connect(h.addr, Role::Client).await;
    let read = Op::Read(semikv_protocol::Read {
        op: Box::new(Op::Get {
            key: Bytes::from_static(b"k"),
        }),
        level: Some(semikv_protocol::Consistency::Session),
        after: LogIndex(1),
    });
    send_all(&mut c, vec![request(1, read)]).await;
    // Well past what a follower waits for a position before it says
    // `Behind`: a leader has applied every position it acknowledged, or
    // will once its promotion commits, so it holds the read instead.
    tokio::time::sleep(SESSION_WAIT * 3).await;
    h.release_durability();
    let reply = responses(&mut c, 1).await.remove(0).reply;
    assert_eq!(
        reply,
        Reply::Read(semikv_protocol::ReadAnswer {
            reply: Box::new(Reply::Value(None)),
            index: LogIndex(1),
        })
    );
}
