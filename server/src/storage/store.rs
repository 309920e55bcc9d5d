//! The in-memory key-value map that committed entries are applied to, with
//! O(1) copies for snapshots.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use semikv_protocol::WriteOp;

/// Delta entries folded back into the map per write once no snapshot
/// shares it: the delta drains at eight times the write rate, a few hundred
/// nanoseconds per write, never one long pause.
const FOLD_PER_WRITE: usize = 8;

/// The replica's data: a map from key to value.
///
/// Applying a [`WriteOp`] is idempotent, so replaying entries a snapshot
/// already covers gives the same map.
///
/// Cloning is O(changes since the last fold), normally O(1): a snapshot
/// takes its copy under the node lock, and a flat copy of a million keys took
/// about 0.25 s, long enough for the balancer to declare the replica dead.
/// The map lives behind an `Arc`; while a clone shares it, writes go to a
/// small overlay (`delta`), which later writes fold back into the map a few
/// entries at a time once the clone is gone. A persistent trie would also
/// give O(1) clones but made every write about 2.5 times dearer (measured:
/// `cargo bench -p semikv-server --bench store`).
#[derive(Clone, Default, Debug)]
pub struct Store {
    /// The map, shared with the snapshots in progress.
    base: Arc<HashMap<Bytes, Bytes>>,
    /// Writes made while `base` was shared, read before it; `None` deletes.
    delta: HashMap<Bytes, Option<Bytes>>,
    /// The keys of `delta`, each once, so folding pops from a vector instead
    /// of scanning the hash table.
    unfolded: Vec<Bytes>,
    /// Number of keys with a value.
    len: usize,
}

impl Store {
    /// The value stored under `key`, if any. Cheap: `Bytes` is reference
    /// counted.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.lookup(key).cloned()
    }

    fn lookup(&self, key: &[u8]) -> Option<&Bytes> {
        if !self.delta.is_empty() {
            if let Some(overlay) = self.delta.get(key) {
                return overlay.as_ref();
            }
        }
        self.base.get(key)
    }

    /// Applies one write: `Set` replaces, `Delete` removes (absent is fine),
    /// `Noop` changes nothing.
    pub fn apply(&mut self, op: &WriteOp) {
        match op {
            WriteOp::Set { key, value } => self.put(key.clone(), Some(value.clone())),
            WriteOp::Delete { key } => self.put(key.clone(), None),
            WriteOp::Noop => {}
        }
    }

    /// Sets `key` to `value` directly (used when loading a snapshot).
    pub fn insert(&mut self, key: Bytes, value: Bytes) {
        self.put(key, Some(value));
    }

    fn put(&mut self, key: Bytes, value: Option<Bytes>) {
        let has = value.is_some();
        if self.delta.is_empty() {
            if let Some(base) = Arc::get_mut(&mut self.base) {
                // One hash of the key per write on this path (the common one).
                let had = apply_to(base, key, value);
                self.count(had, has);
                return;
            }
        }
        // Shared with a snapshot, or older overlay entries still wait: the
        // overlay keeps the newest value of the key either way, and lists
        // each key once (a hot key written a million times during a
        // snapshot is one entry to fold, not a million).
        let had = match self.delta.insert(key.clone(), value) {
            Some(previous) => previous.is_some(),
            None => {
                let had = self.base.get(&key).is_some();
                self.unfolded.push(key);
                had
            }
        };
        self.count(had, has);
        self.fold(FOLD_PER_WRITE);
    }

    fn count(&mut self, had: bool, has: bool) {
        match (had, has) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
    }

    /// Moves up to `budget` overlay entries into the map if no snapshot shares
    /// it any more; `true` when the overlay is empty afterwards.
    pub fn fold(&mut self, budget: usize) -> bool {
        if self.delta.is_empty() {
            return true;
        }
        let Some(base) = Arc::get_mut(&mut self.base) else {
            return false;
        };
        for _ in 0..budget {
            let Some(key) = self.unfolded.pop() else {
                break;
            };
            if let Some(value) = self.delta.remove(&key) {
                // `len` already counts this write.
                let _ = apply_to(base, key, value);
            }
        }
        if self.delta.is_empty() {
            // Give back what a long snapshot made the overlay grow to.
            self.delta = HashMap::new();
            self.unfolded = Vec::new();
            return true;
        }
        false
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every key and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        let overlay = self
            .delta
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        let base = self
            .base
            .iter()
            .filter(|(k, _)| self.delta.is_empty() || !self.delta.contains_key(*k));
        overlay.chain(base)
    }
}

