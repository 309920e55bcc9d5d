//! The workload (seeded choices, a lane's keys, tagged values) and what each read must return.
//!
//! Read checking: keys are private to a client (`bench-RUN-CLIENT-K`, RUN
//! unique per run) and, within a client, to one pipeline lane (`K % pipeline
//! == lane`), so no two requests on the same key are ever in flight at once
//! and the expected value is known exactly — except after a write whose
//! outcome is unknown (timeout, lost connection, `NotEnoughReplicas`,
//! `Indeterminate`), after which either the old or the new value is accepted
//! until a read settles it. A read that returns an *older* value the key did
//! hold is `stale` (reads from followers may lag: allowed by the design, but
//! counted); a value the key never held is a consistency violation
//! (`wrong_values`, exit code 1 in the binary).

use semikv_client::ClientError;
use semikv_protocol::ErrorReply;

/// A small, fast, seedable generator (SplitMix64): reproducible choices
/// without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; 0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for load generation.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// One lane's fixed view of the run: which keys are its own (key number
/// `lane + pipeline * i` is its lane-local key `i`).
pub(super) struct LaneKeys {
    pub(super) pipeline: u64,
    pub(super) lane: u64,
}

impl LaneKeys {
    pub(super) fn key_number(&self, i: u64) -> u64 {
        self.lane + self.pipeline * i
    }
}

/// What a read returned, judged against what the lane wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadCheck {
    /// The latest value (or one of the possible latest ones).
    Fresh,
    /// A value the key held before its latest one.
    Stale,
    /// A value the key never held.
    Wrong,
}

/// One lane's knowledge of its keys, by lane-local key number. `None`
/// stands for "no value".
///
/// Laid out for the common case: a read that returns the settled value
/// touches one dense slot and nothing else (with hundreds of lanes, a wider
/// per-key struct made every read a cache miss, the load generator's
/// largest cost). Writes with an unknown outcome are kept apart, per lane,
/// and are only searched when a read is not the settled value.
///
/// Memory stays bounded however long the run: no history of values is
/// kept. A lane numbers its writes in increasing order and every value names
/// the key it was written to ([`make_value`]), so a value of this key with a
/// number the lane has issued is one it wrote there: an old value. The
/// caller checks the key a value names ([`judge`]).
#[derive(Debug, Default)]
pub(super) struct LaneModel {
    /// By key: the value a fresh read returns unless one of its `pending`
    /// writes landed.
    settled: Vec<Option<u64>>,
    /// `(key, seq)`: writes after their key's settled value whose outcome is
    /// unknown, in write order: a fresh read may return any of its key's.
    /// Usually empty.
    pending: Vec<(u64, u64)>,
    /// The highest value number written or maybe written.
    issued: Option<u64>,
}

impl LaneModel {
    /// A model for keys `0..keys` (it grows if a larger key shows up).
    pub(super) fn with_keys(keys: usize) -> LaneModel {
        LaneModel {
            settled: vec![None; keys],
            pending: Vec::new(),
            issued: None,
        }
    }

    /// Where `key`'s settled value is, grown into if need be.
    fn slot(&mut self, key: u64) -> usize {
        let at = usize::try_from(key).unwrap_or(usize::MAX);
        if at >= self.settled.len() {
            self.settled.resize(at.saturating_add(1), None);
        }
        at
    }

    fn remember(&mut self, seq: u64) {
        self.issued = Some(self.issued.map_or(seq, |issued| issued.max(seq)));
    }

    /// What a fresh read of `key` returns unless a write whose outcome is
    /// unknown landed: [`LaneModel::read`] judges a read of exactly this
    /// fresh, and changes nothing. Lets a caller fetch it while the key's
    /// lines are warm and compare the answer later without touching the
    /// model.
    pub(super) fn settled(&self, key: u64) -> Option<u64> {
        usize::try_from(key)
            .ok()
            .and_then(|at| self.settled.get(at))
            .copied()
            .flatten()
    }

