//! Log lines a peer can provoke at will (failed authentication, refused
//! roles), said at most once per period with a count of those held back,
//! so that a flood of bad peers cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock: the simulated one under a paused runtime, std's otherwise.
use tokio::time::Instant;

/// A shared gate for one kind of log line.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl LogThrottle {
    /// A gate that opens at most once per `every`.
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one said)` when this line may be said
    /// now; `None` (and it is counted) otherwise.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = crate::sync::lock(&self.last);
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_once_per_period_and_counts_what_it_held() {
        let gate = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(gate.admit(), Some(0));
        assert_eq!(gate.admit(), None);
        assert_eq!(gate.admit(), None);
        let open = LogThrottle::new(Duration::ZERO);
        assert_eq!(open.admit(), Some(0));
        assert_eq!(open.admit(), Some(0));
    }
}
