//! The store's memory limit (`--max-memory`): what a leader counts before it
//! appends a write, and what the status reports.
//!
//! A leader refuses a write that would grow the store past the limit with
//! `OutOfMemory`, before appending anything, so the write never happens.
//! It counts the store's bytes plus a bound on what the entries in its log
//! not yet applied can add: a leader pipelines, and a check of the store
//! alone would let a pipelined flood overshoot by the whole pipeline. The
//! bound is one subtraction on the log's running totals, so the check costs
//! one lookup of the key in the store. Writes that do not grow the store
//! (deletes, overwrites with a value no longer) are always accepted, so a
//! full store can still be rewritten and emptied. Followers never refuse:
//! they apply what their leader committed.
//!
//! Why the store stays within the limit: let `M(k)` be the most key `k`
//! costs the store (0 without a value) from now until every entry in the
//! log is applied, in order. Every state the store passes through costs at
//! most `H = sum of M(k)` (the store's bytes when nothing waits to be
//! applied). Applying an
//! entry never raises an `M(k)`. A delete, or a `Set` that costs no more
//! than what the store holds for its key, leaves `M(k)` as it was. A `Set`
//! of `k` costing `w` raises `H` to at most `H - M(k) + w`, and since each
//! `M(j)` is at most the store's cost of `j` plus the bounds of the log's
//! writes to `j`, that is at most `store + bound(log) - store(k) + w`:
//! exactly what the check keeps within the limit. So `H`, and with it the
//! store, never crosses the limit because of a write this leader accepted.

use super::*;
use crate::log;
use crate::storage::store;

/// What an unapplied `Set` can add to the store beyond its log entry's size
/// ([`log::entry_size`]): the store's per-key overhead less the log's. The
/// subtraction is evaluated at compile time, so it cannot underflow.
const STORE_EXTRA_PER_ENTRY: usize = store::ENTRY_OVERHEAD - log::ENTRY_OVERHEAD;

/// `n` as a `u64`, saturating (a `usize` never exceeds it on the 64-bit
/// targets semikv runs on).
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Node {
    /// Sets the store's limit in bytes (`None`: no limit). From then on this
    /// node, while it leads, refuses writes that would grow the store past
    /// it (see [`Node::propose`]); a store already past it keeps its data
    /// and serves reads.
    pub fn set_memory_limit(&mut self, limit: Option<u64>) {
        self.memory_limit = limit;
    }

    /// Keys in the store (expired ones not yet swept included).
    pub fn key_total(&self) -> usize {
        self.store.len()
    }

    /// Bytes the store holds ([`Store::bytes`]): keys, values and each key's
    /// overhead, exactly as counted, an estimate of the memory they take.
    pub fn memory_used(&self) -> u64 {
        to_u64(self.store.bytes())
    }

    /// The store's bytes plus the most the log's entries not yet applied
    /// can add to it: each `Set` at most its key, value and the store's
    /// per-key overhead; deletes and no-ops nothing, counted as if they
    /// were sets (the bound stays O(1) and errs on the safe side).
    fn memory_claimed(&self) -> u64 {
        let unapplied = self.log.last_index().0.saturating_sub(self.applied.0);
        let pending = to_u64(self.log.bytes_after(self.applied))
            .saturating_add(unapplied.saturating_mul(to_u64(STORE_EXTRA_PER_ENTRY)));
        self.memory_used().saturating_add(pending)
    }

    /// Whether the store has room for `op` as leader: `Ok` without a limit,
    /// for deletes and no-ops, and for a `Set` (or a `Batch` whose every
    /// mutation) costs no more than what it replaces.
    ///
    /// # Errors
    /// `OutOfMemory` with what the store holds and what is in flight to it,
    /// when the `Set` would take that past the limit.
    pub(super) fn check_memory(&self, op: &WriteOp) -> Result<(), ErrorReply> {
        let Some(limit) = self.memory_limit else {
            return Ok(());
        };
        let growth = match op {
            WriteOp::Set { key, value } => {
                let new = store::entry_bytes(key.len(), value.len());
                let old = self.store.entry_bytes_of(key).unwrap_or(0);
                new.saturating_sub(old)
            }
            // Each mutation as a `Set` of its own (a `Batch` from the
            // evaluation names each key once; counted apart, a repeated
            // key only overestimates).
            WriteOp::Batch(mutations) => mutations
                .iter()
                .map(|m| {
                    let new = store::mutation_bytes(m);
                    let old = self.store.entry_bytes_of(&m.key).unwrap_or(0);
                    new.saturating_sub(old)
                })
                .fold(0, usize::saturating_add),
            WriteOp::Delete { .. } | WriteOp::Noop => 0,
        };
        if growth == 0 {
            return Ok(());
        }
        let used = self.memory_claimed();
        if used.saturating_add(to_u64(growth)) > limit {
            return Err(ErrorReply::OutOfMemory { used, limit });
        }
        Ok(())
    }
}
