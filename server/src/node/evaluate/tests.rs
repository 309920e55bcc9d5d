//! Evaluation against a fixed state: each command's answer and mutations,
//! expired keys, errors that write nothing, and Redis's integer format.

use std::collections::HashMap;

use super::*;

const NOW: UnixMillis = UnixMillis(1_000_000);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A state of `(key, value, expiry, pending index)`.
fn state(
    keys: &[(&str, &str, Option<u64>, u64)],
) -> impl Fn(&Bytes) -> (Option<KeyState>, LogIndex) {
    let map: HashMap<Bytes, (KeyState, LogIndex)> = keys
        .iter()
        .map(|&(k, v, at, from)| {
            (
                b(k),
                (
                    KeyState {
                        value: b(v),
                        expires_at: at.map(UnixMillis),
                    },
                    LogIndex(from),
                ),
            )
        })
        .collect();
    move |key| match map.get(key) {
        Some((s, from)) => (Some(s.clone()), *from),
        None => (None, LogIndex(0)),
    }
}

fn set(key: &str, value: &str, at: Option<u64>) -> Mutation {
    Mutation {
        key: b(key),
        value: Some(b(value)),
        expires_at: at.map(UnixMillis),
    }
}

fn del(key: &str) -> Mutation {
    Mutation {
        key: b(key),
        value: None,
        expires_at: None,
    }
}

fn eval(command: Command, keys: &[(&str, &str, Option<u64>, u64)]) -> Evaluation {
    evaluate(&command, NOW, 1024, &state(keys))
}

fn cmd_set(key: &str, value: &str, cond: Cond, ttl: TtlChange, get_old: bool) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        cond,
        ttl,
        get_old,
    }
}

#[test]
fn set_nx_and_xx_follow_the_key_and_report_the_old_value() {
    let present = [("k", "old", None, 0)];
    let e = eval(
        cmd_set("k", "new", Cond::IfAbsent, TtlChange::Persist, true),
        &present,
    );
    assert!(e.mutations.is_empty());
    assert_eq!(e.answer, Ok(outcome(false, Some(b("old")), 0)));
    let e = eval(
        cmd_set("k", "new", Cond::IfPresent, TtlChange::Persist, true),
        &present,
    );
    assert_eq!(e.mutations, [set("k", "new", None)]);
    assert_eq!(e.answer, Ok(outcome(true, Some(b("old")), 0)));
    let e = eval(
        cmd_set("k", "new", Cond::IfPresent, TtlChange::Persist, false),
        &[],
    );
    assert!(e.mutations.is_empty());
    assert_eq!(e.answer, Ok(outcome(false, None, 0)));
    let e = eval(
        cmd_set("k", "new", Cond::IfAbsent, TtlChange::AfterMs(10), false),
        &[],
    );
    assert_eq!(e.mutations, [set("k", "new", Some(NOW.0 + 10))]);
}

#[test]
fn set_keeps_or_drops_the_ttl_and_a_past_expiry_deletes() {
    let volatile = [("k", "old", Some(NOW.0 + 500), 0)];
    let e = eval(
        cmd_set("k", "v", Cond::Always, TtlChange::Keep, false),
        &volatile,
    );
    assert_eq!(e.mutations, [set("k", "v", Some(NOW.0 + 500))]);
    let e = eval(
        cmd_set("k", "v", Cond::Always, TtlChange::Persist, false),
        &volatile,
    );
    assert_eq!(e.mutations, [set("k", "v", None)]);
    let e = eval(
        cmd_set(
            "k",
            "v",
            Cond::Always,
            TtlChange::At(UnixMillis(NOW.0)),
            false,
        ),
        &volatile,
    );
    assert_eq!(e.mutations, [del("k")]);
}

