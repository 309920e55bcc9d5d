//! Failover timing harness (not a test): runs real `semikv-server` processes
//! behind an in-process balancer with default settings, kills the leader with
//! SIGKILL several times, and reports how long it took from the kill to the
//! first successful write through the balancer.
//!
//! Usage: `cargo run -p semikv-lb --example failover_timing -- SERVER_BIN [ROUNDS]`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use semikv_protocol::{Hello, Message, MessageCodec, Op, Reply, Request, RequestId, Role};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

struct Replica {
    id: u32,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(bin: &Path, id: u32, listen: &str, dir: &Path) -> anyhow::Result<(Child, String)> {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(bin)
            .arg(id.to_string())
            .args(["--listen", listen, "--data-dir"])
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn semikv-server")?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                if s.ends_with('\n') {
                    return Ok((child, s.trim().to_string()));
                }
            }
            if Instant::now() > deadline {
                bail!("replica {id} never became ready");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Client {
    framed: Framed<TcpStream, MessageCodec>,
    next: u64,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        let mut framed = Framed::new(stream, MessageCodec::default());
        framed
            .send(Message::Hello(Hello::new(Role::Client, None)))
            .await?;
        match tokio::time::timeout(WAIT, framed.next()).await? {
            Some(Ok(Message::Welcome(_))) => Ok(Client { framed, next: 1 }),
            other => bail!("no welcome: {other:?}"),
        }
    }

    async fn call(&mut self, op: Op) -> anyhow::Result<Reply> {
        let id = RequestId(self.next);
        self.next += 1;
        self.framed
            .send(Message::Request(Request { id, op }))
            .await?;
        match tokio::time::timeout(WAIT, self.framed.next()).await? {
            Some(Ok(Message::Response(r))) if r.id == id => Ok(r.reply),
            other => bail!("bad response: {other:?}"),
        }
    }

    async fn set(&mut self, i: u64) -> anyhow::Result<Reply> {
        self.call(Op::Set {
            key: Bytes::from(format!("key-{i}")),
            value: Bytes::from(format!("value-{i}")),
        })
        .await
    }

    async fn leader(&mut self) -> anyhow::Result<Option<String>> {
        match self.call(Op::Status).await? {
            Reply::Cluster(c) => Ok(c.leader),
            other => bail!("status: {other:?}"),
        }
    }

    async fn healthy(&mut self) -> anyhow::Result<usize> {
        match self.call(Op::Status).await? {
            Reply::Cluster(c) => Ok(c.replicas.iter().filter(|r| r.healthy).count()),
            other => bail!("status: {other:?}"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .context("usage: failover_timing SERVER_BIN [ROUNDS]")?,
    );
    let rounds: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let root = std::env::temp_dir().join(format!("semikv-lb-timing-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut replicas = Vec::new();
    for id in 1..=3u32 {
        let dir = root.join(format!("r{id}"));
        std::fs::create_dir_all(&dir)?;
        let (child, addr) = Replica::spawn(&bin, id, "127.0.0.1:0", &dir)?;
        replicas.push(Replica {
            id,
            addr,
            dir,
            child: Some(child),
        });
    }
    let config = semikv_lb::Config::new(replicas.iter().map(|r| r.addr.clone()).collect());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let lb_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let lb = tokio::spawn(semikv_lb::run(config, listener, shutdown.clone()));
    let mut client = Client::connect(lb_addr).await?;
    let mut i = 0u64;
    let deadline = Instant::now() + WAIT;
    while !matches!(client.set(i).await?, Reply::Written { .. }) {
        if Instant::now() > deadline {
            bail!("the cluster never accepted a write");
        }
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        let leader = client.leader().await?.context("no leader")?;
        let victim = replicas
            .iter_mut()
            .find(|r| r.addr == leader)
            .context("leader is not a replica")?;
        let mut child = victim.child.take().context("leader not running")?;
        let start = Instant::now();
        child.kill()?;
        let _ = child.wait();
        let mut attempts = 0;
        loop {
            i += 1;
            attempts += 1;
            let reply = client.set(i).await?;
            if matches!(reply, Reply::Written { .. }) {
                break;
            }
            println!("  attempt {attempts}: {reply:?}");
            if start.elapsed() > WAIT {
                bail!("no successful write after the kill: {reply:?}");
            }
        }
        let took = start.elapsed();
        println!(
            "round {round}: killed replica {} ({leader}); first write ok after {:?} ({attempts} attempts)",
            victim.id, took
        );
        times.push(took);
        let (child, _) = Replica::spawn(&bin, victim.id, &victim.addr, &victim.dir)?;
        victim.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while client.healthy().await? < 3 {
            if Instant::now() > deadline {
                bail!("restarted replica never became healthy");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        println!(
            "failover to first write: median {:?}, min {min:?}, max {max:?} over {} rounds",
            times[times.len() / 2],
            times.len()
        );
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, lb).await;
    drop(replicas);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
