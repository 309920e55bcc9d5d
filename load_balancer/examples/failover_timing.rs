//! Failover measurement harness (not a test): three real `semikv-server`
//! processes behind an in-process balancer with its defaults (heartbeat
//! 100 ms, down after 3 misses, 1 sync replica, sync timeout 2 s), four
//! writers busy through the balancer the whole time, and the leader failed
//! over and over:
//!
//! - `kill`: SIGKILL of the leader, then a restart on the same address and
//!   data directory, so every round starts from three replicas;
//! - `stop`: SIGSTOP of the leader (a silent failure: its sockets stay open,
//!   only missed heartbeats reveal it); once a new leader has acknowledged a
//!   write, SIGCONT. The old leader must be fenced: a direct write to it right
//!   after SIGCONT and another once it has rejoined as a follower must not be
//!   acknowledged.
//!
//! Per round: the time from the signal to the first write acknowledged through
//! the balancer among the writes sent once the failure was certain (process
//! reaped, or seen stopped in /proc; a probe sends one every 20 ms during the
//! failover, so the figure does not depend on how long the writers' in-flight
//! writes take to fail), the longest window in which none of the four writers
//! got an acknowledgement, and the balancer's own election time from its log.
//! At the end every acknowledged key is read back through the balancer and
//! directly from every replica, once each has applied the leader's commit
//! index; every write answered with an error must be on all replicas or none.
//!
//! Exit code: 0 when all is well; 1 when an acknowledged write was lost or read
//! back wrong, replicas diverged, a write answered `Unavailable` was applied,
//! or a deposed leader acknowledged a write; 2 on bad arguments or when a
//! round or the read-back could not complete (diagnostics and log tails are
//! printed). Logs are kept in the temp dir on any failure, with `--keep-logs`,
//! or when a round was an outlier.
//!
//! Figures (release build, from the workspace root; with `CARGO_TARGET_DIR`
//! set, the binary is under that directory instead of `target/`):
//!
//! ```text
//! cargo build --release -p semikv-server && cargo run --release -p semikv-lb --example failover_timing -- target/release/semikv-server 10
//! ```
//!
//! Usage: `failover_timing SERVER_BIN [ROUNDS] [--mode kill|stop|both]
//! [--hold-ms MS] [--keep-logs]` (ROUNDS per mode, default 10; default mode
//! `both`, kill rounds first; `--hold-ms` keeps a stopped leader stopped that
//! much longer after the first write on the new leader, default 0, to show what
//! the writers whose writes are stuck at it experience).
//! Balancer logs go to `balancer.log` and each replica's stderr to
//! `rN/server.log` in the temp dir; `RUST_LOG` sets the balancer's level.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use semikv_protocol::{
    ClusterStatus, ErrorReply, Hello, Message, MessageCodec, NodeRole, NodeStatus, Op, Reply,
    Request, RequestId, Role,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Bound of every wait of the harness: a ready file, a reply, a failover, a
/// rejoin, a catch-up.
const WAIT: Duration = Duration::from_secs(15);

/// Replicas in the cluster.
const REPLICAS: u32 = 3;

/// Concurrent writers through the balancer.
const WRITERS: usize = 4;

/// Interval between the probe's writes while a failover is under way: the
/// resolution of the kill-to-first-write figure.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Normal operation between rounds, so every round starts from a steady write
/// rate and its gap is measured from a normal write.
const SETTLE: Duration = Duration::from_millis(500);

/// Pause before a writer reconnects after a failed connect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Reads in flight at once during the read-back.
const READ_WINDOW: usize = 256;

/// Read-back passes over keys whose read failed (not a missing key: an error).
const READ_PASSES: usize = 3;

/// A round whose first write took this many times its mode's median (and at
/// least [`SLOW_FLOOR`]) keeps the logs, so an outlier can be explained.
const SLOW_FACTOR: u32 = 10;
const SLOW_FLOOR: Duration = Duration::from_millis(50);

/// Lines of each log printed when something fails.
const LOG_TAIL: usize = 25;

/// Writer outcomes are booked under the phase they happen in.
const PHASE_WARMUP: usize = 0;
const PHASE_DRAIN: usize = 3;
const PHASE_NAMES: [&str; 4] = ["warm-up", "kill", "stop", "drain"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Kill,
    Stop,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Kill => "kill",
            Mode::Stop => "stop",
        }
    }

    fn phase(self) -> usize {
        match self {
            Mode::Kill => 1,
            Mode::Stop => 2,
        }
    }
}

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("no reply within {WAIT:?}")]
    Timeout,
    #[error("connection failed: {0}")]
    Broken(String),
}

impl CallError {
    fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout => "client-timeout",
            CallError::Broken(_) => "connection",
        }
    }
}

