//! Reads at each consistency level: where they go, and what the client is
//! told. The fakes answer any level at once (they hold what they hold);
//! what a real replica does with a level is tested on real replicas.

use semikv_protocol::{Consistency, LogIndex, Read, ReadAnswer};

use crate::support::*;

/// Three fakes, the first leading with `k` written through the balancer,
/// read at `level` by default; the followers hold nothing.
async fn three_at(level: Consistency) -> (Fake, Fake, Fake, Balancer, Client) {
    let a = Fake::start(1, NodeRole::Idle, 0, 3).await;
    let b = Fake::start(2, NodeRole::Idle, 0, 0).await;
    let c = Fake::start(3, NodeRole::Idle, 0, 0).await;
    let mut config = config(&[&a, &b, &c]);
    config.read_consistency = level;
    let lb = Balancer::start(config).await;
    until("a leads", || is_leader_at(&a, 1)).await;
    until("all follow", || follows(&b, &a, 1) && follows(&c, &a, 1)).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    (a, b, c, lb, client)
}

fn served(fakes: [&Fake; 3]) -> [u64; 3] {
    fakes.map(|f| f.s().gets_served)
}

/// Gives `f` everything the leader `a` holds.
fn catch_up(f: &Fake, a: &Fake) {
    let (map, last) = {
        let a = a.s();
        (a.map.clone(), a.last_index)
    };
    let mut f = f.s();
    f.map = map;
    f.last_index = last;
}

#[tokio::test]
async fn session_reads_go_to_the_leader_while_followers_are_behind() {
    let (a, b, c, lb, mut client) = three_at(Consistency::Session).await;
    let before = served([&a, &b, &c]);
    for _ in 0..9 {
        assert_eq!(
            client.get("k").await,
            Reply::Value(Some(Bytes::from_static(b"v")))
        );
    }
    let after = served([&a, &b, &c]);
    assert_eq!(
        (
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ),
        (9, 0, 0),
        "the followers lack the client's write: only the leader may answer"
    );

    // Once they hold it, reads spread over them again.
    catch_up(&b, &a);
    catch_up(&c, &a);
    for _ in 0..9 {
        assert_eq!(
            client.get("k").await,
            Reply::Value(Some(Bytes::from_static(b"v")))
        );
    }
    let last = served([&a, &b, &c]);
    assert!(last[1] > after[1] && last[2] > after[2], "{last:?}");
    lb.stop().await;
}

#[tokio::test]
async fn a_stale_session_reads_anywhere() {
    let (a, b, c, lb, mut client) = three_at(Consistency::Stale).await;
    for _ in 0..9 {
        client.get("k").await;
    }
    for f in [&a, &b, &c] {
        assert!(f.s().gets_served >= 1, "replica {} got no read", f.s().id);
    }
    lb.stop().await;
}

#[tokio::test]
async fn linearizable_reads_go_to_the_leader_only() {
    let (a, b, c, lb, mut client) = three_at(Consistency::Linearizable).await;
    catch_up(&b, &a);
    catch_up(&c, &a);
    let before = served([&a, &b, &c]);
    for _ in 0..9 {
        client.get("k").await;
    }
    // Pipelined too: one burst, one replica, the leader.
    let ids = client
        .send_burst(
            (0..20)
                .map(|_| Op::Get {
                    key: Bytes::from_static(b"k"),
                })
                .collect(),
        )
        .await;
    assert_eq!(client.values(ids.len()).await.len(), 20);
    let after = served([&a, &b, &c]);
    assert_eq!(
        (
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ),
        (29, 0, 0)
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_request_names_its_own_level_and_is_told_its_position() {
    let (a, b, c, lb, mut client) = three_at(Consistency::Stale).await;
    catch_up(&b, &a);
    catch_up(&c, &a);
    let before = served([&a, &b, &c]);
    let read = |level| {
        Op::Read(Read {
            op: Box::new(Op::Get {
                key: Bytes::from_static(b"k"),
            }),
            level: Some(level),
            after: LogIndex(0),
        })
    };
    for _ in 0..6 {
        let reply = client.call(read(Consistency::Linearizable)).await;
        let Reply::Read(ReadAnswer { reply, index }) = reply else {
            panic!("a consistent read answered {reply:?}");
        };
        assert_eq!(*reply, Reply::Value(Some(Bytes::from_static(b"v"))));
        assert_eq!(index, LogIndex(a.s().last_index));
    }
    let after = served([&a, &b, &c]);
    assert_eq!(
        after[0] - before[0],
        6,
        "the request's level, not the default"
    );

    // A token past anything the cluster holds is refused, not waited on
    // forever and not answered from older data.
    let reply = client
        .call(Op::Read(Read {
            op: Box::new(Op::Get {
                key: Bytes::from_static(b"k"),
            }),
            level: Some(Consistency::Session),
            after: LogIndex(1_000_000),
        }))
        .await;
    assert!(
        matches!(
            reply,
            Reply::Error(semikv_protocol::ErrorReply::Behind { .. })
        ),
        "{reply:?}"
    );
    lb.stop().await;
}

#[tokio::test]
async fn bounded_reads_skip_followers_that_lag() {
    let (a, b, c, lb, mut client) = three_at(Consistency::Bounded { max_lag_ms: 60_000 }).await;
    let before = served([&a, &b, &c]);
    for _ in 0..9 {
        client.get("k").await;
    }
    let after = served([&a, &b, &c]);
    assert_eq!(
        (after[1] - before[1], after[2] - before[2]),
        (0, 0),
        "followers that hold none of the leader's commits lag without bound"
    );
    catch_up(&b, &a);
    catch_up(&c, &a);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        client.get("k").await;
        let now = served([&a, &b, &c]);
        if now[1] > after[1] && now[2] > after[2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "caught-up followers never got bounded reads"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lb.stop().await;
}
