//! The election proper: fencing, the quorum of answers, the winner or the
//! successor of a stalled leader, the promotion; and when not to elect yet.

use std::time::{Duration, Instant};

use semikv_protocol::{Epoch, ErrorReply, NodeRole, Promote, Reply};
use tracing::{debug, error, info, warn};

use super::{
    healthy, Answer, Command, Engine, Postponed, Step, MIN_CHECK_TIMEOUT, POSTPONED_RETRY_MAX,
};
use crate::group::failover::{self, Observed, StatusSummary};
use crate::group::table::Leader;

impl Engine {
    pub(super) fn fence_wait(&self) -> Duration {
        self.config.election_wait.max(MIN_CHECK_TIMEOUT)
    }

    /// Starts an election at `epoch`: fences everyone. A refused connection
    /// answers at once, so only slow replicas make it wait, and at most
    /// `election_wait`.
    pub(super) fn elect(&mut self, epoch: Epoch, now: Instant) -> Vec<Command> {
        let started = self.lost_at.unwrap_or(now);
        self.config.metrics.election_started();
        self.ballot = Some(epoch);
        self.minted = self.minted.max(epoch);
        self.table.raise_epoch(epoch);
        let wait = self.fence_wait();
        // The leader whose loss started this election, if the health checks
        // marked it down, is fenced too but not waited for: it is the one
        // replica known not to answer (SIGSTOP, a hung host), and waiting for
        // it would only add `election_wait` to every silent failover. If it
        // wakes up it meets the new epoch and steps down. A lost leader that
        // still answers (restarted, or merely deposed) is waited for like
        // everyone else: it may hold the longest log.
        let silent = self
            .lost_leader
            .map(|l| l.slot)
            .filter(|&slot| !self.table.is_healthy(slot));
        let mut commands = Vec::new();
        if let Some(slot) = silent {
            commands.push(Command::Fence {
                slots: vec![slot],
                epoch,
                wait,
                awaited: false,
            });
        }
        let slots: Vec<usize> = (0..self.addrs.len())
            .filter(|&slot| Some(slot) != silent)
            .collect();
        commands.push(Command::Fence {
            slots,
            epoch,
            wait,
            awaited: true,
        });
        self.step = Step::Fencing { epoch, started };
        commands
    }

    /// Moves leadership away from `stalled`, a leader the balancer reaches
    /// but that has too few followers connected to commit anything.
    ///
    /// The other replicas are fenced first. If none answers, the leader is
    /// kept for now, but the damping is armed all the same (no new stall
    /// failover before it ends); a follower that took the fence without
    /// answering shows the new epoch at its next check, and the usual
    /// election follows. Fenced followers refuse its stream, so it can
    /// commit nothing more; writes stop going to it and its links are
    /// dropped (writes in flight on them are Indeterminate), then it is
    /// fenced too (which deposes it, and its answer gives its final commit
    /// index) and the best fit follower is promoted (see
    /// [`failover::choose_successor`] for why no acknowledged write is
    /// lost). Nobody is promoted unless enough replicas answered
    /// ([`failover::election_quorum`]), its answer counting. A follower is
    /// chosen over it only if it holds what the leader committed (its
    /// commit index bounds what it acknowledged itself, but not what a
    /// leader of a newer epoch, another balancer's, may have: the quorum
    /// covers that) and what an earlier leader may have committed with the
    /// stalled leader's acknowledgement, which its commit index does not
    /// show: everything up to where its log stood when this engine promoted
    /// it; or, when another balancer promoted it, if the followers' answers
    /// make the quorum alone (then they include a holder of every
    /// acknowledged write). Should no follower be fit, the election goes on
    /// among every fenced replica, which re-promotes the old leader at the
    /// new epoch.
    pub(super) fn elect_away_from(&mut self, stalled: usize, now: Instant) -> Vec<Command> {
        self.stall.failed_over(now);
        let current = self.current();
        let max = failover::max_epoch(&self.table.observed(), current);
        let Some(epoch) = failover::election_epoch(max, current) else {
            error!(max_epoch = %max, "no epoch above the highest one seen can be minted; keeping the stalled leader");
            return Vec::new();
        };
        self.ballot = Some(epoch);
        self.minted = self.minted.max(epoch);
        let others: Vec<usize> = (0..self.addrs.len())
            .filter(|&slot| slot != stalled)
            .collect();
        let leader = self.table.leader();
        let base = self
            .promoted
            .filter(|(promoted, _)| promoted.slot == stalled && Some(*promoted) == leader)
            .map(|(_, base)| base);
        self.step = Step::FencingOthers {
            epoch,
            started: now,
            stalled,
            base,
        };
        vec![Command::Fence {
            slots: others,
            epoch,
            wait: self.fence_wait(),
            awaited: true,
        }]
    }

