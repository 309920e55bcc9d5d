//! The store's scan order: every key with a value, ordered by a fixed hash
//! of its bytes ([`scan_hash`]), so that a scan's cursor (a hash) means the
//! same on every replica and keys written or deleted mid-scan move no
//! other key. Copied for snapshots in O(1) the way the value map is: a
//! shared base and an overlay of changes, folded back a few at a time.
//!
//! The base is a directory of buckets by the hash's top bits (bucket `i`
//! of `2^bits` holds the hashes whose top `bits` bits are `i`), each an
//! unsorted vector of a few keys, sorted only when a scan reaches it. Adding
//! a key is a push and removing one a search of its bucket: a B-tree of
//! `(hash, key)` made every SET that created a key cost 0.5 us more and cut
//! insert-heavy SET throughput by a fifth to a third (bench/cpu.sh with
//! `KEYSPACE=200000 PREFILL=0`), for an order only scans need. The
//! directory doubles when buckets average [`MAX_AVERAGE`] keys, splitting
//! each bucket in two in place of order, like a hash table's growth.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::Key;

/// What the scan index costs per key, as the store's byte count reckons it
/// (see [`super::ENTRY_OVERHEAD`]): a `(u64, Key)` element (32 bytes) in a
/// bucket vector 50 to 100% full, and its share of the vector's header (a
/// bucket holds 4 to 8 keys on average): about 47 bytes; rounded up. Keys
/// over 22 bytes are also copied once more, counted by the store as a
/// second copy of the key.
pub(super) const INDEX_OVERHEAD: usize = 48;

/// Keys per bucket, on average, at which the directory doubles.
const MAX_AVERAGE: usize = 8;

/// The position of `key` in the scan order: FNV-1a over its bytes, then
/// SplitMix64's finaliser to spread the bits. Fixed forever within a
/// protocol version: every replica of a cluster must order keys alike.
pub fn scan_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The keys in buckets by their hash's top bits.
#[derive(Clone, Debug)]
struct Buckets {
    /// `buckets.len() == 1 << bits`.
    bits: u32,
    buckets: Vec<Vec<(u64, Key)>>,
    len: usize,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            bits: 0,
            buckets: vec![Vec::new()],
            len: 0,
        }
    }
}

impl Buckets {
    fn bucket_of(&self, hash: u64) -> usize {
        match self.bits {
            0 => 0,
            // At most 63 bits of a u64 shifted out: fits a usize on the
            // 64-bit targets semikv runs on.
            bits => (hash >> (64 - bits)) as usize,
        }
    }

    /// Adds `key` unless it is there already.
    fn insert(&mut self, hash: u64, key: Key) {
        let at = self.bucket_of(hash);
        let there = self
            .buckets
            .get(at)
            .is_some_and(|b| b.iter().any(|(h, k)| *h == hash && *k == key));
        if !there {
            self.insert_new(hash, key);
        }
    }

    /// Adds `key`, known not to be there (the store just gave it a value).
    fn insert_new(&mut self, hash: u64, key: Key) {
        let at = self.bucket_of(hash);
        let Some(bucket) = self.buckets.get_mut(at) else {
            return;
        };
        if bucket.capacity() == 0 {
            // Room for the average bucket at once, not 1, 2, 4, 8.
            bucket.reserve_exact(MAX_AVERAGE);
        }
        bucket.push((hash, key));
        self.len += 1;
        if self.len > self.buckets.len() * MAX_AVERAGE && self.bits < 48 {
            self.grow();
        }
    }

    fn remove(&mut self, hash: u64, key: &[u8]) {
        let at = self.bucket_of(hash);
        let Some(bucket) = self.buckets.get_mut(at) else {
            return;
        };
        if let Some(i) = bucket
            .iter()
            .position(|(h, k)| *h == hash && k.as_slice() == key)
        {
            bucket.swap_remove(i);
            self.len -= 1;
        }
    }

