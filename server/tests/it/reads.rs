//! Reads at a consistency level on real replicas, with the test playing the
//! balancer: a session position is waited for or refused `Behind`; a
//! linearizable read is answered only by a leader whose followers of its
//! epoch confirm it still leads, so a leader whose followers were fenced by
//! a newer election never answers one.

use crate::support::{elect, start_many, Peer};
use bytes::Bytes;
use semikv_protocol::{Consistency, ErrorReply, LogIndex, Op, Read, ReadAnswer, Reply, Role};

fn read(key: &str, level: Consistency, after: LogIndex) -> Op {
    Op::Read(Read {
        op: Box::new(Op::Get {
            key: Bytes::copy_from_slice(key.as_bytes()),
        }),
        level: Some(level),
        after,
    })
}

fn value(reply: &Reply) -> Option<(Option<Bytes>, LogIndex)> {
    match reply {
        Reply::Read(ReadAnswer { reply, index }) => match reply.as_ref() {
            Reply::Value(v) => Some((v.clone(), *index)),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_read_waits_for_its_position_or_says_behind() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(2, dir.path()).await;
    let _admins = elect(&servers, 0, 1, 1).await;
    let mut leader = Peer::connect(servers[0].addr, Role::Client).await;
    let mut follower = Peer::connect(servers[1].addr, Role::Client).await;
    let index = leader.set_ok("k", "v").await;

    // Right after the acknowledgement the follower may not have applied
    // it yet: the read waits for it rather than answer without it.
    let reply = follower
        .request(read("k", Consistency::Session, index))
        .await;
    let (got, at) = value(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
    assert!(at >= index, "answered at {at}, asked for {index}");

    let ahead = LogIndex(index.0 + 1_000);
    let reply = follower
        .request(read("k", Consistency::Session, ahead))
        .await;
    assert_eq!(
        reply,
        Reply::Error(ErrorReply::Behind {
            applied: at.max(index),
            wanted: ahead
        }),
        "no more writes came, so the follower applied exactly what it had"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_confirmed_leader_answers_linearizable_reads() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_many(3, dir.path()).await;
    let mut admins = elect(&servers, 0, 1, 1).await;
    let mut leader = Peer::connect(servers[0].addr, Role::Client).await;
    let index = leader.set_ok("k", "v1").await;

    let reply = leader
        .request(read("k", Consistency::Linearizable, LogIndex(0)))
        .await;
    let (got, at) = value(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(got.as_deref(), Some(&b"v1"[..]));
    assert!(at >= index);

    let mut follower = Peer::connect(servers[1].addr, Role::Client).await;
    assert!(matches!(
        follower
            .request(read("k", Consistency::Linearizable, LogIndex(0)))
            .await,
        Reply::Error(ErrorReply::NotLeader { .. })
    ));

    // Another coordinator's election fences both followers (replicas -
    // sync_replicas = 2 answers) without reaching the leader, which still
    // believes it leads: it must not answer a linearizable read.
    admins[1].fence(2).await.unwrap();
    admins[2].fence(2).await.unwrap();
    let reply = leader
        .request(read("k", Consistency::Linearizable, LogIndex(0)))
        .await;
    assert!(
        matches!(reply, Reply::Error(ErrorReply::Unavailable { .. })),
        "a leader whose followers were fenced answered {reply:?}"
    );
    // Its stale reads go on: the level is the reader's choice.
    assert_eq!(leader.get("k").await.as_deref(), Some(&b"v1"[..]));
}
