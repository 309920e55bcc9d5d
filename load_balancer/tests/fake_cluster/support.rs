//! The fakes and the harness every area of these tests shares: in-process
//! fake replicas, a balancer on a free port, a client, and waits.

pub(crate) use std::collections::HashMap;
pub(crate) use std::net::SocketAddr;
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use std::time::Duration;

pub(crate) use bytes::Bytes;
pub(crate) use futures::{SinkExt, StreamExt};
pub(crate) use semikv_lb::group::link::{ForwardWrite, ReplicaLink};
pub(crate) use semikv_lb::request::{Answer, AnswerSink, ClientPort, Tag};
pub(crate) use semikv_lb::Config;
pub(crate) use semikv_protocol::{
    CoordinatorId, Epoch, ErrorReply, FollowerProgress, Hello, KeyTtl, LogIndex, Message,
    MessageCodec, NodeRole, NodeStatus, Op, Outcome, ReplicaId, Reply, Request, RequestId,
    Response, Role, Welcome, WireError, PROTOCOL_VERSION,
};
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tokio::net::{TcpListener, TcpStream};
pub(crate) use tokio::time::{timeout, Instant};
pub(crate) use tokio_util::codec::Framed;
pub(crate) use tokio_util::sync::CancellationToken;

pub(crate) const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fakes

#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) id: u32,
    pub(crate) role: Option<NodeRole>,
    pub(crate) epoch: Epoch,
    pub(crate) last_epoch: Epoch,
    pub(crate) last_index: u64,
    pub(crate) leader_addr: Option<String>,
    pub(crate) map: HashMap<Bytes, Bytes>,
    pub(crate) hang_writes: bool,
    /// Reads are taken but never answered.
    pub(crate) hang_reads: bool,
    /// Reads are answered only once this is cleared again.
    pub(crate) hold_reads: bool,
    /// A set stops its connection: nothing more is read from it (a replica
    /// busy with a deep pipeline, as seen by what queues behind it).
    pub(crate) wedge_on_set: bool,
    pub(crate) mute: bool,
    pub(crate) statuses: u64,
    pub(crate) sets_seen: u64,
    pub(crate) gets_served: u64,
    pub(crate) promotes: Vec<(u64, u32)>,
    pub(crate) fences: u64,
    /// Followers a leader reports connected in its status; `None`: every
    /// other fake of a test (up to [`OTHER_FAKES`]), so the balancer's stall
    /// rule leaves it alone.
    pub(crate) connected_followers: Option<usize>,
    /// Answers writes `NotLeader` while its status still says leader (a
    /// leader that stepped down between two health checks).
    pub(crate) refuse_writes: bool,
    /// Once this many sets were seen, the connection a set arrives on
    /// closes (unanswered), while the fake itself stays up.
    pub(crate) hang_up_at_sets: Option<u64>,
}

/// The coordinator that minted the epochs fakes start at (an earlier
/// balancer); tests speak of epochs by their term.
pub(crate) const PAST: CoordinatorId = CoordinatorId(0xe0);

/// The most other fakes any test runs next to one fake.
pub(crate) const OTHER_FAKES: usize = 2;

impl FakeState {
    pub(crate) fn status(&self) -> NodeStatus {
        NodeStatus {
            id: ReplicaId(self.id),
            role: self.role.unwrap_or(NodeRole::Idle),
            epoch: self.epoch,
            last_index: LogIndex(self.last_index),
            last_epoch: self.last_epoch,
            commit_index: LogIndex(self.last_index),
            applied_index: LogIndex(self.last_index),
            leader: self.leader_addr.clone(),
            followers: (0..self.connected_followers.unwrap_or(OTHER_FAKES))
                .map(|i| FollowerProgress {
                    id: ReplicaId(1000 + u32::try_from(i).unwrap()),
                    match_index: LogIndex(self.last_index),
                    connected: true,
                })
                .collect(),
        }
    }

    pub(crate) fn stale(&self, epoch: Epoch) -> Option<Reply> {
        (epoch < self.epoch).then(|| {
            Reply::Error(ErrorReply::StaleEpoch {
                got: epoch,
                current: self.epoch,
            })
        })
    }

