//! Watches a disk that had no room for something besides the log (the
//! epoch file, a leader's snapshot): once it has the bytes that needed,
//! the replica stops reporting its disk full. (The log has its own retry,
//! in the WAL writer.) The refused write itself is asked for again by its
//! own side: the balancer every health round, the follower every 2 s.

use std::sync::Arc;
use std::time::Duration;

use crate::replica::Replica;
use crate::storage;

/// How often the free space is looked at while the disk had no room.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Checks the free space every [`CHECK_EVERY`] while the node says a write
/// found no room, until the replica shuts down.
pub async fn run(replica: Arc<Replica>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = replica.shutdown.cancelled() => return,
        }
        let Some(needed) = replica.lock().no_room_needs() else {
            continue;
        };
        let dir = replica.config.data_dir.clone();
        let free = replica
            .config
            .blocking
            .run(move || storage::snapshot::free_bytes(&dir))
            .await;
        match free {
            Ok(Ok((free, _))) if free >= needed => {
                if replica.with(|n| n.on_no_room(None)) {
                    tracing::info!(free, needed, "the disk has room again");
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not read the free space"),
            Err(e) => tracing::debug!(error = %e, "free-space check did not run"),
        }
    }
}
