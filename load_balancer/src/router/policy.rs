//! How a read picks its replica among a group's healthy ones.

use crate::group::ReplicaGroup;
use crate::request::Target;

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

    /// The replica for the next read that `target` allows, other than
    /// `exclude`: the rotation's next, the leader, or the next replica known
    /// to be fresh enough (the leader when none is).
    pub fn pick_for(
        self,
        target: Target,
        group: &ReplicaGroup,
        exclude: Option<usize>,
    ) -> Option<usize> {
        match target {
            Target::Rotation => self.pick(group, exclude),
            Target::Leader => group.table().leader_reader(exclude),
            Target::Fresh(bound) => {
                let now = tokio::time::Instant::now().into_std();
                let table = group.table();
                table
                    .next_fresh_reader(bound, now, exclude)
                    .or_else(|| table.leader_reader(exclude))
            }
        }
    }
}
