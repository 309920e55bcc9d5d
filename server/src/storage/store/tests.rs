//! The store's unit tests: a property test against a `BTreeMap` model with
//! snapshots coming and going, and the inline key and value layouts.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[test]
fn set_delete_noop() {
    let mut s = Store::default();
    let k = Bytes::from_static(b"k");
    s.apply(&WriteOp::Set {
        key: k.clone(),
        value: Bytes::from_static(b"v"),
    });
    assert_eq!(s.get(b"k"), Some(Bytes::from_static(b"v")));
    s.apply(&WriteOp::Noop);
    assert_eq!(s.len(), 1);
    s.apply(&WriteOp::Delete { key: k.clone() });
    s.apply(&WriteOp::Delete { key: k });
    assert!(s.is_empty());
    assert_eq!(s.get(b"k"), None);
}

#[derive(Debug, Clone)]
enum Step {
    Set(u8, u8),
    /// As a snapshot being loaded sets a key.
    Insert(u8, u8),
    Delete(u8),
    /// A snapshot starts: a clone is kept.
    Snapshot,
    /// The oldest snapshot finishes: its clone is dropped.
    Finish,
    Fold(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..16, any::<u8>()).prop_map(|(k, v)| Step::Set(k, v)),
        1 => (0u8..16, any::<u8>()).prop_map(|(k, v)| Step::Insert(k, v)),
        2 => (0u8..16).prop_map(Step::Delete),
        1 => Just(Step::Snapshot),
        1 => Just(Step::Finish),
        1 => (0usize..4).prop_map(Step::Fold),
    ]
}

/// Value number `v` of the model test: empty, inline and shared values,
/// lengths on both sides of [`INLINE_VALUE`].
fn value_of(v: u8) -> Bytes {
    const LENS: [usize; 7] = [0, 1, 16, 37, 38, 39, 200];
    Bytes::from(vec![v; LENS[usize::from(v) % LENS.len()]])
}

#[test]
fn values_come_back_as_written_inline_or_shared() {
    assert_eq!(std::mem::size_of::<Value>(), 40);
    let mut s = Store::default();
    for len in 0..=100usize {
        let key = format!("k{len}");
        let value = Bytes::from(vec![b'v'; len]);
        s.apply(&WriteOp::Set {
            key: Bytes::from(key.clone()),
            value: value.clone(),
        });
        assert_eq!(s.get(key.as_bytes()), Some(value.clone()), "length {len}");
        let inline = matches!(s.lookup(key.as_bytes()), Some(Value::Inline(_)));
        assert_eq!(inline, len <= INLINE_VALUE, "length {len}");
    }
    // Overwriting a long value with a short one and back.
    s.insert(b"k5", Bytes::from(vec![b'w'; 90]));
    assert_eq!(s.get(b"k5"), Some(Bytes::from(vec![b'w'; 90])));
    s.insert(b"k5", Bytes::from_static(b"x"));
    assert_eq!(s.get(b"k5"), Some(Bytes::from_static(b"x")));
    assert_eq!(s.len(), 101);
}

/// Key number `k` of the model test: inline and heap keys, lengths on
/// both sides of [`INLINE_KEY`], and zero-filled keys that differ only in
/// length, which the zeroed inline tail must not make equal.
fn key_of(k: u8) -> Bytes {
    const LENS: [usize; 10] = [1, 5, 20, 21, 22, 23, 24, 40, 100, 300];
    Bytes::from(match k {
        0 => vec![],
        1 => vec![0],
        2 => vec![0; 21],
        3 => vec![0; 22],
        4 => vec![0; 23],
        5 => vec![0; 64],
        _ => vec![k; LENS[usize::from(k) - 6]],
    })
}

/// What [`Store::bytes`] must be for a store holding `model`.
fn bytes_of(model: &BTreeMap<Bytes, Bytes>) -> usize {
    model
        .iter()
        .map(|(k, v)| entry_bytes(k.len(), v.len()))
        .sum()
}

fn contents(s: &Store) -> BTreeMap<Bytes, Bytes> {
    let mut seen = BTreeMap::new();
    for (k, v) in s.iter() {
        assert!(
            seen.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v))
                .is_none(),
            "key listed twice"
        );
    }
    seen
}

