//! Histories for the checkers' tests, built on a millisecond timeline: each
//! operation its own client, so only real time orders them.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Action, Event, Outcome};

/// A history under construction.
pub(crate) struct Timeline {
    t0: Instant,
    /// The operations so far, in the order added.
    pub(crate) events: Vec<Event>,
}

impl Timeline {
    pub(crate) fn new() -> Timeline {
        Timeline {
            t0: Instant::now(),
            events: Vec::new(),
        }
    }

    /// Adds an operation from `start` to `end` ms and returns its index.
    pub(crate) fn op(
        &mut self,
        key: &str,
        action: Action,
        start: u64,
        end: u64,
        outcome: Outcome,
    ) -> usize {
        self.events.push(Event {
            client: self.events.len(),
            key: b(key),
            action,
            start: self.t0 + Duration::from_millis(start),
            end: self.t0 + Duration::from_millis(end),
            outcome,
            detail: String::new(),
        });
        self.events.len() - 1
    }

    pub(crate) fn set(
        &mut self,
        key: &str,
        v: &str,
        start: u64,
        end: u64,
        outcome: Outcome,
    ) -> usize {
        self.op(key, Action::Set(b(v)), start, end, outcome)
    }

    pub(crate) fn del(&mut self, key: &str, start: u64, end: u64, outcome: Outcome) -> usize {
        self.op(key, Action::Delete, start, end, outcome)
    }

    /// An acknowledged read that returned `v`.
    pub(crate) fn get(&mut self, key: &str, v: Option<&str>, start: u64, end: u64) -> usize {
        self.op(key, Action::Get(v.map(b)), start, end, Outcome::Ok)
    }
}

/// `s` as bytes.
pub(crate) fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}
