//! The `semikv-bench` load generator: many clients, each a connection with
//! `pipeline` requests in flight, a SET:GET mix over a keyspace, latency in
//! HDR histograms, and every read checked against what that client last
//! wrote for the key.
//!
//! Read checking: keys are private to a client (`bench-RUN-CLIENT-K`, RUN
//! unique per run) and, within a client, to one pipeline lane (`K % pipeline
//! == lane`), so no two requests on the same key are ever in flight at once
//! and the expected value is known exactly — except after a write whose
//! outcome is unknown (timeout, lost connection, `NotEnoughReplicas`,
//! `Indeterminate`), after which either the old or the new value is accepted
//! until a read settles it. A read that returns an *older* value the key did
//! hold is `stale` (reads from followers may lag: allowed by the design, but
//! counted); a value the key never held is a consistency violation
//! (`wrong_values`, exit code 1 in the binary).
//!
//! Availability: `longest_gap` is the longest time with no request
//! succeeding anywhere, `longest_write_gap` the longest with no write
//! succeeding (a failover's write outage, while reads may go on).
//!
//! Driving: one task per connection keeps all its lanes' requests in
//! flight (`driver`), with no task, oneshot or timer per request.
//!
//! Progress: every connection publishes its own totals on its own cache
//! line (plain stores by the one task that owns it: no shared counter for
//! requests to contend on); [`run_with_progress`] sums them a few times a
//! second and hands a [`Progress`] sample to its caller, and
//! [`progress_line`] renders a sample as one terminal line of at most
//! [`MAX_PROGRESS_WIDTH`] columns.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use semikv_protocol::ErrorReply;
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier};
use tokio::time::Instant;

use semikv_client::{Client, ClientConfig, ClientError};

mod driver;
mod wire;

/// Highest latency the histograms hold, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Resolution of the availability gaps: successes closer than this to the
/// last recorded one are not recorded.
const GAP_RESOLUTION_US: u64 = 250;
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// Wrong values kept as examples in the report.
const MAX_EXAMPLES: usize = 5;
/// Smallest `--value-size`: room for a `client:seq:` tag in any realistic
/// run (a longer tag makes that value longer, never unparseable).
const MIN_VALUE_SIZE: usize = 16;

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests in total.
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Balancer (or replica) address.
    pub addr: String,
    /// Connections.
    pub clients: u32,
    /// Requests in flight per connection.
    pub pipeline: u32,
    /// When to stop.
    pub stop: Stop,
    /// Relative weight of sets.
    pub set_weight: u32,
    /// Relative weight of gets.
    pub get_weight: u32,
    /// Keys per client.
    pub keyspace: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Seed of the key and op choices.
    pub seed: u64,
    /// Write every key once before the measured run, so gets read values
    /// (not misses); those writes are neither timed nor counted.
    pub prefill: bool,
    /// Connection settings.
    pub client: ClientConfig,
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The settings make no sense.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// The first connection failed: nothing to measure.
    #[error("cannot reach {addr}: {error}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why (shown in the message, so deliberately not a `source`).
        error: ClientError,
    },
}

impl BenchConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |m: &str| Err(BenchError::Invalid(m.to_string()));
        if self.clients == 0 {
            return invalid("--clients must be at least 1");
        }
        if self.pipeline == 0 {
            return invalid("--pipeline must be at least 1");
        }
        if self.set_weight == 0 && self.get_weight == 0 {
            return invalid("--ratio must not be 0:0");
        }
        if self.keyspace < u64::from(self.pipeline) {
            return invalid("--keyspace must be at least --pipeline");
        }
        if self.value_size < MIN_VALUE_SIZE {
            return invalid("--value-size must be at least 16 (the value carries its tag)");
        }
        match self.stop {
            Stop::Requests(0) => invalid("--requests must be at least 1"),
            Stop::Duration(d) if d.is_zero() => invalid("--duration must be positive"),
            _ => Ok(()),
        }
    }
}

/// A small, fast, seedable generator (SplitMix64): reproducible choices
/// without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; 0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for load generation.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// What a read returned, judged against what the lane wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCheck {
    /// The latest value (or one of the possible latest ones).
    Fresh,
    /// A value the key held before its latest one.
    Stale,
    /// A value the key never held.
    Wrong,
}

/// One lane's knowledge of its keys, by lane-local key number. `None`
/// stands for "no value".
///
/// Laid out for the common case: a read that returns the settled value
/// touches one dense slot and nothing else (with hundreds of lanes, a wider
/// per-key struct made every read a cache miss, the load generator's
/// largest cost). Writes with an unknown outcome are kept apart, per lane,
/// and are only searched when a read is not the settled value.
///
/// Memory stays bounded however long the run: no history of values is
/// kept. A lane numbers its writes in increasing order and every value names
/// the key it was written to ([`make_value`]), so a value of this key with a
/// number the lane has issued is one it wrote there: an old value. The
/// caller checks the key a value names ([`judge`]).
#[derive(Debug, Default)]
pub struct Model {
    /// By key: the value a fresh read returns unless one of its `pending`
    /// writes landed.
    settled: Vec<Option<u64>>,
    /// `(key, seq)`: writes after their key's settled value whose outcome is
    /// unknown, in write order: a fresh read may return any of its key's.
    /// Usually empty.
    pending: Vec<(u64, u64)>,
    /// The highest value number written or maybe written.
    issued: Option<u64>,
}

impl Model {
    /// A model for keys `0..keys` (it grows if a larger key shows up).
    pub fn with_keys(keys: usize) -> Model {
        Model {
            settled: vec![None; keys],
            pending: Vec::new(),
            issued: None,
        }
    }

    /// Where `key`'s settled value is, grown into if need be.
    fn slot(&mut self, key: u64) -> usize {
        let at = usize::try_from(key).unwrap_or(usize::MAX);
        if at >= self.settled.len() {
            self.settled.resize(at.saturating_add(1), None);
        }
        at
    }

    fn remember(&mut self, seq: u64) {
        self.issued = Some(self.issued.map_or(seq, |issued| issued.max(seq)));
    }

    /// What a fresh read of `key` returns unless a write whose outcome is
    /// unknown landed: [`Model::read`] judges a read of exactly this fresh,
    /// and changes nothing. Lets a caller fetch it while the key's lines are
    /// warm and compare the answer later without touching the model.
    pub fn settled(&self, key: u64) -> Option<u64> {
        usize::try_from(key)
            .ok()
            .and_then(|at| self.settled.get(at))
            .copied()
            .flatten()
    }

