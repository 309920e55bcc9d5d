//! Reads at each consistency level through real balancers (issue #19), each
//! promise checked where it could break:
//!
//! - `session`: connections that read their own key right after each
//!   acknowledged write, with the followers' streams slowed by the relays,
//!   never read an older value; the same workload read `stale` does (the
//!   test can fail), and its history fails the linearizability checker.
//! - A session's token from before a leader's kill -9 is honoured after it.
//! - `bounded:MS`: a follower whose stream is held is never read once a
//!   write it lacks is older than the bound.
//! - `linearizable`: a leader deposed by another balancer (which it has not
//!   heard of) answers no linearizable read; histories through leader kills,
//!   a frozen leader and a leader cut off from its followers are
//!   linearizable.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::{Consistency, LogIndex, Op, Read, ReadAnswer, Reply, Role};
use semikv_tests::checker::linear::check_linearizable;
use semikv_tests::checker::{Action, Event, Outcome};
use semikv_tests::relayed::RelayedBalancer;
use semikv_tests::workload::{classify, Workload, WorkloadConfig};
use semikv_tests::{Client, Cluster, Deadline};

use crate::CONVERGE;

/// How much each relay slows the followers' streams in the session test:
/// far longer than a read through the balancer takes on an idle machine.
const SLOW_STREAM: Duration = Duration::from_millis(25);

/// Writes each connection makes in the session test.
const ROUNDS: usize = 40;

/// Connections writing and reading back in the session test.
const WRITERS: usize = 4;

/// A get of `key` at `level`.
fn read(key: &Bytes, level: Consistency, after: LogIndex) -> Op {
    Op::Read(Read {
        op: Box::new(Op::Get { key: key.clone() }),
        level: Some(level),
        after,
    })
}

/// Three replicas behind one balancer (started with `args`) that knows them
/// through relays; waits for a leader and returns its index too.
async fn relayed(args: &[&str]) -> (Cluster, RelayedBalancer, usize) {
    let cluster = Cluster::replicas(3, &[]).await.unwrap();
    let relayed = RelayedBalancer::start(cluster.dir(), &cluster.replica_addrs(), args)
        .await
        .unwrap();
    let leader = wait_leader(&cluster, &relayed, None).await;
    (cluster, relayed, leader)
}

/// Waits until `relayed` routes writes to a replica other than `not`.
async fn wait_leader(cluster: &Cluster, relayed: &RelayedBalancer, not: Option<usize>) -> usize {
    let deadline = Deadline::new(CONVERGE, "the balancer to know a (new) leader");
    loop {
        if let Ok(Some(i)) = relayed.leader().await {
            if Some(i) != not {
                return i;
            }
        }
        if let Err(e) = deadline.tick().await {
            panic!("{e:#}\n{}{}", cluster.logs(), relayed.logs("balancer"));
        }
    }
}

/// Sets `key` to `value` through `c` until one set is acknowledged (the
/// first ones may meet an election); returns its index.
async fn set_acked(c: &mut Client, key: &Bytes, value: &str) -> LogIndex {
    let deadline = Deadline::new(CONVERGE, "a set to be acknowledged");
    loop {
        if let Ok(Reply::Written { index }) =
            c.set(key.clone(), Bytes::from(value.to_string())).await
        {
            return index;
        }
        deadline.tick().await.unwrap();
    }
}

/// What one connection of [`write_then_read`] saw.
#[derive(Debug, Default)]
struct Seen {
    history: Vec<Event>,
    /// Reads that returned something other than the connection's own last
    /// acknowledged write.
    older: usize,
    /// Reads that returned a value at all.
    reads: usize,
}

/// Sends `op` (which does `action` on `key`) through `c` as client `w`, and
/// records it as a history event.
async fn timed(c: &mut Client, w: usize, key: &Bytes, op: Op, action: Action) -> Event {
    let start = Instant::now();
    let reply = c.request(op).await.unwrap();
    let end = Instant::now();
    let (action, outcome, detail) = classify(action, reply);
    Event {
        client: w,
        key: key.clone(),
        action,
        start,
        end,
        outcome,
        detail,
    }
}

