//! An in-process fake semikv server for tests: speaks the real handshake and
//! codec on 127.0.0.1:0, keeps a map, and misbehaves on request for some
//! magic keys so that error paths can be tested without the real server.
//!
//! Magic keys: `get slow*` answers after a short delay; `get never` never
//! answers; `get hangup` closes the connection without answering;
//! `get hangup-once` does so only the first time it is asked on this server;
//! `set readonly ...` answers `NotLeader`. `FakeServer::forget_writes_after`
//! makes it lose acknowledged writes. `status` answers a fixed
//! two-replica `ClusterStatus`. Whole-server misbehaviour for load tests
//! (whose keys are not magic): `hang_up_at`, `unavailable_for`, `swallow`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use semikv_protocol::{
    ClusterStatus, CoordinatorId, Epoch, ErrorReply, LogIndex, Message, MessageCodec, NodeRole, Op,
    ReplicaId, ReplicaView, Reply, Request, Response, Welcome, WireError, PROTOCOL_VERSION,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

#[derive(Default)]
struct State {
    map: Mutex<BTreeMap<Bytes, Bytes>>,
    index: AtomicU64,
    connections: AtomicU64,
    hung_up_once: AtomicBool,
    /// Writes after this many are acknowledged but not stored (0: never).
    forget_after: AtomicU64,
    /// Requests received, on every connection.
    requests: AtomicU64,
    /// Sets received, on every connection.
    sets: AtomicU64,
    /// Every set whose number (from 1) is a multiple of this is carried out
    /// and then its connection closed without an answer (0: never).
    hang_up_every: AtomicU64,
    /// Requests up to this number are answered `Unavailable` (0: none).
    unavailable_for: AtomicU64,
    /// Never answer anything.
    swallow: AtomicBool,
    /// The level and position of the last consistent read received.
    last_read: Mutex<Option<(Option<semikv_protocol::Consistency>, LogIndex)>>,
}

/// A running fake server; it stops when dropped.
pub struct FakeServer {
    addr: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// A well-behaved fake (apart from its magic keys).
    pub async fn start() -> FakeServer {
        Self::start_with(false).await
    }

    /// A fake that rejects every handshake.
    pub async fn start_rejecting() -> FakeServer {
        Self::start_with(true).await
    }

    async fn start_with(reject: bool) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State::default());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve(stream, state.clone(), reject));
                }
            }
        });
        FakeServer { addr, state, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Makes the fake acknowledge but silently drop every write after the
    /// first `n`: a store that loses acknowledged writes.
    pub fn forget_writes_after(&self, n: u64) {
        self.state.forget_after.store(n, Ordering::SeqCst);
    }

    /// Carries out every `n`th set (counted over all connections) and then
    /// closes its connection without answering it: a server that dies after
    /// applying a write.
    pub fn hang_up_every(&self, n: u64) {
        self.state.hang_up_every.store(n, Ordering::SeqCst);
    }

    /// Answers the first `n` requests `Unavailable` with a 100 ms retry hint.
    pub fn unavailable_for(&self, n: u64) {
        self.state.unavailable_for.store(n, Ordering::SeqCst);
    }

    /// Makes the fake read every request and answer none.
    pub fn swallow(&self) {
        self.state.swallow.store(true, Ordering::SeqCst);
    }

    /// The level and position of the last consistent read received.
    #[allow(dead_code)] // Not every test binary that includes this reads it.
    pub fn last_read(&self) -> Option<(Option<semikv_protocol::Consistency>, LogIndex)> {
        *self.state.last_read.lock().unwrap()
    }

    /// Requests received so far, on every connection.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The value stored under `key`.
    pub fn value(&self, key: &[u8]) -> Option<Bytes> {
        self.state.map.lock().unwrap().get(key).cloned()
    }
}