/// Sets or removes `key` in `map`; whether it had a value before.
fn apply_to(map: &mut HashMap<Bytes, Bytes>, key: Bytes, value: Option<Bytes>) -> bool {
    match value {
        Some(value) => map.insert(key, value).is_some(),
        None => map.remove(&key).is_some(),
    }
}

#[cfg(test)]
mod tests {
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
            2 => (0u8..16).prop_map(Step::Delete),
            1 => Just(Step::Snapshot),
            1 => Just(Step::Finish),
            1 => (0usize..4).prop_map(Step::Fold),
        ]
    }

    fn contents(s: &Store) -> BTreeMap<Bytes, Bytes> {
        let mut seen = BTreeMap::new();
        for (k, v) in s.iter() {
            assert!(
                seen.insert(k.clone(), v.clone()).is_none(),
                "key listed twice"
            );
        }
        seen
    }

    proptest! {
        /// The store behaves like a plain map whatever snapshots come and go,
        /// and every snapshot keeps exactly the contents it was taken with.
        #[test]
        fn behaves_like_a_map_while_snapshots_share_it(steps in proptest::collection::vec(step(), 1..200)) {
            let mut store = Store::default();
            let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
            let mut snapshots: Vec<(Store, BTreeMap<Bytes, Bytes>)> = Vec::new();
            for step in steps {
                match step {
                    Step::Set(k, v) => {
                        let (k, v) = (Bytes::from(vec![k]), Bytes::from(vec![v]));
                        store.apply(&WriteOp::Set { key: k.clone(), value: v.clone() });
                        model.insert(k, v);
                    }
                    Step::Delete(k) => {
                        let k = Bytes::from(vec![k]);
                        store.apply(&WriteOp::Delete { key: k.clone() });
                        model.remove(&k);
                    }
                    Step::Snapshot => snapshots.push((store.clone(), model.clone())),
                    Step::Finish => {
                        if !snapshots.is_empty() {
                            let (snap, at) = snapshots.remove(0);
                            prop_assert_eq!(contents(&snap), at.clone());
                            prop_assert_eq!(snap.len(), at.len());
                        }
                    }
                    Step::Fold(n) => {
                        let before = store.delta.len();
                        let done = store.fold(n);
                        if snapshots.is_empty() {
                            // Unshared: a fold moves min(n, pending) entries.
                            prop_assert_eq!(store.delta.len(), before.saturating_sub(n));
                            prop_assert_eq!(done, store.delta.is_empty());
                        } else {
                            prop_assert!(!done || before == 0);
                            prop_assert_eq!(store.delta.len(), before);
                        }
                    }
                }
                // Every overlay key is listed once, ready to fold.
                prop_assert_eq!(store.unfolded.len(), store.delta.len());
                prop_assert_eq!(store.len(), model.len());
                for k in 0u8..16 {
                    prop_assert_eq!(store.get(&[k]), model.get(&[k][..]).cloned());
                }
            }
            prop_assert_eq!(contents(&store), model.clone());
            for (snap, at) in &snapshots {
                prop_assert_eq!(&contents(snap), at);
            }
            // Once every snapshot is gone, folding empties the overlay.
            snapshots.clear();
            prop_assert!(store.fold(usize::MAX));
            prop_assert!(store.delta.is_empty() && store.unfolded.is_empty());
            prop_assert_eq!(contents(&store), model);
        }
    }

    #[test]
    fn a_hot_key_during_a_snapshot_is_one_overlay_entry() {
        let mut s = Store::default();
        s.insert(Bytes::from_static(b"hot"), Bytes::from_static(b"0"));
        let snap = s.clone();
        for i in 0..10_000u32 {
            s.insert(Bytes::from_static(b"hot"), Bytes::from(i.to_string()));
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
            s.insert(Bytes::from(vec![i]), Bytes::from_static(b"old"));
        }
        let snap = s.clone();
        for i in 0..100u8 {
            s.insert(Bytes::from(vec![i]), Bytes::from_static(b"new"));
        }
        // The map is shared: nothing could fold yet.
        assert!(!s.fold(usize::MAX));
        assert!(snap.iter().all(|(_, v)| v == "old"));
        assert!(s.iter().all(|(_, v)| v == "new"));
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
}
