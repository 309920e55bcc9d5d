//! [`Cluster`]: N replicas (ids 1..=N, index i is id i+1), optionally a
//! balancer in front, all in one temp dir that lives as long as the fixture.
//! Dropping it kills every process.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use std::sync::Arc;

use semikv_protocol::auth::ClusterSecret;
use semikv_protocol::tls::testing::TestCa;
use semikv_protocol::tls::TlsClientConfig;
use semikv_protocol::{ClusterStatus, Epoch, Hello, LogIndex, NodeRole, NodeStatus, Role};
use tempfile::TempDir;

use crate::client::{node, Client, Dial};
use crate::node::{
    start_balancer, start_balancer_at, start_replica, start_replica_at, Balancer, Replica,
};
use crate::wait::Deadline;

/// Bound on a cluster converging: followers connecting, catching up.
pub const CONVERGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sync timeout the test-driven election gives the leader.
pub const ELECT_SYNC_TIMEOUT_MS: u64 = 2000;

/// Replicas (and a balancer) owned together.
#[derive(Debug)]
pub struct Cluster {
    // Processes are declared before the dir so they die before it is removed.
    replicas: Vec<Replica>,
    balancer: Option<Balancer>,
    replica_args: Vec<OsString>,
    /// The secret every process was started with, if any.
    secret: Option<ClusterSecret>,
    /// The user the fixture's own balancer connections log in as.
    login: Option<(String, String)>,
    /// The CA of a cluster started [`Cluster::with_tls`], and the TLS the
    /// fixture's connections use (its certificate presented).
    tls: Option<(TestCa, Arc<TlsClientConfig>)>,
    dir: TempDir,
}

impl Cluster {
    /// `n` idle replicas and no balancer: the test plays the balancer.
    ///
    /// # Errors
    /// A replica failed to start.
    pub async fn replicas(n: usize, replica_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::replicas_prepared(n, replica_args, |_| Ok(())).await
    }

    /// [`Cluster::replicas`], after `prepare` was given the cluster's temp
    /// dir (replica `i`'s data goes to `replica-i` in it): e.g. to mount a
    /// small file system there first.
    ///
    /// # Errors
    /// `prepare` failed, or a replica failed to start.
    pub async fn replicas_prepared(
        n: usize,
        replica_args: &[&str],
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let dir = temp_dir()?;
        prepare(dir.path())?;
        let replica_args: Vec<OsString> = replica_args.iter().map(OsString::from).collect();
        Cluster::start_replicas(n, replica_args, None, dir).await
    }

