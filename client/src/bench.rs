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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use semikv_protocol::{ErrorReply, Op, Reply};
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier};
use tokio::time::Instant;

use crate::conn::{Client, ClientConfig, ClientError};

/// Highest latency the histograms hold, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;
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

/// One key as a lane knows it. `None` stands for "no value".
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyState {
    /// The values a fresh read may return.
    latest: Vec<Option<u64>>,
    /// Every value the key may have held, oldest first.
    history: Vec<Option<u64>>,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            latest: vec![None],
            history: vec![None],
        }
    }
}

/// One lane's knowledge of its keys.
#[derive(Debug, Default)]
pub struct Model {
    keys: BTreeMap<u64, KeyState>,
}

impl Model {
    /// A write of value `seq` to `key` was acknowledged.
    pub fn written(&mut self, key: u64, seq: u64) {
        let state = self.keys.entry(key).or_default();
        state.latest = vec![Some(seq)];
        state.history.push(Some(seq));
    }

    /// A write of `seq` to `key` may or may not have happened.
    pub fn maybe_written(&mut self, key: u64, seq: u64) {
        let state = self.keys.entry(key).or_default();
        state.latest.push(Some(seq));
        state.history.push(Some(seq));
    }

    /// Judges a read of `key` that returned `got`. A fresh answer settles the
    /// key's value.
    pub fn read(&mut self, key: u64, got: Option<u64>) -> ReadCheck {
        let state = self.keys.entry(key).or_default();
        if let Some(pos) = state.latest.iter().position(|v| *v == got) {
            // `latest` is in write order: writes after `got` whose outcome is
            // unknown may still land, the ones before it are now history.
            state.latest.drain(..pos);
            ReadCheck::Fresh
        } else if state.history.contains(&got) {
            ReadCheck::Stale
        } else {
            ReadCheck::Wrong
        }
    }
}

/// The bytes of value `seq` of `client`: a parseable tag padded to `size`.
pub fn make_value(client: u32, seq: u64, size: usize) -> Bytes {
    let mut v = format!("{client}:{seq}:").into_bytes();
    v.resize(size.max(v.len()), b'x');
    Bytes::from(v)
}

/// The sequence number in a value written by `client`, if it is one.
pub fn parse_value(client: u32, value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value.get(..value.len().min(32))?).ok()?;
    let mut parts = text.splitn(3, ':');
    let owner: u32 = parts.next()?.parse().ok()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    parts.next()?;
    (owner == client).then_some(seq)
}

