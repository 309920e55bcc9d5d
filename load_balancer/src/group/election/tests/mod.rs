//! The election engine driven over an in-memory network of model replicas,
//! on a simulated clock: every command is carried out at once against the
//! models, through links that can be cut (refused), silenced (no answer,
//! nothing applied), made to lose answers (applied, unanswered) or to ignore
//! fences; time passes by heartbeats and by the timeouts a silent replica
//! costs. The quorum, stall and successor rules are tested here; the
//! balancer over real sockets is tested in `tests/fake_cluster/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use semikv_protocol::{
    CoordinatorId, Epoch, ErrorReply, FollowerProgress, LogIndex, NodeRole, NodeStatus, Op,
    ReplicaId, Reply,
};

use super::{Answer, Command, Engine, Event};
use crate::config::Config;
use crate::group::link::ConnError;
use crate::group::table::Table;

mod elections;
mod random;
mod stalls;

/// The coordinator that minted the epochs replicas start at (an earlier
/// balancer); tests speak of epochs by their term.
pub(super) const PAST: CoordinatorId = CoordinatorId(0xe0);

/// How a model replica's link from the balancer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// Requests are applied and answered.
    Up,
    /// Connections are refused: the process is gone.
    Refused,
    /// Nothing arrives and nothing is answered (a hung host, a partition).
    Silent,
    /// Requests are applied but their answers are lost.
    LosesAnswers,
    /// Everything is answered except fences, which are ignored (a leader
    /// that hangs just then).
    MutesFences,
}

/// A replica as the protocol shows it: the Fence, Promote and Follow rules
/// of a real replica, at the level the election sees.
#[derive(Debug, Clone)]
pub(super) struct Model {
    pub(super) id: u32,
    pub(super) role: NodeRole,
    pub(super) epoch: Epoch,
    pub(super) last_epoch: Epoch,
    pub(super) last_index: u64,
    pub(super) leader_addr: Option<String>,
    /// Followers it reports connected while leading; `None`: all others.
    pub(super) connected_followers: Option<usize>,
    /// The commit index it reports; `None`: its last index.
    pub(super) commit: Option<u64>,
    pub(super) promotes: Vec<Epoch>,
    pub(super) fences: Vec<Epoch>,
    pub(super) statuses: u64,
    /// When it was first fenced, on the simulation's fence counter.
    pub(super) fenced_at: Option<u64>,
}

impl Model {
    pub(super) fn new(id: u32, role: NodeRole, term: u64, last_index: u64) -> Model {
        let epoch = Epoch::new(term, PAST);
        Model {
            id,
            role,
            epoch,
            last_epoch: epoch,
            last_index,
            leader_addr: None,
            connected_followers: None,
            commit: None,
            promotes: Vec::new(),
            fences: Vec::new(),
            statuses: 0,
            fenced_at: None,
        }
    }

    pub(super) fn status(&self, others: usize) -> NodeStatus {
        let followers = if self.role == NodeRole::Leader {
            self.connected_followers.unwrap_or(others)
        } else {
            0
        };
        NodeStatus {
            id: ReplicaId(self.id),
            role: self.role,
            epoch: self.epoch,
            last_index: LogIndex(self.last_index),
            last_epoch: self.last_epoch,
            commit_index: LogIndex(self.commit.unwrap_or(self.last_index)),
            applied_index: LogIndex(self.commit.unwrap_or(self.last_index)),
            leader: self.leader_addr.clone(),
            followers: (0..followers)
                .map(|i| FollowerProgress {
                    id: ReplicaId(1000 + u32::try_from(i).unwrap()),
                    match_index: LogIndex(self.last_index),
                    connected: true,
                })
                .collect(),
        }
    }

    pub(super) fn stale(&self, epoch: Epoch) -> Option<Reply> {
        (epoch < self.epoch).then_some(Reply::Error(ErrorReply::StaleEpoch {
            got: epoch,
            current: self.epoch,
        }))
    }

