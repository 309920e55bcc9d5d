//! What a replica says about itself: its status (role, epoch, log), its
//! resources (disk, memory) and, when it leads, its terms, as answered to
//! `Status`, `Promote` and `Follow`.

use super::*;

impl Node {
    /// This replica's status report.
    pub fn status(&self) -> NodeStatus {
        let (role, leader, followers) = match &self.role {
            Role::Idle => (NodeRole::Idle, None, Vec::new()),
            Role::Follower(t) => (NodeRole::Follower, Some(t.addr.clone()), Vec::new()),
            Role::Leader(l) => {
                let mut followers: Vec<_> = l
                    .followers
                    .iter()
                    .map(|(id, p)| FollowerProgress {
                        id: *id,
                        match_index: p.match_index,
                        connected: p.streams > 0,
                    })
                    .collect();
                followers.sort_by_key(|f| f.id);
                (NodeRole::Leader, Some(self.addr.clone()), followers)
            }
        };
        NodeStatus {
            id: self.id,
            role,
            epoch: self.epoch,
            last_index: self.log.last_index(),
            last_epoch: self.log.last_epoch(),
            commit_index: self.commit,
            applied_index: self.applied,
            leader,
            followers,
        }
    }

    /// What this replica's disk and memory allow now.
    pub fn resources(&self) -> Resources {
        Resources {
            disk_full: self
                .disk_full
                .clone()
                .or_else(|| self.no_room.as_ref().map(|(reason, _)| reason.clone())),
            memory_used: self.memory_used(),
            memory_limit: self.memory_limit,
        }
    }

    /// This replica's status with its resources and, when it leads, its
    /// terms.
    pub fn report(&self) -> NodeReport {
        let leading = match &self.role {
            Role::Leader(l) => Some(LeaderTerms {
                sync_replicas: l.sync_replicas,
                sync_timeout_ms: u64::try_from(l.sync_timeout.as_millis()).unwrap_or(u64::MAX),
                async_fallback: l.async_fallback,
            }),
            _ => None,
        };
        NodeReport {
            status: self.status(),
            resources: self.resources(),
            leading,
        }
    }

    /// The answer to a `Status` request: this replica's report, or
    /// `Diverged` once it stopped serving (so that balancers take it out of
    /// every rotation at once).
    pub fn status_reply(&self) -> Reply {
        match self.check_serving() {
            Ok(()) => Reply::NodeReport(Box::new(self.report())),
            Err(refused) => Reply::Error(refused),
        }
    }
}
