//! A linearizability checker for single-key registers: decides whether each
//! key's history could have come from one atomic register, staleness
//! included (which [`check`](super::check) deliberately does not demand).
//!
//! Keys are independent registers, absent (`None`) at first. `Set(v)` makes
//! the register `Some(v)`, `Delete` makes it `None`, and an acknowledged
//! `Get` must return what the register holds at the instant it takes effect.
//! Only [`Event::start`] and [`Event::end`] order operations in real time:
//! `a` precedes `b` iff `a.end < b.start` (equal instants are concurrent).
//!
//! Outcomes: an acknowledged operation takes effect once, within
//! `[start, end]`. A failed one never took effect and is dropped, and so is
//! a read of unknown outcome (nothing it observed is known). A write of
//! unknown outcome is *optional*: it may take effect at any instant after
//! its start (its end is +infinity), or never.
//!
//! The search is Wing & Gong's with Lowe's memoisation, as in Porcupine's
//! `checkSingle`: walk the call/return entries in time order, place any
//! operation whose call comes before the first pending return and that the
//! register accepts, backtrack on reaching a return, and never enter twice a
//! (placed set, register value) state that already failed. It succeeds once
//! every acknowledged operation is placed. Each key's search is bounded by
//! [`MAX_STEPS_PER_KEY`]; past it the key is reported undecided, neither
//! passed nor failed.
//!
//! Optional writes are only ever placed immediately before a read of their
//! value. Any linearization can be rewritten that way (an optional write
//! that no read observes before the next write can simply be left out), and
//! it keeps a failing search from trying every subset of unread unknown
//! writes, which would blow any budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

use bytes::Bytes;

use super::history::{Action, Event, Outcome};

/// Search steps (entries visited, plus backtracks) one key may take before
/// it is reported undecided. A sequential history takes about one step per
/// operation; concurrency multiplies that by roughly the number of
/// operations in flight at once.
pub const MAX_STEPS_PER_KEY: u64 = 1_000_000;

/// A key whose history is not linearizable, with the smallest evidence the
/// checker found: the shortest prefix of the key's operations, in start
/// order, that is not linearizable, and the operation that ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearViolation {
    /// The key.
    pub key: Bytes,
    /// The operation (an index into the history) that could not be placed:
    /// the key's operations that started before it are linearizable (later
    /// writes allowed to take effect, or not), with it they are not. Usually
    /// a read, whose value is the contradiction.
    pub op: usize,
    /// How many of the key's checked operations, in start order, that prefix
    /// holds; `op` is its last.
    pub prefix_len: usize,
}

/// The linearizability verdict for a whole history, key by key.
#[derive(Debug, Clone, Default)]
pub struct LinearReport {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations that took part in the search: acknowledged ones and writes
    /// of unknown outcome (failed operations and unknown reads are dropped).
    pub ops_checked: usize,
    /// One entry per key whose history is not linearizable.
    pub violations: Vec<LinearViolation>,
    /// Keys whose search ran out of its step budget: neither proven
    /// linearizable nor refuted.
    pub undecided: Vec<Bytes>,
}

