//! A seed's scenario: the cluster's shape and a timed list of faults, drawn
//! from the seed alone, so that a seed names one run exactly.

use std::fmt;
use std::time::Duration;

use crate::workload::Rng;

/// A process of the simulated cluster, as a fault names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// Replica `n` (1-based: `r1` listens on 8081, as `semikv-server 1`).
    Replica(usize),
    /// Balancer `n` (1-based: `lb1`).
    Balancer(usize),
    /// Workload client `n` (0-based: `c0`).
    Client(usize),
}

impl Host {
    /// Its host name in the simulation.
    pub fn name(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Replica(n) => write!(f, "r{n}"),
            Host::Balancer(n) => write!(f, "lb{n}"),
            Host::Client(n) => write!(f, "c{n}"),
        }
    }
}

/// One fault, applied between two steps of the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Kill the process and cut the power: its tasks and connections go,
    /// and its disk keeps what it synced and an arbitrary (possibly torn)
    /// part of the rest.
    Crash(Host),
    /// Start a crashed process again on the same disk.
    Restart(Host),
    /// Cut both directions between two hosts (segments in flight are lost).
    Partition(Host, Host),
    /// Cut one direction only: `from`'s segments never reach `to`.
    PartitionOneway {
        /// The side whose segments are dropped.
        from: Host,
        /// The side that stops hearing.
        to: Host,
    },
    /// Mend both directions between two hosts.
    Repair(Host, Host),
    /// Mend one direction.
    RepairOneway {
        /// As in [`Fault::PartitionOneway`].
        from: Host,
        /// As in [`Fault::PartitionOneway`].
        to: Host,
    },
    /// Hold every segment to and from a host (the nearest thing to
    /// SIGSTOP: nothing it sends or is sent arrives until released).
    Pause(Host),
    /// Deliver what was held, and let traffic flow again.
    Resume(Host),
    /// Delay every segment between two hosts by this long.
    Slow(Host, Host, Duration),
    /// Back to the scenario's latency between two hosts.
    Unslow(Host, Host),
    /// A replica's disk fills up: writes past what it holds now (plus a
    /// few KiB) fail with `ENOSPC`.
    FillDisk(Host),
    /// Room on a replica's disk again.
    FreeDisk(Host),
    /// A replica's next fsync fails (`EIO`): it stops, as a replica whose
    /// disk fails must; the heal (or a restart) starts it again.
    FailSync(Host),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash(h) => write!(f, "crash {h}"),
            Fault::Restart(h) => write!(f, "restart {h}"),
            Fault::Partition(a, b) => write!(f, "partition {a} <-> {b}"),
            Fault::PartitionOneway { from, to } => write!(f, "partition {from} -> {to}"),
            Fault::Repair(a, b) => write!(f, "repair {a} <-> {b}"),
            Fault::RepairOneway { from, to } => write!(f, "repair {from} -> {to}"),
            Fault::Pause(h) => write!(f, "pause {h}"),
            Fault::Resume(h) => write!(f, "resume {h}"),
            Fault::Slow(a, b, d) => write!(f, "slow {a} <-> {b} to {}ms", d.as_millis()),
            Fault::Unslow(a, b) => write!(f, "unslow {a} <-> {b}"),
            Fault::FillDisk(h) => write!(f, "fill {h}'s disk"),
            Fault::FreeDisk(h) => write!(f, "free {h}'s disk"),
            Fault::FailSync(h) => write!(f, "fail {h}'s next fsync"),
        }
    }
}

/// A fault and when it strikes (simulated time since the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    /// When.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed it was drawn from (also the simulation's).
    pub seed: u64,
    /// Replicas, 3 to 5.
    pub replicas: usize,
    /// Balancers, 1 or 2 (two coordinators must be safe).
    pub balancers: usize,
    /// Workload clients, each on its own host, 2 to 4.
    pub clients: usize,
    /// Keys the workload's gets, sets and deletes share.
    pub keys: usize,
    /// Longest one-way delay of a segment on a healthy link.
    pub max_latency: Duration,
    /// How long the workload runs and faults strike; then everything is
    /// healed and the cluster must recover and converge.
    pub window: Duration,
    /// The faults, in time order; every fault is undone by the end of the
    /// window (the heal does what is left).
    pub faults: Vec<Timed>,
}

/// Faults drawn per second of the window, on average.
const FAULTS_PER_SECOND: u64 = 1;