    /// A write of value `seq` to `key` was acknowledged.
    pub fn written(&mut self, key: u64, seq: u64) {
        let at = self.slot(key);
        self.settled[at] = Some(seq);
        if !self.pending.is_empty() {
            self.pending.retain(|&(k, _)| k != key);
        }
        self.remember(seq);
    }

    /// A write of `seq` to `key` may or may not have happened.
    pub fn maybe_written(&mut self, key: u64, seq: u64) {
        self.slot(key);
        self.pending.push((key, seq));
        self.remember(seq);
    }

    /// Judges a read of `key` that returned `got`, a value that names `key`
    /// (or no value). A fresh answer settles the key's value. Values are
    /// numbered in increasing order: one the lane has issued is an old one.
    pub fn read(&mut self, key: u64, got: Option<u64>) -> ReadCheck {
        let at = self.slot(key);
        if got == self.settled[at] {
            return ReadCheck::Fresh;
        }
        let landed =
            got.and_then(|seq| self.pending.iter().position(|&(k, s)| k == key && s == seq));
        if let Some(pos) = landed {
            self.settled[at] = got;
            // Writes after `got` whose outcome is unknown may still land; the
            // ones before it are now history.
            let mut at = 0;
            self.pending.retain(|&(k, _)| {
                at += 1;
                k != key || at > pos + 1
            });
            ReadCheck::Fresh
        } else if got.is_none_or(|seq| self.issued.is_some_and(|issued| seq <= issued)) {
            // A key began with no value, so `None` is always an old value.
            ReadCheck::Stale
        } else {
            ReadCheck::Wrong
        }
    }
}

/// The bytes of value `seq` that `client` writes to its key number `key`:
/// `{client}:{seq}:{key}:` padded with `x` to `size` (longer if the tag is).
pub fn make_value(client: u32, key: u64, seq: u64, size: usize) -> Bytes {
    let mut v = format!("{client}:{seq}:{key}:").into_bytes();
    v.resize(size.max(v.len()), b'x');
    Bytes::from(v)
}

/// Judges a read of a lane's key `i` (the client's key number `key`) that
/// returned `got`, as [`parse_value`] read it (`None`: no value): a value of
/// another client or another key is wrong whatever the model says.
pub fn judge(model: &mut Model, i: u64, key: u64, got: Option<Option<(u64, u64)>>) -> ReadCheck {
    match got {
        None => model.read(i, None),
        Some(Some((seq, named))) if named == key => model.read(i, Some(seq)),
        Some(_) => ReadCheck::Wrong,
    }
}

/// The value number and key number in a value written by `client`, if it
/// is one.
pub fn parse_value(client: u32, value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value.get(..value.len().min(32))?).ok()?;
    // Byte searches, not a `splitn` iterator: this runs for every get, and
    // the iterator was a few percent of the bench's CPU. `:` is ASCII, so
    // every position found is a character boundary.
    let colon = |from: usize| {
        text.as_bytes()
            .get(from..)?
            .iter()
            .position(|&b| b == b':')
            .map(|at| from + at)
    };
    let first = colon(0)?;
    let second = colon(first + 1)?;
    let third = colon(second + 1)?;
    let owner: u32 = text.get(..first)?.parse().ok()?;
    let seq: u64 = text.get(first + 1..second)?.parse().ok()?;
    let key: u64 = text.get(second + 1..third)?.parse().ok()?;
    (owner == client).then_some((seq, key))
}

/// Results of one connection (or its prefill), merged into the [`Report`].
struct Tally {
    errors: BTreeMap<String, u64>,
    /// Successful requests: a plain copy of the histograms' counts, kept for
    /// the progress line.
    ok: u64,
    /// Failed requests: the sum of `errors`, kept for the progress line.
    failed: u64,
    wrong_values: u64,
    stale_reads: u64,
    examples: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            errors: BTreeMap::new(),
            ok: 0,
            failed: 0,
            wrong_values: 0,
            stale_reads: 0,
            examples: Vec::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
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
fn record(h: &mut Option<Histogram<u64>>, micros: u64) {
    h.get_or_insert_with(histogram)
        .saturating_record(micros.max(1));
}

// The bounds are constants that hdrhistogram accepts: this cannot fail.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
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
            "longest_gap_ms": self.longest_gap.as_secs_f64() * 1000.0,
            "longest_write_gap_ms": self.longest_write_gap.as_secs_f64() * 1000.0,
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
            self.longest_gap.as_secs_f64() * 1000.0
        );
        let _ = writeln!(
            out,
            "longest gap without a successful write: {:.1} ms",
            self.longest_write_gap.as_secs_f64() * 1000.0
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
}

/// How often the binary redraws its progress line: 5 times a second.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// The widest line [`progress_line`] renders, in columns.
pub const MAX_PROGRESS_WIDTH: usize = 80;
/// The narrowest bar worth drawing: below it the bar is left out.
const MIN_BAR_WIDTH: usize = 5;
/// The widest bar: the numbers matter more.
const MAX_BAR_WIDTH: usize = 24;
/// Gaps from this long on are shown in seconds rather than milliseconds.
const GAP_IN_SECONDS: Duration = Duration::from_secs(10);

/// Which part of a run a [`Progress`] sample describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `prefill` writing every key once before the measured run.
    Prefill,
    /// The measured run.
    Run,
}

/// A sample of a run in progress, for the progress line. Counts cover the
/// current phase only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The phase sampled.
    pub phase: Phase,
    /// Time since the phase began.
    pub elapsed: Duration,
    /// When the phase ends; prefill always ends after
    /// `Requests(keys in total)`.
    pub stop: Stop,
    /// Requests answered so far, failed ones included.
    pub done: u64,
    /// Successful requests per second since the previous sample.
    pub ops_per_sec: f64,
    /// Failed requests so far.
    pub errors: u64,
    /// The longest time without a successful write so far, the one going on
    /// now included; `None` during the prefill and when the run does not
    /// write (a caller that does not want it shown may also clear it).
    pub write_gap: Option<Duration>,
}

