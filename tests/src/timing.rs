//! Failover figures from a recorded history (pure code over
//! [`checker::Event`](crate::checker::Event)s, no I/O): how soon after a
//! fault a write was acknowledged again, the longest stretch with no
//! acknowledged write, and the median, minimum and maximum of a figure over
//! many rounds.
//!
//! Only acknowledged writes count (`Set` or `Delete` with
//! [`Outcome::Ok`]); an acknowledgement's time is its event's `end`, when
//! the client heard it.

use std::fmt;
use std::time::{Duration, Instant};

use crate::checker::{Action, Event, Outcome};

/// Whether `event` is a write its client saw acknowledged.
pub fn is_acked_write(event: &Event) -> bool {
    event.outcome == Outcome::Ok && !matches!(event.action, Action::Get(_))
}

/// When the first write sent at or after `since` was acknowledged: the
/// earliest acknowledgement among the writes sent once a fault was certain.
/// Writes sent earlier do not count: a leader may acknowledge those until the
/// fault lands.
pub fn first_ack_sent_from<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    since: Instant,
) -> Option<Instant> {
    events
        .into_iter()
        .filter(|e| is_acked_write(e) && e.start >= since)
        .map(|e| e.end)
        .min()
}

/// The longest window inside `(from, to]` during which no write was
/// acknowledged. The first window opens at the last acknowledgement at or
/// before `from` (or at `from` if there was none), so a fault at `from` is
/// charged the time since writes last flowed; the last one closes at `to`.
/// Acknowledgements after `to` are ignored.
pub fn longest_gap<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    from: Instant,
    to: Instant,
) -> Duration {
    let mut acks: Vec<Instant> = events
        .into_iter()
        .filter(|e| is_acked_write(e) && e.end <= to)
        .map(|e| e.end)
        .collect();
    acks.sort_unstable();
    let mut last = acks
        .iter()
        .rev()
        .find(|&&t| t <= from)
        .copied()
        .unwrap_or(from);
    let mut gap = Duration::ZERO;
    for &t in acks.iter().filter(|&&t| t > from) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to.saturating_duration_since(last))
}

/// Median, minimum and maximum of one figure over several rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// The middle value (the mean of the two middle ones for an even count).
    pub median: Duration,
    /// The smallest value.
    pub min: Duration,
    /// The largest value.
    pub max: Duration,
}

impl Spread {
    /// The spread of `values`, `None` when there are none.
    pub fn of(values: &[Duration]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_unstable();
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// `median/min/max` in milliseconds with one decimal, e.g. `4.9/3.4/6.5`.
impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!(
            "{:.1}/{:.1}/{:.1}",
            ms(self.median),
            ms(self.min),
            ms(self.max)
        );
        // Padding and alignment apply to the whole figure.
        f.pad(&text)
    }
}

/// `d` in milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// A write on a millisecond timeline from `t0`.
    fn write(t0: Instant, start: u64, end: u64, outcome: Outcome) -> Event {
        Event {
            client: 0,
            key: Bytes::from_static(b"k"),
            action: Action::Set(Bytes::from_static(b"v")),
            start: t0 + Duration::from_millis(start),
            end: t0 + Duration::from_millis(end),
            outcome,
            detail: String::new(),
        }
    }

    const fn millis(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_ack_counts_only_writes_sent_after_the_fault() {
        let t0 = Instant::now();
        let events = [
            write(t0, 0, 30, Outcome::Ok), // sent before: the old leader's
            write(t0, 12, 25, Outcome::Failed),
            write(t0, 15, 40, Outcome::Ok),
            write(t0, 20, 35, Outcome::Ok),
        ];
        assert_eq!(
            first_ack_sent_from(&events, t0 + millis(10)),
            Some(t0 + millis(35))
        );
        assert_eq!(first_ack_sent_from(&events, t0 + millis(21)), None);
    }

    #[test]
    fn the_longest_gap_opens_at_the_last_ack_before_the_fault() {
        let t0 = Instant::now();
        let events = [
            write(t0, 0, 5, Outcome::Ok),
            write(t0, 5, 8, Outcome::Ok),
            // fault at 10
            write(t0, 8, 60, Outcome::Unknown),
            write(t0, 20, 50, Outcome::Ok),
            write(t0, 50, 55, Outcome::Ok),
            write(t0, 55, 200, Outcome::Ok), // after the window
        ];
        // 8 → 50 is 42 ms; 55 → the end at 100 is longer.
        assert_eq!(
            longest_gap(&events, t0 + millis(10), t0 + millis(100)),
            millis(45)
        );
        assert_eq!(
            longest_gap(&events, t0 + millis(10), t0 + millis(120)),
            millis(65)
        );
        // No ack at all: the whole window.
        assert_eq!(
            longest_gap(&[], t0 + millis(10), t0 + millis(30)),
            millis(20)
        );
    }

    #[test]
    fn a_spread_has_a_median_of_the_middle_values() {
        assert_eq!(Spread::of(&[]), None);
        let odd = Spread::of(&[millis(5), millis(1), millis(3)]).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max),
            (millis(3), millis(1), millis(5))
        );
        let even = Spread::of(&[millis(4), millis(1), millis(2), millis(9)]).unwrap();
        assert_eq!(even.median, Duration::from_micros(3000));
        assert_eq!(format!("{even:<12}|"), "3.0/1.0/9.0 |");
    }
}
