//! The history checker: decides whether a recorded workload history and the
//! cluster's final state are consistent with DESIGN.md's guarantees 1–3.
//!
//! Pure code over [`Event`]s; no I/O. What it proves, per key:
//!
//! - **No value from nowhere.** Every value a read returned was written by a
//!   `Set` of that key that was not reported failed-for-sure, and that had
//!   started before the read ended.
//! - **No lost acknowledged write.** Let *must-have* be every acknowledged
//!   write plus every write whose value some read returned (a read may only
//!   return a committed value, so such a write committed even if its client
//!   never heard back). The final value's writer `X` (a `Set` of that value;
//!   for an absent key the initial state or any delete not failed-for-sure)
//!   must be linearizable after every must-have write `W`: `X` must not have
//!   ended before `W` started. An unknown-outcome write may take effect at any
//!   time after it started (a `NotEnoughReplicas` write can commit later), so
//!   it counts as never ending.
//!   Violations are [`Violation::LostWrite`] when `W` was acknowledged and
//!   [`Violation::RolledBackRead`] when `W` was only observed by a read: that
//!   read saw a value a failover took back (guarantee 3).
//!
//! Limit: values carry no log index, so a rolled-back read is caught only
//! when no write that could follow it in real time reached the final state
//! (a later write to the same key masks it). Scenarios that hunt phantoms
//! therefore write their candidates to write-once keys.
//!
//! Not checked: staleness. Reads through the balancer may be served by a
//! follower that is behind (DESIGN allows it), and even a replica that leads
//! at an old epoch answers reads until it learns it was deposed, so reads are
//! not required to be linearizable (the per-key checks above hold for every
//! read, wherever it was served). Reads of an absent key are not checked:
//! absence cannot be attributed to one particular delete.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use bytes::Bytes;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `Set key value`.
    Set(Bytes),
    /// `Delete key`.
    Delete,
    /// `Get key`, with the value it returned (meaningful when the outcome is
    /// [`Outcome::Ok`]).
    Get(Option<Bytes>),
}

/// How an operation ended, from its client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (a write: `Written`; a read: a value).
    Ok,
    /// Definitely not applied (`NotLeader`, `Unavailable`, `Invalid`, or
    /// never sent).
    Failed,
    /// May or may not have applied (`Indeterminate`, `NotEnoughReplicas`,
    /// a timeout, the connection breaking mid-flight).
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Event {
    /// Which workload client ran it.
    pub client: usize,
    /// The key.
    pub key: Bytes,
    /// What it did.
    pub action: Action,
    /// Just before the request was sent.
    pub start: Instant,
    /// Just after the answer (or the failure) arrived.
    pub end: Instant,
    /// How it ended.
    pub outcome: Outcome,
    /// The reply or error, for reports.
    pub detail: String,
}

impl Event {
    fn is_write(&self) -> bool {
        !matches!(self.action, Action::Get(_))
    }

    /// When it last could have taken effect: never ends if unknown.
    fn effective_end(&self) -> Option<Instant> {
        match self.outcome {
            Outcome::Unknown => None,
            _ => Some(self.end),
        }
    }
}

/// A broken guarantee, naming the operations (indexes into the history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A read returned a value no `Set` of that key ever wrote.
    ReadOfUnwrittenValue {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The read.
        read: usize,
    },
    /// A read returned the value of a write reported failed-for-sure.
    ReadOfFailedWrite {
        /// The key.
        key: Bytes,
        /// The read.
        read: usize,
        /// The write.
        write: usize,
    },
    /// A read ended before the write of the value it returned started.
    ReadFromTheFuture {
        /// The key.
        key: Bytes,
        /// The read.
        read: usize,
        /// The write.
        write: usize,
    },
    /// The final state holds a value no `Set` of that key ever wrote.
    FinalValueUnwritten {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// The final state holds the value of a write reported failed-for-sure
    /// (a phantom).
    FinalValueOfFailedWrite {
        /// The key.
        key: Bytes,
        /// The write.
        write: usize,
    },
    /// An acknowledged write was lost: the final value was written by an
    /// operation that ended before it started.
    LostWrite {
        /// The key.
        key: Bytes,
        /// The acknowledged write.
        write: usize,
        /// The key's final value.
        final_value: Option<Bytes>,
    },
    /// A read returned a value that was later rolled back: its write is not
    /// in the final state and nothing that could have replaced it survived.
    RolledBackRead {
        /// The key.
        key: Bytes,
        /// The write whose value was read.
        write: usize,
        /// A read that returned it.
        read: usize,
        /// The key's final value.
        final_value: Option<Bytes>,
    },
}