proptest! {
    /// The store behaves like a plain map whatever snapshots come and go,
    /// every snapshot keeps exactly the contents it was taken with, and both
    /// count exactly the bytes of what they hold after every step.
    #[test]
    fn behaves_like_a_map_while_snapshots_share_it(steps in proptest::collection::vec(step(), 1..200)) {
        let mut store = Store::default();
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut snapshots: Vec<(Store, BTreeMap<Bytes, Bytes>)> = Vec::new();
        for step in steps {
            match step {
                Step::Set(k, v) => {
                    let (k, v) = (key_of(k), value_of(v));
                    store.apply(&WriteOp::Set { key: k.clone(), value: v.clone() });
                    model.insert(k, v);
                }
                Step::Insert(k, v) => {
                    let (k, v) = (key_of(k), value_of(v));
                    store.insert(&k, v.clone());
                    model.insert(k, v);
                }
                Step::Delete(k) => {
                    let k = key_of(k);
                    store.apply(&WriteOp::Delete { key: k.clone() });
                    model.remove(&k);
                }
                Step::Snapshot => snapshots.push((store.clone(), model.clone())),
                Step::Finish => {
                    if !snapshots.is_empty() {
                        let (snap, at) = snapshots.remove(0);
                        prop_assert_eq!(contents(&snap), at.clone());
                        prop_assert_eq!(scanned(&snap, 3), keys_of(&at));
                        prop_assert_eq!(snap.len(), at.len());
                        prop_assert_eq!(snap.bytes(), bytes_of(&at));
                    }
                }
                Step::Fold(n) => {
                    let before = store.delta.len();
                    let done = store.fold(n);
                    if snapshots.is_empty() {
                        // Unshared: a fold moves min(n, pending) entries.
                        prop_assert_eq!(store.delta.len(), before.saturating_sub(n));
                        prop_assert_eq!(
                            done,
                            store.delta.is_empty() && store.scan.pending() == 0
                        );
                    } else {
                        prop_assert!(!done || before == 0);
                        prop_assert_eq!(store.delta.len(), before);
                    }
                }
            }
            prop_assert_eq!(scanned(&store, 2), keys_of(&model));
            // Every overlay key is listed once, ready to fold.
            prop_assert_eq!(store.unfolded.len(), store.delta.len());
            prop_assert_eq!(store.len(), model.len());
            prop_assert_eq!(store.bytes(), bytes_of(&model));
            for k in 0u8..16 {
                let k = key_of(k);
                prop_assert_eq!(store.get(&k), model.get(&k).cloned());
                prop_assert_eq!(
                    store.entry_bytes_of(&k),
                    model.get(&k).map(|v| entry_bytes(k.len(), v.len()))
                );
            }
        }
        prop_assert_eq!(contents(&store), model.clone());
        for (snap, at) in &snapshots {
            prop_assert_eq!(&contents(snap), at);
            prop_assert_eq!(snap.bytes(), bytes_of(at));
        }
        // Once every snapshot is gone, folding empties the overlay.
        snapshots.clear();
        prop_assert!(store.fold(usize::MAX));
        prop_assert!(store.delta.is_empty() && store.unfolded.is_empty());
        prop_assert_eq!(store.bytes(), bytes_of(&model));
        prop_assert_eq!(scanned(&store, 1), keys_of(&model));
        prop_assert_eq!(contents(&store), model);
    }
}

/// Every key of a whole scan in pages of `count`, sorted; panics on a key
/// listed twice.
fn scanned(s: &Store, count: usize) -> Vec<Bytes> {
    let mut keys = Vec::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let page = s.scan(cursor, count, usize::MAX, UnixMillis(0));
        keys.extend(page.keys);
        pages += 1;
        assert!(pages <= s.len() + 1, "a scan that does not end");
        if page.cursor == 0 {
            break;
        }
        assert!(page.cursor > cursor, "a cursor that goes back");
        cursor = page.cursor;
    }
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(before, keys.len(), "a key listed twice");
    keys
}

fn keys_of(model: &BTreeMap<Bytes, Bytes>) -> Vec<Bytes> {
    model.keys().cloned().collect()
}

fn set(s: &mut Store, key: &[u8]) {
    s.apply(&WriteOp::Set {
        key: Bytes::copy_from_slice(key),
        value: Bytes::from_static(b"v"),
    });
}

