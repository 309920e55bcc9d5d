//! Deterministic simulation of a whole cluster: the real replicas and
//! balancers (`semikv_server::run`, `semikv_lb::run`, unmodified) as
//! turmoil hosts on one thread, with simulated network and time, and
//! randomness seeded, all from one seed ([`run`]).
//!
//! A seed draws a [`Scenario`] (3-5 replicas, 1-2 balancers, 2-4 clients,
//! and timed faults: crashes and restarts, partitions both ways and one
//! way, pauses, slow links). Workload clients record a history while the
//! faults strike; then everything is healed, a write must get through
//! within [`clients::RECOVERY_BOUND`], every key is read back, and every
//! replica must converge on the same values. The verdict combines the
//! history checker (guarantees 1-3, [`crate::checker`]) with invariants
//! watched along the way: no two replicas promoted at one epoch (from the
//! replicas' own log lines), no commit index going back within a process
//! (polled).
//!
//! Replay: the same seed gives the same run and the same trace hash
//! ([`Verdict::trace_hash`]), which tests check; `SEMIKV_SIM_SEED=S`
//! replays one seed with its log on stderr.

pub mod clients;
mod links;
pub mod scenario;
pub mod trace;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use std::path::PathBuf;
use std::sync::Arc;

use semikv_protocol::net::Net;
use semikv_protocol::ReplicaId;
use semikv_server::storage::{DataDir, Disk, SimDisk};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

pub use scenario::{Fault, Host, Scenario, Timed};

use crate::checker;
use crate::workload::Rng;
use clients::{Clock, Findings, CONVERGENCE_BOUND, RECOVERY_BOUND};
use trace::Recorder;

/// What a filled disk still takes past what it holds: a few records.
const DISK_HEADROOM: u64 = 4096;
/// Port of the balancers' client door.
const BALANCER_PORT: u16 = 7000;
/// Simulated time past recovery and convergence before a run is called
/// stuck (the final check bounds each of its waits; this is a backstop).
const STUCK_AFTER: Duration = Duration::from_secs(30);

/// How to run a seed.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Log every event at `RUST_LOG` (default info) on stderr, for a replay.
    pub log: bool,
    /// Keep every traced event's text in [`Verdict::lines`], and trace
    /// debug events too (info and above otherwise).
    pub keep_lines: bool,
}

/// Lines of each replica's own report a failure shows.
const PER_REPLICA_LINES: usize = 24;

/// What one seed's run found.
#[derive(Debug)]
pub struct Verdict {
    /// The scenario run.
    pub scenario: Scenario,
    /// The history checker's report (empty when the final check did not
    /// finish).
    pub report: checker::Report,
    /// The linearizability check of the linearizable reads (the odd
    /// workers') against every write.
    pub linear: checker::linear::LinearReport,
    /// Linearizable reads answered with a value (checked by `linear`).
    pub linear_reads: usize,
    /// Every invariant broken, in words (history violations are in
    /// `report`).
    pub violations: Vec<String>,
    /// Hash of every event logged at info or above (debug too with
    /// [`Options::keep_lines`]), with its simulated time and host: the same
    /// seed must give the same hash.
    pub trace_hash: u64,
    /// Events hashed.
    pub events: u64,
    /// The events hashed, as text, when [`Options::keep_lines`] asked.
    pub lines: Option<Vec<String>>,
    /// Faults applied, by kind (a crash of a host already down is not
    /// applied, nor a restart of one that is up).
    pub faults: BTreeMap<&'static str, u64>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Simulated time from the heal to the first write through, if any.
    pub recovered_after: Option<Duration>,
    /// Warnings and errors the processes logged, the last ones, for a
    /// failure's report.
    pub warnings: Vec<String>,
    /// When the final check failed (no agreed state to check against):
    /// the history checked against each replica's own state, or why that
    /// replica could not be read. It shows which replica misses which
    /// acknowledged write.
    pub per_replica: Vec<(String, Result<checker::Report, String>)>,
    history: Vec<checker::Event>,
}

impl Verdict {
    /// Whether every check passed.
    pub fn is_ok(&self) -> bool {
        self.report.is_ok() && self.linear.is_ok() && self.violations.is_empty()
    }

