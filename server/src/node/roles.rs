//! Epochs and roles: fence, promote and follow, with the one-leader-per-epoch
//! rules (see the module doc of `node`), and the diverged stop.

use super::*;

pub use semikv_protocol::{MAX_TERM, TERM_STEP};

impl Node {
    /// Checks that an admin message at `epoch` may be acted on, without
    /// changing anything (the epoch is persisted between check and apply).
    ///
    /// # Errors
    /// `StaleEpoch` if `epoch` is below the current one; `Invalid` if its
    /// term is above [`MAX_TERM`] and more than [`TERM_STEP`] above the
    /// current one ([`Epoch::acceptable_after`]): no coordinator gets there
    /// by elections, and accepting it would persist an epoch coordinators
    /// might never go above.
    pub fn check_epoch(&self, epoch: Epoch) -> Result<(), ErrorReply> {
        if epoch < self.epoch {
            return Err(ErrorReply::StaleEpoch {
                got: epoch,
                current: self.epoch,
            });
        }
        if !epoch.acceptable_after(self.epoch) {
            return Err(ErrorReply::Invalid {
                reason: format!(
                    "epoch {epoch} is too far above this replica's {}: a \
                     replica takes terms up to {MAX_TERM}, and beyond it at \
                     most {TERM_STEP} above its own; refused",
                    self.epoch
                ),
            });
        }
        Ok(())
    }

    pub(super) fn enter_epoch(&mut self, epoch: Epoch, role: Role, reason: &str) {
        if let Role::Leader(l) = &mut self.role {
            let settled = Ticket {
                role_gen: self.role_gen,
                index: LogIndex(u64::MAX),
            };
            for (_, waiter) in std::mem::take(&mut l.waiters) {
                let reply = Reply::Error(ErrorReply::Indeterminate {
                    reason: format!("leader stepped down: {reason}"),
                });
                answer(&mut self.effects, waiter.completion, reply, settled);
            }
        }
        self.epoch = epoch;
        self.role = role;
        self.role_gen += 1;
        self.promotable = None;
        let target = match &mut self.role {
            Role::Follower(t) => {
                t.role_gen = self.role_gen;
                Some(t.clone())
            }
            _ => None,
        };
        self.effects.target = Some(target);
        self.signal_progress();
    }

    /// Becomes leader at `epoch` (already persisted). Appends a no-op of the
    /// new epoch so the inherited tail can commit. Promoted again at the
    /// epoch it leads, it only takes the new settings (a coordinator that
    /// lost the first answer).
    ///
    /// # Errors
    /// `StaleEpoch` for an older epoch; `EpochConflict` at its own epoch
    /// when it follows someone at it, or when no fence moved it there in
    /// this process's life (it restarted in that epoch, or already left a
    /// role at it): it may have led the epoch before and lost unsynced
    /// entries a follower holds. `Diverged` once diverged. `Invalid` for
    /// settings out of range ([`LeaderSettings::check`]).
    pub fn promote(&mut self, epoch: Epoch, settings: LeaderSettings) -> Result<(), ErrorReply> {
        self.check_acting(epoch)?;
        settings.check()?;
        if epoch == self.epoch {
            match &mut self.role {
                Role::Leader(l) => {
                    l.sync_replicas = settings.sync_replicas;
                    l.sync_timeout = settings.sync_timeout;
                    l.async_fallback = settings.async_fallback;
                    return Ok(());
                }
                Role::Follower(t) => {
                    let reason = format!("this replica follows replica {} at this epoch", t.leader);
                    return Err(self.conflict(reason));
                }
                Role::Idle if self.promotable != Some(epoch) => {
                    return Err(self.conflict(
                        "this replica took a role at this epoch before (or restarted in it) and \
                         cannot lead it now; elect at a new epoch"
                            .to_string(),
                    ));
                }
                Role::Idle => {}
            }
        }
        let state = LeaderState {
            sync_replicas: settings.sync_replicas,
            sync_timeout: settings.sync_timeout,
            async_fallback: settings.async_fallback,
            followers: HashMap::new(),
            waiters: BTreeMap::new(),
            deadlines: VecDeque::new(),
            pending: HashMap::new(),
            appended: VecDeque::new(),
        };
        self.enter_epoch(epoch, Role::Leader(state), "promoted again");
        // The inherited tail is this leader's to commit: commands are
        // evaluated after it.
        self.rebuild_pending();
        self.append_local(WriteOp::Noop);
        self.advance_commit();
        Ok(())
    }

