//! The balancer against in-process fake replicas on 127.0.0.1:0: start-up
//! election and adoption, routing, failover, indeterminate writes, bad input,
//! and the cluster status.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use semikv_lb::group::link::{ForwardWrite, ReplicaLink};
use semikv_lb::request::{Answer, AnswerSink, ClientPort, Tag};
use semikv_lb::Config;
use semikv_protocol::{
    CoordinatorId, Epoch, ErrorReply, FollowerProgress, Hello, LogIndex, Message, MessageCodec,
    NodeRole, NodeStatus, Op, ReplicaId, Reply, Request, RequestId, Response, Role, Welcome,
    WireError, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fakes

#[derive(Debug, Default)]
struct FakeState {
    id: u32,
    role: Option<NodeRole>,
    epoch: Epoch,
    last_epoch: Epoch,
    last_index: u64,
    leader_addr: Option<String>,
    map: HashMap<Bytes, Bytes>,
    hang_writes: bool,
    /// Reads are taken but never answered.
    hang_reads: bool,
    /// Reads are answered only once this is cleared again.
    hold_reads: bool,
    /// A set stops its connection: nothing more is read from it (a replica
    /// busy with a deep pipeline, as seen by what queues behind it).
    wedge_on_set: bool,
    mute: bool,
    statuses: u64,
    sets_seen: u64,
    gets_served: u64,
    promotes: Vec<(u64, u32)>,
    fences: u64,
    /// Followers a leader reports connected in its status; `None`: every
    /// other fake of a test (up to [`OTHER_FAKES`]), so the balancer's stall
    /// rule leaves it alone.
    connected_followers: Option<usize>,
    /// Answers writes `NotLeader` while its status still says leader (a
    /// leader that stepped down between two health checks).
    refuse_writes: bool,
    /// Once this many sets were seen, the connection a set arrives on
    /// closes (unanswered), while the fake itself stays up.
    hang_up_at_sets: Option<u64>,
}

/// The coordinator that minted the epochs fakes start at (an earlier
/// balancer); tests speak of epochs by their term.
const PAST: CoordinatorId = CoordinatorId(0xe0);

/// The most other fakes any test runs next to one fake.
const OTHER_FAKES: usize = 2;

impl FakeState {
    fn status(&self) -> NodeStatus {
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

    fn stale(&self, epoch: Epoch) -> Option<Reply> {
        (epoch < self.epoch).then(|| {
            Reply::Error(ErrorReply::StaleEpoch {
                got: epoch,
                current: self.epoch,
            })
        })
    }

    /// `None`: never answer (a write hanging on a leader about to die).
    fn apply(&mut self, op: Op) -> Option<Reply> {
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
        })
    }
}

/// A fake replica: a tiny state machine behind the real protocol.
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    kill: CancellationToken,
}

