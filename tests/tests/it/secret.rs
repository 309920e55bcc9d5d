//! The cluster secret (issue #17): replicas and balancers started with
//! `--cluster-secret-file` prove it to each other in the handshake, and a
//! peer that cannot (no secret, a wrong one, a replayed handshake) gets no
//! role at all: it cannot fence, promote, follow, subscribe or read, and the
//! cluster goes on as if it had never called.

use futures::{SinkExt, StreamExt};
use semikv_protocol::auth::{ClusterSecret, Side, Transcript};
use semikv_protocol::{
    Hello, Message, MessageCodec, Nonce, Proof, ReplicaId, Role, SecureHello, WireError,
};
use semikv_tests::{start_balancer, Client, Cluster};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::CONVERGE;

type Raw = Framed<TcpStream, MessageCodec>;

async fn raw(addr: std::net::SocketAddr) -> Raw {
    let stream = TcpStream::connect(addr).await.unwrap();
    Framed::new(stream, MessageCodec::default())
}

/// The next message, bounded.
async fn next(conn: &mut Raw) -> Option<Message> {
    tokio::time::timeout(CONVERGE, conn.next())
        .await
        .expect("the replica answered in time")
        .and_then(Result::ok)
}

fn auth_failed(m: Option<Message>) -> String {
    match m {
        Some(Message::Reject(WireError::AuthFailed { reason })) => reason,
        other => panic!("expected an AuthFailed reject, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_cluster_serves_and_fails_over() {
    // A failover runs fences, a promote and follows: all proved.
    let mut cluster = Cluster::secured(3, &[], &[]).await.unwrap();
    crate::fails_over_keeping_writes(&mut cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_cannot_prove_the_secret_get_no_role() {
    let cluster = Cluster::secured(3, &[], &[]).await.unwrap();
    let leader = cluster.wait_steady(CONVERGE).await.unwrap();
    let mut c = cluster.connect_balancer().await.unwrap();
    let r = c.set_until_acked("k", "v", CONVERGE).await;
    cluster.explain(r).unwrap();
    let secret = cluster.secret().unwrap().clone();
    let before: Vec<_> = {
        let mut epochs = Vec::new();
        for i in 0..3 {
            epochs.push(
                cluster
                    .observe(i)
                    .await
                    .unwrap()
                    .status()
                    .await
                    .unwrap()
                    .epoch,
            );
        }
        epochs
    };
    let target = cluster.replica(leader).addr;

    // Declaring an internal role without a proof; or as a client.
    for role in [Role::Balancer, Role::Replica, Role::Client] {
        let refused = Client::connect(target, role).await.unwrap_err();
        assert!(
            format!("{refused:#}").contains("authentication failed"),
            "{role}: {refused:#}"
        );
    }

    // A wrong secret: the connecting side of ours finds the replica's proof
    // wrong and stops; a peer that goes on regardless proves it wrong.
    let wrong = ClusterSecret::from_bytes(&[7; 32]).unwrap();
    let refused = Client::connect_proving(target, Hello::new(Role::Balancer, None), Some(&wrong))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("secret differs"),
        "{refused:#}"
    );
    let hello = Hello::new(Role::Replica, Some(ReplicaId(9)));
    let mut conn = raw(target).await;
    let mine = Nonce([3; 32]);
    conn.send(Message::SecureHello(SecureHello {
        hello: hello.clone(),
        nonce: mine,
    }))
    .await
    .unwrap();
    let Some(Message::Challenge(challenge)) = next(&mut conn).await else {
        panic!("no challenge");
    };
    let t = Transcript::new(&hello, mine, challenge.nonce);
    let mac = wrong.prove(Side::Connecting, &t);
    conn.send(Message::Proof(Proof { mac })).await.unwrap();
    let reason = auth_failed(next(&mut conn).await);
    assert!(reason.contains("secret differs"), "{reason}");

    // A replay of a good handshake, recorded on the wire: the replica's new
    // nonce makes the recorded proof worthless.
    let mut first = raw(target).await;
    first
        .send(Message::SecureHello(SecureHello {
            hello: hello.clone(),
            nonce: mine,
        }))
        .await
        .unwrap();
    let Some(Message::Challenge(challenge)) = next(&mut first).await else {
        panic!("no challenge");
    };
    let good = Proof {
        mac: secret.prove(
            Side::Connecting,
            &Transcript::new(&hello, mine, challenge.nonce),
        ),
    };
    drop(first);
    let mut replay = raw(target).await;
    replay
        .send(Message::SecureHello(SecureHello {
            hello: hello.clone(),
            nonce: mine,
        }))
        .await
        .unwrap();
    let Some(Message::Challenge(_)) = next(&mut replay).await else {
        panic!("no challenge");
    };
    replay.send(Message::Proof(good)).await.unwrap();
    auth_failed(next(&mut replay).await);

    // An admin message in place of the handshake.
    let mut admin = raw(target).await;
    admin
        .send(Message::Request(semikv_protocol::Request {
            id: semikv_protocol::RequestId(1),
            op: semikv_protocol::Op::Fence(semikv_protocol::Fence {
                epoch: semikv_protocol::Epoch::from_raw(u128::MAX),
            }),
        }))
        .await
        .unwrap();
    assert!(
        matches!(
            next(&mut admin).await,
            Some(Message::Reject(WireError::HandshakeRequired))
        ),
        "a request before the handshake is refused"
    );

    // Nothing moved, the refusals were logged with the peer's address, and
    // the cluster still serves.
    for (i, epoch) in before.iter().enumerate() {
        let status = cluster.observe(i).await.unwrap().status().await.unwrap();
        assert_eq!(status.epoch, *epoch, "replica {i}");
    }
    let logged = cluster
        .replica(leader)
        .proc
        .count_logged("refused a connection")
        .unwrap();
    assert!(logged >= 1, "the refusals were not logged");
    let r = c.set_until_acked("k2", "v2", CONVERGE).await;
    cluster.explain(r).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_without_the_right_secret_says_so_at_start_up() {
    let cluster = Cluster::secured(3, &[], &[]).await.unwrap();
    cluster.wait_steady(CONVERGE).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let wrong = other.path().join("other.secret");
    semikv_tests::cluster::write_secret(&wrong).unwrap();
    for (name, args) in [
        (
            "another secret",
            vec![
                "--cluster-secret-file".to_string(),
                wrong.display().to_string(),
            ],
        ),
        ("no secret", Vec::new()),
    ] {
        let dir = other.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        let balancer = start_balancer(&dir, &cluster.replica_addrs(), &args)
            .await
            .unwrap();
        let deadline = semikv_tests::Deadline::new(CONVERGE, "the mismatch to be logged");
        while balancer
            .proc
            .count_logged("do not share a cluster secret")
            .unwrap()
            == 0
        {
            deadline.tick().await.unwrap();
        }
    }
    // The cluster's own balancer went on regardless.
    let mut c = cluster.connect_balancer().await.unwrap();
    let r = c.set_until_acked("k", "v", CONVERGE).await;
    cluster.explain(r).unwrap();
}