/// Renders `progress` as one line of plain ASCII (so bytes are columns) of
/// at most `width` columns, and never more than [`MAX_PROGRESS_WIDTH`]:
/// `[####----] 12.0/30.0 s  40%  45210 ops/s  3 err  write gap 25 ms`.
/// The bar shrinks or goes first when room is short; the line is cut
/// last. Carries no control characters: drawing it is the caller's job.
pub fn progress_line(progress: &Progress, width: usize) -> String {
    let width = width.min(MAX_PROGRESS_WIDTH);
    let (fraction, position) = match progress.stop {
        Stop::Requests(total) => (
            if total == 0 {
                1.0
            } else {
                progress.done as f64 / total as f64
            },
            format!("{}/{total}", progress.done),
        ),
        Stop::Duration(total) => {
            let (elapsed, total) = (progress.elapsed.as_secs_f64(), total.as_secs_f64());
            (
                if total > 0.0 { elapsed / total } else { 1.0 },
                format!("{elapsed:.1}/{total:.1} s"),
            )
        }
    };
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let ops = if progress.ops_per_sec.is_finite() {
        progress.ops_per_sec.max(0.0)
    } else {
        0.0
    };
    let mut fields = Vec::with_capacity(5);
    fields.push(match progress.phase {
        Phase::Prefill => format!("prefill {position}"),
        Phase::Run => position,
    });
    // Floor, so that 100% means finished.
    fields.push(format!("{:>3}%", (fraction * 100.0).floor() as u64));
    fields.push(format!("{ops:.0} ops/s"));
    fields.push(format!("{} err", progress.errors));
    if let Some(gap) = progress.write_gap {
        fields.push(if gap >= GAP_IN_SECONDS {
            format!("write gap {:.1} s", gap.as_secs_f64())
        } else {
            format!("write gap {:.0} ms", gap.as_secs_f64() * 1000.0)
        });
    }
    let text = fields.join("  ");
    // "[" + bar + "] " before the text.
    let bar_width = width.saturating_sub(text.len() + 3).min(MAX_BAR_WIDTH);
    let mut line = if bar_width >= MIN_BAR_WIDTH {
        let filled = ((fraction * bar_width as f64).floor() as usize).min(bar_width);
        format!(
            "[{}{}] {text}",
            "#".repeat(filled),
            "-".repeat(bar_width - filled)
        )
    } else {
        text
    };
    // Only a tiny width or absurd numbers leave the text itself too long;
    // every byte is ASCII, so this cannot split a character.
    line.truncate(width);
    line
}

/// One connection's live totals, alone on its cache line (the alignment
/// pads it) so that requests never contend: only its task writes them, with
/// plain stores of its own counts (no read-modify-write), and the progress
/// sampler reads them a few times a second.
#[repr(align(64))]
#[derive(Debug, Default)]
struct ConnCounts {
    prefill_ok: AtomicU64,
    prefill_failed: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ConnCounts {
    /// Publishes `tally`'s totals as the connection's counts for `phase`.
    fn publish(&self, phase: Phase, tally: &Tally) {
        let (ok, failed) = match phase {
            Phase::Prefill => (&self.prefill_ok, &self.prefill_failed),
            Phase::Run => (&self.ok, &self.failed),
        };
        ok.store(tally.ok, Ordering::Relaxed);
        failed.store(tally.failed, Ordering::Relaxed);
    }

    /// The connection's (successful, failed) counts for `phase`.
    fn load(&self, phase: Phase) -> (u64, u64) {
        let (ok, failed) = match phase {
            Phase::Prefill => (&self.prefill_ok, &self.prefill_failed),
            Phase::Run => (&self.ok, &self.failed),
        };
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }
}

/// What [`run_with_progress`] hands its samples to.
type Observer<'a> = &'a mut (dyn FnMut(&Progress) + Send);

/// Samples the connections' counts on every tick of its interval and hands the
/// result to the observer.
struct Sampler<'a> {
    shared: Arc<Shared>,
    interval: tokio::time::Interval,
    observer: Observer<'a>,
    /// When the prefill began (when the connections were started).
    began: Instant,
    /// The phase, successful count and time of the previous sample, for the
    /// current rate.
    previous: Option<(Phase, u64, Instant)>,
}

impl Sampler<'_> {
    /// Takes a sample as of `now`.
    fn sample(&mut self, now: Instant) {
        let config = &self.shared.config;
        let (phase, phase_start, stop) = match self.shared.start.get() {
            Some(start) => (Phase::Run, *start, config.stop),
            // Without prefill the lanes are only connecting: nothing to show.
            None if !config.prefill => return,
            None => (
                Phase::Prefill,
                self.began,
                Stop::Requests(config.keyspace.saturating_mul(u64::from(config.clients))),
            ),
        };
        let (ok, failed) = self
            .shared
            .counts
            .iter()
            .map(|c| c.load(phase))
            .fold((0u64, 0u64), |(ok, failed), (o, f)| {
                (ok.saturating_add(o), failed.saturating_add(f))
            });
        let (since_ok, since) = match self.previous {
            Some((p, ok, at)) if p == phase => (ok, at),
            _ => (0, phase_start),
        };
        let secs = now.saturating_duration_since(since).as_secs_f64();
        let ops_per_sec = if secs > 0.0 {
            ok.saturating_sub(since_ok) as f64 / secs
        } else {
            0.0
        };
        self.previous = Some((phase, ok, now));
        let elapsed = now.saturating_duration_since(phase_start);
        let write_gap = (phase == Phase::Run && config.set_weight > 0).then(|| {
            let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            self.shared.write_gap.longest(elapsed_us)
        });
        (self.observer)(&Progress {
            phase,
            elapsed,
            stop,
            done: ok.saturating_add(failed),
            ops_per_sec,
            errors: failed,
            write_gap,
        });
    }
}

/// Awaits `future`, sampling progress meanwhile when there is a sampler.
async fn sampled<T>(future: impl Future<Output = T>, sampler: &mut Option<Sampler<'_>>) -> T {
    let Some(sampler) = sampler.as_mut() else {
        return future.await;
    };
    let mut future = std::pin::pin!(future);
    loop {
        tokio::select! {
            biased;
            out = &mut future => return out,
            _ = sampler.interval.tick() => sampler.sample(Instant::now()),
        }
    }
}

/// Shared run state.
struct Shared {
    config: BenchConfig,
    run_id: u64,
    issued: AtomicU64,
    /// Each client connection's live counts, by client number.
    counts: Box<[ConnCounts]>,
    /// When the measured run began (after any prefill).
    start: OnceLock<Instant>,
    /// When a `--duration` run ends; unset until it begins.
    deadline: OnceLock<Instant>,
    /// Gaps between successes of any kind.
    any_gap: Gap,
    /// Gaps between successful writes.
    write_gap: Gap,
    /// Every connection and `run` meet here once prefill is done.
    prefilled: Barrier,
    /// Flips to true once `start` is set: the measured run begins.
    go: watch::Sender<bool>,
}

