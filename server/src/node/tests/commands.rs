//! Commands on the leader: evaluated against writes not yet committed,
//! errors that log nothing, answers held for the state they read, one
//! entry per multi-key write; and expiry: hidden on every replica, deleted
//! through the log, replayed by followers without evaluating.

use semikv_protocol::{Command, Cond, KeyTtl, Mutation, Outcome, TtlChange, UnixMillis};

use super::*;
use crate::clock::ManualClock;

const T0: UnixMillis = UnixMillis(1_700_000_000_000);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A leader at epoch 1 needing one follower (replica 2), on a manual clock.
fn leader() -> (Node, ManualClock) {
    let mut n = fresh(1);
    let (clock, hand) = Clock::manual(T0);
    n.set_clock(clock);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    commit_all(&mut n);
    (n, hand)
}

/// Makes everything in the log durable and acknowledged by replica 2.
fn commit_all(n: &mut Node) {
    flush(n);
    let last = n.log.last_index();
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), last);
}

/// A command's answer, as its connection would get it.
struct Answer(mpsc::Receiver<WriteDone>);

impl Answer {
    fn take(&mut self, n: &mut Node) -> Option<Reply> {
        n.flush_effects();
        self.0.try_recv().ok().map(|done| done.response.reply)
    }
}

/// Proposes `command`: `Ok` with the answer to wait for when it was
/// registered, `Err` with the reply given at once.
fn command(n: &mut Node, command: Command) -> Result<Answer, Reply> {
    let (to, rx) = mpsc::channel(1);
    let completion = Completion {
        to,
        id: RequestId(9),
    };
    n.propose_command(&command, completion, Instant::now())?;
    Ok(Answer(rx))
}

fn nx(key: &str, value: &str) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        cond: Cond::IfAbsent,
        ttl: TtlChange::Persist,
        get_old: false,
    }
}

fn incr(key: &str, by: i64) -> Command {
    Command::IncrBy { key: b(key), by }
}

fn outcome(reply: Option<Reply>) -> Outcome {
    match reply {
        Some(Reply::Outcome(o)) => o,
        other => panic!("expected an outcome, got {other:?}"),
    }
}

#[test]
fn nx_sees_a_write_not_yet_committed_and_waits_for_it() {
    let (mut n, _) = leader();
    let (_, _plain) = propose(&mut n, set("k", "first")).unwrap();
    let before = n.log.last_index();
    let mut answer = command(&mut n, nx("k", "second")).expect("held for the pending write");
    // Nothing of its own to write: a no-op to wait on, no set of `k`.
    assert_eq!(n.log.last_index(), before.next());
    assert_eq!(n.log.get(before.next()).unwrap().op, WriteOp::Noop);
    assert!(
        answer.take(&mut n).is_none(),
        "answered before the write it read committed"
    );
    commit_all(&mut n);
    let o = outcome(answer.take(&mut n));
    assert!(!o.applied);
    assert_eq!(o.index, before.next());
    assert_eq!(value(&n, "k"), Some(b("first")));
    // Against committed state only, the answer comes at once, nothing logged.
    let last = n.log.last_index();
    let now = command(&mut n, nx("k", "third"))
        .err()
        .expect("answered at once");
    assert!(matches!(
        now,
        Reply::Outcome(Outcome { applied: false, .. })
    ));
    assert_eq!(n.log.last_index(), last);
}

#[test]
fn pipelined_increments_each_see_the_one_before() {
    let (mut n, _) = leader();
    let mut first = command(&mut n, incr("n", 1)).unwrap();
    let mut second = command(&mut n, incr("n", 10)).unwrap();
    commit_all(&mut n);
    assert_eq!(outcome(first.take(&mut n)).int, 1);
    assert_eq!(outcome(second.take(&mut n)).int, 11);
    assert_eq!(value(&n, "n"), Some(b("11")));
}

#[test]
fn a_wrong_value_or_an_overflow_is_an_error_and_logs_nothing() {
    let (mut n, _) = leader();
    propose(&mut n, set("s", "abc")).unwrap();
    propose(&mut n, set("max", &i64::MAX.to_string())).unwrap();
    commit_all(&mut n);
    let last = n.log.last_index();
    let err = command(&mut n, incr("s", 1)).err();
    assert_eq!(err, Some(Reply::Error(ErrorReply::NotAnInteger)));
    let err = command(&mut n, incr("max", 1)).err();
    assert_eq!(err, Some(Reply::Error(ErrorReply::Overflow)));
    assert_eq!(n.log.last_index(), last, "an error is logged as nothing");
    assert_eq!(value(&n, "s"), Some(b("abc")));
    // Read from a write not committed yet, the error waits for it.
    propose(&mut n, set("p", "x")).unwrap();
    let mut held = command(&mut n, incr("p", 1)).unwrap();
    assert!(held.take(&mut n).is_none());
    commit_all(&mut n);
    assert_eq!(
        held.take(&mut n),
        Some(Reply::Error(ErrorReply::NotAnInteger))
    );
}