    /// Follows `leader` at `epoch` (already persisted). Told again to follow
    /// the same leader at its epoch, it keeps its stream (or reconnects to
    /// the new address given).
    ///
    /// # Errors
    /// `StaleEpoch` for an older epoch; `EpochConflict` at its own epoch when
    /// it leads that epoch or follows another leader at it (an epoch has one
    /// leader, so one of the two coordinators is wrong); `Diverged` once
    /// diverged.
    pub fn follow(
        &mut self,
        epoch: Epoch,
        leader: ReplicaId,
        addr: String,
    ) -> Result<(), ErrorReply> {
        self.check_acting(epoch)?;
        if epoch == self.epoch {
            match &self.role {
                Role::Leader(_) => {
                    return Err(self.conflict("this replica leads this epoch itself".to_string()));
                }
                Role::Follower(t) if t.leader == leader && t.addr == addr => return Ok(()),
                Role::Follower(t) if t.leader != leader => {
                    return Err(self.conflict(format!(
                        "this replica follows replica {} at this epoch, not replica {leader}",
                        t.leader
                    )));
                }
                Role::Follower(_) | Role::Idle => {}
            }
        }
        let target = FollowTarget {
            epoch,
            leader,
            addr,
            role_gen: 0,
        };
        self.enter_epoch(epoch, Role::Follower(target), "told to follow");
        Ok(())
    }

    /// Moves to `epoch` (already persisted) and stops leading or following.
    /// A fence at the current epoch changes nothing.
    ///
    /// # Errors
    /// `StaleEpoch` for an older epoch; `Diverged` once diverged.
    pub fn fence(&mut self, epoch: Epoch) -> Result<(), ErrorReply> {
        self.check_acting(epoch)?;
        if epoch > self.epoch {
            self.enter_epoch(epoch, Role::Idle, "fenced");
            self.promotable = Some(epoch);
        }
        Ok(())
    }

    /// Checks that an admin message at `epoch` may be acted on, without
    /// changing anything (the epoch is persisted between check and apply).
    ///
    /// # Errors
    /// `Diverged` once diverged; `StaleEpoch` below the current epoch.
    pub fn check_admin(&self, epoch: Epoch) -> Result<(), ErrorReply> {
        self.check_serving()?;
        self.check_epoch(epoch)
    }

    /// The epoch an admin message at `epoch` needs on disk before the node
    /// may act on it: `Some(epoch)` when it is above the highest epoch
    /// persisted, `None` when nothing needs writing. The caller persists it
    /// and reports it with [`Node::epoch_persisted`]; until then `promote`,
    /// `follow` and `fence` at it are refused. A replica that acted on an
    /// epoch it had not persisted could, after a crash, come back below it
    /// and accept the deposed leader's stream again.
    ///
    /// # Errors
    /// As [`Node::check_admin`]: the message is refused and nothing is
    /// written.
    pub fn epoch_to_persist(&self, epoch: Epoch) -> Result<Option<Epoch>, ErrorReply> {
        self.check_admin(epoch)?;
        Ok((epoch > self.persisted).then_some(epoch))
    }

    /// Records that `epoch` is on disk (fsynced): roles may be taken at it.
    pub fn epoch_persisted(&mut self, epoch: Epoch) {
        self.persisted = self.persisted.max(epoch);
    }

    /// [`Node::check_admin`], and the epoch is on disk.
    fn check_acting(&self, epoch: Epoch) -> Result<(), ErrorReply> {
        self.check_admin(epoch)?;
        if epoch > self.persisted {
            return Err(ErrorReply::Storage {
                reason: format!(
                    "epoch {epoch} is not on disk yet (persisted: {}); refusing to act on it",
                    self.persisted
                ),
            });
        }
        Ok(())
    }

    pub(super) fn conflict(&self, reason: String) -> ErrorReply {
        ErrorReply::EpochConflict {
            epoch: self.epoch,
            reason,
        }
    }

    /// Whether this node may serve anything.
    ///
    /// # Errors
    /// `Diverged` once its log was found inconsistent with a leader's.
    pub fn check_serving(&self) -> Result<(), ErrorReply> {
        match &self.diverged {
            Some(reason) => Err(ErrorReply::Diverged {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Why this node stopped serving, if its log diverged from a leader's.
    pub fn diverged(&self) -> Option<&str> {
        self.diverged.as_deref()
    }

    /// Stops for good (until restarted): stops following, refuses every
    /// request from now on, and returns the error that says why.
    pub(super) fn diverge(&mut self, reason: String) -> StreamError {
        self.enter_epoch(self.epoch, Role::Idle, "diverged");
        self.diverged = Some(reason.clone());
        StreamError::Diverged(reason)
    }
}

/// The admin path as tests take it: the epoch persisted (as `admin` does
/// before acting), then the role change.
#[cfg(test)]
impl Node {
    pub(crate) fn persist_and_promote(
        &mut self,
        epoch: Epoch,
        settings: LeaderSettings,
    ) -> Result<(), ErrorReply> {
        if let Ok(Some(epoch)) = self.epoch_to_persist(epoch) {
            self.epoch_persisted(epoch);
        }
        self.promote(epoch, settings)
    }

    pub(crate) fn persist_and_follow(
        &mut self,
        epoch: Epoch,
        leader: ReplicaId,
        addr: String,
    ) -> Result<(), ErrorReply> {
        if let Ok(Some(epoch)) = self.epoch_to_persist(epoch) {
            self.epoch_persisted(epoch);
        }
        self.follow(epoch, leader, addr)
    }

    pub(crate) fn persist_and_fence(&mut self, epoch: Epoch) -> Result<(), ErrorReply> {
        if let Ok(Some(epoch)) = self.epoch_to_persist(epoch) {
            self.epoch_persisted(epoch);
        }
        self.fence(epoch)
    }
}
