//! The in-memory key-value map that committed entries are applied to, with
//! each key's optional expiry (an absolute Unix time), O(1) copies for
//! snapshots, and a running count of the bytes it holds (what
//! `--max-memory` limits).
//!
//! The store keeps an expired key until a delete for it is applied: which
//! keys a read may see is the reader's business ([`Store::get_live`]), so
//! that every replica holds the same map at the same index whatever its
//! clock says.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use semikv_protocol::{KeyPage, Mutation, UnixMillis, WriteOp};

mod expiries;
mod scan_index;
use expiries::Expiries;
pub use scan_index::scan_hash;
use scan_index::{ScanIndex, INDEX_OVERHEAD};

/// Delta entries folded back into the map per write once no snapshot
/// shares it: the delta drains at eight times the write rate, a few hundred
/// nanoseconds per write, never one long pause.
const FOLD_PER_WRITE: usize = 8;

/// What one key costs the store beyond its key and value bytes, as
/// [`Store::bytes`] counts it: an estimate of the hash table's share plus
/// the scan index's. A bucket holds a `Key` (24 bytes) and a `Value` (40
/// bytes) plus one control byte, 65 bytes; the table keeps at most 7/8 of
/// its buckets full and doubles when it gets there, so between 7/16 and 7/8
/// of them hold a key: 74 to 149 bytes per key, about 103 averaged over a
/// table's growth from one doubling to the next (65 x 16/7 x ln 2), rounded
/// up to 104. The scan index adds 48 (see `scan_index`). Not counted:
/// allocator rounding of long keys and values, the 24-byte header a long
/// value shares with its log entry, the overlay a snapshot in progress
/// makes writes copy into, and buckets that deletes emptied (the table
/// never shrinks; new keys reuse them).
pub const ENTRY_OVERHEAD: usize = 104 + INDEX_OVERHEAD;

/// What an expiry adds to a key's cost, beyond a copy of the key: its
/// entry in the expiry table (a 33-byte bucket, 52 bytes at the table's
/// average load as [`ENTRY_OVERHEAD`] reckons) and in the leader's
/// time-ordered index of expiries (about 60 bytes of B-tree node), rounded
/// up. An estimate, like [`ENTRY_OVERHEAD`].
pub const EXPIRY_OVERHEAD: usize = 112;

/// What an expiry on a key of `key_len` bytes adds to the store's count.
pub const fn expiry_bytes(key_len: usize) -> usize {
    key_len + EXPIRY_OVERHEAD
}

/// Bytes one key with a value of `value_len` bytes costs the store:
/// `key_len + value_len +` [`ENTRY_OVERHEAD`], and `key_len` once more for
/// a key too long to live in the table's bucket (over 22 bytes), which the
/// scan index holds a copy of. [`Store::bytes`] is the sum of this over
/// the keys it holds.
pub const fn entry_bytes(key_len: usize, value_len: usize) -> usize {
    let copies = if key_len > INLINE_KEY { 2 } else { 1 };
    key_len * copies + value_len + ENTRY_OVERHEAD
}

/// The most `mutation` can add to [`Store::bytes`]: its key's
/// [`entry_bytes`] and, with an expiry, [`expiry_bytes`] (0 for a delete).
pub fn mutation_bytes(mutation: &Mutation) -> usize {
    match &mutation.value {
        None => 0,
        Some(value) => {
            let expiry = mutation
                .expires_at
                .map_or(0, |_| expiry_bytes(mutation.key.len()));
            entry_bytes(mutation.key.len(), value.len()) + expiry
        }
    }
}

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

impl Ord for Key {
    /// By the key's bytes: the scan index's order after the hash.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

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