async fn serve(stream: TcpStream, state: Arc<State>, reject: bool) {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, MessageCodec::default());
    let mut writer = FramedWrite::new(write, MessageCodec::default());
    let Some(Ok(Message::Hello(_))) = reader.next().await else {
        return;
    };
    if reject {
        let _ = writer
            .send(Message::Reject(WireError::UnsupportedVersion {
                got: PROTOCOL_VERSION,
                supported: PROTOCOL_VERSION + 1,
            }))
            .await;
        return;
    }
    let welcome = Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node: Some(ReplicaId(7)),
    });
    if writer.send(welcome).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Response>(64);
    let write_task = tokio::spawn(async move {
        while let Some(response) = rx.recv().await {
            if writer.send(Message::Response(response)).await.is_err() {
                return;
            }
        }
    });
    let mut handlers = tokio::task::JoinSet::new();
    while let Some(Ok(Message::Request(request))) = reader.next().await {
        let number = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if state.swallow.load(Ordering::SeqCst) {
            continue;
        }
        let unavailable = number <= state.unavailable_for.load(Ordering::SeqCst);
        // A consistent read is answered as the read it wraps, at the fake's
        // last index, which is past every position it handed out.
        let (op, consistent) = match request.op {
            Op::Read(read) => {
                *state.last_read.lock().unwrap() = Some((read.level, read.after));
                (*read.op, true)
            }
            op => (op, false),
        };
        let request = Request { id: request.id, op };
        let reply = match &request.op {
            _ if unavailable => Reply::Error(ErrorReply::Unavailable {
                retry_after_ms: 100,
                reason: "fake failover".to_string(),
            }),
            Op::Get { key } if key.starts_with(b"slow") => {
                let tx = tx.clone();
                let id = request.id;
                handlers.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = tx
                        .send(Response {
                            id,
                            reply: Reply::Value(None),
                        })
                        .await;
                });
                continue;
            }
            Op::Get { key } if &key[..] == b"never" => continue,
            Op::Get { key } if &key[..] == b"hangup" => break,
            Op::Get { key }
                if &key[..] == b"hangup-once"
                    && !state.hung_up_once.swap(true, Ordering::SeqCst) =>
            {
                break
            }
            Op::Get { key } => Reply::Value(state.map.lock().unwrap().get(key).cloned()),
            Op::Set { key, .. } if &key[..] == b"readonly" => Reply::Error(ErrorReply::NotLeader {
                leader: Some("127.0.0.1:1".to_string()),
            }),
            Op::Set { key, value } => {
                let index = state.index.fetch_add(1, Ordering::SeqCst) + 1;
                let forget_after = state.forget_after.load(Ordering::SeqCst);
                if forget_after == 0 || index <= forget_after {
                    state.map.lock().unwrap().insert(key.clone(), value.clone());
                }
                Reply::Written {
                    index: LogIndex(index),
                }
            }
            Op::Delete { key } => {
                state.map.lock().unwrap().remove(key);
                Reply::Written {
                    index: LogIndex(state.index.fetch_add(1, Ordering::SeqCst) + 1),
                }
            }
            Op::Ping => Reply::Pong,
            Op::Status => Reply::Cluster(sample_status()),
            Op::Promote(_) | Op::Follow(_) | Op::Fence(_) => Reply::Error(ErrorReply::Invalid {
                reason: "not on a client connection".to_string(),
            }),
            // Pages by offset in key order: enough to page a client's
            // `keys` through several answers.
            Op::Scan(scan) => {
                let map = state.map.lock().unwrap();
                let from = usize::try_from(scan.cursor).unwrap();
                let count = scan.count as usize;
                let keys = map
                    .keys()
                    .skip(from)
                    .take(count)
                    .filter(|k| {
                        scan.pattern
                            .as_ref()
                            .is_none_or(|p| semikv_protocol::glob::glob(p, k))
                    })
                    .cloned()
                    .collect();
                let next = from + count;
                Reply::Keys(semikv_protocol::KeyPage {
                    keys,
                    cursor: if next >= map.len() { 0 } else { next as u64 },
                })
            }
            Op::DbSize => Reply::KeyCount(semikv_protocol::KeyCount {
                keys: state.map.lock().unwrap().len() as u64,
                expiring: 0,
            }),
            Op::Read(_) => Reply::Error(ErrorReply::Invalid {
                reason: "a consistent read wraps a read, not another one".to_string(),
            }),
            Op::Command(_) | Op::Ttl { .. } => Reply::Error(ErrorReply::Invalid {
                reason: "the fake server does not evaluate commands".to_string(),
            }),
        };
        let reply = match reply {
            Reply::Error(_) => reply,
            reply if consistent => Reply::Read(semikv_protocol::ReadAnswer {
                reply: Box::new(reply),
                index: LogIndex(state.index.load(Ordering::SeqCst)),
            }),
            reply => reply,
        };
        let every = state.hang_up_every.load(Ordering::SeqCst);
        if !unavailable
            && matches!(request.op, Op::Set { .. })
            && every > 0
            && (state.sets.fetch_add(1, Ordering::SeqCst) + 1) % every == 0
        {
            break;
        }
        if tx
            .send(Response {
                id: request.id,
                reply,
            })
            .await
            .is_err()
        {
            break;
        }
    }
    write_task.abort();
}

/// The status the fake reports.
pub fn sample_status() -> ClusterStatus {
    ClusterStatus {
        leader: Some("127.0.0.1:9001".to_string()),
        epoch: Epoch::new(3, CoordinatorId(0xab)),
        replicas: vec![
            ReplicaView {
                id: Some(ReplicaId(1)),
                addr: "127.0.0.1:9001".to_string(),
                role: NodeRole::Leader,
                healthy: true,
                epoch: Epoch::new(3, CoordinatorId(0xab)),
                last_index: LogIndex(42),
                commit_index: LogIndex(42),
                applied_index: LogIndex(42),
                lag: 0,
            },
            ReplicaView {
                id: None,
                addr: "127.0.0.1:9002".to_string(),
                role: NodeRole::Follower,
                healthy: false,
                epoch: Epoch::new(2, CoordinatorId(0xab)),
                last_index: LogIndex(40),
                commit_index: LogIndex(39),
                applied_index: LogIndex(39),
                lag: 2,
            },
        ],
    }
}