    /// The verdict in words: the scenario, what broke, and how to replay.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{}", self.scenario);
        let _ = writeln!(
            out,
            "ran {:.1} s simulated: {} operations recorded{}; \
             faults {:?}; first write {:?} after the heal; {} events, trace hash {:016x}",
            self.simulated.as_secs_f64(),
            self.history.len(),
            if self.report.ops > 0 {
                format!(
                    ", {} writes acknowledged, {} unknown",
                    self.report.writes_acked, self.report.writes_unknown
                )
            } else {
                String::from(" (the final check did not finish)")
            },
            self.faults,
            self.recovered_after,
            self.events,
            self.trace_hash
        );
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION: {v}");
        }
        if !self.report.is_ok() {
            let _ = writeln!(out, "{}", self.report.explain(&self.history));
        }
        if !self.linear.is_ok() {
            let linearizable = clients::linearizable_part(&self.history);
            let _ = writeln!(out, "{}", self.linear.explain(&linearizable));
        }
        for (addr, report) in &self.per_replica {
            match report {
                Ok(r) if r.is_ok() => {
                    let _ = writeln!(
                        out,
                        "the history against {addr}'s own state: consistent \
                         ({} writes acknowledged)",
                        r.writes_acked
                    );
                }
                Ok(r) => {
                    // The first few say what is wrong; hundreds more would
                    // bury the rest of the report.
                    let explained = r.explain(&self.history);
                    let lines: Vec<&str> = explained.lines().collect();
                    let _ = writeln!(out, "the history against {addr}'s own state:");
                    for line in lines.iter().take(PER_REPLICA_LINES) {
                        let _ = writeln!(out, "  {line}");
                    }
                    if lines.len() > PER_REPLICA_LINES {
                        let _ =
                            writeln!(out, "  ... {} lines more", lines.len() - PER_REPLICA_LINES);
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "{addr} could not be read: {e}");
                }
            }
        }
        let _ = writeln!(out, "last warnings logged:");
        for w in self.warnings.iter().rev().take(40).rev() {
            let _ = writeln!(out, "  {w}");
        }
        let _ = writeln!(
            out,
            "replay: SEMIKV_SIM_SEED={} cargo test -p semikv-tests --test sim -- --nocapture replay",
            self.scenario.seed
        );
        out
    }
}

/// Runs the scenario of `seed` to its verdict.
pub fn run(seed: u64, options: &Options) -> Verdict {
    let scenario = Scenario::from_seed(seed);
    let recorder = Recorder::new(options.keep_lines);
    let trace = recorder.trace();
    let log = options.log.then(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_timer(SimTime)
            .with_filter(filter)
    });
    let subscriber = tracing_subscriber::registry()
        .with(recorder.with_filter(if options.keep_lines {
            LevelFilter::DEBUG
        } else {
            LevelFilter::INFO
        }))
        .with(log);
    let _entropy = semikv_protocol::entropy::Seeded::install(seed);
    trace::set_driver_time(Duration::ZERO);
    let (findings, faults, simulated) =
        tracing::subscriber::with_default(subscriber, || drive(&scenario));
    let mut trace = semikv_protocol::sync::lock(&trace);
    let mut findings = Rc::try_unwrap(findings)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| std::mem::take(&mut *shared.borrow_mut()));
    findings.history.sort_by_key(|e| e.start);
    let mut violations = std::mem::take(&mut findings.violations);
    let mut by_epoch: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in &trace.promotions {
        by_epoch.entry(&p.epoch).or_default().insert(&p.host);
    }
    for (epoch, hosts) in by_epoch.iter().filter(|(_, hosts)| hosts.len() > 1) {
        let hosts: Vec<&str> = hosts.iter().copied().collect();
        violations.push(format!(
            "replicas {} were all promoted at epoch {epoch}",
            hosts.join(", ")
        ));
    }
    let linearizable = clients::linearizable_part(&findings.history);
    let linear = checker::linear::check_linearizable(&linearizable);
    let linear_reads = linearizable
        .iter()
        .filter(|e| {
            matches!(e.action, checker::Action::Get(_)) && e.outcome == checker::Outcome::Ok
        })
        .count();
    let report = if findings.checked {
        checker::check(&findings.history, &findings.final_state)
    } else {
        checker::Report::default()
    };
    let per_replica = std::mem::take(&mut findings.replica_states)
        .into_iter()
        .map(|(addr, state)| {
            let report = state.map(|state| checker::check(&findings.history, &state));
            (addr, report)
        })
        .collect();
    Verdict {
        scenario,
        report,
        linear,
        linear_reads,
        violations,
        trace_hash: trace.hash(),
        events: trace.events,
        lines: trace.lines.take(),
        faults,
        simulated,
        recovered_after: findings.recovered_after,
        warnings: trace.warnings.clone(),
        per_replica,
        history: findings.history,
    }
}

type Shared = Rc<RefCell<Findings>>;

/// Log lines stamped with the simulated time, in milliseconds.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let at = turmoil::sim_elapsed().unwrap_or_else(trace::driver_time);
        write!(w, "{:>8.3}s", at.as_secs_f64())
    }
}