/// The checker's verdict and the figures behind it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Operations in the history.
    pub ops: usize,
    /// Writes acknowledged.
    pub writes_acked: usize,
    /// Writes with an unknown outcome.
    pub writes_unknown: usize,
    /// Writes that failed for sure.
    pub writes_failed: usize,
    /// Reads that returned a value (or absence) and were checked.
    pub reads_checked: usize,
    /// Keys in the final state.
    pub keys: usize,
    /// Everything wrong, empty when the history is consistent.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether no guarantee was broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations with the operations they name, for a failure message.
    pub fn explain(&self, history: &[Event]) -> String {
        let mut out = format!("{self}\n");
        let show = |out: &mut String, what: &str, i: usize| {
            if let Some(e) = history.get(i) {
                out.push_str(&format!("    {what} #{i}: {e:?}\n"));
            }
        };
        for v in &self.violations {
            out.push_str(&format!("  {v:?}\n"));
            match v {
                Violation::ReadOfUnwrittenValue { read, .. } => show(&mut out, "read", *read),
                Violation::ReadOfFailedWrite { read, write, .. }
                | Violation::ReadFromTheFuture { read, write, .. }
                | Violation::RolledBackRead { read, write, .. } => {
                    show(&mut out, "read", *read);
                    show(&mut out, "write", *write);
                }
                Violation::FinalValueOfFailedWrite { write, .. }
                | Violation::LostWrite { write, .. } => show(&mut out, "write", *write),
                Violation::FinalValueUnwritten { .. } => {}
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ops={} writes_acked={} writes_unknown={} writes_failed={} reads_checked={} keys={} violations={}",
            self.ops,
            self.writes_acked,
            self.writes_unknown,
            self.writes_failed,
            self.reads_checked,
            self.keys,
            self.violations.len()
        )
    }
}

/// Checks `history` against `final_state`, the value of every key read back
/// once the cluster converged (a key missing from it counts as absent).
pub fn check(history: &[Event], final_state: &BTreeMap<Bytes, Option<Bytes>>) -> Report {
    let mut report = Report {
        ops: history.len(),
        keys: final_state.len(),
        ..Report::default()
    };
    let mut by_key: BTreeMap<&Bytes, Vec<usize>> = BTreeMap::new();
    for (i, e) in history.iter().enumerate() {
        by_key.entry(&e.key).or_default().push(i);
        if e.is_write() {
            match e.outcome {
                Outcome::Ok => report.writes_acked += 1,
                Outcome::Unknown => report.writes_unknown += 1,
                Outcome::Failed => report.writes_failed += 1,
            }
        } else if e.outcome == Outcome::Ok {
            report.reads_checked += 1;
        }
    }
    for (key, ops) in by_key {
        let final_value = final_state.get(key).cloned().flatten();
        check_key(history, key, &ops, final_value, &mut report.violations);
    }
    report
}