/// The error kind of a write's outcome, or `None` when it was acknowledged.
fn write_error_kind(outcome: &Result<Reply, CallError>) -> Option<&'static str> {
    match outcome {
        Ok(Reply::Written { .. }) => None,
        Ok(Reply::Error(e)) => Some(match e {
            ErrorReply::Indeterminate { .. } => "indeterminate",
            ErrorReply::Unavailable { .. } => "unavailable",
            ErrorReply::NotEnoughReplicas { .. } => "not-enough-replicas",
            ErrorReply::NotLeader { .. } => "not-leader",
            ErrorReply::StaleEpoch { .. } => "stale-epoch",
            ErrorReply::Storage { .. } => "storage",
            ErrorReply::Invalid { .. } => "invalid",
            ErrorReply::EpochConflict { .. } => "epoch-conflict",
            ErrorReply::Diverged { .. } => "diverged",
        }),
        Ok(_) => Some("unexpected-reply"),
        Err(e) => Some(e.kind()),
    }
}

/// Acknowledged and failed writes of one kind of client in one phase.
#[derive(Debug, Default, Clone)]
struct Tally {
    acked: u64,
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.acked += other.acked;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
    }

    fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        parts.join(" ")
    }
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    sent: Instant,
    at: Instant,
    probe: bool,
}

#[derive(Debug, Default)]
struct Book {
    writers: [Tally; 4],
    probe: [Tally; 4],
    acks: Vec<Ack>,
    /// Writes answered with an error: key, value, error kind.
    failed: Vec<(String, String, &'static str)>,
}

/// What the writers and probes record, shared with the rounds.
#[derive(Debug, Default)]
struct Shared {
    phase: AtomicUsize,
    book: Mutex<Book>,
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        // Every update is a push or an increment: a poisoned lock is consistent.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(
        &self,
        probe: bool,
        key: String,
        value: String,
        sent: Instant,
        outcome: &Result<Reply, CallError>,
    ) {
        let phase = self.phase.load(Ordering::Relaxed).min(PHASE_DRAIN);
        let at = Instant::now();
        let mut book = self.book();
        let tally = if probe {
            &mut book.probe[phase]
        } else {
            &mut book.writers[phase]
        };
        match write_error_kind(outcome) {
            None => {
                tally.acked += 1;
                book.acks.push(Ack {
                    key,
                    value,
                    sent,
                    at,
                    probe,
                });
            }
            Some(kind) => {
                *tally.errors.entry(kind).or_default() += 1;
                book.failed.push((key, value, kind));
            }
        }
    }

    fn record_connect_error(&self, e: &CallError) {
        let phase = self.phase.load(Ordering::Relaxed).min(PHASE_DRAIN);
        *self.book().writers[phase]
            .errors
            .entry(match e {
                CallError::Timeout => "connect-timeout",
                CallError::Broken(_) => "connect",
            })
            .or_default() += 1;
    }
}

/// A client connection (to the balancer or straight to a replica).
struct Client {
    framed: Framed<TcpStream, MessageCodec>,
    next: u64,
}

