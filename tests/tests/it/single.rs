//! One replica, promoted by the test acting as the balancer.

use std::time::Duration;

use bytes::Bytes;
use semikv_protocol::*;
use semikv_tests::client::{error, node, value, written};
use semikv_tests::{start_replica, start_replica_at, Client};

use crate::promote_single;

#[tokio::test]
async fn idle_replica_refuses_writes_with_not_leader() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_replica(1, &dir.path().join("r1"), &[] as &[&str])
        .await
        .unwrap();
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    assert_eq!(c.welcome().node, Some(ReplicaId(1)));
    let status = c.status().await.unwrap();
    assert_eq!(status.role, NodeRole::Idle);
    let reply = c.set("k", "v").await.unwrap();
    assert!(
        matches!(error(&reply).unwrap(), ErrorReply::NotLeader { .. }),
        "{reply:?}"
    );
    let reply = c.del("k").await.unwrap();
    assert!(
        matches!(error(&reply).unwrap(), ErrorReply::NotLeader { .. }),
        "{reply:?}"
    );
    assert_eq!(c.get("k").await.unwrap(), Reply::Value(None));
}

#[tokio::test]
async fn promoted_replica_serves_set_get_del() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_replica(1, &dir.path().join("r1"), &[] as &[&str])
        .await
        .unwrap();
    promote_single(r.addr, 1).await.unwrap();

    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let binary_key = Bytes::from_static(&[0, 0xff, 0x80, b'\n']);
    let binary_value = Bytes::from_static(&[0xde, 0xad, 0, 0xbe, 0xef]);

    let i1 = written(&c.set("a", "1").await.unwrap()).unwrap();
    let i2 = written(
        &c.set(binary_key.clone(), binary_value.clone())
            .await
            .unwrap(),
    )
    .unwrap();
    let i3 = written(&c.set("empty", Bytes::new()).await.unwrap()).unwrap();
    assert!(i1 < i2 && i2 < i3, "indexes {i1} {i2} {i3} not increasing");

    assert_eq!(value(&c.get("a").await.unwrap()).unwrap(), Some("1".into()));
    assert_eq!(
        value(&c.get(binary_key.clone()).await.unwrap()).unwrap(),
        Some(binary_value)
    );
    assert_eq!(
        value(&c.get("empty").await.unwrap()).unwrap(),
        Some(Bytes::new()),
        "an empty value is not a missing key"
    );
    assert_eq!(value(&c.get("missing").await.unwrap()).unwrap(), None);

    let i4 = written(&c.set("a", "2").await.unwrap()).unwrap();
    assert!(i4 > i3);
    assert_eq!(value(&c.get("a").await.unwrap()).unwrap(), Some("2".into()));

    let i5 = written(&c.del("a").await.unwrap()).unwrap();
    assert!(i5 > i4);
    assert_eq!(value(&c.get("a").await.unwrap()).unwrap(), None);

    let status = c.status().await.unwrap();
    assert_eq!(status.role, NodeRole::Leader);
    assert!(status.commit_index >= i5, "{status:?}");
    assert!(status.applied_index >= i5, "{status:?}");
}

#[tokio::test]
async fn pipelined_writes_are_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_replica(1, &dir.path().join("r1"), &[] as &[&str])
        .await
        .unwrap();
    promote_single(r.addr, 1).await.unwrap();
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let mut ids = std::collections::BTreeMap::new();
    for i in 0..100u32 {
        let id = c
            .send(Op::Set {
                key: format!("k{i}").into(),
                value: format!("v{i}").into(),
            })
            .await
            .unwrap();
        ids.insert(id, i);
    }
    let mut indexes = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let resp = c.recv().await.unwrap();
        assert!(ids.remove(&resp.id).is_some(), "unknown id {}", resp.id);
        assert!(indexes.insert(written(&resp.reply).unwrap()));
    }
    for i in 0..100u32 {
        assert_eq!(
            value(&c.get(format!("k{i}")).await.unwrap()).unwrap(),
            Some(format!("v{i}").into())
        );
    }
}

