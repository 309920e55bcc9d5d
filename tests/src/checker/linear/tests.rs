//! The linearizability checker's tests: hand-made histories for each rule,
//! random ones against a brute-force definition.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

use Outcome::{Failed, Ok as Acked, Unknown};

use crate::checker::timeline::{b, Timeline as H};

/// The linearizability verdicts of a history under construction.
trait Verdicts {
    fn check(&self) -> LinearReport;
    fn assert_blames(&self, op: usize) -> LinearReport;
    fn assert_ok(&self) -> LinearReport;
}

impl Verdicts for H {
    fn check(&self) -> LinearReport {
        check_linearizable(&self.events)
    }

    /// Asserts the history is not linearizable, blaming exactly `op`
    /// (alone among the keys).
    fn assert_blames(&self, op: usize) -> LinearReport {
        let r = self.check();
        assert!(r.undecided.is_empty(), "{}", r.explain(&self.events));
        assert_eq!(r.violations.len(), 1, "{}", r.explain(&self.events));
        let v = &r.violations[0];
        assert_eq!(v.key, self.events[op].key);
        assert_eq!(v.op, op, "{}", r.explain(&self.events));
        r
    }

    fn assert_ok(&self) -> LinearReport {
        let r = self.check();
        assert!(r.is_ok(), "{}", r.explain(&self.events));
        r
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants):
/// deterministic, no crate.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn sequential_sets_and_gets_pass() {
    let mut h = H::new();
    h.get("k", None, 0, 1);
    h.set("k", "a", 2, 3, Acked);
    h.get("k", Some("a"), 4, 5);
    h.set("k", "b", 6, 7, Acked);
    h.get("k", Some("b"), 8, 9);
    h.get("k", Some("b"), 10, 11);
    let r = h.assert_ok();
    assert_eq!((r.keys, r.ops_checked), (1, 6));
}

#[test]
fn a_stale_read_fails_and_is_explained() {
    let mut h = H::new();
    h.set("k", "old", 0, 10, Acked);
    h.set("k", "new", 20, 30, Acked);
    let stale = h.get("k", Some("old"), 40, 50);
    let r = h.assert_blames(stale);
    assert_eq!(r.violations[0].prefix_len, 3);
    let msg = r.explain(&h.events);
    assert!(msg.contains("b\"k\""), "{msg}");
    assert!(msg.contains(&format!("#{stale} ")), "{msg}");
    assert!(msg.contains("it read Some(b\"old\")"), "{msg}");
}

#[test]
fn a_read_concurrent_with_a_write_may_return_either_value() {
    for seen in ["old", "new"] {
        let mut h = H::new();
        h.set("k", "old", 0, 10, Acked);
        h.set("k", "new", 20, 40, Acked);
        h.get("k", Some(seen), 25, 35);
        h.assert_ok();
    }
    // Equal instants are concurrent, not ordered.
    let mut h = H::new();
    h.set("k", "old", 0, 10, Acked);
    h.set("k", "new", 20, 40, Acked);
    h.get("k", Some("old"), 40, 50);
    h.assert_ok();
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    // Read long after the write's client gave up.
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.set("k", "b", 20, 30, Unknown);
    h.get("k", Some("a"), 40, 50);
    h.get("k", Some("b"), 100, 110);
    h.get("k", Some("b"), 120, 130);
    h.assert_ok();
    // Never read.
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.set("k", "b", 20, 30, Unknown);
    h.get("k", Some("a"), 40, 50);
    h.get("k", Some("a"), 100, 110);
    h.assert_ok();
    // But it takes effect once, for good: once its value was seen, the
    // value it replaced cannot come back.
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.set("k", "b", 20, 30, Unknown);
    h.get("k", Some("b"), 40, 50);
    let back = h.get("k", Some("a"), 60, 70);
    h.get("k", Some("b"), 80, 90);
    h.assert_blames(back);
    // Nor can it take effect before it started.
    let mut h = H::new();
    let early = h.get("k", Some("b"), 0, 10);
    h.set("k", "b", 20, 30, Unknown);
    h.assert_blames(early);
}

#[test]
fn a_read_of_a_value_never_written_fails() {
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    let ghost = h.get("k", Some("ghost"), 20, 30);
    h.get("k", Some("a"), 40, 50);
    h.assert_blames(ghost);
    // A failed write counts as never written.
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.set("k", "f", 20, 30, Failed);
    let phantom = h.get("k", Some("f"), 40, 50);
    h.assert_blames(phantom);
}

#[test]
fn failed_and_unknown_reads_say_nothing() {
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.op("k", Action::Get(Some(b("x"))), 20, 30, Failed);
    h.op("k", Action::Get(Some(b("y"))), 20, 30, Unknown);
    h.get("k", Some("a"), 40, 50);
    let r = h.assert_ok();
    assert_eq!(r.ops_checked, 2);
}

