//! What a simulated run logged, as the product logs it: a hash of every
//! event (for the determinism check: one seed, one hash) and the
//! promotions the replicas announced (for the one-leader-per-epoch
//! invariant), each tagged with the simulated host that logged it.
//!
//! turmoil runs each host's tick inside a span named `node` with a `name`
//! field; the layer reads the host from there.

use std::collections::hash_map::DefaultHasher;
use std::fmt::{self, Write as _};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use semikv_protocol::sync::lock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A replica's announcement that the balancer made it leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The host that logged it (`r2`).
    pub host: String,
    /// The epoch, as logged (`3.0000…`).
    pub epoch: String,
    /// Simulated milliseconds since the start.
    pub at_ms: u128,
}

/// What the layer gathered; shared with the harness.
#[derive(Debug, Default)]
pub struct Trace {
    hasher: Hasher64,
    /// Events hashed.
    pub events: u64,
    /// Every promotion to leader, in log order.
    pub promotions: Vec<Promotion>,
    /// The last lines logged at warn or above, for a failure's report.
    pub warnings: Vec<String>,
    /// Every event hashed, as text, when the recorder keeps them (to find
    /// where two runs of one seed part).
    pub lines: Option<Vec<String>>,
}

thread_local! {
    /// The simulation's time as the driver last saw it: events logged
    /// outside any host (a crash, a bounce) happen then.
    static DRIVER_TIME: std::cell::Cell<std::time::Duration> = const {
        std::cell::Cell::new(std::time::Duration::ZERO)
    };
}

/// The simulation's time as the driver last set it.
pub fn driver_time() -> std::time::Duration {
    DRIVER_TIME.with(std::cell::Cell::get)
}

/// Tells the layer the simulation's time, for events logged between steps.
pub fn set_driver_time(elapsed: std::time::Duration) {
    DRIVER_TIME.with(|t| t.set(elapsed));
}

/// Warnings kept for a report.
const WARNINGS_KEPT: usize = 200;

impl Trace {
    /// The hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.hasher.0.finish()
    }
}

#[derive(Debug, Default)]
struct Hasher64(DefaultHasher);

/// The layer; install it with the harness's subscriber for one run.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    trace: Arc<Mutex<Trace>>,
}

impl Recorder {
    /// A recorder with an empty trace; `keep_lines`: keep every event's
    /// text too ([`Trace::lines`]).
    pub fn new(keep_lines: bool) -> Recorder {
        let recorder = Recorder::default();
        if keep_lines {
            lock(&recorder.trace).lines = Some(Vec::new());
        }
        recorder
    }

    /// The trace gathered so far.
    pub fn trace(&self) -> Arc<Mutex<Trace>> {
        self.trace.clone()
    }
}

/// The host name a `node` span carries, kept in its extensions.
struct NodeName(String);

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "node" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(span), Some(name)) = (ctx.span(id), fields.get("name")) {
            span.extensions_mut().insert(NodeName(name.to_string()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let host = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .from_root()
                    .find_map(|span| span.extensions().get::<NodeName>().map(|n| n.0.clone()))
            })
            .unwrap_or_default();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let at = turmoil::sim_elapsed().unwrap_or_else(|| DRIVER_TIME.with(std::cell::Cell::get));
        let meta = event.metadata();
        let mut trace = lock(&self.trace);
        let h = &mut trace.hasher.0;
        h.write_u128(at.as_nanos());
        h.write(host.as_bytes());
        h.write(meta.target().as_bytes());
        h.write(meta.level().as_str().as_bytes());
        h.write(fields.text.as_bytes());
        trace.events += 1;
        if let Some(lines) = trace.lines.as_mut() {
            lines.push(format!(
                "{:>9}us {host} {} {} {}",
                at.as_micros(),
                meta.level(),
                meta.target(),
                fields.text
            ));
        }
        if fields.get("message") == Some("role changed by the balancer")
            && fields.get("role") == Some("leader")
        {
            let epoch = fields.get("epoch").unwrap_or_default().to_string();
            trace.promotions.push(Promotion {
                host: host.clone(),
                epoch,
                at_ms: at.as_millis(),
            });
        }
        if *meta.level() <= tracing::Level::WARN && !meta.target().starts_with("turmoil") {
            let line = format!(
                "{:>6}ms {host} {} {}",
                at.as_millis(),
                meta.level(),
                fields.text
            );
            if trace.warnings.len() == WARNINGS_KEPT {
                trace.warnings.remove(0);
            }
            trace.warnings.push(line);
        }
    }
}

/// An event's or span's fields as `name=value` text, values kept for a
/// few look-ups.
#[derive(Default)]
struct Fields {
    text: String,
    pairs: Vec<(&'static str, String)>,
}

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.text, "{}={value} ", field.name());
        self.pairs.push((field.name(), value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        let _ = write!(self.text, "{}={value} ", field.name());
        self.pairs.push((field.name(), value));
    }
}
