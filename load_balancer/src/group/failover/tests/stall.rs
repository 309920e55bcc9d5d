use std::time::{Duration, Instant};

use super::*;

// --- the stall rule ---

const HB: Duration = Duration::from_millis(100);

/// The defaults: sync 1 of 3, down after 3, heartbeat 100 ms, election
/// wait 600 ms: grace 1 s, damping 5 s.
fn watch(sync: u32, replicas: usize) -> StallWatch {
    StallWatch::new(StallRule::new(
        sync_replicas(sync, replicas),
        3,
        HB,
        Duration::from_millis(600),
    ))
}

fn report(slot: usize, epoch: u64, seq: u64, connected: usize, others: usize) -> LeaderReport {
    LeaderReport {
        slot,
        epoch: ep(epoch),
        seq,
        connected,
        healthy_others: others,
        disk_full: false,
        unmeetable: false,
    }
}

/// Feeds `n` fresh reports of slot 0 at epoch 1 one heartbeat apart,
/// starting at `*at` and `*seq`; returns the last verdict.
fn feed(
    w: &mut StallWatch,
    at: &mut Instant,
    seq: &mut u64,
    n: usize,
    connected: usize,
) -> StallVerdict {
    let mut last = StallVerdict::Fine;
    for _ in 0..n {
        *seq += 1;
        last = w.observe(report(0, 1, *seq, connected, 2), *at);
        *at += HB;
    }
    last
}

#[test]
fn stall_rule_derives_grace_and_damping_from_the_settings() {
    let r = StallRule::new(1, 3, HB, Duration::from_millis(600));
    assert_eq!(r.sync, 1);
    assert_eq!(r.checks, 3);
    assert_eq!(r.grace, Duration::from_secs(1));
    assert_eq!(r.damping, Duration::from_secs(5));
    let slow = StallRule::new(2, 4, Duration::from_millis(500), Duration::from_secs(3));
    assert_eq!(slow.grace, Duration::from_secs(3));
    assert_eq!(slow.damping, Duration::from_secs(20));
    assert_eq!(StallRule::new(1, 0, HB, Duration::ZERO).checks, 1);
}

#[test]
fn stalled_only_after_down_after_short_reports_in_a_row() {
    let mut w = watch(1, 3);
    let (mut at, mut seq) = (Instant::now(), 0);
    // Past the grace with followers connected.
    assert_eq!(feed(&mut w, &mut at, &mut seq, 15, 1), StallVerdict::Fine);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 2, 0), StallVerdict::Fine);
    // One connected report breaks the streak.
    assert_eq!(feed(&mut w, &mut at, &mut seq, 1, 1), StallVerdict::Fine);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 2, 0), StallVerdict::Fine);
    assert_eq!(
        feed(&mut w, &mut at, &mut seq, 1, 0),
        StallVerdict::Stalled {
            connected: 0,
            needed: 1
        }
    );
}

/// After a fine run, three reports of a leader with both followers
/// connected but marked by `mark`: the last verdict.
fn verdict_when(mark: impl Fn(LeaderReport) -> LeaderReport) -> StallVerdict {
    let mut w = watch(1, 3);
    let (mut at, mut seq) = (Instant::now(), 0);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 15, 1), StallVerdict::Fine);
    let mut last = StallVerdict::Fine;
    for _ in 0..3 {
        seq += 1;
        last = w.observe(mark(report(0, 1, seq, 2, 2)), at);
        at += HB;
    }
    last
}

#[test]
fn a_leader_whose_disk_is_full_is_stalled_even_with_its_followers_connected() {
    let last = verdict_when(|r| LeaderReport {
        disk_full: true,
        ..r
    });
    assert!(matches!(last, StallVerdict::Stalled { .. }), "{last:?}");
}

#[test]
fn a_leader_that_needs_more_followers_than_exist_is_stalled() {
    let last = verdict_when(|r| LeaderReport {
        unmeetable: true,
        ..r
    });
    assert!(matches!(last, StallVerdict::Stalled { .. }), "{last:?}");
}

