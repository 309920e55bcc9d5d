//! The health loop: runs a group's election [`Engine`] on the real network.
//! Heartbeats, kicks and broken links go in as events; each command the
//! engine returns is carried out over the replica links, in order, and its
//! answers go back in. Every decision is the engine's; this loop only does
//! the I/O and reads the clock. It runs as one task, so elections never
//! overlap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use semikv_protocol::{CoordinatorId, Fence, Op};
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::election::{Answer, Command, Engine, Event};
use super::link::{ConnError, ReplicaLink};
use super::table::Table;
use crate::config::Config;

/// 64 random bits from the operating system (through
/// [`semikv_protocol::entropy`], so a simulation replays them), never 0 (the coordinator of
/// epochs minted before coordinators were named): a fresh id for every
/// health loop, because the loop is what remembers which epochs it
/// promoted at; two loops with one id could promote twice at one epoch.
/// Should the OS source fail, std's randomly keyed hasher over the time and
/// process id stands in.
fn draw_coordinator() -> CoordinatorId {
    use std::hash::{BuildHasher, Hasher};
    let drawn = semikv_protocol::entropy::u64().unwrap_or_else(|_| {
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

/// The health and failover loop of one replica group.
#[derive(Debug)]
pub struct HealthLoop {
    engine: Engine,
    heartbeat: std::time::Duration,
    links: Arc<Vec<Arc<ReplicaLink>>>,
    broken_rx: mpsc::Receiver<usize>,
    kick: Arc<Notify>,
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
        HealthLoop {
            heartbeat: config.heartbeat,
            engine: Engine::new(config, table, draw_coordinator()),
            links,
            broken_rx,
            kick,
        }
    }

    /// This loop's coordinator id: its name in the epochs it mints.
    pub fn coordinator(&self) -> CoordinatorId {
        self.engine.coordinator()
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => Event::Tick,
                _ = self.kick.notified() => Event::Tick,
                slot = self.broken_rx.recv() => {
                    let Some(slot) = slot else { break };
                    let mut slots = vec![slot];
                    while let Ok(more) = self.broken_rx.try_recv() {
                        slots.push(more);
                    }
                    Event::Broken(slots)
                }
            };
            let mut commands: VecDeque<Command> = self.engine.handle(event, now()).into();
            while let Some(command) = commands.pop_front() {
                if shutdown.is_cancelled() {
                    return;
                }
                if let Some(answer) = self.execute(command).await {
                    commands.extend(self.engine.handle(answer, now()));
                }
            }
        }
    }

    /// Carries out one command; the event that answers it, if it has one.
    async fn execute(&self, command: Command) -> Option<Event> {
        match command {
            Command::Check {
                slots,
                full,
                timeout,
            } => {
                // The whole check, connect included, fits in its timeout:
                // one unresponsive address must not slow down the others.
                let answers = self.ask_all(&slots, |_| Op::Status, timeout, true).await;
                Some(Event::Checked { answers, full })
            }
            Command::Fence {
                slots,
                epoch,
                wait,
                awaited,
            } => {
                let fence = move |_| Op::Fence(Fence { epoch });
                if awaited {
                    let answers = self.ask_all(&slots, fence, wait, false).await;
                    return Some(Event::Fenced { answers });
                }
                for slot in slots {
                    if let Some(link) = self.links.get(slot).cloned() {
                        tokio::spawn(async move {
                            let _ = link.request(fence(slot), wait).await;
                        });
                    }
                }
                None
            }
            Command::Disconnect { slot, awaited } => {
                if let Some(link) = self.links.get(slot).cloned() {
                    if awaited {
                        link.disconnect().await;
                    } else {
                        tokio::spawn(async move { link.disconnect().await });
                    }
                }
                None
            }
            Command::Promote {
                slot,
                promote,
                timeout,
            } => {
                let answer = match self.links.get(slot) {
                    Some(link) => link.request(Op::Promote(promote), timeout).await,
                    None => Err(ConnError::Refused),
                };
                Some(Event::Promoted { answer })
            }
            Command::Follow {
                slots,
                follow,
                timeout,
            } => {
                let answers = self
                    .ask_all(&slots, |_| Op::Follow(follow.clone()), timeout, false)
                    .await;
                Some(Event::Followed { answers })
            }
        }
    }

    /// Sends `op(slot)` to each of `slots` in parallel, each answer waited
    /// for at most `timeout` (`bound_connect`: the connect included).
    async fn ask_all(
        &self,
        slots: &[usize],
        op: impl Fn(usize) -> Op,
        timeout: std::time::Duration,
        bound_connect: bool,
    ) -> Vec<(usize, Answer)> {
        join_all(slots.iter().map(|&slot| {
            let op = op(slot);
            async move {
                let answer = match self.links.get(slot) {
                    Some(link) if bound_connect => {
                        tokio::time::timeout(timeout, link.request(op, timeout))
                            .await
                            .unwrap_or(Err(ConnError::Timeout(timeout)))
                    }
                    Some(link) => link.request(op, timeout).await,
                    None => Err(ConnError::Refused),
                };
                (slot, answer)
            }
        }))
        .await
    }
}

/// Now, from tokio's clock (so a paused test clock pauses the engine too).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
