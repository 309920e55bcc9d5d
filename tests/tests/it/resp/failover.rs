//! A leader killed while a redis client keeps SETting through the door.

use super::*;

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
