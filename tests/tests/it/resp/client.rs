//! The door through the `redis` crate: round trips, connection commands,
//! INFO, pipelining, RESP3, users.

use super::*;

#[test]
fn strings_round_trip_through_the_redis_crate() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "k", "v");
    set(&mut con, "empty", "").unwrap();
    let binary: &[u8] = b"a\r\nb\0c\r\n\0";
    set(&mut con, "binary", binary).unwrap();
    door.settle();

    assert_eq!(get(&mut con, "k").as_deref(), Some(&b"v"[..]));
    assert_eq!(get(&mut con, "missing"), None, "a missing key is nil");
    // `$0` and `$-1` are different answers: the empty value is there.
    assert_eq!(get(&mut con, "empty"), Some(Vec::new()));
    assert_eq!(get(&mut con, "binary").as_deref(), Some(binary));

    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&["k", "missing", "binary"])
        .query(&mut con)
        .unwrap();
    assert_eq!(
        values,
        vec![Some(b"v".to_vec()), None, Some(binary.to_vec())]
    );
    // Redis counts a key once per time it is named.
    let n: i64 = redis::cmd("EXISTS")
        .arg(&["k", "k", "missing", "empty"])
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 3);
}

#[test]
fn connection_commands_answer_as_redis_does() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let echo: Vec<u8> = redis::cmd("PING").arg("hi there").query(&mut con).unwrap();
    assert_eq!(echo, b"hi there");
    let echo: Vec<u8> = redis::cmd("ECHO")
        .arg(&b"\r\n\0"[..])
        .query(&mut con)
        .unwrap();
    assert_eq!(echo, b"\r\n\0");

    let () = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    let e = redis::cmd("SELECT")
        .arg(1)
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(said(&e), "ERR DB index is out of range");

    let () = redis::cmd("CLIENT")
        .arg(&["SETNAME", "resp-test"])
        .query(&mut con)
        .unwrap();
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name.as_deref(), Some("resp-test"));
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
    let other: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut door.connect())
        .unwrap();
    assert!(id > 0 && other != id, "ids {id} and {other}");

    let config: HashMap<String, String> = redis::cmd("CONFIG")
        .arg(&["GET", "save"])
        .query(&mut con)
        .unwrap();
    assert_eq!(config, HashMap::from([("save".into(), String::new())]));
    let config: HashMap<String, String> = redis::cmd("CONFIG")
        .arg(&["GET", "appendonly"])
        .query(&mut con)
        .unwrap();
    assert_eq!(config, HashMap::from([("appendonly".into(), "yes".into())]));

    // redis-cli asks for COMMAND DOCS at start: an answer, not a hang-up.
    let docs: Value = redis::cmd("COMMAND").arg("DOCS").query(&mut con).unwrap();
    assert!(matches!(docs, Value::Array(_) | Value::Map(_)), "{docs:?}");

    let e = redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(
        said(&e),
        "ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' "
    );
    // The same connection goes on.
    set_until_ok(&mut con, "after", "unknown");
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn info_replication_shows_the_leader_and_both_followers() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut con)
        .unwrap();
    let lines: Vec<&str> = info.lines().collect();
    assert!(lines.contains(&"role:master"), "{info}");
    assert!(lines.contains(&"connected_slaves:2"), "{info}");
    assert!(
        !info.contains("# Server"),
        "only the section asked for: {info}"
    );
}

