//! How many requests one client connection may have in flight: a slot per
//! request, and a window that narrows as its answers grow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Requests a connection may have in flight before its first answer has
/// shown how large its answers are (as TCP's slow start, for answers).
pub const FIRST_WINDOW: usize = 32;

/// A connection's in-flight slots (one per request, held until its answer
/// is written or dropped) and the window over them.
///
/// Guarantee: with a byte window `B`, a new request is taken only while
/// fewer than `B / largest` requests are in flight, `largest` being the
/// largest answer the connection has had; before any answer, only while
/// fewer than [`FIRST_WINDOW`] are. So unless its answers grow past any it
/// had before, what is forwarded for a client and not yet written to it
/// stays under about `B` (and one burst of [`FIRST_WINDOW`] answers).
/// Without a byte window, the slots alone bound it.
#[derive(Debug)]
pub struct Window {
    slots: Arc<Semaphore>,
    max: usize,
    bytes: Option<usize>,
    /// 0 until the first answer.
    largest: AtomicUsize,
}

impl Window {
    /// `max` slots (at least one), no byte window.
    pub fn new(max: usize) -> Window {
        let max = max.max(1);
        Window {
            slots: Arc::new(Semaphore::new(max)),
            max,
            bytes: None,
            largest: AtomicUsize::new(0),
        }
    }

    /// `max` slots (at least one) under a window of `bytes` of answers.
    pub fn sized(max: usize, bytes: usize) -> Window {
        Window {
            bytes: Some(bytes),
            ..Window::new(max)
        }
    }

    /// The slots: a request holds one until its answer is written.
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// The most requests ever in flight at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Notes an answer of `bytes` (one reply).
    pub fn observe(&self, bytes: usize) {
        if self.bytes.is_some() {
            self.largest.fetch_max(bytes.max(1), Ordering::Relaxed);
        }
    }

    /// How many requests may be in flight now.
    pub fn allowed(&self) -> usize {
        let Some(bytes) = self.bytes else {
            return self.max;
        };
        match self.largest.load(Ordering::Relaxed) {
            0 => FIRST_WINDOW.min(self.max),
            largest => (bytes / largest).clamp(1, self.max),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// Whether another request may be taken now.
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.allowed()
    }

    /// Waits until [`Self::has_room`]. Cancel-safe. Waits on the semaphore
    /// itself: answers free their slots from other tasks, and only a waiter
    /// on the semaphore hears of it.
    pub async fn room(&self) {
        while !self.has_room() {
            // Free slots needed for one more request to fit the window.
            let need = self.max - self.allowed() + 1;
            let need = u32::try_from(need).unwrap_or(u32::MAX);
            // Given back at once; the semaphore is never closed.
            drop(self.slots.acquire_many(need).await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_starts_narrow_and_follows_the_largest_answer() {
        let w = Window::sized(1024, 64 << 20);
        assert_eq!(w.allowed(), FIRST_WINDOW);
        w.observe(100);
        assert_eq!(w.allowed(), 1024, "small answers: every slot");
        w.observe(2 << 20);
        assert_eq!(w.allowed(), 32, "2 MiB answers: 64 MiB of them");
        w.observe(100);
        assert_eq!(w.allowed(), 32, "it never widens again");
        w.observe(1 << 30);
        assert_eq!(w.allowed(), 1, "never below one");
        let counted = Window::new(8);
        counted.observe(1 << 30);
        assert_eq!(counted.allowed(), 8);
    }

    #[tokio::test]
    async fn room_waits_for_answers_to_free_their_slots() {
        let w = Arc::new(Window::sized(8, 4096));
        w.observe(1024); // 4 in flight allowed
        let held: Vec<_> = (0..4)
            .map(|_| w.slots().clone().try_acquire_owned().unwrap())
            .collect();
        assert!(!w.has_room());
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(w.has_room());
    }
}
