//! What a client is told when a replica did not simply answer: the
//! translation of a link's outcome into a [`Reply`], the same through every
//! door and every path (forwarded or the router's own).

use semikv_protocol::{ErrorReply, Reply};
use tokio::sync::Notify;

use super::link::ConnError;

/// Retry hint given with `Unavailable`.
pub const RETRY_AFTER_MS: u64 = 100;

/// What a client is told about its write, from what the leader's link said:
/// the leader's reply as is, except `NotLeader` (the leader changed: the
/// write certainly did not apply, `Unavailable` with a retry hint); a write
/// that may have left but got no reply is `Indeterminate`; one that
/// certainly never left is `Unavailable`. Kicks the health loop when the
/// leader looks wrong (not the leader, unreachable, connection broke).
pub fn write_reply(outcome: Result<Reply, ConnError>, kick: &Notify) -> Reply {
    match outcome {
        Ok(Reply::Error(ErrorReply::NotLeader { .. })) => {
            // Definitely not applied: the leader changed under us.
            kick.notify_one();
            unavailable("leader changed; failover in progress")
        }
        Ok(reply) => reply,
        Err(ConnError::TooLarge(reason)) => too_large(reason),
        Err(ConnError::Timeout(_)) => Reply::Error(ErrorReply::Indeterminate {
            reason: "the leader did not answer in time".into(),
        }),
        Err(e) if e.never_sent() => {
            kick.notify_one();
            unavailable("the leader could not be reached")
        }
        Err(_) => {
            kick.notify_one();
            Reply::Error(ErrorReply::Indeterminate {
                reason: "the connection to the leader broke with the write in flight".into(),
            })
        }
    }
}

/// A request that fits a frame from the client but not one to a replica
/// (whose request ids may take more bytes): refused like any invalid
/// request, without touching the replica's connection.
pub fn too_large(reason: String) -> Reply {
    Reply::Error(ErrorReply::Invalid {
        reason: format!("request too large for the replica's connection: {reason}"),
    })
}

/// `Unavailable` with the retry hint, saying why.
pub fn unavailable(reason: &str) -> Reply {
    Reply::Error(ErrorReply::Unavailable {
        retry_after_ms: RETRY_AFTER_MS,
        reason: reason.into(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures::FutureExt;
    use semikv_protocol::LogIndex;

    use std::time::Duration;

    use super::*;

    /// The reply `write_reply` gives, and whether it kicked.
    fn told(outcome: Result<Reply, ConnError>) -> (Reply, bool) {
        let kick = Notify::new();
        let reply = write_reply(outcome, &kick);
        (reply, kick.notified().now_or_never().is_some())
    }

    #[test]
    fn write_replies_pass_through_except_not_leader() {
        let written = Reply::Written { index: LogIndex(4) };
        assert_eq!(told(Ok(written.clone())), (written, false));
        let not_enough = Reply::Error(ErrorReply::NotEnoughReplicas {
            acked: 0,
            required: 1,
        });
        assert_eq!(told(Ok(not_enough.clone())), (not_enough, false));
        let (reply, kicked) = told(Ok(Reply::Error(ErrorReply::NotLeader { leader: None })));
        assert!(kicked);
        assert!(
            matches!(reply, Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) if retry_after_ms == RETRY_AFTER_MS),
            "{reply:?}"
        );
    }

    #[test]
    fn a_write_that_may_have_left_is_indeterminate_and_one_that_never_did_is_not() {
        let (reply, kicked) = told(Err(ConnError::Broken));
        assert!(kicked);
        assert!(
            matches!(&reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains("broke")),
            "{reply:?}"
        );
        let (reply, _) = told(Err(ConnError::Timeout(Duration::from_secs(1))));
        assert!(
            matches!(&reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains("in time")),
            "{reply:?}"
        );
        let (reply, kicked) = told(Err(ConnError::TooLarge("payload".into())));
        assert!(!kicked, "a request too large says nothing about the leader");
        assert!(
            matches!(&reply, Reply::Error(ErrorReply::Invalid { reason }) if reason.contains("too large")),
            "{reply:?}"
        );
        for never_sent in [ConnError::Refused, ConnError::Connect("x".into())] {
            let (reply, kicked) = told(Err(never_sent));
            assert!(kicked);
            assert!(
                matches!(reply, Reply::Error(ErrorReply::Unavailable { .. })),
                "{reply:?}"
            );
        }
    }
}