#[test]
fn a_pipeline_of_1000_mixed_commands_answers_in_order() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "warmup", "1");
    const KEYS: usize = 100;
    let mut fill = redis::pipe();
    for j in 0..KEYS {
        fill.cmd("SET").arg(format!("p{j}")).arg(format!("v{j}"));
    }
    let () = fill.query(&mut con).unwrap();
    door.settle();

    // Answers the door makes at once (PING, ECHO, errors) between ones
    // that wait for a replica (GET, SET, MGET): each answer names its
    // command, so any reordering shows.
    let mut pipe = redis::pipe();
    let mut want = Vec::new();
    for i in 0..1000 {
        let j = i % KEYS;
        match i % 7 {
            0 => {
                pipe.cmd("SET").arg(format!("q{i}")).arg(i);
                want.push(Value::Okay);
            }
            1 => {
                pipe.cmd("GET").arg(format!("p{j}"));
                want.push(Value::BulkString(format!("v{j}").into_bytes()));
            }
            2 => {
                pipe.cmd("PING");
                want.push(Value::SimpleString("PONG".into()));
            }
            3 => {
                pipe.cmd("ECHO").arg(format!("e{i}"));
                want.push(Value::BulkString(format!("e{i}").into_bytes()));
            }
            4 => {
                pipe.cmd("MGET").arg(format!("p{j}")).arg("missing");
                want.push(Value::Array(vec![
                    Value::BulkString(format!("v{j}").into_bytes()),
                    Value::Nil,
                ]));
            }
            5 => {
                pipe.cmd("EXISTS").arg(format!("p{j}")).arg("missing");
                want.push(Value::Int(1));
            }
            _ => {
                pipe.cmd(&format!("NOSUCH{i}"));
                want.push(Value::Int(-1));
            }
        }
    }
    let got: Vec<Value> = pipe.ignore_errors().query(&mut con).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        match (got, want) {
            (Value::ServerError(e), Value::Int(-1)) => assert_eq!(
                e.details(),
                Some(&*format!(
                    "unknown command 'NOSUCH{i}', with args beginning with: "
                )),
                "answer {i}"
            ),
            _ => assert_eq!(got, want, "answer {i}"),
        }
    }
}

#[test]
fn hello_3_switches_the_connection_to_resp3() {
    let door = Door::start(&[], None);
    // The crate says HELLO 3 itself when asked for RESP3.
    let mut con = connect(&door.url("", "?protocol=resp3"));
    let hello: Value = redis::cmd("HELLO").arg(3).query(&mut con).unwrap();
    let Value::Map(pairs) = hello else {
        panic!("HELLO 3 answered {hello:?}")
    };
    let proto = pairs
        .iter()
        .find(|(k, _)| *k == Value::BulkString(b"proto".to_vec()))
        .map(|(_, v)| v.clone());
    assert_eq!(proto, Some(Value::Int(3)));
    let missing: Value = redis::cmd("GET").arg("missing").query(&mut con).unwrap();
    assert_eq!(missing, Value::Nil);
    let config: Value = redis::cmd("CONFIG")
        .arg(&["GET", "appendonly"])
        .query(&mut con)
        .unwrap();
    assert!(matches!(config, Value::Map(_)), "{config:?}");

    // The bytes themselves: a `%` map and a `_` nil after HELLO 3, and
    // RESP2's flat array and `$-1` again after HELLO 2.
    let mut raw = Raw::connect(door.addr);
    raw.send(b"HELLO 3\r\nGET missing\r\nCONFIG GET appendonly\r\nPING\r\n");
    let got = raw.read_until_ends_with(b"+PONG\r\n");
    assert!(got.starts_with(b"%7\r\n"), "{}", show(&got));
    assert!(contains(&got, b"$5\r\nproto\r\n:3\r\n"), "{}", show(&got));
    assert!(
        got.ends_with(b"_\r\n%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n+PONG\r\n"),
        "{}",
        show(&got)
    );
    raw.send(b"HELLO 2\r\nGET missing\r\nPING\r\n");
    let got = raw.read_until_ends_with(b"+PONG\r\n");
    assert!(got.starts_with(b"*14\r\n"), "{}", show(&got));
    assert!(got.ends_with(b"$-1\r\n+PONG\r\n"), "{}", show(&got));
}

