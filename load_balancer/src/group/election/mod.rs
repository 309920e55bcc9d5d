//! The election as a state machine: events in (health-check, fence, promote
//! and follow answers, ticks, broken links), commands out (check, fence,
//! disconnect, promote, follow), time passed in with every event. No I/O,
//! no clock, no randomness: [`super::health`] carries the commands out and
//! feeds their answers back, and unit tests drive it over an in-memory
//! network instead (`tests.rs`).
//!
//! Every rule of an election lives here, between the decisions of
//! [`failover`] (pure functions of one round's view): which silent leader is
//! not waited for, when a stalled leader is kept, deposing before fencing,
//! the quorum of fence answers, the successor of a stalled leader, the
//! back-off of a postponed election, and holding back for another
//! coordinator's election or for a leader that commits without us.
//!
//! It sends `Promote` at most once per epoch it mints (see
//! [`failover::election_epoch`]), whatever the answer: a promote whose
//! answer was lost may still have made a leader.

mod ballot;
mod record;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use semikv_protocol::{CoordinatorId, Epoch, Follow, LogIndex, Promote, Reply};
use tracing::{debug, error, info, warn};

use super::failover::{self, Observed, Plan, StallRule, StallVerdict, StallWatch, StatusSummary};
use super::link::ConnError;
use super::table::{Leader, Table};
use crate::config::Config;

/// Shortest timeout of one health check or fence, so a very short heartbeat
/// does not declare a busy replica dead.
pub const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(50);

/// Least time between two repeats of a warning the engine may give every
/// round (an election postponed, no epoch left, held back).
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Least time between two warnings about one replica refusing to follow: a
/// full disk can last hours, and it is asked again every round.
const FOLLOW_REFUSED_EVERY: Duration = Duration::from_secs(30);

/// Longest pause between two attempts of a postponed election while no
/// replica's health changes.
const POSTPONED_RETRY_MAX: Duration = Duration::from_secs(5);

/// A replica's answer to one request (or why there was none).
pub type Answer = Result<Reply, ConnError>;

/// What happened, for [`Engine::handle`].
#[derive(Debug)]
pub enum Event {
    /// Time to check every replica (a heartbeat, or a kick).
    Tick,
    /// The connections to these replicas broke: check just them.
    Broken(Vec<usize>),
    /// The answers to a [`Command::Check`].
    Checked {
        /// Each checked slot's answer to `Status`.
        answers: Vec<(usize, Answer)>,
        /// Whether every replica was checked.
        full: bool,
    },
    /// The answers to an awaited [`Command::Fence`].
    Fenced {
        /// Each fenced slot's answer.
        answers: Vec<(usize, Answer)>,
    },
    /// The answer to a [`Command::Promote`].
    Promoted {
        /// The promoted slot's answer.
        answer: Answer,
    },
    /// The answers to a [`Command::Follow`].
    Followed {
        /// Each slot's answer.
        answers: Vec<(usize, Answer)>,
    },
}

/// What to do, in order: each command is carried out (and its answer, if
/// it has one, handed back) before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Ask these replicas for their status, in parallel, each within
    /// `timeout`; answer [`Event::Checked`] with `full`.
    Check {
        /// The slots to check.
        slots: Vec<usize>,
        /// Passed back in the event.
        full: bool,
        /// Bound on each check, connecting included.
        timeout: Duration,
    },
    /// Fence these replicas at `epoch`, in parallel, each within `wait`;
    /// if `awaited`, answer [`Event::Fenced`], otherwise go on at once (the
    /// fence still goes out).
    Fence {
        /// The slots to fence.
        slots: Vec<usize>,
        /// The epoch.
        epoch: Epoch,
        /// Bound on each answer.
        wait: Duration,
        /// Whether the engine waits for the answers.
        awaited: bool,
    },
    /// Drop the links to a replica, failing what is in flight on them at
    /// once; if `awaited`, before the next command, otherwise in the
    /// background.
    Disconnect {
        /// The replica.
        slot: usize,
        /// Whether the next command waits for it.
        awaited: bool,
    },
    /// Promote a replica; answer [`Event::Promoted`].
    Promote {
        /// The replica.
        slot: usize,
        /// The request.
        promote: Promote,
        /// Bound on the answer.
        timeout: Duration,
    },
    /// Tell these replicas to follow; answer [`Event::Followed`].
    Follow {
        /// The replicas.
        slots: Vec<usize>,
        /// The request (the same for all).
        follow: Follow,
        /// Bound on each answer.
        timeout: Duration,
    },
}

