//! The one timer of a replica's sync deadlines: it sleeps until the node's
//! earliest one ([`Node::next_deadline`]) and has the node expire what is
//! due ([`Node::expire_due`]); the node says when an earlier deadline
//! appears.
//!
//! [`Node::next_deadline`]: crate::node::Node::next_deadline
//! [`Node::expire_due`]: crate::node::Node::expire_due

use std::sync::Arc;

use tokio::time::Instant;

use crate::replica::Replica;

/// Expires writes past their sync deadline until the replica shuts down.
pub async fn run(replica: Arc<Replica>) {
    let mut earlier = replica.watch.deadline.clone();
    loop {
        // Marked seen before the deadline is read: a deadline added after
        // the read wakes the wait below.
        earlier.borrow_and_update();
        let next = replica.lock().next_deadline();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = replica.shutdown.cancelled() => return,
            changed = earlier.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = due => {
                let now = Instant::now().into_std();
                let fallbacks = replica.with(|n| n.expire_due(now));
                if fallbacks > 0 {
                    tracing::warn!(
                        writes = fallbacks,
                        "sync replicas did not acknowledge in time; committed asynchronously (async fallback is on)"
                    );
                }
            }
        }
    }
}