impl Client {
    async fn connect(addr: &str) -> Result<Client, CallError> {
        let handshake = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| CallError::Broken(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let mut framed = Framed::new(stream, MessageCodec::default());
            framed
                .send(Message::Hello(Hello::new(Role::Client, None)))
                .await
                .map_err(|e| CallError::Broken(e.to_string()))?;
            match framed.next().await {
                Some(Ok(Message::Welcome(_))) => Ok(Client { framed, next: 1 }),
                other => Err(CallError::Broken(format!("no welcome: {other:?}"))),
            }
        };
        tokio::time::timeout(WAIT, handshake)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    async fn call(&mut self, op: Op) -> Result<Reply, CallError> {
        let id = RequestId(self.next);
        self.next += 1;
        let exchange = async {
            self.framed
                .send(Message::Request(Request { id, op }))
                .await
                .map_err(|e| CallError::Broken(e.to_string()))?;
            match self.framed.next().await {
                Some(Ok(Message::Response(r))) if r.id == id => Ok(r.reply),
                Some(Ok(other)) => Err(CallError::Broken(format!("unexpected: {other:?}"))),
                Some(Err(e)) => Err(CallError::Broken(e.to_string())),
                None => Err(CallError::Broken("closed".into())),
            }
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    async fn cluster(&mut self) -> anyhow::Result<ClusterStatus> {
        match self.call(Op::Status).await? {
            Reply::Cluster(c) => Ok(c),
            other => bail!("balancer status: {other:?}"),
        }
    }
}

fn set_op(key: &str, value: &str) -> Op {
    Op::Set {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
    }
}

/// A replica's own status, asked directly.
async fn node_status(addr: &str) -> anyhow::Result<NodeStatus> {
    match Client::connect(addr).await?.call(Op::Status).await? {
        Reply::Node(s) => Ok(s),
        other => bail!("replica {addr} status: {other:?}"),
    }
}

/// One writer: sequential writes of unique keys through the balancer until
/// `stop`; an in-flight write always completes (bounded by [`WAIT`]) so its
/// outcome is known.
async fn writer(task: usize, addr: String, shared: Arc<Shared>, stop: CancellationToken) {
    let pid = std::process::id();
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let conn = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(&addr).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    shared.record_connect_error(&e);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let key = format!("w{task}-{n}");
        let value = format!("v{task}-{n}-{pid}");
        n += 1;
        let sent = Instant::now();
        let outcome = conn.call(set_op(&key, &value)).await;
        if outcome.is_err() {
            client = None;
        }
        // A well-behaved client honours the balancer's retry hint.
        let pause = match &outcome {
            Ok(Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. })) => {
                Some(Duration::from_millis((*retry_after_ms).min(1000)))
            }
            _ => None,
        };
        shared.record(false, key, value, sent, &outcome);
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Sends a write every [`PROBE_INTERVAL`] on one pipelined connection until
/// one is acknowledged (reported on `first`), then waits for the answers of all
/// it sent.
async fn probe(
    addr: String,
    tag: String,
    shared: Arc<Shared>,
    first: oneshot::Sender<Instant>,
) -> anyhow::Result<()> {
    let client = Client::connect(&addr).await?;
    let (mut sink, mut stream) = client.framed.split();
    let mut first = Some(first);
    let mut in_flight: HashMap<u64, (String, String, Instant)> = HashMap::new();
    let mut next = 0u64;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        if first.is_none() && in_flight.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = tick.tick(), if first.is_some() => {
                let key = format!("{tag}-{next}");
                let value = format!("{key}-{}", std::process::id());
                let request = Message::Request(Request {
                    id: RequestId(next),
                    op: set_op(&key, &value),
                });
                in_flight.insert(next, (key, value, Instant::now()));
                next += 1;
                tokio::time::timeout(WAIT, sink.send(request))
                    .await
                    .context("probe send timed out")?
                    .context("probe send")?;
            }
            frame = stream.next() => {
                let response = match frame {
                    Some(Ok(Message::Response(r))) => r,
                    other => bail!("probe connection: {other:?}"),
                };
                let (key, value, sent) = in_flight
                    .remove(&response.id.0)
                    .context("probe: reply to an unknown request")?;
                let outcome = Ok(response.reply);
                shared.record(true, key, value, sent, &outcome);
                if write_error_kind(&outcome).is_none() {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                bail!("probe: {} writes still unanswered after {:?}", in_flight.len(), WAIT * 2)
            }
        }
    }
}

/// Reads `keys` from `addr` with [`READ_WINDOW`] requests in flight; the
/// replies are in the order of `keys`.
async fn get_many(addr: &str, keys: &[&str]) -> anyhow::Result<Vec<Reply>> {
    let client = Client::connect(addr).await?;
    let (mut sink, mut stream) = client.framed.split();
    let mut replies: Vec<Option<Reply>> = vec![None; keys.len()];
    let mut next = 0usize;
    let mut outstanding = 0usize;
    while next < keys.len() || outstanding > 0 {
        if next < keys.len() && outstanding < READ_WINDOW {
            while next < keys.len() && outstanding < READ_WINDOW {
                let request = Message::Request(Request {
                    id: RequestId(next as u64),
                    op: Op::Get {
                        key: Bytes::from(keys[next].to_string()),
                    },
                });
                sink.feed(request).await.context("read send")?;
                next += 1;
                outstanding += 1;
            }
            tokio::time::timeout(WAIT, sink.flush())
                .await
                .context("read flush timed out")?
                .context("read flush")?;
        }
        let response = match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(Message::Response(r)))) => r,
            other => bail!("read-back from {addr}: {other:?}"),
        };
        let slot = usize::try_from(response.id.0).unwrap_or(usize::MAX);
        match replies.get_mut(slot) {
            Some(r @ None) => *r = Some(response.reply),
            _ => bail!(
                "read-back from {addr}: unexpected response id {}",
                response.id.0
            ),
        }
        outstanding -= 1;
    }
    Ok(replies
        .into_iter()
        .map(|r| r.unwrap_or(Reply::Pong))
        .collect())
}

/// Read-back of one source: how many acknowledged keys were missing, had
/// another value, or could not be read.
#[derive(Debug, Default)]
struct Readback {
    lost: Vec<String>,
    mismatched: Vec<String>,
    unreadable: Vec<String>,
}

