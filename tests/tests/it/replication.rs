//! A leader and followers driven by the test acting as the balancer:
//! semi-synchronous commit, follower reads, fencing and a manual failover.

use std::time::Duration;

use bytes::Bytes;
use semikv_protocol::*;
use semikv_tests::client::{error, node, value, written};
use semikv_tests::Cluster;

use crate::CONVERGE;

#[tokio::test]
async fn acked_writes_are_readable_from_followers() {
    let cluster = Cluster::replicas(3, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();

    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    let mut last = LogIndex(0);
    for i in 0..20u32 {
        let reply = c.set(format!("k{i}"), format!("v{i}")).await.unwrap();
        last = cluster.explain(written(&reply)).unwrap();
    }
    let del = written(&c.del("k3").await.unwrap()).unwrap();
    assert!(del > last);

    for f in [1, 2] {
        let status = cluster.explain(cluster.wait_applied(f, del).await).unwrap();
        assert_eq!(status.role, NodeRole::Follower);
        let mut fc = cluster.connect(f, Role::Client).await.unwrap();
        for i in 0..20u32 {
            let want = (i != 3).then(|| Bytes::from(format!("v{i}")));
            let got = value(&fc.get(format!("k{i}")).await.unwrap()).unwrap();
            assert_eq!(got, want, "follower {f} key k{i}");
        }
    }
}

#[tokio::test]
async fn followers_refuse_writes_naming_the_leader() {
    let cluster = Cluster::replicas(2, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut fc = cluster.connect(1, Role::Client).await.unwrap();
    let reply = fc.set("k", "v").await.unwrap();
    match error(&reply).unwrap() {
        ErrorReply::NotLeader { leader: Some(l) } => {
            assert_eq!(l, cluster.replica(0).addr.to_string())
        }
        other => panic!("expected NotLeader naming the leader, got {other:?}"),
    }
}

#[tokio::test]
async fn writes_fail_with_not_enough_replicas_when_followers_are_gone() {
    let mut cluster = Cluster::replicas(2, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    written(&c.set("before", "1").await.unwrap()).unwrap();
    cluster.kill_replica(1).unwrap();
    // The leader notices the lost stream at its own pace; the write waits for
    // the sync timeout (2 s) and must then fail, never be acknowledged.
    let reply = c.set("after", "1").await.unwrap();
    assert!(
        matches!(
            error(&reply).unwrap(),
            ErrorReply::NotEnoughReplicas { required: 1, .. }
        ),
        "{reply:?}"
    );
    // Not committed, so not visible.
    assert_eq!(value(&c.get("after").await.unwrap()).unwrap(), None);
}

#[tokio::test]
async fn a_restarted_follower_catches_up() {
    let mut cluster = Cluster::replicas(3, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    for i in 0..10u32 {
        written(&c.set(format!("a{i}"), "x").await.unwrap()).unwrap();
    }
    cluster.kill_replica(2).unwrap();
    let mut last = LogIndex(0);
    for i in 0..10u32 {
        last = written(&c.set(format!("b{i}"), "y").await.unwrap()).unwrap();
    }
    cluster.restart_replica(2).await.unwrap();
    let mut admin = cluster.connect(2, Role::Balancer).await.unwrap();
    let leader = cluster.replica(0);
    node(&admin.follow(1, leader.id, leader.addr).await.unwrap()).unwrap();
    cluster
        .explain(cluster.wait_applied(2, last).await)
        .unwrap();
    let mut fc = cluster.connect(2, Role::Client).await.unwrap();
    for i in 0..10u32 {
        assert_eq!(
            value(&fc.get(format!("b{i}")).await.unwrap()).unwrap(),
            Some("y".into())
        );
    }
}

#[tokio::test]
async fn manual_failover_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::replicas(3, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..30u32 {
        let reply = c.set(format!("k{i}"), format!("v{i}")).await.unwrap();
        written(&reply).unwrap();
        acked.push(i);
    }
    drop(c);
    cluster.kill_replica(0).unwrap();

    // The balancer's election: fence survivors at E=2, promote the most
    // up-to-date by (last_epoch, last_index), lowest id on ties.
    let mut best: Option<(usize, (Epoch, LogIndex))> = None;
    for i in [1, 2] {
        let mut admin = cluster.connect(i, Role::Balancer).await.unwrap();
        let s = node(&admin.fence(2).await.unwrap()).unwrap();
        let key = (s.last_epoch, s.last_index);
        if best.is_none_or(|(_, b)| key > b) {
            best = Some((i, key));
        }
    }
    let (new_leader, _) = best.unwrap();
    let other = 3 - new_leader;
    let mut admin = cluster.connect(new_leader, Role::Balancer).await.unwrap();
    let s = node(&admin.promote(2, 1, 2000).await.unwrap()).unwrap();
    assert_eq!(s.role, NodeRole::Leader);
    let mut oadmin = cluster.connect(other, Role::Balancer).await.unwrap();
    let (leader_id, leader_addr) = (
        cluster.replica(new_leader).id,
        cluster.replica(new_leader).addr,
    );
    node(&oadmin.follow(2, leader_id, leader_addr).await.unwrap()).unwrap();

    let mut c = cluster.connect(new_leader, Role::Client).await.unwrap();
    let after = cluster
        .explain(c.set_until_acked("after", "failover", CONVERGE).await)
        .unwrap();
    for i in &acked {
        assert_eq!(
            value(&c.get(format!("k{i}")).await.unwrap()).unwrap(),
            Some(Bytes::from(format!("v{i}"))),
            "acknowledged k{i} lost in failover"
        );
    }
    // The other survivor converges on the same data.
    cluster
        .explain(cluster.wait_applied(other, after).await)
        .unwrap();
    let mut oc = cluster.connect(other, Role::Client).await.unwrap();
    for i in &acked {
        assert_eq!(
            value(&oc.get(format!("k{i}")).await.unwrap()).unwrap(),
            Some(Bytes::from(format!("v{i}")))
        );
    }

    // The old leader comes back, is fenced and follows: it must not lead.
    cluster.restart_replica(0).await.unwrap();
    let mut old = cluster.connect(0, Role::Balancer).await.unwrap();
    node(&old.fence(2).await.unwrap()).unwrap();
    node(&old.follow(2, leader_id, leader_addr).await.unwrap()).unwrap();
    cluster
        .explain(cluster.wait_applied(0, after).await)
        .unwrap();
    let mut oc = cluster.connect(0, Role::Client).await.unwrap();
    assert_eq!(
        value(&oc.get("after").await.unwrap()).unwrap(),
        Some("failover".into())
    );
    assert_eq!(cluster.leader_index().await.unwrap(), Some(new_leader));
}

#[tokio::test]
async fn a_stopped_leader_is_fenced_and_cannot_acknowledge() {
    let mut cluster = Cluster::replicas(3, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    written(&c.set("k", "1").await.unwrap()).unwrap();

    // Freeze the old leader, fail over to replica 1 at epoch 2.
    cluster.replica_mut(0).proc.stop().unwrap();
    for i in [1, 2] {
        let mut admin = cluster.connect(i, Role::Balancer).await.unwrap();
        node(&admin.fence(2).await.unwrap()).unwrap();
    }
    let mut admin = cluster.connect(1, Role::Balancer).await.unwrap();
    node(&admin.promote(2, 1, 2000).await.unwrap()).unwrap();
    let mut admin2 = cluster.connect(2, Role::Balancer).await.unwrap();
    let new = cluster.replica(1);
    node(&admin2.follow(2, new.id, new.addr).await.unwrap()).unwrap();

    // The old leader wakes up believing it leads at epoch 1. A write to it
    // needs a follower's ack, and both followers are at epoch 2: it must not
    // be acknowledged.
    cluster.replica_mut(0).proc.cont().unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(20), c.set("k", "stale"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !matches!(reply, Reply::Written { .. }),
        "deposed leader acknowledged a write: {reply:?}"
    );
    // Nor does it show the unacknowledged value to readers.
    assert_eq!(value(&c.get("k").await.unwrap()).unwrap(), Some("1".into()));
    let mut nc = cluster.connect(1, Role::Client).await.unwrap();
    let i = cluster
        .explain(nc.set_until_acked("k2", "x", CONVERGE).await)
        .unwrap();
    assert_eq!(
        value(&nc.get("k").await.unwrap()).unwrap(),
        Some("1".into())
    );
    assert!(i.0 > 0);
}

/// Random set/get/delete traffic on the leader, checked op by op against a
/// `BTreeMap` model; then every follower converges to the model. The seed is
/// printed; set `SEMIKV_SEED` to replay.
#[tokio::test]
async fn random_traffic_matches_a_model_on_every_replica() {
    let seed: u64 = std::env::var("SEMIKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    println!("SEMIKV_SEED={seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    let cluster = Cluster::replicas(3, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    let mut model = std::collections::BTreeMap::<Bytes, Bytes>::new();
    let mut last = LogIndex(0);
    for step in 0..300 {
        // A small key space so keys are overwritten and deleted often.
        let key = Bytes::from(vec![(next() % 16) as u8, 0xff]);
        match next() % 3 {
            0 => {
                let len = (next() % 40) as usize;
                let val: Bytes = (0..len).map(|_| next() as u8).collect::<Vec<u8>>().into();
                let i = written(&c.set(key.clone(), val.clone()).await.unwrap())
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                assert!(i > last, "seed {seed} step {step}: index {i} after {last}");
                last = i;
                model.insert(key, val);
            }
            1 => {
                let i = written(&c.del(key.clone()).await.unwrap())
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                assert!(i > last, "seed {seed} step {step}: index {i} after {last}");
                last = i;
                model.remove(&key);
            }
            _ => {
                let got = value(&c.get(key.clone()).await.unwrap()).unwrap();
                assert_eq!(got.as_ref(), model.get(&key), "seed {seed} step {step}");
            }
        }
    }
    for r in 0..3 {
        cluster
            .explain(cluster.wait_applied(r, last).await)
            .unwrap();
        let mut rc = cluster.connect(r, Role::Client).await.unwrap();
        for k in 0..16u8 {
            let key = Bytes::from(vec![k, 0xff]);
            let got = value(&rc.get(key.clone()).await.unwrap()).unwrap();
            assert_eq!(
                got.as_ref(),
                model.get(&key),
                "seed {seed} replica {r} key {k}"
            );
        }
    }
}

/// The leader is killed with writes in flight: every write it acknowledged
/// before dying is on the follower elected next, and the second follower
/// agrees after catching up.
#[tokio::test]
async fn kill_9_with_writes_in_flight_loses_no_acknowledged_write() {
    let mut cluster = Cluster::replicas(3, &[]).await.unwrap();
    cluster.explain(cluster.elect(0, 1, 1).await).unwrap();
    let mut c = cluster.connect(0, Role::Client).await.unwrap();
    let mut keys = std::collections::BTreeMap::new();
    for i in 0..400u32 {
        let id = c
            .send(Op::Set {
                key: format!("k{i}").into(),
                value: format!("v{i}").into(),
            })
            .await
            .unwrap();
        keys.insert(id, i);
    }
    // Kill once some, but typically not all, are acknowledged.
    let mut acked = Vec::new();
    while acked.len() < 20 {
        let resp = c.recv().await.unwrap();
        written(&resp.reply).unwrap();
        acked.push(keys[&resp.id]);
    }
    cluster.kill_replica(0).unwrap();
    // Whatever else was acknowledged before the connection died counts too.
    while let Ok(Some(m)) = c.recv_message(Duration::from_secs(10)).await {
        if let Message::Response(resp) = m {
            if matches!(resp.reply, Reply::Written { .. }) {
                acked.push(keys[&resp.id]);
            }
        }
    }

    let mut best: Option<(usize, (Epoch, LogIndex))> = None;
    for i in [1, 2] {
        let mut admin = cluster.connect(i, Role::Balancer).await.unwrap();
        let s = node(&admin.fence(2).await.unwrap()).unwrap();
        let key = (s.last_epoch, s.last_index);
        if best.is_none_or(|(_, b)| key > b) {
            best = Some((i, key));
        }
    }
    let (new_leader, _) = best.unwrap();
    let other = 3 - new_leader;
    let mut admin = cluster.connect(new_leader, Role::Balancer).await.unwrap();
    node(&admin.promote(2, 1, 2000).await.unwrap()).unwrap();
    let (lid, laddr) = (
        cluster.replica(new_leader).id,
        cluster.replica(new_leader).addr,
    );
    let mut oadmin = cluster.connect(other, Role::Balancer).await.unwrap();
    node(&oadmin.follow(2, lid, laddr).await.unwrap()).unwrap();

    let mut lc = cluster.connect(new_leader, Role::Client).await.unwrap();
    let after = cluster
        .explain(lc.set_until_acked("after", "x", CONVERGE).await)
        .unwrap();
    cluster
        .explain(cluster.wait_applied(other, after).await)
        .unwrap();
    for r in [new_leader, other] {
        let mut rc = cluster.connect(r, Role::Client).await.unwrap();
        for i in &acked {
            assert_eq!(
                value(&rc.get(format!("k{i}")).await.unwrap()).unwrap(),
                Some(Bytes::from(format!("v{i}"))),
                "acknowledged k{i} missing on replica {r} ({} acked)",
                acked.len()
            );
        }
    }
}