/// Results of one lane, merged into the [`Report`].
struct Tally {
    sets: Option<Histogram<u64>>,
    gets: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    wrong_values: u64,
    stale_reads: u64,
    examples: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sets: None,
            gets: None,
            errors: BTreeMap::new(),
            wrong_values: 0,
            stale_reads: 0,
            examples: Vec::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: addition cannot fail.
        merge_histogram(&mut self.sets, other.sets);
        merge_histogram(&mut self.gets, other.gets);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
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

/// Shared run state.
struct Shared {
    config: BenchConfig,
    run_id: u64,
    issued: AtomicU64,
    /// When the measured run began (after any prefill).
    start: OnceLock<Instant>,
    /// When a `--duration` run ends; unset until it begins.
    deadline: OnceLock<Instant>,
    /// Gaps between successes of any kind.
    any_gap: Gap,
    /// Gaps between successful writes.
    write_gap: Gap,
    /// Every lane and `run` meet here once prefill is done.
    prefilled: Barrier,
    /// Flips to true once `start` is set: the measured run begins.
    go: watch::Sender<bool>,
}

impl Shared {
    /// Claims the next request, or `false` when the run is over.
    fn claim(&self) -> bool {
        match self.config.stop {
            Stop::Requests(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Stop::Duration(_) => self.deadline.get().is_none_or(|d| Instant::now() < *d),
        }
    }

    fn micros_since_start(&self) -> u64 {
        let start = self.start.get().copied().unwrap_or_else(Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a success. Lock-free: with hundreds of lanes a mutex here
    /// showed up as contention.
    fn succeeded(&self, write: bool) {
        let now = self.micros_since_start();
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
    fn record(&self, now_us: u64) {
        let previous = self.last_us.fetch_max(now_us, Ordering::Relaxed);
        self.longest_us
            .fetch_max(now_us.saturating_sub(previous), Ordering::Relaxed);
    }

    /// The longest gap of a run that lasted `elapsed_us`: one that ends in an
    /// outage has its gap at the end.
    fn longest(&self, elapsed_us: u64) -> Duration {
        let tail = elapsed_us.saturating_sub(self.last_us.load(Ordering::Relaxed));
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed).max(tail))
    }
}

/// One client's connection, re-opened by whichever lane notices it is gone.
struct Connection {
    addr: String,
    config: ClientConfig,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Connection {
    async fn get(&self, shared: &Shared) -> Option<Client> {
        let mut slot = self.client.lock().await;
        let mut backoff = Duration::from_millis(20);
        loop {
            if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
                return Some(c.clone());
            }
            match Client::connect(&self.addr, &self.config).await {
                Ok(c) => *slot = Some(c),
                Err(_) => {
                    if matches!(shared.config.stop, Stop::Duration(_)) && !shared.claim() {
                        return None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                }
            }
        }
    }
}

/// Runs the benchmark.
///
/// # Errors
/// [`BenchError::Invalid`] for bad settings, [`BenchError::Unreachable`]
/// when the first connection fails. Failures during the run are counted in
/// the report, not returned.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    config.validate()?;
    // Probe once so that a wrong address is an error, not a report of errors.
    Client::connect(&config.addr, &config.client)
        .await
        .map_err(|error| BenchError::Unreachable {
            addr: config.addr.clone(),
            error,
        })?;
    let run_id = Rng::new(config.seed ^ u64::from(std::process::id())).next_u64() & 0xff_ffff;
    let lanes = usize::try_from(u64::from(config.clients) * u64::from(config.pipeline))
        .map_err(|_| BenchError::Invalid("too many lanes".to_string()))?;
    let shared = Arc::new(Shared {
        config,
        run_id,
        issued: AtomicU64::new(0),
        start: OnceLock::new(),
        deadline: OnceLock::new(),
        any_gap: Gap::default(),
        write_gap: Gap::default(),
        prefilled: Barrier::new(lanes + 1),
        go: watch::channel(false).0,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..shared.config.clients {
        let connection = Arc::new(Connection {
            addr: shared.config.addr.clone(),
            config: shared.config.client.clone(),
            client: tokio::sync::Mutex::new(None),
        });
        for lane in 0..shared.config.pipeline {
            tasks.spawn(run_lane(shared.clone(), connection.clone(), client, lane));
        }
    }
    shared.prefilled.wait().await;
    let start = Instant::now();
    let _ = shared.start.set(start);
    if let Stop::Duration(d) = shared.config.stop {
        let _ = shared.deadline.set(start + d);
    }
    shared.go.send_replace(true);
    let mut total = Tally::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => total.merge(tally),
            Err(e) => {
                *total
                    .errors
                    .entry(format!("lane crashed: {e}"))
                    .or_default() += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let longest_gap = shared.any_gap.longest(elapsed_us);
    // Only meaningful when the run writes at all.
    let longest_write_gap = if shared.config.set_weight == 0 {
        Duration::ZERO
    } else {
        shared.write_gap.longest(elapsed_us)
    };
    let sets = total.sets.unwrap_or_else(histogram);
    let gets = total.gets.unwrap_or_else(histogram);
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

/// One lane's fixed view of the run: its keys and its client id.
struct Lane {
    client: u32,
    /// The lane's keys, by lane-local number (the key is `lane + pipeline * i`);
    /// built once so a request costs no formatting.
    keys: Vec<Bytes>,
    pipeline: u64,
    lane: u64,
}

impl Lane {
    fn key_number(&self, i: u64) -> u64 {
        self.lane + self.pipeline * i
    }
}

async fn run_lane(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    client: u32,
    lane: u32,
) -> Tally {
    let config = &shared.config;
    let mut tally = Tally::new();
    let mut model = Model::default();
    let mut rng = Rng::new(
        config.seed
            ^ (u64::from(client) << 32 | u64::from(lane)).wrapping_mul(0x2545_f491_4f6c_dd1d),
    );
    let pipeline = u64::from(config.pipeline);
    let lane_keys = (config.keyspace - u64::from(lane)).div_ceil(pipeline);
    let this = Lane {
        client,
        keys: (0..lane_keys)
            .map(|i| {
                let k = u64::from(lane) + pipeline * i;
                Bytes::from(format!("bench-{:06x}-{client}-{k}", shared.run_id))
            })
            .collect(),
        pipeline,
        lane: u64::from(lane),
    };
    let weight = u64::from(config.set_weight) + u64::from(config.get_weight);
    let mut seq = 0u64;
    // The lane's own handle on the connection: going through the shared slot
    // (an async mutex) on every request cost more than the request.
    let mut conn: Option<Client> = None;
    if config.prefill {
        // Untimed and uncounted, but modelled, so later reads are checked.
        let mut scratch = Tally::new();
        for i in 0..lane_keys {
            seq += 1;
            issue(
                &shared,
                &connection,
                &mut conn,
                &this,
                &mut model,
                &mut scratch,
                i,
                Some(seq),
                false,
            )
            .await;
        }
    }
    shared.prefilled.wait().await;
    let _ = shared.go.subscribe().wait_for(|go| *go).await;
    while shared.claim() {
        let i = rng.below(lane_keys);
        let is_set = rng.below(weight) < u64::from(config.set_weight);
        let value = is_set.then(|| {
            seq += 1;
            seq
        });
        if !issue(
            &shared,
            &connection,
            &mut conn,
            &this,
            &mut model,
            &mut tally,
            i,
            value,
            true,
        )
        .await
        {
            break;
        }
    }
    tally
}

/// Sends one request for the lane's key `i` — a set of value `set` when
/// given, a get otherwise — and judges and records the answer. `false` when
/// the run ended while waiting for a connection.
#[allow(clippy::too_many_arguments)]
async fn issue(
    shared: &Shared,
    connection: &Connection,
    conn: &mut Option<Client>,
    lane: &Lane,
    model: &mut Model,
    tally: &mut Tally,
    i: u64,
    set: Option<u64>,
    timed: bool,
) -> bool {
    let config = &shared.config;
    let client = lane.client;
    let c = match conn {
        Some(c) => c,
        None => match connection.get(shared).await {
            Some(c) => conn.insert(c),
            None => return false,
        },
    };
    let k = lane.key_number(i);
    let key = lane.keys.get(i as usize).cloned().unwrap_or_default();
    let is_set = set.is_some();
    let op = match set {
        Some(seq) => Op::Set {
            key,
            value: make_value(client, seq, config.value_size),
        },
        None => Op::Get { key },
    };
    let started = Instant::now();
    let result = match c.request(op).await {
        Ok(Reply::Error(e)) => Err(ClientError::Server(e)),
        other => other,
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(Reply::Written { .. }) if is_set => {
            model.written(k, set.unwrap_or_default());
            record(&mut tally.sets, micros);
            if timed {
                shared.succeeded(true);
            }
        }
        Ok(Reply::Value(value)) if !is_set => {
            record(&mut tally.gets, micros);
            if timed {
                shared.succeeded(false);
            }
            let got = value.as_deref().map(|v| parse_value(client, v));
            let check = match got {
                None => model.read(k, None),
                Some(Some(s)) => model.read(k, Some(s)),
                // Not a value this client writes at all.
                Some(None) => ReadCheck::Wrong,
            };
            match check {
                ReadCheck::Fresh => {}
                ReadCheck::Stale => tally.stale_reads += 1,
                ReadCheck::Wrong => {
                    tally.wrong_values += 1;
                    if tally.examples.len() < MAX_EXAMPLES {
                        tally
                            .examples
                            .push(format!("client {client} key {k}: read {:?}", got.flatten()));
                    }
                }
            }
        }
        Ok(_) => {
            *tally
                .errors
                .entry("unexpected_reply".to_string())
                .or_default() += 1;
        }
        Err(e) => {
            if let (Some(seq), true) = (set, outcome_unknown(&e)) {
                model.maybe_written(k, seq);
            }
            if e.is_connection_error() {
                *conn = None;
            }
            *tally.errors.entry(error_kind(&e)).or_default() += 1;
            if let ClientError::Server(ErrorReply::Unavailable { retry_after_ms, .. }) = &e {
                // Honour the balancer's hint instead of hammering it.
                let wait = Duration::from_millis((*retry_after_ms).min(1000));
                tokio::time::sleep(wait).await;
            }
        }
    }
    true
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
        // Keys are independent.
        assert_eq!(m.read(2, Some(1)), Wrong);
    }

    #[test]
    fn values_carry_their_tag() {
        let v = make_value(7, 42, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(parse_value(7, &v), Some(42));
        assert_eq!(parse_value(8, &v), None);
        assert_eq!(parse_value(7, b"garbage"), None);
        assert_eq!(parse_value(7, b""), None);
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