fn check_key(
    history: &[Event],
    key: &Bytes,
    ops: &[usize],
    final_value: Option<Bytes>,
    violations: &mut Vec<Violation>,
) {
    let mut setter: HashMap<&Bytes, usize> = HashMap::new();
    for &i in ops {
        if let Action::Set(v) = &history[i].action {
            setter.insert(v, i);
        }
    }
    // Writes that must be in the final state or superseded, and for each
    // observed one a read that saw it.
    let mut must_have: BTreeMap<usize, Option<usize>> = BTreeMap::new();
    for &i in ops {
        let e = &history[i];
        if e.is_write() && e.outcome == Outcome::Ok {
            must_have.insert(i, None);
        }
    }
    for &r in ops {
        let read = &history[r];
        let (Action::Get(Some(value)), Outcome::Ok) = (&read.action, read.outcome) else {
            continue;
        };
        let Some(&w) = setter.get(value) else {
            violations.push(Violation::ReadOfUnwrittenValue {
                key: key.clone(),
                value: value.clone(),
                read: r,
            });
            continue;
        };
        let write = &history[w];
        if write.outcome == Outcome::Failed {
            violations.push(Violation::ReadOfFailedWrite {
                key: key.clone(),
                read: r,
                write: w,
            });
        } else if read.end < write.start {
            violations.push(Violation::ReadFromTheFuture {
                key: key.clone(),
                read: r,
                write: w,
            });
        } else {
            must_have.entry(w).or_insert(Some(r));
        }
    }

    // Who may have written the final value; `None` stands for the initial
    // (absent) state, which precedes everything.
    let candidates: Vec<Option<usize>> = match &final_value {
        Some(v) => match setter.get(v) {
            None => {
                violations.push(Violation::FinalValueUnwritten {
                    key: key.clone(),
                    value: v.clone(),
                });
                return;
            }
            Some(&w) if history[w].outcome == Outcome::Failed => {
                violations.push(Violation::FinalValueOfFailedWrite {
                    key: key.clone(),
                    write: w,
                });
                return;
            }
            Some(&w) => vec![Some(w)],
        },
        None => std::iter::once(None)
            .chain(
                ops.iter()
                    .filter(|&&i| {
                        history[i].action == Action::Delete && history[i].outcome != Outcome::Failed
                    })
                    .map(|&i| Some(i)),
            )
            .collect(),
    };
    // "Ended before W started" only gets truer the earlier a candidate ends,
    // so the latest-ending candidate is the best explanation.
    let end_of = |c: &Option<usize>| -> (u8, Option<Instant>) {
        match c {
            None => (0, None),
            Some(i) => match history[*i].effective_end() {
                Some(t) => (1, Some(t)),
                None => (2, None),
            },
        }
    };
    let Some(best) = candidates.iter().max_by_key(|c| end_of(c)).copied() else {
        return;
    };
    for (&w, &seen_by) in &must_have {
        if best == Some(w) {
            continue;
        }
        let w_start = history[w].start;
        let precedes = match best {
            None => true,
            Some(x) => history[x].effective_end().is_some_and(|end| end < w_start),
        };
        // A must-have delete is also satisfied by any absent final state
        // (its own effect), which the candidate list covers via `best`.
        if precedes && !(final_value.is_none() && history[w].action == Action::Delete) {
            violations.push(match seen_by {
                Some(read) if history[w].outcome != Outcome::Ok => Violation::RolledBackRead {
                    key: key.clone(),
                    write: w,
                    read,
                    final_value: final_value.clone(),
                },
                _ => Violation::LostWrite {
                    key: key.clone(),
                    write: w,
                    final_value: final_value.clone(),
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Builds histories on a millisecond timeline.
    struct H {
        t0: Instant,
        events: Vec<Event>,
    }

    impl H {
        fn new() -> H {
            H {
                t0: Instant::now(),
                events: Vec::new(),
            }
        }

        fn op(&mut self, key: &str, action: Action, start: u64, end: u64, outcome: Outcome) {
            self.events.push(Event {
                client: 0,
                key: Bytes::from(key.to_string()),
                action,
                start: self.t0 + Duration::from_millis(start),
                end: self.t0 + Duration::from_millis(end),
                outcome,
                detail: String::new(),
            });
        }

        fn set(&mut self, key: &str, v: &str, start: u64, end: u64, outcome: Outcome) {
            self.op(key, Action::Set(b(v)), start, end, outcome);
        }

        fn del(&mut self, key: &str, start: u64, end: u64, outcome: Outcome) {
            self.op(key, Action::Delete, start, end, outcome);
        }

        fn get(&mut self, key: &str, v: Option<&str>, start: u64, end: u64) {
            self.op(key, Action::Get(v.map(b)), start, end, Outcome::Ok);
        }

        fn check(&self, fin: &[(&str, Option<&str>)]) -> Report {
            let fin = fin
                .iter()
                .map(|(k, v)| (b(k), v.map(b)))
                .collect::<BTreeMap<_, _>>();
            check(&self.events, &fin)
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    use Outcome::{Failed, Ok as Acked, Unknown};

    #[test]
    fn a_clean_history_passes() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.get("k", Some("a"), 11, 12);
        h.set("k", "b", 20, 30, Acked);
        h.get("k", Some("b"), 31, 32);
        h.del("j", 0, 5, Acked);
        h.get("j", None, 6, 7);
        let r = h.check(&[("k", Some("b")), ("j", None)]);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!((r.writes_acked, r.reads_checked, r.ops), (3, 3, 6));
    }

    #[test]
    fn a_lost_acknowledged_set_is_caught() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        let r = h.check(&[("k", None)]);
        assert!(
            matches!(r.violations[..], [Violation::LostWrite { write: 0, .. }]),
            "{r:?}"
        );
    }

    #[test]
    fn an_acknowledged_set_replaced_by_an_older_value_is_lost() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.set("k", "b", 20, 30, Acked);
        let r = h.check(&[("k", Some("a"))]);
        assert!(
            matches!(r.violations[..], [Violation::LostWrite { write: 1, .. }]),
            "{r:?}"
        );
    }

    #[test]
    fn an_acknowledged_delete_undone_is_lost() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.del("k", 20, 30, Acked);
        let r = h.check(&[("k", Some("a"))]);
        assert!(
            matches!(r.violations[..], [Violation::LostWrite { write: 1, .. }]),
            "{r:?}"
        );
    }

    #[test]
    fn concurrent_or_unknown_writes_may_replace_an_acknowledged_one() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.set("k", "b", 5, 8, Unknown); // may take effect after "a"
        h.set("j", "x", 0, 10, Acked);
        h.set("j", "y", 2, 12, Acked); // overlapping: either order is fine
        h.set("i", "p", 0, 10, Acked);
        h.del("i", 3, 4, Unknown);
        let r = h.check(&[("k", Some("b")), ("j", Some("x")), ("i", None)]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn an_unknown_write_that_did_not_apply_is_fine() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.set("k", "b", 20, 30, Unknown);
        let r = h.check(&[("k", Some("a"))]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn a_read_of_a_never_written_value_is_caught() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.get("k", Some("zzz"), 11, 12);
        let r = h.check(&[("k", Some("a"))]);
        assert!(
            matches!(
                r.violations[..],
                [Violation::ReadOfUnwrittenValue { read: 1, .. }]
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_read_of_a_failed_write_is_caught() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Failed);
        h.get("k", Some("a"), 11, 12);
        let r = h.check(&[("k", None)]);
        assert!(
            matches!(
                r.violations[..],
                [Violation::ReadOfFailedWrite {
                    read: 1,
                    write: 0,
                    ..
                }]
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_read_before_the_write_began_is_caught() {
        let mut h = H::new();
        h.get("k", Some("a"), 0, 1);
        h.set("k", "a", 5, 10, Acked);
        let r = h.check(&[("k", Some("a"))]);
        assert!(
            matches!(
                r.violations[..],
                [Violation::ReadFromTheFuture {
                    read: 0,
                    write: 1,
                    ..
                }]
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_read_of_a_value_that_is_later_rolled_back_is_caught() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        h.set("k", "b", 20, 30, Unknown); // the leader died with it in flight
        h.get("k", Some("b"), 31, 32); // ... yet someone read it
        let r = h.check(&[("k", Some("a"))]); // and the failover took it back
        assert!(
            matches!(
                r.violations[..],
                [Violation::RolledBackRead {
                    write: 1,
                    read: 2,
                    ..
                }]
            ),
            "{r:?}"
        );
        // Rolled back to absent, with no delete that could explain it.
        let mut h = H::new();
        h.set("k", "b", 20, 30, Unknown);
        h.get("k", Some("b"), 31, 32);
        let r = h.check(&[("k", None)]);
        assert!(
            matches!(r.violations[..], [Violation::RolledBackRead { .. }]),
            "{r:?}"
        );
    }

    #[test]
    fn a_read_value_superseded_later_is_fine() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Unknown);
        h.get("k", Some("a"), 11, 12);
        h.set("k", "b", 20, 30, Acked);
        h.get("k", Some("a"), 40, 41); // stale, from a follower: allowed
        let r = h.check(&[("k", Some("b"))]);
        assert!(r.is_ok(), "{r:?}");
        let mut h = H::new();
        h.set("k", "a", 0, 10, Unknown);
        h.get("k", Some("a"), 11, 12);
        h.del("k", 20, 30, Unknown);
        let r = h.check(&[("k", None)]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn a_phantom_or_unknown_final_value_is_caught() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Failed);
        let r = h.check(&[("k", Some("a")), ("j", Some("x"))]);
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert!(
            matches!(
                r.violations[..],
                [Violation::FinalValueOfFailedWrite { write: 0, .. }]
            ),
            "{r:?}"
        );
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        let r = h.check(&[("k", Some("nope"))]);
        assert!(
            matches!(r.violations[..], [Violation::FinalValueUnwritten { .. }]),
            "{r:?}"
        );
    }

    #[test]
    fn explain_names_the_operations() {
        let mut h = H::new();
        h.set("k", "a", 0, 10, Acked);
        let r = h.check(&[("k", None)]);
        let text = r.explain(&h.events);
        assert!(text.contains("LostWrite"), "{text}");
        assert!(text.contains("write #0"), "{text}");
    }
}
