//! The wall clock key expiries are judged by: the system's, or one a test
//! or a simulation sets. Expiries are absolute Unix times, so replicas hide
//! a key at the same moment only as far as their clocks agree (see the
//! README's clock assumption).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use semikv_protocol::UnixMillis;

/// Where a replica reads the time of day. Cheap to clone.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System,
    Manual(Arc<AtomicU64>),
    Custom(Arc<dyn Fn() -> UnixMillis + Send + Sync>),
}

impl Clock {
    /// The operating system's clock (`SystemTime`).
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that stands at `at` until [`ManualClock::set`] or
    /// [`ManualClock::advance`] moves it: for tests.
    pub fn manual(at: UnixMillis) -> (Clock, ManualClock) {
        let now = Arc::new(AtomicU64::new(at.0));
        (Clock(Source::Manual(now.clone())), ManualClock(now))
    }

    /// A clock that asks `now` (a simulation derives it from its own time).
    pub fn from_fn(now: impl Fn() -> UnixMillis + Send + Sync + 'static) -> Clock {
        Clock(Source::Custom(Arc::new(now)))
    }

    /// The time now. A system clock set before 1970 reads as 0: every
    /// expiry then lies in the future, so nothing is hidden too early.
    pub fn now(&self) -> UnixMillis {
        match &self.0 {
            Source::System => UnixMillis(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            Source::Manual(now) => UnixMillis(now.load(Ordering::Relaxed)),
            Source::Custom(now) => now(),
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Source::System => "Clock::System",
            Source::Manual(_) => "Clock::Manual",
            Source::Custom(_) => "Clock::Custom",
        })
    }
}

/// The handle that moves a [`Clock::manual`].
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Sets the time.
    pub fn set(&self, at: UnixMillis) {
        self.0.store(at.0, Ordering::Relaxed);
    }

    /// Moves the time on by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}
