//! Requests in flight on one multiplexed connection, by request id: the map
//! every pipelined semikv connection keeps (the client library's
//! connections, the balancer's links to its replicas).
//!
//! Two rules make "each request answered exactly once" hold however the
//! connection ends: nothing is registered once the connection has closed
//! (registering and closing take the same lock), and whoever takes an
//! entry out (a reply, a sweep past a deadline, the drain at close, the
//! caller giving up) is the one that answers it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

use crate::sync::lock;

/// Hashes request ids with one multiplication instead of SipHash: every
/// request costs the map an insert and a remove, and the ids are a counter
/// of the connection's own that no peer chooses, so there is no flooding
/// to resist. Sequential ids spread over every bucket (the multiplier is
/// odd) and over the high bits the table's tags use.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The map itself, by request id.
pub type IdMap<W> = HashMap<u64, W, BuildHasherDefault<IdHasher>>;

#[derive(Debug)]
struct Inner<W> {
    map: IdMap<W>,
    /// Why the connection ended, once it has (the first reason given).
    closed: Option<String>,
}

/// The requests in flight on one connection, each with what waits for its
/// answer (`W`: a oneshot sender, a forwarded client request, ...).
#[derive(Debug)]
pub struct PendingMap<W> {
    inner: Mutex<Inner<W>>,
}

impl<W> Default for PendingMap<W> {
    fn default() -> Self {
        PendingMap {
            inner: Mutex::new(Inner {
                map: IdMap::default(),
                closed: None,
            }),
        }
    }
}

/// The map, locked, while its connection is open: what is inserted through
/// it will be taken out by someone.
#[derive(Debug)]
pub struct OpenMap<'a, W>(MutexGuard<'a, Inner<W>>);

impl<W> Deref for OpenMap<'_, W> {
    type Target = IdMap<W>;

    fn deref(&self) -> &IdMap<W> {
        &self.0.map
    }
}

impl<W> DerefMut for OpenMap<'_, W> {
    fn deref_mut(&mut self) -> &mut IdMap<W> {
        &mut self.0.map
    }
}

impl<W> PendingMap<W> {
    /// An empty map of an open connection.
    pub fn new() -> Self {
        PendingMap::default()
    }

    /// The map, locked, if the connection is still open; `None` once it
    /// has closed (nothing may be registered then: nobody would answer it).
    pub fn open(&self) -> Option<OpenMap<'_, W>> {
        let inner = lock(&self.inner);
        inner.closed.is_none().then_some(OpenMap(inner))
    }

    /// Registers `waiter` under `id`.
    ///
    /// # Errors
    /// The waiter back, with why the connection closed, once it has.
    pub fn insert(&self, id: u64, waiter: W) -> Result<(), (W, String)> {
        let mut inner = lock(&self.inner);
        if let Some(reason) = &inner.closed {
            return Err((waiter, reason.clone()));
        }
        inner.map.insert(id, waiter);
        Ok(())
    }

    /// Takes the waiter of `id` out, if it is still there.
    pub fn remove(&self, id: u64) -> Option<W> {
        lock(&self.inner).map.remove(&id)
    }

    /// Takes out, under one lock, the waiter of each answer in `answers`
    /// (id and answer) that is still there, paired with its answer, into
    /// `matched`; answers nobody waits for any more are dropped.
    pub fn take_answered<T>(
        &self,
        answers: impl IntoIterator<Item = (u64, T)>,
        matched: &mut Vec<(W, T)>,
    ) {
        let mut inner = lock(&self.inner);
        for (id, answer) in answers {
            if let Some(waiter) = inner.map.remove(&id) {
                matched.push((waiter, answer));
            }
        }
    }

    /// Takes out every waiter `due` says is past its time.
    pub fn take_due(&self, mut due: impl FnMut(&W) -> bool) -> Vec<W> {
        let mut inner = lock(&self.inner);
        let late: Vec<u64> = inner
            .map
            .iter()
            .filter(|(_, waiter)| due(waiter))
            .map(|(&id, _)| id)
            .collect();
        late.into_iter()
            .filter_map(|id| inner.map.remove(&id))
            .collect()
    }

    /// Closes the connection's map (keeping the first reason given) and
    /// takes out every waiter, for the caller to answer. Nothing can be
    /// registered from now on.
    pub fn close(&self, reason: impl Into<String>) -> Vec<W> {
        let mut inner = lock(&self.inner);
        if inner.closed.is_none() {
            inner.closed = Some(reason.into());
        }
        inner.map.drain().map(|(_, waiter)| waiter).collect()
    }

    /// Why the connection closed, once it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.inner).closed.clone()
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        lock(&self.inner).map.len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `id`'s entry out when the returned guard drops, unless it is
    /// [`Registration::answered`] first: for a caller whose wait can end
    /// without an answer (its own timeout, its future dropped), so the map
    /// keeps no dead entries on a live connection.
    pub fn guard(&self, id: u64) -> Registration<'_, W> {
        Registration {
            pending: self,
            id,
            armed: true,
        }
    }
}

/// See [`PendingMap::guard`].
#[derive(Debug)]
pub struct Registration<'a, W> {
    pending: &'a PendingMap<W>,
    id: u64,
    armed: bool,
}

impl<W> Registration<'_, W> {
    /// The entry was taken out by whoever answered it: nothing to remove.
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl<W> Drop for Registration<'_, W> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn nothing_is_registered_once_closed_and_the_close_drains_everything() {
        let pending = PendingMap::new();
        pending.insert(1, "a").ok();
        pending.insert(2, "b").ok();
        let mut drained = pending.close("peer went away");
        drained.sort_unstable();
        assert_eq!(drained, ["a", "b"]);
        assert_eq!(
            pending.insert(3, "c"),
            Err(("c", "peer went away".to_string()))
        );
        assert!(pending.open().is_none());
        // The first reason stays.
        assert!(pending.close("later").is_empty());
        assert_eq!(pending.closed().as_deref(), Some("peer went away"));
    }

    #[test]
    fn each_entry_is_taken_out_once() {
        let pending = PendingMap::new();
        if let Some(mut map) = pending.open() {
            map.reserve(3);
            for id in 1..=3 {
                map.insert(id, id * 10);
            }
        }
        let mut matched = Vec::new();
        pending.take_answered([(1, 'x'), (9, 'y'), (1, 'z')], &mut matched);
        assert_eq!(
            matched,
            [(10, 'x')],
            "an unknown or repeated id matches nothing"
        );
        assert_eq!(pending.take_due(|&w| w == 20), [20]);
        assert_eq!(pending.remove(3), Some(30));
        assert!(pending.is_empty());
    }

    #[test]
    fn a_guard_removes_its_entry_unless_answered() {
        let pending = PendingMap::new();
        pending.insert(1, ()).ok();
        pending.insert(2, ()).ok();
        drop(pending.guard(1));
        let kept = pending.guard(2);
        kept.answered();
        assert_eq!(pending.len(), 1);
        assert!(pending.remove(2).is_some());
    }

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=4096u64).map(|id| build.hash_one(id)).collect();
        // A table of 4096 buckets indexes by the low bits: no two collide.
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        assert_eq!(buckets.len(), 4096);
        // The table's tags are the top 7 bits: all 128 of them are used.
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
    }
}