    /// Goes on with the election the fence answers `fenced` belong to.
    pub(super) fn fenced(
        &mut self,
        mut fenced: Vec<(usize, StatusSummary)>,
        now: Instant,
    ) -> Vec<Command> {
        match std::mem::replace(&mut self.step, Step::Idle) {
            Step::Fencing { epoch, started } => {
                if !self.enough_answers(&fenced, epoch, now) {
                    return Vec::new();
                }
                match failover::choose_leader(&fenced) {
                    Some(winner) => self.promote(winner, &fenced, epoch, started),
                    None => Vec::new(),
                }
            }
            Step::FencingOthers {
                epoch,
                started,
                stalled,
                base,
            } => {
                if fenced.is_empty() {
                    warn!(leader = %self.addr(stalled), epoch = %epoch, "no other replica answered the fence; keeping the stalled leader");
                    return Vec::new();
                }
                self.table.raise_epoch(epoch);
                // Writes wait for the successor from now on, rather than go
                // to a leader about to be fenced. Its links are dropped
                // before the fence, not in the background, so the fence goes
                // out on a fresh connection instead of racing the disconnect.
                self.lost_at = Some(started);
                let mut commands = Vec::new();
                if let Some(slot) = self.depose(now) {
                    commands.push(Command::Disconnect {
                        slot,
                        awaited: true,
                    });
                }
                commands.push(Command::Fence {
                    slots: vec![stalled],
                    epoch,
                    wait: self.fence_wait(),
                    awaited: true,
                });
                self.step = Step::FencingStalled {
                    epoch,
                    started,
                    stalled,
                    base,
                    fenced,
                };
                commands
            }
            Step::FencingStalled {
                epoch,
                started,
                stalled,
                base,
                fenced: others,
            } => {
                // The answers together must make a quorum: the best log
                // among them holds every acknowledged write, so electing
                // among all is always safe. A follower may be chosen over
                // the stalled leader only if it holds what the leader
                // committed (its commit index, in its answer) and what it
                // may have acknowledged to an earlier leader, which its
                // commit index does not show: everything up to `base`, when
                // this engine promoted it; otherwise the followers' answers
                // must make the quorum alone, and then include a holder of
                // every acknowledged write.
                let others_enough = others.len() >= self.quorum();
                fenced.extend(others);
                if !self.enough_answers(&fenced, epoch, now) {
                    return Vec::new();
                }
                let successor = if base.is_some() || others_enough {
                    failover::choose_successor(&fenced, stalled, base)
                } else {
                    None
                };
                let winner = match successor {
                    Some(winner) => Some(winner),
                    None => {
                        warn!(leader = %self.addr(stalled), epoch = %epoch, "no follower is known to hold everything the stalled leader may have acknowledged; electing among all");
                        failover::choose_leader(&fenced)
                    }
                };
                match winner {
                    Some(winner) => self.promote(winner, &fenced, epoch, started),
                    None => Vec::new(),
                }
            }
            other => {
                debug!(step = ?other, "fence answers with no election waiting for them");
                Vec::new()
            }
        }
    }

    /// Whether `fenced` holds enough answers to see every acknowledged write
    /// (see [`failover::election_quorum`]); warns (at most once a second)
    /// when not, and the next round tries again, after a back-off unless a
    /// replica's health changes.
    pub(super) fn enough_answers(
        &mut self,
        fenced: &[(usize, StatusSummary)],
        epoch: Epoch,
        now: Instant,
    ) -> bool {
        let needed = self.quorum();
        if fenced.len() >= needed {
            self.postponed = None;
            return true;
        }
        let backoff = match &self.postponed {
            Some(p) if p.epoch == epoch => p.backoff.saturating_mul(2).min(POSTPONED_RETRY_MAX),
            _ => self.config.heartbeat.saturating_mul(2),
        };
        self.postponed = Some(Postponed {
            epoch,
            healthy: healthy(&self.table.observed()),
            retry_at: now + backoff,
            backoff,
        });
        if self.quorum_warned.due(now) {
            warn!(epoch = %epoch, answered = fenced.len(), needed, "election postponed: too few replicas answered to be sure the winner holds every acknowledged write");
        }
        false
    }

