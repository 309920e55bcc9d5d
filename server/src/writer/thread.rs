//! The writer on an OS thread of its own ([`Blocking::Threads`]): it waits
//! for work on the node lock's condition variable, so a write queued while
//! it decides is never missed, and blocks its own thread on the disk while
//! the runtime's workers go on serving.
//!
//! [`Blocking::Threads`]: semikv_protocol::blocking::Blocking::Threads

use super::core::{Core, Plan};
use super::tell;
use crate::replica::Replica;
use crate::storage::error::StorageError;

/// Runs the writer until [`Plan::Stop`].
///
/// # Errors
/// The first WAL failure.
pub(super) fn run(replica: &Replica, mut core: Core) -> Result<(), StorageError> {
    loop {
        let plan = {
            let mut node = replica.lock_for_writer();
            loop {
                match core.plan(&mut node, replica.shutdown.is_cancelled()) {
                    Plan::Wait(wait) => node = replica.wait_for_work(node, wait),
                    plan => break plan,
                }
            }
        };
        match plan {
            Plan::Work(work) => tell(replica, core.work(work)?),
            Plan::Sleep(pause) => std::thread::sleep(pause),
            // Waits happen above, under the lock.
            Plan::Wait(_) => {}
            Plan::Stop => return core.stop(),
        }
    }
}
