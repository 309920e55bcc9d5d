//! The balancer's Redis-protocol door (`--resp`, issue #18) in front of three
//! real replicas: through the `redis` crate as a real third-party client,
//! and through plain sockets for what no client library sends (inline
//! commands, hostile lengths, garbage, half frames). Not meant for the
//! harness's secured mode: these tests pass their own users file or none.
//!
//! Reads may go to a follower that has not applied the latest write yet
//! (stale reads are allowed), so a test that reads back what it wrote first
//! waits for every replica to apply it ([`Door::settle`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Value};
use semikv_lb::users::{line_for, UserRole};
use semikv_tests::wait::POLL;
use semikv_tests::{Cluster, Deadline};

use crate::CONVERGE;

/// Bound on connecting to the door and on each read or write there.
const IO: Duration = Duration::from_secs(10);

/// Three replicas and a balancer with a RESP door, a leader elected.
struct Door {
    // Declared first: the processes die before the runtime that started
    // them goes.
    cluster: Cluster,
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
}

impl Door {
    /// The cluster with `extra` balancer flags; `login` is the user the
    /// fixture's own semikv-protocol connections log in as.
    fn start(extra: &[&str], login: Option<(&str, &str)>) -> Door {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut args = vec!["--resp", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cluster = rt.block_on(Cluster::with_balancer(3, &[], &args)).unwrap();
        if let Some((user, password)) = login {
            cluster.log_in_as(user, password);
        }
        let addr = cluster
            .balancer()
            .and_then(|b| b.resp)
            .expect("the ready file names the RESP door");
        let door = Door { cluster, addr, rt };
        door.settle();
        door
    }

    /// `redis://` URL of the door, with `rest` (credentials go before
    /// `@`, options after `/?`).
    fn url(&self, userinfo: &str, query: &str) -> String {
        format!("redis://{userinfo}{}/{query}", self.addr)
    }

    fn connect(&self) -> Connection {
        connect(&self.url("", ""))
    }

    /// Waits until every replica has applied every acknowledged write, so
    /// that any read through the door sees them.
    fn settle(&self) {
        let r = self.rt.block_on(self.cluster.wait_steady(CONVERGE));
        self.cluster.explain(r).unwrap();
    }
}

/// A connection to `url` whose every read and write is bounded by [`IO`].
fn connect(url: &str) -> Connection {
    try_connect(url).unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn try_connect(url: &str) -> redis::RedisResult<Connection> {
    let client = redis::Client::open(url)?;
    let con = client.get_connection_with_timeout(IO)?;
    con.set_read_timeout(Some(IO))?;
    con.set_write_timeout(Some(IO))?;
    Ok(con)
}

fn set(con: &mut Connection, key: &str, value: impl redis::ToRedisArgs) -> redis::RedisResult<()> {
    redis::cmd("SET").arg(key).arg(value).query(con)
}

fn get(con: &mut Connection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

/// SETs until one is acknowledged: the first write waits out an election
/// (`TRYAGAIN` until the balancer knows a leader).
fn set_until_ok(con: &mut Connection, key: &str, value: &str) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match set(con, key, value) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
                std::thread::sleep(POLL);
            }
            Err(e) => panic!("no SET acknowledged within {CONVERGE:?}: {e}"),
        }
    }
}

/// The error's text as the server sent it, code first.
fn said(e: &RedisError) -> String {
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or(""))
}

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
fn inline_commands_work_as_typed_into_telnet() {
    let door = Door::start(&[], None);
    set_until_ok(&mut door.connect(), "warmup", "1");
    let mut raw = Raw::connect(door.addr);
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_until_ends_with(b"\r\n"), b"+PONG\r\n");
    raw.send(b"SET k \"a b\"\r\n");
    assert_eq!(raw.read_until_ends_with(b"\r\n"), b"+OK\r\n");
    // Escapes inside double quotes, a bare `\n` as the line's end.
    raw.send(b"SET bin \"x\\x00\\r\\ny\"\n");
    assert_eq!(raw.read_until_ends_with(b"\r\n"), b"+OK\r\n");
    door.settle();
    raw.send(b"GET k\r\nGET bin\r\n");
    assert_eq!(
        raw.read_until_ends_with(b"x\0\r\ny\r\n"),
        b"$3\r\na b\r\n$5\r\nx\0\r\ny\r\n"
    );
}

