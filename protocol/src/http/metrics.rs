//! The pieces of a Prometheus `/metrics` page: a lock-free histogram with
//! fixed buckets for the hot paths, and [`Page`], which writes families of
//! counters, gauges and histograms under their labels through the
//! `prometheus-client` encoder (names get its suffixes: `_total` on
//! counters, the unit on the rest).
//!
//! Processes collect at scrape time: their [`Collector`]s read atomics and
//! state they keep anyway, so a scrape costs the hot path nothing but the
//! cache lines it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of what [`render`] returns: Prometheus text 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds, in seconds, of the latency histograms' buckets: from a
/// tenth of a millisecond (a pipelined read) to five seconds (past every
/// timeout a request has).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds of size-like histograms (e.g. writes per fsync): powers of
/// four to a million.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];

/// A histogram of fixed buckets whose observations are a few relaxed
/// atomic adds: no lock, whatever the number of threads observing.
/// Its buckets are counted apart; the encoder makes them cumulative.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Ticks per unit of the bounds: 1e9 for seconds (nanoseconds), 1 for
    /// counts, so that the sum of a count histogram does not wrap.
    scale: f64,
    /// Each bound in ticks, for the search.
    ticks: Box<[u64]>,
    /// Observations per bucket; the last is past every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    /// The sum of observations, in ticks.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram of seconds over `bounds` (ascending), summed in
    /// nanoseconds (584 years before the sum wraps).
    pub fn seconds(bounds: &'static [f64]) -> Histogram {
        Histogram::scaled(bounds, 1e9)
    }

    /// An empty histogram of whole counts over `bounds` (ascending).
    pub fn counts(bounds: &'static [f64]) -> Histogram {
        Histogram::scaled(bounds, 1.0)
    }

    fn scaled(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            scale,
            ticks: bounds.iter().map(|b| to_ticks(*b, scale)).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram ([`LATENCY_BUCKETS`]).
    pub fn latency() -> Histogram {
        Histogram::seconds(LATENCY_BUCKETS)
    }

    /// Observes a duration (a histogram of seconds).
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// Observes a value in the bounds' unit.
    pub fn observe(&self, value: f64) {
        self.observe_ticks(to_ticks(value, self.scale));
    }

    fn observe_ticks(&self, ticks: u64) {
        let bucket = self.ticks.partition_point(|bound| *bound < ticks);
        if let Some(count) = self.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(ticks, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum, the count and each bucket's own count (`+Inf` last; not
    /// cumulative: the encoder sums them), read bucket by bucket, so the
    /// count is always the buckets' total even while others observe.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, count) in self.buckets.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            out.push((bound, count));
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        (sum, total, out)
    }
}

fn to_ticks(value: f64, scale: f64) -> u64 {
    // `as` saturates: negative is 0, too large is u64::MAX.
    (value * scale).round() as u64
}

/// One metric family's samples as a collector writes them.
#[derive(Debug)]
pub enum Samples<'a> {
    /// A counter's value per label set.
    Counter(Vec<(Labels<'a>, u64)>),
    /// A gauge's value per label set.
    Gauge(Vec<(Labels<'a>, f64)>),
    /// A histogram per label set.
    Histogram(Vec<(Labels<'a>, &'a Histogram)>),
}

/// A sample's labels: pairs of name and value.
pub type Labels<'a> = Vec<(&'static str, std::borrow::Cow<'a, str>)>;

/// Writes metric families into a scrape, through `prometheus-client`'s
/// encoder.
#[derive(Debug)]
pub struct Page<'e, 'f> {
    encoder: &'e mut DescriptorEncoder<'f>,
}

impl<'e, 'f> Page<'e, 'f> {
    /// A page writing into `encoder`.
    pub fn new(encoder: &'e mut DescriptorEncoder<'f>) -> Self {
        Page { encoder }
    }

    /// Writes one family: `name` (without the suffixes the encoder adds),
    /// its `help`, its `unit` and its samples. A family with no sample is
    /// left out.
    ///
    /// # Errors
    /// The encoder's (formatting) error.
    pub fn family(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: Samples<'_>,
    ) -> Result<(), std::fmt::Error> {
        let kind = match &samples {
            Samples::Counter(v) if v.is_empty() => return Ok(()),
            Samples::Gauge(v) if v.is_empty() => return Ok(()),
            Samples::Histogram(v) if v.is_empty() => return Ok(()),
            Samples::Counter(_) => MetricType::Counter,
            Samples::Gauge(_) => MetricType::Gauge,
            Samples::Histogram(_) => MetricType::Histogram,
        };
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        match samples {
            Samples::Counter(values) => {
                for (labels, value) in values {
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
                }
            }
            Samples::Gauge(values) => {
                for (labels, value) in values {
                    metric.encode_family(&labels)?.encode_gauge(&value)?;
                }
            }
            Samples::Histogram(values) => {
                for (labels, histogram) in values {
                    let (sum, count, buckets) = histogram.snapshot();
                    metric
                        .encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
        }
        Ok(())
    }

    /// A gauge with no labels.
    ///
    /// # Errors
    /// As [`Self::family`].
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
        self.family(name, help, None, Samples::Gauge(vec![(Vec::new(), value)]))
    }

    /// A counter with no labels.
    ///
    /// # Errors
    /// As [`Self::family`].
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        self.family(
            name,
            help,
            None,
            Samples::Counter(vec![(Vec::new(), value)]),
        )
    }
}

/// A [`Collector`] from a closure that writes a [`Page`].
pub struct FnCollector<F>(pub F);

impl<F> std::fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut Page<'_, '_>) -> Result<(), std::fmt::Error> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        (self.0)(&mut Page::new(&mut encoder))
    }
}

/// A registry whose whole page `collect` writes at each scrape.
pub fn registry<F>(collect: F) -> Registry
where
    F: Fn(&mut Page<'_, '_>) -> Result<(), std::fmt::Error> + Send + Sync + 'static,
{
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FnCollector(collect)));
    registry
}

/// The registry's page in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut page = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::prometheus_text::encode(&mut page, registry).is_err() {
        // Writing into a String does not fail; a collector's own error
        // leaves what it wrote so far, which Prometheus reads as such.
        tracing::warn!("a metrics collector failed; the page is partial");
    }
    page
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_that_holds_it() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_micros(100));
        h.observe_duration(Duration::from_micros(101));
        h.observe_duration(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[1], (0.00025, 1));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 1));
        assert!((sum - 60.000201).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn a_page_has_suffixes_labels_and_types() {
        let h = std::sync::Arc::new(Histogram::counts(COUNT_BUCKETS));
        h.observe(3.0);
        let seen = h.clone();
        let registry = registry(move |page| {
            page.counter("semikv_things", "Things.", 7)?;
            page.family(
                "semikv_op_latency",
                "Latency.",
                Some(Unit::Seconds),
                Samples::Histogram(vec![(vec![("op", "get".into())], &*seen)]),
            )?;
            page.family("semikv_empty", "None.", None, Samples::Gauge(Vec::new()))
        });
        let text = render(&registry);
        assert!(
            text.contains("# TYPE semikv_things_total counter\nsemikv_things_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("semikv_op_latency_seconds_bucket{op=\"get\",le=\"1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("semikv_op_latency_seconds_bucket{op=\"get\",le=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("semikv_op_latency_seconds_bucket{op=\"get\",le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("semikv_op_latency_seconds_count{op=\"get\"} 1"),
            "{text}"
        );
        assert!(!text.contains("semikv_empty"), "{text}");
    }
}
