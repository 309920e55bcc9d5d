//! One leader per epoch, as the replica enforces it: every order in which
//! two coordinators' fences, promotions and follows (and a coordinator's
//! late or repeated promote, and a crash and restart) can reach a replica,
//! checked against the rules of [`Node`]'s "One leader per epoch" section;
//! and the log-level consequences (a restarted leader never writes its old
//! epoch again, a log that breaks log matching is caught, not merged).

use semikv_protocol::CoordinatorId;

use super::*;

const A: CoordinatorId = CoordinatorId(0xa);
const B: CoordinatorId = CoordinatorId(0xb);

fn node(id: u32, epoch: Epoch, log: MemLog) -> Node {
    Node::new(
        ReplicaId(id),
        format!("127.0.0.1:{}", 9000 + id),
        Recovered {
            epoch,
            log,
            store: Store::default(),
            commit: LogIndex(0),
        },
        Signals::new(),
    )
}

/// What survives a crash: the persisted epoch and the durable log.
fn restarted(n: &Node) -> Node {
    node(n.id.0, n.epoch, n.log.clone())
}

fn addr(id: u32) -> String {
    format!("127.0.0.1:{}", 9000 + id)
}

/// One message that can reach a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Fence(Epoch),
    Promote(Epoch),
    Follow(Epoch, u32),
    /// The replica crashes and restarts with what it persisted.
    Restart,
}

/// What a replica did over one order of messages.
#[derive(Debug, Default)]
struct Lifetime {
    /// Each epoch it became leader at, in order, with how many times.
    led: Vec<Epoch>,
    /// Each `(epoch, leader)` it started following.
    followed: Vec<(Epoch, u32)>,
}

/// Delivers `msgs` in order to a fresh replica `id`, checking after every
/// step that its epoch never went down.
fn deliver(id: u32, msgs: &[Msg]) -> Lifetime {
    let mut n = node(id, Epoch::ZERO, MemLog::default());
    let mut life = Lifetime::default();
    for &msg in msgs {
        let before = n.epoch;
        match msg {
            Msg::Fence(e) => {
                let _ = n.persist_and_fence(e);
            }
            Msg::Promote(e) => {
                let was_leader = matches!(n.role, Role::Leader(_)) && n.epoch == e;
                if n.persist_and_promote(e, SETTINGS).is_ok() && !was_leader {
                    life.led.push(e);
                }
            }
            Msg::Follow(e, leader) => {
                let was = match &n.role {
                    Role::Follower(t) => Some((t.epoch, t.leader)),
                    _ => None,
                };
                if n.persist_and_follow(e, ReplicaId(leader), addr(leader))
                    .is_ok()
                    && was != Some((e, ReplicaId(leader)))
                {
                    life.followed.push((e, leader));
                }
            }
            Msg::Restart => n = restarted(&n),
        }
        assert!(
            n.epoch >= before,
            "replica {id}: epoch went down on {msg:?} ({msgs:?})"
        );
    }
    life
}

/// Every distinct order of `msgs`.
fn orders(msgs: &[Msg]) -> Vec<Vec<Msg>> {
    fn go(rest: &mut Vec<Msg>, prefix: &mut Vec<Msg>, out: &mut Vec<Vec<Msg>>) {
        if rest.is_empty() {
            out.push(prefix.clone());
            return;
        }
        let mut tried: Vec<Msg> = Vec::new();
        for i in 0..rest.len() {
            let m = rest[i];
            if tried.contains(&m) {
                continue;
            }
            tried.push(m);
            rest.remove(i);
            prefix.push(m);
            go(rest, prefix, out);
            prefix.pop();
            rest.insert(i, m);
        }
    }
    let mut out = Vec::new();
    go(&mut msgs.to_vec(), &mut Vec::new(), &mut out);
    out
}

/// One coordinator's election: fence every replica at `epoch`, promote
/// `winner`, tell the others to follow it. The messages to replica `id`.
fn election(epoch: Epoch, winner: u32, id: u32) -> Vec<Msg> {
    if id == winner {
        vec![Msg::Fence(epoch), Msg::Promote(epoch)]
    } else {
        vec![Msg::Fence(epoch), Msg::Follow(epoch, winner)]
    }
}

