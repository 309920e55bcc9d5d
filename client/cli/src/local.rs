//! [`LocalCluster`]: `semikv --local N` — N replicas and a balancer started as
//! child processes on free ports, data and logs in one directory, and every
//! one of them stopped when the cluster is dropped.
//!
//! The children are this same executable re-run with a hidden subcommand
//! (`__replica` / `__balancer`, see [`REPLICA_SUBCOMMAND`]), so no other
//! binary has to be installed. Each child gets [`PARENT_PID_ENV`] and, via
//! [`die_with_parent`], asks the kernel to kill it when its parent dies: even a
//! `kill -9` of `semikv` leaves no replica behind. A graceful exit (`quit`,
//! end of script, panic unwinding) stops them through `Drop`; SIGINT, SIGTERM
//! and SIGHUP through [`Reaper::reap`], which the binary calls from its signal
//! task.
//!
//! Layout of the directory: `replica-N/` (data), `replica-N.log`,
//! `replica-N.addr` (ready file), `lb.log`, `lb.addr`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use semikv_protocol::ReplicaId;
use tokio::time::Instant;

use semikv_client::{Client, ClientConfig};

/// Hidden subcommand that runs `semikv_server::cli::main`.
pub const REPLICA_SUBCOMMAND: &str = "__replica";
/// Hidden subcommand that runs `semikv_lb::cli::main`.
pub const BALANCER_SUBCOMMAND: &str = "__balancer";
/// Environment variable carrying the parent's pid to the children.
pub const PARENT_PID_ENV: &str = "SEMIKV_LOCAL_PARENT_PID";

/// How often ready files and the leader are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a stopping child gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What can go wrong running a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {error}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why (in the message, so deliberately not a `source`).
        error: std::io::Error,
    },
    /// A child process could not be started.
    #[error("cannot start {what}: {error}")]
    Spawn {
        /// Which process.
        what: String,
        /// Why (in the message, so deliberately not a `source`).
        error: std::io::Error,
    },
    /// A child exited before it became ready.
    #[error("{what} exited with {status} before it was ready; see {log}")]
    Exited {
        /// Which process.
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// A child did not write its ready file in time.
    #[error("{what} was not ready after {after:?}; see {log}")]
    NotReady {
        /// Which process.
        what: String,
        /// The bound.
        after: Duration,
        /// Its log file.
        log: PathBuf,
    },
    /// No leader was elected in time.
    #[error("no leader elected after {after:?} (last problem: {last}); logs are in {dir}")]
    NoLeader {
        /// The bound.
        after: Duration,
        /// The last status or connection problem seen.
        last: String,
        /// Where the logs are.
        dir: PathBuf,
    },
    /// No replica has this id.
    #[error("no replica {0} (ids are 1..=N)")]
    UnknownReplica(ReplicaId),
    /// `restart` of a replica that is still running.
    #[error("replica {0} is running; kill it first")]
    Running(ReplicaId),
    /// `kill` of a replica that is not running.
    #[error("replica {0} is not running")]
    NotRunning(ReplicaId),
}

/// Settings of [`LocalCluster::start`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Number of replicas (ids 1..=replicas).
    pub replicas: u32,
    /// Where data and logs go; when `None`, a temporary directory removed at
    /// the end (but kept when start-up fails, for its logs).
    pub data_dir: Option<PathBuf>,
    /// The executable to re-run with the hidden subcommands.
    pub exe: PathBuf,
    /// Bound on each child writing its ready file.
    pub ready_timeout: Duration,
    /// Bound on the first leader election.
    pub leader_timeout: Duration,
}

impl LocalOptions {
    /// `replicas` replicas, this executable, a temporary directory, 15 s per
    /// ready file and 30 s for the election.
    ///
    /// # Errors
    /// When the path of the running executable cannot be found.
    pub fn new(replicas: u32) -> std::io::Result<LocalOptions> {
        Ok(LocalOptions {
            replicas,
            data_dir: None,
            exe: std::env::current_exe()?,
            ready_timeout: Duration::from_secs(15),
            leader_timeout: Duration::from_secs(30),
        })
    }
}

/// The child processes, shared with the [`Reaper`].
#[derive(Default)]
struct Children {
    replicas: BTreeMap<ReplicaId, Option<Child>>,
    balancer: Option<Child>,
    /// A temporary directory to remove once everything is stopped.
    temp_dir: Option<PathBuf>,
}

