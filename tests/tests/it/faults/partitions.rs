//! Network faults through the relays the balancer knows the replicas by: a
//! leader cut off from its followers (briefly, or long enough to be
//! replaced), from the balancer, slow and cut links, and a cut-off leader's
//! unacknowledged tail crashed and restarted.

use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::{NodeRole, Role};
use semikv_tests::checker::{Action, Outcome};
use semikv_tests::probe::write_once;
use semikv_tests::Deadline;

use super::rig::{
    balancer_leader, cluster_epoch, direct_read, loaded_proxied_cluster, probe_deposed,
    wait_balancer_leader, wait_caught_up_follower, DIRECT,
};
use super::verify::finish;
use super::{load_time, partition_time, rounds, PROGRESS};
use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_but_not_the_balancer_loses_nothing() {
    let (rig, workload) = loaded_proxied_cluster().await;
    let mut faults = 0;
    for _ in 0..rounds(1, 4) {
        tokio::time::sleep(load_time()).await;
        let leader = wait_balancer_leader(&rig, None).await;
        // Followers reach the leader only through its proxy: blackholing
        // replica-role connections there cuts the streams both ways, while
        // the balancer still sees a healthy leader.
        rig.proxies()[leader].blackhole(&[Role::Replica]);
        faults += 1;
        tokio::time::sleep(partition_time()).await;
        rig.proxies()[leader].heal();
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    finish(
        "leader-cut-from-followers",
        rig,
        workload,
        Vec::new(),
        faults,
    )
    .await;
}

/// Bound, from the cut, on a replacement leader serving acknowledged writes
/// through the balancer while the old leader stays cut off from its
/// followers: the leader notices silent follower streams after 3 s (the
/// servers' replication silence timeout), the balancer needs `down_after`
/// checks (0.3 s) and one election; the rest is slack for a noisy machine.
const STALLED_LEADER_REPLACED_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_for_long_is_replaced_and_rejoins() {
    let (rig, workload) = loaded_proxied_cluster().await;
    let mut faults = 0;
    let mut probes = Vec::new();
    for round in 0..rounds(1, 3) {
        tokio::time::sleep(load_time()).await;
        let old = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        // The balancer still reaches the leader; its followers do not, for
        // longer than the sync timeout: every write it takes would fail with
        // NotEnoughReplicas, so the balancer must lead elsewhere.
        rig.proxies()[old].blackhole(&[Role::Replica]);
        faults += 1;
        let deadline = Deadline::new(
            STALLED_LEADER_REPLACED_WITHIN,
            "another leader while the old one is cut off from its followers",
        );
        let cut = Instant::now();
        let new = loop {
            if let Some(i) = balancer_leader(&rig).await.filter(|&i| i != old) {
                break i;
            }
            let r = deadline.tick().await;
            rig.explain(r);
        };
        let replaced_ms = cut.elapsed().as_millis();
        let left = STALLED_LEADER_REPLACED_WITHIN.saturating_sub(cut.elapsed());
        let r = workload.wait_progress(PROGRESS, left).await;
        rig.explain(r);
        eprintln!(
            "faults: stalled leader {old} replaced by {new} {replaced_ms} ms after the cut; \
             writes served again by {} ms",
            cut.elapsed().as_millis()
        );
        // Still partitioned: the old leader, deposed by the fence, must not
        // acknowledge a write on its own.
        probes.push(probe_deposed(&rig, old, &format!("stalled-{round}")).await);
        rig.proxies()[old].heal();
        wait_caught_up_follower(&rig, old, new, epoch).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    finish("leader-stalled-by-partition", rig, workload, probes, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_balancer_but_not_its_followers_is_fenced() {
    let (rig, workload) = loaded_proxied_cluster().await;
    let mut faults = 0;
    let mut probes = Vec::new();
    for round in 0..rounds(1, 4) {
        tokio::time::sleep(load_time()).await;
        let old = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        rig.proxies()[old].blackhole(&[Role::Balancer, Role::Client]);
        faults += 1;
        // The balancer loses the leader, fences the followers and promotes
        // one of them; the old leader, still running and still believing it
        // leads, must not acknowledge anything from then on.
        let new = wait_balancer_leader(&rig, Some(old)).await;
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
        probes.push(probe_deposed(&rig, old, &format!("partitioned-{round}")).await);
        rig.proxies()[old].heal();
        wait_caught_up_follower(&rig, old, new, epoch).await;
    }
    finish("leader-cut-from-balancer", rig, workload, probes, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_flaky_links_lose_nothing() {
    let (rig, workload) = loaded_proxied_cluster().await;
    let mut faults = 0;
    for round in 0..rounds(3, 12) {
        let leader = wait_balancer_leader(&rig, None).await;
        let follower = (leader + 1 + round % 2) % rig.proxies().len();
        // Slow links everywhere, then every connection to the leader (its
        // balancer links and its followers' streams) and to one follower
        // cut with requests in flight.
        for p in rig.proxies() {
            p.set_delay(Duration::from_millis(5));
        }
        tokio::time::sleep(load_time()).await;
        rig.proxies()[leader].cut();
        rig.proxies()[follower].cut();
        faults += 2 + rig.proxies().len();
        for p in rig.proxies() {
            p.set_delay(Duration::ZERO);
        }
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    finish("slow-and-cut-links", rig, workload, Vec::new(), faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_tail_is_never_read_and_is_truncated_after_a_crash() {
    // MySQL's lost "phantom" transactions: a leader cut off from its
    // followers appends writes nobody acknowledges, crashes, and restarts.
    // Those entries must never become visible (not on the restarted
    // replica, not anywhere) and must be truncated when it rejoins. Each
    // phantom candidate goes to its own write-once key, so no later write
    // can mask a rolled-back read from the checker.
    let (mut rig, workload) = loaded_proxied_cluster().await;
    let mut faults = 0;
    let mut extra = Vec::new();
    for round in 0..rounds(1, 4) {
        tokio::time::sleep(load_time()).await;
        let old = wait_balancer_leader(&rig, None).await;
        let epoch = cluster_epoch(&rig).await;
        rig.proxies()[old].blackhole(&[Role::Replica]);
        faults += 1;
        let mut phantoms = Vec::new();
        for n in 0..3 {
            let key = Bytes::from(format!("phantom-{round}-{n}"));
            let val = Bytes::from(format!("tentative-{round}-{n}"));
            let addr = rig.cluster.replica(old).addr;
            let (event, _) = write_once(addr, DIRECT, key.clone(), val).await;
            assert_ne!(
                event.outcome,
                Outcome::Ok,
                "a leader without followers acknowledged: {}",
                event.detail
            );
            extra.push(event);
            phantoms.push(key);
        }
        rig.cluster.kill_replica(old).unwrap();
        faults += 1;
        rig.proxies()[old].heal();
        let new = wait_balancer_leader(&rig, Some(old)).await;
        rig.cluster.restart_replica(old).await.unwrap();
        // Read the phantom keys from the restarted replica while it rejoins,
        // and from the new leader; every answer goes to the checker.
        let deadline = Deadline::new(CONVERGE, "the crashed leader to rejoin");
        loop {
            for key in &phantoms {
                extra.push(direct_read(&rig, old, key).await);
                extra.push(direct_read(&rig, new, key).await);
            }
            let mut c = rig.cluster.connect(old, Role::Client).await.unwrap();
            let s = c.status().await.unwrap();
            if s.role == NodeRole::Follower && s.epoch > epoch {
                break;
            }
            let r = deadline.tick().await;
            rig.explain(r);
        }
        wait_caught_up_follower(&rig, old, new, epoch).await;
        // No follower ever held them, so no leader could commit them: the
        // rejoined replica truncated them and nobody has them.
        for key in &phantoms {
            for i in 0..rig.cluster.len() {
                let read = direct_read(&rig, i, key).await;
                assert_eq!(
                    (&read.action, read.outcome),
                    (&Action::Get(None), Outcome::Ok),
                    "an unacknowledged entry survived on replica {i}: {read:?}\n{}",
                    rig.logs()
                );
                extra.push(read);
            }
        }
        let r = workload.wait_progress(PROGRESS, CONVERGE).await;
        rig.explain(r);
    }
    let seen = extra
        .iter()
        .filter(|e| matches!(&e.action, Action::Get(Some(_))))
        .count();
    eprintln!("faults: phantom reads that returned a value: {seen}");
    finish("unacknowledged-tail-crash", rig, workload, extra, faults).await;
}