#[test]
fn a_report_already_seen_is_not_counted_again() {
    let mut w = watch(1, 3);
    let (mut at, mut seq) = (Instant::now(), 0);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 15, 1), StallVerdict::Fine);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 2, 0), StallVerdict::Fine);
    for _ in 0..5 {
        assert_eq!(w.observe(report(0, 1, seq, 0, 2), at), StallVerdict::Fine);
    }
    assert!(matches!(
        feed(&mut w, &mut at, &mut seq, 1, 0),
        StallVerdict::Stalled { .. }
    ));
}

#[test]
fn a_leader_is_not_judged_before_its_grace_ends() {
    let mut w = watch(1, 3);
    let (mut at, mut seq) = (Instant::now(), 0);
    // 0.9 s of reports without any follower: still in the 1 s grace.
    assert_eq!(feed(&mut w, &mut at, &mut seq, 10, 0), StallVerdict::Fine);
    // At 1 s the streak is long enough already: stalled at once.
    assert!(matches!(
        feed(&mut w, &mut at, &mut seq, 1, 0),
        StallVerdict::Stalled { .. }
    ));
}

#[test]
fn a_new_leader_or_epoch_restarts_the_grace_and_the_count() {
    let mut w = watch(1, 3);
    let (mut at, mut seq) = (Instant::now(), 0);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 10, 0), StallVerdict::Fine);
    let t = at;
    // Same slot, next epoch (re-promoted): a new leader.
    assert_eq!(w.observe(report(0, 2, 100, 0, 2), t), StallVerdict::Fine);
    assert_eq!(
        w.observe(report(0, 2, 101, 0, 2), t + HB),
        StallVerdict::Fine
    );
    assert_eq!(
        w.observe(report(0, 2, 102, 0, 2), t + 2 * HB),
        StallVerdict::Fine,
        "three short reports, but within the grace of the new leader"
    );
    // Another slot.
    assert_eq!(
        w.observe(report(1, 2, 7, 0, 2), t + 20 * HB),
        StallVerdict::Fine
    );
    w.clear();
    assert_eq!(
        w.observe(report(1, 2, 8, 0, 2), t + 40 * HB),
        StallVerdict::Fine
    );
}

#[test]
fn no_failover_without_enough_healthy_replicas_to_elect_a_successor() {
    // Five replicas, one sync replica: moving leadership needs four fence
    // answers, the leader's included. Two healthy followers are not
    // enough, whatever the leader's streams say; three are.
    let rule = StallRule::new(1, 3, HB, Duration::from_millis(600)).with_quorum(4);
    assert_eq!(rule.others_needed, 3);
    let mut w = StallWatch::new(rule);
    let t = Instant::now();
    for seq in 0..20 {
        let at = t + HB * u32::try_from(seq).unwrap();
        assert_eq!(w.observe(report(0, 1, seq, 0, 2), at), StallVerdict::Fine);
    }
    let verdicts: Vec<StallVerdict> = (20..23)
        .map(|seq| {
            w.observe(
                report(0, 1, seq, 0, 3),
                t + HB * u32::try_from(seq).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts.last(),
        Some(&StallVerdict::Stalled {
            connected: 0,
            needed: 1
        })
    );
    // The quorum never lowers what the sync replicas need.
    assert_eq!(StallRule::new(2, 3, HB, HB).with_quorum(1).others_needed, 2);
}

#[test]
fn no_failover_without_enough_healthy_replicas_elsewhere() {
    let mut w = StallWatch::new(StallRule::new(2, 3, HB, Duration::from_millis(600)));
    let t = Instant::now();
    for seq in 0..20 {
        let at = t + HB * u32::try_from(seq).unwrap();
        // Two followers needed, one connected, one other healthy: a
        // leader elsewhere could not commit either.
        assert_eq!(w.observe(report(0, 1, seq, 1, 1), at), StallVerdict::Fine);
    }
    // Those reports were no streak: it starts with the first report
    // where a leader elsewhere could commit.
    for seq in 20..22 {
        let at = t + HB * u32::try_from(seq).unwrap();
        assert_eq!(w.observe(report(0, 1, seq, 1, 2), at), StallVerdict::Fine);
    }
    assert_eq!(
        w.observe(report(0, 1, 22, 1, 2), t + HB * 22),
        StallVerdict::Stalled {
            connected: 1,
            needed: 2
        }
    );
}

#[test]
fn a_single_replica_is_never_stalled() {
    // N = 1: sync_replicas is 0, and there is nobody else anyway.
    let mut w = watch(1, 1);
    let (mut at, mut seq) = (Instant::now(), 0);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 50, 0), StallVerdict::Fine);
    let mut w = watch(0, 3);
    assert_eq!(feed(&mut w, &mut at, &mut seq, 50, 0), StallVerdict::Fine);
}

