//! Reads about the whole key space on a replica: a page of a scan, and the
//! number of keys. Both answer what the replica has applied, like `Get`,
//! and wait like it while a new leader commits its first entry.

use super::*;
use semikv_protocol::{glob::glob, KeyCount, KeyPage, Scan, MAX_SCAN_COUNT};

/// Matching work one page may cost: the bytes of the keys it examines
/// times the pattern's length (glob's bound). With a 16-byte pattern a page
/// examines up to [`MAX_PAGE_BYTES`] of keys; with a 1 KiB one, 16 KiB.
const PAGE_WORK: usize = 16 << 20;

/// Most key bytes one page examines: bounds the answer to a fraction of a
/// frame whatever the keys' lengths.
const MAX_PAGE_BYTES: usize = 1 << 20;

impl Node {
    /// One page of `scan` over the applied store, unfiltered (see
    /// [`filter_page`], which the caller runs once it has let the node go:
    /// matching may cost more than taking the page); `None` while reads are
    /// held (see [`Node::read`]).
    pub fn scan_page(&self, scan: &Scan) -> Option<KeyPage> {
        if !self.reads_ready() {
            return None;
        }
        let count = scan.count.min(MAX_SCAN_COUNT) as usize;
        let pattern_len = scan.pattern.as_ref().map_or(1, |p| p.len().max(1));
        let max_bytes = (PAGE_WORK / pattern_len).min(MAX_PAGE_BYTES);
        Some(
            self.store
                .scan(scan.cursor, count, max_bytes, self.clock.now()),
        )
    }

    /// The number of keys applied (expired ones not yet deleted included,
    /// as Redis counts them); `None` while reads are held.
    pub fn key_count(&self) -> Option<KeyCount> {
        if !self.reads_ready() {
            return None;
        }
        Some(KeyCount {
            keys: self.store.len() as u64,
            expiring: self.store.expiring_len() as u64,
        })
    }
}

/// Keeps the keys of `page` that `pattern` matches.
pub fn filter_page(page: &mut KeyPage, pattern: Option<&[u8]>) {
    if let Some(pattern) = pattern {
        page.keys.retain(|key| glob(pattern, key));
    }
}
