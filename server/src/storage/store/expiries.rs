//! The store's expiry table: key to absolute expiry time, for the keys that
//! have one, copied for snapshots in O(1) the way the value map is (a
//! shared base and an overlay folded back a few entries at a time).
//!
//! A side table rather than a field of each value: keys without an expiry,
//! the common case, cost nothing more, and a write to one checks only that
//! the table is empty.

use std::collections::HashMap;
use std::sync::Arc;

use super::Key;

/// Key to expiry (Unix milliseconds). Invariant (kept by the store): only
/// keys that have a value are in it.
#[derive(Clone, Default, Debug)]
pub(super) struct Expiries {
    base: Arc<HashMap<Key, u64>>,
    /// Changes made while `base` was shared; `None` removes.
    delta: HashMap<Key, Option<u64>>,
    /// The keys of `delta`, each once.
    unfolded: Vec<Key>,
    /// Keys with an expiry.
    len: usize,
}

impl Expiries {
    /// Whether no key has an expiry: the store's fast path.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys with an expiry.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `key`'s expiry.
    pub(super) fn get(&self, key: &[u8]) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if !self.delta.is_empty() {
            if let Some(overlay) = self.delta.get(key) {
                return *overlay;
            }
        }
        self.base.get(key).copied()
    }

    /// Sets or removes `key`'s expiry; the one it had.
    pub(super) fn set(&mut self, key: &[u8], at: Option<u64>) -> Option<u64> {
        if at.is_none() && self.len == 0 {
            return None;
        }
        let shared = !self.delta.is_empty() || Arc::get_mut(&mut self.base).is_none();
        let old = if shared {
            self.set_in_overlay(key, at)
        } else {
            let base = Arc::make_mut(&mut self.base); // Not shared: no copy.
            match at {
                Some(at) => base.insert(Key::new(key), at),
                None => base.remove(key),
            }
        };
        match (old.is_some(), at.is_some()) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
        old
    }

    /// While a snapshot shares the base (or older overlay entries wait):
    /// the overlay keeps the newest expiry of the key.
    fn set_in_overlay(&mut self, key: &[u8], at: Option<u64>) -> Option<u64> {
        match self.delta.get_mut(key) {
            Some(slot) => std::mem::replace(slot, at),
            None => {
                let key = Key::new(key);
                let old = self.base.get(&key).copied();
                self.delta.insert(key.clone(), at);
                self.unfolded.push(key);
                old
            }
        }
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
            let Some(key) = self.unfolded.pop() else {
                break;
            };
            match self.delta.remove(&key) {
                Some(Some(at)) => {
                    base.insert(key, at);
                }
                Some(None) => {
                    base.remove(&key);
                }
                None => {}
            }
        }
        if self.delta.is_empty() {
            self.delta = HashMap::new();
            self.unfolded = Vec::new();
            return true;
        }
        false
    }

    /// Every key with an expiry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        let overlay = self
            .delta
            .iter()
            .filter_map(|(k, at)| at.map(|at| (k.as_slice(), at)));
        let base = self
            .base
            .iter()
            .filter(|(k, _)| self.delta.is_empty() || !self.delta.contains_key(*k))
            .map(|(k, at)| (k.as_slice(), *at));
        overlay.chain(base)
    }
}
