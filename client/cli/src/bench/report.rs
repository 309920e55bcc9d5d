//! What a run measures (tallies, latencies, availability gaps) and the [`Report`] as text or JSON.
//!
//! Availability: `longest_gap` is the longest time with no request
//! succeeding anywhere, `longest_write_gap` the longest with no write
//! succeeding (a failover's write outage, while reads may go on).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use semikv_client::ClientError;
use semikv_protocol::ErrorReply;
use serde_json::{json, Value};

/// Highest latency the histograms hold, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Resolution of the availability gaps: successes closer than this to the
/// last recorded one are not recorded.
const GAP_RESOLUTION_US: u64 = 250;
/// Wrong values kept as examples in the report.
pub(super) const MAX_EXAMPLES: usize = 5;

/// Results of one connection (or its prefill), merged into the [`Report`].
pub(super) struct Tally {
    pub(super) errors: BTreeMap<String, u64>,
    /// Successful requests: a plain copy of the histograms' counts, kept for
    /// the progress line.
    pub(super) ok: u64,
    /// Failed requests: the sum of `errors`, kept for the progress line.
    pub(super) failed: u64,
    pub(super) wrong_values: u64,
    pub(super) stale_reads: u64,
    pub(super) examples: Vec<String>,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            errors: BTreeMap::new(),
            ok: 0,
            failed: 0,
            wrong_values: 0,
            stale_reads: 0,
            examples: Vec::new(),
        }
    }

    /// Counts a failed request of `kind` (an [`error_kind`]).
    pub(super) fn count_failure(&mut self, kind: &str) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_string(), 1);
            }
        }
        self.failed += 1;
    }

    pub(super) fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: addition cannot fail.
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.ok += other.ok;
        self.failed += other.failed;
        self.wrong_values += other.wrong_values;
        self.stale_reads += other.stale_reads;
        let room = MAX_EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

/// Latency histograms of sets and of gets, created on first use.
pub(super) type Latencies = (Option<Histogram<u64>>, Option<Histogram<u64>>);

/// Adds the histograms of `other` into those of `into`.
pub(super) fn merge_latencies(into: &mut Latencies, other: Latencies) {
    merge_histogram(&mut into.0, other.0);
    merge_histogram(&mut into.1, other.1);
}

/// Adds `other` into `into`; both have the same bounds, so this cannot fail.
fn merge_histogram(into: &mut Option<Histogram<u64>>, other: Option<Histogram<u64>>) {
    match (into.as_mut(), other) {
        (Some(into), Some(other)) => {
            let _ = into.add(&other);
        }
        (None, other) => *into = other,
        (Some(_), None) => {}
    }
}

/// Records one latency, creating the histogram on first use: hundreds of
/// lanes times two eagerly allocated histograms (~140 KB each) cost more in
/// page faults and memset than a short run's requests.
pub(super) fn record(h: &mut Option<Histogram<u64>>, micros: u64) {
    h.get_or_insert_with(histogram)
        .saturating_record(micros.max(1));
}

// The bounds are constants that hdrhistogram accepts: this cannot fail.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// `duration` in whole microseconds, the unit of latencies and gaps
/// (`u64::MAX` past half a million years).
pub(super) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// `duration` in milliseconds, the unit gaps are shown in.
pub(super) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The longest time between two events, kept lock-free in microseconds
/// from the start of the run.
#[derive(Debug, Default)]
pub(super) struct LongestGap {
    last_us: AtomicU64,
    longest_us: AtomicU64,
}

impl LongestGap {
    /// Records an event at `now_us`. Events within [`GAP_RESOLUTION_US`] of
    /// the last recorded one only read the shared counters: every lane
    /// writing them on every success kept their cache line bouncing between
    /// cores. Gaps are therefore measured to within that resolution.
    pub(super) fn record(&self, now_us: u64) {
        let last = self.last_us.load(Ordering::Relaxed);
        if now_us <= last.saturating_add(GAP_RESOLUTION_US) {
            return;
        }
        let previous = self.last_us.fetch_max(now_us, Ordering::Relaxed);
        let gap = now_us.saturating_sub(previous);
        if gap > self.longest_us.load(Ordering::Relaxed) {
            self.longest_us.fetch_max(gap, Ordering::Relaxed);
        }
    }

