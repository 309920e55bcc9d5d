//! Failover measurement harness (not a test): three real `semikv-server`
//! replicas behind the real `semikv-lb` binary with its defaults (heartbeat
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
//! At the end every key written is read back through the balancer and directly
//! from every replica, once each has applied the leader's commit index, and
//! the history checker judges each of those states: no acknowledged write
//! lost, no value never written or refused for sure; every write answered
//! with an error must be on all replicas or none.
//!
//! Everything but the measuring is semikv-tests': the processes and their
//! guards ([`Cluster`]), the writers ([`Workload`], one unique key per write,
//! honouring retry hints), the [`Probe`], the read-back and the
//! [`checker`]. The balancer is the release `semikv-lb` binary, as deployed,
//! not the library run in-process.
//!
//! Exit code: 0 when all is well; 1 when an acknowledged write was lost or read
//! back wrong, replicas diverged, a refused write was applied, or a deposed
//! leader acknowledged a write; 2 on bad arguments or when a round or the
//! read-back could not complete (diagnostics and log tails are printed). Logs
//! are kept in the temp dir on any failure, with `--keep-logs`, or when a round
//! was an outlier.
//!
//! Run (release; builds `semikv-server` and `semikv-lb` in the same profile
//! and target dir first):
//!
//! ```text
//! cargo bench -p semikv-tests --bench failover_timing -- 10
//! ```
//!
//! Usage: `failover_timing [SERVER_BIN] [ROUNDS] [--mode kill|stop|both]
//! [--hold-ms MS] [--keep-logs]` (ROUNDS per mode, default 10; a first
//! argument that is a number is ROUNDS; SERVER_BIN replaces the built
//! replica, as `SEMIKV_SERVER_BIN` does, and `SEMIKV_LB_BIN` the balancer;
//! default mode `both`, kill rounds first; `--hold-ms` keeps a stopped leader
//! stopped that much longer after the first write on the new leader, default
//! 0, to show what the writers whose writes are stuck at it experience).
//! Each process's stderr goes to `replica-N.stderr` / `lb.stderr` in the temp
//! dir; `RUST_LOG` sets their level.
//!
//! Modules: [`args`] the command line, [`verify`] the read-back and its
//! verdict, [`report`] the printing.

mod args;
mod report;
mod verify;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use semikv_tests::checker::Event;
use semikv_tests::probe::{write_once, Probe};
use semikv_tests::timing::{first_ack_sent_from, is_acked_write, longest_gap};
use semikv_tests::workload::{Tally, Workload, WorkloadConfig};
use semikv_tests::{bin, wait_for, Cluster};
use tokio::sync::oneshot;

use crate::args::Options;
use crate::report::{load_average, Phases, SLOW_FACTOR};

/// Bound of every wait of the harness: a failover, a rejoin, a catch-up.
const WAIT: Duration = Duration::from_secs(15);

/// Replicas in the cluster.
const REPLICAS: usize = 3;

/// Concurrent writers through the balancer.
const WRITERS: usize = 4;

/// Interval between the probe's writes while a failover is under way: the
/// resolution of the signal-to-first-write figure.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Client ids of the probe's and the fencing checks' events (the writers are
/// 0..WRITERS).
const PROBE_CLIENT: usize = 1000;
const FENCE_CLIENT: usize = 1001;

/// Normal operation between rounds, so every round starts from a steady write
/// rate and its gap is measured from a normal write (a span of load, not a
/// synchronisation).
const SETTLE: Duration = Duration::from_millis(500);

/// How a round fails the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Stop,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Kill => "kill",
            Mode::Stop => "stop",
        }
    }
}

/// The figures of one round.
pub struct RoundResult {
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

/// What a round's recovery found out, beside the probe.
struct Recovery {
    first_ack: Instant,
    rejoin: Duration,
    elect_ms: Option<u64>,
}

/// A fencing check: when it was made, and the write's record and failure.
type Fence = (&'static str, (Event, Option<&'static str>));

struct Harness {
    cluster: Cluster,
    workload: Workload,
    /// The probe's writes and, booked with them, the fencing checks'.
    probe: Probe,
    /// Direct writes a deposed leader acknowledged (must stay empty).
    fence_violations: Vec<String>,
    /// See [`Options::hold`].
    hold: Duration,
}

