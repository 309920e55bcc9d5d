//! Reads about the whole key space rather than one key (protocol 6): a
//! page of a [`Scan`] over every key ([`KeyPage`]), and the number of keys
//! ([`KeyCount`]).
//!
//! A scan's cursor is a position in an order every replica shares (a
//! fixed hash of the key), not an offset: keys written or deleted while a
//! scan runs move no other key, so a scan returns every key that exists,
//! unexpired, from its first page to its last (as the replicas that answer
//! see them), and may return a key more than once. Redis's SCAN promises
//! the same.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Most keys a replica examines for one page, whatever `count` asks: bounds
/// the time one page holds the replica's state.
pub const MAX_SCAN_COUNT: u32 = 1_000;

/// Longest pattern a scan may filter by: matching costs up to the pattern's
/// length times the key's, for every key examined.
pub const MAX_PATTERN_LEN: usize = 1024;

/// One page of a scan over every key, in the replicas' shared order,
/// answered [`Reply::Keys`](super::Reply::Keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// Where the page starts: 0 for the first, then the `cursor` of the
    /// previous [`KeyPage`].
    pub cursor: u64,
    /// How many keys to examine (Redis's `COUNT`): a hint, not a limit on
    /// the answer. The page may examine more (keys that share a position
    /// come together) or fewer (a page's bytes are bounded), and returns
    /// only the examined keys that are live and match `pattern`, so it may
    /// be empty before the scan is complete. At most [`MAX_SCAN_COUNT`] is
    /// used.
    pub count: u32,
    /// Redis's glob (`*`, `?`, `[a-z]`, `[^a]`, `\x`): only keys it
    /// matches are returned. `None` returns every key examined.
    pub pattern: Option<Bytes>,
}

impl Scan {
    /// Checks the count and the pattern's length.
    ///
    /// # Errors
    /// A human-readable reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("scan count must be at least 1".to_string());
        }
        match &self.pattern {
            Some(p) if p.len() > MAX_PATTERN_LEN => Err(format!(
                "scan pattern of {} bytes exceeds the limit of {MAX_PATTERN_LEN} bytes",
                p.len()
            )),
            _ => Ok(()),
        }
    }
}

/// A page of a scan: the keys found, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPage {
    /// Keys examined by this page that are live and match the pattern,
    /// in no promised order, each at most
    /// [`MAX_KEY_LEN`](super::MAX_KEY_LEN) bytes.
    pub keys: Vec<Bytes>,
    /// The next page's cursor; 0 when the scan is complete.
    pub cursor: u64,
}

/// The number of keys a replica holds, answering `DbSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    /// Keys with a value, counting expired ones not yet deleted (as
    /// Redis's `DBSIZE` does: the leader deletes them within moments).
    pub keys: u64,
    /// Of those, the keys with an expiry.
    pub expiring: u64,
}