    pub(super) fn apply(&mut self, op: Op, others: usize, fence_clock: &mut u64) -> Reply {
        match op {
            Op::Status => {
                self.statuses += 1;
            }
            Op::Fence(f) => {
                if let Some(stale) = self.stale(f.epoch) {
                    return stale;
                }
                self.fences.push(f.epoch);
                self.fenced_at.get_or_insert_with(|| {
                    *fence_clock += 1;
                    *fence_clock
                });
                if f.epoch > self.epoch {
                    self.role = NodeRole::Idle;
                    self.leader_addr = None;
                }
                self.epoch = f.epoch;
            }
            Op::Promote(p) => {
                if let Some(stale) = self.stale(p.epoch) {
                    return stale;
                }
                self.promotes.push(p.epoch);
                self.epoch = p.epoch;
                self.role = NodeRole::Leader;
                self.leader_addr = None;
                // A new leader's first entry is of its epoch.
                self.last_index += 1;
                self.last_epoch = p.epoch;
            }
            Op::Follow(f) => {
                if let Some(stale) = self.stale(f.epoch) {
                    return stale;
                }
                self.epoch = f.epoch;
                self.role = NodeRole::Follower;
                self.leader_addr = Some(f.leader_addr);
            }
            other => panic!("the election sent {other:?}"),
        }
        Reply::Node(self.status(others))
    }
}

/// One balancer's engine over model replicas and an in-memory network.
pub(super) struct Sim {
    pub(super) config: Arc<Config>,
    pub(super) engines: Vec<Engine>,
    pub(super) tables: Vec<Arc<Table>>,
    pub(super) models: Vec<Model>,
    pub(super) links: Vec<Link>,
    pub(super) now: Instant,
    pub(super) fence_clock: u64,
    /// Every command carried out, with the engine that gave it.
    pub(super) commands: Vec<(usize, Command)>,
}

pub(super) fn addr(slot: usize) -> String {
    format!("replica-{slot}")
}

