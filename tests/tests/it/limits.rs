//! Floods cost a bounded amount (issue #16, connections): past its
//! connection limit a listener refuses new connections with a
//! `TooManyConnections` frame and closes them, so a flood can no longer
//! take the descriptors a replica needs for its write-ahead log (before,
//! about 20,000 idle connections made the leader exit on "Too many open
//! files" while syncing its log directory). Clients connected before the
//! flood keep being served, and new ones get in once it ends. A client
//! that never reads its answers is disconnected at its output limit.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use futures::StreamExt;
use semikv_protocol::{Message, MessageCodec, Reply, Role, WireError};
use semikv_tests::{start_replica_with_open_files, Client, Cluster};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::promote_single;

/// How long a flooding connection waits to be refused; an admitted one
/// gets nothing (it never says Hello, and the handshake timeout is 10 s)
/// and is counted as admitted. Generous: on a loaded 2-core machine a
/// refusal can take seconds to arrive.
const REFUSAL_WAIT: Duration = Duration::from_secs(6);

/// Opens `n` connections to `addr` that never say Hello, and returns them
/// with how many were refused: told `TooManyConnections`, or closed (a
/// refusal whose frame the socket did not take, or a connection in a slot
/// kept for peers that did not say Hello in time).
async fn flood(addr: SocketAddr, n: usize) -> (Vec<FramedRead<TcpStream, MessageCodec>>, usize) {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect during the flood");
        conns.push(FramedRead::new(stream, MessageCodec::default()));
    }
    let told = join_all(conns.iter_mut().map(|c| async move {
        match tokio::time::timeout(REFUSAL_WAIT, c.next()).await {
            Ok(Some(Ok(Message::Reject(WireError::TooManyConnections { .. }))) | None) => true,
            Ok(Some(Err(_))) => true,
            Ok(Some(Ok(_))) | Err(_) => false,
        }
    }))
    .await;
    let refused = told.iter().filter(|&&t| t).count();
    (conns, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_cannot_take_the_descriptors_a_replica_writes_with() {
    let dir = tempfile::tempdir().unwrap();
    // 256 open files: the default limit is then 256 - 128 = 128 connections.
    // Small snapshots make the replica open files and sync its log
    // directory all along (a snapshot, then the log segments it covers
    // deleted): what failed when a flood had taken every descriptor.
    let mut replica = start_replica_with_open_files(
        1,
        &dir.path().join("replica-1"),
        256,
        &["--snapshot-bytes", "4096"],
    )
    .await
    .unwrap();
    promote_single(replica.addr, 1).await.unwrap();
    let mut client = Client::connect(replica.addr, Role::Client).await.unwrap();

    let (flooders, refused) = flood(replica.addr, 400).await;
    assert!(
        refused >= 400 - 128,
        "only {refused} of 400 connections were refused"
    );
    // Every write still reaches the disk (fsync always) and is acknowledged,
    // through several snapshots.
    for i in 0..300 {
        let reply = client.set(format!("k{i}"), "v".repeat(100)).await.unwrap();
        assert!(
            matches!(reply, Reply::Written { .. }),
            "{reply:?}\n{}",
            replica.proc.stderr_tail()
        );
    }
    assert!(replica.proc.is_running(), "{}", replica.proc.stderr_tail());
    // The process never ran out of descriptors (without the limit, its
    // accepts failed with EMFILE here, and so would any file it opened).
    let log = replica.proc.stderr_tail();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        replica
            .proc
            .stderr_tail()
            .contains("connection limit reached"),
        "the refusal is logged"
    );
    // Once the flood ends, new clients get in again.
    drop(flooders);
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "a new client to be admitted");
    loop {
        if let Ok(mut c) = Client::connect(replica.addr, Role::Client).await {
            if matches!(c.get("k0").await, Ok(Reply::Value(Some(_)))) {
                break;
            }
        }
        deadline.tick().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_refuses_clients_past_its_limit_and_serves_the_others() {
    let cluster = Cluster::with_balancer(3, &[], &["--max-connections", "20"])
        .await
        .unwrap();
    let mut client = cluster.connect_balancer().await.unwrap();
    let r = client
        .set_until_acked("before", "flood", crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();

    let (flooders, refused) = flood(cluster.balancer_addr(), 60).await;
    // 20 slots: the client above holds one.
    assert!(refused >= 60 - 19, "only {refused} of 60 were refused");
    let reply = client.set("during", "flood").await.unwrap();
    assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");

    drop(flooders);
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "a new client to be admitted");
    loop {
        if let Ok(mut c) = cluster.connect_balancer().await {
            if matches!(c.get("during").await, Ok(Reply::Value(Some(_)))) {
                break;
            }
        }
        deadline.tick().await.unwrap();
    }
}

/// A client that pipelines reads of a large value and never reads its
/// answers (the report: 4,096 gets of an 8 MiB value took the balancer from
/// 569 MiB to 3.7 GB) is disconnected once its unread answers pass
/// `--max-client-output`; its window keeps what is forwarded for it under
/// twice that, so the balancer's peak memory stays far below what the
/// answers would take, and other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_at_its_output_limit() {
    const VALUE: usize = 256 * 1024;
    const GETS: usize = 1024; // 256 MiB of answers
                              // Raised to the frame limit (16 MiB) by the balancer: one answer alone
                              // never trips it.
    const LIMIT: usize = 4 * 1024 * 1024;
    let cluster = Cluster::with_balancer(3, &[], &["--max-client-output", &LIMIT.to_string()])
        .await
        .unwrap();
    let mut client = cluster.connect_balancer().await.unwrap();
    let value = "v".repeat(VALUE);
    let r = client
        .set_until_acked("big", value.as_str(), crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();
    let balancer = cluster.balancer().expect("a balancer");
    // A client that reads gets far more than the limit, one answer after
    // another: what it read is no longer charged to it.
    for _ in 0..100 {
        let reply = client.get("big").await.unwrap();
        assert!(
            matches!(&reply, Reply::Value(Some(v)) if v.len() == VALUE),
            "{reply:?}"
        );
    }
    let peak_before = balancer.proc.peak_rss_bytes().unwrap();
    let written_before = replicas_written(&cluster).await;

    let mut greedy = Client::connect(cluster.balancer_addr(), Role::Client)
        .await
        .unwrap();
    for _ in 0..GETS {
        if greedy
            .send(semikv_protocol::Op::Get { key: "big".into() })
            .await
            .is_err()
        {
            break; // already disconnected
        }
    }
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "the output limit to be logged");
    while balancer.proc.count_logged("past the output limit").unwrap() == 0 {
        deadline.tick().await.unwrap();
    }
    // Served throughout.
    let reply = client.get("big").await.unwrap();
    assert!(
        matches!(&reply, Reply::Value(Some(v)) if v.len() == VALUE),
        "{reply:?}"
    );
    // What the greedy client finally reads ends early: the connection was
    // closed with most of its answers never sent.
    let mut answered = 0usize;
    while let Ok(Some(Message::Response(_))) = greedy.recv_message(Duration::from_secs(10)).await {
        answered += 1;
    }
    assert!(
        answered < GETS / 2,
        "{answered} of {GETS} answers were kept for it"
    );
    let peak_after = balancer.proc.peak_rss_bytes().unwrap();
    let grew = peak_after.saturating_sub(peak_before);
    // What the replicas sent back for it: only what its window let through
    // (before the window, all 1,024 answers crossed the replica links, and
    // other clients' answers queued behind them for seconds).
    let sent = replicas_written(&cluster)
        .await
        .saturating_sub(written_before);
    eprintln!("greedy client: the replicas wrote {} MiB", sent >> 20);
    // The window (twice the 16 MiB limit) plus what the kernel's socket
    // buffers take before the balancer's writes block (up to tcp_wmem's
    // and tcp_rmem's maxima: 4 + 32 MiB on a stock Linux), with slack for
    // a loaded machine: 36 MiB alone, 64 MiB seen under the whole suite.
    assert!(
        sent < 128 * 1024 * 1024,
        "the replicas sent {} MiB of answers for a client cut off at 16 MiB",
        sent >> 20
    );
    eprintln!(
        "greedy client: {answered} of {GETS} answers sent before the close; balancer peak memory {} MiB -> {} MiB",
        peak_before >> 20,
        peak_after >> 20
    );
    // The limit (16 MiB, the frame limit) queued, at most as much again
    // forwarded behind it (the window is twice the limit), and slack for
    // buffers and the allocator: far from the 256 MiB of its answers, or
    // the +300 MiB it grew without a limit.
    assert!(
        grew < 96 * 1024 * 1024,
        "the balancer's peak memory grew by {} MiB for one greedy client (its answers: {} MiB)",
        grew >> 20,
        (GETS * VALUE) >> 20
    );
}

