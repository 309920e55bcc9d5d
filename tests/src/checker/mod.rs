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
//!
//! The module is split by concept: [`Event`] and its parts (the history a
//! run records) in `history`, [`Violation`] and [`Report`] (the verdict) in
//! `report`, and the check itself here. `linear` holds a separate, stricter
//! check: whether each key's history is linearizable as a register,
//! staleness included ([`linear::check_linearizable`]).

mod history;
pub mod linear;
mod report;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;

pub use history::{Action, Event, Outcome};
pub use report::{Report, Violation};

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