impl Shared {
    fn new(config: BenchConfig, run_id: u64, clients: usize) -> Shared {
        Shared {
            config,
            run_id,
            issued: AtomicU64::new(0),
            counts: (0..clients).map(|_| ConnCounts::default()).collect(),
            start: OnceLock::new(),
            deadline: OnceLock::new(),
            any_gap: Gap::default(),
            write_gap: Gap::default(),
            prefilled: Barrier::new(clients + 1),
            go: watch::channel(false).0,
        }
    }

    /// Claims the next request, or `false` when the run is over.
    fn claim(&self) -> bool {
        self.claim_at(Instant::now())
    }

    /// Claims the next request as of `now` (a caller sending a batch reads
    /// the clock once for all of it), or `false` when the run is over.
    fn claim_at(&self, now: Instant) -> bool {
        match self.config.stop {
            Stop::Requests(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Stop::Duration(_) => self.deadline.get().is_none_or(|d| now < *d),
        }
    }

    /// Records a success. Lock-free: with hundreds of lanes a mutex here
    /// showed up as contention.
    fn succeeded(&self, write: bool, at: Instant) {
        let start = self.start.get().copied().unwrap_or(at);
        let now =
            u64::try_from(at.saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX);
        self.any_gap.record(now);
        if write {
            self.write_gap.record(now);
        }
    }
}

/// The longest time between two events, kept lock-free in microseconds
/// from the start of the run.
#[derive(Debug, Default)]
struct Gap {
    last_us: AtomicU64,
    longest_us: AtomicU64,
}

impl Gap {
    /// Records an event at `now_us`. Events within [`GAP_RESOLUTION_US`] of
    /// the last recorded one only read the shared counters: every lane
    /// writing them on every success kept their cache line bouncing between
    /// cores. Gaps are therefore measured to within that resolution.
    fn record(&self, now_us: u64) {
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
    fn longest(&self, elapsed_us: u64) -> Duration {
        let tail = elapsed_us.saturating_sub(self.last_us.load(Ordering::Relaxed));
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed).max(tail))
    }
}

/// Latency histograms of sets and of gets, created on first use.
type Latencies = (Option<Histogram<u64>>, Option<Histogram<u64>>);

/// Runs the benchmark.
///
/// # Errors
/// [`BenchError::Invalid`] for bad settings, [`BenchError::Unreachable`]
/// when the first connection fails. Failures during the run are counted in
/// the report, not returned.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    run_sampled(config, None).await
}

/// Runs the benchmark like [`run`], calling `observer` with a [`Progress`]
/// sample every `interval` (at least 1 ms) during the prefill, if any, and
/// the measured run; never after the last request is answered, so the
/// caller may clear what it drew once this returns. Sampling reads each
/// connection's counts; requests themselves never touch shared progress state.
///
/// # Errors
/// As [`run`].
pub async fn run_with_progress(
    config: BenchConfig,
    interval: Duration,
    observer: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Report, BenchError> {
    run_sampled(config, Some((interval, observer))).await
}

async fn run_sampled(
    config: BenchConfig,
    observer: Option<(Duration, Observer<'_>)>,
) -> Result<Report, BenchError> {
    config.validate()?;
    // Probe once so that a wrong address is an error, not a report of errors.
    Client::connect(&config.addr, &config.client)
        .await
        .map_err(|error| BenchError::Unreachable {
            addr: config.addr.clone(),
            error,
        })?;
    let run_id = Rng::new(config.seed ^ u64::from(std::process::id())).next_u64() & 0xff_ffff;
    let clients = usize::try_from(config.clients)
        .map_err(|_| BenchError::Invalid("too many clients".to_string()))?;
    let shared = Arc::new(Shared::new(config, run_id, clients));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..shared.config.clients {
        tasks.spawn(driver::Driver::new(shared.clone(), client).run());
    }
    let mut sampler = observer.map(|(period, observer)| {
        // A zero period would make tokio panic.
        let period = period.max(Duration::from_millis(1));
        let began = Instant::now();
        let mut interval = tokio::time::interval_at(began + period, period);
        // After a stall, one late sample beats a burst of catch-up redraws.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Sampler {
            shared: shared.clone(),
            interval,
            observer,
            began,
            previous: None,
        }
    });
    sampled(shared.prefilled.wait(), &mut sampler).await;
    let start = Instant::now();
    let _ = shared.start.set(start);
    if let Stop::Duration(d) = shared.config.stop {
        let _ = shared.deadline.set(start + d);
    }
    shared.go.send_replace(true);
    let collect = async {
        let mut total = Tally::new();
        let mut latencies: Latencies = (None, None);
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok((tally, (sets, gets))) => {
                    total.merge(tally);
                    merge_histogram(&mut latencies.0, sets);
                    merge_histogram(&mut latencies.1, gets);
                }
                Err(e) => {
                    *total
                        .errors
                        .entry(format!("client crashed: {e}"))
                        .or_default() += 1;
                }
            }
        }
        (total, latencies)
    };
    let (total, latencies) = sampled(collect, &mut sampler).await;
    let elapsed = start.elapsed();
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let longest_gap = shared.any_gap.longest(elapsed_us);
    // Only meaningful when the run writes at all.
    let longest_write_gap = if shared.config.set_weight == 0 {
        Duration::ZERO
    } else {
        shared.write_gap.longest(elapsed_us)
    };
    let (sets, gets) = latencies;
    let sets = sets.unwrap_or_else(histogram);
    let gets = gets.unwrap_or_else(histogram);
    let mut all = sets.clone();
    let _ = all.add(&gets);
    Ok(Report {
        elapsed,
        sets: sets.len(),
        gets: gets.len(),
        errors: total.errors,
        wrong_values: total.wrong_values,
        stale_reads: total.stale_reads,
        examples: total.examples,
        longest_gap,
        longest_write_gap,
        set_latency_us: percentiles(&sets),
        get_latency_us: percentiles(&gets),
        all_latency_us: percentiles(&all),
        seed: shared.config.seed,
    })
}

/// Whether a failed write may still have been applied.
fn outcome_unknown(error: &ClientError) -> bool {
    match error {
        ClientError::ConnectionLost { .. } | ClientError::Timeout { .. } => true,
        ClientError::Server(e) => matches!(
            e,
            ErrorReply::NotEnoughReplicas { .. } | ErrorReply::Indeterminate { .. }
        ),
        _ => false,
    }
}

