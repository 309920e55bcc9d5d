//! In-process replicas on 127.0.0.1:0 and a small peer that plays the
//! balancer or a client, for the server's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use semikv_protocol::{
    Epoch, ErrorReply, Fence, Follow, Hello, LogIndex, Message, MessageCodec, NodeStatus, Op,
    Promote, ReplicaId, Reply, Request, RequestId, Role, Subscribe, Welcome, PROTOCOL_VERSION,
};
use semikv_server::{Blocking, Config, FsyncPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Bound on every wait in these tests; generous because CI has 2 cores.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where the replicas of these tests run blocking work:
/// `SEMIKV_TEST_BLOCKING=inline` runs every test with the WAL writer as a
/// task and all file work inline, as a deterministic simulation would;
/// otherwise as a real process ([`Blocking::Threads`]).
pub fn default_blocking() -> Blocking {
    match std::env::var("SEMIKV_TEST_BLOCKING").as_deref() {
        Ok("inline") => Blocking::Inline,
        _ => Blocking::Threads,
    }
}

/// One replica running in this process.
pub struct Server {
    pub id: u32,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<semikv_server::Summary>>>,
}

impl Server {
    /// Starts replica `id` with its data in `dir`, on a fresh port or `addr`.
    pub async fn start(id: u32, dir: &Path, addr: Option<SocketAddr>) -> Server {
        Server::start_with(id, dir, addr, |_| {}).await
    }

    /// Like [`Server::start`], with the config adjusted by `tweak`.
    pub async fn start_with(
        id: u32,
        dir: &Path,
        addr: Option<SocketAddr>,
        tweak: impl FnOnce(&mut Config),
    ) -> Server {
        let listen = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(ReplicaId(id), dir.to_path_buf());
        config.fsync = FsyncPolicy::Always;
        config.blocking = default_blocking();
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(semikv_server::run(config, listener, shutdown.clone()));
        Server {
            id,
            addr,
            dir: dir.to_path_buf(),
            shutdown,
            task: Some(task),
        }
    }

    /// Stops it gracefully and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<semikv_server::Summary> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("replica did not stop in time")
            .expect("replica task panicked")
    }

    /// Aborts it without a graceful shutdown (the closest an in-process
    /// test gets to a crash: no drain, no final flush beyond what fsync did).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            self.shutdown.cancel();
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A replication stream, as a fake leader holds it.
pub type Conn = Framed<TcpStream, MessageCodec>;

/// Plays a leader on 127.0.0.1:0: the test drives the stream by hand.
pub struct FakeLeader {
    listener: TcpListener,
    id: u32,
}

impl FakeLeader {
    pub async fn bind(id: u32) -> FakeLeader {
        FakeLeader {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            id,
        }
    }

    pub fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// Accepts the follower's next stream and answers its handshake;
    /// returns it with the follower's subscription.
    pub async fn accept(&self) -> (Conn, Subscribe) {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the follower did not (re)connect")
            .unwrap();
        let mut conn = Framed::new(stream, MessageCodec::default());
        match next(&mut conn).await {
            Some(Message::Hello(h)) => assert_eq!(h.role, Role::Replica),
            other => panic!("expected Hello, got {other:?}"),
        }
        conn.send(Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node: Some(ReplicaId(self.id)),
        }))
        .await
        .unwrap();
        match next(&mut conn).await {
            Some(Message::Subscribe(sub)) => (conn, sub),
            other => panic!("expected Subscribe, got {other:?}"),
        }
    }
}

/// The next message, or `None` once the peer closed the connection.
pub async fn next(conn: &mut Conn) -> Option<Message> {
    tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("the follower neither sent anything nor closed")
        .and_then(Result::ok)
}

/// A connection that speaks the client protocol, one request at a time.
pub struct Peer {
    conn: Framed<TcpStream, MessageCodec>,
    next: u64,
}

impl Peer {
    /// Connects and completes the handshake as `role`.
    pub async fn connect(addr: SocketAddr, role: Role) -> Peer {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut conn = Framed::new(stream, MessageCodec::default());
        let hello = semikv_protocol::handshake::hello(&mut conn, Hello::new(role, None));
        tokio::time::timeout(WAIT, hello).await.unwrap().unwrap();
        Peer { conn, next: 1 }
    }

    /// Sends one op and waits for its reply.
    pub async fn request(&mut self, op: Op) -> Reply {
        let id = RequestId(self.next);
        self.next += 1;
        self.conn
            .send(Message::Request(Request { id, op }))
            .await
            .unwrap();
        match tokio::time::timeout(WAIT, self.conn.next()).await.unwrap() {
            Some(Ok(Message::Response(r))) if r.id == id => r.reply,
            other => panic!("expected the response to {id:?}, got {other:?}"),
        }
    }

