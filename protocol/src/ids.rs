//! Newtypes for the numbers that must never be mixed up: epochs (and the
//! coordinators that mint them), log indexes, replica ids, request ids and
//! expiry times.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// Position of an entry in the replicated log. The first entry has index 1;
    /// index 0 means "before the first entry" (an empty log).
    LogIndex(u64)
);
id_newtype!(
    /// An absolute wall-clock time, in milliseconds since the Unix epoch:
    /// what a key's expiry is stored and replicated as, so that every
    /// replica hides it at the same moment (as far as their clocks agree).
    UnixMillis(u64)
);
id_newtype!(
    /// A replica's number, as given on `semikv-server ID`.
    ReplicaId(u32)
);
id_newtype!(
    /// Chosen by the sender of a request and echoed in its response, so that a
    /// connection can carry many requests at once.
    RequestId(u64)
);

/// A leadership ballot: a `term` and the `coordinator` that minted it,
/// compared lexicographically (term first).
///
/// On the wire and on disk it is one `u128`, `term << 64 | coordinator`
/// ([`Epoch::raw`]): comparing two epochs is comparing two numbers, and the
/// postcard encoding of an epoch minted before coordinators were named (a
/// plain `u64`, now read as term 0) is unchanged, so old WAL records and
/// epoch files read back as they were.
///
/// Why the coordinator is part of it: a replica takes at most one role per
/// epoch (see the server's `node` module), and a coordinator promotes at
/// most one replica per epoch it mints. Two coordinators (two balancers, or
/// one restarted: each process draws a fresh random id) can reach the same
/// term, but never the same epoch, so two replicas can never lead the same
/// epoch, and two log entries with the same index and epoch are the same
/// entry. [`Epoch::ZERO`] means "no leader was ever promoted".
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch {
    // Field order is the comparison order.
    term: u64,
    coordinator: CoordinatorId,
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u128(self.raw())
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Epoch, D::Error> {
        u128::deserialize(deserializer).map(Epoch::from_raw)
    }
}

impl Epoch {
    /// Before any leader.
    pub const ZERO: Epoch = Epoch::new(0, CoordinatorId(0));

    /// The epoch of `term` minted by `coordinator`.
    pub const fn new(term: u64, coordinator: CoordinatorId) -> Epoch {
        Epoch { term, coordinator }
    }

    /// The epoch whose wire form is `raw` (`term << 64 | coordinator`).
    pub const fn from_raw(raw: u128) -> Epoch {
        // Truncating casts split the u128 into its two halves exactly.
        Epoch::new((raw >> 64) as u64, CoordinatorId(raw as u64))
    }

    /// Its wire form: `term << 64 | coordinator`.
    pub const fn raw(self) -> u128 {
        (self.term as u128) << 64 | self.coordinator.0 as u128
    }

    /// Its term: the count of elections it comes after.
    pub const fn term(self) -> u64 {
        self.term
    }

    /// The coordinator that minted it (0 for epochs minted before
    /// coordinators were named).
    pub const fn coordinator(self) -> CoordinatorId {
        self.coordinator
    }

    /// The epoch `coordinator` mints for its next election: the next term,
    /// so it is above `self` whoever minted `self`. `None` once the terms
    /// are exhausted (only a peer that sent an absurd epoch gets there).
    pub fn successor(self, coordinator: CoordinatorId) -> Option<Epoch> {
        Some(Epoch::new(self.term.checked_add(1)?, coordinator))
    }

    /// Whether a replica at `current` may move to `self` (replicas and
    /// balancers share this rule, so a balancer never mints an epoch the
    /// replicas it counts on would refuse): `self` is not below `current`,
    /// and its term is at most [`MAX_TERM`] or at most [`TERM_STEP`] above
    /// `current`'s.
    pub fn acceptable_after(self, current: Epoch) -> bool {
        self >= current
            && (self.term <= MAX_TERM || self.term <= current.term.saturating_add(TERM_STEP))
    }
}