#[test]
fn a_delete_is_seen_as_absence() {
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.del("k", 20, 30, Acked);
    h.get("k", None, 40, 50);
    h.assert_ok();

    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.del("k", 20, 30, Acked);
    let undead = h.get("k", Some("a"), 40, 50);
    h.assert_blames(undead);
}

#[test]
fn new_then_old_across_a_write_fails_only_if_the_reads_are_ordered() {
    // Both reads overlap the write, the first ends before the second
    // starts: once a read saw "new" the write has taken effect, so no
    // later read may see "old".
    let mut h = H::new();
    h.set("k", "old", 0, 5, Acked);
    h.set("k", "new", 10, 50, Acked);
    h.get("k", Some("new"), 20, 30);
    let old = h.get("k", Some("old"), 35, 45);
    let r = h.assert_blames(old);
    assert_eq!(r.violations[0].prefix_len, 4);
    // The same with the write of unknown outcome.
    let mut h = H::new();
    h.set("k", "old", 0, 5, Acked);
    h.set("k", "new", 10, 50, Unknown);
    h.get("k", Some("new"), 20, 30);
    let old = h.get("k", Some("old"), 35, 45);
    h.assert_blames(old);
    // Overlapping reads may be linearized the other way round.
    let mut h = H::new();
    h.set("k", "old", 0, 5, Acked);
    h.set("k", "new", 10, 50, Acked);
    h.get("k", Some("new"), 20, 40);
    h.get("k", Some("old"), 35, 45);
    h.assert_ok();
}

#[test]
fn only_the_bad_key_is_reported() {
    let mut h = H::new();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let t = 100 * i as u64;
        h.set(key, "1", t, t + 10, Acked);
        h.set(key, "2", t + 20, t + 30, Acked);
        h.get(key, Some("2"), t + 40, t + 50);
    }
    let stale = h.get("b", Some("1"), 400, 410);
    let r = h.assert_blames(stale);
    assert_eq!((r.keys, r.ops_checked), (3, 10));
}

#[test]
fn an_exhausted_budget_is_undecided_not_passed() {
    let mut h = H::new();
    h.set("k", "a", 0, 10, Acked);
    h.get("k", Some("a"), 20, 30);
    h.get("j", None, 20, 30);
    let r = check_linearizable_within(&h.events, 1);
    assert_eq!(r.undecided, vec![b("k")]);
    assert!(r.violations.is_empty());
    assert!(!r.is_ok());
    assert!(r.explain(&h.events).contains("undecided"));
}

/// A sequential history over a few keys; returns it with one read that
/// can be made stale: its index and an older value to give it, one an
/// acknowledged write set before another acknowledged write replaced it.
fn sequential(rng: &mut Lcg, ops: usize) -> (H, usize, Bytes) {
    let mut h = H::new();
    let mut state: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    // Per key: values of acknowledged sets that a later acknowledged
    // write replaced.
    let mut replaced: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
    let mut last_acked: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let mut stale = None;
    for i in 0..ops {
        let key = format!("k{}", rng.below(4));
        let t = 2 * i as u64;
        let outcome = match rng.below(20) {
            0 => Failed,
            1 => Unknown,
            _ => Acked,
        };
        // An unknown write takes effect half the time.
        let applies = outcome == Acked || (outcome == Unknown && rng.below(2) == 0);
        let roll = rng.below(10);
        if roll < 5 {
            let now = state.get(&key).cloned().flatten();
            let read = h.get(
                &key,
                now.as_deref().map(|v| std::str::from_utf8(v).unwrap()),
                t,
                t + 1,
            );
            if let Some(old) = replaced.get(&key).and_then(|v| v.last()) {
                stale = Some((read, old.clone()));
            }
            continue;
        }
        let value = (roll < 9).then(|| b(&format!("v{i}")));
        match &value {
            Some(v) => h.set(&key, std::str::from_utf8(v).unwrap(), t, t + 1, outcome),
            None => h.del(&key, t, t + 1, outcome),
        };
        if applies {
            state.insert(key.clone(), value.clone());
        }
        if outcome == Acked {
            if let Some(Some(prev)) = last_acked.insert(key.clone(), value) {
                replaced.entry(key).or_default().push(prev);
            }
        }
    }
    let (read, old) = stale.expect("a read after two acknowledged writes");
    (h, read, old)
}

#[test]
fn a_long_random_sequential_history_passes_and_one_stale_read_fails() {
    let seed = 0x5eed_1234;
    eprintln!("seed {seed:#x}");
    let mut rng = Lcg(seed);
    let (mut h, read, old) = sequential(&mut rng, 4000);
    let started = Instant::now();
    let r = h.assert_ok();
    eprintln!("{r} in {:?}", started.elapsed());
    assert_eq!(r.keys, 4);

    h.events[read].action = Action::Get(Some(old));
    let started = Instant::now();
    let r = h.assert_blames(read);
    eprintln!("{r} in {:?}", started.elapsed());
}

