//! Key expiry on a replica: the time-ordered index of the applied store's
//! expiring keys, the `Ttl` read, and the leader's sweep that deletes
//! expired keys through the log.
//!
//! Every replica hides a key once its expiry is at or before its own clock
//! (see [`Node::read`]); only the leader deletes, through `Batch` entries,
//! so that followers and snapshots converge on the same map. Redis samples
//! 20 random keys with an expiry ten times a second because its dict has
//! no order; the index here is ordered by time, so the sweep takes exactly
//! the keys that are due, oldest first, and never scans live ones. Every
//! replica keeps the index as it applies entries (a follower promoted has
//! it ready); it is not part of a snapshot's copy of the store, which it
//! would make O(keys) to take.

use super::*;
use semikv_protocol::{KeyTtl, Mutation};

/// Keys a sweep looks at per key it may delete.
const SWEEP_SCAN_FACTOR: usize = 16;

/// Applies `op` to `store`, keeping `expiring` (the store's expiring keys
/// by time) in step. A store without expiries and a plain write cost one
/// comparison more than the store's own `apply`.
pub(super) fn apply(store: &mut Store, expiring: &mut BTreeSet<(UnixMillis, Bytes)>, op: &WriteOp) {
    if !store.has_expiries() && !matches!(op, WriteOp::Batch(_)) {
        store.apply(op);
        return;
    }
    for key in op.keys() {
        if let Some(at) = store.expiry(key) {
            expiring.remove(&(at, key.clone()));
        }
    }
    store.apply(op);
    for key in op.keys() {
        if let Some(at) = store.expiry(key) {
            expiring.insert((at, key.clone()));
        }
    }
}

impl Node {
    /// Sets the clock expiries are judged by (the system's by default).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Sets the longest value a command may create (an `Append`); the
    /// default is the protocol's.
    pub fn set_max_value_len(&mut self, max: usize) {
        self.max_value_len = max;
    }

    /// Rebuilds the index from the store (after recovery or a snapshot
    /// install replaced it).
    pub(super) fn rebuild_expiry_index(&mut self) {
        self.expiring = self
            .store
            .expiries()
            .map(|(key, at)| (at, Bytes::copy_from_slice(key)))
            .collect();
    }

    /// Keys in the applied store whose expiry is at or before now, hidden
    /// from reads and not deleted yet.
    pub fn expired_keys(&self) -> usize {
        let now = self.clock.now();
        self.expiring
            .iter()
            .take_while(|(at, _)| *at <= now)
            .count()
    }

    /// `key`'s expiry for a client read, on the same terms as
    /// [`Node::read`] (`None`: a new leader not ready to answer yet).
    pub fn read_ttl(&self, key: &[u8]) -> Option<KeyTtl> {
        if !self.reads_ready() {
            return None;
        }
        let now = self.clock.now();
        if self.store.entry_bytes_of(key).is_none() || self.store.is_expired(key, now) {
            return Some(KeyTtl::NoKey);
        }
        Some(match self.store.expiry(key) {
            None => KeyTtl::Persistent,
            Some(at) => KeyTtl::Expires {
                at,
                remaining_ms: at.0.saturating_sub(now.0),
            },
        })
    }

    /// As leader: deletes up to `max` keys whose expiry is at or before now
    /// through one `Batch` entry (no client waits for it), skipping keys a
    /// write not yet applied gave a new state (a later write, or the delete
    /// of an earlier sweep). Returns how many deletes were logged; 0 when
    /// not leading or when writes are refused (a full disk).
    pub fn sweep_expired(&mut self, max: usize) -> usize {
        if self.check_writable().is_err() {
            return 0;
        }
        let now = self.clock.now();
        // Keys whose delete is logged but not applied yet are still in the
        // index: skipped, but only so many looked at per sweep, to bound
        // the time under the lock while a large batch commits.
        let deletes: Vec<Mutation> = self
            .expiring
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max.saturating_mul(SWEEP_SCAN_FACTOR))
            .filter(|(_, key)| {
                let (state, _) = self.proposed_state(key);
                state.is_some_and(|s| s.expires_at.is_some_and(|at| at <= now))
            })
            .take(max)
            .map(|(_, key)| Mutation {
                key: key.clone(),
                value: None,
                expires_at: None,
            })
            .collect();
        let count = deletes.len();
        if count > 0 {
            self.append_local(WriteOp::Batch(deletes));
            self.advance_commit();
        }
        count
    }
}
