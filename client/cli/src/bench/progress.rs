//! The live progress line: per-connection counts, the sampler that sums them, the line drawn.
//!
//! Every connection publishes its own totals on its own cache line (plain
//! stores by the one task that owns it: no shared counter for requests to
//! contend on); [`run_with_progress`](super::run_with_progress) sums them a
//! few times a second and hands a [`Progress`] sample to its caller, and
//! [`progress_line`] renders a sample as one terminal line of at most
//! [`MAX_PROGRESS_WIDTH`] columns.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::config::Stop;
use super::report::{micros, millis, Tally};
use super::run::{Phase, RunState};

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
            format!("write gap {:.0} ms", millis(gap))
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
pub(super) struct ConnCounts {
    prefill_ok: AtomicU64,
    prefill_failed: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ConnCounts {
    /// Publishes `tally`'s totals as the connection's counts for `phase`.
    pub(super) fn publish(&self, phase: Phase, tally: &Tally) {
        let (ok, failed) = self.counters(phase);
        ok.store(tally.ok, Ordering::Relaxed);
        failed.store(tally.failed, Ordering::Relaxed);
    }

    /// The connection's (successful, failed) counts for `phase`.
    fn load(&self, phase: Phase) -> (u64, u64) {
        let (ok, failed) = self.counters(phase);
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// The (successful, failed) counters of `phase`.
    fn counters(&self, phase: Phase) -> (&AtomicU64, &AtomicU64) {
        match phase {
            Phase::Prefill => (&self.prefill_ok, &self.prefill_failed),
            Phase::Run => (&self.ok, &self.failed),
        }
    }
}

/// What [`run_with_progress`](super::run_with_progress) hands its samples to.
pub(super) type Observer<'a> = &'a mut (dyn FnMut(&Progress) + Send);

/// Samples the connections' counts on every tick of its interval and hands the
/// result to the observer.
pub(super) struct Sampler<'a> {
    shared: Arc<RunState>,
    interval: tokio::time::Interval,
    observer: Observer<'a>,
    /// When the prefill began (when the connections were started).
    began: Instant,
    /// The phase, successful count and time of the previous sample, for the
    /// current rate.
    previous: Option<(Phase, u64, Instant)>,
}

impl<'a> Sampler<'a> {
    /// A sampler of the run `shared`, just started, that hands `observer` a
    /// sample every `period` (at least 1 ms).
    pub(super) fn new(shared: Arc<RunState>, period: Duration, observer: Observer<'a>) -> Self {
        // A zero period would make tokio panic.
        let period = period.max(Duration::from_millis(1));
        let began = Instant::now();
        let mut interval = tokio::time::interval_at(began + period, period);
        // After a stall, one late sample beats a burst of catch-up redraws.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Sampler {
            shared,
            interval,
            observer,
            began,
            previous: None,
        }
    }

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
        let write_gap = (phase == Phase::Run && config.set_weight > 0)
            .then(|| self.shared.write_gap.longest(micros(elapsed)));
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
pub(super) async fn sampled<T>(
    future: impl Future<Output = T>,
    sampler: &mut Option<Sampler<'_>>,
) -> T {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