/// A warning that may repeat every round, logged at most once per
/// [`WARN_EVERY`].
#[derive(Debug, Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether to log at `now` (and then not again for a while).
    fn due(&mut self, now: Instant) -> bool {
        self.due_every(now, WARN_EVERY)
    }

    /// Whether to log at `now` (and then not again for `every`).
    fn due_every(&mut self, now: Instant, every: Duration) -> bool {
        let due = self
            .0
            .is_none_or(|at| now.saturating_duration_since(at) >= every);
        if due {
            self.0 = Some(now);
        }
        due
    }
}

/// An election postponed for too few fence answers, and when to try again.
#[derive(Debug, Clone)]
struct Postponed {
    /// The epoch it fenced at (reused by the retry).
    epoch: Epoch,
    /// Which slots were healthy then: a change retries at once.
    healthy: Vec<bool>,
    /// No retry before this while nothing changes.
    retry_at: Instant,
    /// The pause that set `retry_at`; doubles per attempt.
    backoff: Duration,
}

/// Where the engine is in an election: what the answer it waits for means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Nothing awaited beyond checks and follows.
    Idle,
    /// Fencing every replica (but a silent lost leader) at `epoch`.
    Fencing { epoch: Epoch, started: Instant },
    /// Fencing every replica but `stalled`, a leader cut off from its
    /// followers; `base` is where its log stood when this engine promoted
    /// it (see [`Engine::promoted`]), if it did.
    FencingOthers {
        epoch: Epoch,
        started: Instant,
        stalled: usize,
        base: Option<(Epoch, LogIndex)>,
    },
    /// The others answered (`fenced`); now fencing `stalled` itself.
    FencingStalled {
        epoch: Epoch,
        started: Instant,
        stalled: usize,
        base: Option<(Epoch, LogIndex)>,
        fenced: Vec<(usize, StatusSummary)>,
    },
    /// Promoting `winner`, whose log ended at `base` when fenced; the others
    /// in `fenced` follow it next.
    Promoting {
        epoch: Epoch,
        started: Instant,
        winner: usize,
        base: Option<(Epoch, LogIndex)>,
        fenced: Vec<usize>,
        sync: u32,
    },
}

/// Which of `observed` are healthy.
fn healthy(observed: &[Observed]) -> Vec<bool> {
    observed.iter().map(|o| o.healthy).collect()
}