    /// `None`: never answer (a write hanging on a leader about to die).
    pub(crate) fn apply(&mut self, op: Op) -> Option<Reply> {
        let role = self.role.unwrap_or(NodeRole::Idle);
        Some(match op {
            Op::Status => {
                self.statuses += 1;
                Reply::Node(self.status())
            }
            Op::Ping => Reply::Pong,
            Op::Fence(f) => {
                if let Some(r) = self.stale(f.epoch) {
                    return Some(r);
                }
                self.fences += 1;
                self.epoch = f.epoch;
                if role == NodeRole::Leader {
                    self.role = Some(NodeRole::Follower);
                }
                Reply::Node(self.status())
            }
            Op::Promote(p) => {
                if let Some(r) = self.stale(p.epoch) {
                    return Some(r);
                }
                self.promotes.push((p.epoch.term(), p.sync_replicas));
                self.epoch = p.epoch;
                self.role = Some(NodeRole::Leader);
                self.leader_addr = None;
                self.last_index += 1;
                self.last_epoch = p.epoch;
                Reply::Node(self.status())
            }
            Op::Follow(f) => {
                if let Some(r) = self.stale(f.epoch) {
                    return Some(r);
                }
                self.epoch = f.epoch;
                self.role = Some(NodeRole::Follower);
                self.leader_addr = Some(f.leader_addr);
                Reply::Node(self.status())
            }
            Op::Set { key, value } => {
                self.sets_seen += 1;
                if role != NodeRole::Leader || self.refuse_writes {
                    return Some(Reply::Error(ErrorReply::NotLeader { leader: None }));
                }
                if self.hang_writes {
                    return None;
                }
                self.map.insert(key, value);
                self.last_index += 1;
                self.last_epoch = self.epoch;
                Reply::Written {
                    index: LogIndex(self.last_index),
                }
            }
            Op::Delete { key } => {
                if role != NodeRole::Leader || self.refuse_writes {
                    return Some(Reply::Error(ErrorReply::NotLeader { leader: None }));
                }
                self.map.remove(&key);
                self.last_index += 1;
                Reply::Written {
                    index: LogIndex(self.last_index),
                }
            }
            Op::Get { key } => {
                self.gets_served += 1;
                if self.hang_reads {
                    return None;
                }
                Reply::Value(self.map.get(&key).cloned())
            }
            // Commands are not evaluated here: only where they are routed
            // matters (to the leader, like any write).
            Op::Command(_) => {
                if role != NodeRole::Leader || self.refuse_writes {
                    return Some(Reply::Error(ErrorReply::NotLeader { leader: None }));
                }
                self.last_index += 1;
                self.last_epoch = self.epoch;
                Reply::Outcome(Outcome {
                    index: LogIndex(self.last_index),
                    applied: true,
                    value: None,
                    int: 0,
                })
            }
            Op::Ttl { key } => {
                self.gets_served += 1;
                Reply::Ttl(if self.map.contains_key(&key) {
                    KeyTtl::Persistent
                } else {
                    KeyTtl::NoKey
                })
            }
            // One page holds every key: the door's paging is tested
            // against real replicas.
            Op::Scan(scan) => {
                self.gets_served += 1;
                let mut keys: Vec<Bytes> = self
                    .map
                    .keys()
                    .filter(|k| {
                        scan.pattern
                            .as_ref()
                            .is_none_or(|p| semikv_protocol::glob::glob(p, k))
                    })
                    .cloned()
                    .collect();
                keys.sort();
                Reply::Keys(semikv_protocol::KeyPage { keys, cursor: 0 })
            }
            Op::DbSize => {
                self.gets_served += 1;
                Reply::KeyCount(semikv_protocol::KeyCount {
                    keys: self.map.len() as u64,
                    expiring: 0,
                })
            }
            // A fake has applied everything it holds: it answers at its
            // last index, or says it is behind a later position.
            Op::Read(read) => {
                let index = LogIndex(self.last_index);
                if read.after > index {
                    return Some(Reply::Error(ErrorReply::Behind {
                        applied: index,
                        wanted: read.after,
                    }));
                }
                let reply = self.apply(*read.op)?;
                Reply::Read(semikv_protocol::ReadAnswer {
                    reply: Box::new(reply),
                    index,
                })
            }
        })
    }
}

/// A fake replica: a tiny state machine behind the real protocol.
pub(crate) struct Fake {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<Mutex<FakeState>>,
    pub(crate) kill: CancellationToken,
}