/// Builds the simulation, applies the faults on time, heals, and steps
/// until the final check is done.
fn drive(scenario: &Scenario) -> (Shared, BTreeMap<&'static str, u64>, Duration) {
    let findings: Shared = Rc::new(RefCell::new(Findings {
        running: scenario.clients,
        ..Findings::default()
    }));
    let mut faults = BTreeMap::new();
    // One disk per replica, kept across its crashes and restarts; each
    // incarnation gets a handle of the disk's current generation.
    let disks: Vec<Arc<SimDisk>> = (0..scenario.replicas)
        .map(|_| Arc::new(SimDisk::new()))
        .collect();
    let mut sim = turmoil::Builder::new()
        .rng_seed(scenario.seed)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(scenario.max_latency)
        .simulation_duration(scenario.window + RECOVERY_BOUND + CONVERGENCE_BOUND + STUCK_AFTER)
        .build();
    let replicas: Vec<String> = (1..=scenario.replicas)
        .map(|n| format!("{}:{}", Host::Replica(n), replica_port(n)))
        .collect();
    for (i, disk) in disks.iter().enumerate() {
        let n = i + 1;
        let mut config = semikv_server::Config::new(ReplicaId(n as u32), PathBuf::from("/data"));
        config.net = Net::Turmoil;
        config.blocking = semikv_protocol::blocking::Blocking::Inline;
        config.advertise = Some(replicas[i].clone());
        // Small, so that snapshots, compaction and segment rolls happen
        // within a run of a few thousand writes.
        config.snapshot_bytes = 16 * 1024;
        config.segment_bytes = 8 * 1024;
        // Expiries are judged by simulated time: one clock for every
        // replica (their clocks agree, as the README assumes), and no
        // wall clock to make two runs of a seed differ.
        config.clock = semikv_server::clock::Clock::from_fn(|| {
            let elapsed = turmoil::sim_elapsed().unwrap_or_default();
            semikv_protocol::UnixMillis(SIM_EPOCH_MS + elapsed.as_millis() as u64)
        });
        let disk = disk.clone();
        sim.host(Host::Replica(n).name(), move || {
            let mut config = config.clone();
            let handle: Arc<dyn Disk> = Arc::new(SimDisk::clone(&disk));
            config.data_dir = DataDir::new(handle, "/data");
            async move {
                let listener = Net::Turmoil
                    .bind(&format!("0.0.0.0:{}", replica_port(n)))
                    .await?;
                // A replica that stops (a failed disk) is a process that
                // exited: the heal restarts it; it is not a harness error.
                if let Err(e) = semikv_server::run(config, listener, CancellationToken::new()).await
                {
                    tracing::error!(error = %format!("{e:#}"), "replica exited");
                }
                Ok(())
            }
        });
    }
    for n in 1..=scenario.balancers {
        let mut config = semikv_lb::Config::new(replicas.clone());
        config.net = Net::Turmoil;
        sim.host(Host::Balancer(n).name(), move || {
            let config = config.clone();
            async move {
                let listener = Net::Turmoil
                    .bind(&format!("0.0.0.0:{BALANCER_PORT}"))
                    .await?;
                if let Err(e) = semikv_lb::run(config, listener, CancellationToken::new()).await {
                    tracing::error!(error = %format!("{e:#}"), "balancer exited");
                }
                Ok(())
            }
        });
    }
    let clock = Rc::new(Clock::new());
    for c in 0..scenario.clients {
        let balancer = format!(
            "{}:{BALANCER_PORT}",
            Host::Balancer(1 + c % scenario.balancers)
        );
        sim.client(
            Host::Client(c).name(),
            clients::worker(
                c,
                balancer,
                scenario.keys,
                scenario.seed,
                scenario.window,
                clock.clone(),
                findings.clone(),
            ),
        );
    }
    {
        let (replicas, findings) = (replicas.clone(), findings.clone());
        sim.host("observer", move || {
            clients::observer(replicas.clone(), findings.clone())
        });
    }
    sim.client(
        "check",
        clients::final_check(
            format!("{}:{BALANCER_PORT}", Host::Balancer(1)),
            replicas.clone(),
            scenario.window,
            findings.clone(),
        ),
    );

    let mut links = links::Links::default();
    let mut power = Power {
        disks,
        rng: Rng::new(scenario.seed ^ 0x9d1c_5e7a_3b2f_4410),
    };
    let mut next = 0;
    let mut healed = false;
    loop {
        let now = sim.elapsed();
        trace::set_driver_time(now);
        while next < scenario.faults.len() && scenario.faults[next].at <= now {
            let fault = &scenario.faults[next].fault;
            if let Some(kind) = apply(&mut sim, &mut links, &mut power, scenario, fault) {
                *faults.entry(kind).or_insert(0) += 1;
            }
            next += 1;
        }
        if !healed && now >= scenario.window {
            heal(&mut sim, &mut links, &power, scenario);
            healed = true;
        } else if healed {
            // After the heal, a supervisor (systemd's Restart=on-failure)
            // restarts a replica that exits: one that was still shutting
            // down from a failed fsync when the heal looked was up then,
            // and stayed down for good after.
            restart_exited(&mut sim, scenario);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                findings
                    .borrow_mut()
                    .violations
                    .push(format!("the simulation stopped: {e}"));
                break;
            }
        }
    }
    let simulated = sim.elapsed();
    drop(sim);
    (findings, faults, simulated)
}