#[tokio::test]
async fn restart_after_kill_9_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    let mut r = start_replica(1, &data, &[] as &[&str]).await.unwrap();
    promote_single(r.addr, 1).await.unwrap();
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..50u32 {
        let key = format!("key-{i}");
        let val = format!("value-{i}");
        written(&c.set(key.clone(), val.clone()).await.unwrap()).unwrap();
        acked.push((key, Some(val)));
    }
    let last = written(&c.del("key-7").await.unwrap()).unwrap();
    acked[7].1 = None;
    drop(c);

    let addr = r.addr;
    r.proc.kill9().unwrap();
    drop(r);
    let r = start_replica_at(1, &data, addr, &[] as &[&str])
        .await
        .unwrap();
    assert_eq!(r.addr, addr);

    // The epoch it accepted is durable.
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let status = c.status().await.unwrap();
    assert!(status.epoch >= Epoch::from_raw(1), "{status:?}");
    assert!(status.last_index.0 >= 51, "log lost entries: {status:?}");

    // Leading again, it commits the tail it was unsure of (an entry of the
    // new epoch after it) and then serves every acknowledged write. Until
    // then reads may be stale, as from any replica, so wait for the apply.
    promote_single(r.addr, 2).await.unwrap();
    wait_applied(&mut c, last).await;
    for (key, val) in &acked {
        let got = value(&c.get(key.clone()).await.unwrap()).unwrap();
        assert_eq!(got, val.clone().map(Bytes::from), "key {key}");
    }
    assert!(
        written(&c.set("after", "restart").await.unwrap())
            .unwrap()
            .0
            > 51,
        "index went backwards"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    let mut r = start_replica(1, &data, &[] as &[&str]).await.unwrap();
    promote_single(r.addr, 1).await.unwrap();
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let last = written(&c.set("k", "v").await.unwrap()).unwrap();
    let status = r.proc.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit {status}:\n{}", r.proc.stderr_tail());

    let r = start_replica_at(1, &data, r.addr, &[] as &[&str])
        .await
        .unwrap();
    promote_single(r.addr, 2).await.unwrap();
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    wait_applied(&mut c, last).await;
    assert_eq!(value(&c.get("k").await.unwrap()).unwrap(), Some("v".into()));
}

/// Waits (bounded) until the replica behind `c` has applied `index`.
async fn wait_applied(c: &mut Client, index: LogIndex) {
    let deadline = semikv_tests::Deadline::new(crate::CONVERGE, "the replica to apply");
    loop {
        let status = c.status().await.unwrap();
        if status.commit_index >= index && status.applied_index >= index {
            return;
        }
        deadline.tick().await.unwrap();
    }
}

#[tokio::test]
async fn stale_epochs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_replica(1, &dir.path().join("r1"), &[] as &[&str])
        .await
        .unwrap();
    let mut admin = Client::connect(r.addr, Role::Balancer).await.unwrap();
    assert_eq!(
        node(&admin.fence(5).await.unwrap()).unwrap().epoch,
        Epoch::from_raw(5)
    );

    for reply in [
        admin.promote(4, 0, 1000).await.unwrap(),
        admin.fence(3).await.unwrap(),
        admin
            .follow(2, 9, "127.0.0.1:1".parse().unwrap())
            .await
            .unwrap(),
    ] {
        assert!(
            matches!(
                error(&reply).unwrap(),
                ErrorReply::StaleEpoch { current, .. } if current == Epoch::from_raw(5)
            ),
            "{reply:?}"
        );
    }
    let status = admin.status().await.unwrap();
    assert_eq!(status.role, NodeRole::Idle);
    assert_eq!(status.epoch, Epoch::from_raw(5));

    // Equal to the fenced epoch is fine.
    let status = node(&admin.promote(5, 0, 1000).await.unwrap()).unwrap();
    assert_eq!(status.role, NodeRole::Leader);

    // Fencing the leader at a newer epoch deposes it: no more writes.
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    written(&c.set("k", "v").await.unwrap()).unwrap();
    let status = node(&admin.fence(6).await.unwrap()).unwrap();
    assert_ne!(status.role, NodeRole::Leader, "{status:?}");
    let reply = c.set("k", "w").await.unwrap();
    assert!(
        matches!(error(&reply).unwrap(), ErrorReply::NotLeader { .. }),
        "a fenced leader acknowledged a write: {reply:?}"
    );
    assert_eq!(value(&c.get("k").await.unwrap()).unwrap(), Some("v".into()));
}

#[tokio::test]
async fn an_epoch_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r1");
    let mut r = start_replica(1, &data, &[] as &[&str]).await.unwrap();
    let mut admin = Client::connect(r.addr, Role::Balancer).await.unwrap();
    node(&admin.fence(7).await.unwrap()).unwrap();
    drop(admin);
    r.proc.kill9().unwrap();
    let r = start_replica_at(1, &data, r.addr, &[] as &[&str])
        .await
        .unwrap();
    let mut admin = Client::connect(r.addr, Role::Balancer).await.unwrap();
    assert_eq!(admin.status().await.unwrap().epoch, Epoch::from_raw(7));
    let reply = admin.promote(6, 0, 1000).await.unwrap();
    assert!(
        matches!(error(&reply).unwrap(), ErrorReply::StaleEpoch { .. }),
        "{reply:?}"
    );
}
