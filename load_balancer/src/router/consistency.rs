//! What a read at each consistency level becomes: the replicas that may
//! answer it ([`Target`]), the op sent to them, and how their answer is told
//! to the client ([`ReadPlan`]).
//!
//! - `stale`: any replica in the rotation; a plain read is sent as it is.
//! - `session`: any replica in the rotation, asked for the session's
//!   position; one that has not applied it in time answers `Behind`, and the
//!   read goes to the leader, which has applied every acknowledged position.
//! - `linearizable`: the leader only, which confirms it still leads first
//!   (see the server's `node::reads`).
//! - `bounded:MS`: a replica known to lag the leader's commits by less than
//!   MS milliseconds ([`crate::group::table::Table::lag_ms`]), else the
//!   leader.

use std::time::Duration;

use semikv_protocol::{Consistency, ErrorReply, LogIndex, Op, Read, Reply};

pub use crate::request::Target;

/// One read, ready to route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Where it may go.
    pub target: Target,
    /// What is sent to the replica.
    pub op: Op,
    /// Whether the client sent a plain read (get, ttl, scan, dbsize): its
    /// answer is unwrapped from the replica's [`Reply::Read`].
    pub plain: bool,
}

/// Whether `op` is a read the router plans (a consistent `Read` included).
pub fn is_read(op: &Op) -> bool {
    op.is_read() || matches!(op, Op::Read(_))
}

/// Plans the read `op` (see [`is_read`]): a plain one at `default`, a
/// `Read` at its own level (or `default`); `seen` is the session's
/// position, which `session` and `linearizable` reads must reflect.
pub fn plan(op: Op, default: Consistency, seen: LogIndex) -> ReadPlan {
    let (inner, level, after, plain) = match op {
        Op::Read(read) => (*read.op, read.level.unwrap_or(default), read.after, false),
        op => (op, default, LogIndex(0), true),
    };
    let target = match level {
        Consistency::Stale | Consistency::Session => Target::Rotation,
        Consistency::Linearizable => Target::Leader,
        Consistency::Bounded { max_lag_ms } => Target::Fresh(Duration::from_millis(max_lag_ms)),
    };
    if plain && level == Consistency::Stale {
        // Nothing to ask of the replica, nothing to tell: as before levels.
        return ReadPlan {
            target,
            op: inner,
            plain,
        };
    }
    let after = match level {
        Consistency::Session | Consistency::Linearizable => after.max(seen),
        // Freshness is the only promise: no wait for a position.
        Consistency::Stale | Consistency::Bounded { .. } => LogIndex(0),
    };
    ReadPlan {
        target,
        op: Op::Read(Read {
            op: Box::new(inner),
            level: Some(level),
            after,
        }),
        plain,
    }
}

/// What the client is told for the replica's `reply` to a read it sent
/// `plain` or not.
pub fn told(reply: Reply, plain: bool) -> Reply {
    match reply {
        Reply::Read(answer) if plain => *answer.reply,
        reply => reply,
    }
}

/// Whether the replica's `reply` sends the read to the leader instead: it
/// was behind the session's position.
pub fn to_leader(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(ErrorReply::Behind { .. }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use semikv_protocol::ReadAnswer;

    use super::*;

    fn get() -> Op {
        Op::Get {
            key: Bytes::from_static(b"k"),
        }
    }

    fn read(level: Option<Consistency>, after: u64) -> Op {
        Op::Read(Read {
            op: Box::new(get()),
            level,
            after: LogIndex(after),
        })
    }

    #[test]
    fn a_plain_stale_read_is_sent_as_it_is() {
        let plan = plan(get(), Consistency::Stale, LogIndex(9));
        assert_eq!(
            plan,
            ReadPlan {
                target: Target::Rotation,
                op: get(),
                plain: true
            }
        );
    }

    #[test]
    fn session_reads_carry_the_highest_position_seen() {
        let plain = plan(get(), Consistency::Session, LogIndex(9));
        assert_eq!(plain.op, read(Some(Consistency::Session), 9));
        assert!(plain.plain);
        let token = plan(read(None, 12), Consistency::Session, LogIndex(9));
        assert_eq!(token.op, read(Some(Consistency::Session), 12));
        assert!(!token.plain);
        let older = plan(read(None, 3), Consistency::Session, LogIndex(9));
        assert_eq!(older.op, read(Some(Consistency::Session), 9));
    }

    #[test]
    fn each_level_has_its_target() {
        let target = |level| plan(read(Some(level), 0), Consistency::Stale, LogIndex(0)).target;
        assert_eq!(target(Consistency::Stale), Target::Rotation);
        assert_eq!(target(Consistency::Session), Target::Rotation);
        assert_eq!(target(Consistency::Linearizable), Target::Leader);
        assert_eq!(
            target(Consistency::Bounded { max_lag_ms: 250 }),
            Target::Fresh(Duration::from_millis(250))
        );
        // A read's own level wins over the default.
        assert_eq!(
            plan(
                read(Some(Consistency::Stale), 0),
                Consistency::Linearizable,
                LogIndex(0)
            )
            .target,
            Target::Rotation
        );
    }

    #[test]
    fn stale_and_bounded_reads_wait_for_no_position() {
        for level in [Consistency::Stale, Consistency::Bounded { max_lag_ms: 5 }] {
            let plan = plan(read(Some(level), 7), Consistency::Session, LogIndex(9));
            assert_eq!(plan.op, read(Some(level), 0));
        }
    }

    #[test]
    fn plain_reads_are_told_the_inner_reply() {
        let answer = Reply::Read(ReadAnswer {
            reply: Box::new(Reply::Value(None)),
            index: LogIndex(4),
        });
        assert_eq!(told(answer.clone(), true), Reply::Value(None));
        assert_eq!(told(answer.clone(), false), answer);
        assert!(to_leader(&Reply::Error(ErrorReply::Behind {
            applied: LogIndex(1),
            wanted: LogIndex(2)
        })));
    }
}