/// The Unix time, in milliseconds, at which every simulation starts.
const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

fn replica_port(n: usize) -> u16 {
    8080 + n as u16
}

/// Applies one fault; its kind when it changed anything.
fn apply(
    sim: &mut turmoil::Sim<'_>,
    links: &mut links::Links,
    power: &mut Power,
    scenario: &Scenario,
    fault: &Fault,
) -> Option<&'static str> {
    let others =
        |h: &Host| -> Vec<Host> { scenario.hosts().into_iter().filter(|o| o != h).collect() };
    match fault {
        Fault::Crash(h) => {
            if !sim.is_host_running(h.name()) {
                return None;
            }
            links.crash(sim, *h, &others(h));
            if let Host::Replica(n) = h {
                let seed = power.rng.next_u64();
                power.disks[n - 1].crash(seed);
            }
            Some("crash")
        }
        Fault::Restart(h) => {
            if sim.is_host_running(h.name()) {
                return None;
            }
            sim.bounce(h.name());
            Some("restart")
        }
        Fault::Partition(a, b) => {
            links.partition(sim, *a, *b);
            Some("partition")
        }
        Fault::PartitionOneway { from, to } => {
            links.partition_oneway(sim, *from, *to);
            Some("partition-oneway")
        }
        Fault::Repair(a, b) => {
            links.repair(sim, *a, *b);
            Some("repair")
        }
        Fault::RepairOneway { from, to } => {
            links.repair_oneway(sim, *from, *to);
            Some("repair-oneway")
        }
        Fault::Pause(h) => {
            for o in others(h) {
                links.hold(sim, *h, o);
            }
            Some("pause")
        }
        Fault::Resume(h) => {
            for o in others(h) {
                links.release(sim, *h, o);
            }
            Some("resume")
        }
        Fault::Slow(a, b, d) => {
            sim.set_link_latency(a.name(), b.name(), *d);
            Some("slow")
        }
        Fault::Unslow(a, b) => {
            sim.set_link_latency(a.name(), b.name(), Duration::ZERO);
            sim.set_link_max_message_latency(a.name(), b.name(), scenario.max_latency);
            Some("unslow")
        }
        Fault::FillDisk(h) => {
            let disk = power.disk(*h)?;
            disk.set_capacity(Some(disk.used_bytes() + DISK_HEADROOM));
            Some("fill-disk")
        }
        Fault::FreeDisk(h) => {
            power.disk(*h)?.set_capacity(None);
            Some("free-disk")
        }
        Fault::FailSync(h) => {
            power.disk(*h)?.fail_next_syncs(1);
            Some("fail-sync")
        }
    }
}

/// The replicas' disks, and the generator of what each power cut keeps.
struct Power {
    disks: Vec<Arc<SimDisk>>,
    rng: Rng,
}

impl Power {
    fn disk(&self, host: Host) -> Option<&SimDisk> {
        match host {
            Host::Replica(n) => self.disks.get(n - 1).map(|d| &**d),
            _ => None,
        }
    }
}

/// Mends every link, frees every disk and restarts every server that is
/// down.
fn heal(sim: &mut turmoil::Sim<'_>, links: &mut links::Links, power: &Power, scenario: &Scenario) {
    for disk in &power.disks {
        disk.set_capacity(None);
        disk.fail_next_syncs(0);
    }
    let hosts = scenario.hosts();
    for (i, &a) in hosts.iter().enumerate() {
        for &b in &hosts[i + 1..] {
            links.release(sim, a, b);
            links.repair(sim, a, b);
        }
    }
    restart_exited(sim, scenario);
}

/// Restarts every server that is down.
fn restart_exited(sim: &mut turmoil::Sim<'_>, scenario: &Scenario) {
    for h in scenario.servers() {
        if !sim.is_host_running(h.name()) {
            sim.bounce(h.name());
        }
    }
}
