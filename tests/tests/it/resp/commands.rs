//! The key and string commands the leader evaluates (`Op::Command`):
//! conditional and read-modify-write answers, TTLs, expiry on every
//! replica, and conditional writes across a kill -9 of the leader.

use std::collections::HashSet;

use bytes::Bytes;
use semikv_protocol::{NodeRole, Role};
use semikv_tests::client::value;

use super::*;

/// Bound on an expired key disappearing from every replica, counted from
/// the moment it was read (before its 3 s expiry): the expiry, then the
/// sweeper (every 100 ms) and one log round trip, generously.
const EXPIRY: Duration = Duration::from_secs(15);

/// The command written as words, e.g. `"SET k v NX"`.
fn cmd(line: &str) -> redis::Cmd {
    let mut words = line.split_whitespace();
    let mut c = redis::cmd(words.next().expect("a command name"));
    for w in words {
        c.arg(w);
    }
    c
}

/// The answer to `line`, which must not be an error.
fn ask(con: &mut Connection, line: &str) -> Value {
    cmd(line)
        .query(con)
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// The error `line` is answered with, as said.
fn refused(con: &mut Connection, line: &str) -> String {
    match cmd(line).query::<Value>(con) {
        Ok(v) => panic!("{line}: answered {v:?}, not an error"),
        Err(e) => said(&e),
    }
}

fn int(con: &mut Connection, line: &str) -> i64 {
    match ask(con, line) {
        Value::Int(n) => n,
        other => panic!("{line}: answered {other:?}, not an integer"),
    }
}

fn bulk(bytes: &[u8]) -> Value {
    Value::BulkString(bytes.to_vec())
}

#[test]
fn conditional_and_read_modify_write_commands_answer_as_redis_does() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "k", "v1");
    let con = &mut con;

    // SET's conditions and GET.
    assert_eq!(ask(con, "SET k v2 NX"), Value::Nil, "NX on an existing key");
    assert_eq!(
        ask(con, "SET missing v XX"),
        Value::Nil,
        "XX on a missing key"
    );
    door.settle();
    assert_eq!(get(con, "k").as_deref(), Some(&b"v1"[..]), "NX left it");
    assert_eq!(get(con, "missing"), None, "XX wrote nothing");
    assert_eq!(ask(con, "SET k v3 GET"), bulk(b"v1"));
    assert_eq!(ask(con, "SET fresh v GET"), Value::Nil, "no old value");
    assert_eq!(ask(con, "SET k v4 XX GET"), bulk(b"v3"));
    assert_eq!(ask(con, "SET k v5 NX GET"), bulk(b"v4"), "NX not met");
    door.settle();
    assert_eq!(get(con, "k").as_deref(), Some(&b"v4"[..]));

    assert_eq!(int(con, "SETNX k x"), 0);
    assert_eq!(int(con, "SETNX n1 x"), 1);
    assert_eq!(ask(con, "GETSET k v6"), bulk(b"v4"));
    assert_eq!(ask(con, "GETSET gs x"), Value::Nil);
    assert_eq!(ask(con, "GETDEL k"), bulk(b"v6"));
    assert_eq!(ask(con, "GETDEL k"), Value::Nil, "already deleted");
    door.settle();
    assert_eq!(get(con, "k"), None, "GETDEL deleted it");
    assert_eq!(get(con, "n1").as_deref(), Some(&b"x"[..]), "SETNX wrote");
    assert_eq!(get(con, "gs").as_deref(), Some(&b"x"[..]), "GETSET wrote");

    // Multi-key writes.
    assert_eq!(ask(con, "MSET a 1 b 2 c 3"), Value::Okay);
    door.settle();
    assert_eq!(
        ask(con, "MGET a b c missing"),
        Value::Array(vec![bulk(b"1"), bulk(b"2"), bulk(b"3"), Value::Nil])
    );
    assert_eq!(int(con, "MSETNX d 4 a 9"), 0, "a exists");
    door.settle();
    assert_eq!(
        ask(con, "MGET d a"),
        Value::Array(vec![Value::Nil, bulk(b"1")]),
        "MSETNX is all or nothing"
    );
    assert_eq!(int(con, "MSETNX d 4 e 5"), 1);
    assert_eq!(
        int(con, "DEL a b a missing"),
        2,
        "a repeated key counts once"
    );
    assert_eq!(int(con, "UNLINK c d e"), 3);
    door.settle();
    assert_eq!(int(con, "EXISTS a b c d e"), 0);

    // Counters.
    assert_eq!(int(con, "INCR ctr"), 1, "a missing key counts from 0");
    assert_eq!(int(con, "INCRBY ctr 10"), 11);
    assert_eq!(int(con, "DECR ctr"), 10);
    assert_eq!(int(con, "DECRBY ctr 4"), 6);
    assert_eq!(int(con, "INCRBY ctr -7"), -1);
    set(con, "s", "abc").unwrap();
    assert_eq!(
        refused(con, "INCR s"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        refused(con, "INCRBY s 1"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        refused(con, "INCRBY ctr 1x"),
        "ERR value is not an integer or out of range",
        "an increment that is no integer"
    );
    assert_eq!(int(con, &format!("INCRBY max {}", i64::MAX)), i64::MAX);
    assert_eq!(
        refused(con, "INCR max"),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(int(con, &format!("DECRBY min {}", i64::MAX)), -i64::MAX);
    assert_eq!(
        refused(con, "DECRBY min 2"),
        "ERR increment or decrement would overflow"
    );
    door.settle();
    assert_eq!(
        get(con, "s").as_deref(),
        Some(&b"abc"[..]),
        "left as it was"
    );
    assert_eq!(get(con, "ctr").as_deref(), Some(&b"-1"[..]));
    let max = i64::MAX.to_string();
    assert_eq!(get(con, "max").as_deref(), Some(max.as_bytes()));

    // APPEND, STRLEN, TYPE.
    assert_eq!(int(con, "APPEND ap hello"), 5, "APPEND creates");
    assert_eq!(int(con, "APPEND ap _world"), 11);
    door.settle();
    assert_eq!(get(con, "ap").as_deref(), Some(&b"hello_world"[..]));
    assert_eq!(int(con, "STRLEN ap"), 11);
    assert_eq!(int(con, "STRLEN missing"), 0);
    let kind: String = cmd("TYPE ap").query(con).unwrap();
    assert_eq!(kind, "string");
    let kind: String = cmd("TYPE missing").query(con).unwrap();
    assert_eq!(kind, "none");

    // Binary values through the evaluated commands.
    let (one, two, three): (&[u8], &[u8], &[u8]) = (b"a\r\nb\0", b"\0\r\n", b"$3\r\n\0*");
    let old: Option<Vec<u8>> = redis::cmd("SET")
        .arg("bin")
        .arg(one)
        .arg("GET")
        .query(con)
        .unwrap();
    assert_eq!(old, None);
    let old: Option<Vec<u8>> = redis::cmd("GETSET").arg("bin").arg(two).query(con).unwrap();
    assert_eq!(old.as_deref(), Some(one));
    let len: i64 = redis::cmd("APPEND")
        .arg("bin")
        .arg(three)
        .query(con)
        .unwrap();
    assert_eq!(len, (two.len() + three.len()) as i64);
    door.settle();
    assert_eq!(get(con, "bin"), Some([two, three].concat()));
    assert_eq!(int(con, "STRLEN bin"), len);
}

#[test]
fn ttls_answer_as_redis_does() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "warmup", "1");
    let con = &mut con;

    assert_eq!(ask(con, "SET t v EX 100"), Value::Okay);
    door.settle();
    let ttl = int(con, "TTL t");
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let pttl = int(con, "PTTL t");
    assert!(pttl > 98_000 && pttl <= 100_000, "PTTL {pttl}");
    assert_eq!(int(con, "PERSIST t"), 1);
    assert_eq!(int(con, "PERSIST t"), 0, "no expiry left to remove");
    door.settle();
    assert_eq!(int(con, "TTL t"), -1);
    assert_eq!(int(con, "PTTL t"), -1);
    assert_eq!(int(con, "TTL missing"), -2);
    assert_eq!(int(con, "PTTL missing"), -2);

    let invalid = "ERR invalid expire time in 'set' command";
    for bad in ["EX 0", "EX -5", "PX 0", "EX 9223372036854775807"] {
        assert_eq!(refused(con, &format!("SET t w {bad}")), invalid, "{bad}");
    }
    door.settle();
    assert_eq!(
        get(con, "t").as_deref(),
        Some(&b"v"[..]),
        "refused SETs wrote nothing"
    );
    assert_eq!(int(con, "TTL t"), -1);

    // EXPIRE's conditions.
    assert_eq!(int(con, "EXPIRE t 100 XX"), 0, "XX without an expiry");
    assert_eq!(int(con, "EXPIRE t 100 NX"), 1);
    assert_eq!(int(con, "EXPIRE t 500 NX"), 0, "NX with an expiry");
    assert_eq!(int(con, "EXPIRE t 500 LT"), 0, "later, not earlier");
    assert_eq!(int(con, "EXPIRE t 50 GT"), 0, "earlier, not later");
    assert_eq!(int(con, "EXPIRE missing 10"), 0);
    door.settle();
    let ttl = int(con, "TTL t");
    assert!((99..=100).contains(&ttl), "refused EXPIREs kept TTL {ttl}");
    assert_eq!(int(con, "EXPIRE t 200 GT"), 1);
    door.settle();
    let ttl = int(con, "TTL t");
    assert!((199..=200).contains(&ttl), "TTL {ttl} after GT");
    // XX LT: earlier, and only on a key that has an expiry.
    assert_eq!(int(con, "EXPIRE t 300 XX LT"), 0, "later, not earlier");
    assert_eq!(int(con, "EXPIRE t 150 XX LT"), 1);
    set(con, "forever", "v").unwrap();
    assert_eq!(int(con, "EXPIRE forever 10 XX LT"), 0, "XX: no expiry");
    door.settle();
    assert_eq!(int(con, "TTL forever"), -1);
    let ttl = int(con, "TTL t");
    assert!((149..=150).contains(&ttl), "TTL {ttl} after XX LT");

    // A time already past deletes the key.
    assert_eq!(int(con, "EXPIRE t -1"), 1);
    door.settle();
    assert_eq!(get(con, "t"), None);
    assert_eq!(int(con, "EXISTS t"), 0);
    assert_eq!(int(con, "TTL t"), -2);
    set(con, "past", "v").unwrap();
    assert_eq!(int(con, "EXPIREAT past 1"), 1);
    assert_eq!(int(con, "PEXPIREAT gone 1"), 0, "no key, nothing to do");
    door.settle();
    assert_eq!(get(con, "past"), None);
    assert_eq!(int(con, "EXISTS past"), 0);
}