/// `WRITERS` connections to `addr`, each writing its own key `ROUNDS` times
/// and reading it back right after each acknowledgement, at `level` (`None`:
/// a plain get, at the balancer's default).
async fn write_then_read(addr: SocketAddr, prefix: &str, level: Option<Consistency>) -> Seen {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let key = Bytes::from(format!("{prefix}-{w}"));
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, Role::Client).await.unwrap();
            let mut seen = Seen::default();
            for n in 0..ROUNDS {
                let value = Bytes::from(format!("{w}-{n}"));
                let set = Op::Set {
                    key: key.clone(),
                    value: value.clone(),
                };
                let written = timed(&mut c, w, &key, set, Action::Set(value.clone())).await;
                let acked = written.outcome == Outcome::Ok;
                seen.history.push(written);
                if !acked {
                    continue;
                }
                let op = match level {
                    Some(level) => read(&key, level, LogIndex(0)),
                    None => Op::Get { key: key.clone() },
                };
                let got = timed(&mut c, w, &key, op, Action::Get(None)).await;
                if let (Outcome::Ok, Action::Get(got)) = (got.outcome, &got.action) {
                    seen.reads += 1;
                    if got.as_ref() != Some(&value) {
                        seen.older += 1;
                    }
                }
                seen.history.push(got);
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for task in tasks {
        let seen = task.await.unwrap();
        all.history.extend(seen.history);
        all.older += seen.older;
        all.reads += seen.reads;
    }
    all.history.sort_by_key(|e| e.start);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_never_miss_their_own_writes_while_stale_reads_do() {
    let (cluster, relayed, _) = relayed(&[]).await;
    // Followers reach the leader through its relay: every follower stream
    // is slowed, while the balancer's requests are not.
    for proxy in &relayed.proxies {
        proxy.set_role_delay(&[Role::Replica], SLOW_STREAM);
    }
    let session = write_then_read(relayed.addr(), "session", None).await;
    let stale = write_then_read(relayed.addr(), "stale", Some(Consistency::Stale)).await;
    let logs = || cluster.logs() + &relayed.logs("balancer");
    eprintln!(
        "consistency: session reads {} older {}; stale reads {} older {}",
        session.reads, session.older, stale.reads, stale.older
    );
    assert!(
        session.reads >= WRITERS * ROUNDS / 2,
        "too few reads answered\n{}",
        logs()
    );
    assert_eq!(
        session.older,
        0,
        "a session read missed its connection's own write\n{}",
        logs()
    );
    // Each key has one writer that reads it back: read-your-writes on it is
    // linearizability, which the checker confirms.
    let report = check_linearizable(&session.history);
    assert!(report.is_ok(), "{}", report.explain(&session.history));

    // The same workload read stale: the followers lag the acknowledgement
    // by the slowed stream, and the rotation sends two reads in three to
    // them.
    assert!(
        stale.older > 0,
        "no stale read among {} with followers {SLOW_STREAM:?} behind: the test cannot tell",
        stale.reads
    );
    let report = check_linearizable(&stale.history);
    assert!(
        !report.violations.is_empty(),
        "the checker passed a history with {} stale reads",
        stale.older
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_from_before_a_leader_kill_is_honoured_after_it() {
    let mut cluster = Cluster::with_balancer(3, &[], &[]).await.unwrap();
    let key = Bytes::from_static(b"token");
    let mut writer = cluster.connect_balancer().await.unwrap();
    set_acked(&mut writer, &key, "v0").await;
    let token = set_acked(&mut writer, &key, "v1").await;
    let leader = loop {
        if let Ok(Some(i)) = cluster.balancer_leader().await {
            break i;
        }
    };
    cluster.kill_replica(leader).unwrap();

    // Another connection (another process, say) carrying the token: its
    // read must reflect the write, whichever replica answers after the
    // failover.
    let mut reader = cluster.connect_balancer().await.unwrap();
    let deadline = Deadline::new(CONVERGE, "a read with the token after the failover");
    loop {
        let reply = reader
            .request(read(&key, Consistency::Session, token))
            .await
            .unwrap();
        match reply {
            Reply::Read(ReadAnswer { reply, index }) => {
                assert_eq!(
                    *reply,
                    Reply::Value(Some(Bytes::from_static(b"v1"))),
                    "{}",
                    cluster.logs()
                );
                assert!(index >= token, "answered at {index}, token {token}");
                break;
            }
            // The failover is not over yet.
            Reply::Error(semikv_protocol::ErrorReply::Unavailable { .. }) => {}
            other => panic!(
                "a read with the token answered {other:?}\n{}",
                cluster.logs()
            ),
        }
        if let Err(e) = deadline.tick().await {
            panic!("{e:#}\n{}", cluster.logs());
        }
    }
}

/// The balancer's status, read lag included.
async fn cluster_view(addr: SocketAddr) -> semikv_protocol::ClusterView {
    let mut c = Client::connect(addr, Role::Client).await.unwrap();
    match c.request(Op::Status).await.unwrap().into_cluster_view() {
        Ok(view) => view,
        Err(other) => panic!("status answered {other:?}"),
    }
}

/// The id replica `i` of `cluster` reports.
async fn id_of(cluster: &Cluster, i: usize) -> u32 {
    let mut c = cluster.connect(i, Role::Client).await.unwrap();
    c.status().await.unwrap().id.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_reads_never_use_a_follower_held_past_the_bound() {
    const BOUND: Duration = Duration::from_millis(300);
    let level = Consistency::Bounded {
        max_lag_ms: BOUND.as_millis() as u64,
    };
    let (cluster, relayed, leader) = relayed(&[]).await;
    let held = (leader + 1) % 3;
    let key = Bytes::from_static(b"bounded");
    let mut c = Client::connect(relayed.addr(), Role::Client).await.unwrap();
    let index = set_acked(&mut c, &key, "old").await;
    for i in 0..3 {
        let r = cluster.wait_applied(i, index).await;
        cluster.explain(r).unwrap();
    }

    // The held follower's stream from the leader stops; the other follower
    // keeps acknowledging, so writes commit.
    relayed.proxies[leader].hold_replica(id_of(&cluster, held).await);
    set_acked(&mut c, &key, "new").await;
    let acked = Instant::now();
    let logs = || cluster.logs() + &relayed.logs("balancer");

    // Every read that starts more than the bound after the write was
    // acknowledged must see it; earlier ones may not.
    let mut past_bound = 0;
    while acked.elapsed() < BOUND * 4 {
        let start = Instant::now();
        let reply = c.request(read(&key, level, LogIndex(0))).await.unwrap();
        let Reply::Read(ReadAnswer { reply, .. }) = reply else {
            panic!("a bounded read answered {reply:?}\n{}", logs());
        };
        if start.duration_since(acked) > BOUND {
            past_bound += 1;
            assert_eq!(
                *reply,
                Reply::Value(Some(Bytes::from_static(b"new"))),
                "a read {:?} after the write saw an older value\n{}",
                start.duration_since(acked),
                logs()
            );
        }
    }
    assert!(past_bound >= 10, "only {past_bound} reads past the bound");

    // Status shows the held follower's lag past the bound (or unknown).
    let view = cluster_view(relayed.addr()).await;
    let lag = view.lag_ms[held];
    assert!(
        lag.is_none_or(|ms| ms > BOUND.as_millis() as u64),
        "the held follower's read lag shows {lag:?}"
    );
    assert_eq!(view.lag_ms[leader], Some(0));

    // Released, it catches up, and its lag comes back under the bound.
    relayed.proxies[leader].release_replicas();
    let deadline = Deadline::new(CONVERGE, "the released follower's lag to fall");
    loop {
        let view = cluster_view(relayed.addr()).await;
        if view.lag_ms[held].is_some_and(|ms| ms < BOUND.as_millis() as u64) {
            break;
        }
        if let Err(e) = deadline.tick().await {
            panic!("{e:#}: {view:?}\n{}", logs());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_deposed_by_another_balancer_answers_no_linearizable_read() {
    let cluster = Cluster::replicas(3, &[]).await.unwrap();
    let mut balancers = Vec::new();
    // Balancer a checks its replicas every 5 s: for seconds
    // after b's election it still routes to the old leader, which no one
    // has told either.
    for (name, heartbeat) in [("lb-a", "5000"), ("lb-b", "100")] {
        let dir = cluster.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let args = [
            "--read-consistency",
            "linearizable",
            "--heartbeat-ms",
            heartbeat,
        ];
        balancers.push(
            RelayedBalancer::start(&dir, &cluster.replica_addrs(), &args)
                .await
                .unwrap(),
        );
    }
    let (a, b) = (&balancers[0], &balancers[1]);
    let logs = || cluster.logs() + &a.logs("balancer a") + &b.logs("balancer b");
    let old_leader = wait_leader(&cluster, a, None).await;
    let key = Bytes::from_static(b"lin");
    let mut through_a = Client::connect(a.addr(), Role::Client).await.unwrap();
    set_acked(&mut through_a, &key, "old").await;
    let mut direct = cluster.connect(old_leader, Role::Client).await.unwrap();

    // Balancer b loses the leader and elects another at a newer epoch,
    // fencing both followers; balancer a still reaches the old leader.
    b.proxies[old_leader].blackhole_all();
    let new_leader = wait_leader(&cluster, b, Some(old_leader)).await;
    let mut through_b = Client::connect(b.addr(), Role::Client).await.unwrap();
    set_acked(&mut through_b, &key, "new").await;
    let acked = Instant::now();

    // Every linearizable read that starts now must see "new" or be
    // refused: through either balancer, or straight at the old leader.
    let mut answered = 0;
    let mut refused = 0;
    let mut stale_old = 0;
    while acked.elapsed() < Duration::from_secs(3) {
        // What the old leader serves a stale read: the danger, while it
        // does not know it was deposed.
        if let Reply::Value(Some(v)) = direct.get(key.clone()).await.unwrap() {
            stale_old += usize::from(&v[..] == b"old");
        }
        let lin = read(&key, Consistency::Linearizable, LogIndex(0));
        let (via_a, via_b, straight) = tokio::join!(
            through_a.get(key.clone()),
            through_b.get(key.clone()),
            direct.request(lin),
        );
        for reply in [via_a.unwrap(), via_b.unwrap(), straight.unwrap()] {
            let value = match reply {
                Reply::Value(v) => v,
                Reply::Read(ReadAnswer { reply, .. }) => match *reply {
                    Reply::Value(v) => v,
                    other => panic!("a linearizable read answered {other:?}"),
                },
                Reply::Error(_) => {
                    refused += 1;
                    continue;
                }
                other => panic!("a get answered {other:?}"),
            };
            answered += 1;
            assert_eq!(
                value.as_deref(),
                Some(&b"new"[..]),
                "a linearizable read missed a write acknowledged before it began\n{}",
                logs()
            );
        }
    }
    eprintln!(
        "consistency: old leader {old_leader}, new {new_leader}: linearizable reads {answered} \
         answered, {refused} refused; stale reads of the old leader that saw the old value: \
         {stale_old}"
    );
    assert!(answered > 0, "no read was answered\n{}", logs());
    b.proxies[old_leader].heal();
}

/// Lets the workload run `more` acknowledged writes, or fails with logs.
async fn progress(workload: &Workload, cluster: &Cluster, relayed: &RelayedBalancer) {
    if let Err(e) = workload.wait_progress(20, CONVERGE).await {
        panic!("{e:#}\n{}{}", cluster.logs(), relayed.logs("balancer"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_histories_through_leader_kills_pauses_and_partitions() {
    let (mut cluster, relayed, _) = relayed(&["--read-consistency", "linearizable"]).await;
    let workload = Workload::start(
        relayed.addr(),
        WorkloadConfig {
            keys: 8,
            read_pct: 50,
            ..WorkloadConfig::default()
        },
    );
    progress(&workload, &cluster, &relayed).await;
    let mut faults = Vec::new();

    // kill -9 of the leader, restarted once another leads.
    let leader = wait_leader(&cluster, &relayed, None).await;
    cluster.kill_replica(leader).unwrap();
    faults.push("kill -9");
    let next = wait_leader(&cluster, &relayed, Some(leader)).await;
    progress(&workload, &cluster, &relayed).await;
    cluster.restart_replica(leader).await.unwrap();

    // The leader frozen past failure detection, resumed while deposed.
    cluster.replica_mut(next).proc.stop().unwrap();
    faults.push("SIGSTOP");
    wait_leader(&cluster, &relayed, Some(next)).await;
    progress(&workload, &cluster, &relayed).await;
    cluster.replica_mut(next).proc.cont().unwrap();
    progress(&workload, &cluster, &relayed).await;

    // The leader cut off from its followers while the balancer still
    // reaches it, until it is replaced.
    let cut = wait_leader(&cluster, &relayed, None).await;
    relayed.proxies[cut].blackhole(&[Role::Replica]);
    faults.push("partition from followers");
    wait_leader(&cluster, &relayed, Some(cut)).await;
    progress(&workload, &cluster, &relayed).await;
    relayed.proxies[cut].heal();
    progress(&workload, &cluster, &relayed).await;

    let history = workload.stop().await.unwrap();
    let report = check_linearizable(&history);
    let reads = history
        .iter()
        .filter(|e| matches!(e.action, Action::Get(_)) && e.outcome == Outcome::Ok)
        .count();
    eprintln!(
        "consistency: {} ops, {reads} reads answered, through {faults:?}: {report}",
        history.len()
    );
    assert!(reads > 0, "no read was answered");
    assert!(
        report.is_ok(),
        "{}\n{}{}",
        report.explain(&history),
        cluster.logs(),
        relayed.logs("balancer")
    );
}