// Held only for quick map updates and kills, never across an await; a panic
// while holding it leaves nothing half-updated that matters more than
// stopping the children, so poisoning is ignored.
fn lock(children: &Mutex<Children>) -> MutexGuard<'_, Children> {
    children.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops every child of a [`LocalCluster`] from anywhere (a signal task), and
/// removes its temporary directory.
#[derive(Clone)]
pub struct Reaper {
    children: Arc<Mutex<Children>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Reaper {
    /// Stops every child (SIGTERM, then SIGKILL after a grace period) and
    /// removes the temporary directory. Idempotent.
    pub fn reap(&self) {
        let mut children = lock(&self.children);
        let mut running: Vec<Child> = children
            .replicas
            .values_mut()
            .filter_map(Option::take)
            .collect();
        running.extend(children.balancer.take());
        stop_all(running);
        if let Some(dir) = children.temp_dir.take() {
            // Best effort: a leftover temp directory is harmless.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Signals every child to stop, then waits for them all within one grace
/// period and kills the stragglers.
fn stop_all(mut children: Vec<Child>) {
    for child in &children {
        terminate(child);
    }
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while !children.is_empty() && std::time::Instant::now() < deadline {
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if !children.is_empty() {
            // Blocking is fine: this runs at exit, not on a runtime worker
            // that serves anything else.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn terminate(child: &Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

/// Called first thing in a child started by [`LocalCluster`]: asks the kernel
/// to SIGKILL this process when its parent dies, and exits at once if the
/// parent is already gone. Does nothing when [`PARENT_PID_ENV`] is not set.
pub fn die_with_parent() {
    let Some(expected) = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    }
    // The parent may have died before the call above took effect.
    if nix::unistd::getppid().as_raw() != expected {
        std::process::exit(1);
    }
}

/// A running local cluster. Dropping it stops every process it started.
pub struct LocalCluster {
    dir: PathBuf,
    exe: PathBuf,
    ready_timeout: Duration,
    replica_addrs: BTreeMap<ReplicaId, String>,
    balancer_addr: String,
    resp_addr: Option<String>,
    /// The balancer's HTTP door, then each replica's HTTP listener.
    http_addrs: BTreeMap<String, String>,
    children: Arc<Mutex<Children>>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("balancer_addr", &self.balancer_addr)
            .field("replicas", &self.replica_addrs)
            .finish_non_exhaustive()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.reaper().reap();
    }
}

impl LocalCluster {
    /// Starts the replicas, waits for each to be ready, starts the balancer,
    /// and waits until it reports a leader. On any failure everything started
    /// so far is stopped.
    ///
    /// # Errors
    /// [`LocalError`] naming the process at fault and its log file.
    pub async fn start(options: LocalOptions) -> Result<LocalCluster, LocalError> {
        let (dir, temp_dir) = match &options.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|error| LocalError::DataDir {
                    path: dir.clone(),
                    error,
                })?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("semikv-local-")
                    .tempdir()
                    .map_err(|error| LocalError::DataDir {
                        path: std::env::temp_dir(),
                        error,
                    })?;
                let path = temp.keep();
                (path.clone(), Some(path))
            }
        };
        let children = Arc::new(Mutex::new(Children {
            temp_dir,
            ..Children::default()
        }));
        // From here on, dropping `cluster` stops what was started.
        let mut cluster = LocalCluster {
            dir,
            exe: options.exe,
            ready_timeout: options.ready_timeout,
            replica_addrs: BTreeMap::new(),
            balancer_addr: String::new(),
            resp_addr: None,
            http_addrs: BTreeMap::new(),
            children,
        };
        match cluster
            .boot(options.replicas.max(1), options.leader_timeout)
            .await
        {
            Ok(()) => Ok(cluster),
            Err(e) => {
                // The error points at log files: keep them for the user.
                lock(&cluster.children).temp_dir = None;
                Err(e)
            }
        }
    }

    async fn boot(&mut self, replicas: u32, leader_timeout: Duration) -> Result<(), LocalError> {
        let secret = self.secret_file();
        write_secret_file(&secret).map_err(|error| LocalError::DataDir {
            path: secret.clone(),
            error,
        })?;
        for n in 1..=replicas {
            let id = ReplicaId(n);
            let addr = self.spawn_replica(id, "127.0.0.1:0").await?;
            self.replica_addrs.insert(id, addr);
        }
        self.spawn_balancer().await?;
        self.wait_for_leader(leader_timeout).await
    }

    /// The cluster secret its processes share: generated at the first
    /// start, kept with the data (a kept `--data-dir` restarts with it).
    pub fn secret_file(&self) -> PathBuf {
        self.dir.join("cluster.secret")
    }

    /// The balancer's address: where clients connect.
    pub fn balancer_addr(&self) -> &str {
        &self.balancer_addr
    }

    /// The balancer's Redis-protocol door (redis-cli, Redis clients).
    pub fn resp_addr(&self) -> Option<&str> {
        self.resp_addr.as_deref()
    }

    /// The HTTP listeners (`--http`), by who serves them: `balancer` (the
    /// key-value API, status, health, metrics) and `replica-N` (health,
    /// status, metrics).
    pub fn http_addrs(&self) -> &BTreeMap<String, String> {
        &self.http_addrs
    }

    /// Each replica's address.
    pub fn replica_addrs(&self) -> &BTreeMap<ReplicaId, String> {
        &self.replica_addrs
    }

    /// The directory holding data, logs and ready files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A handle that stops every child from another task (e.g. on a signal).
    pub fn reaper(&self) -> Reaper {
        Reaper {
            children: self.children.clone(),
        }
    }

    /// Kills replica `id` with SIGKILL (a crash, not a clean stop).
    ///
    /// # Errors
    /// [`LocalError::UnknownReplica`] or [`LocalError::NotRunning`].
    pub fn kill(&mut self, id: ReplicaId) -> Result<(), LocalError> {
        let mut children = lock(&self.children);
        let slot = children
            .replicas
            .get_mut(&id)
            .ok_or(LocalError::UnknownReplica(id))?;
        let mut child = slot.take().ok_or(LocalError::NotRunning(id))?;
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Err(LocalError::NotRunning(id));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Restarts replica `id` on the address and data directory it had.
    /// Returns that address once it is ready.
    ///
    /// # Errors
    /// [`LocalError::UnknownReplica`], [`LocalError::Running`], or the
    /// start-up errors of [`LocalCluster::start`].
    pub async fn restart(&mut self, id: ReplicaId) -> Result<String, LocalError> {
        let addr = self
            .replica_addrs
            .get(&id)
            .cloned()
            .ok_or(LocalError::UnknownReplica(id))?;
        {
            let mut children = lock(&self.children);
            if let Some(Some(child)) = children.replicas.get_mut(&id) {
                if matches!(child.try_wait(), Ok(None)) {
                    return Err(LocalError::Running(id));
                }
            }
        }
        self.spawn_replica(id, &addr).await
    }

    async fn spawn_replica(&mut self, id: ReplicaId, listen: &str) -> Result<String, LocalError> {
        let what = format!("replica {id}");
        let data = self.dir.join(format!("replica-{id}"));
        let ready = self.dir.join(format!("replica-{id}.addr"));
        let log = self.dir.join(format!("replica-{id}.log"));
        let mut command = Command::new(&self.exe);
        command
            .arg(REPLICA_SUBCOMMAND)
            .arg(id.to_string())
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--cluster-secret-file")
            .arg(self.secret_file())
            .arg("--http")
            .arg("127.0.0.1:0");
        let child = self.spawn(&what, command, &ready, &log)?;
        lock(&self.children).replicas.insert(id, Some(child));
        let addr = self
            .wait_ready(&what, &ready, &log, |c| {
                c.replicas.get_mut(&id).and_then(Option::as_mut)
            })
            .await?;
        if let Some(http) = door_line(&ready, "http") {
            self.http_addrs.insert(format!("replica-{id}"), http);
        }
        Ok(addr)
    }

    async fn spawn_balancer(&mut self) -> Result<(), LocalError> {
        let what = "balancer".to_string();
        let ready = self.dir.join("lb.addr");
        let log = self.dir.join("lb.log");
        let mut command = Command::new(&self.exe);
        command.arg(BALANCER_SUBCOMMAND).arg("127.0.0.1:0");
        command.args(self.replica_addrs.values());
        command.arg("--ready-file").arg(&ready);
        command.arg("--cluster-secret-file").arg(self.secret_file());
        command.arg("--resp").arg("127.0.0.1:0");
        command.arg("--http").arg("127.0.0.1:0");
        let child = self.spawn(&what, command, &ready, &log)?;
        lock(&self.children).balancer = Some(child);
        self.balancer_addr = self
            .wait_ready(&what, &ready, &log, |c| c.balancer.as_mut())
            .await?;
        // The ready file is written whole: its door lines are there.
        self.resp_addr = door_line(&ready, "resp");
        if let Some(http) = door_line(&ready, "http") {
            self.http_addrs.insert("balancer".to_string(), http);
        }
        Ok(())
    }

    fn spawn(
        &self,
        what: &str,
        mut command: Command,
        ready: &Path,
        log: &Path,
    ) -> Result<Child, LocalError> {
        let spawn_error = |error| LocalError::Spawn {
            what: what.to_string(),
            error,
        };
        // A ready file left from an earlier run would be taken for this one.
        match std::fs::remove_file(ready) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(spawn_error(e)),
        }
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_error)?;
        let log_err = log_file.try_clone().map_err(spawn_error)?;
        command
            .env(PARENT_PID_ENV, std::process::id().to_string())
            // The logs are files, not terminals: no colour escapes in them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        command.spawn().map_err(spawn_error)
    }

    /// Polls `ready` until it holds an address, failing early if the child
    /// (found by `child_of`) exits.
    async fn wait_ready(
        &self,
        what: &str,
        ready: &Path,
        log: &Path,
        child_of: impl Fn(&mut Children) -> Option<&mut Child>,
    ) -> Result<String, LocalError> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(ready) {
                // The first line; a balancer adds one line per other door.
                let addr = text.lines().next().unwrap_or("").trim();
                if addr.parse::<std::net::SocketAddr>().is_ok() {
                    return Ok(addr.to_string());
                }
            }
            {
                let mut children = lock(&self.children);
                if let Some(child) = child_of(&mut children) {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(LocalError::Exited {
                            what: what.to_string(),
                            status,
                            log: log.to_path_buf(),
                        });
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(LocalError::NotReady {
                    what: what.to_string(),
                    after: self.ready_timeout,
                    log: log.to_path_buf(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_for_leader(&self, bound: Duration) -> Result<(), LocalError> {
        let deadline = Instant::now() + bound;
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        let mut client: Option<Client> = None;
        let mut last = "no answer yet".to_string();
        while Instant::now() < deadline {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = match Client::connect(&self.balancer_addr, &config).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        last = e.to_string();
                        None
                    }
                };
            }
            if let Some(c) = &client {
                match c.cluster_status().await {
                    Ok(status) if status.leader.is_some() => return Ok(()),
                    Ok(_) => last = "the balancer reports no leader".to_string(),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(LocalError::NoLeader {
            after: bound,
            last,
            dir: self.dir.clone(),
        })
    }
}

/// Writes a new cluster secret to `path`, readable by this user only, unless
/// the file exists already (it is then kept, as is).
///
/// # Errors
/// The file could not be created or written, or no randomness was had.
pub fn write_secret_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = semikv_protocol::auth::ClusterSecret::generate_file_text()
        .map_err(std::io::Error::other)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The address on the `NAME ADDR` line of a ready file, if it has one.
fn door_line(ready: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(ready).ok()?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix).map(|a| a.trim().to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn options(exe: &str, dir: &Path) -> LocalOptions {
        LocalOptions {
            replicas: 2,
            data_dir: Some(dir.to_path_buf()),
            exe: PathBuf::from(exe),
            ready_timeout: Duration::from_secs(5),
            leader_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_child_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        // `false` ignores its arguments and exits 1 at once.
        let err = LocalCluster::start(options("false", dir.path()))
            .await
            .unwrap_err();
        match err {
            LocalError::Exited { what, log, .. } => {
                assert_eq!(what, "replica 1");
                assert_eq!(log, dir.path().join("replica-1.log"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_executable_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalCluster::start(options("/nonexistent/semikv", dir.path()))
            .await
            .unwrap_err();
        assert!(matches!(err, LocalError::Spawn { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_child_that_never_gets_ready_times_out_and_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep __replica ...` fails; use a script that ignores its arguments.
        let script = dir.path().join("hang.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        let mut perms = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script, perms).unwrap();
        let mut opts = options(script.to_str().unwrap(), dir.path());
        opts.ready_timeout = Duration::from_millis(300);
        let err = LocalCluster::start(opts).await.unwrap_err();
        assert!(matches!(err, LocalError::NotReady { .. }), "{err:?}");
    }
}