#[test]
fn users_log_in_and_keep_to_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let lines = [
        line_for("alice", UserRole::Write, "alice-pw").unwrap(),
        line_for("bob", UserRole::Read, "bob-pw").unwrap(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let door = Door::start(
        &["--users-file", file.to_str().unwrap()],
        Some(("alice", "alice-pw")),
    );

    // The crate's connection set-up (CLIENT SETINFO) is refused too, and
    // ignored by the crate: the connection opens.
    let mut anonymous = door.connect();
    let e = redis::cmd("GET")
        .arg("k")
        .query::<Option<Vec<u8>>>(&mut anonymous)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOAUTH"), "{e}");
    let e = redis::cmd("AUTH")
        .arg(&["alice", "wrong"])
        .query::<()>(&mut anonymous)
        .unwrap_err();
    assert_eq!(e.code(), Some("WRONGPASS"), "{e}");
    let e = redis::cmd("SET")
        .arg(&["k", "v"])
        .query::<()>(&mut anonymous)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOAUTH"), "still not logged in: {e}");
    let () = redis::cmd("AUTH")
        .arg(&["alice", "alice-pw"])
        .query(&mut anonymous)
        .unwrap();
    set_until_ok(&mut anonymous, "k", "from alice");

    // Credentials in the URL: AUTH in RESP2, HELLO 3 AUTH in RESP3.
    let refused = try_connect(&door.url("alice:wrong@", "")).err();
    assert!(refused.is_some(), "a wrong password in the URL was let in");
    let mut alice = connect(&door.url("alice:alice-pw@", "?protocol=resp3"));
    set(&mut alice, "k2", "resp3").unwrap();
    door.settle();
    let mut bob = connect(&door.url("bob:bob-pw@", ""));
    assert_eq!(get(&mut bob, "k").as_deref(), Some(&b"from alice"[..]));
    assert_eq!(get(&mut bob, "k2").as_deref(), Some(&b"resp3"[..]));
    let e = set(&mut bob, "k", "bob was here").unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    assert!(said(&e).contains("role read"), "{}", said(&e));
    door.settle();
    assert_eq!(get(&mut bob, "k").as_deref(), Some(&b"from alice"[..]));
}

#[test]
fn reads_see_the_connections_own_writes_and_a_level_is_chosen_per_connection() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "warm", "up");
    // No settle: a session read never comes from a replica that has not
    // applied the connection's last write.
    for i in 0..100 {
        let value = format!("v{i}");
        set(&mut con, "mine", &value).unwrap();
        assert_eq!(get(&mut con, "mine"), Some(value.into_bytes()), "write {i}");
    }
    let level: String = redis::cmd("CLIENT")
        .arg("CONSISTENCY")
        .query(&mut con)
        .unwrap();
    assert_eq!(level, "default");
    // `stale` and `bounded` reads may come from a follower that has not
    // applied "warm" yet: let every replica catch up first.
    door.settle();
    for level in ["linearizable", "bounded:500", "stale", "session", "default"] {
        let () = redis::cmd("CLIENT")
            .arg(&["CONSISTENCY", level])
            .query(&mut con)
            .unwrap();
        let now: String = redis::cmd("CLIENT")
            .arg("CONSISTENCY")
            .query(&mut con)
            .unwrap();
        assert_eq!(now, level);
        assert_eq!(
            get(&mut con, "warm").as_deref(),
            Some(&b"up"[..]),
            "{level}"
        );
    }
    let () = redis::cmd("CLIENT")
        .arg(&["CONSISTENCY", "linearizable"])
        .query(&mut con)
        .unwrap();
    for i in 0..20 {
        let value = format!("l{i}");
        set(&mut con, "mine", &value).unwrap();
        assert_eq!(get(&mut con, "mine"), Some(value.into_bytes()));
    }
    let e = redis::cmd("CLIENT")
        .arg(&["CONSISTENCY", "strong"])
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(
        said(&e).contains("unknown consistency level"),
        "{}",
        said(&e)
    );
    let e = redis::cmd("CLIENT")
        .arg(&["CONSISTENCY", "stale", "extra"])
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(
        said(&e).contains("wrong number of arguments"),
        "{}",
        said(&e)
    );
}
