//! Write waiters: storage failure, sync-timeout expiry, batches, and
//! tickets of older leaderships.

use super::*;

#[test]
fn a_storage_failure_fails_pending_and_new_writes() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    let (_, mut rx) = propose(&mut n, set("a", "1")).unwrap();
    n.on_storage_failure("disk full".to_string());
    // In the log, perhaps on a follower already: its outcome is unknown.
    n.flush_effects();
    assert!(matches!(
        rx.try_recv().unwrap(),
        Err(ErrorReply::Indeterminate { .. })
    ));
    assert!(matches!(
        propose(&mut n, set("b", "2")).unwrap_err(),
        ErrorReply::Storage { .. }
    ));
}

/// Proposes `op` and returns its ticket and answer queue.
fn propose_ticket(n: &mut Node, op: WriteOp) -> (Ticket, mpsc::Receiver<WriteDone>) {
    let (to, rx) = mpsc::channel(4);
    let proposed = n
        .propose(
            op,
            Completion {
                to,
                id: RequestId(9),
            },
            Instant::now(),
        )
        .unwrap();
    (proposed.ticket, rx)
}

#[test]
fn an_expired_write_is_answered_not_enough_replicas_exactly_once() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    let (ticket, mut rx) = propose_ticket(&mut n, set("a", "1"));
    flush(&mut n);
    assert_eq!(n.waiting_writes(), 1);
    assert_eq!(n.expire(ticket), Expiry::NotEnoughReplicas);
    n.flush_effects();
    let done = rx.try_recv().unwrap();
    assert_eq!(done.response.id, RequestId(9));
    assert_eq!(
        done.response.reply,
        Reply::Error(ErrorReply::NotEnoughReplicas {
            acked: 0,
            required: 1
        })
    );
    assert!(done.settled < ticket, "an expiry settles no other write");
    assert_eq!(n.waiting_writes(), 0);
    // Expiring or forgetting it again does nothing; a late ack commits
    // the entry but answers nobody twice.
    assert_eq!(n.expire(ticket), Expiry::AlreadyAnswered);
    assert!(!n.forget(ticket));
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), ticket.index);
    assert_eq!(n.commit_index(), ticket.index);
    n.flush_effects();
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_committed_write_is_left_alone_by_its_expiry() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    let (ticket, mut rx) = propose_ticket(&mut n, set("a", "1"));
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), ticket.index);
    n.flush_effects();
    let done = rx.try_recv().unwrap();
    assert_eq!(
        done.response.reply,
        Reply::Written {
            index: ticket.index
        }
    );
    assert!(ticket <= done.settled);
    assert_eq!(n.expire(ticket), Expiry::AlreadyAnswered);
    n.flush_effects();
    assert!(rx.try_recv().is_err());
}

#[test]
fn an_expiry_with_async_fallback_commits_and_answers_written_once() {
    let mut n = fallback_leader();
    let (first, mut rx1) = propose_ticket(&mut n, set("a", "1"));
    let (second, mut rx2) = propose_ticket(&mut n, set("b", "2"));
    // Not durable yet: the fallback cannot commit it.
    assert_eq!(n.expire(first), Expiry::NotEnoughReplicas);
    n.flush_effects();
    assert!(matches!(
        rx1.try_recv().unwrap().response.reply,
        Reply::Error(ErrorReply::NotEnoughReplicas { .. })
    ));
    flush(&mut n);
    assert_eq!(n.expire(second), Expiry::CommittedAsync);
    n.flush_effects();
    let done = rx2.try_recv().unwrap();
    assert_eq!(
        done.response.reply,
        Reply::Written {
            index: second.index
        }
    );
    assert!(second <= done.settled);
    assert_eq!(value(&n, "b"), Some(Bytes::from_static(b"2")));
    assert_eq!(n.expire(second), Expiry::AlreadyAnswered);
    n.flush_effects();
    assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
    assert_eq!(n.waiting_writes(), 0);
}

/// Writes `k0..k{n-1}` answered on `to` under request ids `0..n`.
fn batch(n: u64, to: &mpsc::Sender<WriteDone>) -> Vec<(Proposal, Completion)> {
    (0..n)
        .map(|i| {
            let completion = Completion {
                to: to.clone(),
                id: RequestId(i),
            };
            (set(&format!("k{i}"), "v").into(), completion)
        })
        .collect()
}

