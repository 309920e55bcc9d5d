//! A client's session: the highest log position it has seen ([`Token`]),
//! carried on every read so that the balancer answers from a replica that
//! holds at least that much, and the consistency level reads ask for.
//!
//! Every write's acknowledgement and every read's answer carries a position
//! (the log index it reflects). A [`crate::Client`] raises its token with
//! each one, and sends each plain read (get, ttl, scan, dbsize) as a
//! [`Read`] at its configured level with the token as the least position;
//! the answer comes back unwrapped. Passing the token to another
//! connection ([`crate::Client::connect_with_token`], or
//! [`crate::Client::observe`] with its number) carries read-your-writes
//! across connections, processes and failovers: a new leader holds every
//! acknowledged position.

use std::sync::atomic::{AtomicU64, Ordering};

use semikv_protocol::{Consistency, LogIndex, Op, Read, Reply};

/// The highest log position a session has seen; shared by every connection
/// of the session (cheap to clone behind an `Arc`).
#[derive(Debug, Default)]
pub struct Token(AtomicU64);

impl Token {
    /// A token that has seen `index` already (one handed over from another
    /// session).
    pub fn at(index: LogIndex) -> Token {
        Token(AtomicU64::new(index.0))
    }

    /// The highest position seen so far.
    pub fn get(&self) -> LogIndex {
        LogIndex(self.0.load(Ordering::Acquire))
    }

    /// Raises the token to `index` if it is higher.
    pub fn observe(&self, index: LogIndex) {
        self.0.fetch_max(index.0, Ordering::AcqRel);
    }

    /// Raises the token to the position `reply` carries, if any.
    pub fn note(&self, reply: &Reply) {
        match reply {
            Reply::Written { index } => self.observe(*index),
            Reply::Outcome(outcome) => self.observe(outcome.index),
            Reply::Read(answer) => self.observe(answer.index),
            _ => {}
        }
    }
}

/// `op` as the session sends it: a plain read wrapped in a [`Read`] at
/// `level` (`None`: the balancer's default) after `token`, anything else as
/// it is; and whether it was wrapped.
pub(crate) fn wrap(op: Op, level: Option<Consistency>, token: LogIndex) -> (Op, bool) {
    if !op.is_read() {
        return (op, false);
    }
    let read = Read {
        op: Box::new(op),
        level,
        after: token,
    };
    (Op::Read(read), true)
}

/// The reply to a read the session wrapped, unwrapped; any other as it is.
pub(crate) fn unwrap(reply: Reply, wrapped: bool) -> Reply {
    match reply {
        Reply::Read(answer) if wrapped => *answer.reply,
        reply => reply,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use semikv_protocol::ReadAnswer;

    use super::*;

    #[test]
    fn the_token_only_rises_with_positions() {
        let token = Token::default();
        token.note(&Reply::Written { index: LogIndex(5) });
        token.note(&Reply::Read(ReadAnswer {
            reply: Box::new(Reply::Value(None)),
            index: LogIndex(3),
        }));
        token.note(&Reply::Pong);
        assert_eq!(token.get(), LogIndex(5));
        token.observe(LogIndex(9));
        assert_eq!(token.get(), LogIndex(9));
    }

    #[test]
    fn plain_reads_are_wrapped_and_their_answers_unwrapped() {
        let get = Op::Get {
            key: Bytes::from_static(b"k"),
        };
        let (op, wrapped) = wrap(get.clone(), Some(Consistency::Linearizable), LogIndex(4));
        assert!(wrapped);
        assert_eq!(
            op,
            Op::Read(Read {
                op: Box::new(get),
                level: Some(Consistency::Linearizable),
                after: LogIndex(4)
            })
        );
        let set = Op::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
        };
        assert_eq!(wrap(set.clone(), None, LogIndex(4)), (set, false));
        let answer = Reply::Read(ReadAnswer {
            reply: Box::new(Reply::Value(None)),
            index: LogIndex(4),
        });
        assert_eq!(unwrap(answer.clone(), true), Reply::Value(None));
        assert_eq!(unwrap(answer.clone(), false), answer);
    }
}