impl Scenario {
    /// The scenario of `seed`.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed ^ 0x5c3a_a210_0f7d_39e1);
        let replicas = 3 + rng.below(3) as usize;
        let balancers = 1 + rng.below(2) as usize;
        let clients = 2 + rng.below(3) as usize;
        let keys = 4 + rng.below(29) as usize;
        let max_latency = Duration::from_millis(1 + rng.below(20));
        let window = Duration::from_millis(4_000 + rng.below(6_000));
        let mut scenario = Scenario {
            seed,
            replicas,
            balancers,
            clients,
            keys,
            max_latency,
            window,
            faults: Vec::new(),
        };
        scenario.faults = scenario.draw_faults(&mut rng);
        scenario
    }

    /// Every replica and balancer: the hosts faults strike (clients only
    /// as the far side of a cut).
    pub fn servers(&self) -> Vec<Host> {
        (1..=self.replicas)
            .map(Host::Replica)
            .chain((1..=self.balancers).map(Host::Balancer))
            .collect()
    }

    /// Every host of the cluster and its workload.
    pub fn hosts(&self) -> Vec<Host> {
        let mut hosts = self.servers();
        hosts.extend((0..self.clients).map(Host::Client));
        hosts
    }

    fn draw_faults(&self, rng: &mut Rng) -> Vec<Timed> {
        let servers = self.servers();
        let hosts = self.hosts();
        let window = self.window.as_millis() as u64;
        let count = (window * FAULTS_PER_SECOND / 1000).max(1);
        let mut faults = Vec::new();
        for _ in 0..count {
            let at = 200 + rng.below(window - 200);
            // Each fault lasts a while, then is undone (never past the
            // window, when the heal mends everything anyway).
            let until = (at + 100 + rng.below(3_000)).min(window);
            let pick = |rng: &mut Rng, from: &[Host]| from[rng.below(from.len() as u64) as usize];
            let host = pick(rng, &servers);
            let other = loop {
                let other = pick(rng, &hosts);
                if other != host {
                    break other;
                }
            };
            let replica = Host::Replica(1 + rng.below(self.replicas as u64) as usize);
            let (fault, undo) = match rng.below(100) {
                0..=24 => (Fault::Crash(host), Fault::Restart(host)),
                25..=44 => (Fault::Partition(host, other), Fault::Repair(host, other)),
                45..=54 => (Fault::FillDisk(replica), Fault::FreeDisk(replica)),
                55..=59 => (Fault::FailSync(replica), Fault::Restart(replica)),
                60..=69 => (
                    Fault::PartitionOneway {
                        from: host,
                        to: other,
                    },
                    Fault::RepairOneway {
                        from: host,
                        to: other,
                    },
                ),
                70..=84 => (Fault::Pause(host), Fault::Resume(host)),
                _ => {
                    let slow = Duration::from_millis(50 + rng.below(400));
                    (Fault::Slow(host, other, slow), Fault::Unslow(host, other))
                }
            };
            faults.push(Timed {
                at: Duration::from_millis(at),
                fault,
            });
            faults.push(Timed {
                at: Duration::from_millis(until),
                fault: undo,
            });
        }
        // Stable: a fault and its undo at the same instant keep their order.
        faults.sort_by_key(|t| t.at);
        faults
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} replicas, {} balancer(s), {} clients on {} keys, latency up to {} ms, \
             faults for {} ms:",
            self.seed,
            self.replicas,
            self.balancers,
            self.clients,
            self.keys,
            self.max_latency.as_millis(),
            self.window.as_millis()
        )?;
        for t in &self.faults {
            writeln!(f, "  {:>6} ms  {}", t.at.as_millis(), t.fault)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_scenario() {
        let a = Scenario::from_seed(42);
        let b = Scenario::from_seed(42);
        assert_eq!(a.to_string(), b.to_string());
        assert_ne!(a.to_string(), Scenario::from_seed(43).to_string());
    }

    #[test]
    fn faults_are_undone_within_the_window_and_in_time_order() {
        for seed in 0..200 {
            let s = Scenario::from_seed(seed);
            assert!(s.faults.windows(2).all(|w| w[0].at <= w[1].at));
            assert!(s.faults.iter().all(|t| t.at <= s.window));
            let crashes = s
                .faults
                .iter()
                .filter(|t| matches!(t.fault, Fault::Crash(_) | Fault::FailSync(_)))
                .count();
            let restarts = s
                .faults
                .iter()
                .filter(|t| matches!(t.fault, Fault::Restart(_)))
                .count();
            assert_eq!(crashes, restarts, "seed {seed}");
        }
    }
}
