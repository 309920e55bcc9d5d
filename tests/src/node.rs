//! Starting one `semikv-server` replica or one `semikv-lb` balancer and
//! waiting until it accepts connections (its `--ready-file`).
//!
//! Files beside a replica's data dir `D`: `D.ready` (bound address),
//! `D.stderr` and `D.stdout` (appended to across restarts). A balancer's live
//! in the directory it is given, as `lb.ready`, `lb.stderr`, `lb.stdout`.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bin;
use crate::process::Proc;
use crate::secured;

/// How long a process gets to write its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the ready file is polled.
const READY_POLL: Duration = Duration::from_millis(5);

/// A running replica.
#[derive(Debug)]
pub struct Replica {
    /// Its id (`semikv-server ID`).
    pub id: u32,
    /// The address it bound.
    pub addr: SocketAddr,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    /// Its HTTP listener's address, when started with `--http`.
    pub http: Option<SocketAddr>,
    /// The process.
    pub proc: Proc,
}

/// A running balancer.
#[derive(Debug)]
pub struct Balancer {
    /// The address it bound.
    pub addr: SocketAddr,
    /// The RESP door's address, when started with `--resp`.
    pub resp: Option<SocketAddr>,
    /// The HTTP door's address, when started with `--http`.
    pub http: Option<SocketAddr>,
    /// The process.
    pub proc: Proc,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        secured::balancer_stopped(self.addr);
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Starts replica `id` on `127.0.0.1:0` with `data_dir` and waits until it
/// serves.
///
/// # Errors
/// The binary does not build, the process exits before it is ready (the
/// error carries its stderr tail), or it is not ready within
/// [`READY_TIMEOUT`].
pub async fn start_replica<S: AsRef<OsStr>>(
    id: u32,
    data_dir: &Path,
    extra_args: &[S],
) -> anyhow::Result<Replica> {
    start_replica_at(id, data_dir, "127.0.0.1:0".parse()?, extra_args).await
}

/// As [`start_replica`], on a given address (a restart on the old port).
///
/// # Errors
/// As [`start_replica`].
pub async fn start_replica_at<S: AsRef<OsStr>>(
    id: u32,
    data_dir: &Path,
    listen: SocketAddr,
    extra_args: &[S],
) -> anyhow::Result<Replica> {
    launch_replica(id, data_dir, listen, None, extra_args).await
}

/// As [`start_replica`], with the process's open-file limit (soft and
/// hard) set to `open_files` by util-linux's `prlimit`: the way to make a
/// descriptor flood small enough for a test.
///
/// # Errors
/// As [`start_replica`]; `prlimit` missing is an error, never a skip.
pub async fn start_replica_with_open_files<S: AsRef<OsStr>>(
    id: u32,
    data_dir: &Path,
    open_files: u64,
    extra_args: &[S],
) -> anyhow::Result<Replica> {
    launch_replica(
        id,
        data_dir,
        "127.0.0.1:0".parse()?,
        Some(open_files),
        extra_args,
    )
    .await
}

async fn launch_replica<S: AsRef<OsStr>>(
    id: u32,
    data_dir: &Path,
    listen: SocketAddr,
    open_files: Option<u64>,
    extra_args: &[S],
) -> anyhow::Result<Replica> {
    let exe = tokio::task::spawn_blocking(bin::server).await??;
    let ready = with_suffix(data_dir, ".ready");
    let mut cmd = match open_files {
        None => Command::new(exe),
        Some(n) => {
            // prlimit sets its own limit, then execs the replica: one pid.
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={n}:{n}")).arg("--").arg(exe);
            cmd
        }
    };
    cmd.arg(id.to_string())
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra_args);
    let given: Vec<OsString> = extra_args.iter().map(|a| a.as_ref().to_owned()).collect();
    cmd.args(secured::replica_args(&given)?);
    let name = format!("replica {id}");
    let (proc, addr) = spawn_ready(&name, cmd, &ready, &with_suffix(data_dir, ".stderr")).await?;
    let http = door_addr(&ready, "http")?;
    Ok(Replica {
        id,
        addr,
        data_dir: data_dir.to_path_buf(),
        http,
        proc,
    })
}