#[test]
fn a_batch_of_proposals_asks_for_each_wake_up_once_and_registers_each_write() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    flush(&mut n);
    n.flush_effects();
    let progress = *n.signals.progress.borrow();
    let outbox = *n.signals.outbox.borrow();
    let (to, mut rx) = mpsc::channel(16);
    let writes = batch(10, &to);
    let mut answered = Vec::new();
    n.propose_batch(writes, Instant::now(), |id, outcome| {
        answered.push((id, outcome.is_ok()))
    });
    assert_eq!(
        answered,
        (0..10).map(|i| (RequestId(i), true)).collect::<Vec<_>>()
    );
    assert_eq!(n.waiting_writes(), 10);
    // The node sent nothing itself: the batch asks for two wake-ups, once
    // each, and answers nobody yet.
    assert_eq!(*n.signals.progress.borrow(), progress);
    let effects = n.take_effects();
    assert!(effects.progress && effects.outbox && effects.answers.is_empty());
    effects.apply(&n.signals);
    assert_eq!(*n.signals.progress.borrow(), progress + 1);
    assert_eq!(*n.signals.outbox.borrow(), outbox + 1);
    // One acknowledgement commits the batch: ten answers, in index order,
    // one progress wake-up.
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), LogIndex(11));
    let effects = n.take_effects();
    assert!(effects.progress);
    let ids: Vec<u64> = effects
        .answers
        .iter()
        .map(|(completion, done)| {
            assert!(matches!(done.response.reply, Reply::Written { .. }));
            assert_eq!(completion.id, done.response.id);
            done.response.id.0
        })
        .collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    effects.apply(&n.signals);
    assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 10);
    assert_eq!(n.waiting_writes(), 0);
}

#[test]
fn a_panic_inside_a_batch_loses_no_wake_up() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    flush(&mut n);
    n.flush_effects();
    let (to, _rx) = mpsc::channel(16);
    let writes = batch(3, &to);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        n.propose_batch(writes, Instant::now(), |_, _| {
            panic!("an answer handler failed")
        });
    }));
    assert!(panicked.is_err());
    // The write proposed before the panic is in the outbox, and its
    // wake-ups are still asked for: the next flush sends them.
    let progress = *n.signals.progress.borrow();
    let outbox = *n.signals.outbox.borrow();
    assert!(n.flush_effects(), "the writer is not woken");
    assert!(*n.signals.progress.borrow() > progress);
    assert!(*n.signals.outbox.borrow() > outbox);
}

#[test]
fn a_ticket_of_an_older_leadership_never_touches_a_newer_waiter() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    let (old, mut old_rx) = propose_ticket(&mut n, set("a", "1"));
    n.persist_and_fence(Epoch::from_raw(2)).unwrap();
    n.flush_effects();
    let done = old_rx.try_recv().unwrap();
    assert!(matches!(
        done.response.reply,
        Reply::Error(ErrorReply::Indeterminate { .. })
    ));
    assert!(old <= done.settled, "a step-down settles every write");
    n.persist_and_promote(Epoch::from_raw(2), SETTINGS).unwrap();
    let (new, mut new_rx) = propose_ticket(&mut n, set("b", "2"));
    assert!(old < new);
    // The same index under the old generation names nothing now.
    let stale = Ticket {
        role_gen: old.role_gen,
        index: new.index,
    };
    assert_eq!(n.expire(stale), Expiry::AlreadyAnswered);
    assert!(!n.forget(stale));
    assert_eq!(n.waiting_writes(), 1);
    n.flush_effects();
    assert!(new_rx.try_recv().is_err());
    assert!(n.forget(new));
    assert_eq!(n.waiting_writes(), 0);
    assert!(!n.forget(new));
    // A forgotten write still commits; it is answered to nobody.
    flush(&mut n);
    n.on_ack(ReplicaId(2), Epoch::from_raw(2), new.index);
    assert_eq!(n.commit_index(), new.index);
    n.flush_effects();
    assert!(new_rx.try_recv().is_err());
}

#[test]
fn answers_go_to_a_closed_queue_without_harm() {
    let mut n = lone_leader();
    let (ticket, rx) = propose_ticket(&mut n, set("a", "1"));
    drop(rx);
    flush(&mut n);
    assert_eq!(n.commit_index(), ticket.index);
    assert_eq!(n.waiting_writes(), 0);
}

