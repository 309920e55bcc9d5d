//! The health loop: checks every replica each heartbeat, reacts at once when a
//! replica connection breaks, and carries out the [`failover`] plan
//! (adopt, elect with fencing, tell replicas to follow), including moving
//! leadership away from a leader cut off from its followers.
//!
//! It is the only writer of leadership in the [`Table`], and runs as one task,
//! so elections never overlap. It sends `Promote` at most once per epoch it
//! mints (see [`failover::election_epoch`]), whatever the answer: a promote
//! whose answer was lost may still have made a leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use semikv_protocol::{CoordinatorId, Epoch, ErrorReply, Fence, Follow, Op, Promote, Reply};
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::failover::{self, Plan, Seen, StallRule, StallVerdict, StallWatch};
use super::link::{ConnError, ReplicaLink};
use super::table::{Leader, Table};
use crate::config::Config;

/// Shortest timeout of one health check, so a very short heartbeat does not
/// declare a busy replica dead.
const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(50);

/// Least time between two "election postponed" warnings: the health loop
/// retries every heartbeat.
const QUORUM_WARN_EVERY: Duration = Duration::from_secs(1);

/// A warning that may repeat every round, logged at most once per
/// [`QUORUM_WARN_EVERY`].
#[derive(Debug, Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether to log now (and then not again for a while).
    fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .0
            .is_none_or(|at| now.duration_since(at) >= QUORUM_WARN_EVERY);
        if due {
            self.0 = Some(now);
        }
        due
    }
}

/// Longest pause between two attempts of a postponed election while no
/// replica's health changes.
const POSTPONED_RETRY_MAX: Duration = Duration::from_secs(5);

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