    /// Doubles the directory: bucket `i` becomes `2i` and `2i + 1`, by the
    /// next bit of the hash, so the order of buckets stays the hash order.
    fn grow(&mut self) {
        self.bits += 1;
        let shift = 64 - self.bits;
        let old = std::mem::take(&mut self.buckets);
        self.buckets = Vec::with_capacity(old.len() * 2);
        for bucket in old {
            let mut low = Vec::with_capacity(MAX_AVERAGE);
            let mut high = Vec::with_capacity(MAX_AVERAGE);
            for entry in bucket {
                if (entry.0 >> shift) & 1 == 1 {
                    high.push(entry);
                } else {
                    low.push(entry);
                }
            }
            self.buckets.push(low);
            self.buckets.push(high);
        }
    }

    /// The keys from position `from` on, in order.
    fn from(&self, from: u64) -> impl Iterator<Item = &(u64, Key)> {
        let first = self.bucket_of(from);
        self.buckets.iter().skip(first).flat_map(move |bucket| {
            let mut sorted: Vec<&(u64, Key)> = bucket.iter().filter(|(h, _)| *h >= from).collect();
            sorted.sort_unstable();
            sorted
        })
    }
}

/// Every key with a value, in scan order.
#[derive(Clone, Default, Debug)]
pub(super) struct ScanIndex {
    base: Arc<Buckets>,
    /// Changes made while `base` was shared: `true` adds, `false` removes.
    /// Ordered, so a scan merges it with `base` in one pass.
    delta: BTreeMap<(u64, Key), bool>,
}

impl ScanIndex {
    /// Adds a key that just got a value.
    pub(super) fn insert(&mut self, key: &[u8]) {
        self.change(key, true);
    }

    /// Removes a key that just lost its value.
    pub(super) fn remove(&mut self, key: &[u8]) {
        self.change(key, false);
    }

    fn change(&mut self, key: &[u8], present: bool) {
        let hash = scan_hash(key);
        if self.delta.is_empty() {
            if let Some(base) = Arc::get_mut(&mut self.base) {
                if present {
                    // The store calls this only for a key it had no value
                    // for, so the key is not in the index.
                    base.insert_new(hash, Key::new(key));
                } else {
                    base.remove(hash, key);
                }
                return;
            }
        }
        self.delta.insert((hash, Key::new(key)), present);
    }

    /// Moves up to `budget` overlay entries into the base once no snapshot
    /// shares it; `true` when the overlay is empty afterwards.
    pub(super) fn fold(&mut self, budget: usize) -> bool {
        if self.delta.is_empty() {
            return true;
        }
        let Some(base) = Arc::get_mut(&mut self.base) else {
            return false;
        };
        for _ in 0..budget {
            let Some(((hash, key), present)) = self.delta.pop_first() else {
                break;
            };
            if present {
                base.insert(hash, key);
            } else {
                base.remove(hash, key.as_slice());
            }
        }
        self.delta.is_empty()
    }

    /// Changes waiting in the overlay (for tests).
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.delta.len()
    }

    /// The keys from position `from` on, in scan order, with their
    /// positions.
    pub(super) fn from(&self, from: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let lower = (from, Key::new(&[]));
        let mut base = self.base.from(from).peekable();
        let mut delta = self
            .delta
            .range((Bound::Included(lower), Bound::Unbounded))
            .peekable();
        std::iter::from_fn(move || loop {
            let next = match (base.peek(), delta.peek()) {
                (None, None) => return None,
                (Some(b), None) => Some(*b),
                (None, Some(_)) => None,
                (Some(b), Some((d, _))) => (*b < *d).then_some(*b),
            };
            if let Some(entry) = next {
                base.next();
                return Some((entry.0, entry.1.as_slice()));
            }
            // The overlay's entry comes first, or is the same key: it
            // decides.
            let (entry, &present) = delta.next()?;
            if base.peek() == Some(&entry) {
                base.next();
            }
            if present {
                return Some((entry.0, entry.1.as_slice()));
            }
        })
    }
}
