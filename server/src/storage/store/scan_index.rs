//! The store's scan order: every key with a value, ordered by a fixed hash
//! of its bytes ([`scan_hash`]), so that a scan's cursor (a hash) means the
//! same on every replica and keys written or deleted mid-scan move no
//! other key. Copied for snapshots in O(1) the way the value map is: a
//! shared base and an overlay of changes, folded back a few at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use super::Key;

/// What the scan index costs per key, as the store's byte count reckons it
/// (see [`super::ENTRY_OVERHEAD`]): an `(u64, Key)` element (32 bytes) in
/// B-tree leaves kept between half and fully packed, about 48 bytes, plus
/// its share of the node headers; rounded up. Keys over 22 bytes are also
/// copied once more, counted by the store as a second copy of the key.
pub(super) const INDEX_OVERHEAD: usize = 56;

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

/// Every key with a value, in scan order.
#[derive(Clone, Default, Debug)]
pub(super) struct ScanIndex {
    base: Arc<BTreeSet<(u64, Key)>>,
    /// Changes made while `base` was shared: `true` adds, `false` removes.
    /// Ordered too, so a scan merges it with `base` in one pass.
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
        let entry = (scan_hash(key), Key::new(key));
        if self.delta.is_empty() {
            if let Some(base) = Arc::get_mut(&mut self.base) {
                if present {
                    base.insert(entry);
                } else {
                    base.remove(&entry);
                }
                return;
            }
        }
        self.delta.insert(entry, present);
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
            let Some((entry, present)) = self.delta.pop_first() else {
                break;
            };
            if present {
                base.insert(entry);
            } else {
                base.remove(&entry);
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
        let mut base = self
            .base
            .range((Bound::Included(lower.clone()), Bound::Unbounded))
            .peekable();
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