#[test]
fn an_expired_key_disappears_from_leader_and_followers() {
    let mut door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "warmup", "1");
    door.settle();
    let leader = door.rt.block_on(door.cluster.leader_index()).unwrap();
    let leader = leader.expect("a replica leads");

    // Nothing else writes from here on: the SET is the next entry, the
    // sweeper's delete the one after.
    let before = door.rt.block_on(status(&door.cluster, leader)).last_index;
    let sent = Instant::now();
    assert_eq!(ask(&mut con, "SET e v PX 3000"), Value::Okay);
    // The leader stamps the expiry after `sent`: a read started before
    // `sent` + 3 s can see the value (3 s, not less: a loaded 2-core CI
    // machine can take hundreds of milliseconds to answer the SET).
    let mut seen = false;
    while !seen && Instant::now() < sent + Duration::from_millis(3000) {
        seen = get(&mut con, "e").as_deref() == Some(&b"v"[..]);
    }
    assert!(
        seen,
        "the value was never read through the door before it expired"
    );

    let deadline = Deadline::new(EXPIRY, "the expired key gone from every replica");
    let mut holders = Vec::new();
    loop {
        let door_says = get(&mut con, "e");
        holders.clear();
        for i in 0..door.cluster.len() {
            if door
                .rt
                .block_on(read_replica(&door.cluster, i, "e"))
                .is_some()
            {
                holders.push(i);
            }
        }
        if door_says.is_none() && holders.is_empty() {
            break;
        }
        assert!(
            !deadline.expired(),
            "{EXPIRY:?} after SET e v PX 3000: the door reads {door_says:?}, \
             replicas {holders:?} still hold it\n{}",
            door.cluster.logs()
        );
        std::thread::sleep(POLL);
    }

    // The entry after the SET's is the leader's sweeper deleting the key
    // through the log; every replica applies it.
    let deadline = Deadline::new(EXPIRY, "the sweeper's delete applied everywhere");
    loop {
        let statuses: Vec<_> = (0..door.cluster.len())
            .map(|i| door.rt.block_on(status(&door.cluster, i)))
            .collect();
        let lead = &statuses[leader];
        let applied = lead.commit_index.0 >= before.0 + 2
            && statuses.iter().all(|s| {
                s.epoch == lead.epoch
                    && s.last_index == lead.last_index
                    && s.applied_index == lead.commit_index
            });
        if applied {
            assert_eq!(lead.role, NodeRole::Leader, "{statuses:?}");
            let leading = statuses.iter().filter(|s| s.role == NodeRole::Leader);
            assert_eq!(leading.count(), 1, "{statuses:?}");
            break;
        }
        assert!(
            !deadline.expired(),
            "no delete logged after the SET (log at {before:?} before it): {statuses:?}"
        );
        std::thread::sleep(POLL);
    }
    door.settle();
    assert_eq!(get(&mut con, "e"), None);
    assert_eq!(int(&mut con, "TTL e"), -2);
}