    /// Length in bytes, read from the bucket alone for either variant.
    fn len(&self) -> usize {
        match self {
            Value::Inline(inline) => usize::from(inline.len),
            Value::Shared(bytes) => bytes.len(),
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
    /// [`entry_bytes`] summed over the keys with a value, plus
    /// [`expiry_bytes`] over those with an expiry, kept as writes go: each
    /// write learns the size of what it replaces from the same hash lookup
    /// that replaces it.
    bytes: usize,
    /// The keys that expire, and when.
    expiries: Expiries,
    /// Every key with a value, in scan order.
    scan: ScanIndex,
}

impl Store {
    /// The value stored under `key`, if any: a copy of a short value, a
    /// reference-counted share of a long one.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.lookup(key).map(Value::to_bytes)
    }

    // Always inlined: with a second caller (`entry_bytes_of`) the compiler
    // made it a call from `get`, 3% more instructions per read.
    #[inline(always)]
    fn lookup(&self, key: &[u8]) -> Option<&Value> {
        if !self.delta.is_empty() {
            if let Some(overlay) = self.delta.get(key) {
                return overlay.as_ref();
            }
        }
        self.base.get(key)
    }

    /// The value stored under `key` unless it expired at or before `now`:
    /// what a client read sees.
    pub fn get_live(&self, key: &[u8], now: UnixMillis) -> Option<Bytes> {
        if self.is_expired(key, now) {
            return None;
        }
        self.get(key)
    }

    /// Whether `key` has an expiry at or before `now` (its value, still
    /// stored, is hidden from reads until a delete is applied).
    pub fn is_expired(&self, key: &[u8], now: UnixMillis) -> bool {
        !self.expiries.is_empty() && self.expiries.get(key).is_some_and(|at| at <= now.0)
    }

    /// When `key` expires; `None` if never (or it has no value).
    pub fn expiry(&self, key: &[u8]) -> Option<UnixMillis> {
        self.expiries.get(key).map(UnixMillis)
    }

    /// Whether any key has an expiry.
    pub fn has_expiries(&self) -> bool {
        !self.expiries.is_empty()
    }

    /// Number of keys with an expiry.
    pub fn expiring_len(&self) -> usize {
        self.expiries.len()
    }

    /// Applies one write: `Set` replaces (and drops the key's expiry, as a
    /// plain Redis `SET` does), `Delete` removes (absent is fine), `Batch`
    /// does each of its mutations in order, `Noop` changes nothing.
    pub fn apply(&mut self, op: &WriteOp) {
        match op {
            WriteOp::Set { key, value } => {
                self.put(key, Some(Value::new(value)));
                self.set_expiry(key, None);
            }
            WriteOp::Delete { key } => {
                self.put(key, None);
                self.set_expiry(key, None);
            }
            WriteOp::Noop => {}
            WriteOp::Batch(mutations) => {
                for Mutation {
                    key,
                    value,
                    expires_at,
                } in mutations
                {
                    match value {
                        Some(value) => {
                            self.put(key, Some(Value::new(value)));
                            self.set_expiry(key, expires_at.map(|at| at.0));
                        }
                        None => {
                            self.put(key, None);
                            self.set_expiry(key, None);
                        }
                    }
                }
            }
        }
    }

    /// Sets `key`'s expiry directly (used when loading a snapshot, after
    /// its value); `false`, changing nothing, for a key without a value,
    /// which cannot expire.
    pub fn set_expiry_at(&mut self, key: &[u8], at: UnixMillis) -> bool {
        if self.lookup(key).is_none() {
            return false;
        }
        self.set_expiry(key, Some(at.0));
        true
    }

    /// Sets or clears `key`'s expiry and counts it. A clear on a store
    /// with no expiries costs one comparison: the plain write path.
    fn set_expiry(&mut self, key: &[u8], at: Option<u64>) {
        if at.is_none() && self.expiries.is_empty() {
            return;
        }
        let old = self.expiries.set(key, at);
        match (old.is_some(), at.is_some()) {
            (false, true) => self.bytes += expiry_bytes(key.len()),
            // `bytes` counts this key's expiry: no underflow.
            (true, false) => self.bytes -= expiry_bytes(key.len()),
            _ => {}
        }
    }

    /// Sets `key` to `value` directly (used when loading a snapshot). The
    /// key is copied: the store does not keep a reference to it.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: Bytes) {
        self.put(key.as_ref(), Some(Value::new(&value)));
    }

    fn put(&mut self, key: &[u8], value: Option<Value>) {
        let new = value.as_ref().map(Value::len);
        if self.delta.is_empty() {
            if let Some(base) = Arc::get_mut(&mut self.base) {
                // One hash of the key per write on this path (the common one).
                let old = apply_to(base, key, value);
                self.count(key, old, new);
                return;
            }
        }
        // Shared with a snapshot, or older overlay entries still wait: the
        // overlay keeps the newest value of the key either way, and lists
        // each key once (a hot key written a million times during a
        // snapshot is one entry to fold, not a million).
        // The value a write replaces is the overlay's when the overlay has
        // the key (`None` there: deleted), the map's otherwise.
        let old = match self.delta.get_mut(key) {
            Some(slot) => std::mem::replace(slot, value).as_ref().map(Value::len),
            None => {
                let key = Key::new(key);
                self.delta.insert(key.clone(), value);
                let old = self.base.get(&key).map(Value::len);
                self.unfolded.push(key);
                old
            }
        };
        self.count(key, old, new);
        self.fold(FOLD_PER_WRITE);
    }