    async fn start_replicas(
        n: usize,
        replica_args: Vec<OsString>,
        secret: Option<ClusterSecret>,
        dir: TempDir,
    ) -> anyhow::Result<Cluster> {
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let id = u32::try_from(i + 1)?;
            let data_dir = dir.path().join(format!("replica-{id}"));
            replicas.push(start_replica(id, &data_dir, &replica_args).await?);
        }
        Ok(Cluster {
            replicas,
            balancer: None,
            replica_args,
            secret,
            login: None,
            tls: None,
            dir,
        })
    }

    /// `n` replicas and a balancer in front, all started with a new cluster
    /// secret (its file is [`Cluster::secret_file`]); the fixture's own
    /// connections prove it.
    ///
    /// # Errors
    /// A process failed to start.
    pub async fn secured(
        n: usize,
        replica_args: &[&str],
        balancer_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir = temp_dir()?;
        let file = dir.path().join(SECRET_FILE);
        write_secret(&file)?;
        let secret = ClusterSecret::from_file(&file)?;
        let flag = [OsString::from("--cluster-secret-file"), file.into()];
        let with_secret = |args: &[&str]| -> Vec<OsString> {
            args.iter()
                .map(OsString::from)
                .chain(flag.clone())
                .collect()
        };
        let mut cluster =
            Cluster::start_replicas(n, with_secret(replica_args), Some(secret), dir).await?;
        let addrs = cluster.replica_addrs();
        let balancer_args = with_secret(balancer_args);
        cluster.balancer = Some(start_balancer(cluster.dir.path(), &addrs, &balancer_args).await?);
        Ok(cluster)
    }

    /// The cluster secret's file, for a cluster started [`Cluster::secured`].
    pub fn secret_file(&self) -> Option<std::path::PathBuf> {
        self.secret
            .as_ref()
            .map(|_| self.dir.path().join(SECRET_FILE))
    }

    /// The cluster secret, for a cluster started [`Cluster::secured`].
    pub fn secret(&self) -> Option<&ClusterSecret> {
        self.secret.as_ref()
    }

    /// `n` replicas and a balancer in front of them.
    ///
    /// # Errors
    /// A process failed to start.
    pub async fn with_balancer(
        n: usize,
        replica_args: &[&str],
        balancer_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Cluster::with_balancer_prepared(n, replica_args, balancer_args, |_| Ok(())).await
    }

    /// [`Cluster::with_balancer`] after [`Cluster::replicas_prepared`]'s
    /// `prepare`.
    ///
    /// # Errors
    /// `prepare` failed, or a process failed to start.
    pub async fn with_balancer_prepared(
        n: usize,
        replica_args: &[&str],
        balancer_args: &[&str],
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::replicas_prepared(n, replica_args, prepare).await?;
        let addrs = cluster.replica_addrs();
        cluster.balancer = Some(start_balancer(cluster.dir.path(), &addrs, balancer_args).await?);
        Ok(cluster)
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the temp dir (data dirs and logs) in place when the cluster
    /// is dropped, for a look after a failure; the processes die as ever.
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether there are no replicas.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Replica `i` (id `i + 1`).
    ///
    /// # Panics
    /// `i` is out of range (a bug in the test).
    pub fn replica(&self, i: usize) -> &Replica {
        &self.replicas[i]
    }

    /// Replica `i`, mutably (to signal its process).
    ///
    /// # Panics
    /// `i` is out of range.
    pub fn replica_mut(&mut self, i: usize) -> &mut Replica {
        &mut self.replicas[i]
    }

    /// Every replica's address, in index order.
    pub fn replica_addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// The balancer's address.
    ///
    /// # Panics
    /// The cluster was made without a balancer.
    pub fn balancer_addr(&self) -> SocketAddr {
        self.balancer
            .as_ref()
            .map(|b| b.addr)
            .expect("cluster has no balancer")
    }

    /// The balancer, if any.
    pub fn balancer(&self) -> Option<&Balancer> {
        self.balancer.as_ref()
    }

    /// The balancer, if any, mutably (to signal its process).
    pub fn balancer_mut(&mut self) -> Option<&mut Balancer> {
        self.balancer.as_mut()
    }

    /// The index of the replica at `addr` as the balancer names it.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.replicas
            .iter()
            .position(|r| r.addr.to_string() == addr)
    }

    /// The index of the replica the balancer routes writes to, `None` while
    /// it knows no leader.
    ///
    /// # Errors
    /// There is no balancer, it did not answer, or it names a leader that is
    /// not one of the replicas.
    pub async fn balancer_leader(&self) -> anyhow::Result<Option<usize>> {
        let status = self.connect_balancer().await?.cluster_status().await?;
        self.leader_in(&status)
    }

    fn leader_in(&self, status: &ClusterStatus) -> anyhow::Result<Option<usize>> {
        match &status.leader {
            None => Ok(None),
            Some(addr) => self
                .index_of(addr)
                .map(Some)
                .with_context(|| format!("the balancer's leader {addr} is not a replica")),
        }
    }

    /// Waits until the balancer sees a steady cluster: every replica
    /// healthy at the balancer's epoch, one leading, the others following,
    /// each having applied what the leader had committed when the wait
    /// began (asked of the leader itself). Returns the leader's index.
    ///
    /// # Errors
    /// There is no balancer, it stopped answering, or the cluster was not
    /// steady within `timeout`.
    pub async fn wait_steady(&self, timeout: Duration) -> anyhow::Result<usize> {
        let mut balancer = self.connect_balancer().await?;
        let deadline = Deadline::new(timeout, "a steady cluster (all healthy, caught up)");
        let mut goal = None;
        loop {
            let status = balancer.cluster_status().await?;
            let leader = status
                .leader
                .as_ref()
                .and_then(|l| status.replicas.iter().find(|r| &r.addr == l));
            if let Some(leader) = leader {
                let goal = match goal {
                    Some(goal) => goal,
                    // The leader's own commit index, not the balancer's last
                    // report of it, which may predate writes acknowledged
                    // just before this call.
                    None => {
                        let own = match self.index_of(&leader.addr) {
                            Some(i) => self.observe(i).await?.status().await?,
                            None => bail!("the balancer's leader {} is not a replica", leader.addr),
                        };
                        *goal.insert(own.commit_index.max(leader.commit_index))
                    }
                };
                let steady = leader.role == NodeRole::Leader
                    && status.replicas.iter().all(|r| {
                        r.healthy
                            && r.epoch == status.epoch
                            && r.applied_index >= goal
                            && (r.role == NodeRole::Follower || r.addr == leader.addr)
                    });
                if steady {
                    if let Some(i) = self.leader_in(&status)? {
                        return Ok(i);
                    }
                }
            }
            if deadline.expired() {
                bail!("cluster not steady within {timeout:?}: {status:?}");
            }
            deadline.tick().await?;
        }
    }

    /// SIGKILLs the balancer and starts a new one on the same address, in
    /// front of the same replicas, which keep running throughout.
    ///
    /// # Errors
    /// There is no balancer, or the new one failed to start.
    pub async fn restart_balancer(&mut self, balancer_args: &[&str]) -> anyhow::Result<()> {
        let mut old = self.balancer.take().ok_or_else(|| anyhow!("no balancer"))?;
        old.proc.kill9()?;
        let addr = old.addr;
        // Gone before its successor takes the address (secured mode keeps
        // a registry of balancer addresses).
        drop(old);
        let addrs = self.replica_addrs();
        let mut args: Vec<OsString> = balancer_args.iter().map(OsString::from).collect();
        if let Some(file) = self.secret_file() {
            args.extend([OsString::from("--cluster-secret-file"), file.into()]);
        }
        args.extend(self.process_tls_flags("balancer"));
        self.balancer = Some(start_balancer_at(self.dir.path(), addr, &addrs, &args).await?);
        Ok(())
    }

    /// SIGKILLs replica `i` and reaps it.
    ///
    /// # Errors
    /// Signalling failed.
    pub fn kill_replica(&mut self, i: usize) -> anyhow::Result<()> {
        self.replicas[i].proc.kill9()?;
        Ok(())
    }

    /// Restarts replica `i` on its old address and data dir (killing it
    /// first if it still runs).
    ///
    /// # Errors
    /// It failed to start again.
    pub async fn restart_replica(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart_replica_with(i, &[]).await
    }

    /// As [`Cluster::restart_replica`], with extra arguments after the
    /// cluster's own.
    ///
    /// # Errors
    /// It failed to start again.
    pub async fn restart_replica_with(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let old = &mut self.replicas[i];
        old.proc.kill9()?;
        let (id, addr, data_dir) = (old.id, old.addr, old.data_dir.clone());
        let mut args = self.replica_args.clone();
        args.extend(self.process_tls_flags(&format!("replica-{id}")));
        args.extend(extra.iter().map(OsString::from));
        self.replicas[i] = start_replica_at(id, &data_dir, addr, &args).await?;
        Ok(())
    }

    /// The TLS flags of the process whose certificate files are named
    /// `name` (none unless the cluster was started [`Cluster::with_tls`]).
    fn process_tls_flags(&self, name: &str) -> Vec<OsString> {
        match self.tls_ca() {
            None => Vec::new(),
            Some(ca) => tls_flags(&semikv_protocol::tls::TlsFiles {
                cert: self.dir.path().join(format!("{name}.pem")),
                key: self.dir.path().join(format!("{name}.key")),
                ca: Some(ca.ca_file.clone()),
            }),
        }
    }

    /// A client connection to replica `i` as `role`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    /// Proves the cluster secret, when there is one, for the internal roles.
    pub async fn connect(&self, i: usize, role: Role) -> anyhow::Result<Client> {
        let dial = Dial {
            tls: self.tls.as_ref().map(|(_, tls)| tls.clone()),
            secret: self.secret.clone().filter(|_| role != Role::Client),
            login: None,
        };
        Client::dial(self.replicas[i].addr, Hello::new(role, None), &dial).await
    }

    /// A connection to replica `i` that may read its status: a client's, or
    /// a balancer's that proves the secret when the cluster has one (its
    /// replicas then serve no clients).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn observe(&self, i: usize) -> anyhow::Result<Client> {
        let role = if self.secret.is_some() || self.tls.is_some() {
            Role::Balancer
        } else {
            Role::Client
        };
        self.connect(i, role).await
    }

    /// A client connection to the balancer.
    ///
    /// # Errors
    /// As [`Client::connect`], or there is no balancer.
    pub async fn connect_balancer(&self) -> anyhow::Result<Client> {
        let addr = self
            .balancer
            .as_ref()
            .context("the cluster has no balancer")?
            .addr;
        let dial = Dial {
            tls: self.tls.as_ref().map(|(_, tls)| tls.clone()),
            secret: None,
            login: self.login.clone(),
        };
        Client::dial(addr, Hello::new(Role::Client, None), &dial).await
    }

    /// `n` replicas and a balancer, every listener and link on TLS: a new
    /// CA in the cluster's dir signs each process's certificate
    /// (`replica-ID.pem`, `balancer.pem`, and `harness.pem` for the
    /// fixture's own connections), and every process verifies its peers
    /// with it.
    ///
    /// # Errors
    /// Making the certificates or starting a process failed.
    pub async fn with_tls(
        n: usize,
        replica_args: &[&str],
        balancer_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir = temp_dir()?;
        let ca = TestCa::new(dir.path(), "cluster").map_err(|e| anyhow!("{e}"))?;
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let id = u32::try_from(i + 1)?;
            let files = ca
                .issue(dir.path(), &format!("replica-{id}"))
                .map_err(|e| anyhow!("{e}"))?;
            let mut args: Vec<OsString> = replica_args.iter().map(OsString::from).collect();
            args.extend(tls_flags(&files));
            let data_dir = dir.path().join(format!("replica-{id}"));
            replicas.push(start_replica(id, &data_dir, &args).await?);
        }
        let harness = ca
            .issue(dir.path(), "harness")
            .map_err(|e| anyhow!("{e}"))?;
        let tls =
            semikv_protocol::tls::client_config(&ca.ca_file, Some((&harness.cert, &harness.key)))?;
        let files = ca
            .issue(dir.path(), "balancer")
            .map_err(|e| anyhow!("{e}"))?;
        let mut args: Vec<OsString> = balancer_args.iter().map(OsString::from).collect();
        args.extend(tls_flags(&files));
        let mut cluster = Cluster {
            replicas,
            balancer: None,
            replica_args: Vec::new(),
            secret: None,
            login: None,
            tls: Some((ca, Arc::new(tls))),
            dir,
        };
        let addrs = cluster.replica_addrs();
        cluster.balancer = Some(start_balancer(cluster.dir.path(), &addrs, &args).await?);
        Ok(cluster)
    }

    /// The CA of a cluster started [`Cluster::with_tls`].
    pub fn tls_ca(&self) -> Option<&TestCa> {
        self.tls.as_ref().map(|(ca, _)| ca)
    }

    /// New certificates, from the same CA, in the files every process of a
    /// [`Cluster::with_tls`] loaded (processes take them on SIGHUP).
    ///
    /// # Errors
    /// Not a TLS cluster, or making a certificate failed.
    pub fn reissue_certificates(&self) -> anyhow::Result<()> {
        let ca = self.tls_ca().context("not a TLS cluster")?;
        for replica in &self.replicas {
            ca.issue(self.dir.path(), &format!("replica-{}", replica.id))
                .map_err(|e| anyhow!("{e}"))?;
        }
        ca.issue(self.dir.path(), "balancer")
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    /// Makes the fixture's own balancer connections (and
    /// [`Cluster::connect_balancer`]'s) log in as `user`, for a balancer
    /// started with `--users-file`.
    pub fn log_in_as(&mut self, user: &str, password: &str) {
        self.login = Some((user.to_string(), password.to_string()));
    }

    /// The index of the replica that says it leads at the highest epoch, or
    /// `None` if no running replica leads. Replicas that do not answer are
    /// skipped.
    ///
    /// # Errors
    /// Two running replicas claim leadership at the same epoch.
    pub async fn leader_index(&mut self) -> anyhow::Result<Option<usize>> {
        let mut best: Option<(usize, u128)> = None;
        for i in 0..self.replicas.len() {
            if !self.replicas[i].proc.is_running() {
                continue;
            }
            let Ok(mut c) = self.observe(i).await else {
                continue;
            };
            let Ok(status) = c.status().await else {
                continue;
            };
            if status.role != NodeRole::Leader {
                continue;
            }
            match best {
                Some((j, epoch)) if epoch == status.epoch.raw() => {
                    bail!("replicas {j} and {i} both lead at epoch {epoch}")
                }
                Some((_, epoch)) if epoch > status.epoch.raw() => {}
                _ => best = Some((i, status.epoch.raw())),
            }
        }
        Ok(best.map(|(i, _)| i))
    }

    /// Plays the balancer's election with every replica up: Fence{epoch} to
    /// all, Promote{epoch, sync_replicas, [`ELECT_SYNC_TIMEOUT_MS`], no async
    /// fallback} to `leader`, Follow{epoch} to the others; then waits until
    /// the leader sees `sync_replicas` followers connected.
    ///
    /// # Errors
    /// A replica refused or did not answer, or the followers did not connect
    /// within [`CONVERGE_TIMEOUT`].
    pub async fn elect(
        &self,
        leader: usize,
        epoch: u128,
        sync_replicas: u32,
    ) -> anyhow::Result<()> {
        for i in 0..self.len() {
            let mut admin = self.connect(i, Role::Balancer).await?;
            node(&admin.fence(epoch).await?).with_context(|| format!("fencing replica {i}"))?;
        }
        let mut admin = self.connect(leader, Role::Balancer).await?;
        let status = node(
            &admin
                .promote(epoch, sync_replicas, ELECT_SYNC_TIMEOUT_MS)
                .await?,
        )?;
        anyhow::ensure!(
            status.role == NodeRole::Leader,
            "promote answered {status:?}"
        );
        let (leader_id, leader_addr) = (self.replica(leader).id, self.replica(leader).addr);
        for i in (0..self.len()).filter(|&i| i != leader) {
            let mut follower = self.connect(i, Role::Balancer).await?;
            let status = node(&follower.follow(epoch, leader_id, leader_addr).await?)?;
            anyhow::ensure!(
                status.role == NodeRole::Follower,
                "follow answered {status:?}"
            );
        }
        let deadline = Deadline::new(CONVERGE_TIMEOUT, "followers to connect to the leader");
        loop {
            let status = admin.status().await?;
            let connected = status.followers.iter().filter(|f| f.connected).count();
            if connected >= sync_replicas as usize {
                return Ok(());
            }
            deadline.tick().await?;
        }
    }

    /// Waits until replica `i` reports `index` committed and applied.
    ///
    /// # Errors
    /// It did not within [`CONVERGE_TIMEOUT`], or stopped answering.
    pub async fn wait_applied(&self, i: usize, index: LogIndex) -> anyhow::Result<NodeStatus> {
        let mut c = self.observe(i).await?;
        let deadline = Deadline::new(CONVERGE_TIMEOUT, "a replica to commit and apply");
        loop {
            let status = c.status().await?;
            if status.commit_index >= index && status.applied_index >= index {
                return Ok(status);
            }
            deadline.tick().await?;
        }
    }

    /// Waits until replica `i` follows at an epoch above `above` and has
    /// applied everything replica `leader` had committed when the wait
    /// began: a replica back from a fault has rejoined and caught up.
    ///
    /// # Errors
    /// `leader` or `i` did not answer, or `i` had not rejoined within
    /// `timeout`.
    pub async fn wait_rejoined(
        &self,
        i: usize,
        leader: usize,
        above: Epoch,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let target = self.observe(leader).await?.status().await?.commit_index;
        let mut c = self.observe(i).await?;
        let deadline = Deadline::new(timeout, "a replica to rejoin as a caught-up follower");
        loop {
            let s = c.status().await?;
            if s.role == NodeRole::Follower && s.epoch > above && s.applied_index >= target {
                return Ok(());
            }
            deadline.tick().await?;
        }
    }

    /// The stderr tails of every process, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            out.push_str(&format!(
                "==== replica {} ({})\n{}\n",
                r.id,
                r.addr,
                r.proc.stderr_tail()
            ));
        }
        if let Some(b) = &self.balancer {
            out.push_str(&format!(
                "==== balancer ({})\n{}\n",
                b.addr,
                b.proc.stderr_tail()
            ));
        }
        out
    }

    /// Fails with every process's stderr tail appended when `result` failed.
    ///
    /// # Errors
    /// `result`'s error, with the logs as context.
    pub fn explain<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        result.map_err(|e| anyhow!("{e:#}\n{}", self.logs()))
    }
}

/// The name of a secured cluster's secret file in its temp dir.
const SECRET_FILE: &str = "cluster.secret";

fn temp_dir() -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix("semikv-it-")
        .tempdir()
        .context("creating the cluster's temp dir")
}

/// Writes a new cluster secret to `path`, mode 600.
///
/// # Errors
/// The file could not be written.
pub fn write_secret(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let text = ClusterSecret::generate_file_text()?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

fn tls_flags(files: &semikv_protocol::tls::TlsFiles) -> Vec<OsString> {
    let mut flags = vec![
        OsString::from("--tls-cert"),
        files.cert.clone().into(),
        OsString::from("--tls-key"),
        files.key.clone().into(),
    ];
    if let Some(ca) = &files.ca {
        flags.extend([OsString::from("--tls-ca"), ca.clone().into()]);
    }
    flags
}
