//! The writer as an async task on the replica's runtime
//! ([`Blocking::Inline`]), for a deterministic simulation: it waits for
//! work on the replica's `Notify` and for time with `tokio::time` (virtual
//! under a paused clock), and does the WAL work inline, at a point the
//! runtime chooses. The node's std mutex is never held across an `.await`.
//!
//! [`Blocking::Inline`]: semikv_protocol::blocking::Blocking::Inline

use std::time::Instant;

use super::core::{Core, Plan};
use super::tell;
use crate::replica::Replica;
use crate::storage::error::StorageError;

/// The task's clock: tokio's, which a paused runtime advances virtually.
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs the writer until [`Plan::Stop`].
///
/// # Errors
/// The first WAL failure.
pub(super) async fn run(replica: &Replica, mut core: Core) -> Result<(), StorageError> {
    loop {
        // The guard is a temporary: dropped before anything is awaited.
        let plan = core.plan(
            &mut replica.lock_for_writer(),
            replica.shutdown.is_cancelled(),
        );
        match plan {
            Plan::Work(work) => {
                tell(replica, core.work(work)?);
                // Other tasks queue writes while this one yields: they make
                // the next batch (group commit on one thread), and a writer
                // with work every time it looks never starves them.
                tokio::task::yield_now().await;
            }
            Plan::Wait(wait) => {
                // A wake-up that came after `plan` looked at the outbox left
                // a permit: this returns at once then.
                let _woken = tokio::time::timeout(wait, replica.writer_woken()).await;
            }
            Plan::Sleep(pause) => tokio::time::sleep(pause).await,
            Plan::Stop => return core.stop(),
        }
    }
}