impl Fake {
    async fn start(id: u32, role: NodeRole, epoch: u64, last_index: u64) -> Fake {
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
    async fn restart(addr: SocketAddr, state: FakeState) -> Fake {
        let listener = TcpListener::bind(addr).await.unwrap();
        Fake::serve(listener, Arc::new(Mutex::new(state)))
    }

    fn serve(listener: TcpListener, state: Arc<Mutex<FakeState>>) -> Fake {
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
    fn kill(&self) {
        self.kill.cancel();
    }

    fn s(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

async fn fake_conn(stream: TcpStream, state: Arc<Mutex<FakeState>>, kill: CancellationToken) {
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

struct Balancer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Balancer {
    async fn start(config: Config) -> Balancer {
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

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(T, self.task).await.unwrap().unwrap().unwrap();
    }
}

fn config(fakes: &[&Fake]) -> Config {
    let mut c = Config::new(fakes.iter().map(|f| f.addr.to_string()).collect());
    c.heartbeat = Duration::from_millis(20);
    c.down_after = 3;
    c.derive_waits();
    c
}

struct Client {
    framed: Framed<TcpStream, MessageCodec>,
    next: u64,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
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

    async fn send(&mut self, op: Op) -> RequestId {
        let id = RequestId(self.next);
        self.next += 1;
        timeout(T, self.framed.send(Message::Request(Request { id, op })))
            .await
            .unwrap()
            .unwrap();
        id
    }

    /// Sends `ops` in one write, as a pipelining client's burst.
    async fn send_burst(&mut self, ops: Vec<Op>) -> Vec<RequestId> {
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

    async fn recv(&mut self) -> Response {
        match timeout(T, self.framed.next()).await.unwrap() {
            Some(Ok(Message::Response(r))) => r,
            other => panic!("expected a response: {other:?}"),
        }
    }

    /// The ids of the next `n` responses, each of which must be a value.
    async fn values(&mut self, n: usize) -> Vec<RequestId> {
        let mut got = Vec::new();
        for _ in 0..n {
            let r = self.recv().await;
            assert!(matches!(r.reply, Reply::Value(_)), "{r:?}");
            got.push(r.id);
        }
        got
    }

    async fn call(&mut self, op: Op) -> Reply {
        let id = self.send(op).await;
        let r = self.recv().await;
        assert_eq!(r.id, id);
        r.reply
    }

    async fn set(&mut self, k: &str, v: &str) -> Reply {
        self.call(Op::Set {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .await
    }

    async fn get(&mut self, k: &str) -> Reply {
        self.call(Op::Get {
            key: Bytes::copy_from_slice(k.as_bytes()),
        })
        .await
    }
}

/// Polls `cond` every few milliseconds until it holds or 10 s pass.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sets until one write is acknowledged (bounded).
async fn set_until_written(c: &mut Client, k: &str, v: &str) -> Reply {
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

fn is_leader_at(f: &Fake, epoch: u64) -> bool {
    let s = f.s();
    s.role == Some(NodeRole::Leader) && s.epoch.term() == epoch
}

fn follows(f: &Fake, leader: &Fake, epoch: u64) -> bool {
    let s = f.s();
    s.role == Some(NodeRole::Follower)
        && s.epoch.term() == epoch
        && s.leader_addr.as_deref() == Some(leader.addr.to_string().as_str())
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn startup_promotes_the_most_up_to_date_replica() {
    let a = Fake::start(1, NodeRole::Idle, 2, 5).await;
    let b = Fake::start(2, NodeRole::Idle, 2, 9).await;
    let c = Fake::start(3, NodeRole::Idle, 1, 20).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    until("b leads at epoch 3", || is_leader_at(&b, 3)).await;
    until("a and c follow b", || {
        follows(&a, &b, 3) && follows(&c, &b, 3)
    })
    .await;
    assert_eq!(b.s().promotes, vec![(3, 1)], "one promotion, sync capped");
    assert!(
        a.s().fences >= 1 && c.s().fences >= 1,
        "everyone fenced first"
    );
    lb.stop().await;
}

#[tokio::test]
async fn single_replica_is_promoted_with_no_sync_replicas() {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a])).await;
    until("a leads", || is_leader_at(&a, 1)).await;
    assert_eq!(a.s().promotes, vec![(1, 0)]);
    let mut client = Client::connect(lb.addr).await;
    assert!(matches!(
        set_until_written(&mut client, "k", "v").await,
        Reply::Written { .. }
    ));
    lb.stop().await;
}

#[tokio::test]
async fn live_leader_is_adopted_without_a_new_epoch() {
    let a = Fake::start(1, NodeRole::Leader, 4, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 4, 10).await;
    let c = Fake::start(3, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    until("idle c told to follow a at 4", || follows(&c, &a, 4)).await;
    let mut client = Client::connect(lb.addr).await;
    assert!(matches!(
        set_until_written(&mut client, "k", "v").await,
        Reply::Written { .. }
    ));
    assert_eq!(a.s().map.get(&b"k"[..]).map(|v| &v[..]), Some(&b"v"[..]));
    assert!(is_leader_at(&a, 4));
    assert!(a.s().promotes.is_empty() && b.s().promotes.is_empty());
    assert_eq!(a.s().fences + b.s().fences + c.s().fences, 0, "no election");
    lb.stop().await;
}

#[tokio::test]
async fn writes_go_to_the_leader_and_reads_rotate_over_healthy_replicas() {
    let (a, b, c, lb, mut client) = leader_of_three_with_k().await;
    assert_eq!(a.s().map.len(), 1);
    assert_eq!(b.s().map.len() + c.s().map.len(), 0);
    for _ in 0..9 {
        client.get("k").await;
    }
    for f in [&a, &b, &c] {
        assert!(f.s().gets_served >= 1, "replica {} got no read", f.s().id);
    }
    // A down replica leaves the rotation.
    c.kill();
    let before = (a.s().gets_served, b.s().gets_served);
    for _ in 0..6 {
        assert!(matches!(client.get("k").await, Reply::Value(_)));
    }
    let after = (a.s().gets_served, b.s().gets_served);
    assert_eq!(
        after.0 - before.0 + after.1 - before.1,
        6,
        "every read answered by a live replica"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_burst_of_pipelined_reads_goes_to_one_replica() {
    let (a, b, c, lb, mut client) = leader_of_three_with_k().await;
    // One read at a time still rotates over every replica.
    for _ in 0..9 {
        client.get("k").await;
    }
    let served = || [a.s().gets_served, b.s().gets_served, c.s().gets_served];
    for f in [&a, &b, &c] {
        assert!(f.s().gets_served >= 1, "replica {} got no read", f.s().id);
    }
    let mut used_one = 0;
    for _ in 0..3 {
        let before = served();
        let get = || Op::Get {
            key: Bytes::from("k"),
        };
        let mut ids = client.send_burst((0..30).map(|_| get()).collect()).await;
        let mut got = Vec::new();
        for _ in 0..30 {
            let r = client.recv().await;
            assert!(matches!(r.reply, Reply::Value(_)), "{r:?}");
            got.push(r.id);
        }
        got.sort();
        ids.sort();
        assert_eq!(got, ids);
        let after = served();
        let used = (0..3).filter(|&i| after[i] > before[i]).count();
        // Written at once, the burst is taken in one go (on a slow machine
        // perhaps two): its reads go to one replica, so their answers leave
        // together, where round-robin would have used all three.
        assert!(used <= 2, "a burst of 30 reads went to {used} replicas");
        if used == 1 {
            used_one += 1;
        }
    }
    assert!(used_one >= 1, "no burst went to a single replica");
    lb.stop().await;
}

#[tokio::test]
async fn a_client_pipelining_past_its_in_flight_limit_is_still_read() {
    let (a, b, lb) = leader_and_follower(|_| {}).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    // More than the balancer's 1024 slots per client, all in one write, all
    // forwarded and held by the replicas until the balancer has stopped
    // reading at the limit: it must start again as the forwarded answers
    // free their slots, with nothing else of this client's to wake it.
    a.s().hold_reads = true;
    b.s().hold_reads = true;
    let n = 3000;
    let get = || Op::Get {
        key: Bytes::from("k"),
    };
    let mut ids = client.send_burst((0..n).map(|_| get()).collect()).await;
    until("the client's slots are all in use", || {
        a.s().gets_served + b.s().gets_served >= 1024
    })
    .await;
    a.s().hold_reads = false;
    b.s().hold_reads = false;
    let mut got = client.values(n).await;
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    lb.stop().await;
}

/// `op(n)` for the `n` whose request frame (under client id 1) carries a
/// payload of exactly `max` bytes.
fn sized_exactly(max: usize, op: impl Fn(usize) -> Op) -> Op {
    let payload = |n: usize| {
        let mut buf = bytes::BytesMut::new();
        let m = Message::Request(Request {
            id: RequestId(1),
            op: op(n),
        });
        semikv_protocol::frame::encode(&m, usize::MAX, &mut buf).unwrap();
        buf.len() - semikv_protocol::frame::HEADER_LEN
    };
    let mut n = max.saturating_sub(64).max(1);
    n += max.saturating_sub(payload(n));
    while payload(n) < max {
        n += 1;
    }
    assert_eq!(payload(n), max, "could not hit the limit exactly");
    op(n)
}

/// A client's request exactly at the balancer's frame limit is longer than
/// that once it carries the replica link's id (two bytes past 127, where the
/// client's id 1 takes one): it must be refused as invalid, without breaking
/// the link another client's write is waiting on.
async fn oversized_for_the_link_is_refused_alone(big_op: impl Fn(usize) -> Op) {
    let (a, _b, lb) = leader_and_follower(|c| {
        c.max_frame_len = 300;
        // Writes time out 3 s after this.
        c.sync_timeout = Duration::from_millis(100);
    })
    .await;
    let mut warm = Client::connect(lb.addr).await;
    set_until_written(&mut warm, "k", "v").await;
    // Both links' ids pass 127.
    for _ in 0..200 {
        warm.set("k", "v").await;
        warm.get("k").await;
    }
    a.s().hang_writes = true;
    let seen = a.s().sets_seen;
    let mut other = Client::connect(lb.addr).await;
    other
        .send(Op::Set {
            key: Bytes::from("x"),
            value: Bytes::from("1"),
        })
        .await;
    until("the other write reached the leader", || {
        a.s().sets_seen > seen
    })
    .await;
    let mut big = Client::connect(lb.addr).await;
    let reply = big.call(sized_exactly(300, big_op)).await;
    assert!(
        matches!(&reply, Reply::Error(ErrorReply::Invalid { reason }) if reason.contains("too large")),
        "{reply:?}"
    );
    // The other write, never answered by the leader, ends when its time is
    // up, not at once because its link broke.
    let other_reply = other.recv().await.reply;
    assert!(
        matches!(&other_reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains("in time")),
        "{other_reply:?}"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_write_too_large_for_the_link_is_refused_without_breaking_it() {
    oversized_for_the_link_is_refused_alone(|n| Op::Set {
        key: Bytes::from("big"),
        value: Bytes::from(vec![7u8; n]),
    })
    .await;
}

#[tokio::test]
async fn a_read_too_large_for_the_link_is_refused_without_breaking_it() {
    oversized_for_the_link_is_refused_alone(|n| Op::Get {
        key: Bytes::from(vec![b'k'; n]),
    })
    .await;
}

#[tokio::test]
async fn forwarded_reads_are_answered_after_the_client_half_closes() {
    // Both data links open, so the burst is forwarded.
    let (a, b, lb, mut client) = leader_and_reading_follower().await;
    a.s().hold_reads = true;
    b.s().hold_reads = true;
    let served = a.s().gets_served + b.s().gets_served;
    let n = 50;
    let get = || Op::Get {
        key: Bytes::from("k"),
    };
    let ids = client.send_burst((0..n).map(|_| get()).collect()).await;
    until("the burst reached a replica", || {
        a.s().gets_served + b.s().gets_served >= served + n as u64
    })
    .await;
    // The client is done sending; its reads are still in flight.
    client.framed.get_mut().shutdown().await.unwrap();
    a.s().hold_reads = false;
    b.s().hold_reads = false;
    let got = client.values(n).await;
    answered_then_closed(&mut client, got, ids).await;
    lb.stop().await;
}

/// `got` holds every id of `ids` (in any order), and then the balancer
/// closes the connection.
async fn answered_then_closed(
    client: &mut Client,
    mut got: Vec<RequestId>,
    mut ids: Vec<RequestId>,
) {
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    let end = timeout(T, client.framed.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn forwarded_reads_are_retried_when_their_replica_dies_after_a_half_close() {
    let (a, b, lb, mut client) = leader_and_reading_follower().await;
    // b takes reads and never answers; a answers. Bursts rotate over the
    // replicas, so send until one lands on b.
    b.s().hang_reads = true;
    let n = 50;
    let get = || Op::Get {
        key: Bytes::from("k"),
    };
    let mut ids = Vec::new();
    let mut got = Vec::new();
    loop {
        let before = (a.s().gets_served, b.s().gets_served);
        ids.extend(client.send_burst((0..n).map(|_| get()).collect()).await);
        until("the burst reached a replica", || {
            a.s().gets_served + b.s().gets_served >= before.0 + before.1 + n as u64
        })
        .await;
        if b.s().gets_served > before.1 {
            break;
        }
        got.extend(client.values(n).await);
    }
    client.framed.get_mut().shutdown().await.unwrap();
    b.kill();
    got.extend(client.values(ids.len() - got.len()).await);
    answered_then_closed(&mut client, got, ids).await;
    lb.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_by_id() {
    let (_a, _b, lb) = leader_and_follower(|_| {}).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "warm", "up").await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let op = if i % 2 == 0 {
            Op::Set {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from("v"),
            }
        } else {
            Op::Get {
                key: Bytes::from("warm"),
            }
        };
        ids.push(client.send(op).await);
    }
    let mut got = Vec::new();
    for _ in 0..200 {
        let r = client.recv().await;
        assert!(
            matches!(r.reply, Reply::Written { .. } | Reply::Value(_)),
            "{r:?}"
        );
        got.push(r.id);
    }
    got.sort();
    assert_eq!(got, ids);
    lb.stop().await;
}

#[tokio::test]
async fn killing_the_leader_fails_over_to_the_best_follower() {
    let a = Fake::start(1, NodeRole::Leader, 3, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 3, 8).await;
    let c = Fake::start(3, NodeRole::Follower, 3, 9).await;
    let lb = Balancer::start(config(&[&a, &b, &c])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v1").await;
    assert!(is_leader_at(&a, 3));

    a.kill();
    until("c (most up to date) leads at epoch 4", || {
        is_leader_at(&c, 4)
    })
    .await;
    until("b follows c", || follows(&b, &c, 4)).await;
    set_until_written(&mut client, "k", "v2").await;
    assert_eq!(c.s().map.get(&b"k"[..]).map(|v| &v[..]), Some(&b"v2"[..]));
    assert!(b.s().promotes.is_empty());

    // The deposed leader returns, still claiming to lead at epoch 3.
    let old = FakeState {
        id: 1,
        role: Some(NodeRole::Leader),
        epoch: Epoch::new(3, PAST),
        last_epoch: Epoch::new(3, PAST),
        last_index: 11,
        ..FakeState::default()
    };
    let a2 = Fake::restart(a.addr, old).await;
    until("deposed leader follows c", || follows(&a2, &c, 4)).await;
    assert!(
        is_leader_at(&c, 4),
        "no new election for a returning replica"
    );

    let mut status_client = Client::connect(lb.addr).await;
    let Reply::Cluster(cluster) = status_client.call(Op::Status).await else {
        panic!("status is not a cluster view");
    };
    assert_eq!(cluster.leader, Some(c.addr.to_string()));
    assert_eq!(cluster.epoch.term(), 4);
    lb.stop().await;
}

#[tokio::test]
async fn two_replica_groups_in_one_balancer_elect_and_fail_over_independently() {
    use semikv_lb::group::ReplicaGroup;
    use semikv_lb::router::{ReadPolicy, Router};
    let a1 = Fake::start(1, NodeRole::Idle, 2, 9).await;
    let b1 = Fake::start(2, NodeRole::Idle, 2, 5).await;
    let a2 = Fake::start(1, NodeRole::Idle, 7, 5).await;
    let b2 = Fake::start(2, NodeRole::Idle, 7, 9).await;
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let one = ReplicaGroup::start(Arc::new(config(&[&a1, &b1])), &shutdown, &tasks);
    let two = ReplicaGroup::start(Arc::new(config(&[&a2, &b2])), &shutdown, &tasks);
    assert_ne!(one.coordinator(), two.coordinator(), "one shared election");
    until("each group elects its own most up-to-date replica", || {
        is_leader_at(&a1, 3) && follows(&b1, &a1, 3) && is_leader_at(&b2, 8) && follows(&a2, &b2, 8)
    })
    .await;
    let router = Router::new(vec![one.clone(), two.clone()], ReadPolicy::RoundRobin);
    a2.s().map.insert(Bytes::from("k"), Bytes::from("two"));
    b2.s().map.insert(Bytes::from("k"), Bytes::from("two"));
    let get = Op::Get {
        key: Bytes::from("k"),
    };
    assert_eq!(
        router
            .read_from(router.group(1), get.clone(), None, None, 2)
            .await,
        Reply::Value(Some(Bytes::from("two")))
    );
    assert_eq!(
        router.read_from(router.group(0), get, None, None, 2).await,
        Reply::Value(None),
        "a read of one group reached the other"
    );

    a1.kill();
    until("group one fails over to b1", || is_leader_at(&b1, 4)).await;
    assert!(is_leader_at(&b2, 8), "group two's leader changed");
    assert_eq!(two.table().leader().map(|l| l.slot), Some(1));
    assert!(a2.s().promotes.is_empty() && b2.s().promotes.len() == 1);
    shutdown.cancel();
    tasks.close();
    timeout(T, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn write_in_flight_when_the_leader_dies_is_indeterminate() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let b = Fake::start(2, NodeRole::Follower, 1, 0).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    a.s().hang_writes = true;
    let id = client
        .send(Op::Set {
            key: Bytes::from("k"),
            value: Bytes::from("lost?"),
        })
        .await;
    until("leader received the write", || a.s().sets_seen >= 2).await;
    a.kill();
    let r = client.recv().await;
    assert_eq!(r.id, id);
    assert!(
        matches!(r.reply, Reply::Error(ErrorReply::Indeterminate { .. })),
        "{:?}",
        r.reply
    );
    until("b takes over", || is_leader_at(&b, 2)).await;
    set_until_written(&mut client, "k", "v3").await;
    lb.stop().await;
}

#[tokio::test]
async fn no_replica_means_unavailable_after_the_bound() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let mut c = Config::new(vec![addr.to_string()]);
    c.heartbeat = Duration::from_millis(20);
    c.derive_waits();
    c.write_wait = Duration::from_millis(200);
    let lb = Balancer::start(c).await;
    let mut client = Client::connect(lb.addr).await;
    for reply in [client.set("k", "v").await, client.get("k").await] {
        match reply {
            Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) => {
                assert!(retry_after_ms > 0)
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(client.call(Op::Ping).await, Reply::Pong);
    lb.stop().await;
}

/// Reads from a raw socket until EOF; returns the bytes (bounded by time).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    timeout(T, stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

fn decode_all(bytes: &[u8]) -> Vec<Message> {
    use tokio_util::codec::Decoder;
    let mut codec = MessageCodec::default();
    let mut buf = bytes::BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(m)) = codec.decode(&mut buf) {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn bad_input_is_rejected_and_closed_while_others_keep_working() {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a])).await;
    until("a leads", || is_leader_at(&a, 1)).await;
    let mut good = Client::connect(lb.addr).await;
    set_until_written(&mut good, "k", "v").await;

    // Garbage bytes instead of a frame: bad checksum.
    let mut raw = TcpStream::connect(lb.addr).await.unwrap();
    raw.write_all(b"\x00\x00\x00\x05garbage-garbage")
        .await
        .unwrap();
    let got = decode_all(&read_to_close(&mut raw).await);
    assert!(matches!(got.as_slice(), [Message::Reject(_)]), "{got:?}");

    // A half-open connection that never finishes its frame does not stall
    // the good client.
    let mut stuck = TcpStream::connect(lb.addr).await.unwrap();
    stuck.write_all(b"\x00\x00\x00\x10").await.unwrap();
    assert!(matches!(good.get("k").await, Reply::Value(Some(_))));

    // Wrong magic.
    let mut bad = Framed::new(
        TcpStream::connect(lb.addr).await.unwrap(),
        MessageCodec::default(),
    );
    let mut hello = Hello::new(Role::Client, None);
    hello.magic = 0xdead_beef;
    bad.send(Message::Hello(hello)).await.unwrap();
    match timeout(T, bad.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::BadMagic { got: 0xdead_beef }))) => {}
        other => panic!("expected BadMagic: {other:?}"),
    }
    assert!(
        timeout(T, bad.next()).await.unwrap().is_none(),
        "closed after reject"
    );

    // Oversized frame after a good handshake.
    let mut big = Client::connect(lb.addr).await;
    let inner = big.framed.get_mut();
    inner
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await
        .unwrap();
    match timeout(T, big.framed.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::FrameTooLarge { .. }))) => {}
        other => panic!("expected FrameTooLarge: {other:?}"),
    }
    assert!(timeout(T, big.framed.next()).await.unwrap().is_none());

    // A request before the handshake.
    let mut early = Framed::new(
        TcpStream::connect(lb.addr).await.unwrap(),
        MessageCodec::default(),
    );
    early
        .send(Message::Request(Request {
            id: RequestId(1),
            op: Op::Ping,
        }))
        .await
        .unwrap();
    match timeout(T, early.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::HandshakeRequired))) => {}
        other => panic!("expected HandshakeRequired: {other:?}"),
    }

    // Admin ops from a client.
    let mut admin = Client::connect(lb.addr).await;
    admin
        .send(Op::Fence(semikv_protocol::Fence {
            epoch: Epoch::from_raw(99),
        }))
        .await;
    match timeout(T, admin.framed.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::WrongRole { .. }))) => {}
        other => panic!("expected WrongRole: {other:?}"),
    }
    assert_eq!(a.s().epoch.term(), 1, "the fence never reached the replica");

    // Invalid request: a clear error, the connection stays.
    assert!(matches!(
        good.get("").await,
        Reply::Error(ErrorReply::Invalid { .. })
    ));
    assert!(matches!(good.get("k").await, Reply::Value(Some(_))));
    drop(stuck);
    lb.stop().await;
}

#[tokio::test]
async fn status_returns_the_cluster_view() {
    let a = Fake::start(1, NodeRole::Leader, 2, 7).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 5).await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let mut c = config(&[&a, &b]);
    c.replicas.push(gone_addr.to_string());
    let lb = Balancer::start(c).await;
    let mut client = Client::connect(lb.addr).await;
    let deadline = Instant::now() + T;
    let cluster = loop {
        if let Reply::Cluster(cl) = client.call(Op::Status).await {
            if cl.leader.is_some() && cl.replicas.iter().filter(|r| r.healthy).count() == 2 {
                break cl;
            }
        }
        assert!(Instant::now() < deadline, "no cluster view");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(cluster.leader, Some(a.addr.to_string()));
    assert_eq!(cluster.epoch.term(), 2);
    assert_eq!(cluster.replicas.len(), 3);
    let ra = &cluster.replicas[0];
    assert_eq!(
        (ra.id, ra.role, ra.healthy),
        (Some(ReplicaId(1)), NodeRole::Leader, true)
    );
    let rb = &cluster.replicas[1];
    assert_eq!(
        (rb.id, rb.role, rb.lag),
        (Some(ReplicaId(2)), NodeRole::Follower, 2)
    );
    assert_eq!(rb.last_index, LogIndex(5));
    let rc = &cluster.replicas[2];
    assert_eq!(
        (rc.id, rc.healthy, rc.addr.clone()),
        (None, false, gone_addr.to_string())
    );
    lb.stop().await;
}

#[tokio::test]
async fn sync_replicas_is_capped_by_configured_not_healthy_replicas() {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let b = Fake::start(2, NodeRole::Idle, 0, 0).await;
    let c = Fake::start(3, NodeRole::Idle, 0, 0).await;
    b.kill();
    c.kill();
    let mut cfg = config(&[&a, &b, &c]);
    cfg.sync_replicas = 5;
    let lb = Balancer::start(cfg).await;
    until("a leads alone", || is_leader_at(&a, 1)).await;
    assert_eq!(
        a.s().promotes,
        vec![(1, 2)],
        "capped at the 2 other configured replicas"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_leader_that_stops_answering_is_replaced_after_missed_checks() {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    // Hung, not crashed: its connections stay open.
    a.s().mute = true;
    until("b leads at epoch 3", || is_leader_at(&b, 3)).await;
    set_until_written(&mut client, "k", "v2").await;
    assert_eq!(b.s().map.get(&b"k"[..]).map(|v| &v[..]), Some(&b"v2"[..]));
    // It wakes up still claiming to lead at epoch 2 and is told to follow.
    a.s().mute = false;
    until("a follows b", || follows(&a, &b, 3)).await;
    lb.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_frame_is_closed_and_others_are_served() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let mut cfg = config(&[&a]);
    cfg.frame_timeout = Duration::from_millis(300);
    let lb = Balancer::start(cfg).await;
    let mut other = Client::connect(lb.addr).await;
    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let mut framed = Framed::new(stream, MessageCodec::default());
    framed
        .send(Message::Hello(Hello::new(Role::Client, None)))
        .await
        .unwrap();
    assert!(matches!(framed.next().await, Some(Ok(Message::Welcome(_)))));
    let mut raw = framed.into_inner();
    // A header announcing 1000 bytes and 10 of them, then nothing.
    let mut partial = 1000u32.to_be_bytes().to_vec();
    partial.extend_from_slice(&[0; 14]);
    raw.write_all(&partial).await.unwrap();
    let mut rest = Vec::new();
    let closed = timeout(T, raw.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "a stalled frame kept its connection: {closed:?}"
    );
    assert_eq!(other.call(Op::Ping).await, Reply::Pong);
    lb.stop().await;
}

#[tokio::test]
async fn a_write_hanging_on_a_stalled_leader_is_indeterminate_at_the_failover() {
    let a = Fake::start(1, NodeRole::Leader, 4, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 4, 10).await;
    let c = Fake::start(3, NodeRole::Follower, 4, 10).await;
    {
        let mut a = a.s();
        a.connected_followers = Some(0);
        a.hang_writes = true;
    }
    let mut cfg = config(&[&a, &b, &c]);
    // Far beyond the test's bounded waits: only dropping the stalled
    // leader's link can answer the write in time.
    cfg.sync_timeout = Duration::from_secs(60);
    let lb = Balancer::start(cfg).await;
    let mut client = Client::connect(lb.addr).await;
    let id = client
        .send(Op::Set {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        })
        .await;
    until("the leader received the write", || a.s().sets_seen >= 1).await;
    let r = client.recv().await;
    assert_eq!(r.id, id);
    assert!(
        matches!(r.reply, Reply::Error(ErrorReply::Indeterminate { .. })),
        "{:?}",
        r.reply
    );
    until("a follower leads at epoch 5", || {
        is_leader_at(&b, 5) || is_leader_at(&c, 5)
    })
    .await;
    lb.stop().await;
}

/// A leader `a` and a follower `b` both holding k = v, behind a balancer,
/// with b having served a read: its data connection is open, so the reads
/// that rotate to it from now on are forwarded to it directly.
/// Two fresh fakes behind a balancer (its config as `tune` leaves it), once
/// the first leads and the second follows it.
async fn leader_and_follower(tune: impl FnOnce(&mut Config)) -> (Fake, Fake, Balancer) {
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
async fn leader_of_three_with_k() -> (Fake, Fake, Fake, Balancer, Client) {
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

async fn leader_and_reading_follower() -> (Fake, Fake, Balancer, Client) {
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

#[tokio::test]
async fn reads_lost_with_a_replica_are_retried_on_another() {
    let (_a, b, lb, mut client) = leader_and_reading_follower().await;
    // b swallows reads, then dies with them in flight: every read must
    // still be answered, by a, under its own id.
    b.s().hang_reads = true;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..40 {
        ids.insert(
            client
                .send(Op::Get {
                    key: Bytes::from_static(b"k"),
                })
                .await,
        );
    }
    until("b holds some of the reads", || b.s().gets_served >= 5).await;
    b.kill();
    while !ids.is_empty() {
        let response = client.recv().await;
        assert!(ids.remove(&response.id), "unknown or repeated id");
        assert_eq!(
            response.reply,
            Reply::Value(Some(Bytes::from_static(b"v"))),
            "a read lost with b was not retried"
        );
    }
    lb.stop().await;
}

#[tokio::test]
async fn reads_a_live_replica_never_answers_are_retried_after_their_timeout() {
    let (_a, b, lb, mut client) = leader_and_reading_follower().await;
    // b keeps answering health checks but swallows reads: only the read
    // timeout (3 s) can send them elsewhere.
    b.s().hang_reads = true;
    let seen = b.s().gets_served;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        ids.insert(
            client
                .send(Op::Get {
                    key: Bytes::from_static(b"k"),
                })
                .await,
        );
    }
    while !ids.is_empty() {
        let response = client.recv().await;
        assert!(ids.remove(&response.id), "unknown or repeated id");
        assert_eq!(response.reply, Reply::Value(Some(Bytes::from_static(b"v"))));
    }
    assert!(
        b.s().gets_served > seen,
        "no read went to b: nothing was tested"
    );
    lb.stop().await;
}

#[tokio::test]
async fn health_checks_do_not_queue_behind_client_requests() {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    // The next set wedges the connection it arrives on, like a long queue
    // of pipelined writes: whatever is sent after it there waits.
    a.s().wedge_on_set = true;
    client
        .send(Op::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v2"),
        })
        .await;
    until("the set reached the leader", || a.s().sets_seen >= 2).await;
    let seen = a.s().statuses;
    // Many times down_after heartbeats of checks answered: the leader is
    // busy, not dead, and keeps leading.
    until("health checks keep being answered", || {
        a.s().statuses >= seen + 20
    })
    .await;
    assert!(is_leader_at(&a, 2), "the busy leader was deposed");
    assert!(b.s().promotes.is_empty(), "the follower was promoted");
    lb.stop().await;
}

#[tokio::test]
async fn a_replica_that_comes_back_rejoins_the_read_rotation() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let b = Fake::start(2, NodeRole::Follower, 1, 0).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    let addr = b.addr;
    b.kill();
    let mut status = Client::connect(lb.addr).await;
    let deadline = Instant::now() + T;
    loop {
        let Reply::Cluster(c) = status.call(Op::Status).await else {
            panic!()
        };
        if !c.replicas[1].healthy {
            break;
        }
        assert!(Instant::now() < deadline, "b never marked down");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b2 = Fake::restart(
        addr,
        FakeState {
            id: 2,
            role: Some(NodeRole::Follower),
            epoch: Epoch::new(1, PAST),
            last_epoch: Epoch::new(1, PAST),
            ..FakeState::default()
        },
    )
    .await;
    let deadline = Instant::now() + T;
    while b2.s().gets_served == 0 {
        assert!(Instant::now() < deadline, "b never served a read again");
        assert!(matches!(client.get("k").await, Reply::Value(_)));
    }
    lb.stop().await;
}

#[tokio::test]
async fn startup_waits_for_a_slow_replica_that_may_hold_newer_writes() {
    let a = Fake::start(1, NodeRole::Follower, 3, 5).await;
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let mut cfg = config(&[&a]);
    cfg.replicas.push(b_addr.to_string());
    cfg.election_wait = Duration::from_secs(10);
    let lb = Balancer::start(cfg).await;
    let mut status = Client::connect(lb.addr).await;
    let deadline = Instant::now() + T;
    loop {
        let Reply::Cluster(c) = status.call(Op::Status).await else {
            panic!()
        };
        if c.replicas[0].healthy {
            break;
        }
        assert!(Instant::now() < deadline, "a never healthy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.s().promotes.is_empty(), "elected before b could answer");
    let b = Fake::restart(
        b_addr,
        FakeState {
            id: 2,
            role: Some(NodeRole::Follower),
            epoch: Epoch::new(3, PAST),
            last_epoch: Epoch::new(3, PAST),
            last_index: 9,
            ..FakeState::default()
        },
    )
    .await;
    until("b, the most up to date, leads", || is_leader_at(&b, 4)).await;
    until("a follows b", || follows(&a, &b, 4)).await;
    lb.stop().await;
}

#[tokio::test]
async fn callers_queued_behind_a_failed_connect_share_its_failure() {
    use semikv_lb::group::link::ConnError;
    // A replica that accepts connections and never answers the handshake:
    // every connect attempt lasts the whole connect timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let (broken_tx, _broken_rx) = tokio::sync::mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let link = Arc::new(ReplicaLink::new(
        0,
        addr.to_string(),
        1 << 20,
        Duration::from_millis(200),
        broken_tx,
        Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
        tasks.clone(),
    ));
    // Many reads at once (a burst falling back to this replica): they queue
    // behind the first attempt and get its failure, instead of each
    // connecting in turn for up to the timeout.
    let n = 10;
    let callers: Vec<_> = (0..n)
        .map(|_| {
            let link = link.clone();
            tokio::spawn(async move {
                let get = Op::Get {
                    key: Bytes::from("k"),
                };
                link.request(get, T).await
            })
        })
        .collect();
    for caller in callers {
        let outcome = timeout(T, caller).await.unwrap().unwrap();
        assert!(
            matches!(&outcome, Err(ConnError::Connect(why)) if why.contains("timed out")),
            "{outcome:?}"
        );
    }
    let attempts = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=n / 2).contains(&attempts),
        "{attempts} connection attempts for {n} callers queued together"
    );
    // A later caller tries again: the failure is not remembered forever.
    let get = Op::Get {
        key: Bytes::from("k"),
    };
    assert!(link.request(get, T).await.is_err());
    until("a later caller connects again", || {
        accepted.load(Ordering::SeqCst) == attempts + 1
    })
    .await;
    holder.abort();
    shutdown.cancel();
    tasks.close();
    timeout(T, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn replica_link_reports_refusal_breakage_and_notifies() {
    use semikv_lb::group::link::ConnError;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let (broken_tx, mut broken_rx) = tokio::sync::mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let refused = ReplicaLink::new(
        0,
        gone_addr.to_string(),
        1 << 20,
        Duration::from_secs(5),
        broken_tx.clone(),
        Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
        tasks.clone(),
    );
    let err = refused.request(Op::Status, T).await.unwrap_err();
    assert!(
        matches!(err, ConnError::Refused) && err.never_sent(),
        "{err:?}"
    );

    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let link = Arc::new(ReplicaLink::new(
        7,
        a.addr.to_string(),
        1 << 20,
        Duration::from_secs(5),
        broken_tx,
        Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
        tasks.clone(),
    ));
    assert!(matches!(
        link.request(Op::Ping, T).await.unwrap(),
        Reply::Pong
    ));
    a.s().hang_writes = true;
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let link = link.clone();
            tokio::spawn(async move {
                link.request(
                    Op::Set {
                        key: Bytes::from(format!("k{i}")),
                        value: Bytes::from("v"),
                    },
                    T,
                )
                .await
            })
        })
        .collect();
    until("all writes reached the replica", || a.s().sets_seen == 5).await;
    a.kill();
    for h in in_flight {
        let err = timeout(T, h).await.unwrap().unwrap().unwrap_err();
        assert!(
            matches!(err, ConnError::Broken) && !err.never_sent(),
            "{err:?}"
        );
    }
    assert_eq!(timeout(T, broken_rx.recv()).await.unwrap(), Some(7));
    let err = link.request(Op::Status, T).await.unwrap_err();
    assert!(
        err.never_sent(),
        "reconnect to a dead replica is refused: {err:?}"
    );
    shutdown.cancel();
    tasks.close();
    timeout(T, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn many_pipelining_clients_share_the_replica_connections() {
    let (a, _b, lb) = leader_and_follower(|_| {}).await;
    let mut handles = Vec::new();
    for c in 0..20 {
        let addr = lb.addr;
        handles.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            set_until_written(&mut client, &format!("c{c}"), "x").await;
            let mut ids = Vec::new();
            for i in 0..50 {
                ids.push(
                    client
                        .send(Op::Set {
                            key: Bytes::from(format!("c{c}-{i}")),
                            value: Bytes::from("v"),
                        })
                        .await,
                );
            }
            let mut got = Vec::new();
            for _ in 0..50 {
                let r = client.recv().await;
                assert!(matches!(r.reply, Reply::Written { .. }), "{r:?}");
                got.push(r.id);
            }
            got.sort();
            assert_eq!(got, ids);
        }));
    }
    for h in handles {
        timeout(T, h).await.unwrap().unwrap();
    }
    assert_eq!(a.s().map.len(), 20 * 51);
    lb.stop().await;
}

// ---------------------------------------------------------------- forwarded writes

/// In-flight slots of a [`WriteHarness`] client.
const SLOTS: usize = 64;

/// A client's answer sink that queues what the link hands it.
#[derive(Debug)]
struct QueuedAnswers(tokio::sync::mpsc::Sender<Answer>);

impl AnswerSink for QueuedAnswers {
    fn deliver(&self, answer: Answer) {
        self.0.try_send(answer).expect("room for every slot");
    }
}

/// A replica link to one fake, and the client side its forwarded writes
/// answer: a port, in-flight slots and the health loop's kick.
struct WriteHarness {
    link: ReplicaLink,
    broken_rx: tokio::sync::mpsc::Receiver<usize>,
    port: Arc<ClientPort>,
    answers: tokio::sync::mpsc::Receiver<Answer>,
    slots: Arc<tokio::sync::Semaphore>,
    kick: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

/// The slot [`WriteHarness`] gives its link.
const HARNESS_SLOT: usize = 3;

impl WriteHarness {
    /// A link to `fake` that has not connected yet.
    fn new(fake: &Fake) -> WriteHarness {
        let (broken_tx, broken_rx) = tokio::sync::mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let kick = Arc::new(tokio::sync::Notify::new());
        let link = ReplicaLink::new(
            HARNESS_SLOT,
            fake.addr.to_string(),
            1 << 20,
            Duration::from_secs(5),
            broken_tx,
            kick.clone(),
            shutdown.clone(),
            tasks.clone(),
        );
        let (answers_tx, answers) = tokio::sync::mpsc::channel(SLOTS + 1);
        let (retry, _) = tokio::sync::mpsc::channel(SLOTS);
        WriteHarness {
            link,
            broken_rx,
            port: Arc::new(ClientPort {
                answers: Arc::new(QueuedAnswers(answers_tx)),
                retry,
            }),
            answers,
            slots: Arc::new(tokio::sync::Semaphore::new(SLOTS)),
            kick,
            shutdown,
            tasks,
        }
    }

    /// Opens the link's data connection (a ping travels on it).
    async fn open(&self) {
        assert_eq!(self.link.request(Op::Ping, T).await.unwrap(), Reply::Pong);
    }

    fn write(&self, id: u64, op: Op) -> ForwardWrite {
        ForwardWrite {
            port: self.port.clone(),
            tag: Tag(id),
            op,
            slot: self.slots.clone().try_acquire_owned().unwrap(),
        }
    }

    /// Forwards `op` as the client's request `id`; it must be sent.
    fn forward(&self, id: u64, op: Op, deadline: Duration) {
        if let Err(back) = self.link.forward_write(self.write(id, op), deadline) {
            panic!("write {:?} not sent on an open connection", back.tag);
        }
    }

    /// The next answer handed to the client, as a response under the
    /// client's id. Holding a slot is in its type.
    async fn answer(&mut self) -> Response {
        let answer = timeout(T, self.answers.recv()).await.unwrap().unwrap();
        match answer {
            Answer::One {
                tag,
                reply,
                slot: _,
            } => Response {
                id: RequestId(tag.0),
                reply,
            },
            other => panic!("expected one write's answer: {other:?}"),
        }
    }

    /// Whether the health loop was asked for a round (takes the request).
    fn kicked(&self) -> bool {
        use futures::FutureExt;
        self.kick.notified().now_or_never().is_some()
    }

    /// Checks that nothing more is ever answered: once our own port is
    /// dropped the queue closes only when the link holds no answer either.
    async fn no_more_answers(mut self) {
        drop(self.port);
        match timeout(T, self.answers.recv()).await.unwrap() {
            None => {}
            Some(answer) => panic!("answered again: {answer:?}"),
        }
        assert_eq!(self.slots.available_permits(), SLOTS, "a slot never freed");
        self.shutdown.cancel();
        self.tasks.close();
        timeout(T, self.tasks.wait()).await.unwrap();
    }
}

fn set_op(k: &str, v: &str) -> Op {
    Op::Set {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

fn is_indeterminate(reply: &Reply, why: &str) -> bool {
    matches!(reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains(why))
}

#[tokio::test]
async fn forwarded_writes_need_an_open_connection_and_are_answered_by_id() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let mut h = WriteHarness::new(&a);
    // No data connection yet: handed back, certainly unsent, for the
    // router's own path (which connects).
    let back = h
        .link
        .forward_write(h.write(1000, set_op("k", "v")), T)
        .unwrap_err();
    assert_eq!(back.tag, Tag(1000));
    assert_eq!(back.op, set_op("k", "v"));
    drop(back);
    h.open().await;
    for i in 0..40 {
        h.forward(i, set_op(&format!("k{i}"), &format!("v{i}")), T);
    }
    h.forward(
        40,
        Op::Delete {
            key: Bytes::from_static(b"k0"),
        },
        T,
    );
    let mut ids = std::collections::HashSet::new();
    let mut indexes = std::collections::HashSet::new();
    for _ in 0..41 {
        let r = h.answer().await;
        assert!(ids.insert(r.id.0), "answered twice: {:?}", r.id);
        let Reply::Written { index } = r.reply else {
            panic!("{r:?}");
        };
        assert!(indexes.insert(index), "two writes answered with one index");
    }
    assert_eq!(ids, (0..41).collect());
    {
        let a = a.s();
        assert_eq!(a.sets_seen, 40, "the unsent write was sent, or one twice");
        assert_eq!(a.map.len(), 39);
        assert_eq!(a.map.get(&b"k7"[..]).map(|v| &v[..]), Some(&b"v7"[..]));
    }
    assert!(!h.kicked(), "acknowledged writes kicked the health loop");
    h.no_more_answers().await;
}

#[tokio::test]
async fn a_forwarded_write_refused_as_not_leader_is_unavailable_and_kicks() {
    let a = Fake::start(1, NodeRole::Follower, 1, 0).await;
    let mut h = WriteHarness::new(&a);
    h.open().await;
    h.forward(1, set_op("k", "v"), T);
    h.forward(
        2,
        Op::Delete {
            key: Bytes::from_static(b"k"),
        },
        T,
    );
    for _ in 0..2 {
        let r = h.answer().await;
        match r.reply {
            Reply::Error(ErrorReply::Unavailable {
                retry_after_ms,
                reason,
            }) => {
                assert!(retry_after_ms > 0);
                assert!(reason.contains("leader changed"), "{reason}");
            }
            other => panic!("NotLeader was not made Unavailable: {other:?}"),
        }
    }
    assert!(h.kicked(), "the health loop was not told");
    h.no_more_answers().await;
}

#[tokio::test]
async fn forwarded_writes_lost_with_their_connection_are_indeterminate_once_never_resent() {
    const N: u64 = 20;
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    {
        let mut a = a.s();
        a.hang_writes = true;
        a.hang_up_at_sets = Some(N);
    }
    let mut h = WriteHarness::new(&a);
    h.open().await;
    for i in 0..N {
        h.forward(i, set_op(&format!("k{i}"), "v"), T);
    }
    let mut ids = std::collections::HashSet::new();
    for _ in 0..N {
        let r = h.answer().await;
        assert!(ids.insert(r.id.0), "answered twice: {:?}", r.id);
        assert!(is_indeterminate(&r.reply, "broke"), "{:?}", r.reply);
    }
    assert!(h.kicked(), "the health loop was not told");
    assert_eq!(
        timeout(T, h.broken_rx.recv()).await.unwrap(),
        Some(HARNESS_SLOT)
    );
    // The replica is still up: the link reconnects, and only the new write
    // goes out on the new connection.
    {
        let mut a = a.s();
        a.hang_writes = false;
        a.hang_up_at_sets = None;
    }
    h.open().await;
    h.forward(100, set_op("after", "v"), T);
    let r = h.answer().await;
    assert_eq!(r.id, RequestId(100));
    assert!(matches!(r.reply, Reply::Written { .. }), "{r:?}");
    assert_eq!(a.s().sets_seen, N + 1, "a write was sent twice");
    h.no_more_answers().await;
}

#[tokio::test]
async fn a_forwarded_write_past_its_deadline_is_indeterminate() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    a.s().hang_writes = true;
    let mut h = WriteHarness::new(&a);
    h.open().await;
    h.forward(1, set_op("k", "v"), Duration::from_millis(150));
    let r = h.answer().await;
    assert_eq!(r.id, RequestId(1));
    assert!(is_indeterminate(&r.reply, "in time"), "{:?}", r.reply);
    // The link lives on: a late answer would find nothing to answer.
    assert_eq!(h.link.request(Op::Ping, T).await.unwrap(), Reply::Pong);
    assert_eq!(a.s().sets_seen, 1);
    h.no_more_answers().await;
}

/// A leader `a` and a follower `b` behind a balancer, with one write
/// acknowledged (so a's data connection is open and writes are forwarded);
/// returns the sets a has seen so far.
async fn leader_with_open_link() -> (Fake, Fake, Balancer, Client, u64) {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "warm", "up").await;
    let seen = a.s().sets_seen;
    (a, b, lb, client, seen)
}

#[tokio::test]
async fn writes_the_leader_refuses_as_not_leader_are_unavailable() {
    let (a, b, lb, mut client, seen) = leader_with_open_link().await;
    a.s().refuse_writes = true;
    let mut ids = std::collections::HashSet::new();
    for i in 0..10 {
        ids.insert(client.send(set_op(&format!("k{i}"), "v")).await);
    }
    while !ids.is_empty() {
        let r = client.recv().await;
        assert!(ids.remove(&r.id), "unknown or repeated id");
        assert!(
            matches!(
                &r.reply,
                Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) if *retry_after_ms > 0
            ),
            "{:?}",
            r.reply
        );
    }
    assert_eq!(a.s().sets_seen, seen + 10);
    assert_eq!(b.s().sets_seen, 0, "a refused write went elsewhere");
    lb.stop().await;
}

#[tokio::test]
async fn writes_in_flight_when_the_leaders_connection_breaks_are_indeterminate_once() {
    const N: u64 = 30;
    let (a, b, lb, mut client, seen) = leader_with_open_link().await;
    {
        let mut a = a.s();
        a.hang_writes = true;
        a.hang_up_at_sets = Some(seen + N);
    }
    let mut ids = std::collections::HashSet::new();
    for i in 0..N {
        ids.insert(client.send(set_op(&format!("k{i}"), "v")).await);
    }
    while !ids.is_empty() {
        let r = client.recv().await;
        assert!(ids.remove(&r.id), "unknown or repeated id");
        assert!(is_indeterminate(&r.reply, "broke"), "{:?}", r.reply);
    }
    // Nothing else was queued for the client: the next answer is the ping's.
    let ping = client.send(Op::Ping).await;
    let r = client.recv().await;
    assert_eq!(
        (r.id, r.reply),
        (ping, Reply::Pong),
        "a write answered twice"
    );
    {
        let mut a = a.s();
        a.hang_writes = false;
        a.hang_up_at_sets = None;
    }
    // a is still the leader; writes reach it on a new connection.
    let mut attempts = 0;
    let deadline = Instant::now() + T;
    loop {
        attempts += 1;
        if matches!(client.set("after", "v").await, Reply::Written { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "writes never succeeded again");
    }
    assert_eq!(
        a.s().sets_seen,
        seen + N + attempts,
        "a write was sent twice"
    );
    assert_eq!(b.s().sets_seen, 0, "a lost write was sent elsewhere");
    lb.stop().await;
}

#[tokio::test]
async fn writes_the_leader_never_answers_are_indeterminate_after_the_write_timeout() {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let mut cfg = config(&[&a, &b]);
    // The write deadline is the sync timeout plus slack (3 s).
    cfg.sync_timeout = Duration::from_millis(10);
    let lb = Balancer::start(cfg).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "warm", "up").await;
    let seen = a.s().sets_seen;
    a.s().hang_writes = true;
    let mut ids = std::collections::HashSet::new();
    for i in 0..5 {
        ids.insert(client.send(set_op(&format!("k{i}"), "v")).await);
    }
    while !ids.is_empty() {
        let r = client.recv().await;
        assert!(ids.remove(&r.id), "unknown or repeated id");
        assert!(is_indeterminate(&r.reply, "in time"), "{:?}", r.reply);
    }
    assert_eq!(a.s().sets_seen, seen + 5);
    assert_eq!(b.s().sets_seen, 0);
    assert!(is_leader_at(&a, 2), "the slow leader was replaced");
    lb.stop().await;
}

#[tokio::test]
async fn pipelined_writes_and_reads_are_answered_with_their_own_replies() {
    const N: usize = 100;
    let (a, b, lb, mut client, seen) = leader_with_open_link().await;
    for f in [&a, &b] {
        let mut s = f.s();
        for i in 0..N {
            s.map
                .insert(Bytes::from(format!("r{i}")), Bytes::from(format!("v{i}")));
        }
    }
    // What each id must be answered with: Some(value) for reads, None for
    // writes.
    let mut expect = HashMap::new();
    for i in 0..N {
        let w = client
            .send(set_op(&format!("w{i}"), &format!("x{i}")))
            .await;
        expect.insert(w, None);
        let r = client
            .send(Op::Get {
                key: Bytes::from(format!("r{i}")),
            })
            .await;
        expect.insert(r, Some(Bytes::from(format!("v{i}"))));
    }
    let mut indexes = std::collections::HashSet::new();
    while !expect.is_empty() {
        let r = client.recv().await;
        let Some(want) = expect.remove(&r.id) else {
            panic!("unknown or repeated id {:?}", r.id);
        };
        match (want, r.reply) {
            (None, Reply::Written { index }) => {
                assert!(indexes.insert(index), "two writes with one index")
            }
            (Some(v), Reply::Value(got)) => assert_eq!(got, Some(v)),
            (want, got) => panic!("{:?}: wanted {want:?}, got {got:?}", r.id),
        }
    }
    {
        let a = a.s();
        assert_eq!(a.sets_seen, seen + N as u64);
        for i in [0, N / 2, N - 1] {
            let v = a.map.get(format!("w{i}").as_bytes()).cloned();
            assert_eq!(v, Some(Bytes::from(format!("x{i}"))));
        }
    }
    lb.stop().await;
}