#[test]
fn an_expired_key_is_absent_and_deleted_through_the_same_entry() {
    let expired = [("k", "old", Some(NOW.0), 0)];
    let e = eval(
        cmd_set("k", "new", Cond::IfPresent, TtlChange::Persist, true),
        &expired,
    );
    assert_eq!(e.answer, Ok(outcome(false, None, 0)));
    assert_eq!(e.mutations, [del("k")]);
    let e = eval(
        cmd_set("k", "new", Cond::IfAbsent, TtlChange::Persist, false),
        &expired,
    );
    assert_eq!(e.mutations, [set("k", "new", None)]);
    let e = eval(Command::IncrBy { key: b("k"), by: 2 }, &expired);
    assert_eq!(e.answer, Ok(outcome(true, None, 2)));
    assert_eq!(e.mutations, [set("k", "2", None)]);
}

#[test]
fn incr_parses_like_redis_and_errors_write_nothing() {
    for good in [
        "0",
        "-1",
        "9223372036854775807",
        "-9223372036854775808",
        "42",
    ] {
        assert!(parse_i64(good.as_bytes()).is_some(), "{good}");
    }
    for bad in [
        "",
        "-",
        "+1",
        " 1",
        "1 ",
        "01",
        "-0",
        "1.0",
        "9223372036854775808",
        "x",
    ] {
        assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
    }
    let e = eval(
        Command::IncrBy { key: b("k"), by: 1 },
        &[("k", "abc", None, 0), ("x", "1", Some(1), 0)],
    );
    assert_eq!(e.answer, Err(ErrorReply::NotAnInteger));
    assert!(e.mutations.is_empty());
    let e = eval(
        Command::IncrBy { key: b("k"), by: 1 },
        &[("k", "9223372036854775807", None, 0)],
    );
    assert_eq!(e.answer, Err(ErrorReply::Overflow));
    assert!(e.mutations.is_empty());
    let e = eval(
        Command::IncrBy {
            key: b("k"),
            by: -5,
        },
        &[("k", "3", Some(NOW.0 + 9), 0)],
    );
    assert_eq!(e.answer, Ok(outcome(true, None, -2)));
    assert_eq!(e.mutations, [set("k", "-2", Some(NOW.0 + 9))]);
}

#[test]
fn append_grows_within_the_value_limit() {
    let e = eval(
        Command::Append {
            key: b("k"),
            value: b("def"),
        },
        &[("k", "abc", None, 0)],
    );
    assert_eq!(e.answer, Ok(outcome(true, None, 6)));
    assert_eq!(e.mutations, [set("k", "abcdef", None)]);
    let e = eval(
        Command::Append {
            key: b("new"),
            value: b("x"),
        },
        &[],
    );
    assert_eq!(e.mutations, [set("new", "x", None)]);
    let e = evaluate(
        &Command::Append {
            key: b("k"),
            value: b("def"),
        },
        NOW,
        5,
        &state(&[("k", "abc", None, 0)]),
    );
    assert!(matches!(e.answer, Err(ErrorReply::Invalid { .. })));
    assert!(e.mutations.is_empty());
}

#[test]
fn mset_is_all_or_nothing_and_del_counts_each_key_once() {
    let pairs = vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))];
    let e = eval(
        Command::MSet {
            pairs: pairs.clone(),
            only_if_none_exist: true,
        },
        &[("b", "x", None, 0)],
    );
    assert_eq!(e.answer, Ok(outcome(false, None, 0)));
    assert!(e.mutations.is_empty());
    let e = eval(
        Command::MSet {
            pairs,
            only_if_none_exist: true,
        },
        &[],
    );
    assert_eq!(e.answer, Ok(outcome(true, None, 1)));
    assert_eq!(e.mutations, [set("a", "3", None), set("b", "2", None)]);
    let e = eval(
        Command::Delete {
            keys: vec![b("a"), b("a"), b("b"), b("gone"), b("old")],
        },
        &[
            ("a", "1", None, 0),
            ("b", "2", None, 0),
            ("old", "x", Some(1), 0),
        ],
    );
    assert_eq!(e.answer, Ok(outcome(true, None, 2)));
    assert_eq!(e.mutations, [del("a"), del("b"), del("old")]);
}

