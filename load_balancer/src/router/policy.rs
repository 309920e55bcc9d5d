//! How a read picks its replica among a group's healthy ones.

use crate::group::ReplicaGroup;

/// The rule that picks the replica a read goes to. Whatever it picks, a read
/// never returns a value that was not committed (replicas serve only their
/// committed state); the policy decides how fresh and how spread out reads
/// are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Every healthy replica that keeps up with the leader in turn, the
    /// leader included (see `group::table::CATCH_UP_ROUNDS`): spreads the
    /// load; a follower may lag the leader by what it has not yet applied.
    #[default]
    RoundRobin,
}

impl ReadPolicy {
    /// The replica (slot in `group`) for the next read, other than
    /// `exclude`; `None` when no (other) replica qualifies.
    pub fn pick(self, group: &ReplicaGroup, exclude: Option<usize>) -> Option<usize> {
        match self {
            ReadPolicy::RoundRobin => group.table().next_reader(exclude),
        }
    }
}