async fn read_back(addr: &str, acks: &[(String, String)]) -> anyhow::Result<Readback> {
    let mut result = Readback::default();
    let mut todo: Vec<usize> = (0..acks.len()).collect();
    for _ in 0..READ_PASSES {
        if todo.is_empty() {
            break;
        }
        let keys: Vec<&str> = todo.iter().map(|&i| acks[i].0.as_str()).collect();
        let replies = get_many(addr, &keys).await?;
        let mut retry = Vec::new();
        for (&i, reply) in todo.iter().zip(replies) {
            let (key, value) = &acks[i];
            match reply {
                Reply::Value(Some(v)) if v.as_ref() == value.as_bytes() => {}
                Reply::Value(Some(_)) => result.mismatched.push(key.clone()),
                Reply::Value(None) => result.lost.push(key.clone()),
                _ => retry.push(i),
            }
        }
        todo = retry;
    }
    result.unreadable = todo.iter().map(|&i| acks[i].0.clone()).collect();
    Ok(result)
}

/// Where the writes answered with an error ended up, read from every replica
/// once all have applied the leader's commit index.
#[derive(Debug, Default)]
struct Unacked {
    total: usize,
    /// On every replica, with the value written.
    applied: usize,
    /// On no replica.
    absent: usize,
    /// On some replicas only: a value visible that the others do not have.
    diverged: Vec<String>,
    /// Holding a value never written under that key.
    foreign: Vec<String>,
    /// Answered `Unavailable` (which promises "not applied") yet applied.
    unavailable_applied: Vec<String>,
    unreadable: usize,
}