/// One replica group's election; see the module doc.
#[derive(Debug)]
pub struct Engine {
    config: Arc<Config>,
    /// This engine's name in the epochs it mints.
    coordinator: CoordinatorId,
    /// The group's view; the engine is its only writer of leadership.
    table: Arc<Table>,
    /// Replica addresses, by slot (also what followers are told).
    addrs: Vec<String>,
    step: Step,
    /// When the current leader was first found missing.
    lost_at: Option<Instant>,
    /// The leader before it went missing, for the failover log line.
    lost_leader: Option<Leader>,
    /// Until when, at start-up, an election waits for every replica
    /// (`None` once over); set by the first event.
    grace_until: Option<Instant>,
    started: bool,
    /// When the last full round of checks was asked for: the leader's
    /// commit index it reports was reached by then at the latest.
    round_asked: Option<Instant>,
    /// Judges whether the leader is cut off from its followers.
    stall: StallWatch,
    /// An epoch this engine minted and fenced with but promoted no one at.
    ballot: Option<Epoch>,
    /// The highest epoch this engine ever fenced with.
    minted: Epoch,
    /// The last leader this engine promoted, and the `(last_epoch,
    /// last_index)` of its log when fenced, before its own epoch's entries:
    /// entries up to there may have been committed by an earlier leader
    /// with its acknowledgement, which its own commit index does not show
    /// (see [`failover::choose_successor`]).
    promoted: Option<(Leader, (Epoch, LogIndex))>,
    /// The last election that was postponed, while it may go on.
    postponed: Option<Postponed>,
    /// What the table showed at the previous full round.
    previous: Vec<Observed>,
    /// Whether, at the last full round, followers of the highest epoch
    /// committed without this balancer ([`failover::committing_without_us`]).
    committing_elsewhere: bool,
    /// The highest epoch seen, and since when.
    max_seen: Option<(Epoch, Instant)>,
    /// The last epoch at which this engine saw a leader.
    led: Option<Epoch>,
    quorum_warned: Throttle,
    exhausted_warned: Throttle,
    elsewhere_warned: Throttle,
    /// Per slot: a replica that refuses to follow (its disk cannot take
    /// the epoch, say) is asked again every round; it is said now and then.
    follow_refused: Vec<Throttle>,
}

impl Engine {
    /// An engine for the replicas of `config` (a slot is a position in
    /// `config.replicas`), writing its view into `table`, minting epochs as
    /// `coordinator`.
    pub fn new(config: Arc<Config>, table: Arc<Table>, coordinator: CoordinatorId) -> Engine {
        let replicas = config.replicas.len();
        let sync = failover::sync_replicas(config.sync_replicas, replicas);
        let rule = StallRule::new(
            sync,
            config.down_after,
            config.heartbeat,
            config.election_wait,
        )
        .with_quorum(failover::election_quorum(replicas, sync));
        Engine {
            addrs: config.replicas.clone(),
            stall: StallWatch::new(rule),
            coordinator,
            table,
            step: Step::Idle,
            lost_at: None,
            lost_leader: None,
            grace_until: None,
            started: false,
            round_asked: None,
            ballot: None,
            minted: Epoch::ZERO,
            promoted: None,
            postponed: None,
            previous: Vec::new(),
            committing_elsewhere: false,
            max_seen: None,
            led: None,
            quorum_warned: Throttle::default(),
            exhausted_warned: Throttle::default(),
            elsewhere_warned: Throttle::default(),
            follow_refused: (0..replicas).map(|_| Throttle::default()).collect(),
            config,
        }
    }

    /// How many fence answers an election needs
    /// ([`failover::election_quorum`]).
    fn quorum(&self) -> usize {
        let replicas = self.addrs.len();
        let sync = failover::sync_replicas(self.config.sync_replicas, replicas);
        failover::election_quorum(replicas, sync)
    }

    /// The engine's name in the epochs it mints.
    pub fn coordinator(&self) -> CoordinatorId {
        self.coordinator
    }