    /// The longest gap of a run that lasted `elapsed_us`: one that ends in an
    /// outage has its gap at the end.
    pub(super) fn longest(&self, elapsed_us: u64) -> Duration {
        let tail = elapsed_us.saturating_sub(self.last_us.load(Ordering::Relaxed));
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed).max(tail))
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Successful sets.
    pub sets: u64,
    /// Successful gets.
    pub gets: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Reads that returned a value the key never held.
    pub wrong_values: u64,
    /// Reads that returned a value older than the latest (follower lag).
    pub stale_reads: u64,
    /// A few of them, described.
    pub examples: Vec<String>,
    /// Longest time with no successful request anywhere.
    pub longest_gap: Duration,
    /// Longest time with no successful write: the write outage a failover
    /// causes (reads may keep succeeding on followers meanwhile).
    pub longest_write_gap: Duration,
    /// Set latency percentiles (µs): p50, p90, p99, p99.9, max.
    pub set_latency_us: [u64; 5],
    /// Get latency percentiles (µs).
    pub get_latency_us: [u64; 5],
    /// All successful requests' latency percentiles (µs).
    pub all_latency_us: [u64; 5],
    /// The seed used.
    pub seed: u64,
}

fn percentiles(h: &Histogram<u64>) -> [u64; 5] {
    if h.is_empty() {
        return [0; 5];
    }
    [
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

impl Report {
    /// The report of a run that lasted `elapsed`, from its connections'
    /// merged `tally` and `latencies`, its longest gaps without a success and
    /// without a successful write, and its `seed`.
    pub(super) fn new(
        elapsed: Duration,
        tally: Tally,
        latencies: Latencies,
        longest_gap: Duration,
        longest_write_gap: Duration,
        seed: u64,
    ) -> Report {
        let (sets, gets) = latencies;
        let sets = sets.unwrap_or_else(histogram);
        let gets = gets.unwrap_or_else(histogram);
        let mut all = sets.clone();
        let _ = all.add(&gets);
        Report {
            elapsed,
            sets: sets.len(),
            gets: gets.len(),
            errors: tally.errors,
            wrong_values: tally.wrong_values,
            stale_reads: tally.stale_reads,
            examples: tally.examples,
            longest_gap,
            longest_write_gap,
            set_latency_us: percentiles(&sets),
            get_latency_us: percentiles(&gets),
            all_latency_us: percentiles(&all),
            seed,
        }
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.sets + self.gets) as f64 / secs
        } else {
            0.0
        }
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let lat = |p: &[u64; 5]| json!({"p50": p[0], "p90": p[1], "p99": p[2], "p999": p[3], "max": p[4]});
        json!({
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ok": self.sets + self.gets,
            "sets": self.sets,
            "gets": self.gets,
            "failed": self.failed(),
            "errors": self.errors,
            "wrong_values": self.wrong_values,
            "stale_reads": self.stale_reads,
            "wrong_value_examples": self.examples,
            "throughput_ops": self.throughput(),
            "ops_per_sec": self.throughput(),
            "p50_us": self.all_latency_us[0],
            "p99_us": self.all_latency_us[2],
            "p999_us": self.all_latency_us[3],
            "longest_gap_ms": millis(self.longest_gap),
            "longest_write_gap_ms": millis(self.longest_write_gap),
            "latency_us": {
                "all": lat(&self.all_latency_us),
                "set": lat(&self.set_latency_us),
                "get": lat(&self.get_latency_us),
            },
            "seed": self.seed,
        })
    }

    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ok ({} sets, {} gets), {} failed in {:.2} s: {:.0} ops/s",
            self.sets + self.gets,
            self.sets,
            self.gets,
            self.failed(),
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        let _ = writeln!(out, "latency (µs)  p50  p90  p99  p99.9  max");
        for (name, p) in [
            ("all", &self.all_latency_us),
            ("set", &self.set_latency_us),
            ("get", &self.get_latency_us),
        ] {
            let _ = writeln!(
                out,
                "  {name:<10}  {}  {}  {}  {}  {}",
                p[0], p[1], p[2], p[3], p[4]
            );
        }
        for (kind, n) in &self.errors {
            let _ = writeln!(out, "errors {kind}: {n}");
        }
        let _ = writeln!(
            out,
            "longest gap without a success: {:.1} ms",
            millis(self.longest_gap)
        );
        let _ = writeln!(
            out,
            "longest gap without a successful write: {:.1} ms",
            millis(self.longest_write_gap)
        );
        let _ = writeln!(
            out,
            "stale reads (older values, e.g. from a lagging follower): {}",
            self.stale_reads
        );
        let _ = write!(out, "wrong values (never written): {}", self.wrong_values);
        for example in &self.examples {
            let _ = write!(out, "\n  {example}");
        }
        let _ = write!(out, "\nseed: {}", self.seed);
        out
    }

    /// The availability summary of `semikv-bench --failover`: the write
    /// outage and the answers a failover produces.
    pub fn availability(&self) -> String {
        let count = |kind: &str| self.errors.get(kind).copied().unwrap_or(0);
        format!(
            "availability: longest window without a successful write {:.1} ms; \
             Indeterminate {}, Unavailable {}, NotEnoughReplicas {}, connection or timeout {}",
            millis(self.longest_write_gap),
            count("Indeterminate"),
            count("Unavailable"),
            count("NotEnoughReplicas"),
            self.errors
                .iter()
                .filter(|(k, _)| matches!(
                    k.as_str(),
                    "connection_lost" | "not_connected" | "timeout"
                ))
                .map(|(_, n)| n)
                .sum::<u64>(),
        )
    }
}