/// Proposes `op` at `now`, answered on `to` under request `id`.
fn propose_at(
    n: &mut Node,
    op: WriteOp,
    to: &mpsc::Sender<WriteDone>,
    id: u64,
    now: Instant,
) -> Ticket {
    let completion = Completion {
        to: to.clone(),
        id: RequestId(id),
    };
    n.propose(op, completion, now).unwrap().ticket
}

#[test]
fn the_node_expires_writes_at_their_sync_deadline_on_the_clock_it_is_given() {
    let mut n = fresh(1);
    n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
    flush(&mut n);
    n.take_effects();
    let t0 = Instant::now();
    let (to, _rx) = mpsc::channel(8);
    let a = propose_at(&mut n, set("a", "1"), &to, 1, t0);
    // The first deadline asks for the timer; later ones are behind it.
    assert!(n.take_effects().deadline);
    let b = propose_at(
        &mut n,
        set("b", "2"),
        &to,
        2,
        t0 + Duration::from_millis(300),
    );
    assert!(!n.take_effects().deadline);
    assert_eq!(n.next_deadline(), Some(t0 + SETTINGS.sync_timeout));
    flush(&mut n);
    // Before the deadline nothing happens, whatever the wall clock says.
    assert_eq!(n.expire_due(t0 + Duration::from_millis(999)), 0);
    assert!(n.take_effects().answers.is_empty());
    // At it, the first write (and only it) is answered NotEnoughReplicas.
    assert_eq!(n.expire_due(t0 + SETTINGS.sync_timeout), 0);
    let answers = n.take_effects().answers;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].1.response.id, RequestId(1));
    assert!(matches!(
        answers[0].1.response.reply,
        Reply::Error(ErrorReply::NotEnoughReplicas {
            acked: 0,
            required: 1
        })
    ));
    assert_eq!(n.waiting_writes(), 1);
    // A commit answers the second and drops its deadline: nothing is due
    // any more, and a later expiry answers nobody twice.
    n.on_ack(ReplicaId(2), Epoch::from_raw(1), b.index);
    assert!(n.take_effects().answers.len() == 1 && a < b);
    assert_eq!(n.next_deadline(), None);
    assert_eq!(n.expire_due(t0 + Duration::from_secs(60)), 0);
    assert!(n.take_effects().answers.is_empty());
}

#[test]
fn with_async_fallback_the_node_commits_what_is_due_and_counts_it() {
    let mut n = fallback_leader();
    flush(&mut n);
    n.take_effects();
    let t0 = Instant::now();
    let (to, _rx) = mpsc::channel(8);
    let ticket = propose_at(&mut n, set("a", "1"), &to, 1, t0);
    flush(&mut n);
    assert_eq!(n.expire_due(t0 + SETTINGS.sync_timeout), 1);
    let answers = n.take_effects().answers;
    assert_eq!(
        answers[0].1.response.reply,
        Reply::Written {
            index: ticket.index
        }
    );
    assert_eq!(n.commit_index(), ticket.index);
}

/// A full disk refuses new writes with `DiskFull` (nothing appended) while
/// a write already in flight waits for the writer's retry and commits once
/// it gets through; reads go on throughout; room again lifts the refusal.
#[test]
fn a_full_disk_refuses_new_writes_until_the_writer_finds_room() {
    let mut n = lone_leader();
    let (index, mut waiter) = propose(&mut n, set("a", "1")).unwrap();
    flush(&mut n);
    n.flush_effects();
    assert_eq!(waiter.try_recv().unwrap(), Ok(index));
    let (late, mut in_flight) = propose(&mut n, set("b", "2")).unwrap();
    // The writer took the batch and found no room for it.
    let (_, generation, last) = n.take_outbox();
    n.on_disk_full("no space left on device".to_string());
    let last_before = n.log.last_index();
    assert!(matches!(
        propose(&mut n, set("c", "3")).unwrap_err(),
        ErrorReply::DiskFull { .. }
    ));
    assert_eq!(
        n.log.last_index(),
        last_before,
        "a refused write is not appended"
    );
    assert_eq!(value(&n, "a"), Some(Bytes::from_static(b"1")));
    assert!(n.resources().disk_full.is_some());
    assert!(in_flight.try_recv().is_err(), "still waiting for its disk");
    // The retry got through.
    n.on_disk_room();
    n.on_durable(generation, last);
    n.flush_effects();
    assert_eq!(in_flight.try_recv().unwrap(), Ok(late));
    assert!(n.resources().disk_full.is_none());
    assert!(propose(&mut n, set("c", "3")).is_ok());
}