    /// Takes one event at `now`; returns what to do next, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        if !self.started {
            // The start-up grace runs from the first event.
            self.started = true;
            self.grace_until = Some(now + self.config.election_wait);
        }
        match event {
            Event::Tick => {
                self.round_asked = Some(now);
                vec![self.check((0..self.addrs.len()).collect(), true)]
            }
            Event::Broken(mut slots) => {
                // Fast path: a crashed process closes its sockets at once;
                // one probe tells a crash (refused) from a hiccup.
                if self.table.leader().is_some_and(|l| slots.contains(&l.slot)) {
                    self.lost_at.get_or_insert(now);
                }
                slots.sort_unstable();
                slots.dedup();
                vec![self.check(slots, false)]
            }
            Event::Checked { answers, full } => {
                // Whether the leader's status is from this round: only then
                // was its commit index reached by the round's ask.
                let leader_answered = self.table.leader().is_some_and(|l| {
                    answers.iter().any(|(slot, answer)| {
                        *slot == l.slot
                            && matches!(answer, Ok(Reply::Node(_) | Reply::NodeReport(_)))
                    })
                });
                let mut commands: Vec<Command> = answers
                    .into_iter()
                    .filter_map(|(slot, answer)| self.record_check(slot, answer))
                    .collect();
                if full && leader_answered {
                    // Who keeps up with the leader, for the read rotation,
                    // and how far behind in time.
                    self.table.note_round(self.round_asked.unwrap_or(now));
                }
                commands.extend(self.act(full, now));
                commands
            }
            Event::Fenced { answers } => {
                let fenced = self.record_fences(answers);
                self.fenced(fenced, now)
            }
            Event::Promoted { answer } => self.promoted(answer, now),
            Event::Followed { answers } => {
                for (slot, answer) in answers {
                    self.record_follow(slot, answer, now);
                }
                Vec::new()
            }
        }
    }

    fn check(&self, slots: Vec<usize>, full: bool) -> Command {
        Command::Check {
            slots,
            full,
            timeout: self.config.heartbeat.max(MIN_CHECK_TIMEOUT),
        }
    }

    /// What the decision core needs from the table and from this engine.
    fn current(&self) -> failover::BalancerView {
        let mut current = self.table.current();
        current.coordinator = self.coordinator;
        current.ballot = self.ballot;
        current.minted = self.minted;
        current.quorum = self.quorum();
        current
    }

    /// Decides on the table as the checks left it; `full` when every
    /// replica was checked just before.
    fn act(&mut self, full: bool, now: Instant) -> Vec<Command> {
        self.step = Step::Idle;
        let mut current = self.current();
        // The grace ends for good with the first leader or its deadline.
        if current.leader.is_some() || self.grace_until.is_some_and(|t| now >= t) {
            self.grace_until = None;
        }
        current.startup_grace = self.grace_until.is_some();
        let observed = self.table.observed();
        let plan = failover::plan(&observed, current);
        let max = failover::max_epoch(&observed, current);
        // Commit progress is judged between two full rounds only: after a
        // round that checked just a broken link, the other rows are as old
        // as the previous round's and would show no progress.
        if full {
            self.committing_elsewhere =
                failover::committing_without_us(&self.previous, &observed, max);
            self.previous = observed.clone();
        } else if failover::leader_refused(&observed, max) {
            self.committing_elsewhere = false;
        }
        if let Plan::Steady { epoch, .. } | Plan::Adopt { epoch, .. } = &plan {
            self.led = Some(*epoch);
        }
        if self.max_seen.is_none_or(|(e, _)| e != max) {
            self.max_seen = Some((max, now));
        }
        match plan {
            Plan::Steady {
                leader,
                epoch,
                follow,
            } => {
                // The same replica may lead at a newer epoch than the one
                // routed to (another balancer re-promoted it): route on, at
                // the epoch it leads now.
                if self.table.leader().is_some_and(|l| l.epoch != epoch) {
                    info!(leader = %self.addr(leader), epoch = %epoch, "leader now leads at a newer epoch");
                    self.table.set_leader(Some(Leader {
                        slot: leader,
                        epoch,
                    }));
                }
                // A replica still to be told to follow (restarted Idle, or
                // stale) is not yet a follower the leader could be missing:
                // judge the leader only once every healthy replica follows.
                if !follow.is_empty() {
                    self.stall.restart_streak();
                    self.follow(follow, leader, epoch).into_iter().collect()
                } else if self.leader_stalled(leader, epoch, now) {
                    self.elect_away_from(leader, now)
                } else {
                    Vec::new()
                }
            }
            Plan::Adopt {
                leader,
                epoch,
                follow,
            } => {
                let old = self.table.leader();
                self.table.set_leader(Some(Leader {
                    slot: leader,
                    epoch,
                }));
                info!(
                    leader = %self.addr(leader),
                    old_leader = %old.map_or("none", |l| self.addr(l.slot)),
                    epoch = %epoch,
                    "adopted live leader"
                );
                self.lost_at = None;
                self.lost_leader = None;
                self.follow(follow, leader, epoch).into_iter().collect()
            }
            Plan::Elect { epoch } => {
                self.stall.clear();
                let mut commands: Vec<Command> = self.leader_lost(now).into_iter().collect();
                if self.committing_elsewhere {
                    if self.elsewhere_warned.due(now) {
                        warn!(epoch = %max, "the leader of the current epoch is unreachable from this balancer, but its followers still commit (another balancer reaches it); not electing, writes here are unavailable until it is reachable");
                    }
                } else if !self.election_under_way_elsewhere(max, &observed, now)
                    && !self.holding_off(epoch, &observed, now)
                {
                    commands.extend(self.elect(epoch, now));
                }
                commands
            }
            Plan::Exhausted { max } => {
                self.stall.clear();
                if self.exhausted_warned.due(now) {
                    error!(max_epoch = %max, "no epoch above the highest one seen can be minted (peers moved a quorum of replicas to the last term); no leader can be elected");
                }
                self.leader_lost(now).into_iter().collect()
            }
            Plan::Wait => {
                self.stall.clear();
                self.leader_lost(now).into_iter().collect()
            }
        }
    }

    /// Feeds the leader's last status to the stall rule; whether to fail
    /// over away from it now.
    fn leader_stalled(&mut self, leader: usize, epoch: Epoch, now: Instant) -> bool {
        let Some(report) = self.table.leader_report(leader, epoch) else {
            return false;
        };
        let disk_full = report.disk_full;
        let unmeetable = report.unmeetable;
        match self.stall.observe(report, now) {
            StallVerdict::Fine => false,
            StallVerdict::Damped {
                connected,
                needed,
                wait,
                first,
            } => {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                // Once per damping window; the repeats (every `down_after`
                // checks until it ends) say nothing new.
                if first && disk_full {
                    warn!(leader = %self.addr(leader), epoch = %epoch, wait_ms, "leader's disk is full, but the last stall failover is too recent; keeping it");
                } else if first {
                    warn!(leader = %self.addr(leader), epoch = %epoch, connected, needed, wait_ms, "leader has too few followers connected, but the last such failover is too recent; keeping it");
                } else {
                    debug!(leader = %self.addr(leader), epoch = %epoch, connected, needed, wait_ms, "stalled leader still kept: failover damped");
                }
                false
            }
            StallVerdict::Stalled { .. } if unmeetable => {
                warn!(leader = %self.addr(leader), epoch = %epoch, replicas = self.addrs.len(), "leader was promoted needing more followers than the cluster has: it can never commit; electing a new one");
                true
            }
            StallVerdict::Stalled { .. } if disk_full => {
                warn!(leader = %self.addr(leader), epoch = %epoch, "leader refuses writes: its disk is full; failing over to a replica with room");
                true
            }
            StallVerdict::Stalled { connected, needed } => {
                warn!(leader = %self.addr(leader), epoch = %epoch, connected, needed, "leader stalled: too few followers connected; failing over");
                true
            }
        }
    }

    /// Stops routing writes to a leader that is no longer valid: writes
    /// waiting on it get Indeterminate now rather than after their timeout
    /// (its links dropped in the background: a connect in progress holds a
    /// link's lock).
    fn leader_lost(&mut self, now: Instant) -> Option<Command> {
        self.depose(now).map(|slot| Command::Disconnect {
            slot,
            awaited: false,
        })
    }

    /// Writes stop going to the leader, if any; returns its slot, whose
    /// links the caller must drop.
    fn depose(&mut self, now: Instant) -> Option<usize> {
        let old = self.table.leader()?;
        self.lost_at.get_or_insert(now);
        self.lost_leader = Some(old);
        self.table.set_leader(None);
        warn!(leader = %self.addr(old.slot), epoch = %old.epoch, "leader lost; failing over");
        Some(old.slot)
    }

    fn addr(&self, slot: usize) -> &str {
        self.addrs.get(slot).map_or("", String::as_str)
    }
}
