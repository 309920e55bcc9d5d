//! The leader's background deletion of expired keys: every
//! [`SWEEP_INTERVAL`] it has the node log one `Batch` of deletes for the
//! keys that are due ([`Node::sweep_expired`]), and goes again at once
//! while a sweep came back full, so a burst of expiries drains at up to
//! [`SWEEP_MAX_KEYS`] keys per round rather than per interval (Redis's
//! active expiry cycle does the same when over a quarter of its sample
//! had expired). On a follower a sweep does nothing: it hides expired
//! keys from reads and applies the leader's deletes.
//!
//! [`Node::sweep_expired`]: crate::node::Node::sweep_expired

use std::sync::Arc;
use std::time::Duration;

use crate::replica::Replica;

/// How often the leader looks for expired keys (Redis's `hz 10`).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Most keys one sweep deletes: one log entry of at most this many
/// deletes, a fraction of a millisecond under the node lock.
pub const SWEEP_MAX_KEYS: usize = 1000;

/// Rounds one tick may run back to back while sweeps come back full, so
/// that a huge backlog does not keep the lock busy for long.
const MAX_ROUNDS: usize = 16;

/// Sweeps expired keys until the replica shuts down.
pub async fn run(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = replica.shutdown.cancelled() => return,
        }
        for _ in 0..MAX_ROUNDS {
            let deleted = replica.with(|n| n.sweep_expired(SWEEP_MAX_KEYS));
            if deleted > 0 {
                tracing::debug!(keys = deleted, "expired keys deleted");
            }
            if deleted < SWEEP_MAX_KEYS {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