/// The highest term a replica moves to in one step from any lower one: no
/// cluster holds 2^62 elections (a billion a second for 146 years). Beyond
/// it a replica only moves [`TERM_STEP`] at a time, so a peer that pushes
/// replicas to this term leaves coordinators all the epochs they will ever
/// mint above it, while walking to `u64::MAX` would take it 2^30 fenced
/// (fsynced) epochs per replica. An absolute bound below, rather than a
/// bound on every jump: replicas moved by different amounts would then
/// refuse each other's epochs and no election could gather its answers.
pub const MAX_TERM: u64 = 1 << 62;

/// How far above its own term a replica already past [`MAX_TERM`] moves.
pub const TERM_STEP: u64 = 1 << 32;

impl fmt::Display for Epoch {
    /// `term.coordinator`, the coordinator in hex: `12.8f3a9c21d4e0b7f6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.term, self.coordinator.0)
    }
}

/// A coordinator (balancer process) as named in the epochs it mints: drawn
/// at random when the process starts, never 0. Shown in hex, as in epochs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct CoordinatorId(pub u64);

impl fmt::Display for CoordinatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_order_by_term_then_coordinator() {
        let a = CoordinatorId(0xffff_ffff_ffff_fff0);
        let b = CoordinatorId(1);
        assert!(
            Epoch::new(1, a) < Epoch::new(2, b),
            "the term decides first"
        );
        assert!(Epoch::new(2, b) < Epoch::new(2, a), "then the coordinator");
        assert_ne!(
            Epoch::new(2, a),
            Epoch::new(2, b),
            "two coordinators never mint one epoch"
        );
        assert!(
            Epoch::from_raw(u128::from(u64::MAX)) < Epoch::new(1, b),
            "pre-ballot epochs are term 0"
        );
    }

    #[test]
    fn successor_is_above_whoever_minted_the_current_one() {
        let mine = CoordinatorId(1);
        let theirs = CoordinatorId(u64::MAX);
        let current = Epoch::new(7, theirs);
        let next = current.successor(mine).unwrap();
        assert!(next > current);
        assert_eq!((next.term(), next.coordinator()), (8, mine));
        assert_eq!(Epoch::new(u64::MAX, theirs).successor(mine), None);
    }

    #[test]
    fn past_the_last_term_a_replica_moves_one_step_at_a_time() {
        let (a, b) = (CoordinatorId(1), CoordinatorId(2));
        let low = Epoch::new(7, a);
        assert!(Epoch::new(MAX_TERM, b).acceptable_after(low));
        assert!(!Epoch::new(MAX_TERM + 1, b).acceptable_after(low));
        assert!(!Epoch::new(6, b).acceptable_after(low), "never down");
        let last = Epoch::new(MAX_TERM, a);
        assert!(Epoch::new(MAX_TERM + 1, b).acceptable_after(last));
        assert!(Epoch::new(MAX_TERM + TERM_STEP, b).acceptable_after(last));
        assert!(!Epoch::new(MAX_TERM + TERM_STEP + 1, b).acceptable_after(last));
        let top = Epoch::new(u64::MAX - 1, a);
        assert!(Epoch::new(u64::MAX, b).acceptable_after(top), "no overflow");
    }

    #[test]
    fn display_names_term_and_coordinator() {
        assert_eq!(Epoch::new(12, CoordinatorId(0xbeef)).to_string(), "12.beef");
        assert_eq!(Epoch::ZERO.to_string(), "0.0");
    }

    #[test]
    fn a_pre_ballot_epoch_encodes_as_before() {
        // postcard encodes u64 and u128 alike (LEB128), so old WAL records
        // and epoch files read back unchanged.
        let old = postcard::to_allocvec(&300u64).unwrap();
        assert_eq!(postcard::to_allocvec(&Epoch::from_raw(300)).unwrap(), old);
    }
}