async fn check_unacked(
    replicas: &[String],
    failed: &[(String, String, &'static str)],
) -> anyhow::Result<Unacked> {
    let keys: Vec<&str> = failed.iter().map(|f| f.0.as_str()).collect();
    let mut answers = Vec::new();
    for addr in replicas {
        answers.push(get_many(addr, &keys).await?);
    }
    let mut result = Unacked {
        total: failed.len(),
        ..Unacked::default()
    };
    for (i, (key, value, kind)) in failed.iter().enumerate() {
        let mut present = 0;
        let mut readable = true;
        let mut foreign = false;
        for replica in &answers {
            match replica.get(i) {
                Some(Reply::Value(Some(v))) => {
                    present += 1;
                    foreign |= v.as_ref() != value.as_bytes();
                }
                Some(Reply::Value(None)) => {}
                _ => readable = false,
            }
        }
        if !readable {
            result.unreadable += 1;
        } else if foreign {
            result.foreign.push(key.clone());
        } else if present == 0 {
            result.absent += 1;
        } else if present < answers.len() {
            result.diverged.push(key.clone());
        } else if *kind == "unavailable" {
            result.unavailable_applied.push(key.clone());
        } else {
            result.applied += 1;
        }
    }
    Ok(result)
}

impl Unacked {
    fn broken(&self) -> bool {
        !self.diverged.is_empty()
            || !self.foreign.is_empty()
            || !self.unavailable_applied.is_empty()
    }
}

fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// Waits until the kernel reports `pid` stopped (state `T` in /proc).
async fn wait_stopped(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + WAIT;
    loop {
        let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 1..))
            .and_then(|rest| rest.split_whitespace().next());
        if state == Some("T") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("process {pid} not stopped within {WAIT:?} (state {state:?})");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `elapsed_ms` of the balancer's last "promoted new leader" log line.
fn last_election_ms(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("promoted new leader"))?;
    let rest = &line[line.find("elapsed_ms=")? + "elapsed_ms=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, minimum and maximum, in ms.
fn spread(values: &[Duration]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().map(|d| ms(*d)).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some((median, v[0], v[n - 1]))
}

/// `mode round` of the rounds that were outliers (see [`SLOW_FACTOR`]).
fn slow_rounds(results: &[RoundResult]) -> Vec<String> {
    let mut slow = Vec::new();
    for mode in [Mode::Kill, Mode::Stop] {
        let firsts: Vec<Duration> = results
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.first_write)
            .collect();
        let Some((median, _, _)) = spread(&firsts) else {
            continue;
        };
        let limit =
            Duration::from_secs_f64(median / 1000.0 * f64::from(SLOW_FACTOR)).max(SLOW_FLOOR);
        slow.extend(
            results
                .iter()
                .filter(|r| r.mode == mode && r.first_write > limit)
                .map(|r| format!("{} {}", mode.name(), r.round)),
        );
    }
    slow
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

struct Replica {
    id: u32,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Replica {
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts the server on `listen` and returns its bound address.
    fn start(&mut self, bin: &Path, listen: &str) -> anyhow::Result<String> {
        let ready = self.dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .context("open server log")?;
        let mut child = Command::new(bin)
            .arg(self.id.to_string())
            .args(["--listen", listen, "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                if s.ends_with('\n') {
                    self.child = Some(child);
                    return Ok(s.trim().to_string());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("replica {} exited before ready: {status}", self.id);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("replica {} not ready within {WAIT:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.child.as_ref().context("replica not running")?.id())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The figures of one round.
struct RoundResult {
    mode: Mode,
    round: usize,
    victim: u32,
    first_write: Duration,
    gap: Duration,
    rejoin: Duration,
    /// The balancer's own figure for the election ("promoted new leader"
    /// `elapsed_ms`: from noticing the loss to the promotion), from its log.
    elect_ms: Option<u64>,
    note: String,
}

struct Harness {
    bin: PathBuf,
    root: PathBuf,
    replicas: Vec<Replica>,
    lb_addr: String,
    ctl: Client,
    shared: Arc<Shared>,
    /// Direct writes a deposed leader acknowledged (must stay 0).
    fence_violations: Vec<String>,
    /// See [`Options::hold`].
    hold: Duration,
}

impl Harness {
    /// The cluster view once a leader is known, or an error after [`WAIT`].
    async fn with_leader(&mut self) -> anyhow::Result<ClusterStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.ctl.cluster().await?;
            if c.leader.is_some() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("no leader within {WAIT:?}: {c:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until all replicas are healthy, one leads, the others follow it
    /// at its epoch, and each has applied what the leader had committed when
    /// the wait began.
    async fn steady(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        let mut target = None;
        loop {
            let c = self.ctl.cluster().await?;
            let leader = c
                .leader
                .as_ref()
                .and_then(|l| c.replicas.iter().find(|r| &r.addr == l));
            if let Some(leader) = leader {
                let goal = *target.get_or_insert(leader.commit_index);
                let ok = c.replicas.iter().all(|r| {
                    r.healthy
                        && r.epoch == c.epoch
                        && r.applied_index >= goal
                        && (r.role == NodeRole::Follower || r.addr == leader.addr)
                });
                if ok && leader.role == NodeRole::Leader {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("cluster not steady within {WAIT:?}: {c:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn round(&mut self, mode: Mode, round: usize) -> anyhow::Result<RoundResult> {
        let cluster = self.with_leader().await?;
        let leader = cluster.leader.unwrap_or_default();
        let slot = self
            .replicas
            .iter()
            .position(|r| r.addr == leader)
            .with_context(|| format!("leader {leader} is not one of the replicas"))?;
        let victim = self.replicas[slot].id;
        let (first_tx, first_rx) = oneshot::channel();
        // The clock starts before the signal, so the figure errs on the long
        // side; only writes sent once the failure is certain (the process
        // reaped, or seen stopped) count, because the leader may still
        // acknowledge writes until the signal lands.
        let failed_at = Instant::now();
        match mode {
            Mode::Kill => {
                let mut child = self.replicas[slot]
                    .child
                    .take()
                    .context("leader not running")?;
                child.kill().context("SIGKILL the leader")?;
                let _ = child.wait();
            }
            Mode::Stop => {
                let pid = self.replicas[slot].pid()?;
                send_signal(pid, "STOP")?;
                self.replicas[slot].stopped = true;
                wait_stopped(pid).await?;
            }
        }
        let certain_at = Instant::now();
        let probe = tokio::spawn(probe(
            self.lb_addr.clone(),
            format!("p{}{round}", mode.name()),
            self.shared.clone(),
            first_tx,
        ));
        let first_ack = match tokio::time::timeout(WAIT, first_rx).await {
            Ok(Ok(at)) => at,
            Ok(Err(_)) => match probe.await {
                Ok(Err(e)) => return Err(e.context("probe failed before any write succeeded")),
                other => bail!("probe ended before any write succeeded: {other:?}"),
            },
            Err(_) => bail!(
                "no write acknowledged within {WAIT:?} after the {}",
                mode.name()
            ),
        };
        let recovering = Instant::now();
        let mut note = String::new();
        match mode {
            Mode::Kill => {
                let replica = &mut self.replicas[slot];
                let addr = replica.addr.clone();
                replica.start(&self.bin, &addr)?;
            }
            Mode::Stop => {
                tokio::time::sleep(self.hold).await;
                let replica = &mut self.replicas[slot];
                send_signal(replica.pid()?, "CONT")?;
                replica.stopped = false;
                let addr = replica.addr.clone();
                // Straight after SIGCONT the old leader still believes it leads
                // at its old epoch: it must not acknowledge.
                note = self.fence_check(&addr, &format!("f{round}-resumed")).await;
            }
        }
        self.steady().await?;
        let rejoin = recovering.elapsed();
        let elect_ms = last_election_ms(&self.root.join("balancer.log"));
        if mode == Mode::Stop {
            let addr = self.replicas[slot].addr.clone();
            let after = self.fence_check(&addr, &format!("f{round}-rejoined")).await;
            note = format!("resumed: {note}; rejoined: {after}");
        }
        match tokio::time::timeout(WAIT * 3, probe).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.context("probe")),
            Ok(Err(e)) => bail!("probe task: {e}"),
            Err(_) => bail!("probe did not finish"),
        }
        tokio::time::sleep(SETTLE).await;
        let end = Instant::now();
        let book = self.shared.book();
        let first = book
            .acks
            .iter()
            .filter(|a| a.sent >= certain_at)
            .map(|a| a.at)
            .min()
            .unwrap_or(first_ack);
        let mut times: Vec<Instant> = book
            .acks
            .iter()
            .filter(|a| !a.probe && a.at <= end)
            .map(|a| a.at)
            .collect();
        drop(book);
        times.sort();
        let before = times.iter().rev().find(|&&t| t <= failed_at).copied();
        let mut last = before.unwrap_or(failed_at);
        let mut gap = Duration::ZERO;
        for &t in times.iter().filter(|&&t| t > failed_at) {
            gap = gap.max(t - last);
            last = t;
        }
        gap = gap.max(end - last);
        Ok(RoundResult {
            mode,
            round,
            victim,
            first_write: first.saturating_duration_since(failed_at),
            gap,
            rejoin,
            elect_ms,
            note,
        })
    }

    /// Writes directly to a deposed leader; anything but an acknowledgement is
    /// correct. Returns what it answered.
    async fn fence_check(&mut self, addr: &str, key: &str) -> String {
        let value = format!("{key}-{}", std::process::id());
        let sent = Instant::now();
        let outcome = match Client::connect(addr).await {
            Ok(mut c) => c.call(set_op(key, &value)).await,
            Err(e) => Err(e),
        };
        match write_error_kind(&outcome) {
            None => {
                self.fence_violations.push(format!("{addr} acked {key}"));
                // Booked as acknowledged so the read-back shows its fate too.
                self.shared
                    .record(true, key.to_string(), value, sent, &outcome);
                "ACKED (fencing violation)".into()
            }
            Some(kind) => kind.to_string(),
        }
    }

    fn print_logs(&self) {
        println!("--- balancer log (last {LOG_TAIL} lines) ---");
        println!("{}", log_tail(&self.root.join("balancer.log")));
        for r in &self.replicas {
            println!(
                "--- replica {} ({}) log (last {LOG_TAIL} lines) ---",
                r.id, r.addr
            );
            println!("{}", log_tail(&r.log()));
        }
        println!("--- logs kept in {} ---", self.root.display());
    }

    /// Resumes any replica a failed round left stopped.
    fn resume_all(&mut self) {
        for r in &mut self.replicas {
            if r.stopped {
                if let Ok(pid) = r.pid() {
                    let _ = send_signal(pid, "CONT");
                }
                r.stopped = false;
            }
        }
    }

    /// Waits until every replica has applied the leader's commit index (the
    /// writers have stopped, so it no longer moves).
    async fn converge(&mut self) -> anyhow::Result<()> {
        self.steady().await?;
        let leader = self.with_leader().await?.leader.unwrap_or_default();
        let commit = node_status(&leader).await?.commit_index;
        let deadline = Instant::now() + WAIT;
        for r in &self.replicas {
            loop {
                let s = node_status(&r.addr).await?;
                if s.applied_index >= commit {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "replica {} applied {} < leader commit {commit}",
                        r.id,
                        s.applied_index
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

struct Options {
    bin: PathBuf,
    rounds: usize,
    modes: Vec<Mode>,
    /// How long a stopped leader stays stopped after the first write on the
    /// new leader.
    hold: Duration,
    keep_logs: bool,
}

const USAGE: &str = "usage: failover_timing SERVER_BIN [ROUNDS] [--mode kill|stop|both] \
                     [--hold-ms MS] [--keep-logs]";

fn parse_args() -> Result<Options, String> {
    let mut positional = Vec::new();
    let mut modes = vec![Mode::Kill, Mode::Stop];
    let mut hold = Duration::ZERO;
    let mut keep_logs = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => {
                modes = match args.next().as_deref() {
                    Some("kill") => vec![Mode::Kill],
                    Some("stop") => vec![Mode::Stop],
                    Some("both") => vec![Mode::Kill, Mode::Stop],
                    other => return Err(format!("bad --mode {other:?}\n{USAGE}")),
                }
            }
            "--hold-ms" => {
                let value = args.next().unwrap_or_default();
                let ms = value
                    .parse()
                    .map_err(|_| format!("bad --hold-ms {value:?}\n{USAGE}"))?;
                hold = Duration::from_millis(ms);
            }
            "--keep-logs" => keep_logs = true,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}\n{USAGE}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let bin = PathBuf::from(positional.next().ok_or(USAGE)?);
    let rounds = match positional.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("ROUNDS must be a number, not {s:?}\n{USAGE}"))?,
        None => 10,
    };
    if positional.next().is_some() {
        return Err(USAGE.into());
    }
    Ok(Options {
        bin,
        rounds,
        modes,
        hold,
        keep_logs,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(code) => code,
        Err(e) => {
            println!("harness failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(options: Options) -> anyhow::Result<ExitCode> {
    let root = std::env::temp_dir().join(format!("semikv-failover-{}", std::process::id()));
    std::fs::create_dir_all(&root).context("create temp dir")?;
    let log = File::create(root.join("balancer.log")).context("create balancer log")?;
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(log))
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();

    let defaults = semikv_lb::Config::new(Vec::new());
    println!(
        "failover_timing: {REPLICAS} replicas ({}); balancer defaults: heartbeat {:?}, down after \
         {}, sync replicas {}, sync timeout {:?}, election wait {:?}, write wait {:?}; \
         {WRITERS} writers; {} rounds per mode; stopped leader held {:?} after the first new write",
        options.bin.display(),
        defaults.heartbeat,
        defaults.down_after,
        defaults.sync_replicas,
        defaults.sync_timeout,
        defaults.election_wait,
        defaults.write_wait,
        options.rounds,
        options.hold,
    );
    println!("load average at start: {}", load_average());
    println!("temp dir: {}", root.display());

    let mut replicas = Vec::new();
    for id in 1..=REPLICAS {
        let dir = root.join(format!("r{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut replica = Replica {
            id,
            addr: String::new(),
            dir,
            child: None,
            stopped: false,
        };
        replica.addr = replica.start(&options.bin, "127.0.0.1:0")?;
        replicas.push(replica);
    }
    let config = semikv_lb::Config::new(replicas.iter().map(|r| r.addr.clone()).collect());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let lb_addr = listener.local_addr()?.to_string();
    let lb_shutdown = CancellationToken::new();
    let lb = tokio::spawn(semikv_lb::run(config, listener, lb_shutdown.clone()));
    let ctl = Client::connect(&lb_addr).await?;
    let shared = Arc::new(Shared::default());
    let mut h = Harness {
        bin: options.bin.clone(),
        root: root.clone(),
        replicas,
        lb_addr: lb_addr.clone(),
        ctl,
        shared: shared.clone(),
        fence_violations: Vec::new(),
        hold: options.hold,
    };

    let mut results: Vec<RoundResult> = Vec::new();
    let mut failure: Option<String> = None;
    if let Err(e) = h.steady().await {
        failure = Some(format!("start-up: {e:#}"));
    }
    let stop_writers = CancellationToken::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|task| {
            tokio::spawn(writer(
                task,
                lb_addr.clone(),
                shared.clone(),
                stop_writers.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(SETTLE).await;
    println!(
        "round  mode  victim  first-write-ms  longest-gap-ms  lb-elect-ms  rejoin-ms  fencing"
    );
    'modes: for &mode in &options.modes {
        if failure.is_some() {
            break;
        }
        shared.phase.store(mode.phase(), Ordering::Relaxed);
        for round in 0..options.rounds {
            match h.round(mode, round).await {
                Ok(r) => {
                    println!(
                        "{:>5}  {:<4}  {:>6}  {:>14.1}  {:>14.1}  {:>11}  {:>9.1}  {}",
                        r.round,
                        r.mode.name(),
                        r.victim,
                        ms(r.first_write),
                        ms(r.gap),
                        r.elect_ms
                            .map_or_else(|| "?".to_string(), |e| e.to_string()),
                        ms(r.rejoin),
                        if r.note.is_empty() { "-" } else { &r.note }
                    );
                    results.push(r);
                }
                Err(e) => {
                    let what = format!("{} round {round} failed: {e:#}", mode.name());
                    println!("{what}");
                    if let Ok(c) = h.ctl.cluster().await {
                        println!("balancer view: {c:?}");
                    }
                    h.print_logs();
                    h.resume_all();
                    failure = Some(what);
                    break 'modes;
                }
            }
        }
    }

    shared.phase.store(PHASE_DRAIN, Ordering::Relaxed);
    stop_writers.cancel();
    for w in writers {
        let _ = tokio::time::timeout(WAIT * 2, w).await;
    }
    let acks: Vec<(String, String)> = shared
        .book()
        .acks
        .iter()
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect();
    let failed = shared.book().failed.clone();
    let mut checks: Vec<(String, Readback)> = Vec::new();
    let mut unacked = None;
    let verified = async {
        h.converge().await.context("convergence before read-back")?;
        checks.push(("balancer".into(), read_back(&lb_addr, &acks).await?));
        for r in &h.replicas {
            let name = format!("replica {}", r.id);
            checks.push((name, read_back(&r.addr, &acks).await?));
        }
        let addrs: Vec<String> = h.replicas.iter().map(|r| r.addr.clone()).collect();
        unacked = Some(check_unacked(&addrs, &failed).await?);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &verified {
        println!("read-back failed: {e:#}");
        h.print_logs();
        failure.get_or_insert_with(|| format!("read-back: {e:#}"));
    }

    print_summary(&options, &results, &shared, &checks, &h.fence_violations);
    if let Some(u) = &unacked {
        println!(
            "unacknowledged writes: {} (on every replica {}, on none {}, on some only {}, \
             foreign value {}, applied despite Unavailable {}, unreadable {}){}",
            u.total,
            u.applied,
            u.absent,
            u.diverged.len(),
            u.foreign.len(),
            u.unavailable_applied.len(),
            u.unreadable,
            if u.broken() {
                format!(
                    " keys: {:?}",
                    u.diverged
                        .iter()
                        .chain(&u.foreign)
                        .chain(&u.unavailable_applied)
                        .take(10)
                        .collect::<Vec<_>>()
                )
            } else {
                String::new()
            }
        );
    }
    println!("load average at end: {}", load_average());

    let lost: usize = checks.iter().map(|(_, c)| c.lost.len()).sum();
    let mismatched: usize = checks.iter().map(|(_, c)| c.mismatched.len()).sum();
    let unreadable: usize = checks.iter().map(|(_, c)| c.unreadable.len()).sum();
    let broken = lost > 0
        || mismatched > 0
        || !h.fence_violations.is_empty()
        || unacked.as_ref().is_some_and(Unacked::broken);
    lb_shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, lb).await;
    let slow = slow_rounds(&results);
    if !slow.is_empty() {
        println!(
            "slow rounds (first write over {SLOW_FACTOR}x the mode's median): {slow:?}; logs kept"
        );
    }
    let keep_logs =
        options.keep_logs || broken || failure.is_some() || unreadable > 0 || !slow.is_empty();
    drop(h);
    if keep_logs {
        println!("logs kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    if broken {
        println!(
            "FAILED: acknowledged writes lost or wrong, replicas diverged, or a deposed leader \
             acknowledged"
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(f) = failure {
        println!("INCOMPLETE: {f}");
        return Ok(ExitCode::from(2));
    }
    if unreadable > 0 {
        println!("INCOMPLETE: {unreadable} acknowledged keys could not be read");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(
    options: &Options,
    results: &[RoundResult],
    shared: &Shared,
    checks: &[(String, Readback)],
    fence_violations: &[String],
) {
    let book = shared.book();
    println!();
    println!(
        "mode  rounds  first-write-ms med/min/max   longest-gap-ms med/min/max   writes-acked  writer-errors"
    );
    let mut total = Tally::default();
    for &mode in &options.modes {
        let rounds: Vec<&RoundResult> = results.iter().filter(|r| r.mode == mode).collect();
        let first: Vec<Duration> = rounds.iter().map(|r| r.first_write).collect();
        let gaps: Vec<Duration> = rounds.iter().map(|r| r.gap).collect();
        let show = |s: Option<(f64, f64, f64)>| {
            s.map_or_else(
                || "-".to_string(),
                |(med, min, max)| format!("{med:.1}/{min:.1}/{max:.1}"),
            )
        };
        let tally = &book.writers[mode.phase()];
        println!(
            "{:<4}  {:>6}  {:<28}  {:<28}  {:>12}  {}",
            mode.name(),
            rounds.len(),
            show(spread(&first)),
            show(spread(&gaps)),
            tally.acked,
            tally.errors_text()
        );
    }
    for (phase, name) in PHASE_NAMES.iter().enumerate() {
        total.add(&book.writers[phase]);
        if phase == PHASE_WARMUP || phase == PHASE_DRAIN {
            let t = &book.writers[phase];
            println!(
                "{name:<8} (no failures)  writes acked {}, errors: {}",
                t.acked,
                t.errors_text()
            );
        }
    }
    let mut probe = Tally::default();
    for t in &book.probe {
        probe.add(t);
    }
    println!(
        "writers total: acked {}, errors: {}",
        total.acked,
        total.errors_text()
    );
    println!(
        "probes (and fencing checks) total: acked {}, errors: {}",
        probe.acked,
        probe.errors_text()
    );
    println!(
        "fencing: deposed leader acknowledged {} direct writes{}",
        fence_violations.len(),
        if fence_violations.is_empty() {
            String::new()
        } else {
            format!(": {fence_violations:?}")
        }
    );
    println!(
        "read-back of {} acknowledged keys (writers and probes):",
        book.acks.len()
    );
    for (name, c) in checks {
        println!(
            "  {name:<10} lost {}, mismatched {}, unreadable {}{}",
            c.lost.len(),
            c.mismatched.len(),
            c.unreadable.len(),
            if c.lost.is_empty() && c.mismatched.is_empty() {
                String::new()
            } else {
                format!(
                    " (first lost: {:?}; first mismatched: {:?})",
                    c.lost.iter().take(5).collect::<Vec<_>>(),
                    c.mismatched.iter().take(5).collect::<Vec<_>>()
                )
            }
        );
    }
    let lost: usize = checks.iter().map(|(_, c)| c.lost.len()).sum();
    println!("acked writes lost: {lost} (must be 0)");
}
