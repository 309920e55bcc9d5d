//! The writes a leader evaluates and the expiry read (protocol 5), and the
//! reads about every key (protocol 6), as typed methods of [`Client`] and
//! [`RetryingClient`]: conditional sets, counters, appends, multi-key sets
//! and deletes, expiries, scans and key counts. Each is one request and,
//! for a write, one log entry: all or nothing.
//!
//! A [`RetryingClient`] retries them as it retries any write: only when
//! they certainly were not applied.

use bytes::Bytes;
use semikv_protocol::{
    Command, Cond, ExpireCond, KeyCount, KeyPage, KeyTtl, Op, Outcome, Reply, Scan, TtlChange,
};

use crate::conn::{unexpected, Client, ClientError};
use crate::retry::RetryingClient;

/// A command's reply as its outcome; an error reply or another reply is an
/// error.
fn outcome_of(reply: Reply) -> Result<Outcome, ClientError> {
    match reply {
        Reply::Outcome(outcome) => Ok(outcome),
        other => Err(unexpected("command", other)),
    }
}

/// A `Ttl` reply as the key's expiry.
fn ttl_of(reply: Reply) -> Result<KeyTtl, ClientError> {
    match reply {
        Reply::Ttl(ttl) => Ok(ttl),
        other => Err(unexpected("ttl", other)),
    }
}

/// A `Scan` reply as its page.
fn page_of(reply: Reply) -> Result<KeyPage, ClientError> {
    match reply {
        Reply::Keys(page) => Ok(page),
        other => Err(unexpected("scan", other)),
    }
}

/// A `DbSize` reply as the count.
fn count_of(reply: Reply) -> Result<KeyCount, ClientError> {
    match reply {
        Reply::KeyCount(count) => Ok(count),
        other => Err(unexpected("dbsize", other)),
    }
}

