//! The router: between the front doors and the replica groups. It maps a
//! key to the group that holds it ([`Router::group_for`]), picks the replica
//! a read goes to by a [`ReadPolicy`], sends writes to the group's leader,
//! and answers what the balancer answers itself (`Ping`, `Status`). Each
//! client connection routes through its own [`Session`], whatever its door.
//!
//! Requests take one of two paths. The fast one hands a read or write to a
//! replica link at once, and the link answers the client's port itself: no
//! future, oneshot or timer per request. The router's own path
//! ([`Router::handle`]) runs as a future of the client's session: for what
//! could not be handed over (no leader yet, a link not connected, a read to
//! retry), and for everything that is not a plain read or write.

pub mod consistency;
pub mod policy;
pub mod session;
pub mod window;

use std::sync::Arc;

use semikv_protocol::{Consistency, ErrorReply, LogIndex, Op, Reply};
use tokio::time::Instant;
use tracing::debug;

use crate::request::Target;

use crate::group::link::ConnError;
use crate::group::replies::{too_large, unavailable, write_reply};
use crate::group::table::Leader;
use crate::group::ReplicaGroup;
pub use policy::ReadPolicy;
pub use session::Session;
pub use window::Window;

/// Routes requests to replica groups; shared by every client connection of
/// every door.
#[derive(Debug)]
pub struct Router {
    /// At least one; see [`Router::group_for`].
    groups: Vec<Arc<ReplicaGroup>>,
    policy: ReadPolicy,
    /// The level of reads that name none (`--read-consistency`).
    default: Consistency,
}

impl Router {
    /// A router over `groups`, reading by `policy`, at `default` for reads
    /// that name no level.
    ///
    /// # Panics
    /// When `groups` is empty (a balancer always has a group).
    pub fn new(groups: Vec<Arc<ReplicaGroup>>, policy: ReadPolicy, default: Consistency) -> Router {
        assert!(!groups.is_empty(), "a router needs a replica group");
        Router {
            groups,
            policy,
            default,
        }
    }

    /// The level of reads that name none.
    pub fn default_consistency(&self) -> Consistency {
        self.default
    }

    /// The group that holds `key` (by index in [`Self::group`]); ops about
    /// no key go to the first. One group holds every key today: this is
    /// where a range map goes when the key space is split.
    pub fn group_for(&self, _key: Option<&[u8]>) -> usize {
        0
    }

    /// Group `index` (as [`Self::group_for`] returns); the first for any
    /// index out of range.
    pub fn group(&self, index: usize) -> &Arc<ReplicaGroup> {
        self.groups.get(index).unwrap_or(&self.groups[0])
    }