/// Starts `semikv-lb 127.0.0.1:0 REPLICA...` with its files in `dir` and
/// waits until it serves.
///
/// # Errors
/// As [`start_replica`].
pub async fn start_balancer<S: AsRef<OsStr>>(
    dir: &Path,
    replicas: &[SocketAddr],
    extra_args: &[S],
) -> anyhow::Result<Balancer> {
    start_balancer_at(dir, "127.0.0.1:0".parse()?, replicas, extra_args).await
}

/// As [`start_balancer`], on a given address.
///
/// # Errors
/// As [`start_replica`].
pub async fn start_balancer_at<S: AsRef<OsStr>>(
    dir: &Path,
    listen: SocketAddr,
    replicas: &[SocketAddr],
    extra_args: &[S],
) -> anyhow::Result<Balancer> {
    let exe = tokio::task::spawn_blocking(bin::balancer).await??;
    let ready = dir.join("lb.ready");
    let mut cmd = Command::new(exe);
    cmd.arg(listen.to_string())
        .args(replicas.iter().map(ToString::to_string))
        .arg("--ready-file")
        .arg(&ready)
        .args(extra_args);
    let given: Vec<OsString> = extra_args.iter().map(|a| a.as_ref().to_owned()).collect();
    cmd.args(secured::balancer_args(&given)?);
    let (proc, addr) = spawn_ready("balancer", cmd, &ready, &dir.join("lb.stderr")).await?;
    secured::balancer_started(addr);
    let resp = door_addr(&ready, "resp")?;
    let http = door_addr(&ready, "http")?;
    Ok(Balancer {
        addr,
        resp,
        http,
        proc,
    })
}

/// Spawns `cmd` and waits for it to write `ready`; kills it on failure.
async fn spawn_ready(
    name: &str,
    cmd: Command,
    ready: &Path,
    stderr: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    // A ready file left by an earlier run must not count for this one.
    match std::fs::remove_file(ready) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", ready.display())),
    }
    let mut proc = Proc::spawn(name, cmd, stderr)?;
    let addr = wait_ready(&mut proc, ready).await?;
    Ok((proc, addr))
}

/// The address of the door `name` in a balancer's ready file (a
/// `NAME ADDR` line), if it has one.
///
/// # Errors
/// The file cannot be read, or the line does not hold an address.
pub fn door_addr(ready: &Path, name: &str) -> anyhow::Result<Option<SocketAddr>> {
    let text =
        std::fs::read_to_string(ready).with_context(|| format!("reading {}", ready.display()))?;
    for line in text.lines().skip(1) {
        if let Some((door, addr)) = line.split_once(' ') {
            if door == name {
                return addr
                    .trim()
                    .parse()
                    .map(Some)
                    .with_context(|| format!("{name} line {line:?} in {}", ready.display()));
            }
        }
    }
    Ok(None)
}

/// Polls `ready` until it holds an address, failing as soon as the process
/// exits.
///
/// # Errors
/// The process exited, or [`READY_TIMEOUT`] passed (the process is then
/// killed by the caller dropping it).
pub async fn wait_ready(proc: &mut Proc, ready: &Path) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = proc.try_wait()? {
            bail!(
                "{} exited with {status} before it was ready; stderr tail:\n{}",
                proc.name(),
                proc.stderr_tail()
            );
        }
        // The file is renamed into place, so it is whole when it exists; a
        // read racing the rename just sees NotFound.
        if let Ok(text) = std::fs::read_to_string(ready) {
            // The first line is the main address; a balancer adds a
            // `DOOR ADDR` line per other door.
            if let Some(line) = text.strip_suffix('\n').and_then(|t| t.lines().next()) {
                return line.trim().parse().with_context(|| {
                    format!("{} wrote {text:?} to {}", proc.name(), ready.display())
                });
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready within {READY_TIMEOUT:?}; stderr tail:\n{}",
                proc.name(),
                proc.stderr_tail()
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
