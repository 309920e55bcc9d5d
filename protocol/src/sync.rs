//! Locking a std mutex past a panic of an earlier holder.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning: for data that every holder leaves
/// consistent at every point where it could panic (single field stores,
/// single map operations), so a panic elsewhere in a holder's task does not
/// turn every later lock into a second panic.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
