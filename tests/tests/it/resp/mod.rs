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

mod client;
mod commands;
mod failover;
mod keyspace;
mod raw;

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
