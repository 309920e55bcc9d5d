//! Reads at a consistency level: the position every answer reflects (the
//! applied index), and a leader's read index, confirmed by rounds of
//! `LeadCheck` that its followers answer while they still follow its epoch.
//!
//! # Why a confirmed read index is linearizable
//!
//! A linearizable read that reaches the leader at time `T` takes the commit
//! index then as its read index, and a new round `r` of confirmation. It is
//! answered once `sync_replicas` followers confirmed a round at least `r`
//! at this leader's epoch and the leader has applied the read index.
//!
//! - Every write acknowledged before `T` by this leader is committed, so at
//!   or below the read index. Every write acknowledged by an earlier leader
//!   is in this leader's log, below the entry of its own epoch it must
//!   commit before it answers any read ([`Node::read`]).
//! - No later leader acknowledged anything before `T`. A follower confirms
//!   round `r` only after it received the check, which the leader sent
//!   after `T`, and only while it still follows this epoch; a fence moves
//!   it to a newer epoch for good (persisted before the fence is answered).
//!   An election promotes only after `replicas - sync_replicas` replicas
//!   answered its fence. Those and the leader with its `sync_replicas`
//!   confirmers are more than all the replicas, so they share one. If it is
//!   a confirmer, it was fenced after it confirmed, so after `T`; if it is
//!   the leader itself, the leader learns it was deposed and refuses
//!   (checked when the read is confirmed). Either way the newer leader was
//!   promoted after `T`, and acknowledged nothing before it.
//!
//! So the answer reflects every write acknowledged before the read began.
//! With `sync_replicas` 0 no follower needs to confirm: the election must
//! then fence every replica, this leader included.

use super::*;

/// A linearizable read's place in its leader's confirmation rounds: what
/// [`Node::begin_read_index`] hands out and [`Node::read_index_ready`]
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadIndex {
    /// The leadership it was taken in.
    role_gen: u64,
    /// The round that confirms it (or any later one).
    round: u64,
    /// The commit index when the read arrived: what it must reflect.
    pub index: LogIndex,
}

impl Node {
    /// The highest index applied to the map: the position any answer this
    /// replica gives now reflects.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// Whether this replica leads now: it has applied every position it
    /// acknowledged, so a read of a session's position waits for it (its
    /// first commit after a promotion) rather than sending the read
    /// elsewhere.
    pub fn leads(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// Starts a linearizable read on the leader: takes the commit index as
    /// the read index and asks the follower streams for a new round of
    /// confirmation. `Ok(None)` while a new leader has not yet committed an
    /// entry of its own epoch (wait for progress and ask again).
    ///
    /// # Errors
    /// `NotLeader` when this replica does not lead; whatever
    /// [`Node::check_serving`] refuses with.
    pub fn begin_read_index(&mut self) -> Result<Option<ReadIndex>, ErrorReply> {
        self.check_serving()?;
        if !matches!(self.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        if !self.reads_ready() {
            return Ok(None);
        }
        self.lead_rounds += 1;
        self.effects.lead_check = Some(self.lead_rounds);
        Ok(Some(ReadIndex {
            role_gen: self.role_gen,
            round: self.lead_rounds,
            index: self.commit,
        }))
    }

    /// Whether the read `at` may be answered now: this replica still leads
    /// the leadership it was taken in, `sync_replicas` followers of its
    /// epoch confirmed its round (or a later one), and its read index is
    /// applied.
    ///
    /// # Errors
    /// `NotLeader` once this replica no longer leads that leadership: the
    /// read must not be answered here.
    pub fn read_index_ready(&self, at: &ReadIndex) -> Result<bool, ErrorReply> {
        self.check_serving()?;
        let Role::Leader(l) = &self.role else {
            return Err(self.not_leader());
        };
        if self.role_gen != at.role_gen {
            return Err(self.not_leader());
        }
        let confirmed = l
            .followers
            .values()
            .filter(|p| p.confirmed >= at.round)
            .count();
        Ok(confirmed >= l.sync_replicas as usize && self.applied >= at.index)
    }

    /// A follower confirmed `round` at `epoch`: it still followed this
    /// leader's epoch when it read the check. Rounds this leader never asked
    /// for count as the last one it did.
    pub fn on_lead_confirm(&mut self, follower: ReplicaId, epoch: Epoch, round: u64) {
        if epoch != self.epoch {
            return;
        }
        let asked = self.lead_rounds;
        if let Role::Leader(l) = &mut self.role {
            let p = l.followers.entry(follower).or_default();
            let round = round.min(asked);
            if round > p.confirmed {
                p.confirmed = round;
                self.effects.confirmed = true;
            }
        }
    }

    /// Whether a follower may confirm its leader's check at `epoch`: it
    /// still follows that epoch in the role generation `role_gen`.
    ///
    /// # Errors
    /// `Superseded` once the role or epoch moved on (a fence, a new leader).
    pub fn confirmable(&self, role_gen: u64, epoch: Epoch) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)
    }
}
