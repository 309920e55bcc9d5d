//! One run from start to end: probe, drivers, prefill, start line, results into a [`Report`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use semikv_client::Client;
use tokio::sync::{watch, Barrier};
use tokio::time::Instant;

use super::config::{BenchConfig, BenchError, Stop};
use super::driver;
use super::model::Rng;
use super::progress::{sampled, ConnCounts, Observer, Progress, Sampler};
use super::report::{merge_latencies, micros, Latencies, LongestGap, Report, Tally};

/// Which part of a run: the prefill or the measured run (and which one a
/// [`Progress`] sample describes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `prefill` writing every key once before the measured run.
    Prefill,
    /// The measured run.
    Run,
}

/// The state of one run that its connections, its sampler and `run` share.
pub(super) struct RunState {
    pub(super) config: BenchConfig,
    pub(super) run_id: u64,
    issued: AtomicU64,
    /// Each client connection's live counts, by client number.
    pub(super) counts: Box<[ConnCounts]>,
    /// When the measured run began (after any prefill).
    pub(super) start: OnceLock<Instant>,
    /// When a `--duration` run ends; unset until it begins.
    deadline: OnceLock<Instant>,
    /// Gaps between successes of any kind.
    any_gap: LongestGap,
    /// Gaps between successful writes.
    pub(super) write_gap: LongestGap,
    /// Every connection and `run` meet here once prefill is done.
    pub(super) prefilled: Barrier,
    /// Flips to true once `start` is set: the measured run begins.
    pub(super) go: watch::Sender<bool>,
}

impl RunState {
    pub(super) fn new(config: BenchConfig, run_id: u64, clients: usize) -> RunState {
        RunState {
            config,
            run_id,
            issued: AtomicU64::new(0),
            counts: (0..clients).map(|_| ConnCounts::default()).collect(),
            start: OnceLock::new(),
            deadline: OnceLock::new(),
            any_gap: LongestGap::default(),
            write_gap: LongestGap::default(),
            prefilled: Barrier::new(clients + 1),
            go: watch::channel(false).0,
        }
    }

    /// Claims the next request, or `false` when the run is over.
    pub(super) fn claim(&self) -> bool {
        self.claim_at(Instant::now())
    }

    /// Claims the next request as of `now` (a caller sending a batch reads
    /// the clock once for all of it), or `false` when the run is over.
    pub(super) fn claim_at(&self, now: Instant) -> bool {
        match self.config.stop {
            Stop::Requests(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Stop::Duration(_) => self.deadline.get().is_none_or(|d| now < *d),
        }
    }

    /// Records a success. Lock-free: with hundreds of lanes a mutex here
    /// showed up as contention.
    pub(super) fn succeeded(&self, write: bool, at: Instant) {
        let start = self.start.get().copied().unwrap_or(at);
        let now = micros(at.saturating_duration_since(start));
        self.any_gap.record(now);
        if write {
            self.write_gap.record(now);
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
    let shared = Arc::new(RunState::new(config, run_id, clients));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..shared.config.clients {
        tasks.spawn(driver::Driver::new(shared.clone(), client).run());
    }
    let mut sampler =
        observer.map(|(period, observer)| Sampler::new(shared.clone(), period, observer));
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
                Ok((tally, connection_latencies)) => {
                    total.merge(tally);
                    merge_latencies(&mut latencies, connection_latencies);
                }
                Err(e) => total.count_failure(&format!("client crashed: {e}")),
            }
        }
        (total, latencies)
    };
    let (total, latencies) = sampled(collect, &mut sampler).await;
    let elapsed = start.elapsed();
    let elapsed_us = micros(elapsed);
    let longest_gap = shared.any_gap.longest(elapsed_us);
    // Only meaningful when the run writes at all.
    let longest_write_gap = if shared.config.set_weight == 0 {
        Duration::ZERO
    } else {
        shared.write_gap.longest(elapsed_us)
    };
    Ok(Report::new(
        elapsed,
        total,
        latencies,
        longest_gap,
        longest_write_gap,
        shared.config.seed,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