    /// What the balancer counts (its first group's configuration holds it).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.group(0).config().metrics
    }

    /// The policy reads are routed by.
    pub fn policy(&self) -> ReadPolicy {
        self.policy
    }

    /// Routes one operation and returns its reply, waiting out a failover
    /// for a bounded time; a read at its own level or the default one, with
    /// no session position.
    pub async fn handle(&self, op: Op) -> Reply {
        self.handle_at(op, self.default, LogIndex(0)).await
    }

    /// [`Self::handle`] for a session: reads that name no level are read at
    /// `level`, and reflect at least `seen` when their level asks for it.
    pub async fn handle_at(&self, op: Op, level: Consistency, seen: LogIndex) -> Reply {
        match &op {
            Op::Ping => return Reply::Pong,
            Op::Status => {
                let now = Instant::now().into_std();
                return Reply::ClusterView(Box::new(self.group(0).table().cluster_view(now)));
            }
            _ => {}
        }
        if let Err(reason) = op.validate(usize::MAX) {
            return Reply::Error(ErrorReply::Invalid { reason });
        }
        let group = self.group(self.group_for(op.key().map(|k| &k[..])));
        if op.is_write() {
            return write(group, op).await;
        }
        if !consistency::is_read(&op) {
            return Reply::Error(ErrorReply::Invalid {
                reason: format!("{} is not a client operation", op.name()),
            });
        }
        let plan = consistency::plan(op, level, seen);
        let reply = self
            .read_from(group, plan.op, plan.target, None, None, 2)
            .await;
        consistency::told(reply, plan.plain)
    }

    /// Reads `op` (as sent to replicas) on up to `attempts` replicas of
    /// `group` that `target` allows: `first` if given, then ones the policy
    /// picks other than `tried`. A replica behind the read's position sends
    /// it to the leader, and a replica that no longer leads sends a
    /// leader-only read to the next leader, each once more than `attempts`.
    pub async fn read_from(
        &self,
        group: &ReplicaGroup,
        op: Op,
        mut target: Target,
        mut first: Option<usize>,
        mut tried: Option<usize>,
        attempts: usize,
    ) -> Reply {
        let timeout = group.config().request_timeout();
        let mut left = attempts;
        let mut redirected = false;
        let mut leader_retried = false;
        while left > 0 {
            left -= 1;
            let next = first
                .take()
                .or_else(|| self.policy.pick_for(target, group, tried));
            let slot = match next {
                Some(slot) => slot,
                None if tried.is_none() || target == Target::Leader => {
                    // Nothing qualifies yet (start-up or failover): wait a
                    // bounded time for a leader, which is healthy by
                    // definition (not the one that just failed this read).
                    let deadline = Instant::now() + group.config().write_wait;
                    let skip = group.table().leader().filter(|l| Some(l.slot) == tried);
                    match wait_leader(group, deadline, skip).await {
                        Some(leader) => leader.slot,
                        None => return unavailable("no healthy replica"),
                    }
                }
                None => break,
            };
            let Some(link) = group.link(slot) else {
                break;
            };
            match link.request(op.clone(), timeout).await {
                Ok(reply) if !redirected && consistency::to_leader(&reply) => {
                    target = Target::Leader;
                    tried = None;
                    redirected = true;
                    left += 1;
                }
                Ok(Reply::Error(ErrorReply::NotLeader { .. }))
                    if !redirected && target == Target::Leader =>
                {
                    group.kick();
                    tried = Some(slot);
                    redirected = true;
                    left += 1;
                }
                Ok(reply) => return reply,
                Err(ConnError::TooLarge(reason)) => return too_large(reason),
                Err(e) if target == Target::Leader && !leader_retried => {
                    // A leader-only read has nowhere else to go: a link that
                    // broke or was slow says little (try the leader again);
                    // one the leader refused says it is gone (wait for the
                    // next, not this one).
                    debug!(slot, error = %e, "leader-only read failed; trying the leader again");
                    group.kick();
                    leader_retried = true;
                    tried = e.never_sent().then_some(slot);
                    left += 1;
                }
                Err(e) => {
                    debug!(slot, error = %e, "read failed; retrying elsewhere");
                    group.kick();
                    tried = Some(slot);
                }
            }
        }
        unavailable("read failed on every replica tried")
    }
}

/// Sends a write to `group`'s leader, waiting a bounded time for one; a
/// write that certainly never left may wait for the next leader, one that
/// may have left is never sent again.
async fn write(group: &ReplicaGroup, op: Op) -> Reply {
    let deadline = Instant::now() + group.config().write_wait;
    let mut skip: Option<Leader> = None;
    loop {
        let Some(leader) = wait_leader(group, deadline, skip).await else {
            return unavailable("no leader; failover in progress");
        };
        let Some(link) = group.link(leader.slot) else {
            return unavailable("no leader");
        };
        match link
            .request(op.clone(), group.config().write_timeout())
            .await
        {
            Err(ConnError::TooLarge(reason)) => return too_large(reason),
            Err(e) if e.never_sent() => {
                // Safe to wait for another leader: the write never left.
                group.kick();
                skip = Some(leader);
            }
            outcome => return write_reply(outcome, group.kicker()),
        }
    }
}

/// Waits until `group` has a leader other than `skip`, or `deadline`.
async fn wait_leader(
    group: &ReplicaGroup,
    deadline: Instant,
    skip: Option<Leader>,
) -> Option<Leader> {
    let mut rx = group.watch_leader();
    loop {
        let current = *rx.borrow_and_update();
        if let Some(leader) = current {
            if Some(leader) != skip {
                return Some(leader);
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}