/// Typed methods over `command` and `request`, the same for both clients
/// (their receivers differ: `&self` for the cheap-to-clone connection,
/// `&mut self` for the retrying one).
macro_rules! command_methods {
    ($client:ty, $this:tt, $($borrow:tt)+) => {
        impl $client {
            /// Sends a command to the leader and returns what it did once
            /// committed (see [`Command`] for each one's fields).
            ///
            /// # Errors
            /// As `set`; [`ClientError::Server`] with `NotAnInteger` or
            /// `Overflow` for an increment that cannot apply (nothing was
            /// written).
            pub async fn command($($borrow)+ $this, command: Command) -> Result<Outcome, ClientError> {
                outcome_of($this.request(Op::Command(command)).await?)
            }

            /// `key`'s expiry: [`KeyTtl::NoKey`], [`KeyTtl::Persistent`], or
            /// when it expires and how long that is from now.
            ///
            /// # Errors
            /// As `get`.
            pub async fn ttl($($borrow)+ $this, key: impl Into<Bytes>) -> Result<KeyTtl, ClientError> {
                ttl_of($this.request(Op::Ttl { key: key.into() }).await?)
            }

            /// Writes `key` if `cond` holds (`NX`, `XX`), with its expiry
            /// set as `ttl` says; whether it was written.
            ///
            /// # Errors
            /// As `command`.
            pub async fn set_with(
                $($borrow)+ $this,
                key: impl Into<Bytes>,
                value: impl Into<Bytes>,
                cond: Cond,
                ttl: TtlChange,
            ) -> Result<bool, ClientError> {
                let command = Command::Set {
                    key: key.into(),
                    value: value.into(),
                    cond,
                    ttl,
                    get_old: false,
                };
                Ok($this.command(command).await?.applied)
            }

            /// Adds `by` to the integer at `key` (0 if missing); the new value.
            ///
            /// # Errors
            /// As `command`.
            pub async fn incr_by(
                $($borrow)+ $this,
                key: impl Into<Bytes>,
                by: i64,
            ) -> Result<i64, ClientError> {
                let command = Command::IncrBy { key: key.into(), by };
                Ok($this.command(command).await?.int)
            }

            /// Appends `value` to `key`'s value; the new length.
            ///
            /// # Errors
            /// As `command`.
            pub async fn append(
                $($borrow)+ $this,
                key: impl Into<Bytes>,
                value: impl Into<Bytes>,
            ) -> Result<i64, ClientError> {
                let command = Command::Append {
                    key: key.into(),
                    value: value.into(),
                };
                Ok($this.command(command).await?.int)
            }

            /// Writes every pair in one log entry (`MSET`), or with
            /// `only_if_none_exist` none if any key exists (`MSETNX`);
            /// whether they were written.
            ///
            /// # Errors
            /// As `command`.
            pub async fn mset(
                $($borrow)+ $this,
                pairs: Vec<(Bytes, Bytes)>,
                only_if_none_exist: bool,
            ) -> Result<bool, ClientError> {
                let command = Command::MSet {
                    pairs,
                    only_if_none_exist,
                };
                Ok($this.command(command).await?.applied)
            }

            /// Deletes every key in one log entry; how many existed.
            ///
            /// # Errors
            /// As `command`.
            pub async fn delete_keys(
                $($borrow)+ $this,
                keys: Vec<Bytes>,
            ) -> Result<i64, ClientError> {
                Ok($this.command(Command::Delete { keys }).await?.int)
            }

            /// Sets (or with [`TtlChange::Persist`] removes) `key`'s expiry;
            /// whether it changed. An expiry in the past deletes the key.
            ///
            /// # Errors
            /// As `command`.
            pub async fn expire(
                $($borrow)+ $this,
                key: impl Into<Bytes>,
                ttl: TtlChange,
            ) -> Result<bool, ClientError> {
                let command = Command::Expire {
                    key: key.into(),
                    ttl,
                    cond: ExpireCond::Always,
                };
                Ok($this.command(command).await?.applied)
            }

            /// One page of a scan over every key: start with cursor 0 and
            /// pass each page's `cursor` to the next call until it is 0.
            /// `count` keys are examined per page (a hint, see [`Scan`]),
            /// and those `pattern` (a Redis glob) matches are returned.
            /// Every key that exists from the first page to the last is
            /// returned, once; a key written or deleted meanwhile may or
            /// may not be. Pages may come from different replicas, each as
            /// up to date as a `get` from it.
            ///
            /// # Errors
            /// As `get`; [`ClientError::Server`] with `Invalid` for a count
            /// of 0 or a pattern over 1 KiB.
            pub async fn scan(
                $($borrow)+ $this,
                cursor: u64,
                count: u32,
                pattern: Option<Bytes>,
            ) -> Result<KeyPage, ClientError> {
                let scan = Scan { cursor, count, pattern };
                page_of($this.request(Op::Scan(scan)).await?)
            }

            /// Every key `pattern` matches (all keys for `None`), by a whole
            /// scan of pages of 1,000 (see `scan` for what it promises).
            ///
            /// # Errors
            /// As `scan`.
            pub async fn keys($($borrow)+ $this, pattern: Option<Bytes>) -> Result<Vec<Bytes>, ClientError> {
                let mut keys = Vec::new();
                let mut cursor = 0;
                loop {
                    let page = $this.scan(cursor, 1000, pattern.clone()).await?;
                    keys.extend(page.keys);
                    if page.cursor == 0 {
                        return Ok(keys);
                    }
                    cursor = page.cursor;
                }
            }

            /// The number of keys (expired ones not yet deleted included) and
            /// of those with an expiry, on one replica.
            ///
            /// # Errors
            /// As `get`.
            pub async fn db_size($($borrow)+ $this) -> Result<KeyCount, ClientError> {
                count_of($this.request(Op::DbSize).await?)
            }
        }
    };
}

command_methods!(Client, self, &);
command_methods!(RetryingClient, self, &mut);

#[cfg(test)]
mod tests {
    use semikv_protocol::{ErrorReply, LogIndex, UnixMillis};

    use super::*;

    #[test]
    fn replies_map_to_typed_results() {
        let o = Outcome {
            index: LogIndex(3),
            applied: true,
            value: None,
            int: 7,
        };
        assert_eq!(outcome_of(Reply::Outcome(o.clone())).unwrap(), o);
        assert!(matches!(
            outcome_of(Reply::Error(ErrorReply::NotAnInteger)),
            Err(ClientError::Server(ErrorReply::NotAnInteger))
        ));
        assert!(matches!(
            outcome_of(Reply::Pong),
            Err(ClientError::UnexpectedReply { .. })
        ));
        let ttl = KeyTtl::Expires {
            at: UnixMillis(5),
            remaining_ms: 1,
        };
        assert_eq!(ttl_of(Reply::Ttl(ttl)).unwrap(), ttl);
    }
}