/// Bytes every replica of `cluster` wrote so far, once they have stopped
/// writing (less than 64 KiB more over 300 ms: health checks write a
/// little all the time). Bounded by [`crate::CONVERGE`].
async fn replicas_written(cluster: &Cluster) -> u64 {
    let total = || {
        (0..cluster.len())
            .map(|i| cluster.replica(i).proc.written_bytes().unwrap())
            .sum::<u64>()
    };
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "the replicas to stop writing");
    let mut last = total();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = total();
        if now.saturating_sub(last) < 64 * 1024 {
            return now;
        }
        last = now;
        assert!(!deadline.expired(), "the replicas never stopped writing");
    }
}

/// Waits (bounded) for `conn`, opened at `opened`, to be closed by its
/// peer; how long after `opened` that was.
async fn closed_after(conn: &mut Client, opened: std::time::Instant, bound: Duration) -> Duration {
    match conn.recv_message(bound).await {
        Ok(None) | Err(_) if opened.elapsed() < bound => opened.elapsed(),
        Ok(Some(other)) => panic!("an idle connection was sent {other:?}"),
        _ => panic!("an idle connection was still open after {bound:?}"),
    }
}

/// `--idle-timeout-secs` (off by default, like Redis's `timeout 0`): a
/// client connection with nothing in flight and nothing sent for that long
/// is closed, on the balancer and on a replica; a busy client is not, and
/// neither are the balancer's links nor the followers' streams, however
/// long they stay quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_when_asked_and_busy_ones_and_internal_links_are_not() {
    let idle = ["--idle-timeout-secs", "1"];
    let cluster = Cluster::with_balancer(3, &idle, &idle).await.unwrap();
    let mut busy = cluster.connect_balancer().await.unwrap();
    let r = busy.set_until_acked("k", "v", crate::CONVERGE).await;
    cluster.explain(r).unwrap();

    // Each follower logs this once per stream it opens to its leader.
    let streams_opened = |cluster: &Cluster| -> Vec<usize> {
        (0..cluster.len())
            .map(|i| {
                cluster
                    .replica(i)
                    .proc
                    .count_logged("following leader")
                    .unwrap()
            })
            .collect()
    };
    // Every follower has opened its stream before counting.
    let leader = cluster.wait_steady(crate::CONVERGE).await.unwrap();
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "both followers streaming");
    let streams_before = loop {
        let opened = streams_opened(&cluster);
        if (0..cluster.len()).all(|i| i == leader || opened[i] > 0) {
            break opened;
        }
        deadline.tick().await.unwrap();
    };
    let mut idle_on_balancer = Client::connect(cluster.balancer_addr(), Role::Client)
        .await
        .unwrap();
    let opened_on_balancer = std::time::Instant::now();
    let mut idle_on_replica = cluster.connect(0, Role::Client).await.unwrap();
    let opened_on_replica = std::time::Instant::now();
    let bound = Duration::from_secs(20);
    let waiting = async {
        let on_balancer = closed_after(&mut idle_on_balancer, opened_on_balancer, bound).await;
        let on_replica = closed_after(&mut idle_on_replica, opened_on_replica, bound).await;
        (on_balancer, on_replica)
    };
    let pinging = async {
        // Busy for longer than the timeout: a request every 200 ms.
        for _ in 0..15 {
            let reply = busy.ping().await.unwrap();
            assert_eq!(reply, Reply::Pong);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ((on_balancer, on_replica), ()) = tokio::join!(waiting, pinging);
    assert!(
        on_balancer >= Duration::from_millis(900),
        "closed after {on_balancer:?}, before its timeout"
    );
    assert!(on_replica >= Duration::from_millis(900), "{on_replica:?}");
    // The followers' streams stayed up through the quiet (none was opened
    // again), and a write commits on the leader and a follower at once.
    assert_eq!(
        streams_opened(&cluster),
        streams_before,
        "{}",
        cluster.logs()
    );
    let reply = busy.set("after", "quiet").await.unwrap();
    assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");
}

/// A flood of clients that fills a replica's connection slots cannot keep
/// a balancer's link or a follower's stream out: the last slots are kept
/// for peers, and a client that lands in one is refused right after its
/// `Hello`, as if the listener were full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flood_cannot_keep_peers_out_of_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    // 20 slots, of which 10 (at most half of the 16 asked) kept for peers.
    let replica = semikv_tests::start_replica(
        1,
        &dir.path().join("replica-1"),
        &["--max-connections", "20"],
    )
    .await
    .unwrap();
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match Client::connect(replica.addr, Role::Client).await {
            Ok(client) => flood.push(client),
            Err(e) => {
                let why = format!("{e:#}");
                assert!(why.contains("connections"), "{why}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        flood.len(),
        10,
        "clients got more than the unreserved slots"
    );
    assert_eq!(refused, 30);
    // With every unreserved slot held by a client, peers still get in.
    for role in [Role::Balancer, Role::Balancer, Role::Replica] {
        let hello = semikv_protocol::Hello::new(
            role,
            (role == Role::Replica).then_some(semikv_protocol::ReplicaId(2)),
        );
        let peer = Client::connect_as(replica.addr, hello).await;
        assert!(peer.is_ok(), "a {role:?} was kept out: {:?}", peer.err());
    }
    let mut balancer = Client::connect(replica.addr, Role::Balancer).await.unwrap();
    assert_eq!(balancer.ping().await.unwrap(), Reply::Pong);
}

/// Clients that each send most of a large frame and stall (issue #16,
/// buffered request bytes: 1,000 of them half-way through 16 MiB frames
/// were 16 GB) cost the balancer its `--max-buffered-input` budget, not
/// their frames: past it, their connections are not read, and their
/// bytes wait in the kernel's socket buffers and the senders. Small
/// requests need no budget, so other clients are served meanwhile; once
/// the stallers go, the budget comes back whole and a large write goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stalled_mid_frame_cost_the_balancer_its_read_budget_not_their_frames() {
    const MIB: u64 = 1024 * 1024;
    // The lowest budget the balancer takes: its 16 MiB frame limit.
    const BUDGET: u64 = 16 * MIB;
    const STALLERS: usize = 24;
    // 24 x 6 MiB = 144 MiB if every partial frame were buffered.
    const VALUE: usize = 6 * 1024 * 1024;
    let cluster = Cluster::with_balancer(3, &[], &["--max-buffered-input", &BUDGET.to_string()])
        .await
        .unwrap();
    let mut client = cluster.connect_balancer().await.unwrap();
    let r = client
        .set_until_acked("before", "stall", crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();
    let balancer = cluster.balancer().expect("a balancer");
    let rss_before = balancer.proc.rss_bytes().unwrap();
    let peak_before = balancer.proc.peak_rss_bytes().unwrap();

    // Each staller says Hello, then sends all of a Set of VALUE bytes but
    // its last KiB, and holds the connection until released.
    let big = semikv_protocol::Message::Request(semikv_protocol::Request {
        id: semikv_protocol::RequestId(1),
        op: semikv_protocol::Op::Set {
            key: "stalled".into(),
            value: vec![b's'; VALUE].into(),
        },
    });
    let frame = semikv_tests::client::encode(&big).unwrap().freeze();
    let partial = frame.slice(..frame.len() - 1024);
    let release = tokio_util::sync::CancellationToken::new();
    let mut stallers = tokio::task::JoinSet::new();
    for _ in 0..STALLERS {
        let (addr, partial, release) = (cluster.balancer_addr(), partial.clone(), release.clone());
        stallers.spawn(async move {
            let mut conn = semikv_tests::RawConn::connect(addr).await?;
            conn.handshake(Role::Client).await?;
            // The send blocks once the balancer stops reading this
            // connection: that is the point. It ends (and so does the
            // connection) when released.
            tokio::select! {
                _ = conn.send_bytes(&partial) => release.cancelled().await,
                () = release.cancelled() => {}
            }
            anyhow::Ok(())
        });
    }
    // The budget runs out (a third 6 MiB frame does not fit in 16 MiB)...
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "the budget to run out");
    while balancer.proc.count_logged("read budget exhausted").unwrap() == 0 {
        deadline.tick().await.unwrap();
    }
    // ... once the connections it covers have read their frames, all but
    // the last KiB: the memory measured below includes them.
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "the covered frames to be read");
    while balancer.proc.rss_bytes().unwrap() < rss_before + 2 * VALUE as u64 - 2 * MIB {
        deadline.tick().await.unwrap();
    }
    // Small requests of other clients are served meanwhile, at once.
    let served = std::time::Instant::now();
    let mut late = cluster.connect_balancer().await.unwrap();
    for i in 0..20 {
        let reply = late.set(format!("during{i}"), "stall").await.unwrap();
        assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");
        let reply = client.get("before").await.unwrap();
        assert!(matches!(reply, Reply::Value(Some(_))), "{reply:?}");
    }
    let served = served.elapsed();
    let rss_during = balancer.proc.rss_bytes().unwrap();
    let peak_during = balancer.proc.peak_rss_bytes().unwrap();

    // The stallers go: their grants come back, and a large write is read
    // whole (in its turn behind the connections still waiting).
    release.cancel();
    while let Some(done) = stallers.join_next().await {
        done.unwrap().unwrap();
    }
    let reply = tokio::time::timeout(crate::CONVERGE, late.set("after", vec![b'a'; VALUE]))
        .await
        .expect("a large write once the stallers are gone")
        .unwrap();
    assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");
    let peak_after = balancer.proc.peak_rss_bytes().unwrap();
    let rss_after = balancer.proc.rss_bytes().unwrap();
    eprintln!(
        "{STALLERS} clients stalled 1 KiB short of the end of {} MiB frames, budget {} MiB: balancer resident {} -> {} (during) -> {} MiB (after), peak {} -> {} (during) -> {} MiB (after); 40 small requests of others took {served:?}",
        frame.len() >> 20,
        BUDGET >> 20,
        rss_before >> 20,
        rss_during >> 20,
        rss_after >> 20,
        peak_before >> 20,
        peak_during >> 20,
        peak_after >> 20,
    );
    // Without the budget the balancer held all 24 partial frames (144 MiB)
    // at once. With it: the budget, 64 KiB per waiting connection, and
    // slack for the allocator and the large write after.
    let grew = peak_after.saturating_sub(peak_before);
    assert!(
        grew < 3 * BUDGET,
        "the balancer's peak memory grew by {} MiB (budget {} MiB; the partial frames: {} MiB)",
        grew >> 20,
        BUDGET >> 20,
        (STALLERS * partial.len()) >> 20
    );
}