    /// The next message the server sends, if any, within the bound.
    pub async fn next_message(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.conn.next())
            .await
            .unwrap()
            .and_then(Result::ok)
    }

    /// Sends a raw message.
    pub async fn send(&mut self, msg: Message) {
        self.conn.send(msg).await.unwrap();
    }

    /// Sends `msgs` with one flush (the server then usually finds many of
    /// them in one read; nothing guarantees it).
    #[allow(dead_code)]
    pub async fn send_all(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            self.conn.feed(msg).await.unwrap();
        }
        SinkExt::<Message>::flush(&mut self.conn).await.unwrap();
    }

    pub async fn set(&mut self, key: &str, value: &str) -> Reply {
        self.request(Op::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .await
    }

    /// Sets and insists on success; returns the log index.
    pub async fn set_ok(&mut self, key: &str, value: &str) -> LogIndex {
        match self.set(key, value).await {
            Reply::Written { index } => index,
            other => panic!("set {key} failed: {other:?}"),
        }
    }

    pub async fn get(&mut self, key: &str) -> Option<Bytes> {
        match self
            .request(Op::Get {
                key: Bytes::copy_from_slice(key.as_bytes()),
            })
            .await
        {
            Reply::Value(v) => v,
            other => panic!("get {key} failed: {other:?}"),
        }
    }

    pub async fn del(&mut self, key: &str) -> Reply {
        self.request(Op::Delete {
            key: Bytes::copy_from_slice(key.as_bytes()),
        })
        .await
    }

    pub async fn status(&mut self) -> NodeStatus {
        match self.request(Op::Status).await {
            Reply::NodeReport(r) => r.status,
            other => panic!("status failed: {other:?}"),
        }
    }

    pub async fn fence(&mut self, epoch: u128) -> Result<NodeStatus, ErrorReply> {
        node_reply(
            self.request(Op::Fence(Fence {
                epoch: Epoch::from_raw(epoch),
            }))
            .await,
        )
    }

    pub async fn promote(
        &mut self,
        epoch: u128,
        sync_replicas: u32,
    ) -> Result<NodeStatus, ErrorReply> {
        self.promote_with(epoch, sync_replicas, 10_000).await
    }

    pub async fn promote_with(
        &mut self,
        epoch: u128,
        sync_replicas: u32,
        sync_timeout_ms: u64,
    ) -> Result<NodeStatus, ErrorReply> {
        node_reply(
            self.request(Op::Promote(Promote {
                epoch: Epoch::from_raw(epoch),
                sync_replicas,
                sync_timeout_ms,
                async_fallback: false,
            }))
            .await,
        )
    }

    pub async fn follow(&mut self, epoch: u128, leader: &Server) -> Result<NodeStatus, ErrorReply> {
        node_reply(
            self.request(Op::Follow(Follow {
                epoch: Epoch::from_raw(epoch),
                leader: ReplicaId(leader.id),
                leader_addr: leader.addr.to_string(),
            }))
            .await,
        )
    }

    /// Polls Status until `cond` holds, within [`WAIT`].
    pub async fn wait_status(
        &mut self,
        what: &str,
        cond: impl Fn(&NodeStatus) -> bool,
    ) -> NodeStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if cond(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last status {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn node_reply(reply: Reply) -> Result<NodeStatus, ErrorReply> {
    match reply {
        Reply::NodeReport(r) => Ok(r.status),
        Reply::Error(e) => Err(e),
        other => panic!("expected a node status, got {other:?}"),
    }
}

/// Starts `n` replicas (ids 1..=n) in subdirectories of `dir`.
pub async fn start_many(n: u32, dir: &Path) -> Vec<Server> {
    let mut servers = Vec::new();
    for id in 1..=n {
        servers.push(Server::start(id, &dir.join(format!("replica-{id}")), None).await);
    }
    servers
}

/// Plays the balancer: fences everyone at `epoch`, promotes `leader` and
/// points the others at it. Returns admin connections, by server order.
pub async fn elect(
    servers: &[Server],
    leader: usize,
    epoch: u128,
    sync_replicas: u32,
) -> Vec<Peer> {
    let mut admins = Vec::new();
    for s in servers {
        let mut p = Peer::connect(s.addr, Role::Balancer).await;
        p.fence(epoch).await.unwrap();
        admins.push(p);
    }
    admins[leader].promote(epoch, sync_replicas).await.unwrap();
    for (i, admin) in admins.iter_mut().enumerate() {
        if i != leader {
            admin.follow(epoch, &servers[leader]).await.unwrap();
        }
    }
    admins
}

/// Waits until a snapshot file exists under `dir`.
pub async fn wait_for_snapshot_file(dir: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = std::fs::read_dir(dir.join("snapshot"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".bin"))
            })
            .unwrap_or(false);
        if found {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot written under {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
