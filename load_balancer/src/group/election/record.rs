//! Answers into the group's table: health checks, fences and follows, as
//! the election reads them back.

use semikv_protocol::{Epoch, ErrorReply, Follow, ReplicaId, Reply};
use tracing::{debug, error, info, warn};

use std::time::Instant;

use super::{Answer, Command, Engine, Step, Throttle};
use crate::group::failover::StatusSummary;
use crate::group::link::ConnError;

/// The answer with a replica's status as [`Reply::NodeReport`] whichever
/// form it came in, so that one arm handles both.
pub(super) fn reported(answer: Answer) -> Answer {
    answer.map(|reply| match reply {
        Reply::Node(_) => match reply.into_node_report() {
            Ok(report) => Reply::NodeReport(Box::new(report)),
            Err(reply) => reply,
        },
        reply => reply,
    })
}

impl Engine {
    /// Records one health check; a replica that just went silent is
    /// disconnected, so reads already sent to it fail now and are retried
    /// elsewhere instead of sitting out their timeout.
    pub(super) fn record_check(&mut self, slot: usize, answer: Answer) -> Option<Command> {
        let addr = self.addr(slot);
        match reported(answer) {
            Ok(Reply::NodeReport(report)) => {
                let status = &report.status;
                if !self.table.is_healthy(slot) {
                    info!(replica = %status.id, addr = %addr, role = %status.role, epoch = %status.epoch, "replica is up");
                }
                self.table.record_report(slot, *report);
            }
            Err(ConnError::Refused) => {
                if self.table.mark_down(slot) {
                    warn!(addr = %addr, "replica is down (connection refused)");
                }
            }
            Ok(Reply::Error(ErrorReply::Diverged { reason })) => {
                if self.table.mark_down(slot) {
                    error!(addr = %addr, reason = %reason, "replica stopped: its log diverged from its leader's; it gets no reads and no role until an operator acts");
                }
            }
            other => {
                if let Err(e) = &other {
                    debug!(slot, error = %e, "health check failed");
                }
                if self.table.record_miss(slot, self.config.down_after) {
                    warn!(addr = %addr, misses = self.config.down_after, "replica is down (missed health checks)");
                    return Some(Command::Disconnect {
                        slot,
                        awaited: false,
                    });
                }
            }
        }
        None
    }

    /// Records fence answers in the table; returns those that accepted.
    pub(super) fn record_fences(
        &mut self,
        answers: Vec<(usize, Answer)>,
    ) -> Vec<(usize, StatusSummary)> {
        let epoch = match &self.step {
            Step::Fencing { epoch, .. }
            | Step::FencingOthers { epoch, .. }
            | Step::FencingStalled { epoch, .. } => *epoch,
            _ => Epoch::ZERO,
        };
        let mut fenced = Vec::new();
        for (slot, answer) in answers {
            let addr = self.addr(slot);
            match reported(answer) {
                Ok(Reply::NodeReport(report)) => {
                    fenced.push((slot, StatusSummary::from(&report.status)));
                    self.table.record_report(slot, *report);
                }
                Ok(Reply::Error(ErrorReply::StaleEpoch { current, .. })) => {
                    warn!(addr = %addr, epoch = %epoch, current = %current, "fence refused: stale epoch");
                    self.table.raise_epoch(current);
                }
                Ok(Reply::Error(e)) => {
                    warn!(addr = %addr, epoch = %epoch, error = %e, "fence refused");
                }
                Ok(_) => warn!(addr = %addr, "unexpected answer to fence"),
                Err(ConnError::Refused) => {
                    self.table.mark_down(slot);
                }
                Err(e) => debug!(slot, error = %e, "fence failed"),
            }
        }
        fenced
    }

    /// Tells `slots` to follow `leader` at `epoch`; failures are retried by
    /// later rounds. Nothing when there is nobody to tell or the leader's id
    /// is unknown.
    pub(super) fn follow(&self, slots: Vec<usize>, leader: usize, epoch: Epoch) -> Option<Command> {
        if slots.is_empty() {
            return None;
        }
        let leader_id: ReplicaId = self.table.status(leader)?.id;
        Some(Command::Follow {
            slots,
            follow: Follow {
                epoch,
                leader: leader_id,
                leader_addr: self.addr(leader).to_string(),
            },
            timeout: self.config.request_timeout(),
        })
    }

    pub(super) fn record_follow(&mut self, slot: usize, answer: Answer, now: Instant) {
        let addr = self.addr(slot).to_string();
        match reported(answer) {
            Ok(Reply::NodeReport(report)) => {
                info!(replica = %report.status.id, epoch = %report.status.epoch, "replica follows leader");
                self.table.record_report(slot, *report);
                if let Some(throttle) = self.follow_refused.get_mut(slot) {
                    *throttle = Throttle::default();
                }
            }
            Ok(Reply::Error(ErrorReply::StaleEpoch { current, .. })) => {
                // A replica a peer pushed far above the cluster's epoch
                // refuses every round until the others catch up with it.
                if self
                    .follow_refused
                    .get_mut(slot)
                    .is_some_and(|t| t.due_every(now, super::FOLLOW_REFUSED_EVERY))
                {
                    warn!(addr = %addr, current = %current, "follow refused: the replica is at a newer epoch (asked again every round; said again every 30 s while it lasts)");
                }
                self.table.raise_epoch(current);
            }
            Ok(Reply::Error(e)) => {
                if self
                    .follow_refused
                    .get_mut(slot)
                    .is_some_and(|t| t.due_every(now, super::FOLLOW_REFUSED_EVERY))
                {
                    warn!(addr = %addr, error = %e, "follow refused (asked again every round; said again every 30 s while it lasts)");
                } else {
                    debug!(addr = %addr, error = %e, "follow refused again");
                }
            }
            Ok(_) => warn!(addr = %addr, "unexpected answer to follow"),
            Err(e) => debug!(slot, error = %e, "follow failed"),
        }
    }
}