#[test]
fn a_scan_returns_every_key_present_throughout_whatever_changes_mid_scan() {
    let mut s = Store::default();
    for i in 0..2000u32 {
        set(&mut s, format!("key:{i}").as_bytes());
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = 0;
    let mut round = 0u32;
    loop {
        let page = s.scan(cursor, 10, usize::MAX, UnixMillis(0));
        seen.extend(page.keys);
        // Between pages: new keys, and deletes of keys 1500 and up.
        for j in 0..5 {
            set(&mut s, format!("new:{round}:{j}").as_bytes());
        }
        s.apply(&WriteOp::Delete {
            key: Bytes::from(format!("key:{}", 1500 + round % 500)),
        });
        round += 1;
        if page.cursor == 0 {
            break;
        }
        cursor = page.cursor;
    }
    for i in 0..1500u32 {
        assert!(
            seen.contains(format!("key:{i}").as_bytes()),
            "key:{i} was present throughout and not returned"
        );
    }
    // About 2000 / 10 pages, not one per key.
    assert!((150..=260).contains(&round), "{round} pages");
}

#[test]
fn a_scan_hides_expired_keys_and_bounds_a_page_by_its_keys_bytes() {
    let mut s = Store::default();
    for i in 0..100u32 {
        set(&mut s, &[b'k'; 1000][..(900 + i as usize)]);
    }
    set(&mut s, b"short");
    assert!(s.set_expiry_at(b"short", UnixMillis(50)));
    // 4 KB of keys per page: at most 5 keys of about 1 KB each.
    let page = s.scan(0, 1000, 4000, UnixMillis(0));
    assert!((1..=5).contains(&page.keys.len()), "{}", page.keys.len());
    assert_ne!(page.cursor, 0);
    let all = |now| {
        let mut keys = Vec::new();
        let mut cursor = 0;
        loop {
            let page = s.scan(cursor, 7, usize::MAX, UnixMillis(now));
            keys.extend(page.keys);
            if page.cursor == 0 {
                return keys;
            }
            cursor = page.cursor;
        }
    };
    assert!(all(49).iter().any(|k| &k[..] == b"short"));
    let later = all(50);
    assert_eq!(later.len(), 100);
    assert!(!later.iter().any(|k| &k[..] == b"short"));
}

#[test]
fn the_scan_order_is_fixed() {
    // Replicas of one cluster must agree on every key's position: a change
    // here breaks scans across a rolling upgrade, and needs a protocol bump.
    // FNV-1a then SplitMix64's finaliser, as computed by a separate Python
    // implementation.
    assert_eq!(scan_hash(b""), 0xf52a_15e9_a9b5_e89b);
    assert_eq!(scan_hash(b"key:1"), 0xcd76_cb99_9eef_dfd5);
}

#[test]
fn bytes_count_keys_values_and_the_overhead_of_each_key() {
    let mut s = Store::default();
    assert_eq!(s.bytes(), 0);
    s.insert(b"key", Bytes::from(vec![b'v'; 100]));
    assert_eq!(s.bytes(), 3 + 100 + ENTRY_OVERHEAD);
    // An overwrite counts the difference, a shorter value less.
    s.insert(b"key", Bytes::from_static(b"v"));
    assert_eq!(s.bytes(), 3 + 1 + ENTRY_OVERHEAD);
    // Deleting an absent key changes nothing, even while a snapshot shares
    // the map (the overlay then holds a deletion of a key never set).
    let snap = s.clone();
    s.apply(&WriteOp::Delete {
        key: Bytes::from_static(b"absent"),
    });
    assert_eq!(s.bytes(), 3 + 1 + ENTRY_OVERHEAD);
    s.apply(&WriteOp::Delete {
        key: Bytes::from_static(b"key"),
    });
    assert_eq!((s.bytes(), snap.bytes()), (0, 3 + 1 + ENTRY_OVERHEAD));
    drop(snap);
    assert!(s.fold(usize::MAX));
    assert_eq!(s.bytes(), 0);
}

#[test]
fn a_hot_key_during_a_snapshot_is_one_overlay_entry() {
    let mut s = Store::default();
    s.insert(b"hot", Bytes::from_static(b"0"));
    let snap = s.clone();
    for i in 0..10_000u32 {
        s.insert(b"hot", Bytes::from(i.to_string()));
    }
    assert_eq!((s.delta.len(), s.unfolded.len()), (1, 1));
    assert_eq!(s.get(b"hot"), Some(Bytes::from_static(b"9999")));
    assert_eq!(snap.get(b"hot"), Some(Bytes::from_static(b"0")));
    assert_eq!(s.len(), 1);
}

#[test]
fn writes_while_a_snapshot_holds_a_copy_do_not_touch_it() {
    let mut s = Store::default();
    for i in 0..100u8 {
        s.insert([i], Bytes::from_static(b"old"));
    }
    let snap = s.clone();
    for i in 0..100u8 {
        s.insert([i], Bytes::from_static(b"new"));
    }
    // The map is shared: nothing could fold yet.
    assert!(!s.fold(usize::MAX));
    assert!(snap.iter().all(|(_, v)| v == b"old"));
    assert!(s.iter().all(|(_, v)| v == b"new"));
    drop(snap);
    // Later writes fold the overlay back a few entries at a time: each
    // adds one entry and folds FOLD_PER_WRITE.
    for _ in 0..100 / (FOLD_PER_WRITE - 1) + 1 {
        s.apply(&WriteOp::Set {
            key: Bytes::from_static(b"x"),
            value: Bytes::from_static(b"x"),
        });
    }
    assert!(s.delta.is_empty());
    assert_eq!(s.len(), 101);
}

#[test]
fn keys_are_found_by_slice_and_hash_as_their_slice() {
    use std::hash::BuildHasher;

    assert_eq!(std::mem::size_of::<Key>(), 24);
    let hasher = std::collections::hash_map::RandomState::new();
    let mut map = HashMap::new();
    let bytes = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 7 + len) as u8).collect() };
    for len in 0..=64 {
        let key = Key::new(&bytes(len));
        assert_eq!(matches!(key, Key::Inline(_)), len <= INLINE_KEY, "{len}");
        assert_eq!(key.as_slice(), &bytes(len)[..]);
        assert_eq!(
            hasher.hash_one(&key),
            hasher.hash_one(&bytes(len)[..]),
            "{len}"
        );
        assert!(key == Key::new(&bytes(len)));
        map.insert(key, len);
    }
    for len in 0..=64 {
        // A fresh slice, not the inserted key: only `Borrow` can find it.
        assert_eq!(map.get(&bytes(len)[..]), Some(&len), "{len}");
        // Same length, other contents: inline and heap keys compare all
        // their bytes, not only the length.
        let mut other = bytes(len);
        if let Some(last) = other.last_mut() {
            *last ^= 1;
            assert_eq!(map.get(&other[..]), None, "{len}");
            assert!(Key::new(&other) != Key::new(&bytes(len)));
        }
    }
    // Zero-filled keys of different lengths are different keys.
    assert!(Key::new(&[0; 3]) != Key::new(&[0; 4]));
    assert!(Key::new(&[]) != Key::new(&[0]));
}

