//! `SCAN`, `KEYS`, `DBSIZE` and INFO's keyspace line through the RESP door,
//! against three real replicas: every key present throughout a scan comes
//! back exactly once however its pages are spread over the replicas and
//! whatever is written between them, and the redis crate's own scan
//! iterator (which parses the cursor as an integer) works unchanged.

use std::collections::BTreeSet;

use redis::TypedCommands;

use super::*;

fn keys_of(value: Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::BulkString(b) => String::from_utf8(b).unwrap(),
                other => panic!("a key as {other:?}"),
            })
            .collect(),
        other => panic!("keys as {other:?}"),
    }
}

/// One SCAN page: the next cursor and the keys.
fn scan(con: &mut Connection, cursor: u64, options: &[&str]) -> (u64, Vec<String>) {
    let mut c = redis::cmd("SCAN");
    c.arg(cursor);
    for o in options {
        c.arg(*o);
    }
    match c.query::<Value>(con).unwrap() {
        Value::Array(mut parts) if parts.len() == 2 => {
            let keys = keys_of(parts.pop().unwrap());
            let cursor = match parts.pop().unwrap() {
                Value::BulkString(b) => String::from_utf8(b).unwrap().parse().unwrap(),
                other => panic!("a cursor as {other:?}"),
            };
            (cursor, keys)
        }
        other => panic!("SCAN answered {other:?}"),
    }
}

#[test]
fn scan_keys_and_dbsize_see_every_key_once() {
    let door = Door::start(&[], None);
    let mut con = door.connect();
    set_until_ok(&mut con, "user:0", "v");
    let mut pipe = redis::pipe();
    for i in 1..300 {
        pipe.cmd("SET").arg(format!("user:{i}")).arg("v").ignore();
    }
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("other:{i}")).arg("v").ignore();
    }
    pipe.cmd("SET")
        .arg("soon")
        .arg("v")
        .arg("PX")
        .arg(600_000)
        .ignore();
    pipe.query::<()>(&mut con).unwrap();
    door.settle();

    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(dbsize, 351);
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut con).unwrap();
    assert!(
        info.contains("db0:keys=351,expires=1,avg_ttl=0"),
        "INFO keyspace: {info:?}"
    );

    // A whole scan in pages of 10, writing new keys and deleting keys
    // outside the checked set between pages.
    let mut seen = Vec::new();
    let (mut cursor, mut pages) = (0, 0);
    loop {
        let (next, keys) = scan(&mut con, cursor, &["MATCH", "user:*", "COUNT", "10"]);
        assert!(keys.iter().all(|k| k.starts_with("user:")), "{keys:?}");
        seen.extend(keys);
        redis::cmd("SET")
            .arg(format!("late:{pages}"))
            .arg("v")
            .query::<()>(&mut con)
            .unwrap();
        redis::cmd("DEL")
            .arg(format!("other:{pages}"))
            .query::<i64>(&mut con)
            .unwrap();
        pages += 1;
        assert!(pages < 1000, "a scan that does not end");
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a key returned twice");
    assert_eq!(unique.len(), 300, "every user: key, once");
    // COUNT is the work per page: about 351 / 10 pages, not one per key.
    assert!((20..=60).contains(&pages), "{pages} pages");

    // The client library's own iterator parses the cursor as a number.
    door.settle();
    let iterated: BTreeSet<String> = con
        .scan_match::<_, String>("late:*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(iterated.len(), pages);

    let mut keys = keys_of(redis::cmd("KEYS").arg("user:1?").query(&mut con).unwrap());
    keys.sort();
    let expected: Vec<String> = (10..20).map(|i| format!("user:{i}")).collect();
    assert_eq!(keys, expected);
    let all = keys_of(redis::cmd("KEYS").arg("*").query(&mut con).unwrap());
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(all.len() as i64, dbsize);

    // Only strings exist; bad arguments get Redis's errors and the
    // connection goes on.
    assert_eq!(scan(&mut con, 0, &["TYPE", "hash"]), (0, vec![]));
    let con = &mut con;
    for (line, error) in [
        ("SCAN x", "ERR invalid cursor"),
        ("SCAN 0 COUNT 0", "ERR syntax error"),
        ("SCAN 0 COUNT", "ERR syntax error"),
        ("SCAN 0 BOGUS 1", "ERR syntax error"),
        ("KEYS", "ERR wrong number of arguments for 'keys' command"),
    ] {
        let mut words = line.split_whitespace();
        let mut c = redis::cmd(words.next().unwrap());
        for w in words {
            c.arg(w);
        }
        let e = c.query::<Value>(con).unwrap_err();
        assert_eq!(said(&e), error, "{line}");
    }
    still_serves(con, "bad SCAN and KEYS arguments");
}