impl LinearReport {
    /// Whether every key was proven linearizable: no violation, and nothing
    /// left undecided.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.undecided.is_empty()
    }

    /// A failure message: per violation the key, the operation that could not
    /// be placed (with the value it read), the writes of that value and the
    /// writes around it, times in milliseconds from the history's first
    /// start; then the undecided keys.
    pub fn explain(&self, history: &[Event]) -> String {
        let t0 = history.iter().map(|e| e.start).min();
        let show = |out: &mut String, i: usize| {
            if let (Some(e), Some(t0)) = (history.get(i), t0) {
                let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
                out.push_str(&format!(
                    "      #{i} client {} {:?} {:?} [{:.3} ms, {:.3} ms] {}\n",
                    e.client,
                    e.action,
                    e.outcome,
                    ms(e.start),
                    ms(e.end),
                    e.detail
                ));
            }
        };
        let mut out = format!("{self}\n");
        for v in &self.violations {
            let Some(culprit) = history.get(v.op) else {
                continue;
            };
            out.push_str(&format!(
                "  key {:?}: not linearizable; its first {} operations (in start order) are, \
                 all but the last; cannot place:\n",
                v.key, v.prefix_len
            ));
            show(&mut out, v.op);
            let of_key = || {
                history
                    .iter()
                    .enumerate()
                    .filter(move |(_, e)| e.key == v.key && e.outcome != Outcome::Failed)
            };
            if let Action::Get(value) = &culprit.action {
                let writers: Vec<usize> = of_key()
                    .filter(|(_, e)| match (&e.action, value) {
                        (Action::Set(w), Some(r)) => w == r,
                        (Action::Delete, None) => true,
                        _ => false,
                    })
                    .map(|(i, _)| i)
                    .collect();
                out.push_str(&format!("    it read {value:?}; "));
                match (writers.is_empty(), value) {
                    (true, Some(_)) => out.push_str("no write that did not fail wrote it\n"),
                    (true, None) => out.push_str(
                        "no delete that did not fail: only the initial state is absent\n",
                    ),
                    (false, _) => {
                        out.push_str("writes of that value that did not fail:\n");
                        for &w in writers.iter().take(EXPLAIN_LIMIT) {
                            show(&mut out, w);
                        }
                    }
                }
            }
            // What the register could hold when the culprit ran: the last
            // acknowledged write before it, and the writes overlapping it.
            let last_before = of_key()
                .filter(|(_, e)| {
                    !matches!(e.action, Action::Get(_))
                        && e.outcome == Outcome::Ok
                        && e.end < culprit.start
                })
                .max_by_key(|(i, e)| (e.end, *i))
                .map(|(i, _)| i);
            let overlapping = of_key().filter(|(i, e)| {
                *i != v.op
                    && !matches!(e.action, Action::Get(_))
                    && e.start <= culprit.end
                    && (e.outcome == Outcome::Unknown || e.end >= culprit.start)
            });
            out.push_str(
                "    the last acknowledged write before it, and the writes overlapping it:\n",
            );
            for i in last_before
                .into_iter()
                .chain(overlapping.map(|(i, _)| i))
                .take(EXPLAIN_LIMIT)
            {
                show(&mut out, i);
            }
        }
        for key in &self.undecided {
            out.push_str(&format!(
                "  key {key:?}: undecided, the search exceeded {MAX_STEPS_PER_KEY} steps\n"
            ));
        }
        out
    }
}

/// Operations listed per section of [`LinearReport::explain`], so a message
/// about a hot key stays readable.
const EXPLAIN_LIMIT: usize = 10;

impl fmt::Display for LinearReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keys={} ops_checked={} violations={} undecided={}",
            self.keys,
            self.ops_checked,
            self.violations.len(),
            self.undecided.len()
        )
    }
}

/// Checks that every key's history in `history` is linearizable as a
/// register, each key's search bounded by [`MAX_STEPS_PER_KEY`].
pub fn check_linearizable(history: &[Event]) -> LinearReport {
    check_linearizable_within(history, MAX_STEPS_PER_KEY)
}

/// [`check_linearizable`] with another per-key step budget (each search the
/// evidence hunt runs gets the same budget).
pub fn check_linearizable_within(history: &[Event], max_steps: u64) -> LinearReport {
    let mut by_key: BTreeMap<&Bytes, Vec<usize>> = BTreeMap::new();
    for (i, e) in history.iter().enumerate() {
        let ops = by_key.entry(&e.key).or_default();
        if takes_part(e) {
            ops.push(i);
        }
    }
    let mut report = LinearReport {
        keys: by_key.len(),
        ..LinearReport::default()
    };
    for (key, mut ops) in by_key {
        ops.sort_by_key(|&i| (history[i].start, i));
        report.ops_checked += ops.len();
        match Search::new(history, &ops, ops.len()).run(max_steps) {
            Verdict::Linearizable => {}
            Verdict::Undecided => report.undecided.push(key.clone()),
            Verdict::NotLinearizable => {
                let prefix_len = shortest_failing_prefix(history, &ops, max_steps);
                report.violations.push(LinearViolation {
                    key: key.clone(),
                    op: ops[prefix_len - 1],
                    prefix_len,
                });
            }
        }
    }
    report
}

