//! The checker on hand-built histories: one test per violation it must
//! catch, and the histories it must accept.

use super::*;

use super::timeline::{b, Timeline as H};

/// The checker's verdict on a history under construction.
trait Verdict {
    fn check(&self, fin: &[(&str, Option<&str>)]) -> Report;
}

impl Verdict for H {
    fn check(&self, fin: &[(&str, Option<&str>)]) -> Report {
        let fin = fin
            .iter()
            .map(|(k, v)| (b(k), v.map(b)))
            .collect::<BTreeMap<_, _>>();
        check(&self.events, &fin)
    }
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
