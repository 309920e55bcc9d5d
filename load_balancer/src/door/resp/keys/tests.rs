use super::*;

fn args(words: &[&str]) -> Vec<Bytes> {
    words.iter().map(|w| Bytes::from(w.to_string())).collect()
}

fn command(words: &[&str]) -> (Command, Shape) {
    match plan(&words[0].to_ascii_lowercase(), &args(words)) {
        Some(Plan::Forward { mut ops, shape }) => match ops.pop() {
            Some(Op::Command(c)) => (c, shape),
            other => panic!("{words:?}: not a command: {other:?}"),
        },
        other => panic!("{words:?}: {other:?}"),
    }
}

fn error(words: &[&str]) -> String {
    match plan(&words[0].to_ascii_lowercase(), &args(words)) {
        Some(Plan::Now(Resp::Error(e))) => e,
        other => panic!("{words:?}: not an error: {other:?}"),
    }
}

#[test]
fn integers_parse_as_redis_parses_them() {
    assert_eq!(int_arg(b"-12"), Some(-12));
    assert_eq!(int_arg(b"9223372036854775807"), Some(i64::MAX));
    for bad in [
        &b"+1"[..],
        b" 1",
        b"01",
        b"-0",
        b"",
        b"-",
        b"9223372036854775808",
        b"1.5",
    ] {
        assert_eq!(int_arg(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn a_plain_set_stays_a_plain_write() {
    match plan("set", &args(&["SET", "k", "v"])) {
        Some(Plan::Forward { ops, shape }) => {
            assert!(matches!(ops[..], [Op::Set { .. }]));
            assert_eq!(shape, Shape::Ok);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn set_options_in_any_order() {
    let (c, shape) = command(&["SET", "k", "v", "px", "1500", "NX", "GET"]);
    assert_eq!(
        c,
        Command::Set {
            key: "k".into(),
            value: "v".into(),
            cond: Cond::IfAbsent,
            ttl: TtlChange::AfterMs(1500),
            get_old: true
        }
    );
    assert_eq!(shape, Shape::OldValue);
    let (c, shape) = command(&["SET", "k", "v", "XX", "KEEPTTL"]);
    assert!(matches!(
        c,
        Command::Set {
            cond: Cond::IfPresent,
            ttl: TtlChange::Keep,
            ..
        }
    ));
    assert_eq!(shape, Shape::SetResult);
    let (c, _) = command(&["SET", "k", "v", "EXAT", "2000000000"]);
    assert!(matches!(
        c,
        Command::Set {
            ttl: TtlChange::At(UnixMillis(2_000_000_000_000)),
            ..
        }
    ));
}

#[test]
fn bad_set_options_are_redis_errors() {
    assert_eq!(error(&["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
    assert_eq!(
        error(&["SET", "k", "v", "EX", "1", "PX", "1"]),
        "ERR syntax error"
    );
    assert_eq!(error(&["SET", "k", "v", "EX"]), "ERR syntax error");
    assert_eq!(
        error(&["SET", "k", "v", "KEEPTTL", "EX", "1"]),
        "ERR syntax error"
    );
    // A repeated option is Redis's too: the last one counts.
    let (c, _) = command(&["SET", "k", "v", "EX", "1", "EX", "2", "NX", "NX"]);
    assert!(matches!(
        c,
        Command::Set {
            cond: Cond::IfAbsent,
            ttl: TtlChange::AfterMs(2000),
            ..
        }
    ));
    assert_eq!(
        error(&["SET", "k", "v", "PX", "9223372036854775807"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(&["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(&["SET", "k", "v", "EX", "-5"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(&["SET", "k", "v", "EX", "9223372036854775807"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(&["SET", "k", "v", "EX", "ten"]),
        "ERR value is not an integer or out of range"
    );
}

#[test]
fn counters_and_their_edges() {
    let (c, shape) = command(&["DECRBY", "n", "5"]);
    assert_eq!(
        c,
        Command::IncrBy {
            key: "n".into(),
            by: -5
        }
    );
    assert_eq!(shape, Shape::Int);
    assert_eq!(
        error(&["DECRBY", "n", "-9223372036854775808"]),
        "ERR decrement would overflow"
    );
    assert_eq!(
        error(&["INCRBY", "n", "1.5"]),
        "ERR value is not an integer or out of range"
    );
}

#[test]
fn multi_key_writes_are_one_command() {
    let (c, shape) = command(&["MSET", "a", "1", "b", "2"]);
    assert_eq!(
        c,
        Command::MSet {
            pairs: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            only_if_none_exist: false
        }
    );
    assert_eq!(shape, Shape::Done);
    // An odd count is not an MSET.
    assert!(plan("mset", &args(&["MSET", "a", "1", "b"])).is_none());
    let (c, shape) = command(&["UNLINK", "a", "b", "a"]);
    assert_eq!(
        c,
        Command::Delete {
            keys: vec!["a".into(), "b".into(), "a".into()]
        }
    );
    assert_eq!(shape, Shape::Int);
}

#[test]
fn expire_variants() {
    let (c, _) = command(&["EXPIRE", "k", "10", "GT"]);
    assert_eq!(
        c,
        Command::Expire {
            key: "k".into(),
            ttl: TtlChange::AfterMs(10_000),
            cond: ExpireCond::IfLater
        }
    );
    // Past or negative: the leader deletes the key.
    let (c, _) = command(&["PEXPIRE", "k", "-1"]);
    assert!(matches!(
        c,
        Command::Expire {
            ttl: TtlChange::At(UnixMillis(0)),
            ..
        }
    ));
    let (c, _) = command(&["PEXPIREAT", "k", "1700000000000"]);
    assert!(matches!(
        c,
        Command::Expire {
            ttl: TtlChange::At(UnixMillis(1_700_000_000_000)),
            ..
        }
    ));
    assert_eq!(
        error(&["EXPIRE", "k", "10", "NX", "XX"]),
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        error(&["EXPIRE", "k", "10", "GT", "LT"]),
        "ERR GT and LT options at the same time are not compatible"
    );
    let (c, _) = command(&["EXPIRE", "k", "10", "XX", "GT"]);
    assert!(matches!(
        c,
        Command::Expire {
            cond: ExpireCond::IfLater,
            ..
        }
    ));
    let (c, _) = command(&["EXPIRE", "k", "10", "XX"]);
    assert!(matches!(
        c,
        Command::Expire {
            cond: ExpireCond::IfSome,
            ..
        }
    ));
    assert_eq!(
        error(&["EXPIRE", "k", "9223372036854775807"]),
        "ERR invalid expire time in 'expire' command"
    );
    let (c, shape) = command(&["PERSIST", "k"]);
    assert!(matches!(
        c,
        Command::Expire {
            ttl: TtlChange::Persist,
            ..
        }
    ));
    assert_eq!(shape, Shape::Applied);
}

#[test]
fn outcomes_become_redis_answers() {
    let o = |applied, value: Option<&str>, int| Outcome {
        index: semikv_protocol::ids::LogIndex(3),
        applied,
        value: value.map(|v| Bytes::from(v.to_string())),
        int,
    };
    assert_eq!(
        outcome(&Shape::SetResult, &o(false, None, 0)),
        Some(Resp::Nil)
    );
    assert_eq!(
        outcome(&Shape::SetResult, &o(true, None, 0)),
        Some(Resp::OK)
    );
    assert_eq!(
        outcome(&Shape::Applied, &o(true, None, 0)),
        Some(Resp::Int(1))
    );
    assert_eq!(
        outcome(&Shape::Int, &o(true, None, -7)),
        Some(Resp::Int(-7))
    );
    assert_eq!(
        outcome(&Shape::OldValue, &o(false, Some("old"), 0)),
        Some(Resp::text("old"))
    );
    assert_eq!(ttl(&KeyTtl::NoKey, false), Resp::Int(-2));
    assert_eq!(ttl(&KeyTtl::Persistent, true), Resp::Int(-1));
    let t = KeyTtl::Expires {
        at: UnixMillis(0),
        remaining_ms: 1499,
    };
    assert_eq!(ttl(&t, false), Resp::Int(1));
    assert_eq!(ttl(&t, true), Resp::Int(1499));
    let far = KeyTtl::Expires {
        at: UnixMillis(0),
        remaining_ms: u64::MAX,
    };
    assert_eq!(ttl(&far, false), Resp::Int(i64::MAX / 1000 + 1));
}