#[test]
fn bad_input_costs_only_its_own_connection() {
    let mut door = Door::start(&[], None);
    let mut bystander = door.connect();
    set_until_ok(&mut bystander, "k", "before");
    let refused: [(&str, Vec<u8>, &str); 9] = [
        (
            "a 512 MiB bulk length",
            b"*1\r\n$536870912\r\n".to_vec(),
            "invalid bulk length",
        ),
        (
            "an array header past i32",
            b"*2147483648\r\n".to_vec(),
            "invalid multibulk length",
        ),
        (
            "a negative bulk length",
            b"*1\r\n$-5\r\n".to_vec(),
            "invalid bulk length",
        ),
        (
            "a count that is no number",
            b"*x\r\n".to_vec(),
            "invalid multibulk length",
        ),
        (
            "a header line longer than any valid one",
            [b"*".as_slice(), &[b'1'; 40]].concat(),
            "too big mbulk count string",
        ),
        (
            "an integer where a bulk string belongs",
            b"*1\r\n:5\r\n".to_vec(),
            "expected '$', got ':'",
        ),
        (
            "a bulk string not followed by CRLF",
            b"*1\r\n$3\r\nabcXY".to_vec(),
            "bulk string not followed by CRLF",
        ),
        (
            "an inline line of 64 KiB with no end",
            vec![b'a'; 64 * 1024],
            "too big inline request",
        ),
        (
            "unbalanced quotes",
            b"SET k \"open\r\n".to_vec(),
            "unbalanced quotes in request",
        ),
    ];
    for (case, bytes, why) in refused {
        let mut raw = Raw::connect(door.addr);
        raw.send(&bytes);
        let got = raw.read_to_close(case);
        assert_eq!(
            show(&got),
            show(format!("-ERR Protocol error: {why}\r\n").as_bytes()),
            "{case}"
        );
        still_serves(&mut bystander, case);
    }
    // Nothing of the refused SET was applied.
    door.settle();
    assert_eq!(get(&mut bystander, "k").as_deref(), Some(&b"before"[..]));

    // Bytes that are no command at all read as an unknown inline command,
    // as in Redis; that connection goes on.
    let mut raw = Raw::connect(door.addr);
    raw.send(b"\x00\x01\xfe garbage\r\nPING\r\n");
    let got = raw.read_until_ends_with(b"+PONG\r\n");
    assert!(got.starts_with(b"-ERR unknown command '"), "{}", show(&got));

    // A half frame, then the client goes: nothing to answer, nothing
    // applied.
    let mut raw = Raw::connect(door.addr);
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nhalf");
    raw.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(raw.read_to_close("a half frame"), b"");
    still_serves(&mut bystander, "a half frame");
    door.settle();
    assert_eq!(get(&mut bystander, "k").as_deref(), Some(&b"before"[..]));

    let balancer = &mut door.cluster.balancer_mut().unwrap().proc;
    assert!(balancer.is_running(), "{}", balancer.stderr_tail());
}

/// A slowloris client sends half a command and stalls: the door keeps
/// serving everyone else meanwhile. The door closes such a client after
/// the frame timeout, but `semikv-lb` has no flag to shorten it (30 s,
/// `DEFAULT_FRAME_TIMEOUT`): that close is tested in-process, with a short
/// timeout, in `load_balancer/tests/fake_cluster/resp.rs`.
#[test]
fn a_client_stalled_mid_command_holds_up_no_one_else() {
    let door = Door::start(&[], None);
    let mut bystander = door.connect();
    set_until_ok(&mut bystander, "k", "v");
    let mut stalled = Vec::new();
    for half in [
        &b"*2\r\n$3\r\nGET\r\n$1\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n$100\r\nabc",
        b"*3\r\n",
        b"GET k",
    ] {
        let mut raw = Raw::connect(door.addr);
        raw.send(half);
        stalled.push(raw);
    }
    for i in 0..50 {
        still_serves(&mut bystander, &format!("round {i} with stalled clients"));
        // A new client gets in too.
        let pong: String = redis::cmd("PING").query(&mut door.connect()).unwrap();
        assert_eq!(pong, "PONG");
    }
    // The stalled ones are still waiting, answered nothing.
    for raw in &mut stalled {
        raw.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut byte = [0u8; 1];
        match raw.stream.read(&mut byte) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("a stalled client got {other:?}"),
        }
    }
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

/// What the writer of the failover test saw.
#[derive(Debug, Default)]
struct Writes {
    /// Per key, the highest sequence number a SET of it was acknowledged
    /// with.
    acked: HashMap<String, u64>,
    /// The highest sequence number sent.
    sent: u64,
    /// When each acknowledged SET was sent, in order.
    ok_sent_at: Vec<Instant>,
    /// The errors it got, as said, with how often.
    errors: HashMap<String, usize>,
}

/// Keys the failover test's writer cycles through: each is overwritten
/// many times, so a read back may show a later value than the last one
/// acknowledged (a SET whose answer was lost), never an earlier one.
const FAILOVER_KEYS: u64 = 16;