impl Sim {
    /// `balancers` engines over `models` (slots in order), heartbeat 20 ms,
    /// down after 3 misses, as the socket tests configure them.
    pub(super) fn new(models: Vec<Model>, balancers: usize) -> Sim {
        let mut config = Config::new((0..models.len()).map(addr).collect());
        config.heartbeat = Duration::from_millis(20);
        config.down_after = 3;
        config.derive_waits();
        let config = Arc::new(config);
        let tables: Vec<Arc<Table>> = (0..balancers)
            .map(|_| Arc::new(Table::new(&config.replicas)))
            .collect();
        let engines = tables
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let coordinator = CoordinatorId(0x1000 + u64::try_from(i).unwrap());
                Engine::new(config.clone(), table.clone(), coordinator)
            })
            .collect();
        Sim {
            config,
            engines,
            tables,
            links: vec![Link::Up; models.len()],
            models,
            now: Instant::now(),
            fence_clock: 0,
            commands: Vec::new(),
        }
    }

    /// One heartbeat of balancer `b`: time passes, and the round's
    /// commands run to the end.
    pub(super) fn tick_one(&mut self, b: usize) {
        self.now += self.config.heartbeat;
        self.feed(b, Event::Tick);
    }

    pub(super) fn tick(&mut self) {
        self.tick_one(0);
    }

    /// Ticks until `cond` holds; fails after `max` heartbeats.
    pub(super) fn until(&mut self, what: &str, max: usize, cond: impl Fn(&Sim) -> bool) {
        for _ in 0..max {
            if cond(self) {
                return;
            }
            self.tick();
        }
        assert!(cond(self), "not within {max} heartbeats: {what}");
    }

    pub(super) fn feed(&mut self, b: usize, event: Event) {
        let mut queue: std::collections::VecDeque<Command> =
            self.engines[b].handle(event, self.now).into();
        while let Some(command) = queue.pop_front() {
            self.commands.push((b, command.clone()));
            if let Some(answer) = self.execute(command) {
                queue.extend(self.engines[b].handle(answer, self.now));
            }
        }
    }

    /// Sends `op` to `slot` through its link; a request that gets no answer
    /// costs its `timeout` (the callers wait for the slowest in parallel).
    pub(super) fn ask(
        &mut self,
        slot: usize,
        op: Op,
        timeout: Duration,
        waited: &mut Duration,
    ) -> Answer {
        let others = self.models.len() - 1;
        let model = &mut self.models[slot];
        let fence = matches!(op, Op::Fence(_));
        match self.links[slot] {
            Link::Refused => Err(ConnError::Refused),
            Link::Silent => {
                *waited = (*waited).max(timeout);
                Err(ConnError::Timeout(timeout))
            }
            Link::MutesFences if fence => {
                *waited = (*waited).max(timeout);
                Err(ConnError::Timeout(timeout))
            }
            Link::LosesAnswers => {
                model.apply(op, others, &mut self.fence_clock);
                *waited = (*waited).max(timeout);
                Err(ConnError::Timeout(timeout))
            }
            Link::Up | Link::MutesFences => Ok(model.apply(op, others, &mut self.fence_clock)),
        }
    }

    pub(super) fn ask_all(
        &mut self,
        slots: &[usize],
        op: &Op,
        timeout: Duration,
    ) -> Vec<(usize, Answer)> {
        let mut waited = Duration::ZERO;
        let answers = slots
            .iter()
            .map(|&slot| (slot, self.ask(slot, op.clone(), timeout, &mut waited)))
            .collect();
        self.now += waited;
        answers
    }

    pub(super) fn execute(&mut self, command: Command) -> Option<Event> {
        match command {
            Command::Check {
                slots,
                full,
                timeout,
            } => {
                let answers = self.ask_all(&slots, &Op::Status, timeout);
                Some(Event::Checked { answers, full })
            }
            Command::Fence {
                slots,
                epoch,
                wait,
                awaited,
            } => {
                let fence = Op::Fence(semikv_protocol::Fence { epoch });
                if awaited {
                    let answers = self.ask_all(&slots, &fence, wait);
                    return Some(Event::Fenced { answers });
                }
                // In the background: nobody waits, the time is not spent.
                let mut unwaited = Duration::ZERO;
                for slot in slots {
                    let _ = self.ask(slot, fence.clone(), wait, &mut unwaited);
                }
                None
            }
            Command::Disconnect { .. } => None,
            Command::Promote {
                slot,
                promote,
                timeout,
            } => {
                let mut waited = Duration::ZERO;
                let answer = self.ask(slot, Op::Promote(promote), timeout, &mut waited);
                self.now += waited;
                Some(Event::Promoted { answer })
            }
            Command::Follow {
                slots,
                follow,
                timeout,
            } => {
                let answers = self.ask_all(&slots, &Op::Follow(follow), timeout);
                Some(Event::Followed { answers })
            }
        }
    }

    pub(super) fn leads(&self, slot: usize, term: u64) -> bool {
        let m = &self.models[slot];
        m.role == NodeRole::Leader && m.epoch.term() == term
    }

    pub(super) fn follows(&self, slot: usize, leader: usize, term: u64) -> bool {
        let m = &self.models[slot];
        m.role == NodeRole::Follower
            && m.epoch.term() == term
            && m.leader_addr.as_deref() == Some(addr(leader).as_str())
    }

    /// The fences the engines sent, by epoch.
    pub(super) fn fence_epochs(&self) -> BTreeSet<Epoch> {
        self.commands
            .iter()
            .filter_map(|(_, c)| match c {
                Command::Fence { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .collect()
    }

    /// Every promote sent, as (balancer, epoch).
    pub(super) fn promotes_sent(&self) -> Vec<(usize, Epoch)> {
        self.commands
            .iter()
            .filter_map(|(b, c)| match c {
                Command::Promote { promote, .. } => Some((*b, promote.epoch)),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn leader(term: u64, last_index: u64) -> Model {
    Model::new(0, NodeRole::Leader, term, last_index)
}

pub(super) fn follower(term: u64, last_index: u64) -> Model {
    Model::new(0, NodeRole::Follower, term, last_index)
}

/// Models with ids 1, 2, ... in slot order, followers following slot 0
/// when it leads.
pub(super) fn cluster(mut models: Vec<Model>) -> Vec<Model> {
    for (slot, m) in models.iter_mut().enumerate() {
        m.id = u32::try_from(slot).unwrap() + 1;
        if m.role == NodeRole::Follower {
            m.leader_addr = Some(addr(0));
        }
    }
    models
}
