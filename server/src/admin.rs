//! Admin requests from a balancer (promote, follow, fence): checked, the new
//! epoch persisted before anything acts on it, then the role changed, one
//! request at a time.

use std::time::Duration;

use semikv_protocol::{ErrorReply, Op, Reply};

use crate::node::LeaderSettings;
use crate::replica::Replica;
use crate::storage;

/// Free bytes after which a disk that could not take the epoch file is
/// taken to have room again: the file is a few dozen bytes, but a file
/// system gives out whole blocks and its own metadata first.
pub const EPOCH_ROOM: u64 = 64 * 1024;

/// Carries out one admin op; refusals change nothing (every check runs
/// before the epoch is persisted).
pub async fn admin(replica: &Replica, op: Op) -> Reply {
    let _serial = replica.admin.lock().await;
    let epoch = match &op {
        Op::Promote(p) => p.epoch,
        Op::Follow(f) => f.epoch,
        Op::Fence(f) => f.epoch,
        _ => {
            return Reply::Error(ErrorReply::Invalid {
                reason: "not an admin op".to_string(),
            })
        }
    };
    // Everything that can refuse a promotion at a new epoch is checked
    // before that epoch is persisted: a refused message changes nothing.
    if let Op::Promote(p) = &op {
        if let Err(e) = leader_settings(p).check() {
            return Reply::Error(e);
        }
    }
    let to_persist = replica.lock().epoch_to_persist(epoch);
    let to_persist = match to_persist {
        Ok(to_persist) => to_persist,
        Err(e) => return Reply::Error(e),
    };
    if let Some(epoch) = to_persist {
        let dir = replica.config.data_dir.clone();
        let persisted = replica
            .config
            .blocking
            .run(move || storage::meta::store_epoch(&dir, epoch))
            .await;
        match persisted {
            Ok(Ok(())) => {
                if replica.with(|n| n.on_no_room(None)) {
                    tracing::info!(epoch = %epoch, "the disk has room for the epoch again");
                }
            }
            Ok(Err(e)) if e.is_no_space() => {
                // The balancer asks again every health round: say it once.
                if replica.with(|n| n.on_no_room(Some((e.to_string(), EPOCH_ROOM)))) {
                    tracing::error!(error = %e, epoch = %epoch, "could not persist the epoch: disk full; this replica takes no role until space is freed");
                } else {
                    tracing::debug!(error = %e, epoch = %epoch, "could not persist the epoch: disk still full");
                }
                return Reply::Error(ErrorReply::DiskFull {
                    reason: e.to_string(),
                });
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, epoch = %epoch, "could not persist the epoch");
                return Reply::Error(ErrorReply::Storage {
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                return Reply::Error(ErrorReply::Storage {
                    reason: e.to_string(),
                });
            }
        }
        replica.with(|n| n.epoch_persisted(epoch));
    }
    let result = replica.with(|n| {
        match op {
            Op::Promote(p) => n.promote(p.epoch, leader_settings(&p)),
            Op::Follow(f) => n.follow(f.epoch, f.leader, f.leader_addr),
            Op::Fence(f) => n.fence(f.epoch),
            _ => Ok(()),
        }
        .map(|()| n.report())
    });
    match result {
        Ok(report) => {
            let status = &report.status;
            tracing::info!(epoch = %status.epoch, role = %status.role, last_index = %status.last_index, "role changed by the balancer");
            Reply::NodeReport(Box::new(report))
        }
        Err(e) => Reply::Error(e),
    }
}

/// The leadership settings a `Promote` carries.
pub fn leader_settings(p: &semikv_protocol::Promote) -> LeaderSettings {
    LeaderSettings {
        sync_replicas: p.sync_replicas,
        sync_timeout: Duration::from_millis(p.sync_timeout_ms),
        async_fallback: p.async_fallback,
    }
}