impl Harness {
    /// Every mode's rounds, one line each as it ends, until one fails.
    /// Returns the rounds' figures, the writers' tally as each phase began,
    /// and the failure, if any.
    async fn rounds(
        &mut self,
        options: &Options,
    ) -> (Vec<RoundResult>, Vec<(&'static str, Tally)>, Option<String>) {
        let mut results = Vec::new();
        let mut phases = vec![("warm-up", Tally::default())];
        report::print_round_header();
        for &mode in &options.modes {
            phases.push((mode.name(), self.workload.tally()));
            for round in 0..options.rounds {
                match self.round(mode, round).await {
                    Ok(r) => {
                        report::print_round(&r);
                        results.push(r);
                    }
                    Err(e) => {
                        let what = format!("{} round {round} failed: {e:#}", mode.name());
                        println!("{what}");
                        if let Ok(mut c) = self.cluster.connect_balancer().await {
                            if let Ok(status) = c.cluster_status().await {
                                println!("balancer view: {status:?}");
                            }
                        }
                        println!("{}", self.cluster.logs());
                        self.resume_all();
                        phases.push(("drain", self.workload.tally()));
                        return (results, phases, Some(what));
                    }
                }
            }
        }
        phases.push(("drain", self.workload.tally()));
        (results, phases, None)
    }

    async fn round(&mut self, mode: Mode, round: usize) -> anyhow::Result<RoundResult> {
        let cluster = &self.cluster;
        let slot = wait_for(WAIT, "the balancer to know a leader", || async move {
            cluster.balancer_leader().await.ok().flatten()
        })
        .await?;
        let victim = self.cluster.replica(slot).id;
        // The clock starts before the signal, so the figure errs on the long
        // side; only writes sent once the failure is certain (the process
        // reaped, or seen stopped) count, because the leader may still
        // acknowledge writes until the signal lands.
        let failed_at = Instant::now();
        match mode {
            Mode::Kill => self.cluster.kill_replica(slot)?,
            Mode::Stop => {
                let proc = &mut self.cluster.replica_mut(slot).proc;
                proc.stop()?;
                proc.wait_stopped(WAIT).await?;
            }
        }
        let certain_at = Instant::now();
        let (first_tx, first_rx) = oneshot::channel();
        let tag = format!("p{}{round}", mode.name());
        let balancer = self.cluster.balancer_addr();
        let mut fences = Vec::new();
        // The probe runs beside the recovery in this task (no detached
        // spawn), and finishes once its writes are all answered.
        let (probed, recovered) = tokio::join!(
            self.probe.run(balancer, &tag, first_tx),
            recover(
                &mut self.cluster,
                mode,
                slot,
                round,
                self.hold,
                first_rx,
                &mut fences,
            )
        );
        let mut notes = Vec::new();
        for (name, (event, failure)) in fences {
            if failure.is_none() {
                let key = String::from_utf8_lossy(&event.key).into_owned();
                self.fence_violations
                    .push(format!("replica {victim} acked {key}"));
            }
            self.probe.tally.record(failure);
            self.probe.events.push(event);
            notes.push(format!(
                "{name}: {}",
                failure.unwrap_or("ACKED (fencing violation)")
            ));
        }
        let recovery = recovered?;
        probed.context("probe")?;
        tokio::time::sleep(SETTLE).await;
        let end = Instant::now();
        let (writers_first, gap) = self.workload.with_history(|h| {
            (
                first_ack_sent_from(h, certain_at),
                longest_gap(h, failed_at, end),
            )
        });
        let first = [
            writers_first,
            first_ack_sent_from(&self.probe.events, certain_at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(recovery.first_ack);
        Ok(RoundResult {
            mode,
            round,
            victim,
            first_write: first.saturating_duration_since(failed_at),
            gap,
            rejoin: recovery.rejoin,
            elect_ms: recovery.elect_ms,
            note: notes.join("; "),
        })
    }

    /// Resumes every replica (a failed round may have left one stopped;
    /// SIGCONT to a running process does nothing).
    fn resume_all(&mut self) {
        for i in 0..self.cluster.len() {
            let _ = self.cluster.replica_mut(i).proc.cont();
        }
    }
}

/// Brings the cluster back after a round's fault once a write was
/// acknowledged on the new leader: restarts a killed leader, or resumes a
/// stopped one and writes to it directly (results in `fences`); then waits
/// until the cluster is steady.
async fn recover(
    cluster: &mut Cluster,
    mode: Mode,
    slot: usize,
    round: usize,
    hold: Duration,
    first_ack: oneshot::Receiver<Instant>,
    fences: &mut Vec<Fence>,
) -> anyhow::Result<Recovery> {
    let first_ack = match tokio::time::timeout(WAIT, first_ack).await {
        Ok(Ok(at)) => at,
        Ok(Err(_)) => bail!("the probe stopped before any write was acknowledged"),
        Err(_) => bail!(
            "no write acknowledged within {WAIT:?} after the {}",
            mode.name()
        ),
    };
    let recovering = Instant::now();
    let addr = cluster.replica(slot).addr;
    let fence = |when: &str| {
        let key = Bytes::from(format!("f{round}-{when}"));
        write_once(addr, FENCE_CLIENT, key.clone(), key)
    };
    match mode {
        Mode::Kill => cluster.restart_replica(slot).await?,
        Mode::Stop => {
            // A chosen extra stop, part of what is measured.
            tokio::time::sleep(hold).await;
            cluster.replica_mut(slot).proc.cont()?;
            // Straight after SIGCONT the old leader still believes it leads
            // at its old epoch: it must not acknowledge.
            fences.push(("resumed", fence("resumed").await));
        }
    }
    cluster.wait_steady(WAIT).await?;
    let rejoin = recovering.elapsed();
    let elect_ms = cluster
        .balancer()
        .and_then(|b| b.proc.last_logged("promoted new leader", "elapsed_ms"))
        .and_then(|v| v.parse().ok());
    if mode == Mode::Stop {
        fences.push(("rejoined", fence("rejoined").await));
    }
    Ok(Recovery {
        first_ack,
        rejoin,
        elect_ms,
    })
}

fn main() -> ExitCode {
    let options = match args::parse(std::env::args()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let prepared = match options.server.clone() {
        Some(path) => bin::use_server(path),
        None => Ok(()),
    };
    let runtime = prepared
        .and_then(|()| tokio::runtime::Runtime::new().context("starting the tokio runtime"));
    match runtime.and_then(|rt| rt.block_on(run(options))) {
        Ok(code) => code,
        Err(e) => {
            println!("harness failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(options: Options) -> anyhow::Result<ExitCode> {
    let server = tokio::task::spawn_blocking(bin::server).await??;
    let balancer = tokio::task::spawn_blocking(bin::balancer).await??;
    let defaults = semikv_lb::Config::new(Vec::new());
    println!(
        "failover_timing: {REPLICAS} replicas ({}) behind {}; balancer defaults: heartbeat \
         {:?}, down after {}, sync replicas {}, sync timeout {:?}, election wait {:?}, write \
         wait {:?}; {WRITERS} writers; {} rounds per mode; stopped leader held {:?} after the \
         first new write",
        server.display(),
        balancer.display(),
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
    let mut cluster = Cluster::with_balancer(REPLICAS, &[], &[]).await?;
    println!("temp dir: {}", cluster.dir().display());
    if let Err(e) = cluster.wait_steady(WAIT).await {
        println!("start-up failed: {e:#}\n{}", cluster.logs());
        cluster.keep_dir();
        println!("logs kept in {}", cluster.dir().display());
        println!("INCOMPLETE: start-up: {e:#}");
        return Ok(ExitCode::from(2));
    }
    let config = WorkloadConfig {
        clients: WRITERS,
        read_pct: 0,
        delete_pct: 0,
        unique_keys: true,
        honour_retry_after: true,
        ..WorkloadConfig::default()
    };
    let mut h = Harness {
        workload: Workload::start(cluster.balancer_addr(), config),
        cluster,
        probe: Probe::new(PROBE_CLIENT, PROBE_INTERVAL, WAIT * 2),
        fence_violations: Vec::new(),
        hold: options.hold,
    };
    tokio::time::sleep(SETTLE).await;
    let (results, phase_starts, mut failure) = h.rounds(&options).await;

    let Harness {
        mut cluster,
        workload,
        probe,
        fence_violations,
        ..
    } = h;
    let (mut history, total) = tokio::time::timeout(WAIT * 2, workload.stop_tallied())
        .await
        .context("the writers did not stop")??;
    history.extend(probe.events.iter().cloned());
    let verdict = match verify::verify(&cluster, &history, WAIT).await {
        Ok(v) => v,
        Err(e) => {
            println!("read-back failed: {e:#}\n{}", cluster.logs());
            failure.get_or_insert_with(|| format!("read-back: {e:#}"));
            verify::Verdict::default()
        }
    };

    let phases = Phases::split(&phase_starts, &total);
    report::print_summary(
        &options.modes,
        &results,
        &phases,
        &probe.tally,
        &fence_violations,
    );
    let acked = history.iter().filter(|e| is_acked_write(e)).count();
    report::print_verdict(acked, &verdict);
    println!("load average at end: {}", load_average());

    let broken = verdict.broken() || !fence_violations.is_empty();
    let unreadable = verdict.unreadable();
    let slow = report::slow_rounds(&results);
    if !slow.is_empty() {
        println!(
            "slow rounds (first write over {SLOW_FACTOR}x the mode's median): {slow:?}; logs kept"
        );
    }
    if options.keep_logs || broken || failure.is_some() || unreadable > 0 || !slow.is_empty() {
        cluster.keep_dir();
        println!("logs kept in {}", cluster.dir().display());
    }
    drop(cluster);
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
        println!("INCOMPLETE: {unreadable} keys could not be read");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