#[test]
fn expire_conditions_follow_redis() {
    let persistent = [("k", "v", None, 0)];
    let volatile = [("k", "v", Some(NOW.0 + 100), 0)];
    let expire = |ttl, cond| Command::Expire {
        key: b("k"),
        ttl,
        cond,
    };
    let later = TtlChange::AfterMs(200);
    let e = eval(expire(later, ExpireCond::IfNone), &persistent);
    assert_eq!(e.mutations, [set("k", "v", Some(NOW.0 + 200))]);
    assert!(e.answer.unwrap().applied);
    assert!(
        !eval(expire(later, ExpireCond::IfNone), &volatile)
            .answer
            .unwrap()
            .applied
    );
    assert!(
        !eval(expire(later, ExpireCond::IfSome), &persistent)
            .answer
            .unwrap()
            .applied
    );
    assert!(
        eval(expire(later, ExpireCond::IfLater), &volatile)
            .answer
            .unwrap()
            .applied
    );
    // No expiry is later than any: GT never applies to it, LT always.
    assert!(
        !eval(expire(later, ExpireCond::IfLater), &persistent)
            .answer
            .unwrap()
            .applied
    );
    assert!(
        eval(expire(later, ExpireCond::IfEarlier), &persistent)
            .answer
            .unwrap()
            .applied
    );
    assert!(
        !eval(expire(later, ExpireCond::IfEarlier), &volatile)
            .answer
            .unwrap()
            .applied
    );
    // XX LT: LT, on a key that has an expiry only.
    assert!(
        !eval(expire(later, ExpireCond::IfSomeAndEarlier), &persistent)
            .answer
            .unwrap()
            .applied
    );
    let sooner = TtlChange::AfterMs(1);
    assert!(
        eval(expire(sooner, ExpireCond::IfSomeAndEarlier), &volatile)
            .answer
            .unwrap()
            .applied
    );
    assert!(
        !eval(expire(later, ExpireCond::IfSomeAndEarlier), &volatile)
            .answer
            .unwrap()
            .applied
    );
    // PERSIST.
    let e = eval(expire(TtlChange::Persist, ExpireCond::Always), &volatile);
    assert_eq!(e.mutations, [set("k", "v", None)]);
    let e = eval(expire(TtlChange::Persist, ExpireCond::Always), &persistent);
    assert!(e.mutations.is_empty());
    assert!(!e.answer.unwrap().applied);
    // A time in the past deletes; a missing key is 0.
    let e = eval(
        expire(TtlChange::At(UnixMillis(5)), ExpireCond::Always),
        &persistent,
    );
    assert_eq!(e.mutations, [del("k")]);
    assert!(e.answer.unwrap().applied);
    let e = eval(expire(later, ExpireCond::Always), &[]);
    assert!(e.mutations.is_empty());
    assert!(!e.answer.unwrap().applied);
}

#[test]
fn getdel_and_getex_answer_the_value() {
    let e = eval(Command::GetDel { key: b("k") }, &[("k", "v", None, 0)]);
    assert_eq!(e.answer, Ok(outcome(true, Some(b("v")), 0)));
    assert_eq!(e.mutations, [del("k")]);
    let e = eval(
        Command::GetEx {
            key: b("k"),
            ttl: TtlChange::Keep,
        },
        &[("k", "v", Some(NOW.0 + 1), 0)],
    );
    assert_eq!(e.answer, Ok(outcome(true, Some(b("v")), 0)));
    assert!(e.mutations.is_empty());
    let e = eval(
        Command::GetEx {
            key: b("k"),
            ttl: TtlChange::Persist,
        },
        &[("k", "v", Some(NOW.0 + 1), 0)],
    );
    assert_eq!(e.mutations, [set("k", "v", None)]);
}

#[test]
fn the_newest_uncommitted_entry_read_is_reported() {
    let e = eval(
        Command::Delete {
            keys: vec![b("a"), b("b"), b("c")],
        },
        &[
            ("a", "1", None, 7),
            ("b", "2", None, 9),
            ("c", "3", None, 0),
        ],
    );
    assert_eq!(e.read_from, LogIndex(9));
}