/// Runs every order of two elections (plus a repeated promote and a
/// restart at every replica) and checks the per-epoch rules across the
/// three replicas: an epoch's only leader is the winner its coordinator
/// promoted, it leads that epoch for one uninterrupted stretch, and whoever
/// follows at an epoch follows that winner.
fn check_two_elections(first: (Epoch, u32), second: (Epoch, u32)) -> usize {
    let winner_of = |e: Epoch| {
        if e == first.0 {
            first.1
        } else {
            second.1
        }
    };
    let mut runs = 0;
    for id in 1..=3u32 {
        let mut msgs = election(first.0, first.1, id);
        msgs.extend(election(second.0, second.1, id));
        // A coordinator that lost the answer sends its promote again, late.
        if id == first.1 {
            msgs.push(Msg::Promote(first.0));
        }
        msgs.push(Msg::Restart);
        for order in orders(&msgs) {
            runs += 1;
            let life = deliver(id, &order);
            for (i, &e) in life.led.iter().enumerate() {
                assert_eq!(
                    winner_of(e),
                    id,
                    "replica {id} led {e} it was not promoted at: {order:?}"
                );
                assert!(
                    !life.led[..i].contains(&e),
                    "replica {id} led {e} twice (after a restart or step-down): {order:?}"
                );
            }
            for &(e, leader) in &life.followed {
                assert_eq!(
                    leader,
                    winner_of(e),
                    "replica {id} followed a non-leader of {e}: {order:?}"
                );
            }
        }
    }
    runs
}

#[test]
fn two_coordinators_at_the_same_term_never_share_a_leader_or_an_epoch() {
    let runs = check_two_elections((Epoch::new(5, A), 1), (Epoch::new(5, B), 2));
    assert!(runs > 100, "{runs} orders only");
    // The same winner from both coordinators is just as safe.
    check_two_elections((Epoch::new(5, A), 1), (Epoch::new(5, B), 1));
}

#[test]
fn two_coordinators_at_adjacent_terms_never_share_a_leader() {
    check_two_elections((Epoch::new(5, A), 1), (Epoch::new(6, B), 2));
    check_two_elections((Epoch::new(6, A), 3), (Epoch::new(5, B), 2));
}

#[test]
fn a_paused_coordinators_late_promote_meets_the_newer_epoch() {
    // A fenced replica 1 at term 5, then paused; B elected replica 2 at
    // term 6 and told replica 1 to follow. A's promote arrives now.
    let (old, new) = (Epoch::new(5, A), Epoch::new(6, B));
    let mut n = node(1, Epoch::ZERO, MemLog::default());
    n.persist_and_fence(old).unwrap();
    n.persist_and_fence(new).unwrap();
    n.persist_and_follow(new, ReplicaId(2), addr(2)).unwrap();
    assert!(matches!(
        n.persist_and_promote(old, SETTINGS),
        Err(ErrorReply::StaleEpoch { .. })
    ));
    assert_eq!(n.status().role, NodeRole::Follower);
}

#[test]
fn a_follower_never_switches_to_a_second_leader_of_its_epoch() {
    let e = Epoch::new(3, A);
    let mut n = node(3, Epoch::ZERO, MemLog::default());
    n.persist_and_fence(e).unwrap();
    n.persist_and_follow(e, ReplicaId(1), addr(1)).unwrap();
    assert!(matches!(
        n.persist_and_follow(e, ReplicaId(2), addr(2)),
        Err(ErrorReply::EpochConflict { .. })
    ));
    assert!(matches!(
        n.persist_and_promote(e, SETTINGS),
        Err(ErrorReply::EpochConflict { .. })
    ));
    // The same leader again (another balancer knows it by another
    // address) is no conflict.
    n.persist_and_follow(e, ReplicaId(1), "10.0.0.1:1".to_string())
        .unwrap();
    assert_eq!(n.status().leader.as_deref(), Some("10.0.0.1:1"));
}