/// A concurrent history that is linearizable by construction: each
/// operation takes effect at a random instant of its interval (an
/// unknown write at any instant after its start, or never), reads
/// return the value at that instant.
#[test]
fn random_concurrent_linearizable_histories_pass() {
    let seed = 0xc0ffee;
    eprintln!("seed {seed:#x}");
    let mut rng = Lcg(seed);
    let mut h = H::new();
    let mut effects = Vec::new();
    for _client in 0..16 {
        let mut t = rng.below(5);
        for _ in 0..200 {
            let key = format!("k{}", rng.below(3));
            let len = 1 + rng.below(30);
            let (start, end) = (t, t + len);
            t = end + rng.below(3);
            let outcome = match rng.below(20) {
                0 => Failed,
                1 | 2 => Unknown,
                _ => Acked,
            };
            let at = match outcome {
                Unknown => start + rng.below(3 * len + 1),
                _ => start + rng.below(len + 1),
            };
            let i = match rng.below(10) {
                0..=3 => h.set(&key, &format!("v{}", h.events.len()), start, end, outcome),
                4 => h.del(&key, start, end, outcome),
                _ => h.op(&key, Action::Get(None), start, end, outcome),
            };
            // Reads get their value below whatever their outcome (only
            // acknowledged ones are checked).
            let applies = match outcome {
                _ if !h.events[i].is_write() => true,
                Acked => true,
                Failed => false,
                Unknown => rng.below(2) == 0,
            };
            if applies {
                effects.push((at, i));
            }
        }
    }
    effects.sort();
    let mut state: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
    for (_, i) in effects {
        let e = &mut h.events[i];
        match &e.action {
            Action::Set(v) => {
                state.insert(e.key.clone(), Some(v.clone()));
            }
            Action::Delete => {
                state.insert(e.key.clone(), None);
            }
            Action::Get(_) => e.action = Action::Get(state.get(&e.key).cloned().flatten()),
        }
    }
    let started = Instant::now();
    let r = h.assert_ok();
    eprintln!("{r} in {:?}", started.elapsed());
}

/// The definition, by brute force: some order of the acknowledged
/// operations and some of the unknown writes that respects real time and
/// the register.
fn brute_force(history: &[Event]) -> bool {
    let ops: Vec<&Event> = history.iter().filter(|e| takes_part(e)).collect();
    fn place(ops: &[&Event], placed: &mut Vec<bool>, value: Option<&Bytes>) -> bool {
        let pending = |i: usize, placed: &[bool]| !placed[i] && ops[i].outcome == Acked;
        if !(0..ops.len()).any(|i| pending(i, placed)) {
            return true;
        }
        for (i, e) in ops.iter().enumerate() {
            let blocked = (0..ops.len()).any(|j| pending(j, placed) && ops[j].end < e.start);
            if placed[i] || blocked {
                continue;
            }
            let after = match &e.action {
                Action::Set(v) => Some(v),
                Action::Delete => None,
                Action::Get(v) if v.as_ref() == value => value,
                Action::Get(_) => continue,
            };
            placed[i] = true;
            let found = place(ops, placed, after);
            placed[i] = false;
            if found {
                return true;
            }
        }
        false
    }
    place(&ops, &mut vec![false; ops.len()], None)
}

#[test]
fn small_random_histories_agree_with_brute_force() {
    let seed = 0xb0a7;
    eprintln!("seed {seed:#x}");
    let mut rng = Lcg(seed);
    let values = ["a", "b", "c"];
    let (mut passed, mut failed) = (0, 0);
    for _ in 0..4000 {
        let mut h = H::new();
        for _ in 0..1 + rng.below(7) {
            let start = rng.below(20);
            let end = start + rng.below(10);
            let outcome = match rng.below(8) {
                0 => Failed,
                1 | 2 => Unknown,
                _ => Acked,
            };
            let v = values[rng.below(3) as usize];
            match rng.below(10) {
                0..=3 => h.set("k", v, start, end, outcome),
                4 => h.del("k", start, end, outcome),
                5 => h.op("k", Action::Get(None), start, end, outcome),
                _ => h.op("k", Action::Get(Some(b(v))), start, end, outcome),
            };
        }
        let r = h.check();
        assert!(r.undecided.is_empty());
        assert_eq!(r.is_ok(), brute_force(&h.events), "{:#?}", h.events);
        match r.violations.first() {
            None => passed += 1,
            Some(v) => {
                failed += 1;
                assert!(takes_part(&h.events[v.op]));
            }
        }
    }
    eprintln!("{passed} linearizable, {failed} not");
    assert!(passed > 500 && failed > 500, "{passed} {failed}");
}
