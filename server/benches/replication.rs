//! Write throughput of one leader with one synchronous follower, on loopback
//! with real disks: 64 concurrent writers, `--fsync always` and `never`.
//! Prints figures; asserts nothing. Run with
//! `cargo bench -p semikv-server --bench replication [-- --seconds N]`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use semikv_protocol::Role;
use semikv_server::FsyncPolicy;
use support::{Peer, Server};

const WRITERS: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("leader + 1 sync follower, {WRITERS} writers, 16-byte values, {seconds} s each");
    println!(
        "{:<8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>13}",
        "fsync", "writes/s", "p50 ms", "p99 ms", "max ms", "fsyncs", "writes/fsync"
    );
    for (name, policy) in [
        ("always", FsyncPolicy::Always),
        ("never", FsyncPolicy::Never),
    ] {
        runtime.block_on(run(name, policy, Duration::from_secs(seconds)));
    }
}

async fn run(name: &str, policy: FsyncPolicy, duration: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for id in 1..=2 {
        let path = dir.path().join(format!("r{id}"));
        servers.push(Server::start_with(id, &path, None, |c| c.fsync = policy).await);
    }
    support::elect(&servers, 0, 1, 1).await;
    let leader = servers[0].addr;
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(async move {
            let mut peer = Peer::connect(leader, Role::Client).await;
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                peer.set_ok(&format!("w{w}-{}", i % 1000), "0123456789abcdef")
                    .await;
                latencies.push(start.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1000.0
    };
    let writes = latencies.len();
    let mut summaries = Vec::new();
    for s in servers {
        summaries.push(s.stop().await.unwrap());
    }
    let leader = summaries[0];
    let per_fsync = if leader.fsyncs == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", leader.entries as f64 / leader.fsyncs as f64)
    };
    println!(
        "{:<8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>13}",
        name,
        writes as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        leader.fsyncs,
        per_fsync,
    );
}