/// 64 random bits from the operating system, never 0 (the coordinator of
/// epochs minted before coordinators were named): a fresh id for every
/// health loop, because the loop is what remembers which epochs it
/// promoted at; two loops with one id could promote twice at one epoch.
/// Should the OS source fail, std's randomly keyed hasher over the time and
/// process id stands in.
fn draw_coordinator() -> CoordinatorId {
    use std::hash::{BuildHasher, Hasher};
    let drawn = getrandom::u64().unwrap_or_else(|_| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    CoordinatorId(drawn.max(1))
}

/// Which of `observed` are healthy.
fn healthy(observed: &[failover::Observed]) -> Vec<bool> {
    observed.iter().map(|o| o.healthy).collect()
}

/// The health and failover loop.
pub struct HealthLoop {
    config: Arc<Config>,
    /// This loop's name in the epochs it mints.
    coordinator: CoordinatorId,
    table: Arc<Table>,
    links: Arc<Vec<Arc<ReplicaLink>>>,
    broken_rx: mpsc::Receiver<usize>,
    kick: Arc<Notify>,
    /// When the current leader was first found missing.
    lost_at: Option<Instant>,
    /// The leader before it went missing, for the failover log line.
    lost_leader: Option<Leader>,
    /// Until when, at start-up, an election waits for every replica.
    grace_until: Option<Instant>,
    /// Judges whether the leader is cut off from its followers.
    stall: StallWatch,
    /// When an election was last postponed for too few answers (logged).
    quorum_warned: Throttle,
    /// An epoch this balancer minted and fenced with but promoted no one at.
    ballot: Option<Epoch>,
    /// The last election that was postponed, while it may go on.
    postponed: Option<Postponed>,
    /// When running out of epochs was last logged.
    exhausted_warned: Throttle,
    /// What the table showed at the previous full round.
    previous: Vec<failover::Observed>,
    /// Whether, at the last full round, followers of the highest epoch
    /// committed without this balancer ([`failover::committing_without_us`]).
    committing_elsewhere: bool,
    /// When holding an election back for a leader that commits without
    /// this balancer was last logged.
    elsewhere_warned: Throttle,
    /// The highest epoch seen, and since when.
    max_seen: Option<(Epoch, Instant)>,
    /// The last epoch at which this balancer saw a leader.
    led: Option<Epoch>,
}

impl HealthLoop {
    /// A loop over `links` (one per slot of `table`). `broken_rx` receives the
    /// slots whose connection broke; `kick` requests an immediate round.
    pub fn new(
        config: Arc<Config>,
        table: Arc<Table>,
        links: Arc<Vec<Arc<ReplicaLink>>>,
        broken_rx: mpsc::Receiver<usize>,
        kick: Arc<Notify>,
    ) -> HealthLoop {
        let sync = failover::sync_replicas(config.sync_replicas, links.len());
        let rule = StallRule::new(
            sync,
            config.down_after,
            config.heartbeat,
            config.election_wait,
        )
        .with_quorum(failover::election_quorum(links.len(), sync));
        HealthLoop {
            stall: StallWatch::new(rule),
            coordinator: draw_coordinator(),
            quorum_warned: Throttle::default(),
            ballot: None,
            postponed: None,
            exhausted_warned: Throttle::default(),
            previous: Vec::new(),
            committing_elsewhere: false,
            elsewhere_warned: Throttle::default(),
            max_seen: None,
            led: None,
            config,
            table,
            links,
            broken_rx,
            kick,
            lost_at: None,
            lost_leader: None,
            grace_until: None,
        }
    }

    /// This loop's coordinator id: its name in the epochs it mints.
    pub fn coordinator(&self) -> CoordinatorId {
        self.coordinator
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.grace_until = Some(Instant::now() + self.config.election_wait);
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Whether every replica was checked this round (not only the
            // ones whose connection broke).
            let mut full = true;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.check_all().await,
                _ = self.kick.notified() => self.check_all().await,
                slot = self.broken_rx.recv() => {
                    full = false;
                    let Some(slot) = slot else { break };
                    // Fast path: a crashed process closes its sockets at once;
                    // one probe tells a crash (refused) from a hiccup.
                    if self.table.leader().is_some_and(|l| l.slot == slot) {
                        self.lost_at.get_or_insert_with(Instant::now);
                    }
                    let mut slots = vec![slot];
                    while let Ok(more) = self.broken_rx.try_recv() {
                        slots.push(more);
                    }
                    slots.sort_unstable();
                    slots.dedup();
                    join_all(slots.into_iter().map(|s| self.check(s))).await;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            self.act(full).await;
        }
    }

    async fn check_all(&self) {
        join_all((0..self.links.len()).map(|slot| self.check(slot))).await;
    }

    async fn check(&self, slot: usize) {
        let Some(link) = self.links.get(slot) else {
            return;
        };
        let timeout = self.config.heartbeat.max(MIN_CHECK_TIMEOUT);
        // The whole check, connect included, fits in one heartbeat: one
        // unresponsive address must not slow down the checks of the others.
        let answer = tokio::time::timeout(timeout, link.request(Op::Status, timeout))
            .await
            .unwrap_or(Err(ConnError::Timeout(timeout)));
        match answer {
            Ok(Reply::Node(status)) => {
                if !self.table.is_healthy(slot) {
                    info!(replica = %status.id, addr = %link.addr(), role = %status.role, epoch = %status.epoch, "replica is up");
                }
                self.table.record_ok(slot, status);
            }
            Err(ConnError::Refused) => {
                if self.table.mark_down(slot) {
                    warn!(addr = %link.addr(), "replica is down (connection refused)");
                }
            }
            Ok(Reply::Error(ErrorReply::Diverged { reason })) => {
                if self.table.mark_down(slot) {
                    error!(addr = %link.addr(), reason = %reason, "replica stopped: its log diverged from its leader's; it gets no reads and no role until an operator acts");
                }
            }
            other => {
                if let Err(e) = &other {
                    debug!(slot, error = %e, "health check failed");
                }
                if self.table.record_miss(slot, self.config.down_after) {
                    warn!(addr = %link.addr(), misses = self.config.down_after, "replica is down (missed health checks)");
                    // A silent replica (paused, hung host) would otherwise hold
                    // the reads already sent to it for their whole timeout;
                    // dropping the link fails them now, and the router retries
                    // them on another replica.
                    let link = link.clone();
                    tokio::spawn(async move { link.disconnect().await });
                }
            }
        }
    }

    /// What the decision core needs from the table and from this loop.
    fn current(&self) -> failover::Current {
        let mut current = self.table.current();
        current.coordinator = self.coordinator;
        current.ballot = self.ballot;
        current
    }

    /// Decides and acts on the table as the checks left it; `full` when
    /// every replica was checked just before.
    async fn act(&mut self, full: bool) {
        let mut current = self.current();
        // The grace ends for good with the first leader or its deadline.
        if current.leader.is_some() || self.grace_until.is_some_and(|t| Instant::now() >= t) {
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
            self.max_seen = Some((max, Instant::now()));
        }
        match plan {
            Plan::Steady {
                leader,
                epoch,
                follow,
            } => {
                // A replica still to be told to follow (restarted Idle, or
                // stale) is not yet a follower the leader could be missing:
                // judge the leader only once every healthy replica follows.
                if !follow.is_empty() {
                    self.stall.restart_streak();
                    self.follow(&follow, leader, epoch).await;
                } else if self.leader_stalled(leader, epoch) {
                    self.elect_away_from(leader).await;
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
                self.follow(&follow, leader, epoch).await;
            }
            Plan::Elect { epoch } => {
                self.stall.clear();
                self.leader_lost();
                if self.committing_elsewhere {
                    self.warn_committing_elsewhere(max);
                    return;
                }
                if self.election_under_way_elsewhere(max, &observed)
                    || self.holding_off(epoch, &observed)
                {
                    return;
                }
                self.elect(epoch).await;
            }
            Plan::Exhausted { max } => {
                self.stall.clear();
                self.leader_lost();
                if self.exhausted_warned.due() {
                    error!(max_epoch = %max, "no epoch above the highest one seen can be minted (a replica was moved to the last term); no leader can be elected");
                }
            }
            Plan::Wait => {
                self.stall.clear();
                self.leader_lost();
            }
        }
    }

    /// Feeds the leader's last status to the stall rule; whether to fail
    /// over away from it now.
    fn leader_stalled(&mut self, leader: usize, epoch: Epoch) -> bool {
        let Some(report) = self.table.leader_report(leader, epoch) else {
            return false;
        };
        match self.stall.observe(report, Instant::now()) {
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
                if first {
                    warn!(
                        leader = %self.addr(leader),
                        epoch = %epoch,
                        connected,
                        needed,
                        wait_ms,
                        "leader has too few followers connected, but the last such failover is too recent; keeping it"
                    );
                } else {
                    debug!(
                        leader = %self.addr(leader),
                        epoch = %epoch,
                        connected,
                        needed,
                        wait_ms,
                        "stalled leader still kept: failover damped"
                    );
                }
                false
            }
            StallVerdict::Stalled { connected, needed } => {
                warn!(
                    leader = %self.addr(leader),
                    epoch = %epoch,
                    connected,
                    needed,
                    "leader stalled: too few followers connected; failing over"
                );
                true
            }
        }
    }

    /// Stops routing writes to a leader that is no longer valid.
    fn leader_lost(&mut self) {
        if let Some(link) = self.depose() {
            // Writes waiting on the old leader get Indeterminate now rather
            // than after their timeout; in the background, because a connect
            // in progress holds the link's lock.
            tokio::spawn(async move { link.disconnect().await });
        }
    }

    /// The bookkeeping and warning of [`Self::leader_lost`]: writes stop
    /// going to the leader, if any; returns its link, which the caller must
    /// disconnect.
    fn depose(&mut self) -> Option<Arc<ReplicaLink>> {
        let old = self.table.leader()?;
        self.lost_at.get_or_insert_with(Instant::now);
        self.lost_leader = Some(old);
        self.table.set_leader(None);
        warn!(leader = %self.addr(old.slot), epoch = %old.epoch, "leader lost; failing over");
        self.links.get(old.slot).cloned()
    }

    async fn elect(&mut self, epoch: Epoch) {
        let started = self.lost_at.unwrap_or_else(Instant::now);
        self.ballot = Some(epoch);
        self.table.raise_epoch(epoch);
        // Fence everyone: a refused connection answers at once, so only slow
        // replicas make the election wait, and at most election_wait.
        let wait = self.config.election_wait.max(MIN_CHECK_TIMEOUT);
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
        if let Some(slot) = silent {
            let link = self.links[slot].clone();
            tokio::spawn(async move {
                let _ = link.request(Op::Fence(Fence { epoch }), wait).await;
            });
        }
        let slots: Vec<usize> = (0..self.links.len())
            .filter(|&slot| Some(slot) != silent)
            .collect();
        let fenced = self.fence(&slots, epoch, wait).await;
        if !self.enough_answers(&fenced, epoch) {
            return;
        }
        let Some(winner) = failover::choose_leader(&fenced) else {
            return;
        };
        self.promote(winner, &fenced, epoch, started).await;
    }

    /// Moves leadership away from `stalled`, a leader the balancer reaches but
    /// that has too few followers connected to commit anything.
    ///
    /// The other replicas are fenced first. If none answers, the leader is
    /// kept for now, but the damping is armed all the same (no new stall
    /// failover before it ends); a follower that took the fence without
    /// answering shows the new epoch at its next check, and the usual
    /// election follows. Fenced followers refuse its stream, so it can
    /// commit nothing more; writes stop going to it and its link is dropped
    /// (writes in flight on it are Indeterminate), then it is fenced too
    /// (which deposes it, and its answer gives its final commit index) and
    /// the best fit follower is promoted (see [`failover::choose_successor`]
    /// for why no acknowledged write is lost). Nobody is promoted unless
    /// enough replicas answered ([`failover::election_quorum`]), its answer
    /// counting: the leader's commit index bounds what it acknowledged, but
    /// not what a leader of a newer epoch (another balancer's) may have.
    /// Should no follower be fit, the election goes on as usual among every
    /// fenced replica, which re-promotes the old leader at the new epoch.
    async fn elect_away_from(&mut self, stalled: usize) {
        let started = Instant::now();
        self.stall.failed_over(started);
        let current = self.current();
        let max = failover::max_epoch(&self.table.observed(), current);
        let Some(epoch) = failover::election_epoch(max, current) else {
            error!(max_epoch = %max, "no epoch above the highest one seen can be minted; keeping the stalled leader");
            return;
        };
        self.ballot = Some(epoch);
        let wait = self.config.election_wait.max(MIN_CHECK_TIMEOUT);
        let others: Vec<usize> = (0..self.links.len())
            .filter(|&slot| slot != stalled)
            .collect();
        let mut fenced = self.fence(&others, epoch, wait).await;
        if fenced.is_empty() {
            warn!(leader = %self.addr(stalled), epoch = %epoch, "no other replica answered the fence; keeping the stalled leader");
            return;
        }
        self.table.raise_epoch(epoch);
        // Writes wait for the successor from now on, rather than go to a
        // leader about to be fenced. The link is dropped before the fence,
        // not in the background, so the fence goes out on a fresh connection
        // instead of racing the disconnect.
        self.lost_at = Some(started);
        if let Some(link) = self.depose() {
            link.disconnect().await;
        }
        fenced.extend(self.fence(&[stalled], epoch, wait).await);
        // With the stalled leader's answer, its commit index tells
        // choose_successor what it acknowledged; the quorum covers what any
        // other leader (of another balancer) may have.
        if !self.enough_answers(&fenced, epoch) {
            return;
        }
        let winner = match failover::choose_successor(&fenced, stalled) {
            Some(winner) => winner,
            None => {
                warn!(leader = %self.addr(stalled), epoch = %epoch, "no follower holds everything the stalled leader committed; electing among all");
                let Some(winner) = failover::choose_leader(&fenced) else {
                    return;
                };
                winner
            }
        };
        self.promote(winner, &fenced, epoch, started).await;
    }

    /// Whether `fenced` holds enough answers to see every acknowledged write
    /// (see [`failover::election_quorum`]); warns (at most once a second)
    /// when not, and the next round tries again.
    fn enough_answers(&mut self, fenced: &[(usize, Seen)], epoch: Epoch) -> bool {
        let sync = failover::sync_replicas(self.config.sync_replicas, self.links.len());
        let needed = failover::election_quorum(self.links.len(), sync);
        if fenced.len() >= needed {
            self.postponed = None;
            return true;
        }
        let now = Instant::now();
        let backoff = match &self.postponed {
            Some(p) if p.epoch == epoch => p.backoff.saturating_mul(2).min(POSTPONED_RETRY_MAX),
            _ => self.config.heartbeat.saturating_mul(2),
        };
        self.postponed = Some(Postponed {
            epoch,
            healthy: self.healthy_slots(),
            retry_at: now + backoff,
            backoff,
        });
        if self.quorum_warned.due() {
            warn!(
                epoch = %epoch,
                answered = fenced.len(),
                needed,
                "election postponed: too few replicas answered to be sure the winner holds every acknowledged write"
            );
        }
        false
    }

    /// Says (at most once a second) why no election runs although this
    /// balancer has no leader: see [`failover::committing_without_us`].
    fn warn_committing_elsewhere(&mut self, epoch: Epoch) {
        if self.elsewhere_warned.due() {
            warn!(epoch = %epoch, "the leader of the current epoch is unreachable from this balancer, but its followers still commit (another balancer reaches it); not electing, writes here are unavailable until it is reachable");
        }
    }

    /// Whether `max`, the highest epoch seen, was minted by another
    /// coordinator less than an election's wait ago, a replica sits fenced
    /// (idle) at it, and no leader at it was seen yet: that election is
    /// likely still fencing or promoting, and fencing over it would only
    /// undo it (two balancers electing in turn forever). Once its leader
    /// shows up it is adopted; if none does in time, this balancer elects.
    /// An epoch whose leader was seen (and then lost), or whose replicas
    /// already follow someone, never delays a failover.
    fn election_under_way_elsewhere(&self, max: Epoch, observed: &[failover::Observed]) -> bool {
        let wait = self.config.election_wait.max(MIN_CHECK_TIMEOUT);
        let fenced_idle = observed.iter().any(|o| {
            o.seen
                .is_some_and(|s| s.role == semikv_protocol::NodeRole::Idle && s.epoch == max)
        });
        max.coordinator() != self.coordinator
            && max != Epoch::ZERO
            && fenced_idle
            && self.led != Some(max)
            && self
                .max_seen
                .is_some_and(|(epoch, since)| epoch == max && since.elapsed() < wait)
    }

    /// Which slots are healthy now.
    fn healthy_slots(&self) -> Vec<bool> {
        healthy(&self.table.observed())
    }

    /// Whether the election at `epoch` was postponed and should not be tried
    /// again yet: no replica's health changed since, and its back-off is not
    /// over. Retrying changes no epoch (it fences again at the same one),
    /// but every attempt costs each replica a request and the log a line.
    fn holding_off(&mut self, epoch: Epoch, observed: &[failover::Observed]) -> bool {
        let Some(p) = &self.postponed else {
            return false;
        };
        if p.epoch != epoch {
            self.postponed = None;
            return false;
        }
        p.healthy == healthy(observed) && Instant::now() < p.retry_at
    }

    /// Fences `slots` at `epoch` in parallel, each waited for at most `wait`;
    /// returns the answers of those that accepted.
    async fn fence(&self, slots: &[usize], epoch: Epoch, wait: Duration) -> Vec<(usize, Seen)> {
        let answers = join_all(slots.iter().map(|&slot| async move {
            let answer = match self.links.get(slot) {
                Some(link) => link.request(Op::Fence(Fence { epoch }), wait).await,
                None => Err(ConnError::Refused),
            };
            (slot, answer)
        }))
        .await;
        let mut fenced: Vec<(usize, Seen)> = Vec::new();
        for (slot, answer) in answers {
            match answer {
                Ok(Reply::Node(status)) => {
                    fenced.push((slot, Seen::from(&status)));
                    self.table.record_ok(slot, status);
                }
                Ok(Reply::Error(ErrorReply::StaleEpoch { current, .. })) => {
                    warn!(addr = %self.addr(slot), epoch = %epoch, current = %current, "fence refused: stale epoch");
                    self.table.raise_epoch(current);
                }
                Ok(Reply::Error(e)) => {
                    warn!(addr = %self.addr(slot), epoch = %epoch, error = %e, "fence refused");
                }
                Ok(_) => warn!(addr = %self.addr(slot), "unexpected answer to fence"),
                Err(ConnError::Refused) => {
                    self.table.mark_down(slot);
                }
                Err(e) => debug!(slot, error = %e, "fence failed"),
            }
        }
        fenced
    }

    /// Promotes `winner` at `epoch`, routes writes to it and tells the other
    /// fenced replicas to follow it; a failure is left to later rounds.
    async fn promote(
        &mut self,
        winner: usize,
        fenced: &[(usize, Seen)],
        epoch: Epoch,
        started: Instant,
    ) {
        let sync = failover::sync_replicas(self.config.sync_replicas, self.links.len());
        let promote = Op::Promote(Promote {
            epoch,
            sync_replicas: sync,
            sync_timeout_ms: u64::try_from(self.config.sync_timeout.as_millis())
                .unwrap_or(u64::MAX),
            async_fallback: false,
        });
        let timeout = self.config.request_timeout();
        // From here on the epoch may have a leader, whatever the answer: the
        // next election mints a new one.
        self.ballot = None;
        self.postponed = None;
        match self.links[winner].request(promote, timeout).await {
            Ok(Reply::Node(status)) => {
                self.table.record_ok(winner, status);
                self.table.set_leader(Some(Leader {
                    slot: winner,
                    epoch,
                }));
                let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let old = self.lost_leader.take();
                info!(
                    leader = %self.addr(winner),
                    old_leader = %old.map_or("none", |l| self.addr(l.slot)),
                    epoch = %epoch,
                    sync_replicas = sync,
                    elapsed_ms,
                    "promoted new leader"
                );
                self.lost_at = None;
                let others: Vec<usize> = fenced
                    .iter()
                    .map(|&(slot, _)| slot)
                    .filter(|&slot| slot != winner)
                    .collect();
                self.follow(&others, winner, epoch).await;
            }
            Ok(Reply::Error(ErrorReply::StaleEpoch { current, .. })) => {
                warn!(addr = %self.addr(winner), epoch = %epoch, current = %current, "promote refused: stale epoch");
                self.table.raise_epoch(current);
            }
            Ok(Reply::Error(e)) => {
                warn!(addr = %self.addr(winner), epoch = %epoch, error = %e, "promote refused");
            }
            Ok(_) => warn!(addr = %self.addr(winner), "unexpected answer to promote"),
            Err(e) => warn!(addr = %self.addr(winner), error = %e, "promote failed"),
        }
    }

    /// Tells `slots` to follow `leader` at `epoch`, in parallel; failures are
    /// retried by later rounds.
    async fn follow(&self, slots: &[usize], leader: usize, epoch: Epoch) {
        if slots.is_empty() {
            return;
        }
        let Some(leader_id) = self.table.status(leader).map(|s| s.id) else {
            return;
        };
        let leader_addr = self.addr(leader);
        let timeout = self.config.request_timeout();
        let answers = join_all(slots.iter().map(|&slot| {
            let op = Op::Follow(Follow {
                epoch,
                leader: leader_id,
                leader_addr: leader_addr.to_string(),
            });
            async move { (slot, self.links[slot].request(op, timeout).await) }
        }))
        .await;
        for (slot, answer) in answers {
            match answer {
                Ok(Reply::Node(status)) => {
                    info!(replica = %status.id, leader = %leader_addr, epoch = %epoch, "replica follows leader");
                    self.table.record_ok(slot, status);
                }
                Ok(Reply::Error(ErrorReply::StaleEpoch { current, .. })) => {
                    warn!(addr = %self.addr(slot), epoch = %epoch, current = %current, "follow refused: stale epoch");
                    self.table.raise_epoch(current);
                }
                Ok(Reply::Error(e)) => {
                    warn!(addr = %self.addr(slot), epoch = %epoch, error = %e, "follow refused");
                }
                Ok(_) => warn!(addr = %self.addr(slot), "unexpected answer to follow"),
                Err(e) => debug!(slot, error = %e, "follow failed"),
            }
        }
    }

    fn addr(&self, slot: usize) -> &str {
        self.links.get(slot).map_or("", |link| link.addr())
    }
}
