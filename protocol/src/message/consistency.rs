//! Reads at a consistency level (protocol 7): the [`Consistency`] a read
//! asks for, the [`Read`] that carries it with the session's position, the
//! [`ReadAnswer`] that says which position the answer reflects, and the
//! [`LeadCheck`] rounds by which a leader confirms it still leads before a
//! linearizable read.
//!
//! A position is a log index. Replicas apply only committed entries, in log
//! order, and a committed entry is never taken back, so "applied at least
//! index `i`" means "reflects every write acknowledged at or before `i`"
//! on whichever replica answers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Op, Reply};
use crate::ids::{Epoch, LogIndex};

/// How fresh a read's answer must be. Whatever the level, an answer never
/// reflects a write that is later rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// Any healthy replica: the fastest, and possibly behind the leader.
    Stale,
    /// Read-your-writes and monotonic reads: never from a replica that has
    /// applied less than the highest position the session has seen.
    Session,
    /// Reflects every write acknowledged before the read began: answered by
    /// a leader that confirmed, after the read arrived, that it still leads.
    Linearizable,
    /// From a replica known to lag the leader's commits by less than
    /// `max_lag_ms` milliseconds, or else the leader.
    Bounded {
        /// The most staleness accepted, in milliseconds.
        max_lag_ms: u64,
    },
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::Stale => f.write_str("stale"),
            Consistency::Session => f.write_str("session"),
            Consistency::Linearizable => f.write_str("linearizable"),
            Consistency::Bounded { max_lag_ms } => write!(f, "bounded:{max_lag_ms}"),
        }
    }
}

impl FromStr for Consistency {
    type Err = String;

    /// Parses `stale`, `session`, `linearizable` or `bounded:MS` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "stale" => Ok(Consistency::Stale),
            "session" => Ok(Consistency::Session),
            "linearizable" => Ok(Consistency::Linearizable),
            other => match other.strip_prefix("bounded:") {
                Some(ms) => ms
                    .parse::<u64>()
                    .map(|max_lag_ms| Consistency::Bounded { max_lag_ms })
                    .map_err(|_| format!("bounded:MS needs a whole number of milliseconds, got {ms:?}")),
                None => Err(format!(
                    "unknown consistency level {s:?}: expected stale, session, linearizable or bounded:MS"
                )),
            },
        }
    }
}

/// A read at a consistency level (protocol 7), answered [`Reply::Read`]
/// with the position the answer reflects.
///
/// Sent by a client to the balancer, it names a level (or the balancer's
/// default) and the highest position the client has seen (its session
/// token; 0 for none). Sent by the balancer to a replica, `after` is the
/// session's position: the replica answers once it has applied at least
/// that far, waiting a bounded time, or refuses with `Behind`; with
/// [`Consistency::Linearizable`] only a leader answers, after confirming
/// its leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    /// The read: `Get`, `Ttl`, `Scan` or `DbSize`.
    pub op: Box<Op>,
    /// The level; `None` asks for the balancer's default.
    pub level: Option<Consistency>,
    /// The least position the answer must reflect.
    pub after: LogIndex,
}

impl Read {
    /// Checks that the wrapped op is a read of its own (not another `Read`,
    /// not a write) and valid.
    ///
    /// # Errors
    /// A human-readable reason, to send back as `Invalid`.
    pub fn validate(&self, max_value_len: usize) -> Result<(), String> {
        match &*self.op {
            op if op.is_read() => op.validate(max_value_len),
            other => Err(format!(
                "a consistent read wraps get, ttl, scan or dbsize, not {}",
                other.name()
            )),
        }
    }
}

/// The answer to a [`Read`]: the read's own reply, and the position it
/// reflects (the answering replica's applied index when it read). A session
/// keeps the highest one it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// What the read answered.
    pub reply: Box<Reply>,
    /// The position the answer reflects.
    pub index: LogIndex,
}

/// A leader's round of leadership confirmation (protocol 7): sent to every
/// follower as [`Message::LeadCheck`], echoed back as
/// [`Message::LeadConfirm`] by a follower that, when it read the check,
/// still followed `epoch`. Rounds only grow; a confirmation of round `r`
/// answers every round up to `r`.
///
/// [`Message::LeadCheck`]: super::Message::LeadCheck
/// [`Message::LeadConfirm`]: super::Message::LeadConfirm
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadCheck {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The round.
    pub round: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_print_back() {
        for level in [
            Consistency::Stale,
            Consistency::Session,
            Consistency::Linearizable,
            Consistency::Bounded { max_lag_ms: 250 },
        ] {
            assert_eq!(level.to_string().parse::<Consistency>().unwrap(), level);
        }
        assert_eq!(
            "LINEARIZABLE".parse::<Consistency>().unwrap(),
            Consistency::Linearizable
        );
        assert!("bounded:".parse::<Consistency>().is_err());
        assert!("bounded:-1".parse::<Consistency>().is_err());
        assert!("strong".parse::<Consistency>().is_err());
    }

    #[test]
    fn a_read_wraps_only_reads() {
        let read = |op| Read {
            op: Box::new(op),
            level: None,
            after: LogIndex(0),
        };
        assert!(read(Op::DbSize).validate(10).is_ok());
        assert!(read(Op::Get { key: "".into() }).validate(10).is_err());
        assert!(read(Op::Set {
            key: "k".into(),
            value: "v".into()
        })
        .validate(10)
        .is_err());
        assert!(read(Op::Read(read(Op::DbSize))).validate(10).is_err());
    }
}
