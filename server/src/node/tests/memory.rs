//! `--max-memory`: a leader refuses writes that would grow the store past
//! its limit, counting the writes in flight; deletes and writes that shrink
//! the store always pass; followers apply whatever was committed.

use proptest::prelude::*;

use super::*;
use crate::storage::store::entry_bytes;

/// A value of `len` bytes.
fn sized(key: &str, len: usize) -> WriteOp {
    WriteOp::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from(vec![b'v'; len]),
    }
}

fn del(key: &str) -> WriteOp {
    WriteOp::Delete {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

/// A lone leader with `limit`, its promotion no-op applied.
fn limited_leader(limit: u64) -> Node {
    let mut n = lone_leader();
    n.set_memory_limit(Some(limit));
    flush(&mut n);
    n
}

/// What a key of `key_len` bytes with a `value_len`-byte value costs.
fn cost(key_len: usize, value_len: usize) -> u64 {
    entry_bytes(key_len, value_len) as u64
}

#[test]
fn a_set_past_the_limit_is_refused_before_anything_is_appended() {
    // Room for three 4-byte keys with 100-byte values and one empty
    // one-byte key.
    let limit = 3 * cost(4, 100) + cost(1, 0);
    let mut n = limited_leader(limit);
    for key in ["k001", "k002", "k003"] {
        propose(&mut n, sized(key, 100)).unwrap();
    }
    flush(&mut n);
    assert_eq!(n.memory_used(), 3 * cost(4, 100));
    let last = n.log.last_index();
    let refused = propose(&mut n, sized("k004", 100));
    assert_eq!(
        refused.err(),
        Some(ErrorReply::OutOfMemory {
            used: 3 * cost(4, 100),
            limit
        })
    );
    assert_eq!(n.log.last_index(), last, "nothing appended");
    assert!(n.outbox_is_empty(), "nothing queued for the WAL");
    assert_eq!(n.waiting_writes(), 0, "nothing registered");
    // A write that fits in what is left still passes.
    propose(&mut n, sized("k", 0)).unwrap();
    // Status reports the store and the limit.
    flush(&mut n);
    let resources = n.resources();
    assert_eq!(resources.memory_used, 3 * cost(4, 100) + cost(1, 0));
    assert_eq!(resources.memory_limit, Some(limit));
}

#[test]
fn without_a_limit_nothing_is_refused_and_the_status_says_so() {
    let mut n = lone_leader();
    for i in 0..100 {
        propose(&mut n, sized(&format!("k{i}"), 10_000)).unwrap();
    }
    flush(&mut n);
    let resources = n.resources();
    // Keys k0..k9 are two bytes long, k10..k99 three.
    assert_eq!(
        resources.memory_used,
        10 * cost(2, 10_000) + 90 * cost(3, 10_000)
    );
    assert_eq!(resources.memory_limit, None);
}

#[test]
fn deletes_and_writes_that_shrink_the_store_pass_at_the_limit() {
    let mut n = limited_leader(2 * cost(1, 1000));
    propose(&mut n, sized("a", 1000)).unwrap();
    propose(&mut n, sized("b", 1000)).unwrap();
    flush(&mut n);
    assert_eq!(n.memory_used(), 2 * cost(1, 1000));
    assert!(matches!(
        propose(&mut n, sized("c", 0)),
        Err(ErrorReply::OutOfMemory { .. })
    ));
    assert!(matches!(
        propose(&mut n, sized("a", 1001)),
        Err(ErrorReply::OutOfMemory { .. })
    ));
    // An overwrite no larger, a smaller one, and a delete all pass, even
    // with each other in flight (nothing is applied until the flush).
    propose(&mut n, sized("a", 1000)).unwrap();
    propose(&mut n, sized("b", 10)).unwrap();
    propose(&mut n, del("a")).unwrap();
    // A delete of a key the store does not hold passes too.
    propose(&mut n, del("absent")).unwrap();
    flush(&mut n);
    assert_eq!(n.memory_used(), cost(1, 10));
    // The room the delete freed takes a new key.
    propose(&mut n, sized("c", 1000)).unwrap();
    flush(&mut n);
    assert_eq!(value(&n, "c").map(|v| v.len()), Some(1000));
}

#[test]
fn pipelined_writes_count_before_they_are_applied() {
    // Room for exactly ten of these writes.
    let each = cost(4, 100);
    let limit = 10 * each;
    let mut n = limited_leader(limit);
    let mut accepted = 0;
    let mut refusal = None;
    for i in 0..50 {
        // Proposed and never flushed: nothing is applied, so a check of the
        // store alone would pass all fifty.
        match propose(&mut n, sized(&format!("k{i:03}"), 100)) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    assert_eq!(accepted, 10);
    assert_eq!(n.memory_used(), 0, "nothing applied yet");
    assert_eq!(
        refusal,
        Some(ErrorReply::OutOfMemory {
            used: 10 * each,
            limit
        }),
        "what is in flight is counted as used"
    );
    flush(&mut n);
    assert_eq!(n.memory_used(), limit);
}

#[test]
fn a_follower_applies_what_was_committed_whatever_its_limit() {
    let mut n = fresh(2);
    n.set_memory_limit(Some(1));
    n.persist_and_follow(Epoch::from_raw(1), ReplicaId(1), "l".to_string())
        .unwrap();
    let gen = n.role_gen;
    stream_from(&mut n, gen, 1, 0).unwrap();
    n.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(0),
        vec![entry(1, 1, WriteOp::Noop), entry(2, 1, sized("big", 5000))],
        LogIndex(2),
    )
    .unwrap();
    flush(&mut n);
    n.on_entries(
        gen,
        Epoch::from_raw(1),
        LogIndex(2),
        Vec::new(),
        LogIndex(2),
    )
    .unwrap();
    assert_eq!(value(&n, "big").map(|v| v.len()), Some(5000));
    assert_eq!(n.memory_used(), cost(3, 5000));
    assert_eq!(n.resources().memory_limit, Some(1));
    // And it refuses writes as any follower does: it does not lead.
    assert!(matches!(
        propose(&mut n, sized("x", 0)),
        Err(ErrorReply::NotLeader { .. })
    ));
}

#[derive(Debug, Clone)]
enum Step {
    /// Key number, value length.
    Set(u8, usize),
    Delete(u8),
    /// The writer makes everything queued durable.
    Flush,
    /// The follower acknowledges this many more entries than are applied.
    Ack(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..6, prop::sample::select(vec![0usize, 10, 50, 300])).prop_map(|(k, len)| Step::Set(k, len)),
        2 => (0u8..6).prop_map(Step::Delete),
        1 => Just(Step::Flush),
        2 => (0u64..4).prop_map(Step::Ack),
    ]
}

proptest! {
    /// However proposals, durability and acknowledgements interleave (a
    /// follower's acks apply the log a few entries at a time), the store
    /// never holds more than the limit; and with nothing in flight, a write
    /// is refused exactly when it would take the store past the limit.
    #[test]
    fn the_store_never_passes_the_limit(
        limit in 300u64..3000,
        steps in proptest::collection::vec(step(), 1..150),
    ) {
        let mut n = fresh(1);
        n.persist_and_promote(Epoch::from_raw(1), SETTINGS).unwrap();
        n.set_memory_limit(Some(limit));
        let epoch = Epoch::from_raw(1);
        let follower = ReplicaId(2);
        let mut durable = LogIndex(0);
        for step in steps {
            match step {
                Step::Set(k, len) => {
                    let key = format!("k{k}");
                    let idle = n.applied == n.log.last_index();
                    let growth = (cost(key.len(), len) as i64)
                        - n.store.entry_bytes_of(key.as_bytes()).map_or(0, |c| c as i64);
                    let fits = n.memory_used() as i64 + growth <= limit as i64;
                    match propose(&mut n, sized(&key, len)) {
                        Ok(_) => prop_assert!(!idle || growth <= 0 || fits),
                        Err(ErrorReply::OutOfMemory { .. }) => {
                            prop_assert!(growth > 0, "a write that does not grow was refused");
                            prop_assert!(!idle || !fits, "refused with room and nothing in flight");
                        }
                        Err(other) => prop_assert!(false, "{other:?}"),
                    }
                }
                Step::Delete(k) => {
                    propose(&mut n, del(&format!("k{k}"))).unwrap();
                }
                Step::Flush => {
                    flush(&mut n);
                    durable = n.durable();
                }
                Step::Ack(more) => {
                    let to = LogIndex((n.applied.0 + more).min(durable.0));
                    n.on_ack(follower, epoch, to);
                }
            }
            prop_assert!(
                n.memory_used() <= limit,
                "the store holds {} bytes of its {} byte limit", n.memory_used(), limit
            );
        }
    }
}