#[test]
fn acknowledged_sets_survive_a_kill_9_of_the_leader() {
    let mut door = Door::start(&[], None);
    set_until_ok(&mut door.connect(), "warmup", "1");
    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, writes, stop) = (door.url("", ""), writes.clone(), stop.clone());
        std::thread::spawn(move || write_until(&url, &writes, &stop))
    };
    wait_acked(
        &writes,
        &door.cluster,
        100,
        None,
        "100 SETs acknowledged before the kill",
    );

    let leader = door.rt.block_on(door.cluster.leader_index()).unwrap();
    let leader = leader.expect("a replica leads");
    door.cluster.kill_replica(leader).unwrap();
    let killed = Instant::now();
    wait_acked(
        &writes,
        &door.cluster,
        1,
        Some(killed),
        "a SET sent after the kill acknowledged",
    );
    let back = writes
        .lock()
        .unwrap()
        .ok_sent_at
        .iter()
        .find(|t| **t > killed)
        .copied();
    // Writes flow again, not just one.
    wait_acked(
        &writes,
        &door.cluster,
        50,
        Some(killed),
        "50 SETs acknowledged after the kill",
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let writes = Arc::into_inner(writes).unwrap().into_inner().unwrap();
    eprintln!(
        "failover through the RESP door: first acknowledged SET sent {:?} after the kill; \
         {} SETs acknowledged, {} sent; errors: {:?}",
        back.map(|t| t.duration_since(killed)),
        writes.ok_sent_at.len(),
        writes.sent,
        writes.errors
    );
    let mut con = door.connect();
    for (key, &acked) in &writes.acked {
        // A follower that has not applied the last writes may answer:
        // the value must reach the acknowledged one, within a bound.
        let deadline = Deadline::new(CONVERGE, "an acknowledged SET to be read back");
        loop {
            let value = get(&mut con, key).expect("an acknowledged key is there");
            let seq: u64 = String::from_utf8(value).unwrap().parse().unwrap();
            assert!(seq <= writes.sent, "{key} holds {seq}, never sent");
            if seq >= acked {
                break;
            }
            if deadline.expired() {
                panic!("{key} holds {seq}, below the acknowledged {acked}");
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Waits until `n` SETs sent after `after` (or at all) were acknowledged,
/// at most [`CONVERGE`].
fn wait_acked(
    writes: &Mutex<Writes>,
    cluster: &Cluster,
    n: usize,
    after: Option<Instant>,
    what: &str,
) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let w = writes.lock().unwrap();
        let acked = w
            .ok_sent_at
            .iter()
            .filter(|t| after.is_none_or(|a| **t > a))
            .count();
        if acked >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {CONVERGE:?}: {acked} were; errors {:?}\n{}",
            w.errors,
            cluster.logs()
        );
        drop(w);
        std::thread::sleep(POLL);
    }
}

/// SETs `f{n % FAILOVER_KEYS}` to `n` for n = 1, 2, ... until `stop` (or
/// twice [`CONVERGE`]), recording what was acknowledged in `writes`. A
/// connection that fails or times out is replaced: an answer it still
/// owes could be taken for the next command's.
fn write_until(url: &str, writes: &Mutex<Writes>, stop: &AtomicBool) {
    let end = Instant::now() + 2 * CONVERGE;
    let mut con: Option<Connection> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let c = match con.as_mut() {
            Some(c) => c,
            None => match try_connect(url) {
                Ok(c) => con.insert(c),
                Err(e) => {
                    *writes
                        .lock()
                        .unwrap()
                        .errors
                        .entry(format!("connect: {e}"))
                        .or_default() += 1;
                    std::thread::sleep(POLL);
                    continue;
                }
            },
        };
        seq += 1;
        let key = format!("f{}", seq % FAILOVER_KEYS);
        writes.lock().unwrap().sent = seq;
        let sent_at = Instant::now();
        match set(c, &key, seq.to_string()) {
            Ok(()) => {
                let mut w = writes.lock().unwrap();
                w.acked.insert(key, seq);
                w.ok_sent_at.push(sent_at);
            }
            Err(e) => {
                let server_said = e.code().is_some();
                *writes.lock().unwrap().errors.entry(said(&e)).or_default() += 1;
                if !server_said {
                    con = None;
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Checks that the door still answers `con` (a client that did nothing
/// wrong) after `case`.
fn still_serves(con: &mut Connection, case: &str) {
    let pong: redis::RedisResult<String> = redis::cmd("PING").query(con);
    assert_eq!(pong.as_deref().ok(), Some("PONG"), "after {case}: {pong:?}");
    let got: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET").arg("missing").query(con);
    assert_eq!(got.ok(), Some(None), "after {case}");
}

/// A plain TCP connection to the door, every read and write bounded.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, IO).unwrap();
        stream.set_read_timeout(Some(IO)).unwrap();
        stream.set_write_timeout(Some(IO)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Everything that arrives until it ends with `end`.
    fn read_until_ends_with(&mut self, end: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + IO;
        let mut got = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while !got.ends_with(end) {
            assert!(Instant::now() < deadline, "no end after {}", show(&got));
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed after {}", show(&got)),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{e} after {}", show(&got)),
            }
        }
        got
    }

    /// Everything that arrives until the door closes the connection.
    fn read_to_close(&mut self, case: &str) -> Vec<u8> {
        let mut got = Vec::new();
        match self.stream.read_to_end(&mut got) {
            Ok(_) => got,
            Err(e) => panic!("{case}: not closed ({e}) after {}", show(&got)),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bytes as an escaped string, for messages.
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
