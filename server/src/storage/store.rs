//! The in-memory key-value map that committed entries are applied to, with
//! O(1) copies for snapshots.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use semikv_protocol::WriteOp;

/// Delta entries folded back into the map per write once no snapshot
/// shares it: the delta drains at eight times the write rate, a few hundred
/// nanoseconds per write, never one long pause.
const FOLD_PER_WRITE: usize = 8;

/// Longest key stored inside the hash table's bucket rather than on the heap:
/// the most that fits beside the enum tag and length byte in 24 bytes, the
/// size of the `Box<[u8]>` variant with its tag.
const INLINE_KEY: usize = 22;

/// Up to `N` bytes kept in place, the unused tail zeroed, so that two are
/// equal exactly when their lengths and whole arrays are (a fixed-size
/// compare, no call to `memcmp`).
#[derive(Clone, PartialEq, Eq)]
struct Inline<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> Inline<N> {
    /// `data` in place, if it fits (`N` is below 256).
    fn new(data: &[u8]) -> Option<Self> {
        if data.len() > N {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..data.len()].copy_from_slice(data);
        // Cannot truncate: the length is at most N, which is below 256.
        let len = data.len() as u8;
        Some(Inline { len, bytes })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A key as the store holds it: short keys live in the bucket itself, so
/// comparing a key on insert or lookup reads the cache line the hash table
/// already loaded instead of a separate allocation (profiles of a SET
/// pipeline showed that cold read as `memcmp`, 7-13% of a replica's CPU).
///
/// Invariant: a key of at most [`INLINE_KEY`] bytes is always `Inline`;
/// longer keys are always `Heap`.
#[derive(Clone)]
enum Key {
    Inline(Inline<INLINE_KEY>),
    Heap(Box<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Self {
        Inline::new(key).map_or_else(|| Key::Heap(key.into()), Key::Inline)
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline(inline) => inline.as_slice(),
            Key::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Key::Inline(a), Key::Inline(b)) => a == b,
            _ => self.as_slice() == other.as_slice(),
        }
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// Hashes exactly as the key's `[u8]` does, which `Borrow<[u8]>` requires
    /// for a lookup by slice to find it.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As `Bytes` shows itself, so the store's `Debug` output is unchanged.
        write!(f, "b\"{}\"", self.as_slice().escape_ascii())
    }
}

/// Longest value kept inside the hash table's bucket: what fits beside the
/// length byte and the enum tag in the 40 bytes the `Bytes` variant needs
/// anyway.
const INLINE_VALUE: usize = 38;

/// A value as the store holds it: short values live in the bucket, next to
/// their key, so a read touches one cache line of the table where a `Bytes`
/// made it touch three more (the shared header's reference count on clone
/// and drop, and the bytes themselves when the answer is encoded): a profile
/// of a replica answering pipelined GETs showed those as 30% of its CPU.
/// Longer values stay shared with the log entry that wrote them.
#[derive(Clone)]
enum Value {
    Inline(Inline<INLINE_VALUE>),
    Shared(Bytes),
}

impl Value {
    fn new(value: &Bytes) -> Self {
        Inline::new(value).map_or_else(|| Value::Shared(value.clone()), Value::Inline)
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Value::Inline(inline) => inline.as_slice(),
            Value::Shared(bytes) => bytes,
        }
    }

    /// The value as `Bytes`: a fresh copy of an inline value (a small
    /// allocation from a warm cache), a reference to a shared one.
    fn to_bytes(&self) -> Bytes {
        match self {
            Value::Inline(inline) => Bytes::copy_from_slice(inline.as_slice()),
            Value::Shared(bytes) => bytes.clone(),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.as_slice().escape_ascii())
    }
}

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
    base: Arc<HashMap<Key, Value>>,
    /// Writes made while `base` was shared, read before it; `None` deletes.
    delta: HashMap<Key, Option<Value>>,
    /// The keys of `delta`, each once, so folding pops from a vector instead
    /// of scanning the hash table.
    unfolded: Vec<Key>,
    /// Number of keys with a value.
    len: usize,
}

impl Store {
    /// The value stored under `key`, if any: a copy of a short value, a
    /// reference-counted share of a long one.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.lookup(key).map(Value::to_bytes)
    }

    fn lookup(&self, key: &[u8]) -> Option<&Value> {
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
            WriteOp::Set { key, value } => self.put(key, Some(Value::new(value))),
            WriteOp::Delete { key } => self.put(key, None),
            WriteOp::Noop => {}
        }
    }

    /// Sets `key` to `value` directly (used when loading a snapshot). The
    /// key is copied: the store does not keep a reference to it.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: Bytes) {
        self.put(key.as_ref(), Some(Value::new(&value)));
    }

    fn put(&mut self, key: &[u8], value: Option<Value>) {
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
        let had = match self.delta.get_mut(key) {
            Some(slot) => std::mem::replace(slot, value).is_some(),
            None => {
                let key = Key::new(key);
                self.delta.insert(key.clone(), value);
                let had = self.base.contains_key(&key);
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
            // `len` already counts this write. The key moves into the map
            // as it is: no copy of a long key.
            match self.delta.remove(&key) {
                Some(Some(value)) => {
                    base.insert(key, value);
                }
                Some(None) => {
                    base.remove(&key);
                }
                None => {}
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
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let overlay = self
            .delta
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_slice(), v.as_slice())));
        let base = self
            .base
            .iter()
            .filter(|(k, _)| self.delta.is_empty() || !self.delta.contains_key(*k))
            .map(|(k, v)| (k.as_slice(), v.as_slice()));
        overlay.chain(base)
    }
}

/// Sets or removes `key` in `map`; whether it had a value before.
fn apply_to(map: &mut HashMap<Key, Value>, key: &[u8], value: Option<Value>) -> bool {
    match value {
        Some(value) => map.insert(Key::new(key), value).is_some(),
        // No key built: a delete of a long key allocates nothing.
        None => map.remove(key).is_some(),
    }
}

#[cfg(test)]
mod tests;