/// Whether an event constrains the register: a failed operation never took
/// effect, and a read of unknown outcome observed nothing we know.
fn takes_part(e: &Event) -> bool {
    match e.outcome {
        Outcome::Ok => true,
        Outcome::Failed => false,
        Outcome::Unknown => !matches!(e.action, Action::Get(_)),
    }
}

/// The smallest `k` such that the key's first `k` operations (start order)
/// are not linearizable, given that all `ops.len()` of them are not.
///
/// Prefix `k` keeps the first `k` operations as they are and turns every
/// later write into an optional one (a read in the prefix may have seen it),
/// dropping later reads. Any linearization of a longer prefix restricts to
/// one of a shorter prefix, so failure is monotone in `k` and a binary
/// search finds the operation whose arrival breaks it. An undecided probe
/// counts as passing: the prefix reported then still fails for sure, it may
/// just not be the shortest.
fn shortest_failing_prefix(history: &[Event], ops: &[usize], max_steps: u64) -> usize {
    // Prefix 0 has nothing to place, so it passes.
    let (mut passes, mut fails) = (0, ops.len());
    while fails - passes > 1 {
        let mid = passes + (fails - passes) / 2;
        if Search::new(history, ops, mid).run(max_steps) == Verdict::NotLinearizable {
            fails = mid;
        } else {
            passes = mid;
        }
    }
    fails
}

/// How one key's search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    NotLinearizable,
    Undecided,
}

/// One operation as the search sees it.
#[derive(Debug, Clone, Copy)]
struct Op {
    /// Writes its value (else reads it).
    write: bool,
    /// The value written or read, interned per search (0 is absence).
    value: usize,
    /// Acknowledged: must be placed. Otherwise an optional write.
    required: bool,
    /// Its bit in the required or the optional bitset.
    bit: usize,
    /// Its call entry.
    call: usize,
    /// Its return entry; optional writes have none (they never end).
    ret: Option<usize>,
}

/// One placement on the search stack: one operation, or an optional write
/// and the read of its value right after it.
#[derive(Debug, Clone, Copy)]
struct Move {
    first: usize,
    second: Option<usize>,
    /// The register value before the move.
    before: usize,
    /// The entry the move was found at.
    trigger: usize,
    /// For a pair, which candidate of the trigger it was.
    candidate: Option<usize>,
}

/// The search over one key's operations (Wing & Gong, memoised).
struct Search {
    ops: Vec<Op>,
    /// Entry `e` is `(op, is_return)`; entries are sorted by time with calls
    /// before returns at the same instant (those operations are concurrent).
    entries: Vec<(usize, bool)>,
    /// A doubly linked list over the entries not yet placed, with a sentinel
    /// at index `entries.len()`, so placing and undoing are O(1).
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per value: the reads of it, and the optional writes of it.
    readers: Vec<Vec<usize>>,
    optional_writers: Vec<Vec<usize>>,
    /// Which required and which optional operations are placed.
    required_placed: Vec<u64>,
    optional_placed: Vec<u64>,
    required: usize,
    /// Memo of states entered: see [`Search::enter`] for the layout.
    seen: HashSet<Box<[u64]>>,
    scratch: Vec<u64>,
}

