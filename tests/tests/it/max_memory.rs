//! Store memory (issue #16): replicas started with `--max-memory` refuse
//! writes that would grow their store past it with `OutOfMemory`, counting
//! the writes in flight, and keep serving reads and deletes; the
//! balancer's status shows each replica's store and limit.

use semikv_protocol::{ErrorReply, Reply, Role};
use semikv_tests::Cluster;

/// `--max-memory` (issue #16, store memory): 64 KiB values written through
/// the balancer to a cluster whose replicas each allow 2 MiB are refused
/// with `OutOfMemory` once the store is full, before they are applied
/// anywhere; every acknowledged value still reads back, a delete makes room
/// for a new write, a pipelined flood gets exactly the room there is, and
/// the balancer's status shows each replica's store within its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_max_memory_are_refused_while_reads_and_deletes_go_on() {
    const LIMIT: u64 = 2 << 20;
    const VALUE: usize = 64 * 1024;
    let limit = LIMIT.to_string();
    let cluster = Cluster::with_balancer(3, &["--max-memory", &limit], &[])
        .await
        .unwrap();
    let mut client = cluster.connect_balancer().await.unwrap();
    let value = "v".repeat(VALUE);
    let key = |i: usize| format!("key-{i:03}");
    let r = client
        .set_until_acked(&key(0), value.as_str(), crate::CONVERGE)
        .await;
    cluster.explain(r).unwrap();
    let mut acked = vec![key(0)];
    // At most LIMIT / VALUE writes can fit: one more must be refused.
    let (used, refused_key) = loop {
        let k = key(acked.len());
        assert!(acked.len() <= (LIMIT as usize) / VALUE, "never refused");
        match client.set(k.clone(), value.clone()).await.unwrap() {
            Reply::Written { .. } => acked.push(k),
            Reply::Error(ErrorReply::OutOfMemory { used, limit }) => {
                assert_eq!(limit, LIMIT);
                break (used, k);
            }
            other => panic!("write {k} answered {other:?}"),
        }
    };
    let leader = cluster.balancer_leader().await.unwrap().expect("a leader");
    let peak_rss = cluster.replica(leader).proc.peak_rss_bytes().unwrap();
    eprintln!(
        "max-memory: {} writes of {} KiB acknowledged, the next refused at {used} of {LIMIT} \
         bytes; the leader's peak RSS {} MiB",
        acked.len(),
        VALUE >> 10,
        peak_rss >> 20
    );
    assert!(used <= LIMIT, "the store holds {used} bytes, past {LIMIT}");
    // Nothing was in flight, so the refusal was for lack of room: what is
    // held plus the refused write passes the limit, and most of it is
    // acknowledged values.
    let per_key = used / acked.len() as u64;
    assert!(used + per_key > LIMIT, "refused with room left: {used}");
    assert!(
        acked.len() * VALUE >= (LIMIT as usize) * 3 / 4,
        "{}",
        acked.len()
    );

    // Every acknowledged value reads back in full; the refused write never
    // happened. Reads through the balancer may go to a follower a moment
    // behind, so each is waited for (bounded).
    for k in &acked {
        let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "an acknowledged value");
        loop {
            match client.get(k.clone()).await.unwrap() {
                Reply::Value(Some(v)) if v.len() == VALUE => break,
                Reply::Value(_) => deadline.tick().await.unwrap(),
                other => panic!("get {k} answered {other:?}"),
            }
        }
    }
    let mut on_leader = cluster.connect(leader, Role::Client).await.unwrap();
    assert_eq!(
        on_leader.get(refused_key.clone()).await.unwrap(),
        Reply::Value(None)
    );
    // Still full: the same write is refused again.
    let again = client
        .set(refused_key.clone(), value.clone())
        .await
        .unwrap();
    assert!(
        matches!(again, Reply::Error(ErrorReply::OutOfMemory { .. })),
        "{again:?}"
    );
    // A delete frees room, and the refused write then succeeds.
    let deleted = client.del(acked[0].clone()).await.unwrap();
    assert!(matches!(deleted, Reply::Written { .. }), "{deleted:?}");
    let retried = client
        .set(refused_key.clone(), value.clone())
        .await
        .unwrap();
    assert!(matches!(retried, Reply::Written { .. }), "{retried:?}");

    // Room for eight more, then a pipelined flood of 32: the leader counts
    // the writes it has not applied yet, so exactly eight are accepted
    // (a check of the store alone would take all 32 proposed in one batch).
    for k in &acked[1..=8] {
        let deleted = client.del(k.clone()).await.unwrap();
        assert!(matches!(deleted, Reply::Written { .. }), "{deleted:?}");
    }
    for i in 0..32 {
        client
            .send(semikv_protocol::Op::Set {
                key: format!("flood-{i:02}").into(),
                value: value.clone().into(),
            })
            .await
            .unwrap();
    }
    let mut written = 0;
    for _ in 0..32 {
        match client.recv().await.unwrap().reply {
            Reply::Written { .. } => written += 1,
            Reply::Error(ErrorReply::OutOfMemory { .. }) => {}
            other => panic!("a pipelined write answered {other:?}"),
        }
    }
    eprintln!("max-memory: {written} of 32 pipelined writes accepted with room for 8");
    assert_eq!(
        written, 8,
        "the pipelined writes overshot or were refused with room left"
    );
    // The leader applied every write it acknowledged before answering:
    // its own report is the figure the others must reach.
    let report = on_leader
        .request(semikv_protocol::Op::Status)
        .await
        .unwrap()
        .into_node_report()
        .unwrap();
    let final_used = report.resources.memory_used;
    assert!(final_used <= LIMIT, "{:?}", report.resources);
    assert_eq!(report.resources.memory_limit, Some(LIMIT));

    // The balancer's status shows every replica's store within the limit,
    // the same on each once they have applied the same writes.
    let deadline = semikv_tests::Deadline::new(
        crate::CONVERGE,
        "every replica to report the same store within its limit",
    );
    loop {
        let report = client.cluster_report().await.unwrap();
        let leader_row = report
            .status
            .replicas
            .iter()
            .position(|r| Some(&r.addr) == report.status.leader.as_ref())
            .expect("the leader has a row");
        let reported = report.resources[leader_row].clone().expect("reported");
        assert_eq!(reported.memory_limit, Some(LIMIT));
        assert!(reported.memory_used <= LIMIT, "{reported:?}");
        let same = report.resources.iter().all(|r| {
            r.as_ref().is_some_and(|r| {
                r.memory_used == reported.memory_used && r.memory_limit == Some(LIMIT)
            })
        });
        if same && reported.memory_used == final_used {
            eprintln!("max-memory: status shows {reported:?} on every replica");
            break;
        }
        deadline.tick().await.unwrap();
    }
}