#[test]
fn two_replicas_fail_over_to_the_other_one_only_when_it_is_healthy() {
    let mut w = watch(1, 2);
    let t = Instant::now();
    for seq in 0..20 {
        let at = t + HB * u32::try_from(seq).unwrap();
        assert_eq!(w.observe(report(0, 1, seq, 0, 0), at), StallVerdict::Fine);
    }
    for seq in 20..22 {
        let at = t + HB * u32::try_from(seq).unwrap();
        assert_eq!(w.observe(report(0, 1, seq, 0, 1), at), StallVerdict::Fine);
    }
    assert_eq!(
        w.observe(report(0, 1, 22, 0, 1), t + HB * 22),
        StallVerdict::Stalled {
            connected: 0,
            needed: 1
        }
    );
}

#[test]
fn damping_refuses_a_second_stall_failover_for_a_while() {
    let mut w = watch(1, 3);
    let (mut at, mut seq) = (Instant::now(), 0);
    assert!(matches!(
        feed(&mut w, &mut at, &mut seq, 11, 0),
        StallVerdict::Stalled { .. }
    ));
    let failed_at = at;
    w.failed_over(failed_at);
    // The successor (slot 1, epoch 2) has no followers either.
    let mut verdicts = Vec::new();
    for i in 1..=30u32 {
        let now = failed_at + HB * i;
        verdicts.push(w.observe(report(1, 2, u64::from(i), 0, 2), now));
    }
    let damped: Vec<usize> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v, StallVerdict::Damped { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(
        !verdicts
            .iter()
            .any(|v| matches!(v, StallVerdict::Stalled { .. })),
        "{verdicts:?}"
    );
    // Judged once its grace is over (1 s after its first report, the
    // 11th), then once every 3 reports.
    assert_eq!(damped.first(), Some(&10));
    assert!(damped.windows(2).all(|p| p[1] - p[0] == 3), "{damped:?}");
    let StallVerdict::Damped {
        connected,
        needed,
        wait,
        first,
    } = verdicts[10]
    else {
        unreachable!()
    };
    assert_eq!((connected, needed), (0, 1));
    assert_eq!(wait, Duration::from_secs(5) - HB * 11);
    assert!(first, "the first refusal after the failover is flagged");
    assert!(
        damped[1..]
            .iter()
            .all(|&i| matches!(verdicts[i], StallVerdict::Damped { first: false, .. })),
        "repeats are not"
    );
    // Once the 5 s are over, it acts again.
    let mut last = StallVerdict::Fine;
    for i in 31..=60u32 {
        last = w.observe(report(1, 2, u64::from(i), 0, 2), failed_at + HB * i);
        if matches!(last, StallVerdict::Stalled { .. }) {
            assert!(HB * i >= Duration::from_secs(5));
            break;
        }
    }
    assert!(matches!(last, StallVerdict::Stalled { .. }), "{last:?}");
}

/// The first stall verdict for slot `slot` at `epoch`, reports one
/// heartbeat apart from `from`; returns when it came.
fn first_stall(w: &mut StallWatch, slot: usize, epoch: u64, from: Instant) -> Duration {
    for i in 1..2000u32 {
        let v = w.observe(report(slot, epoch, u64::from(i), 0, 2), from + HB * i);
        if matches!(v, StallVerdict::Stalled { .. }) {
            return HB * i;
        }
    }
    panic!("never stalled");
}

#[test]
fn repeated_stall_failovers_back_off_until_a_leader_recovers() {
    let mut w = watch(1, 3);
    let t0 = Instant::now();
    let mut at = t0 + first_stall(&mut w, 0, 1, t0);
    w.failed_over(at);
    // A star network: no leader ever gets a follower.
    let mut gaps = Vec::new();
    for epoch in 2..8 {
        let gap = first_stall(&mut w, usize::try_from(epoch % 3).unwrap(), epoch, at);
        gaps.push(gap);
        at += gap;
        w.failed_over(at);
    }
    let secs: Vec<u64> = gaps.iter().map(|g| g.as_secs()).collect();
    assert_eq!(secs, vec![5, 10, 20, 40, 80, 80]);
    // A leader that keeps its followers for a whole (80 s) pause resets
    // it; one good report does not.
    let epoch = 8;
    assert_eq!(
        w.observe(report(1, epoch, 1, 1, 2), at + HB),
        StallVerdict::Fine
    );
    for i in 2..=801u32 {
        let now = at + HB * i;
        assert_eq!(
            w.observe(report(1, epoch, u64::from(i), 1, 2), now),
            StallVerdict::Fine
        );
    }
    at += HB * 801;
    w.failed_over(at);
    let gap = first_stall(&mut w, 2, epoch + 1, at);
    assert_eq!(gap.as_secs(), 5);
}

fn seen_c(id: u32, last_epoch: u64, last_index: u64, commit: u64) -> StatusSummary {
    StatusSummary {
        commit_index: LogIndex(commit),
        ..seen(id, Follower, 9, last_epoch, last_index)
    }
}

#[test]
fn successor_is_never_the_stalled_leader_even_with_the_longest_log() {
    let fenced = [
        (0, seen_c(1, 4, 20, 15)),
        (1, seen_c(2, 4, 17, 15)),
        (2, seen_c(3, 4, 16, 15)),
    ];
    assert_eq!(choose_leader(&fenced), Some(0));
    assert_eq!(choose_successor(&fenced, 0, None), Some(1));
    assert_eq!(choose_successor(&fenced, 1, None), Some(0));
}

#[test]
fn successor_must_hold_what_the_stalled_leader_committed() {
    let fenced = [
        (0, seen_c(1, 4, 20, 15)),
        (1, seen_c(2, 4, 14, 14)),
        (2, seen_c(3, 3, 30, 14)),
    ];
    // Slot 1 lacks index 15; slot 2's longer log ends in an older epoch.
    assert_eq!(choose_successor(&fenced, 0, None), None);
    let fenced = [(0, seen_c(1, 4, 20, 15)), (1, seen_c(2, 4, 15, 14))];
    assert_eq!(choose_successor(&fenced, 0, None), Some(1));
}

#[test]
fn successor_without_the_stalled_leaders_answer_is_the_best_follower() {
    let fenced = [(1, seen_c(2, 4, 14, 14)), (2, seen_c(3, 4, 16, 10))];
    assert_eq!(choose_successor(&fenced, 0, None), Some(2));
}

#[test]
fn no_successor_when_no_follower_answered() {
    assert_eq!(
        choose_successor(&[(0, seen_c(1, 4, 20, 15))], 0, None),
        None
    );
    assert_eq!(choose_successor(&[], 0, None), None);
}

#[test]
fn a_restarted_follower_does_not_get_the_leader_deposed() {
    // Two replicas: the follower crashes, stays down for 3 s, and comes
    // back Idle. Neither a down nor an idle replica counts as a follower
    // that could serve a successor, so none of this is a stall streak.
    let mut w = watch(1, 2);
    let t = Instant::now();
    let mut seq = 0u64;
    let mut at = t;
    let mut step = |w: &mut StallWatch, connected: usize, others: usize| {
        seq += 1;
        at += HB;
        w.observe(report(0, 1, seq, connected, others), at)
    };
    for _ in 0..20 {
        assert_eq!(step(&mut w, 1, 1), StallVerdict::Fine);
    }
    for _ in 0..30 {
        assert_eq!(step(&mut w, 0, 0), StallVerdict::Fine, "follower down");
    }
    // Back, told to follow, its stream not connected yet.
    assert_eq!(step(&mut w, 0, 1), StallVerdict::Fine);
    assert_eq!(step(&mut w, 0, 1), StallVerdict::Fine);
    assert_eq!(step(&mut w, 1, 1), StallVerdict::Fine);
    // A real stall afterwards is still caught.
    let mut last = StallVerdict::Fine;
    for _ in 0..3 {
        last = step(&mut w, 0, 1);
    }
    assert!(matches!(last, StallVerdict::Stalled { .. }), "{last:?}");
}

#[test]
fn a_short_recovery_does_not_reset_the_backoff() {
    let mut w = watch(1, 3);
    let t0 = Instant::now();
    let mut at = t0 + first_stall(&mut w, 0, 1, t0);
    w.failed_over(at);
    at += first_stall(&mut w, 1, 2, at);
    // Second failover in a row without a working leader: 10 s pause.
    w.failed_over(at);
    let failed_at = at;
    // The next leader has its follower for 2 s only (a flapping link).
    let mut seq = 0u64;
    for _ in 0..20 {
        seq += 1;
        at += HB;
        assert_eq!(w.observe(report(2, 3, seq, 1, 2), at), StallVerdict::Fine);
    }
    let stalled_at = loop {
        seq += 1;
        at += HB;
        if matches!(
            w.observe(report(2, 3, seq, 0, 2), at),
            StallVerdict::Stalled { .. }
        ) {
            break at;
        }
        assert!(at < failed_at + Duration::from_secs(100), "never stalled");
    };
    assert!(
        stalled_at - failed_at >= Duration::from_secs(10),
        "the pause was reset by a brief recovery: {:?}",
        stalled_at - failed_at
    );
}

#[test]
fn successor_must_hold_what_the_stalled_leader_held_when_promoted() {
    // Sim seed 25898: slot 0 followed a leader that committed index 108
    // with its acknowledgement, was promoted at epoch 2 (its no-op 109),
    // and stalled before learning that 108 was committed. Slot 1 lacks it.
    let fenced = [(0, seen_c(1, 2, 109, 107)), (1, seen_c(2, 1, 107, 107))];
    assert_eq!(choose_successor(&fenced, 0, None), Some(1), "the old rule");
    let base = Some((ep(1), LogIndex(108)));
    assert_eq!(choose_successor(&fenced, 0, base), None);
    // A follower that holds 108, or knows it committed, is fit.
    let fenced = [(0, seen_c(1, 2, 109, 107)), (1, seen_c(2, 1, 108, 107))];
    assert_eq!(choose_successor(&fenced, 0, base), Some(1));
    let fenced = [(0, seen_c(1, 2, 109, 107)), (1, seen_c(2, 2, 109, 108))];
    assert_eq!(choose_successor(&fenced, 0, base), Some(1));
}

#[test]
fn without_a_base_only_the_best_follower_may_succeed() {
    // 5 replicas, 2 sync: A (gone) committed 108 with B's and C's acks; C
    // missed the commit heartbeat, D missed 108. B, promoted by another
    // balancer at epoch 2, stalled with commit 107. Filtering by B's commit
    // first would drop C and keep D, which lacks 108.
    let fenced = [
        (1, seen_c(2, 2, 109, 107)),
        (2, seen_c(3, 1, 108, 106)),
        (3, seen_c(4, 1, 107, 107)),
        (4, seen_c(5, 1, 100, 100)),
    ];
    assert_eq!(choose_successor(&fenced, 1, None), None);
    // Knowing where B stood when promoted, (1, 108): C and D both fail it.
    let base = Some((ep(1), LogIndex(108)));
    assert_eq!(choose_successor(&fenced, 1, base), None);
    // C had learned 107 committed: the best follower, and fit.
    let mut fenced = fenced;
    fenced[1].1.commit_index = LogIndex(107);
    assert_eq!(choose_successor(&fenced, 1, None), Some(2));
}

#[test]
fn successor_holding_the_committed_prefix_is_fit_despite_an_older_last_epoch() {
    // The stalled leader's promotion no-op is at epoch 5 and uncommitted;
    // the follower holds everything committed (index 10).
    let fenced = [(0, seen_c(1, 5, 11, 10)), (1, seen_c(2, 4, 10, 10))];
    assert_eq!(choose_successor(&fenced, 0, None), Some(1));
    // Behind the commit index and in an older epoch: still not fit.
    let fenced = [(0, seen_c(1, 5, 11, 10)), (1, seen_c(2, 4, 10, 9))];
    assert_eq!(choose_successor(&fenced, 0, None), None);
}