    /// Whether `max`, the highest epoch seen, was minted by another
    /// coordinator less than an election's wait ago, a replica sits fenced
    /// (idle) at it, and no leader at it was seen yet: that election is
    /// likely still fencing or promoting, and fencing over it would only
    /// undo it (two balancers electing in turn forever). Once its leader
    /// shows up it is adopted; if none does in time, this engine elects.
    /// An epoch whose leader was seen (and then lost), or whose replicas
    /// already follow someone, never delays a failover.
    pub(super) fn election_under_way_elsewhere(
        &self,
        max: Epoch,
        observed: &[Observed],
        now: Instant,
    ) -> bool {
        let fenced_idle = observed.iter().any(|o| {
            o.seen
                .is_some_and(|s| s.role == NodeRole::Idle && s.epoch == max)
        });
        max.coordinator() != self.coordinator
            && max != Epoch::ZERO
            && fenced_idle
            && self.led != Some(max)
            && self.max_seen.is_some_and(|(epoch, since)| {
                epoch == max && now.saturating_duration_since(since) < self.fence_wait()
            })
    }

    /// Whether the election at `epoch` was postponed and should not be tried
    /// again yet: no replica's health changed since, and its back-off is not
    /// over. Retrying changes no epoch (it fences again at the same one),
    /// but every attempt costs each replica a request and the log a line.
    pub(super) fn holding_off(
        &mut self,
        epoch: Epoch,
        observed: &[Observed],
        now: Instant,
    ) -> bool {
        let Some(p) = &self.postponed else {
            return false;
        };
        if p.epoch != epoch {
            self.postponed = None;
            return false;
        }
        p.healthy == healthy(observed) && now < p.retry_at
    }

    /// Promotes `winner` at `epoch`; the other fenced replicas follow it
    /// once it accepts. From here on the epoch may have a leader, whatever
    /// the answer: the next election mints a new one.
    pub(super) fn promote(
        &mut self,
        winner: usize,
        fenced: &[(usize, StatusSummary)],
        epoch: Epoch,
        started: Instant,
    ) -> Vec<Command> {
        let sync = failover::sync_replicas(self.config.sync_replicas, self.addrs.len());
        let promote = Promote {
            epoch,
            sync_replicas: sync,
            sync_timeout_ms: u64::try_from(self.config.sync_timeout.as_millis())
                .unwrap_or(u64::MAX),
            async_fallback: false,
        };
        self.ballot = None;
        self.postponed = None;
        let base = fenced
            .iter()
            .find(|&&(slot, _)| slot == winner)
            .map(|(_, s)| (s.last_epoch, s.last_index));
        self.step = Step::Promoting {
            epoch,
            started,
            winner,
            base,
            fenced: fenced.iter().map(|&(slot, _)| slot).collect(),
            sync,
        };
        vec![Command::Promote {
            slot: winner,
            promote,
            timeout: self.config.request_timeout(),
        }]
    }

    /// Goes on after the promote's answer: on success, writes go to the
    /// winner and the other fenced replicas are told to follow it; a
    /// failure is left to later rounds.
    pub(super) fn promoted(&mut self, answer: Answer, now: Instant) -> Vec<Command> {
        let Step::Promoting {
            epoch,
            started,
            winner,
            base,
            fenced,
            sync,
        } = std::mem::replace(&mut self.step, Step::Idle)
        else {
            debug!("promote answer with no promotion waiting for it");
            return Vec::new();
        };
        let addr = self.addr(winner).to_string();
        match super::record::reported(answer) {
            Ok(Reply::NodeReport(report)) => {
                self.table.record_report(winner, *report);
                let leader = Leader {
                    slot: winner,
                    epoch,
                };
                self.table.set_leader(Some(leader));
                self.promoted = base.map(|base| (leader, base));
                let elapsed_ms = u64::try_from(now.saturating_duration_since(started).as_millis())
                    .unwrap_or(u64::MAX);
                let old = self.lost_leader.take();
                self.config
                    .metrics
                    .promoted(now.saturating_duration_since(started), old.is_some());
                info!(
                    leader = %addr,
                    old_leader = %old.map_or("none", |l| self.addr(l.slot)),
                    epoch = %epoch,
                    sync_replicas = sync,
                    elapsed_ms,
                    "promoted new leader"
                );
                self.lost_at = None;
                let others: Vec<usize> = fenced.into_iter().filter(|&s| s != winner).collect();
                self.follow(others, winner, epoch).into_iter().collect()
            }
            Ok(Reply::Error(ErrorReply::StaleEpoch { current, .. })) => {
                warn!(addr = %addr, epoch = %epoch, current = %current, "promote refused: stale epoch");
                self.table.raise_epoch(current);
                Vec::new()
            }
            Ok(Reply::Error(e)) => {
                warn!(addr = %addr, epoch = %epoch, error = %e, "promote refused");
                Vec::new()
            }
            Ok(_) => {
                warn!(addr = %addr, "unexpected answer to promote");
                Vec::new()
            }
            Err(e) => {
                warn!(addr = %addr, error = %e, "promote failed");
                Vec::new()
            }
        }
    }
}