#[test]
fn a_leader_is_never_told_to_follow_at_its_own_epoch() {
    let e = Epoch::new(3, A);
    let mut n = node(1, Epoch::ZERO, MemLog::default());
    n.persist_and_fence(e).unwrap();
    n.persist_and_promote(e, SETTINGS).unwrap();
    assert!(matches!(
        n.persist_and_follow(e, ReplicaId(2), addr(2)),
        Err(ErrorReply::EpochConflict { .. })
    ));
    // A repeated promote (its answer was lost) keeps it leading.
    n.persist_and_promote(e, SETTINGS).unwrap();
    assert_eq!(n.status().role, NodeRole::Leader);
    // A fence at its own epoch changes nothing either.
    n.persist_and_fence(e).unwrap();
    assert_eq!(n.status().role, NodeRole::Leader);
}

fn entry_at(index: u64, epoch: Epoch, op: WriteOp) -> Entry {
    Entry {
        index: LogIndex(index),
        epoch,
        op,
    }
}

#[test]
fn a_leader_that_restarts_in_its_epoch_never_leads_it_again() {
    // Replica 1 led epoch e and wrote index 2; a follower holds it, but
    // replica 1 crashed before its own fsync and came back without it.
    let e = Epoch::new(4, A);
    let mut leader = node(1, Epoch::ZERO, MemLog::default());
    leader.persist_and_fence(e).unwrap();
    leader.persist_and_promote(e, SETTINGS).unwrap();
    let mut durable = MemLog::default();
    durable.append(entry_at(1, e, WriteOp::Noop)).unwrap();
    let mut back = node(1, e, durable);
    // Led again at e, it would write another entry at index 2 of epoch e:
    // two different entries with one index and epoch.
    assert!(matches!(
        back.persist_and_promote(e, SETTINGS),
        Err(ErrorReply::EpochConflict { .. })
    ));
    // Even a fence at e (no change) does not make it promotable at e.
    back.persist_and_fence(e).unwrap();
    assert!(back.persist_and_promote(e, SETTINGS).is_err());
    // A new epoch is fine.
    let next = Epoch::new(5, A);
    back.persist_and_fence(next).unwrap();
    back.persist_and_promote(next, SETTINGS).unwrap();
}

/// A follower of epoch `e` at replica 3 holding `ops` from index 1.
fn follower_with(e: Epoch, ops: &[WriteOp]) -> Node {
    let mut log = MemLog::default();
    for (i, op) in ops.iter().enumerate() {
        log.append(entry_at(i as u64 + 1, e, op.clone())).unwrap();
    }
    node(3, e, log)
}

#[test]
fn two_entries_of_one_index_and_epoch_are_caught_at_stream_start() {
    // What two leaders of one epoch would have left behind: the follower
    // holds one leader's entry at index 2, the new leader the other's.
    let old = Epoch::new(7, A);
    let mut f = follower_with(old, &[WriteOp::Noop, set("k", "from-one-leader")]);
    let theirs = entry_at(2, old, set("k", "from-the-other"));
    let new = Epoch::new(8, B);
    f.persist_and_fence(new).unwrap();
    f.persist_and_follow(new, ReplicaId(1), addr(1)).unwrap();
    let gen = f.role_gen;
    let refused = f.on_stream_from(gen, new, LogIndex(2), old, theirs.checksum());
    assert!(
        matches!(refused, Err(StreamError::Diverged(_))),
        "{refused:?}"
    );
    // It stopped: nothing was truncated or merged, and it serves nothing.
    assert_eq!(f.log.last_index(), LogIndex(2));
    assert!(matches!(
        f.status_reply(),
        Reply::Error(ErrorReply::Diverged { .. })
    ));
    assert!(matches!(
        f.persist_and_follow(Epoch::new(9, B), ReplicaId(1), addr(1)),
        Err(ErrorReply::Diverged { .. })
    ));
    assert!(f.check_serving().is_err(), "reads are refused too");
}

#[test]
fn an_entry_of_another_epoch_at_the_prefix_is_caught() {
    let mut f = follower_with(Epoch::new(2, A), &[WriteOp::Noop, WriteOp::Noop]);
    let new = Epoch::new(3, B);
    f.persist_and_follow(new, ReplicaId(1), addr(1)).unwrap();
    let gen = f.role_gen;
    let refused = f.on_stream_from(gen, new, LogIndex(2), Epoch::new(2, B), None);
    assert!(
        matches!(refused, Err(StreamError::Diverged(_))),
        "{refused:?}"
    );
}

