//! The simulated network's links as the faults left them, kept beside
//! turmoil's own so that a crash can silence a host and then put every
//! link back as it was.
//!
//! Why: when turmoil crashes a host it drops the host's runtime, and the
//! runtime drops its tasks in an order set by tokio's process-wide task
//! ids. Each dropped socket sends a FIN whose latency is drawn from the
//! simulation's random generator, so that order would decide later draws
//! and two runs of one seed would part. Cutting the host off first makes
//! those FINs vanish without a draw (as a machine that loses power sends
//! nothing); its peers learn of the crash when they next send to it.

use std::collections::BTreeMap;

use super::scenario::Host;

/// One direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Healthy,
    /// Segments wait until released (turmoil holds both directions).
    Held,
    /// Segments are dropped.
    Cut,
}

/// Every directed link's state, and the operations that change it, each
/// applied to turmoil and to the model alike.
#[derive(Debug, Default)]
pub struct Links {
    directed: BTreeMap<(Host, Host), State>,
}

impl Links {
    fn get(&self, from: Host, to: Host) -> State {
        self.directed
            .get(&(from, to))
            .copied()
            .unwrap_or(State::Healthy)
    }

    fn set(&mut self, from: Host, to: Host, state: State) {
        self.directed.insert((from, to), state);
    }

    /// Cuts both directions.
    pub fn partition(&mut self, sim: &turmoil::Sim<'_>, a: Host, b: Host) {
        sim.partition(a.name(), b.name());
        self.set(a, b, State::Cut);
        self.set(b, a, State::Cut);
    }

    /// Cuts `from` → `to`.
    pub fn partition_oneway(&mut self, sim: &turmoil::Sim<'_>, from: Host, to: Host) {
        sim.partition_oneway(from.name(), to.name());
        self.set(from, to, State::Cut);
    }

    /// Mends both directions.
    pub fn repair(&mut self, sim: &turmoil::Sim<'_>, a: Host, b: Host) {
        sim.repair(a.name(), b.name());
        self.set(a, b, State::Healthy);
        self.set(b, a, State::Healthy);
    }

    /// Mends `from` → `to`.
    pub fn repair_oneway(&mut self, sim: &turmoil::Sim<'_>, from: Host, to: Host) {
        sim.repair_oneway(from.name(), to.name());
        self.set(from, to, State::Healthy);
    }

    /// Holds both directions.
    pub fn hold(&mut self, sim: &turmoil::Sim<'_>, a: Host, b: Host) {
        sim.hold(a.name(), b.name());
        self.set(a, b, State::Held);
        self.set(b, a, State::Held);
    }

    /// Releases both directions (what was held is delivered).
    pub fn release(&mut self, sim: &turmoil::Sim<'_>, a: Host, b: Host) {
        sim.release(a.name(), b.name());
        self.set(a, b, State::Healthy);
        self.set(b, a, State::Healthy);
    }

    /// Crashes `host` silently (see the module's doc), then gives each of
    /// its links to `others` back the state it had.
    pub fn crash(&mut self, sim: &mut turmoil::Sim<'_>, host: Host, others: &[Host]) {
        for &o in others {
            sim.partition(host.name(), o.name());
        }
        sim.crash(host.name());
        for &o in others {
            self.restore(sim, host, o);
        }
    }

    /// Puts turmoil's link between `a` and `b` in the model's state.
    fn restore(&self, sim: &turmoil::Sim<'_>, a: Host, b: Host) {
        let (ab, ba) = (self.get(a, b), self.get(b, a));
        if ab == State::Held || ba == State::Held {
            sim.hold(a.name(), b.name());
        } else {
            sim.repair(a.name(), b.name());
        }
        for (from, to, state) in [(a, b, ab), (b, a, ba)] {
            match state {
                State::Cut => sim.partition_oneway(from.name(), to.name()),
                State::Healthy if ab == State::Held || ba == State::Held => {
                    sim.repair_oneway(from.name(), to.name());
                }
                State::Healthy | State::Held => {}
            }
        }
    }
}