/// Replica `i`'s own status.
async fn status(cluster: &Cluster, i: usize) -> semikv_protocol::NodeStatus {
    let mut c = cluster.observe(i).await.unwrap();
    c.status().await.unwrap()
}

/// `key` as replica `i` itself reads it.
async fn read_replica(cluster: &Cluster, i: usize, key: &str) -> Option<Bytes> {
    let mut c = cluster.connect(i, Role::Client).await.unwrap();
    let reply = c.get(key.to_string()).await.unwrap();
    value(&reply).unwrap_or_else(|e| panic!("replica {i}: {e}"))
}

/// What the writer of the conditional failover test saw.
#[derive(Debug, Default)]
struct Conditional {
    /// `lock:<i>` keys whose `SET ... NX` was answered OK.
    nx_ok: Vec<u64>,
    /// ... answered nil (the key existed: never right, each is set once).
    nx_nil: Vec<u64>,
    /// NX keys sent so far (`0..nx_sent`).
    nx_sent: u64,
    /// INCRs sent, and the values the answered ones gave.
    incr_sent: u64,
    incr_values: Vec<i64>,
    /// When each OK'd NX was sent.
    ok_sent_at: Vec<Instant>,
    errors: HashMap<String, usize>,
}

#[test]
fn conditional_writes_apply_once_across_a_kill_9_of_the_leader() {
    let mut door = Door::start(&[], None);
    set_until_ok(&mut door.connect(), "warmup", "1");
    let seen = Arc::new(Mutex::new(Conditional::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, seen, stop) = (door.url("", ""), seen.clone(), stop.clone());
        std::thread::spawn(move || lock_and_count_until(&url, &seen, &stop))
    };
    wait_oks(&seen, &door.cluster, 50, None, "50 NX OKs before the kill");

    let leader = door.rt.block_on(door.cluster.leader_index()).unwrap();
    let leader = leader.expect("a replica leads");
    door.cluster.kill_replica(leader).unwrap();
    let killed = Instant::now();
    wait_oks(
        &seen,
        &door.cluster,
        30,
        Some(killed),
        "30 NX OKs after the kill",
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let seen = Arc::into_inner(seen).unwrap().into_inner().unwrap();
    eprintln!(
        "conditional writes across a failover: {} NX OK, {} nil, {} sent; \
         {} INCRs answered, {} sent; errors: {:?}",
        seen.nx_ok.len(),
        seen.nx_nil.len(),
        seen.nx_sent,
        seen.incr_values.len(),
        seen.incr_sent,
        seen.errors
    );

    let r = door.rt.block_on(door.cluster.restart_replica(leader));
    door.cluster.explain(r).unwrap();
    door.settle();
    let mut con = door.connect();
    let keys: Vec<String> = (0..seen.nx_sent).map(|i| format!("lock:{i}")).collect();
    let mut held: HashMap<u64, Vec<u8>> = HashMap::new();
    for (chunk, first) in keys.chunks(500).zip((0..).step_by(500)) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(chunk).query(&mut con).unwrap();
        for (value, i) in values.into_iter().zip(first..) {
            if let Some(v) = value {
                held.insert(i, v);
            }
        }
    }
    for i in &seen.nx_ok {
        assert_eq!(
            held.get(i).map(|v| String::from_utf8_lossy(v).into_owned()),
            Some(i.to_string()),
            "lock:{i} was answered OK"
        );
    }
    for i in &seen.nx_nil {
        assert_eq!(
            held.get(i),
            None,
            "lock:{i} was answered nil (not written) yet holds a value"
        );
    }
    assert!(
        seen.nx_nil.is_empty(),
        "SET NX of keys nobody else writes answered nil: {:?}",
        seen.nx_nil
    );
    for (i, v) in &held {
        assert_eq!(v, i.to_string().as_bytes(), "lock:{i}");
    }

    let counter: i64 = match get(&mut con, "counter") {
        Some(v) => String::from_utf8(v).unwrap().parse().unwrap(),
        None => 0,
    };
    let answered = seen.incr_values.len() as i64;
    assert!(
        counter >= answered && counter <= seen.incr_sent as i64,
        "counter {counter}: {answered} INCRs answered, {} sent",
        seen.incr_sent
    );
    let distinct: HashSet<i64> = seen.incr_values.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        seen.incr_values.len(),
        "two INCRs answered the same value"
    );
    assert!(
        seen.incr_values.iter().all(|v| *v <= counter && *v > 0),
        "an INCR answered a value the counter never reached ({counter})"
    );
}

