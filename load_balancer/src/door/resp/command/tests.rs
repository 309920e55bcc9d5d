use super::*;

fn conn() -> Conn {
    Conn::new(7, "127.0.0.1:5000".parse().unwrap(), None)
}

fn open() -> Facts {
    Facts {
        needs_login: false,
        sync_replicas: 1,
    }
}

fn args(words: &[&str]) -> Vec<Bytes> {
    words.iter().map(|w| Bytes::from(w.to_string())).collect()
}

fn now(plan: Plan) -> Resp {
    match plan {
        Plan::Now(resp) => resp,
        other => panic!("expected an answer at once, got {other:?}"),
    }
}

#[test]
fn commands_are_case_insensitive_and_map_to_ops() {
    let mut c = conn();
    match c.plan(&args(&["gEt", "k"]), &open()) {
        Plan::Forward { ops, shape } => {
            assert_eq!(ops, vec![Op::Get { key: "k".into() }]);
            assert_eq!(shape, Shape::Value);
        }
        other => panic!("{other:?}"),
    }
    match c.plan(&args(&["MGET", "a", "b"]), &open()) {
        Plan::Forward { ops, shape } => {
            assert_eq!(ops.len(), 2);
            assert_eq!(shape, Shape::Values);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_arity_and_unknown_commands_say_so_as_redis_does() {
    let mut c = conn();
    assert_eq!(
        now(c.plan(&args(&["GET"]), &open())),
        Resp::err("wrong number of arguments for 'get' command")
    );
    assert_eq!(
        now(c.plan(&args(&["FLUSHALL", "ASYNC"]), &open())),
        Resp::err("unknown command 'FLUSHALL', with args beginning with: 'ASYNC' ")
    );
    assert!(matches!(
        now(c.plan(&args(&["MULTI"]), &open())),
        Resp::Error(e) if e.contains("no transactions")
    ));
}

#[test]
fn select_accepts_only_database_zero() {
    let mut c = conn();
    assert_eq!(now(c.plan(&args(&["SELECT", "0"]), &open())), Resp::OK);
    assert_eq!(
        now(c.plan(&args(&["SELECT", "1"]), &open())),
        Resp::err("DB index is out of range")
    );
}

#[test]
fn hello_switches_protocol_and_names_the_connection() {
    let mut c = conn();
    let greeting = now(c.plan(&args(&["HELLO", "3", "SETNAME", "app"]), &open()));
    assert!(c.resp3);
    assert_eq!(c.name.as_deref(), Some("app"));
    let Resp::Map(pairs) = greeting else {
        panic!("not a map: {greeting:?}")
    };
    assert!(pairs.contains(&(Resp::text("proto"), Resp::Int(3))));
    assert!(pairs.contains(&(Resp::text("id"), Resp::Int(7))));
    assert_eq!(
        now(c.plan(&args(&["HELLO", "4"]), &open())),
        Resp::coded("NOPROTO", "unsupported protocol version")
    );
    assert_eq!(
        now(c.plan(&args(&["RESET"]), &open())),
        Resp::Simple("RESET")
    );
    assert!(!c.resp3);
    assert_eq!(c.name, None);
}

#[test]
fn a_balancer_with_users_refuses_until_login() {
    let facts = Facts {
        needs_login: true,
        sync_replicas: 1,
    };
    let mut c = conn();
    assert_eq!(
        now(c.plan(&args(&["GET", "k"]), &facts)),
        Resp::coded("NOAUTH", "Authentication required.")
    );
    match c.plan(&args(&["AUTH", "pw"]), &facts) {
        Plan::Login(login) => {
            assert_eq!(login.user, "default");
            assert_eq!(login.password, "pw");
        }
        other => panic!("{other:?}"),
    }
    match c.plan(&args(&["HELLO", "3", "AUTH", "ann", "pw"]), &facts) {
        Plan::Login(login) => {
            assert_eq!(login.user, "ann");
            assert!(matches!(login.then, AfterLogin::Hello { protocol: 3, .. }));
        }
        other => panic!("{other:?}"),
    }
    // Without users, AUTH is an error, as on a Redis with no password.
    let mut open_conn = conn();
    assert!(matches!(
        now(open_conn.plan(&args(&["AUTH", "pw"]), &open())),
        Resp::Error(e) if e.contains("without any password configured")
    ));
    // ... but `default` with any password is in, as Redis's nopass user.
    assert_eq!(
        now(open_conn.plan(&args(&["AUTH", "default", "x"]), &open())),
        Resp::OK
    );
    assert!(now(open_conn.plan(&args(&["AUTH", "ann", "x"]), &open())).is_error_text("WRONGPASS"));
    assert!(matches!(
        now(open_conn.plan(&args(&["HELLO", "3", "AUTH", "default", "x"]), &open())),
        Resp::Map(_)
    ));
    assert!(open_conn.resp3);
}

#[test]
fn client_subcommands_keep_the_connection_state() {
    let mut c = conn();
    assert_eq!(
        now(c.plan(&args(&["CLIENT", "GETNAME"]), &open())),
        Resp::Nil
    );
    assert_eq!(
        now(c.plan(&args(&["client", "setname", "w1"]), &open())),
        Resp::OK
    );
    assert_eq!(
        now(c.plan(&args(&["CLIENT", "GETNAME"]), &open())),
        Resp::text("w1")
    );
    assert!(
        now(c.plan(&args(&["CLIENT", "SETNAME", "a b"]), &open())).is_error_text("Client names")
    );
    assert_eq!(now(c.plan(&args(&["CLIENT", "ID"]), &open())), Resp::Int(7));
    assert_eq!(
        now(c.plan(
            &args(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
            &open()
        )),
        Resp::OK
    );
    assert!(now(c.plan(
        &args(&["CLIENT", "SETINFO", "LIB-VER", "1 name=x"]),
        &open()
    ))
    .is_error_text("cannot contain spaces"));
    let Resp::Verbatim(line) = now(c.plan(&args(&["CLIENT", "INFO"]), &open())) else {
        panic!("not text")
    };
    assert!(
        line.contains("id=7 ") && line.contains("name=w1 ") && line.contains("lib-name=redis-py")
    );
}

#[test]
fn replies_combine_into_redis_shapes() {
    let v = |s: &str| Reply::Value(Some(Bytes::from(s.to_string())));
    assert_eq!(
        combine(&Shape::Values, vec![v("1"), Reply::Value(None)]),
        Resp::Array(vec![Resp::text("1"), Resp::Nil])
    );
    assert_eq!(
        combine(&Shape::Count, vec![v("1"), Reply::Value(None), v("2")]),
        Resp::Int(2)
    );
    let unavailable = Reply::Error(ErrorReply::Unavailable {
        retry_after_ms: 100,
        reason: "electing".into(),
    });
    assert!(combine(&Shape::Values, vec![v("1"), unavailable]).is_error_text("TRYAGAIN"));
    let short = Reply::Error(ErrorReply::NotEnoughReplicas {
        acked: 0,
        required: 1,
    });
    assert!(combine(&Shape::Ok, vec![short]).is_error_text("NOREPLICAS"));
}

impl Resp {
    fn is_error_text(&self, part: &str) -> bool {
        matches!(self, Resp::Error(e) if e.contains(part))
    }
}
