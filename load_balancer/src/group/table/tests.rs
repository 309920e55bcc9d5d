//! The replica table's tests: health, the read rotation, leader reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use semikv_protocol::{LogIndex, ReplicaId};

fn status(id: u32, role: NodeRole, epoch: u64, last: u64) -> NodeStatus {
    NodeStatus {
        id: ReplicaId(id),
        role,
        epoch: Epoch::from_raw(epoch.into()),
        last_index: LogIndex(last),
        last_epoch: Epoch::from_raw(epoch.into()),
        commit_index: LogIndex(last),
        applied_index: LogIndex(last),
        leader: None,
        followers: vec![],
    }
}

fn table3() -> Table {
    Table::new(&["a:1".into(), "b:2".into(), "c:3".into()])
}

#[test]
fn down_after_consecutive_misses_only() {
    let t = table3();
    t.record_ok(0, status(1, NodeRole::Idle, 0, 0));
    assert!(!t.record_miss(0, 3));
    assert!(!t.record_miss(0, 3));
    t.record_ok(0, status(1, NodeRole::Idle, 0, 0));
    assert!(!t.record_miss(0, 3));
    assert!(!t.record_miss(0, 3));
    assert!(t.record_miss(0, 3));
    assert!(!t.is_healthy(0));
    assert!(!t.record_miss(0, 3), "went down only once");
}

#[test]
fn reads_rotate_over_healthy_replicas_only() {
    let t = table3();
    assert_eq!(t.next_reader(None), None);
    t.record_ok(0, status(1, NodeRole::Leader, 1, 5));
    t.record_ok(2, status(3, NodeRole::Follower, 1, 5));
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(1),
    }));
    t.note_round(std::time::Instant::now());
    let picks: Vec<_> = (0..4).map(|_| t.next_reader(None).unwrap()).collect();
    assert_eq!(picks, vec![0, 2, 0, 2]);
    assert_eq!(t.next_reader(Some(0)), Some(2));
    t.mark_down(2);
    assert_eq!(t.next_reader(Some(0)), None);
    t.record_ok(1, status(2, NodeRole::Follower, 1, 5));
    assert_eq!(t.next_reader(Some(0)), Some(1));
}

#[test]
fn leader_report_counts_connected_followers_and_healthy_others() {
    use semikv_protocol::FollowerProgress;
    let t = table3();
    assert_eq!(t.leader_report(0, Epoch::from_raw(2)), None);
    let mut lead = status(1, NodeRole::Leader, 2, 10);
    lead.followers = vec![
        FollowerProgress {
            id: ReplicaId(2),
            match_index: LogIndex(10),
            connected: true,
        },
        FollowerProgress {
            id: ReplicaId(3),
            match_index: LogIndex(4),
            connected: false,
        },
    ];
    t.record_ok(0, lead.clone());
    t.record_ok(1, status(2, NodeRole::Follower, 2, 10));
    let r = t.leader_report(0, Epoch::from_raw(2)).unwrap();
    assert_eq!((r.slot, r.epoch), (0, Epoch::from_raw(2)));
    assert_eq!((r.connected, r.healthy_others), (1, 1));
    t.record_ok(0, lead);
    let again = t.leader_report(0, Epoch::from_raw(2)).unwrap();
    assert!(again.seq != r.seq, "a new status is a new report");
    t.record_ok(2, status(3, NodeRole::Follower, 2, 4));
    assert_eq!(
        t.leader_report(0, Epoch::from_raw(2))
            .unwrap()
            .healthy_others,
        2
    );
    t.mark_down(1);
    assert_eq!(
        t.leader_report(0, Epoch::from_raw(2))
            .unwrap()
            .healthy_others,
        1
    );
}

#[test]
fn an_idle_replica_gets_no_reads_whatever_it_has_applied() {
    let t = Table::new(&["a:1".into(), "b:2".into()]);
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(1),
    }));
    round(&t, 100, 100);
    assert_eq!(readers(&t), vec![0, 1]);
    // Restarted, not yet told to follow: its data may be anything.
    let mut idle = status(2, NodeRole::Idle, 1, 100);
    idle.applied_index = LogIndex(100);
    t.record_ok(1, idle);
    assert_eq!(readers(&t), vec![0]);
}

#[test]
fn a_leader_needing_more_followers_than_the_cluster_has_is_reported() {
    let leading = |sync_replicas| NodeReport {
        status: status(1, NodeRole::Leader, 2, 10),
        resources: Resources::default(),
        leading: Some(LeaderTerms {
            sync_replicas,
            sync_timeout_ms: 1000,
            async_fallback: false,
        }),
    };
    let t = table3();
    let epoch = Epoch::from_raw(2);
    t.record_report(0, leading(2));
    assert!(!t.leader_report(0, epoch).unwrap().unmeetable);
    t.record_report(0, leading(3));
    assert!(t.leader_report(0, epoch).unwrap().unmeetable);
}