impl Fake {
    pub(crate) async fn start(id: u32, role: NodeRole, epoch: u64, last_index: u64) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = FakeState {
            id,
            role: Some(role),
            epoch: Epoch::new(epoch, PAST),
            last_epoch: Epoch::new(epoch, PAST),
            last_index,
            ..FakeState::default()
        };
        Fake::serve(listener, Arc::new(Mutex::new(state)))
    }

    /// Restarts a killed fake on its old address with `state`.
    pub(crate) async fn restart(addr: SocketAddr, state: FakeState) -> Fake {
        let listener = TcpListener::bind(addr).await.unwrap();
        Fake::serve(listener, Arc::new(Mutex::new(state)))
    }

    pub(crate) fn serve(listener: TcpListener, state: Arc<Mutex<FakeState>>) -> Fake {
        let addr = listener.local_addr().unwrap();
        let kill = CancellationToken::new();
        let (st, k) = (state.clone(), kill.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = k.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { break };
                        tokio::spawn(fake_conn(stream, st.clone(), k.clone()));
                    }
                }
            }
        });
        Fake { addr, state, kill }
    }

    /// Like kill -9: the listener and every connection close at once.
    pub(crate) fn kill(&self) {
        self.kill.cancel();
    }

    pub(crate) fn s(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

pub(crate) async fn fake_conn(
    stream: TcpStream,
    state: Arc<Mutex<FakeState>>,
    kill: CancellationToken,
) {
    let mut framed = Framed::new(stream, MessageCodec::default());
    let id = state.lock().unwrap().id;
    let hello = tokio::select! { _ = kill.cancelled() => return, m = framed.next() => m };
    match hello {
        Some(Ok(Message::Hello(h))) if h.role == Role::Balancer => {}
        _ => return,
    }
    let welcome = Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node: Some(ReplicaId(id)),
    });
    if framed.send(welcome).await.is_err() {
        return;
    }
    // Answers to reads held back while `hold_reads` is set.
    let mut held: Vec<Response> = Vec::new();
    loop {
        let msg = tokio::select! {
            _ = kill.cancelled() => return,
            // Polls the knob: only tests that hold reads ever get here.
            _ = tokio::time::sleep(Duration::from_millis(5)), if !held.is_empty() => {
                if !state.lock().unwrap().hold_reads {
                    for response in held.drain(..) {
                        if framed.feed(Message::Response(response)).await.is_err() {
                            return;
                        }
                    }
                    if SinkExt::<Message>::flush(&mut framed).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            m = framed.next() => m,
        };
        let Some(Ok(Message::Request(Request { id, op }))) = msg else {
            return;
        };
        let is_set = matches!(op, Op::Set { .. });
        let is_get = matches!(op, Op::Get { .. });
        let (reply, wedge, hang_up, hold) = {
            let mut s = state.lock().unwrap();
            let reply = if s.mute { None } else { s.apply(op) };
            let hang_up = is_set && s.hang_up_at_sets.is_some_and(|n| s.sets_seen >= n);
            (
                reply,
                is_set && s.wedge_on_set,
                hang_up,
                is_get && s.hold_reads,
            )
        };
        if wedge {
            kill.cancelled().await;
            return;
        }
        if hang_up {
            return;
        }
        if let Some(reply) = reply {
            if hold {
                held.push(Response { id, reply });
                continue;
            }
            if framed
                .send(Message::Response(Response { id, reply }))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------- harness

pub(crate) struct Balancer {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Balancer {
    pub(crate) async fn start(config: Config) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(semikv_lb::run(config, listener, shutdown.clone()));
        Balancer {
            addr,
            shutdown,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        timeout(T, self.task).await.unwrap().unwrap().unwrap();
    }
}

pub(crate) fn config(fakes: &[&Fake]) -> Config {
    let mut c = Config::new(fakes.iter().map(|f| f.addr.to_string()).collect());
    c.heartbeat = Duration::from_millis(20);
    c.down_after = 3;
    // Fakes do not replicate: a session's reads would all be behind on
    // every follower. Tests of the levels choose theirs.
    c.read_consistency = semikv_protocol::Consistency::Stale;
    c.derive_waits();
    c
}

pub(crate) struct Client {
    pub(crate) framed: Framed<TcpStream, MessageCodec>,
    pub(crate) next: u64,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = timeout(T, TcpStream::connect(addr)).await.unwrap().unwrap();
        let mut framed = Framed::new(stream, MessageCodec::default());
        framed
            .send(Message::Hello(Hello::new(Role::Client, None)))
            .await
            .unwrap();
        match timeout(T, framed.next()).await.unwrap() {
            Some(Ok(Message::Welcome(w))) => assert_eq!(w.node, None),
            other => panic!("no welcome: {other:?}"),
        }
        Client { framed, next: 1 }
    }

    pub(crate) async fn send(&mut self, op: Op) -> RequestId {
        let id = RequestId(self.next);
        self.next += 1;
        timeout(T, self.framed.send(Message::Request(Request { id, op })))
            .await
            .unwrap()
            .unwrap();
        id
    }

    /// Sends `ops` in one write, as a pipelining client's burst.
    pub(crate) async fn send_burst(&mut self, ops: Vec<Op>) -> Vec<RequestId> {
        let mut ids = Vec::new();
        for op in ops {
            let id = RequestId(self.next);
            self.next += 1;
            self.framed
                .feed(Message::Request(Request { id, op }))
                .await
                .unwrap();
            ids.push(id);
        }
        timeout(T, SinkExt::<Message>::flush(&mut self.framed))
            .await
            .unwrap()
            .unwrap();
        ids
    }

    pub(crate) async fn recv(&mut self) -> Response {
        match timeout(T, self.framed.next()).await.unwrap() {
            Some(Ok(Message::Response(r))) => r,
            other => panic!("expected a response: {other:?}"),
        }
    }

    /// The ids of the next `n` responses, each of which must be a value.
    pub(crate) async fn values(&mut self, n: usize) -> Vec<RequestId> {
        let mut got = Vec::new();
        for _ in 0..n {
            let r = self.recv().await;
            assert!(matches!(r.reply, Reply::Value(_)), "{r:?}");
            got.push(r.id);
        }
        got
    }

    pub(crate) async fn call(&mut self, op: Op) -> Reply {
        let id = self.send(op).await;
        let r = self.recv().await;
        assert_eq!(r.id, id);
        r.reply
    }

    pub(crate) async fn set(&mut self, k: &str, v: &str) -> Reply {
        self.call(Op::Set {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .await
    }

    pub(crate) async fn get(&mut self, k: &str) -> Reply {
        self.call(Op::Get {
            key: Bytes::copy_from_slice(k.as_bytes()),
        })
        .await
    }
}

/// Polls `cond` every few milliseconds until it holds or 10 s pass.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sets until one write is acknowledged (bounded).
pub(crate) async fn set_until_written(c: &mut Client, k: &str, v: &str) -> Reply {
    let deadline = Instant::now() + T;
    loop {
        let reply = c.set(k, v).await;
        if matches!(reply, Reply::Written { .. }) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "writes never succeeded: {reply:?}"
        );
    }
}

pub(crate) fn is_leader_at(f: &Fake, epoch: u64) -> bool {
    let s = f.s();
    s.role == Some(NodeRole::Leader) && s.epoch.term() == epoch
}

pub(crate) fn follows(f: &Fake, leader: &Fake, epoch: u64) -> bool {
    let s = f.s();
    s.role == Some(NodeRole::Follower)
        && s.epoch.term() == epoch
        && s.leader_addr.as_deref() == Some(leader.addr.to_string().as_str())
}

/// Two fresh fakes behind a balancer (its config as `tune` leaves it), once
/// the first leads and the second follows it.
pub(crate) async fn leader_and_follower(tune: impl FnOnce(&mut Config)) -> (Fake, Fake, Balancer) {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let b = Fake::start(2, NodeRole::Idle, 0, 0).await;
    let mut c = config(&[&a, &b]);
    tune(&mut c);
    let lb = Balancer::start(c).await;
    until("a leads", || is_leader_at(&a, 1) && follows(&b, &a, 1)).await;
    (a, b, lb)
}

/// Three fakes behind a balancer, the first (most up to date) leading, and
/// a client that has written `k`.
pub(crate) async fn leader_of_three_with_k() -> (Fake, Fake, Fake, Balancer, Client) {
    let a = Fake::start(1, NodeRole::Idle, 0, 3).await;
    let b = Fake::start(2, NodeRole::Idle, 0, 0).await;
    let c = Fake::start(3, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    until("a leads", || is_leader_at(&a, 1)).await;
    until("all follow", || follows(&b, &a, 1) && follows(&c, &a, 1)).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    (a, b, c, lb, client)
}

/// A leader `a` and a follower `b` both holding k = v, behind a balancer,
/// with b having served a read: its data connection is open, so the reads
/// that rotate to it from now on are forwarded to it directly.
pub(crate) async fn leader_and_reading_follower() -> (Fake, Fake, Balancer, Client) {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    b.s()
        .map
        .insert(Bytes::from_static(b"k"), Bytes::from_static(b"v"));
    for _ in 0..100 {
        if b.s().gets_served > 0 {
            break;
        }
        client.get("k").await;
    }
    assert!(b.s().gets_served > 0, "b never got a read");
    (a, b, lb, client)
}
