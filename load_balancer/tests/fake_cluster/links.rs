//! The replica link on its own: shared connect failures, refusal and
//! breakage, many clients on one connection.

use crate::support::*;

#[tokio::test]
async fn callers_queued_behind_a_failed_connect_share_its_failure() {
    use semikv_lb::group::link::ConnError;
    // A replica that accepts connections and never answers the handshake:
    // every connect attempt lasts the whole connect timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let (broken_tx, _broken_rx) = tokio::sync::mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let link = Arc::new(ReplicaLink::new(
        0,
        addr.to_string(),
        1 << 20,
        None,
        None,
        Duration::from_millis(200),
        broken_tx,
        Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
        tasks.clone(),
    ));
    // Many reads at once (a burst falling back to this replica): they queue
    // behind the first attempt and get its failure, instead of each
    // connecting in turn for up to the timeout.
    let n = 10;
    let callers: Vec<_> = (0..n)
        .map(|_| {
            let link = link.clone();
            tokio::spawn(async move {
                let get = Op::Get {
                    key: Bytes::from("k"),
                };
                link.request(get, T).await
            })
        })
        .collect();
    for caller in callers {
        let outcome = timeout(T, caller).await.unwrap().unwrap();
        assert!(
            matches!(&outcome, Err(ConnError::Connect(why)) if why.contains("timed out")),
            "{outcome:?}"
        );
    }
    let attempts = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=n / 2).contains(&attempts),
        "{attempts} connection attempts for {n} callers queued together"
    );
    // A later caller tries again: the failure is not remembered forever.
    let get = Op::Get {
        key: Bytes::from("k"),
    };
    assert!(link.request(get, T).await.is_err());
    until("a later caller connects again", || {
        accepted.load(Ordering::SeqCst) == attempts + 1
    })
    .await;
    holder.abort();
    shutdown.cancel();
    tasks.close();
    timeout(T, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn replica_link_reports_refusal_breakage_and_notifies() {
    use semikv_lb::group::link::ConnError;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let (broken_tx, mut broken_rx) = tokio::sync::mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let refused = ReplicaLink::new(
        0,
        gone_addr.to_string(),
        1 << 20,
        None,
        None,
        Duration::from_secs(5),
        broken_tx.clone(),
        Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
        tasks.clone(),
    );
    let err = refused.request(Op::Status, T).await.unwrap_err();
    assert!(
        matches!(err, ConnError::Refused) && err.never_sent(),
        "{err:?}"
    );

    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let link = Arc::new(ReplicaLink::new(
        7,
        a.addr.to_string(),
        1 << 20,
        None,
        None,
        Duration::from_secs(5),
        broken_tx,
        Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
        tasks.clone(),
    ));
    assert!(matches!(
        link.request(Op::Ping, T).await.unwrap(),
        Reply::Pong
    ));
    a.s().hang_writes = true;
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let link = link.clone();
            tokio::spawn(async move {
                link.request(
                    Op::Set {
                        key: Bytes::from(format!("k{i}")),
                        value: Bytes::from("v"),
                    },
                    T,
                )
                .await
            })
        })
        .collect();
    until("all writes reached the replica", || a.s().sets_seen == 5).await;
    a.kill();
    for h in in_flight {
        let err = timeout(T, h).await.unwrap().unwrap().unwrap_err();
        assert!(
            matches!(err, ConnError::Broken) && !err.never_sent(),
            "{err:?}"
        );
    }
    assert_eq!(timeout(T, broken_rx.recv()).await.unwrap(), Some(7));
    let err = link.request(Op::Status, T).await.unwrap_err();
    assert!(
        err.never_sent(),
        "reconnect to a dead replica is refused: {err:?}"
    );
    shutdown.cancel();
    tasks.close();
    timeout(T, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn many_pipelining_clients_share_the_replica_connections() {
    let (a, _b, lb) = leader_and_follower(|_| {}).await;
    let mut handles = Vec::new();
    for c in 0..20 {
        let addr = lb.addr;
        handles.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            set_until_written(&mut client, &format!("c{c}"), "x").await;
            let mut ids = Vec::new();
            for i in 0..50 {
                ids.push(
                    client
                        .send(Op::Set {
                            key: Bytes::from(format!("c{c}-{i}")),
                            value: Bytes::from("v"),
                        })
                        .await,
                );
            }
            let mut got = Vec::new();
            for _ in 0..50 {
                let r = client.recv().await;
                assert!(matches!(r.reply, Reply::Written { .. }), "{r:?}");
                got.push(r.id);
            }
            got.sort();
            assert_eq!(got, ids);
        }));
    }
    for h in handles {
        timeout(T, h).await.unwrap().unwrap();
    }
    assert_eq!(a.s().map.len(), 20 * 51);
    lb.stop().await;
}