/// The name failures like `error` are counted under in the report.
pub(super) fn error_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::Server(e) => match e {
            ErrorReply::NotLeader { .. } => "NotLeader",
            ErrorReply::NotEnoughReplicas { .. } => "NotEnoughReplicas",
            ErrorReply::Unavailable { .. } => "Unavailable",
            ErrorReply::Indeterminate { .. } => "Indeterminate",
            ErrorReply::Invalid { .. } => "Invalid",
            ErrorReply::StaleEpoch { .. } => "StaleEpoch",
            ErrorReply::Storage { .. } => "Storage",
            ErrorReply::EpochConflict { .. } => "EpochConflict",
            ErrorReply::Diverged { .. } => "Diverged",
            ErrorReply::DiskFull { .. } => "DiskFull",
            ErrorReply::OutOfMemory { .. } => "OutOfMemory",
            ErrorReply::NoPermission { .. } => "NoPermission",
            ErrorReply::NotAnInteger => "NotAnInteger",
            ErrorReply::Overflow => "Overflow",
            ErrorReply::Behind { .. } => "Behind",
        },
        ClientError::Timeout { .. } => "timeout",
        ClientError::ConnectionLost { .. } => "connection_lost",
        ClientError::NotConnected { .. }
        | ClientError::Connect { .. }
        | ClientError::ConnectTimeout { .. }
        | ClientError::Handshake { .. }
        | ClientError::Rejected { .. } => "not_connected",
        ClientError::Encode(_) => "encode",
        ClientError::UnexpectedReply { .. } => "unexpected_reply",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_measured_to_within_their_resolution() {
        let gap = LongestGap::default();
        // Successes every 10 us for 1 ms, then nothing until 5 ms.
        for t in (0..=1_000).step_by(10) {
            gap.record(t);
        }
        gap.record(5_000);
        let longest = gap.longest(5_000).as_micros() as u64;
        assert!(
            (4_000..=4_000 + GAP_RESOLUTION_US).contains(&longest),
            "{longest}"
        );
        // A run that ends in an outage has its longest gap at the end.
        assert_eq!(gap.longest(20_000).as_micros() as u64, 15_000);
        // Events out of order (lanes on two threads) never shrink anything.
        gap.record(100);
        assert_eq!(gap.longest(20_000).as_micros() as u64, 15_000);
    }
}