    /// Counts a write to `key` whose value was `old` bytes long and is `new`
    /// bytes long now (`None`: no value), and keeps the scan index to the
    /// keys with a value.
    fn count(&mut self, key: &[u8], old: Option<usize>, new: Option<usize>) {
        let key_len = key.len();
        match (old, new) {
            (None, Some(new)) => {
                self.len += 1;
                self.bytes += entry_bytes(key_len, new);
                self.scan.insert(key);
            }
            (Some(old), None) => {
                self.len -= 1;
                self.bytes -= entry_bytes(key_len, old);
                self.scan.remove(key);
            }
            // `bytes` holds this key's `old` bytes: no underflow.
            (Some(old), Some(new)) => self.bytes = self.bytes - old + new,
            (None, None) => {}
        }
    }

    /// Moves up to `budget` overlay entries into the map if no snapshot shares
    /// it any more; `true` when the overlay is empty afterwards.
    pub fn fold(&mut self, budget: usize) -> bool {
        let expiries_folded = self.expiries.fold(budget) & self.scan.fold(budget);
        if self.delta.is_empty() {
            return expiries_folded;
        }
        let Some(base) = Arc::get_mut(&mut self.base) else {
            return false;
        };
        for _ in 0..budget {
            let Some(key) = self.unfolded.pop() else {
                break;
            };
            // `len` and `bytes` already count this write. The key moves
            // into the map as it is: no copy of a long key.
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
            return expiries_folded;
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

    /// What the keys and values held cost: [`entry_bytes`] summed over the
    /// keys with a value, exactly, whatever snapshots share the map. An
    /// estimate of the memory they take (see [`ENTRY_OVERHEAD`]), kept as
    /// writes go, so reading it is O(1).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What `key` costs the store now ([`entry_bytes`], plus
    /// [`expiry_bytes`] if it has an expiry), or `None` if it has no value:
    /// what a write to it would replace.
    pub fn entry_bytes_of(&self, key: &[u8]) -> Option<usize> {
        let expiry = if self.expiries.get(key).is_some() {
            expiry_bytes(key.len())
        } else {
            0
        };
        self.lookup(key)
            .map(|v| entry_bytes(key.len(), v.len()) + expiry)
    }

    /// Every key with an expiry and when it expires, in no particular order.
    pub fn expiries(&self) -> impl Iterator<Item = (&[u8], UnixMillis)> {
        self.expiries.iter().map(|(k, at)| (k, UnixMillis(at)))
    }

    /// One page of a scan over the keys, in scan order (see
    /// [`scan_hash`]) from position `cursor`: examines `count` keys, or
    /// fewer once their bytes reach `max_bytes` (at least one), then every
    /// further key at the last position examined, so that the next page
    /// starts at a new position. Returns the examined keys not expired at
    /// `now`, and the next page's cursor: the position after the last one
    /// examined (0 once no key is left).
    pub fn scan(&self, cursor: u64, count: usize, max_bytes: usize, now: UnixMillis) -> KeyPage {
        let mut keys = Vec::new();
        let (mut examined, mut bytes) = (0usize, 0usize);
        let mut last: Option<u64> = None;
        for (position, key) in self.scan.from(cursor) {
            let full = examined >= count.max(1) || bytes >= max_bytes;
            match last {
                // The next page starts right after the last position
                // examined, not at this key's: another replica may hold
                // keys in between that this one has not applied yet.
                // `last` is below `position`, so it is below u64::MAX.
                Some(last) if full && last != position => {
                    return KeyPage {
                        keys,
                        cursor: last + 1,
                    };
                }
                _ => {}
            }
            examined += 1;
            bytes += key.len();
            last = Some(position);
            if !self.is_expired(key, now) {
                keys.push(Bytes::copy_from_slice(key));
            }
        }
        KeyPage { keys, cursor: 0 }
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

/// Sets or removes `key` in `map`; the length of the value it had before, if
/// any (read from the value the map hands back: no second lookup).
fn apply_to(map: &mut HashMap<Key, Value>, key: &[u8], value: Option<Value>) -> Option<usize> {
    let old = match value {
        Some(value) => map.insert(Key::new(key), value),
        // No key built: a delete of a long key allocates nothing.
        None => map.remove(key),
    };
    old.as_ref().map(Value::len)
}

#[cfg(test)]
mod tests;