#[test]
fn the_same_entry_at_the_prefix_truncates_only_the_tail() {
    let old = Epoch::new(2, A);
    let ops = [WriteOp::Noop, set("a", "1"), set("b", "unacked")];
    let mut f = follower_with(old, &ops);
    let shared = entry_at(2, old, set("a", "1"));
    let new = Epoch::new(3, B);
    f.persist_and_follow(new, ReplicaId(1), addr(1)).unwrap();
    let gen = f.role_gen;
    f.on_stream_from(gen, new, LogIndex(2), old, shared.checksum())
        .unwrap();
    assert_eq!(f.log.last_index(), LogIndex(2));
    assert!(f.diverged().is_none());
}

#[test]
fn an_absurd_epoch_or_promote_is_refused_and_changes_nothing() {
    let now = Epoch::new(7, A);
    let mut n = node(1, Epoch::ZERO, MemLog::default());
    n.persist_and_fence(now).unwrap();
    // Past any number of elections: a persisted epoch there could leave no
    // epoch to elect at.
    let absurd = Epoch::new(MAX_TERM + 1, B);
    for refused in [
        n.persist_and_fence(absurd),
        n.persist_and_promote(absurd, SETTINGS),
        n.persist_and_follow(absurd, ReplicaId(2), addr(2)),
    ] {
        assert!(
            matches!(refused, Err(ErrorReply::Invalid { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(n.epoch(), now);
    // However far below it, a jump is fine: replicas moved by different
    // amounts still take each other's epochs.
    n.persist_and_fence(Epoch::new(MAX_TERM, B)).unwrap();
    // And from there coordinators go on electing, a step at a time.
    let next = Epoch::new(MAX_TERM, B).successor(A).unwrap();
    n.persist_and_fence(next).unwrap();
    let leap = Epoch::new(next.term() + TERM_STEP + 1, B);
    assert!(matches!(
        n.persist_and_fence(leap),
        Err(ErrorReply::Invalid { .. })
    ));
    assert_eq!(n.epoch(), next);
    // Settings no balancer sends: every write would hang or wait forever.
    let mut fresh = node(2, Epoch::ZERO, MemLog::default());
    for settings in [
        LeaderSettings {
            sync_replicas: MAX_SYNC_REPLICAS + 1,
            ..SETTINGS
        },
        LeaderSettings {
            sync_timeout: Duration::MAX,
            ..SETTINGS
        },
    ] {
        let refused = fresh.persist_and_promote(Epoch::new(1, B), settings);
        assert!(
            matches!(refused, Err(ErrorReply::Invalid { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(fresh.status().role, NodeRole::Idle);
}

#[test]
fn no_role_is_taken_at_an_epoch_before_it_is_on_disk() {
    let e1 = Epoch::new(1, A);
    let e2 = Epoch::new(2, A);
    let mut n = node(1, e1, MemLog::default());
    // At or below what recovery read from disk, nothing needs writing.
    assert_eq!(n.epoch_to_persist(e1), Ok(None));
    assert_eq!(n.epoch_to_persist(e2), Ok(Some(e2)));
    // Acting before the write is reported is refused, and changes nothing.
    for refused in [
        n.fence(e2),
        n.promote(e2, SETTINGS),
        n.follow(e2, ReplicaId(2), addr(2)),
    ] {
        assert!(
            matches!(&refused, Err(ErrorReply::Storage { reason }) if reason.contains("not on disk")),
            "{refused:?}"
        );
    }
    assert_eq!(n.epoch(), e1);
    assert_eq!(n.status().role, NodeRole::Idle);
    n.epoch_persisted(e2);
    assert_eq!(n.epoch_to_persist(e2), Ok(None));
    n.fence(e2).unwrap();
    n.promote(e2, SETTINGS).unwrap();
    assert_eq!((n.epoch(), n.status().role), (e2, NodeRole::Leader));
    // A stale epoch is refused before anything would be written.
    assert!(matches!(
        n.epoch_to_persist(e1),
        Err(ErrorReply::StaleEpoch { .. })
    ));
}