#[test]
fn long_keys_round_trip_through_a_snapshot_copy() {
    let mut s = Store::default();
    let long = vec![b'x'; 1000];
    s.insert(&long, Bytes::from_static(b"a"));
    let snap = s.clone();
    s.insert(&long, Bytes::from_static(b"b"));
    s.apply(&WriteOp::Delete {
        key: Bytes::from(vec![b'y'; 23]),
    });
    assert_eq!(snap.get(&long), Some(Bytes::from_static(b"a")));
    assert_eq!(s.get(&long), Some(Bytes::from_static(b"b")));
    drop(snap);
    assert!(s.fold(usize::MAX));
    assert_eq!(s.get(&long), Some(Bytes::from_static(b"b")));
    assert_eq!(s.iter().collect::<Vec<_>>(), [(&long[..], &b"b"[..])]);
}

#[test]
fn the_scan_index_keeps_hash_order_as_it_grows_and_shrinks() {
    use scan_index::ScanIndex;
    let mut index = ScanIndex::default();
    let key = |i: u32| format!("k{i}").into_bytes();
    for i in 0..10_000 {
        index.insert(&key(i));
    }
    // Removing a key that is not there changes nothing.
    index.remove(b"absent");
    for i in (0..10_000).step_by(2) {
        index.remove(&key(i));
    }
    let mut expected: Vec<(u64, Vec<u8>)> = (0..10_000)
        .filter(|i| i % 2 == 1)
        .map(|i| (scan_hash(&key(i)), key(i)))
        .collect();
    expected.sort();
    let all: Vec<(u64, Vec<u8>)> = index.from(0).map(|(h, k)| (h, k.to_vec())).collect();
    assert_eq!(all, expected);
    // From any position: exactly the keys at or after it.
    for cursor in [1, u64::MAX / 3, u64::MAX / 2 + 12_345, u64::MAX - 1] {
        let tail: Vec<(u64, Vec<u8>)> = index.from(cursor).map(|(h, k)| (h, k.to_vec())).collect();
        let want: Vec<(u64, Vec<u8>)> = expected
            .iter()
            .filter(|(h, _)| *h >= cursor)
            .cloned()
            .collect();
        assert_eq!(tail, want, "from {cursor}");
    }
}

#[test]
fn a_page_from_a_lagging_replica_leaves_no_gap_before_the_next() {
    // Replica `a` lags: it lacks a key `b` holds, whose position falls
    // after the last key of `a`'s page and before `a`'s next key. The next
    // page, answered by `b`, must start early enough to return it.
    let mut a = Store::default();
    for i in 0..100u32 {
        set(&mut a, format!("key:{i}").as_bytes());
    }
    let page = a.scan(0, 10, usize::MAX, UnixMillis(0));
    let last = page.keys.iter().map(|k| scan_hash(k)).max().unwrap();
    let next_in_a = a.scan(page.cursor, 1, usize::MAX, UnixMillis(0)).keys[0].clone();
    let gap_end = scan_hash(&next_in_a);
    let late = (0..100_000u32)
        .map(|i| format!("late:{i}").into_bytes())
        .find(|k| (last + 1..gap_end).contains(&scan_hash(k)))
        .expect("a key in the gap");
    let mut b = a.clone();
    set(&mut b, &late);
    let from_b = b.scan(page.cursor, 10, usize::MAX, UnixMillis(0));
    assert!(
        from_b.keys.iter().any(|k| k[..] == late[..]),
        "the key between the pages was skipped"
    );
}