impl Search {
    /// The search for prefix `prefix` of `ops` (history indexes of one key's
    /// operations that take part, in start order): see
    /// [`shortest_failing_prefix`].
    fn new(history: &[Event], ops: &[usize], prefix: usize) -> Search {
        let mut values: HashMap<Option<&Bytes>, usize> = HashMap::from([(None, 0)]);
        let mut search_ops = Vec::new();
        let mut times = Vec::new();
        let (mut required, mut optional) = (0, 0);
        for (pos, &i) in ops.iter().enumerate() {
            let e = &history[i];
            let (write, value) = match &e.action {
                Action::Set(v) => (true, Some(v)),
                Action::Delete => (true, None),
                Action::Get(v) => (false, v.as_ref()),
            };
            if pos >= prefix && !write {
                continue;
            }
            let is_required = pos < prefix && e.outcome == Outcome::Ok;
            let next_id = values.len();
            let value = *values.entry(value).or_insert(next_id);
            let counter = if is_required {
                &mut required
            } else {
                &mut optional
            };
            let bit = *counter;
            *counter += 1;
            let op = search_ops.len();
            times.push((e.start, false, op));
            if is_required {
                // A clock that ran backwards must not put a return before its call.
                times.push((e.end.max(e.start), true, op));
            }
            search_ops.push(Op {
                write,
                value,
                required: is_required,
                bit,
                call: 0,
                ret: None,
            });
        }
        times.sort();
        let entries: Vec<(usize, bool)> = times.iter().map(|&(_, ret, op)| (op, ret)).collect();
        for (e, &(op, ret)) in entries.iter().enumerate() {
            if ret {
                search_ops[op].ret = Some(e);
            } else {
                search_ops[op].call = e;
            }
        }
        let mut readers = vec![Vec::new(); values.len()];
        let mut optional_writers = vec![Vec::new(); values.len()];
        for (i, op) in search_ops.iter().enumerate() {
            match (op.write, op.required) {
                (false, _) => readers[op.value].push(i),
                (true, false) => optional_writers[op.value].push(i),
                (true, true) => {}
            }
        }
        let n = entries.len();
        Search {
            ops: search_ops,
            next: (1..=n).chain([0]).collect(),
            prev: [n].into_iter().chain(0..n).collect(),
            entries,
            readers,
            optional_writers,
            required_placed: vec![0; required.div_ceil(64)],
            optional_placed: vec![0; optional.div_ceil(64)],
            required,
            seen: HashSet::new(),
            scratch: Vec::new(),
        }
    }

    fn run(mut self, max_steps: u64) -> Verdict {
        let sentinel = self.entries.len();
        let mut value = 0;
        let mut required_left = self.required;
        let mut stack: Vec<Move> = Vec::new();
        let mut cur = self.next[sentinel];
        // The first pairing candidate still to try at `cur`.
        let mut from = 0;
        let mut steps = 0;
        loop {
            if required_left == 0 {
                return Verdict::Linearizable;
            }
            if steps >= max_steps {
                return Verdict::Undecided;
            }
            steps += 1;
            if cur == sentinel || self.entries[cur].1 {
                // A pending operation returned: everything after this point
                // must follow it, so the last placement was wrong.
                let Some(m) = stack.pop() else {
                    return Verdict::NotLinearizable;
                };
                for op in m.second.into_iter().chain([m.first]) {
                    self.unlift(op);
                    self.mark(op, false);
                    required_left += usize::from(self.ops[op].required);
                }
                value = m.before;
                (cur, from) = match m.candidate {
                    Some(k) => (m.trigger, k + 1),
                    None => (self.next[m.trigger], 0),
                };
                continue;
            }
            match self.try_at(cur, from, value) {
                Some(m) => {
                    for op in [m.first].into_iter().chain(m.second) {
                        self.lift(op);
                        required_left -= usize::from(self.ops[op].required);
                    }
                    value = self.ops[m.second.unwrap_or(m.first)].value;
                    stack.push(m);
                    cur = self.next[sentinel];
                    from = 0;
                }
                None => {
                    cur = self.next[cur];
                    from = 0;
                }
            }
        }
    }