fn error_kind(error: &ClientError) -> String {
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
        }
        .to_string(),
        ClientError::Timeout { .. } => "timeout".to_string(),
        ClientError::ConnectionLost { .. } => "connection_lost".to_string(),
        ClientError::NotConnected { .. }
        | ClientError::Connect { .. }
        | ClientError::ConnectTimeout { .. }
        | ClientError::Handshake { .. }
        | ClientError::Rejected { .. } => "not_connected".to_string(),
        ClientError::Encode(_) => "encode".to_string(),
        ClientError::UnexpectedReply { .. } => "unexpected_reply".to_string(),
    }
}

/// One lane's fixed view of the run: which keys are its own (key number
/// `lane + pipeline * i` is its lane-local key `i`).
struct Lane {
    pipeline: u64,
    lane: u64,
}

impl Lane {
    fn key_number(&self, i: u64) -> u64 {
        self.lane + self.pipeline * i
    }
}

impl Report {
    /// The availability summary of `semikv-bench --failover`: the write
    /// outage and the answers a failover produces.
    pub fn availability(&self) -> String {
        let count = |kind: &str| self.errors.get(kind).copied().unwrap_or(0);
        format!(
            "availability: longest window without a successful write {:.1} ms; \
             Indeterminate {}, Unavailable {}, NotEnoughReplicas {}, connection or timeout {}",
            self.longest_write_gap.as_secs_f64() * 1000.0,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::testing::FakeServer;

    #[test]
    fn model_tells_fresh_stale_and_wrong_reads() {
        use ReadCheck::{Fresh, Stale, Wrong};
        let mut m = Model::default();
        assert_eq!(m.read(1, None), Fresh);
        assert_eq!(m.read(1, Some(1)), Wrong);
        m.written(1, 1);
        assert_eq!(m.read(1, None), Stale);
        assert_eq!(m.read(1, Some(1)), Fresh);
        m.maybe_written(1, 2);
        m.maybe_written(1, 3);
        assert_eq!(m.read(1, Some(2)), Fresh);
        // Settled at 2: 1 is now an old value, 9 was never written, and 3
        // (outcome unknown, written after 2) may still land.
        assert_eq!(m.read(1, Some(1)), Stale);
        assert_eq!(m.read(1, Some(9)), Wrong);
        assert_eq!(m.read(1, Some(2)), Fresh);
        assert_eq!(m.read(1, Some(3)), Fresh);
        assert_eq!(m.read(1, Some(2)), Stale);
        m.maybe_written(2, 4);
        assert_eq!(m.read(2, None), Fresh);
        // A number above any the lane issued was never written.
        assert_eq!(m.read(2, Some(5)), Wrong);
    }

    #[test]
    fn a_value_naming_another_key_or_client_is_wrong() {
        use ReadCheck::{Fresh, Stale, Wrong};
        let mut m = Model::default();
        // Lane-local keys 0 and 1 are the client's keys 3 and 19.
        m.written(0, 1);
        m.written(1, 2);
        m.written(0, 3);
        let value = |key, seq| parse_value(7, &make_value(7, key, seq, 16));
        assert_eq!(judge(&mut m, 0, 3, Some(value(3, 3))), Fresh);
        assert_eq!(judge(&mut m, 0, 3, Some(value(3, 1))), Stale);
        // Key 19's value read from key 3: a mix-up, whatever its number.
        assert_eq!(judge(&mut m, 0, 3, Some(value(19, 2))), Wrong);
        assert_eq!(judge(&mut m, 0, 3, Some(value(19, 3))), Wrong);
        // Another client's value, or bytes that are no value of ours.
        let theirs = parse_value(7, &make_value(8, 3, 3, 16));
        assert_eq!(judge(&mut m, 0, 3, Some(theirs)), Wrong);
        assert_eq!(judge(&mut m, 0, 3, Some(parse_value(7, b"7:3:"))), Wrong);
        assert_eq!(judge(&mut m, 1, 19, None), Stale);
        assert_eq!(judge(&mut m, 1, 19, Some(value(19, 2))), Fresh);
    }

    /// One key in [`ReferenceModel`]: settled, pending, history.
    type ReferenceKey = (Option<u64>, Vec<Option<u64>>, Vec<u64>);

    /// The model as it was before it was made dense: one struct per key.
    /// The reference the dense one must agree with.
    #[derive(Debug, Default)]
    struct ReferenceModel {
        keys: BTreeMap<u64, ReferenceKey>,
    }

    impl ReferenceModel {
        fn written(&mut self, key: u64, seq: u64) {
            let (settled, pending, history) = self.keys.entry(key).or_default();
            *settled = Some(seq);
            pending.clear();
            history.push(seq);
        }

        fn maybe_written(&mut self, key: u64, seq: u64) {
            let (_, pending, history) = self.keys.entry(key).or_default();
            pending.push(Some(seq));
            history.push(seq);
        }

        fn read(&mut self, key: u64, got: Option<u64>) -> ReadCheck {
            let (settled, pending, history) = self.keys.entry(key).or_default();
            if got == *settled {
                ReadCheck::Fresh
            } else if let Some(pos) = pending.iter().position(|v| *v == got) {
                *settled = got;
                pending.drain(..=pos);
                ReadCheck::Fresh
            } else if got.is_none_or(|seq| history.contains(&seq)) {
                ReadCheck::Stale
            } else {
                ReadCheck::Wrong
            }
        }
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Written(u64, u64),
        MaybeWritten(u64, u64),
        /// A read of a key returning a value that names a key, or none.
        Read(u64, Option<(u64, u64)>),
    }

    /// Operations on keys `0..6` with values numbered in increasing order
    /// (some numbers skipped: a lane's other keys took them), as a lane makes
    /// them, and reads of no value, of values written (named after the key
    /// they were written to), and of values never written (named after the
    /// key read, or another).
    fn model_ops() -> impl proptest::strategy::Strategy<Value = Vec<ModelOp>> {
        use proptest::prelude::*;
        let op = (
            0u8..3,
            0u64..6,
            0u64..3,
            proptest::option::of((0usize..64, 0u64..6)),
            0u8..3,
        );
        proptest::collection::vec(op, 0..200).prop_map(move |raw| {
            let mut next = 0;
            let mut written: Vec<(u64, u64)> = Vec::new();
            raw.into_iter()
                .map(|(kind, key, skip, got, forged)| {
                    let got = got.map(|(pick, other)| match (forged, written.get(pick)) {
                        // Written earlier, named after its own key.
                        (0, Some(&(seq, to))) => (seq, to),
                        // Never written: a number past the last one.
                        (1, _) => (next + 1 + skip, key),
                        _ => (next + 1 + skip, other),
                    });
                    match kind {
                        0 | 1 => {
                            next += 1 + skip;
                            written.push((next, key));
                            if kind == 0 {
                                ModelOp::Written(key, next)
                            } else {
                                ModelOp::MaybeWritten(key, next)
                            }
                        }
                        _ => ModelOp::Read(key, got),
                    }
                })
                .collect()
        })
    }

    fn agrees_with_the_reference(ops: &[ModelOp], mut model: Model) -> Result<(), String> {
        let mut reference = ReferenceModel::default();
        for (n, op) in ops.iter().enumerate() {
            match *op {
                ModelOp::Written(key, seq) => {
                    model.written(key, seq);
                    reference.written(key, seq);
                }
                ModelOp::MaybeWritten(key, seq) => {
                    model.maybe_written(key, seq);
                    reference.maybe_written(key, seq);
                }
                ModelOp::Read(key, got) => {
                    let settled = model.settled(key);
                    // The lane-local key is the key number here.
                    let ours = judge(&mut model, key, key, got.map(Some));
                    // The reference knew every value's key from its history:
                    // a value naming another key was never written here.
                    let theirs = match got {
                        Some((_, named)) if named != key => {
                            reference.read(key, Some(u64::MAX));
                            ReadCheck::Wrong
                        }
                        _ => reference.read(key, got.map(|(seq, _)| seq)),
                    };
                    if settled == got.map(|(seq, _)| seq) && ours != ReadCheck::Fresh {
                        let named_here = got.is_none_or(|(_, named)| named == key);
                        if named_here {
                            return Err(format!("op {n} {op:?}: the settled value is {ours:?}"));
                        }
                    }
                    if ours != theirs {
                        return Err(format!("op {n} {op:?}: {ours:?}, reference {theirs:?}"));
                    }
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn bounded_model_judges_reads_like_the_full_history(
            ops in model_ops(),
            presized in proptest::prelude::any::<bool>(),
        ) {
            let model = if presized { Model::with_keys(3) } else { Model::default() };
            let verdict = agrees_with_the_reference(&ops, model);
            proptest::prop_assert!(verdict.is_ok(), "{}", verdict.unwrap_err());
        }
    }

    #[test]
    fn gaps_are_measured_to_within_their_resolution() {
        let gap = Gap::default();
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

    #[test]
    fn values_carry_their_tag() {
        let v = make_value(7, 12, 42, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(parse_value(7, &v), Some((42, 12)));
        assert_eq!(parse_value(8, &v), None);
        assert_eq!(parse_value(7, b"garbage"), None);
        assert_eq!(parse_value(7, b""), None);
    }

    /// `parse_value` with a `splitn` iterator: the reference.
    fn reference_parse_value(client: u32, value: &[u8]) -> Option<(u64, u64)> {
        let text = std::str::from_utf8(value.get(..value.len().min(32))?).ok()?;
        let mut parts = text.splitn(4, ':');
        let owner: u32 = parts.next()?.parse().ok()?;
        let seq: u64 = parts.next()?.parse().ok()?;
        let key: u64 = parts.next()?.parse().ok()?;
        parts.next()?;
        (owner == client).then_some((seq, key))
    }

    proptest::proptest! {
        #[test]
        fn parse_value_reads_what_it_always_read(
            client in 0u32..4,
            owner in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
            texture in "[0-9:+xé-]{0,40}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            shape in 0u8..4,
        ) {
            let value = match shape {
                0 => format!("{}:{seq}:{}:{texture}", owner % 5, owner % 7).into_bytes(),
                1 => format!("{owner}:{seq}{texture}").into_bytes(),
                2 => texture.into_bytes(),
                _ => bytes,
            };
            proptest::prop_assert_eq!(
                parse_value(client, &value),
                reference_parse_value(client, &value),
                "{:?}", String::from_utf8_lossy(&value)
            );
        }
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        assert_eq!(a.below(0), 0);
    }

    fn config(addr: String) -> BenchConfig {
        BenchConfig {
            addr,
            clients: 4,
            pipeline: 4,
            stop: Stop::Requests(2000),
            set_weight: 1,
            get_weight: 1,
            keyspace: 64,
            value_size: 32,
            seed: 1,
            prefill: false,
            client: ClientConfig::default(),
        }
    }

    #[test]
    fn settings_are_validated() {
        let ok = config("x".into());
        assert!(ok.validate().is_ok());
        for bad in [
            BenchConfig {
                clients: 0,
                ..ok.clone()
            },
            BenchConfig {
                pipeline: 0,
                ..ok.clone()
            },
            BenchConfig {
                set_weight: 0,
                get_weight: 0,
                ..ok.clone()
            },
            BenchConfig {
                keyspace: 2,
                ..ok.clone()
            },
            BenchConfig {
                value_size: 3,
                ..ok.clone()
            },
            BenchConfig {
                stop: Stop::Requests(0),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn runs_against_the_fake_and_checks_reads() {
        let server = FakeServer::start().await;
        let report = run(config(server.addr())).await.unwrap();
        assert_eq!(report.sets + report.gets, 2000);
        assert!(report.sets > 0 && report.gets > 0);
        assert_eq!(report.failed(), 0, "{:?}", report.errors);
        assert_eq!(report.wrong_values, 0, "{:?}", report.examples);
        assert_eq!(report.stale_reads, 0);
        let json = report.to_json();
        assert_eq!(json["ok"], 2000);
        assert!(report.to_text().contains("ops/s"));
    }

    #[tokio::test]
    async fn a_store_that_loses_writes_is_caught() {
        let server = FakeServer::start().await;
        let cfg = BenchConfig {
            stop: Stop::Requests(400),
            ..config(server.addr())
        };
        // The fake acknowledges but drops every write after the 100th.
        server.forget_writes_after(100);
        let report = run(cfg).await.unwrap();
        // Lost writes show up as reads of older values.
        assert!(report.stale_reads > 0, "lost writes went unnoticed");
        assert_eq!(report.wrong_values, 0);
    }

    #[tokio::test]
    async fn a_write_whose_answer_was_lost_may_have_landed() {
        let server = FakeServer::start().await;
        // Every 10th set is carried out, then its connection closes with it
        // unanswered. One client with one key, mostly reading: the next
        // requests read what such a set wrote.
        server.hang_up_every(10);
        let cfg = BenchConfig {
            clients: 1,
            pipeline: 1,
            keyspace: 1,
            set_weight: 1,
            get_weight: 3,
            stop: Stop::Requests(600),
            ..config(server.addr())
        };
        let report = run(cfg).await.unwrap();
        let lost = report.errors.get("connection_lost").copied().unwrap_or(0);
        assert!(lost >= 5, "{:?}", report.errors);
        assert_eq!(report.sets + report.gets + report.failed(), 600);
        // Read back, a set that landed without an answer is no surprise.
        assert_eq!(report.wrong_values, 0, "{:?}", report.examples);
        // The probe, the first connection and the one after the hang-up.
        assert!(server.connections() >= 3);
    }

    #[tokio::test]
    async fn unavailable_answers_are_waited_out_not_hammered() {
        let server = FakeServer::start().await;
        // Every answer is Unavailable with a 100 ms hint.
        server.unavailable_for(u64::MAX);
        let cfg = BenchConfig {
            clients: 1,
            stop: Stop::Duration(Duration::from_millis(500)),
            ..config(server.addr())
        };
        let report = run(cfg).await.unwrap();
        let unavailable = report.errors.get("Unavailable").copied().unwrap_or(0);
        // Four lanes, each at most one request per hint (plus the first):
        // a slow machine only makes fewer. Without the wait, thousands.
        assert!((4..=4 * 7).contains(&unavailable), "{:?}", report.errors);
        assert_eq!(report.sets + report.gets, 0);
    }

    #[tokio::test]
    async fn requests_without_answers_time_out_on_a_kept_connection() {
        let server = FakeServer::start().await;
        server.swallow();
        let cfg = BenchConfig {
            clients: 1,
            stop: Stop::Requests(12),
            client: ClientConfig {
                request_timeout: Duration::from_millis(100),
                ..ClientConfig::default()
            },
            ..config(server.addr())
        };
        let report = tokio::time::timeout(Duration::from_secs(60), run(cfg))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            report.errors.get("timeout"),
            Some(&12),
            "{:?}",
            report.errors
        );
        assert_eq!(server.requests(), 12);
        // The probe and the one connection the requests used.
        assert_eq!(server.connections(), 2);
    }

    #[tokio::test]
    async fn prefill_writes_every_key_before_the_measured_run() {
        let server = FakeServer::start().await;
        let cfg = BenchConfig {
            set_weight: 0,
            stop: Stop::Requests(400),
            prefill: true,
            ..config(server.addr())
        };
        // Every prefill write but the first is acknowledged and then
        // forgotten: reads that come back empty prove the keys were written
        // (and modelled) before the measured run.
        server.forget_writes_after(1);
        let report = run(cfg).await.unwrap();
        assert_eq!(report.sets, 0, "prefill writes are not counted");
        assert_eq!(report.gets, 400);
        // At most the reads of the one remembered key are fresh.
        assert!(report.stale_reads > 300, "{}", report.stale_reads);
        assert_eq!(report.wrong_values, 0);
    }

    fn sample(stop: Stop, done: u64) -> Progress {
        Progress {
            phase: Phase::Run,
            elapsed: Duration::from_secs(12),
            stop,
            done,
            ops_per_sec: 45_210.4,
            errors: 3,
            write_gap: None,
        }
    }

    /// The bar's cells: (filled, total).
    fn bar(line: &str) -> (usize, usize) {
        let inside = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .map(|(bar, _)| bar)
            .unwrap_or_else(|| panic!("no bar in {line:?}"));
        (inside.matches('#').count(), inside.len())
    }

    #[test]
    fn progress_line_in_requests_mode() {
        let line = progress_line(&sample(Stop::Requests(100_000), 41_000), 80);
        assert_eq!(
            line,
            "[#########---------------] 41000/100000   41%  45210 ops/s  3 err"
        );
        let (filled, cells) = bar(&line);
        assert_eq!(filled, cells * 41 / 100);
        // 100% only once every request is answered.
        let almost = progress_line(&sample(Stop::Requests(100_000), 99_999), 80);
        assert!(almost.contains(" 99%"), "{almost}");
        assert_ne!(bar(&almost).0, bar(&almost).1);
        let done = progress_line(&sample(Stop::Requests(100_000), 100_000), 80);
        assert!(done.contains("100%"), "{done}");
        assert_eq!(bar(&done).0, bar(&done).1);
        let nothing = progress_line(&sample(Stop::Requests(100_000), 0), 80);
        assert!(nothing.contains("  0%"), "{nothing}");
        assert_eq!(bar(&nothing).0, 0);
    }

    #[test]
    fn progress_line_in_duration_mode_with_the_write_gap() {
        let mut p = sample(Stop::Duration(Duration::from_secs(30)), 541_000);
        p.write_gap = Some(Duration::from_micros(25_400));
        let line = progress_line(&p, 80);
        assert_eq!(
            line,
            "[#########--------------] 12.0/30.0 s   40%  45210 ops/s  3 err  write gap 25 ms"
        );
        p.write_gap = Some(Duration::from_millis(12_345));
        assert!(progress_line(&p, 80).ends_with("write gap 12.3 s"));
        // Past the end (the last answers arrive after the deadline).
        p.elapsed = Duration::from_secs(31);
        let late = progress_line(&p, 80);
        assert!(late.contains("31.0/30.0 s  100%"), "{late}");
    }

    #[test]
    fn progress_line_names_the_prefill() {
        let p = Progress {
            phase: Phase::Prefill,
            write_gap: None,
            ..sample(Stop::Requests(500_000), 250_000)
        };
        let line = progress_line(&p, 80);
        assert!(line.contains("] prefill 250000/500000   50%"), "{line}");
    }

    #[test]
    fn progress_line_fits_narrow_widths_and_huge_numbers() {
        let mut p = sample(Stop::Requests(100_000), 41_000);
        // The bar shrinks first...
        assert_eq!(
            progress_line(&p, 46),
            "[##---] 41000/100000   41%  45210 ops/s  3 err"
        );
        // ...then goes, and the numbers stay.
        assert_eq!(
            progress_line(&p, 45),
            "41000/100000   41%  45210 ops/s  3 err"
        );
        // Narrower than the numbers: cut.
        assert_eq!(progress_line(&p, 10), "41000/1000");
        assert_eq!(progress_line(&p, 0), "");
        // Never wider than 80, whatever the caller asks.
        p.done = u64::MAX;
        p.stop = Stop::Requests(u64::MAX);
        p.errors = u64::MAX;
        p.ops_per_sec = 1e300;
        p.write_gap = Some(Duration::MAX);
        for width in [80, 81, 200, usize::MAX] {
            assert_eq!(progress_line(&p, width).len(), MAX_PROGRESS_WIDTH);
        }
    }

    #[test]
    fn progress_line_survives_nonsense_numbers() {
        for ops in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0] {
            let mut p = sample(Stop::Requests(0), 7);
            p.ops_per_sec = ops;
            let line = progress_line(&p, 80);
            assert!(line.contains("7/0  100%  0 ops/s"), "{line}");
            p.stop = Stop::Duration(Duration::ZERO);
            assert!(progress_line(&p, 80).contains("100%"));
        }
    }

    proptest::proptest! {
        #[test]
        fn progress_line_is_one_short_plain_line(
            done in proptest::prelude::any::<u64>(),
            total in proptest::prelude::any::<u64>(),
            by_time in proptest::prelude::any::<bool>(),
            elapsed_ms in proptest::prelude::any::<u64>(),
            ops in proptest::prelude::any::<f64>(),
            errors in proptest::prelude::any::<u64>(),
            gap_us in proptest::option::of(proptest::prelude::any::<u64>()),
            prefill in proptest::prelude::any::<bool>(),
            width in 0usize..300,
        ) {
            let p = Progress {
                phase: if prefill { Phase::Prefill } else { Phase::Run },
                elapsed: Duration::from_millis(elapsed_ms),
                stop: if by_time {
                    Stop::Duration(Duration::from_millis(total))
                } else {
                    Stop::Requests(total)
                },
                done,
                ops_per_sec: ops,
                errors,
                write_gap: gap_us.map(Duration::from_micros),
            };
            let line = progress_line(&p, width);
            proptest::prop_assert!(line.len() <= width.min(MAX_PROGRESS_WIDTH), "{line:?}");
            proptest::prop_assert!(
                line.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{line:?}"
            );
        }
    }

    #[tokio::test]
    async fn sampler_sums_the_connections_of_the_current_phase() {
        let cfg = BenchConfig {
            prefill: true,
            stop: Stop::Duration(Duration::from_secs(30)),
            ..config("x".into())
        };
        let shared = Arc::new(Shared::new(cfg, 1, 3));
        let mut seen = Vec::new();
        let mut observer = |p: &Progress| seen.push(*p);
        let began = Instant::now();
        let at = |ms| began + Duration::from_millis(ms);
        let mut sampler = Sampler {
            shared: shared.clone(),
            interval: tokio::time::interval(PROGRESS_INTERVAL),
            observer: &mut observer,
            began,
            previous: None,
        };
        let tally = |ok, failed| Tally {
            ok,
            failed,
            ..Tally::new()
        };
        shared.counts[0].publish(Phase::Prefill, &tally(100, 1));
        shared.counts[2].publish(Phase::Prefill, &tally(100, 0));
        sampler.sample(at(1000));
        // The measured run begins; its counts start from zero, and no write
        // has succeeded yet: the write gap is the whole run so far.
        shared.start.set(at(2000)).unwrap();
        shared.counts[1].publish(Phase::Run, &tally(300, 2));
        sampler.sample(at(4000));
        shared.counts[1].publish(Phase::Run, &tally(500, 2));
        shared.counts[2].publish(Phase::Run, &tally(100, 1));
        sampler.sample(at(4500));
        drop(sampler);
        let keys = 64 * 4;
        assert_eq!(
            seen,
            vec![
                Progress {
                    phase: Phase::Prefill,
                    elapsed: Duration::from_secs(1),
                    stop: Stop::Requests(keys),
                    done: 201,
                    ops_per_sec: 200.0,
                    errors: 1,
                    write_gap: None,
                },
                Progress {
                    phase: Phase::Run,
                    elapsed: Duration::from_secs(2),
                    stop: Stop::Duration(Duration::from_secs(30)),
                    done: 302,
                    ops_per_sec: 150.0,
                    errors: 2,
                    write_gap: Some(Duration::from_secs(2)),
                },
                Progress {
                    phase: Phase::Run,
                    elapsed: Duration::from_millis(2500),
                    stop: Stop::Duration(Duration::from_secs(30)),
                    done: 603,
                    ops_per_sec: 600.0,
                    errors: 3,
                    write_gap: Some(Duration::from_millis(2500)),
                },
            ]
        );
    }

    #[tokio::test]
    async fn sampler_shows_nothing_before_a_run_without_prefill() {
        let shared = Arc::new(Shared::new(config("x".into()), 1, 2));
        let mut calls = 0;
        let mut observer = |_: &Progress| calls += 1;
        let mut sampler = Sampler {
            shared,
            interval: tokio::time::interval(PROGRESS_INTERVAL),
            observer: &mut observer,
            began: Instant::now(),
            previous: None,
        };
        sampler.sample(Instant::now() + Duration::from_secs(1));
        drop(sampler);
        assert_eq!(calls, 0);
    }

    #[tokio::test]
    async fn run_with_progress_reports_while_running() {
        let server = FakeServer::start().await;
        let cfg = BenchConfig {
            stop: Stop::Duration(Duration::from_millis(400)),
            ..config(server.addr())
        };
        let mut seen = Vec::new();
        let mut observer = |p: &Progress| seen.push(*p);
        let report = run_with_progress(cfg, Duration::from_millis(1), &mut observer)
            .await
            .unwrap();
        // Not a timing assertion: the run cannot end before its deadline,
        // hundreds of sampling periods after it began.
        assert!(!seen.is_empty());
        for pair in seen.windows(2) {
            assert!(pair[0].done <= pair[1].done, "{pair:?}");
            assert!(pair[0].elapsed <= pair[1].elapsed, "{pair:?}");
        }
        for p in &seen {
            assert_eq!(p.phase, Phase::Run);
            assert_eq!(p.errors, 0);
            assert!(p.write_gap.is_some());
        }
        // Sampling stops once every request is answered.
        let last = seen.last().unwrap();
        assert!(last.done <= report.sets + report.gets, "{last:?}");
    }

    #[tokio::test]
    async fn unreachable_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(matches!(
            run(config(addr)).await,
            Err(BenchError::Unreachable { .. })
        ));
    }
}
