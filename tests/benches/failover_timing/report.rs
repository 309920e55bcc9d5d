//! What the harness prints: a line per round, then per mode the median,
//! minimum and maximum of each figure and the writers' tallies, the fencing
//! and read-back verdicts. The format is the one the README quotes.

use std::time::Duration;

use semikv_tests::timing::{ms, Spread};
use semikv_tests::workload::Tally;

use crate::verify::Verdict;
use crate::{Mode, RoundResult};

/// A round whose first write took this many times its mode's median (and at
/// least [`SLOW_FLOOR`]) keeps the logs, so an outlier can be explained.
pub const SLOW_FACTOR: u32 = 10;
const SLOW_FLOOR: Duration = Duration::from_millis(50);

/// The per-round table's header.
pub fn print_round_header() {
    println!(
        "round  mode  victim  first-write-ms  longest-gap-ms  lb-elect-ms  rejoin-ms  fencing"
    );
}

/// One row of the per-round table.
pub fn print_round(r: &RoundResult) {
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
}

/// The writers' tallies of a run, phase by phase.
pub struct Phases {
    /// `warm-up`, each mode run, `drain`, with each one's share.
    phases: Vec<(&'static str, Tally)>,
}

impl Phases {
    /// Each phase's share of `total`, from the tallies `starts` taken as each
    /// phase began.
    pub fn split(starts: &[(&'static str, Tally)], total: &Tally) -> Phases {
        let phases = starts
            .iter()
            .enumerate()
            .map(|(i, (name, start))| {
                let end = starts.get(i + 1).map_or(total, |(_, t)| t);
                (*name, end.since(start))
            })
            .collect();
        Phases { phases }
    }

    fn get(&self, name: &str) -> Tally {
        self.phases
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    }
}

/// The per-mode figures, the tallies and the fencing verdict.
pub fn print_summary(
    modes: &[Mode],
    results: &[RoundResult],
    phases: &Phases,
    probe: &Tally,
    fence_violations: &[String],
) {
    println!();
    println!(
        "mode  rounds  first-write-ms med/min/max   longest-gap-ms med/min/max   writes-acked  writer-errors"
    );
    let show = |s: Option<Spread>| s.map_or_else(|| "-".to_string(), |s| s.to_string());
    for &mode in modes {
        let rounds: Vec<&RoundResult> = results.iter().filter(|r| r.mode == mode).collect();
        let first: Vec<Duration> = rounds.iter().map(|r| r.first_write).collect();
        let gaps: Vec<Duration> = rounds.iter().map(|r| r.gap).collect();
        let tally = phases.get(mode.name());
        println!(
            "{:<4}  {:>6}  {:<28}  {:<28}  {:>12}  {}",
            mode.name(),
            rounds.len(),
            show(Spread::of(&first)),
            show(Spread::of(&gaps)),
            tally.acked,
            tally.errors()
        );
    }
    let mut total = Tally::default();
    for (name, t) in &phases.phases {
        total.add(t);
        if *name == "warm-up" || *name == "drain" {
            println!(
                "{name:<8} (no failures)  writes acked {}, errors: {}",
                t.acked,
                t.errors()
            );
        }
    }
    println!(
        "writers total: acked {}, errors: {}",
        total.acked,
        total.errors()
    );
    println!(
        "probes (and fencing checks) total: acked {}, errors: {}",
        probe.acked,
        probe.errors()
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
}

/// The read-back verdict of each source, the lost total and where the
/// unacknowledged writes went.
pub fn print_verdict(acked: usize, verdict: &Verdict) {
    println!(
        "read-back of {acked} acknowledged keys (writers and probes), and of every \
         unacknowledged one:"
    );
    for c in &verdict.checks {
        println!(
            "  {:<10} lost {}, mismatched {}, unreadable {}{}",
            c.name,
            c.lost.len(),
            c.mismatched.len(),
            c.unreadable,
            if c.lost.is_empty() && c.mismatched.is_empty() {
                String::new()
            } else {
                format!(
                    " (first lost: {:?}; first mismatched: {:?})",
                    first(&c.lost, 5),
                    first(&c.mismatched, 5)
                )
            }
        );
    }
    let lost: usize = verdict.checks.iter().map(|c| c.lost.len()).sum();
    println!("acked writes lost: {lost} (must be 0)");
    let u = &verdict.unacked;
    println!(
        "unacknowledged writes: {} (on every replica {}, on none {}, on some only {}, \
         unreadable {}){}",
        u.total,
        u.applied,
        u.absent,
        u.diverged.len(),
        u.unreadable,
        if u.diverged.is_empty() {
            String::new()
        } else {
            format!(" keys: {:?}", first(&u.diverged, 10))
        }
    );
}

fn first(items: &[String], n: usize) -> &[String] {
    &items[..items.len().min(n)]
}

/// `mode round` of the rounds that were outliers (see [`SLOW_FACTOR`]).
pub fn slow_rounds(results: &[RoundResult]) -> Vec<String> {
    let mut slow = Vec::new();
    for mode in [Mode::Kill, Mode::Stop] {
        let firsts: Vec<Duration> = results
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.first_write)
            .collect();
        let Some(spread) = Spread::of(&firsts) else {
            continue;
        };
        let limit = (spread.median * SLOW_FACTOR).max(SLOW_FLOOR);
        slow.extend(
            results
                .iter()
                .filter(|r| r.mode == mode && r.first_write > limit)
                .map(|r| format!("{} {}", mode.name(), r.round)),
        );
    }
    slow
}

/// `/proc/loadavg`, as it is: the figures are only as good as the machine
/// was quiet.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
