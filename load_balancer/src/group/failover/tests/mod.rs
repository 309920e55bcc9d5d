//! Tests of the decision core: one round's plan, the election's choices,
//! and the stall rule.

mod plan;
mod stall;

use super::*;
use semikv_protocol::{CoordinatorId, Epoch, LogIndex, NodeRole, ReplicaId};

/// The epoch of `term` minted by the coordinator of `BalancerView::default()`.
fn ep(term: u64) -> Epoch {
    Epoch::new(term, CoordinatorId::default())
}

fn seen(id: u32, role: NodeRole, epoch: u64, last_epoch: u64, last_index: u64) -> StatusSummary {
    StatusSummary {
        id: ReplicaId(id),
        role,
        epoch: ep(epoch),
        last_epoch: ep(last_epoch),
        last_index: LogIndex(last_index),
        commit_index: LogIndex(last_index),
    }
}

fn up(s: StatusSummary) -> Observed {
    Observed {
        healthy: true,
        refused: false,
        seen: Some(s),
    }
}

fn down(s: Option<StatusSummary>) -> Observed {
    Observed {
        healthy: false,
        refused: false,
        seen: s,
    }
}

fn refused(s: Option<StatusSummary>) -> Observed {
    Observed {
        refused: true,
        ..down(s)
    }
}

use NodeRole::{Follower, Idle, Leader};