#[test]
fn a_full_disk_moves_leadership_only_to_a_follower_with_room() {
    let full = |s: NodeStatus| NodeReport {
        status: s,
        resources: Resources {
            disk_full: Some("no space".to_string()),
            ..Resources::default()
        },
        leading: None,
    };
    let t = table3();
    let epoch = Epoch::from_raw(2);
    t.record_report(0, full(status(1, NodeRole::Leader, 2, 10)));
    t.record_report(1, full(status(2, NodeRole::Follower, 2, 10)));
    t.record_ok(2, status(3, NodeRole::Follower, 2, 10));
    let r = t.leader_report(0, epoch).unwrap();
    assert!(r.disk_full);
    assert_eq!(r.healthy_others, 1, "the full follower is no successor");
    // Every disk full: nowhere better to go, the leader stays.
    t.record_report(2, full(status(3, NodeRole::Follower, 2, 10)));
    let r = t.leader_report(0, epoch).unwrap();
    assert!(!r.disk_full);
    assert_eq!(r.healthy_others, 0);
    // The report says which replica is full.
    let report = t.cluster_report();
    assert!(report
        .resources
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.disk_full.is_some())));
}

#[test]
fn leader_report_counts_only_followers_at_the_leaders_epoch() {
    let t = table3();
    t.record_ok(0, status(1, NodeRole::Leader, 2, 10));
    // Restarted (Idle) and stale followers cannot serve a successor.
    t.record_ok(1, status(2, NodeRole::Idle, 0, 0));
    t.record_ok(2, status(3, NodeRole::Follower, 1, 9));
    assert_eq!(
        t.leader_report(0, Epoch::from_raw(2))
            .unwrap()
            .healthy_others,
        0
    );
    t.record_ok(1, status(2, NodeRole::Follower, 2, 0));
    assert_eq!(
        t.leader_report(0, Epoch::from_raw(2))
            .unwrap()
            .healthy_others,
        1
    );
    // Not a report of a leader at that epoch.
    assert_eq!(t.leader_report(0, Epoch::from_raw(3)), None);
    assert_eq!(t.leader_report(1, Epoch::from_raw(2)), None);
}

#[test]
fn cluster_status_reports_leader_and_lag() {
    let t = table3();
    t.record_ok(0, status(1, NodeRole::Leader, 2, 10));
    t.record_ok(1, status(2, NodeRole::Follower, 2, 7));
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(2),
    }));
    let c = t.cluster_status();
    assert_eq!(c.leader.as_deref(), Some("a:1"));
    assert_eq!(c.epoch, Epoch::from_raw(2));
    assert_eq!(c.replicas.len(), 3);
    assert_eq!(c.replicas[1].lag, 3);
    assert_eq!(c.replicas[1].id, Some(ReplicaId(2)));
    assert!(!c.replicas[2].healthy);
    assert_eq!(c.replicas[2].id, None);
}

/// A round in which the leader (slot 0) reports `commit` and the
/// follower in slot 1 reports having applied `applied`.
fn round(t: &Table, commit: u64, applied: u64) {
    t.record_ok(0, status(1, NodeRole::Leader, 1, commit));
    let mut follower = status(2, NodeRole::Follower, 1, commit);
    follower.applied_index = LogIndex(applied);
    t.record_ok(1, follower);
    t.note_round(std::time::Instant::now());
}

fn readers(t: &Table) -> Vec<usize> {
    let mut picks: Vec<usize> = (0..6).filter_map(|_| t.next_reader(None)).collect();
    picks.sort_unstable();
    picks.dedup();
    picks
}

#[test]
fn a_follower_that_falls_behind_leaves_the_read_rotation_until_it_catches_up() {
    let t = Table::new(&["a:1".into(), "b:2".into()]);
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(1),
    }));
    round(&t, 90, 90);
    // Applying within the window: in the rotation, round after round,
    // even when never quite at the leader's newest commit.
    for i in 0..(3 * CATCH_UP_ROUNDS as u64) {
        round(&t, 100 + 10 * i, 100 + 10 * i - 5);
        assert_eq!(readers(&t), vec![0, 1], "round {i}");
    }
    // Stuck (a stream that fails, a snapshot it cannot install): out
    // once the leader's commit of CATCH_UP_ROUNDS rounds ago passes it.
    let stuck = 500;
    let mut left_after = None;
    for i in 0..(2 * CATCH_UP_ROUNDS) {
        round(&t, 1000 + 10 * i as u64, stuck);
        if !t.is_readable(1) {
            left_after.get_or_insert(i);
        }
    }
    assert!(left_after.is_some(), "a stuck follower kept getting reads");
    assert_eq!(readers(&t), vec![0], "the leader takes the reads alone");
    // Caught up again: back in.
    round(&t, 2000, 2000);
    assert_eq!(readers(&t), vec![0, 1]);
}