/// Waits until `n` NXs sent after `after` (or at all) were answered OK, at
/// most [`CONVERGE`].
fn wait_oks(
    seen: &Mutex<Conditional>,
    cluster: &Cluster,
    n: usize,
    after: Option<Instant>,
    what: &str,
) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let s = seen.lock().unwrap();
        let oks = s
            .ok_sent_at
            .iter()
            .filter(|t| after.is_none_or(|a| **t > a))
            .count();
        if oks >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {CONVERGE:?}: {oks} were; errors {:?}\n{}",
            s.errors,
            cluster.logs()
        );
        drop(s);
        std::thread::sleep(POLL);
    }
}

/// For i = 0, 1, ...: `SET lock:<i> <i> NX` then `INCR counter`, until
/// `stop` (or twice [`CONVERGE`]). A connection that fails without the
/// server's word is replaced, as in the SET failover test.
fn lock_and_count_until(url: &str, seen: &Mutex<Conditional>, stop: &AtomicBool) {
    let end = Instant::now() + 2 * CONVERGE;
    let mut con: Option<Connection> = None;
    let mut i = 0u64;
    let mut incr_next = false;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let c = match con.as_mut() {
            Some(c) => c,
            None => match try_connect(url) {
                Ok(c) => con.insert(c),
                Err(e) => {
                    let mut s = seen.lock().unwrap();
                    *s.errors.entry(format!("connect: {e}")).or_default() += 1;
                    drop(s);
                    std::thread::sleep(POLL);
                    continue;
                }
            },
        };
        let sent_at = Instant::now();
        let answer = if incr_next {
            seen.lock().unwrap().incr_sent += 1;
            cmd("INCR counter").query::<i64>(c).map(|n| {
                seen.lock().unwrap().incr_values.push(n);
            })
        } else {
            seen.lock().unwrap().nx_sent = i + 1;
            let answer = redis::cmd("SET")
                .arg(format!("lock:{i}"))
                .arg(i)
                .arg("NX")
                .query::<Value>(c);
            let nx = i;
            i += 1;
            answer.map(|v| {
                let mut s = seen.lock().unwrap();
                match v {
                    Value::Okay => {
                        s.nx_ok.push(nx);
                        s.ok_sent_at.push(sent_at);
                    }
                    Value::Nil => s.nx_nil.push(nx),
                    other => panic!("SET lock:{nx} NX answered {other:?}"),
                }
            })
        };
        incr_next = !incr_next;
        if let Err(e) = answer {
            let server_said = e.code().is_some();
            *seen.lock().unwrap().errors.entry(said(&e)).or_default() += 1;
            if !server_said {
                con = None;
            }
            std::thread::sleep(POLL);
        }
    }
}
