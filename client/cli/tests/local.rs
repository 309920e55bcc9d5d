//! `semikv --local`: a real local cluster (this crate's binary re-run as the
//! replicas and the balancer), its failover through `kill`/`restart`, and
//! that no child outlives `semikv` however it exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use semikv_cli::local::{LocalCluster, LocalOptions};
use semikv_client::{Client, ClientConfig};
use semikv_protocol::ReplicaId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn options(replicas: u32, dir: &std::path::Path) -> LocalOptions {
    LocalOptions {
        replicas,
        data_dir: Some(dir.to_path_buf()),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_semikv")),
        ready_timeout: Duration::from_secs(20),
        leader_timeout: Duration::from_secs(30),
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// Polls `check` on a fresh-as-needed connection to `addr` until it returns
/// `Some`, within [`BOUND`].
async fn eventually<T, F, Fut>(addr: &str, what: &str, mut check: F) -> T
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + BOUND;
    let mut client: Option<Client> = None;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if client.as_ref().is_none_or(Client::is_closed) {
            client = Client::connect(addr, &config()).await.ok();
        }
        if let Some(c) = &client {
            if let Some(v) = check(c.clone()).await {
                return v;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until nothing accepts connections on `addr` any more.
async fn wait_gone(addr: &str) {
    let deadline = Instant::now() + BOUND;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_fails_over_and_restart_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(options(3, dir.path())).await.unwrap();
    let lb = cluster.balancer_addr().to_string();
    let addrs = cluster.replica_addrs().clone();
    assert_eq!(addrs.len(), 3);

    let client = Client::connect(&lb, &config()).await.unwrap();
    client.set("a", "1").await.unwrap();
    let old_leader = client.cluster_status().await.unwrap().leader.unwrap();
    let (&old_id, _) = addrs.iter().find(|(_, a)| **a == old_leader).unwrap();

    cluster.kill(old_id).unwrap();
    assert!(
        cluster.kill(old_id).is_err(),
        "a dead replica cannot be killed"
    );
    let new_leader = eventually(&lb, "a new leader", |c| {
        let old = old_leader.clone();
        async move {
            let leader = c.cluster_status().await.ok()?.leader?;
            (leader != old).then_some(leader)
        }
    })
    .await;
    assert_ne!(new_leader, old_leader);
    let value = eventually(&lb, "the committed value", |c| async move {
        c.get("a").await.ok().flatten()
    })
    .await;
    assert_eq!(&value[..], b"1");

    assert!(cluster.restart(ReplicaId(99)).await.is_err());
    let running = *addrs.keys().find(|id| **id != old_id).unwrap();
    assert!(
        cluster.restart(running).await.is_err(),
        "restart of a running replica"
    );
    let addr = cluster.restart(old_id).await.unwrap();
    assert_eq!(addr, old_leader, "restart keeps the address");
    eventually(&lb, "the restarted replica healthy", |c| {
        let addr = addr.clone();
        async move {
            let status = c.cluster_status().await.ok()?;
            status
                .replicas
                .iter()
                .any(|r| r.addr == addr && r.healthy)
                .then_some(())
        }
    })
    .await;

    drop(client);
    drop(cluster);
    for addr in addrs.values().chain([&lb]) {
        wait_gone(addr).await;
    }
}

/// Reads `semikv --local` stderr until it names the balancer and replicas;
/// returns every address it printed and its directory.
async fn read_addresses(stderr: tokio::process::ChildStderr) -> (Vec<String>, PathBuf) {
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + BOUND;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("semikv never reported its cluster")
            .unwrap()
            .expect("semikv exited before reporting its cluster");
        if let Some(rest) = line.strip_prefix("semikv: balancer on ") {
            // "ADDR; replicas 1=ADDR 2=ADDR; data and logs in DIR"
            let mut parts = rest.split("; ");
            let mut addrs = vec![parts.next().unwrap().to_string()];
            let replicas = parts.next().unwrap().strip_prefix("replicas ").unwrap();
            let dir = PathBuf::from(
                parts
                    .next()
                    .unwrap()
                    .strip_prefix("data and logs in ")
                    .unwrap(),
            );
            addrs.extend(
                replicas
                    .split(' ')
                    .map(|r| r.split_once('=').unwrap().1.to_string()),
            );
            // Keep draining so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (addrs, dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_against_a_local_cluster_then_everything_stops() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_semikv"))
        .args(["--local", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addrs, dir) = read_addresses(child.stderr.take().unwrap()).await;
    assert_eq!(addrs.len(), 3);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"set a=1\nget a\nstatus\nkill 9\n")
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["OK", "1"], "{text}");
    let status: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(status["replicas"].as_array().unwrap().len(), 2);
    assert!(lines[3].starts_with("(error) no replica 9"), "{text}");
    assert_eq!(output.status.code(), Some(1));
    for addr in &addrs {
        wait_gone(addr).await;
    }
    assert!(!dir.exists(), "the temporary directory was left behind");
}

async fn signal_stops_everything(signal: nix::sys::signal::Signal) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_semikv"))
        .args(["--local", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addrs, dir) = read_addresses(child.stderr.take().unwrap()).await;
    // Stdin stays open: semikv is waiting for script input when signalled.
    let _stdin = child.stdin.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    for addr in &addrs {
        wait_gone(addr).await;
    }
    if signal == nix::sys::signal::Signal::SIGKILL {
        // Nothing of semikv ran to remove it.
        std::fs::remove_dir_all(&dir).unwrap();
    } else {
        assert!(!dir.exists(), "the temporary directory was left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_local_cluster() {
    signal_stops_everything(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_semikv_still_stops_the_local_cluster() {
    signal_stops_everything(nix::sys::signal::Signal::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_against_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_semikv"))
        .args(["--local", "1", "--data-dir"])
        .arg(dir.path())
        .args(["set", "k=v"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "OK\n");
    // --data-dir is kept, with each process's log in it.
    assert!(
        err.contains(&format!("data and logs in {}", dir.path().display())),
        "{err}"
    );
    for log in ["replica-1.log", "lb.log"] {
        assert!(dir.path().join(log).exists(), "{log} missing");
    }
    assert!(dir.path().join("replica-1").is_dir());
}