#[test]
fn append_and_multi_key_writes_are_one_entry_each() {
    let (mut n, _) = leader();
    propose(&mut n, set("a", "x")).unwrap();
    commit_all(&mut n);
    let mut appended = command(
        &mut n,
        Command::Append {
            key: b("a"),
            value: b("yz"),
        },
    )
    .unwrap();
    let before = n.log.last_index();
    let mut mset = command(
        &mut n,
        Command::MSet {
            pairs: vec![(b("b"), b("1")), (b("c"), b("2"))],
            only_if_none_exist: false,
        },
    )
    .unwrap();
    assert_eq!(n.log.last_index(), before.next(), "one entry for MSET");
    let mut refused = command(
        &mut n,
        Command::MSet {
            pairs: vec![(b("d"), b("1")), (b("b"), b("2"))],
            only_if_none_exist: true,
        },
    )
    .unwrap();
    let mut del = command(
        &mut n,
        Command::Delete {
            keys: vec![b("a"), b("b"), b("nope"), b("a")],
        },
    )
    .unwrap();
    let last = n.log.last_index();
    assert!(matches!(n.log.get(last).unwrap().op, WriteOp::Batch(ref m) if m.len() == 2));
    commit_all(&mut n);
    assert_eq!(outcome(appended.take(&mut n)).int, 3);
    assert_eq!(outcome(mset.take(&mut n)).int, 1);
    let refused = outcome(refused.take(&mut n));
    assert!(!refused.applied, "MSETNX saw the pending b");
    assert_eq!(outcome(del.take(&mut n)).int, 2);
    assert_eq!(value(&n, "a"), None);
    assert_eq!(value(&n, "b"), None);
    assert_eq!(value(&n, "c"), Some(b("2")));
    assert_eq!(value(&n, "d"), None, "all or nothing");
}

#[test]
fn an_expired_key_is_hidden_then_deleted_through_the_log() {
    let (mut n, hand) = leader();
    let mut set_ex = command(
        &mut n,
        Command::Set {
            key: b("t"),
            value: b("v"),
            cond: Cond::Always,
            ttl: TtlChange::AfterMs(1000),
            get_old: false,
        },
    )
    .unwrap();
    commit_all(&mut n);
    assert!(outcome(set_ex.take(&mut n)).applied);
    assert_eq!(n.read(b"t"), Some(Some(b("v"))));
    assert_eq!(
        n.read_ttl(b"t"),
        Some(KeyTtl::Expires {
            at: UnixMillis(T0.0 + 1000),
            remaining_ms: 1000
        })
    );
    assert_eq!(n.sweep_expired(100), 0, "nothing due yet");
    hand.advance(1000);
    assert_eq!(n.read(b"t"), Some(None), "hidden at its expiry");
    assert_eq!(n.read_ttl(b"t"), Some(KeyTtl::NoKey));
    assert_eq!(value(&n, "t"), Some(b("v")), "still stored until deleted");
    let last = n.log.last_index();
    assert_eq!(n.sweep_expired(100), 1);
    assert_eq!(
        n.log.get(last.next()).unwrap().op,
        WriteOp::Batch(vec![Mutation {
            key: b("t"),
            value: None,
            expires_at: None
        }])
    );
    assert_eq!(n.sweep_expired(100), 0, "its delete is already logged");
    commit_all(&mut n);
    assert_eq!(value(&n, "t"), None);
    assert_eq!(n.expired_keys(), 0);
    assert!(!n.store.has_expiries());
}

#[test]
fn a_follower_replays_a_batch_as_it_is_and_hides_expired_keys_itself() {
    let (mut f, gen) = streaming_follower();
    let (clock, hand) = Clock::manual(T0);
    f.set_clock(clock);
    let batch = WriteOp::Batch(vec![
        Mutation {
            key: b("n"),
            value: Some(b("100")),
            expires_at: None,
        },
        Mutation {
            key: b("t"),
            value: Some(b("v")),
            expires_at: Some(UnixMillis(T0.0 + 5)),
        },
    ]);
    f.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(0),
        vec![entry(1, 1, set("n", "5")), entry(2, 1, batch)],
        LogIndex(2),
    )
    .unwrap();
    flush(&mut f);
    f.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(2),
        Vec::new(),
        LogIndex(2),
    )
    .unwrap();
    assert_eq!(f.read(b"n"), Some(Some(b("100"))), "applied, not added to");
    assert_eq!(f.read(b"t"), Some(Some(b("v"))));
    hand.advance(5);
    assert_eq!(f.read(b"t"), Some(None));
    assert_eq!(f.sweep_expired(100), 0, "a follower never deletes");
    assert_eq!(f.expired_keys(), 1);
}

#[test]
fn a_new_leader_evaluates_after_the_tail_it_inherited() {
    let (mut f, gen) = streaming_follower();
    f.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(0),
        vec![entry(1, 1, set("k", "inherited"))],
        LogIndex(0),
    )
    .unwrap();
    flush(&mut f);
    f.persist_and_promote(Epoch::from_raw(2), SETTINGS).unwrap();
    let mut answer = command(&mut f, nx("k", "mine")).expect("held for the tail");
    assert!(answer.take(&mut f).is_none());
    flush(&mut f);
    let last = f.log.last_index();
    f.on_ack(ReplicaId(3), Epoch::from_raw(2), last);
    assert!(!outcome(answer.take(&mut f)).applied);
    assert_eq!(value(&f, "k"), Some(b("inherited")));
}

#[test]
fn a_command_on_a_follower_is_refused_with_the_leader() {
    let (mut f, _) = streaming_follower();
    let refused = command(&mut f, incr("n", 1)).err();
    assert!(matches!(
        refused,
        Some(Reply::Error(ErrorReply::NotLeader { .. }))
    ));
    assert_eq!(f.log.last_index(), LogIndex(0));
}