#[test]
fn the_rotation_is_judged_after_a_full_window_and_the_bar_outlives_a_leader() {
    let t = Table::new(&["a:1".into(), "b:2".into()]);
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(1),
    }));
    for _ in 0..(CATCH_UP_ROUNDS - 1) {
        round(&t, 100, 0);
        assert_eq!(readers(&t), vec![0, 1], "judged before a full window");
    }
    round(&t, 100, 0);
    assert_eq!(readers(&t), vec![0]);
    // No leader for a while (an election): the bar stays.
    t.set_leader(None);
    for _ in 0..CATCH_UP_ROUNDS {
        t.note_round(std::time::Instant::now());
    }
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(2),
    }));
    assert_eq!(
        readers(&t),
        vec![0],
        "an election let a stuck follower back in"
    );
    // The old leader, now a follower that holds everything, is read
    // from when another replica leads.
    t.set_leader(Some(Leader {
        slot: 1,
        epoch: Epoch::from_raw(3),
    }));
    t.record_ok(0, status(1, NodeRole::Follower, 3, 100));
    assert_eq!(readers(&t), vec![0, 1]);
}

#[test]
fn a_follower_last_seen_at_another_epoch_gets_no_reads() {
    let t = table3();
    t.record_ok(0, status(1, NodeRole::Leader, 2, 10));
    t.record_ok(1, status(2, NodeRole::Follower, 2, 10));
    // Last seen following the previous leader: a peer may have moved it
    // since, and the next poll will tell.
    t.record_ok(2, status(3, NodeRole::Follower, 1, 10));
    t.set_leader(Some(Leader {
        slot: 0,
        epoch: Epoch::from_raw(2),
    }));
    t.note_round(std::time::Instant::now());
    assert_eq!(readers(&t), vec![0, 1]);
    t.record_ok(2, status(3, NodeRole::Follower, 2, 10));
    assert_eq!(readers(&t), vec![0, 1, 2]);
    // No leader: followers at the newest epoch known still serve reads,
    // one last seen below it does not.
    t.set_leader(None);
    t.record_ok(1, status(2, NodeRole::Follower, 1, 10));
    assert_eq!(readers(&t), vec![2]);
}

#[test]
fn a_followers_lag_is_the_age_of_the_newest_round_it_has_applied() {
    let t = table3();
    let t0 = std::time::Instant::now();
    let ms = Duration::from_millis;
    let lead = |t: &Table, slot: usize, id: u32, epoch: u64, commit: u64| {
        t.record_ok(slot, status(id, NodeRole::Leader, epoch, commit));
        t.set_leader(Some(Leader {
            slot,
            epoch: Epoch::from_raw(epoch.into()),
        }));
    };
    lead(&t, 0, 1, 1, 10);
    t.record_ok(1, status(2, NodeRole::Follower, 1, 10));
    t.note_round(t0);
    assert_eq!(t.lag_ms(0, t0 + ms(50)), Some(0), "the leader");
    assert_eq!(t.lag_ms(1, t0 + ms(50)), Some(50));
    assert_eq!(t.lag_ms(2, t0 + ms(50)), None, "never reported");

    // The leader moves on; the follower does not.
    lead(&t, 0, 1, 1, 20);
    t.note_round(t0 + ms(100));
    assert_eq!(t.lag_ms(1, t0 + ms(150)), Some(150));
    assert_eq!(
        t.next_fresh_reader(ms(120), t0 + ms(150), Some(0)),
        None,
        "too far behind for a 120 ms bound"
    );
    assert_eq!(t.next_fresh_reader(ms(200), t0 + ms(150), Some(0)), Some(1));

    // A new leader reports less than its predecessor had committed: the
    // follower that holds 15 is no fresher for it.
    lead(&t, 2, 3, 2, 15);
    t.record_ok(1, status(2, NodeRole::Follower, 2, 15));
    t.note_round(t0 + ms(200));
    assert_eq!(t.lag_ms(1, t0 + ms(250)), Some(250));
    assert_eq!(t.lag_ms(2, t0 + ms(250)), Some(0));
}