    /// Finds a placement at call entry `entry` into a state never entered,
    /// and marks its operations placed; pairing candidates start at `from`.
    fn try_at(&mut self, entry: usize, from: usize, value: usize) -> Option<Move> {
        let x = self.entries[entry].0;
        let op = self.ops[x];
        let single = Move {
            first: x,
            second: None,
            before: value,
            trigger: entry,
            candidate: None,
        };
        if op.write && op.required {
            return self.enter(single, op.value);
        }
        if op.value == value {
            // A read that fits goes alone; an optional write that changes
            // nothing is never needed.
            return if op.write {
                None
            } else {
                self.enter(single, value)
            };
        }
        // An optional write and a read of its value, the pair tried at
        // whichever of the two comes later, so that the other one (call
        // entry before this one, not placed) is placeable too.
        for k in from.. {
            let partners = if op.write {
                &self.readers[op.value]
            } else {
                &self.optional_writers[op.value]
            };
            let &p = partners.get(k)?;
            if self.placed(p) || self.ops[p].call > entry {
                continue;
            }
            let (w, r) = if op.write { (x, p) } else { (p, x) };
            let pair = Move {
                first: w,
                second: Some(r),
                candidate: Some(k),
                ..single
            };
            if let Some(m) = self.enter(pair, op.value) {
                return Some(m);
            }
        }
        None
    }

    /// Marks `m`'s operations placed if that, with the register at `value`,
    /// is a state never entered before (entered states that are not on the
    /// stack have failed); otherwise leaves everything as it was.
    ///
    /// A state's key is `[value, w, required words w.., optional words]`:
    /// required operations are placed roughly in start order, so the words
    /// before `w` (the first not all placed) are all ones and are left out,
    /// as are trailing zero words; this keeps keys short on long histories.
    fn enter(&mut self, m: Move, value: usize) -> Option<Move> {
        for op in [m.first].into_iter().chain(m.second) {
            self.mark(op, true);
        }
        let words = &self.required_placed;
        let w = words
            .iter()
            .position(|&x| x != u64::MAX)
            .unwrap_or(words.len());
        let end = words
            .iter()
            .rposition(|&x| x != 0)
            .map_or(w, |l| w.max(l + 1));
        self.scratch.clear();
        self.scratch.extend([value as u64, w as u64]);
        self.scratch.extend_from_slice(&words[w..end]);
        self.scratch.extend_from_slice(&self.optional_placed);
        if self.seen.contains(self.scratch.as_slice()) {
            for op in [m.first].into_iter().chain(m.second) {
                self.mark(op, false);
            }
            return None;
        }
        self.seen.insert(self.scratch.clone().into_boxed_slice());
        Some(m)
    }

    fn placed(&self, op: usize) -> bool {
        let Op { required, bit, .. } = self.ops[op];
        let words = if required {
            &self.required_placed
        } else {
            &self.optional_placed
        };
        words[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn mark(&mut self, op: usize, placed: bool) {
        let Op { required, bit, .. } = self.ops[op];
        let words = if required {
            &mut self.required_placed
        } else {
            &mut self.optional_placed
        };
        if placed {
            words[bit / 64] |= 1 << (bit % 64);
        } else {
            words[bit / 64] &= !(1 << (bit % 64));
        }
    }

    /// Unlinks an operation's entries; [`Search::unlift`] must undo lifts in
    /// reverse order (dancing links).
    fn lift(&mut self, op: usize) {
        let Op { call, ret, .. } = self.ops[op];
        for e in [call].into_iter().chain(ret) {
            let (p, n) = (self.prev[e], self.next[e]);
            self.next[p] = n;
            self.prev[n] = p;
        }
    }

    fn unlift(&mut self, op: usize) {
        let Op { call, ret, .. } = self.ops[op];
        for e in ret.into_iter().chain([call]) {
            let (p, n) = (self.prev[e], self.next[e]);
            self.next[p] = e;
            self.prev[n] = e;
        }
    }
}

#[cfg(test)]
mod tests;