    /// A write of value `seq` to `key` was acknowledged.
    pub(super) fn written(&mut self, key: u64, seq: u64) {
        let at = self.slot(key);
        self.settled[at] = Some(seq);
        if !self.pending.is_empty() {
            self.pending.retain(|&(k, _)| k != key);
        }
        self.remember(seq);
    }

    /// A write of `seq` to `key` may or may not have happened.
    pub(super) fn maybe_written(&mut self, key: u64, seq: u64) {
        self.slot(key);
        self.pending.push((key, seq));
        self.remember(seq);
    }

    /// Judges a read of `key` that returned `got`, a value that names `key`
    /// (or no value). A fresh answer settles the key's value. Values are
    /// numbered in increasing order: one the lane has issued is an old one.
    pub(super) fn read(&mut self, key: u64, got: Option<u64>) -> ReadCheck {
        let at = self.slot(key);
        if got == self.settled[at] {
            return ReadCheck::Fresh;
        }
        let landed =
            got.and_then(|seq| self.pending.iter().position(|&(k, s)| k == key && s == seq));
        if let Some(pos) = landed {
            self.settled[at] = got;
            // Writes after `got` whose outcome is unknown may still land; the
            // ones before it are now history.
            let mut at = 0;
            self.pending.retain(|&(k, _)| {
                at += 1;
                k != key || at > pos + 1
            });
            ReadCheck::Fresh
        } else if got.is_none_or(|seq| self.issued.is_some_and(|issued| seq <= issued)) {
            // A key began with no value, so `None` is always an old value.
            ReadCheck::Stale
        } else {
            ReadCheck::Wrong
        }
    }
}

/// The bytes of value `seq` that `client` writes to its key number `key`:
/// `{client}:{seq}:{key}:` padded with `x` to `size` (longer if the tag is).
/// The format spelled plainly: the bench renders values with the faster
/// [`super::wire::write_value`], which the tests hold to this.
#[cfg(test)]
pub(super) fn make_value(client: u32, key: u64, seq: u64, size: usize) -> bytes::Bytes {
    let mut v = format!("{client}:{seq}:{key}:").into_bytes();
    v.resize(size.max(v.len()), b'x');
    bytes::Bytes::from(v)
}

/// Judges a read of a lane's key `i` (the client's key number `key`) that
/// returned `got`, as [`parse_value`] read it (`None`: no value): a value of
/// another client or another key is wrong whatever the model says.
pub(super) fn judge(
    model: &mut LaneModel,
    i: u64,
    key: u64,
    got: Option<Option<(u64, u64)>>,
) -> ReadCheck {
    match got {
        None => model.read(i, None),
        Some(Some((seq, named))) if named == key => model.read(i, Some(seq)),
        Some(_) => ReadCheck::Wrong,
    }
}

/// The value number and key number in a value written by `client`, if it
/// is one.
pub(super) fn parse_value(client: u32, value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value.get(..value.len().min(32))?).ok()?;
    // Byte searches, not a `splitn` iterator: this runs for every get, and
    // the iterator was a few percent of the bench's CPU. `:` is ASCII, so
    // every position found is a character boundary.
    let colon = |from: usize| {
        text.as_bytes()
            .get(from..)?
            .iter()
            .position(|&b| b == b':')
            .map(|at| from + at)
    };
    let first = colon(0)?;
    let second = colon(first + 1)?;
    let third = colon(second + 1)?;
    let owner: u32 = text.get(..first)?.parse().ok()?;
    let seq: u64 = text.get(first + 1..second)?.parse().ok()?;
    let key: u64 = text.get(second + 1..third)?.parse().ok()?;
    (owner == client).then_some((seq, key))
}

/// Whether a failed write may still have been applied.
pub(super) fn outcome_unknown(error: &ClientError) -> bool {
    match error {
        ClientError::ConnectionLost { .. } | ClientError::Timeout { .. } => true,
        ClientError::Server(e) => matches!(
            e,
            ErrorReply::NotEnoughReplicas { .. } | ErrorReply::Indeterminate { .. }
        ),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
