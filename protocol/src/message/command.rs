//! Writes the leader evaluates (protocol 5): conditional and
//! read-modify-write [`Command`]s, what they answer ([`Outcome`]), and what
//! a read of a key's expiry answers ([`KeyTtl`]).
//!
//! A command is evaluated once, by the leader, in log order against the
//! state that includes every earlier write it accepted (committed or not).
//! What it logs is the deterministic result, a [`WriteOp::Batch`] of plain
//! sets and deletes, so followers replay it without evaluating anything and
//! a failover can never apply it twice.
//!
//! [`WriteOp::Batch`]: super::WriteOp::Batch

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::validate_key;
use crate::ids::{LogIndex, UnixMillis};

/// A write the leader evaluates against its newest state; answered with
/// [`Reply::Outcome`](super::Reply::Outcome) (or an error, with nothing
/// written). What each command reports in the [`Outcome`] is listed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `SET` with its options. `applied`: whether the value was written
    /// (`cond` held). `value`: the old value when `get_old` (`SET ... GET`),
    /// whether or not it was written. `int`: 0.
    Set {
        /// The key.
        key: Bytes,
        /// Its new value.
        value: Bytes,
        /// When to write (`NX`, `XX`).
        cond: Cond,
        /// The key's expiry afterwards: [`TtlChange::Persist`] for a plain
        /// `SET` (which drops a TTL), [`TtlChange::Keep`] for `KEEPTTL`.
        ttl: TtlChange,
        /// Whether to answer the old value (`GET`).
        get_old: bool,
    },
    /// `MSET` / `MSETNX`: every pair written by one log entry, or none.
    /// `applied`: whether they were written. `int`: 1 if written, else 0.
    /// Every key's TTL is dropped, as a plain `SET` does.
    MSet {
        /// The pairs; a key given twice takes its last value.
        pairs: Vec<(Bytes, Bytes)>,
        /// `MSETNX`: write nothing if any key exists.
        only_if_none_exist: bool,
    },
    /// `DEL` / `UNLINK` of any number of keys by one log entry. `int`: how
    /// many of them existed (a key given twice counts once). `applied`:
    /// whether any did.
    Delete {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: the value, read as a base-10
    /// `i64` (a missing key is 0), plus `by`. `int`: the new value. Fails
    /// with `NotAnInteger` or `Overflow`, writing nothing. The key's TTL is
    /// kept, as in Redis.
    IncrBy {
        /// The key.
        key: Bytes,
        /// What to add (negative to decrement).
        by: i64,
    },
    /// `APPEND`: the value with `value` after it (a missing key is empty).
    /// `int`: the new length. The key's TTL is kept.
    Append {
        /// The key.
        key: Bytes,
        /// What to append.
        value: Bytes,
    },
    /// `GETDEL`: the value, and the key deleted. `value`: the old value;
    /// `applied`: whether the key existed.
    GetDel {
        /// The key.
        key: Bytes,
    },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT` (`ttl` `At` or `After`)
    /// and `PERSIST` (`ttl` [`TtlChange::Persist`]). `applied`: whether the
    /// expiry changed (`1` in Redis); never for a missing key. An expiry at
    /// or before now deletes the key, as Redis does. `Keep` is refused.
    Expire {
        /// The key.
        key: Bytes,
        /// The new expiry.
        ttl: TtlChange,
        /// `NX`, `XX`, `GT`, `LT`.
        cond: ExpireCond,
    },
    /// `GETEX`: the value (`value`), and its expiry changed by `ttl`
    /// (`Keep`: a plain read; `Persist`: `PERSIST`). `applied`: whether the
    /// key existed.
    GetEx {
        /// The key.
        key: Bytes,
        /// What to do to its expiry.
        ttl: TtlChange,
    },
}

/// When a [`Command::Set`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    /// Always.
    Always,
    /// Only if the key does not exist (`NX`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
}

/// What a write does to a key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlChange {
    /// Leave it as it is (`KEEPTTL`, or a `GETEX` without options).
    Keep,
    /// Remove it: the key lives until deleted.
    Persist,
    /// Expire at this absolute time (`EXAT`, `PXAT`, `EXPIREAT`).
    At(UnixMillis),
    /// Expire this many milliseconds after the leader evaluates the write
    /// (`EX`, `PX`, `EXPIRE`): the leader's clock turns it into an absolute
    /// time, so only that clock matters, not the sender's.
    AfterMs(u64),
}

/// When a [`Command::Expire`] changes the expiry (Redis 7's options). A key
/// without an expiry counts as expiring never: later than any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCond {
    /// Always.
    Always,
    /// Only if the key has no expiry (`NX`).
    IfNone,
    /// Only if the key has an expiry (`XX`).
    IfSome,
    /// Only if the new expiry is later than the current one (`GT`).
    IfLater,
    /// Only if the new expiry is earlier than the current one (`LT`).
    IfEarlier,
    /// Only if the key has an expiry and the new one is earlier (`XX LT`;
    /// protocol 6).
    IfSomeAndEarlier,
}

/// What a [`Command`] did. Which fields mean something depends on the
/// command (see each); the others are `false`, `None` and 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The log position the answer reflects, committed by the time it is
    /// sent: the entry the command wrote; when it wrote nothing, the no-op
    /// it waited on (if it read a write not yet committed) or the leader's
    /// commit index (if it read only committed state). Either is at least
    /// as new as everything the command read, so a session token may use
    /// it as a `Written` index.
    pub index: LogIndex,
    /// Whether the command changed anything (see each command).
    pub applied: bool,
    /// A value the command reports, if any (see each command).
    pub value: Option<Bytes>,
    /// A number the command reports (see each command).
    pub int: i64,
}

/// A key's expiry, as [`Op::Ttl`](super::Op::Ttl) answers it (`TTL`,
/// `PTTL`, `EXPIRETIME`, and `EXISTS` for one key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyTtl {
    /// No such key (or it has expired): Redis's `-2`.
    NoKey,
    /// The key exists and never expires: Redis's `-1`.
    Persistent,
    /// The key expires.
    Expires {
        /// When, absolutely.
        at: UnixMillis,
        /// How long from now, by the answering replica's clock (at least 1:
        /// a key with 0 left is already hidden).
        remaining_ms: u64,
    },
}

/// Most keys one command may name. Bounded by the frame already; this also
/// bounds the work one evaluation does under the leader's lock.
pub const MAX_COMMAND_KEYS: usize = 1 << 20;

impl Command {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Set { .. } => "set",
            Command::MSet { .. } => "mset",
            Command::Delete { .. } => "del",
            Command::IncrBy { .. } => "incrby",
            Command::Append { .. } => "append",
            Command::GetDel { .. } => "getdel",
            Command::Expire { .. } => "expire",
            Command::GetEx { .. } => "getex",
        }
    }

    /// The first key the command names.
    pub fn first_key(&self) -> Option<&Bytes> {
        match self {
            Command::Set { key, .. }
            | Command::IncrBy { key, .. }
            | Command::Append { key, .. }
            | Command::GetDel { key }
            | Command::Expire { key, .. }
            | Command::GetEx { key, .. } => Some(key),
            Command::MSet { pairs, .. } => pairs.first().map(|(k, _)| k),
            Command::Delete { keys } => keys.first(),
        }
    }

    /// Checks key and value limits and arguments.
    ///
    /// # Errors
    /// A human-readable reason, to send back as `Invalid`.
    pub fn validate(&self, max_value_len: usize) -> Result<(), String> {
        let value_ok = |value: &Bytes| {
            if value.len() > max_value_len {
                return Err(format!(
                    "value of {} bytes exceeds the limit of {max_value_len} bytes",
                    value.len()
                ));
            }
            Ok(())
        };
        let count_ok = |n: usize| {
            if n == 0 {
                return Err("no keys given".to_string());
            }
            if n > MAX_COMMAND_KEYS {
                return Err(format!(
                    "{n} keys exceed the limit of {MAX_COMMAND_KEYS} per command"
                ));
            }
            Ok(())
        };
        match self {
            Command::Set { key, value, .. } | Command::Append { key, value } => {
                validate_key(key)?;
                value_ok(value)
            }
            Command::MSet { pairs, .. } => {
                count_ok(pairs.len())?;
                pairs.iter().try_for_each(|(key, value)| {
                    validate_key(key)?;
                    value_ok(value)
                })
            }
            Command::Delete { keys } => {
                count_ok(keys.len())?;
                keys.iter().try_for_each(|key| validate_key(key))
            }
            Command::IncrBy { key, .. } | Command::GetDel { key } | Command::GetEx { key, .. } => {
                validate_key(key)
            }
            Command::Expire { key, ttl, .. } => {
                validate_key(key)?;
                if *ttl == TtlChange::Keep {
                    return Err("an expire must set or remove the expiry".to_string());
                }
                Ok(())
            }
        }
    }

    /// Bytes of keys and values it carries, for frame-size estimates.
    pub fn payload_len(&self) -> usize {
        match self {
            Command::Set { key, value, .. } | Command::Append { key, value } => {
                key.len().saturating_add(value.len())
            }
            Command::MSet { pairs, .. } => pairs
                .iter()
                .map(|(k, v)| k.len().saturating_add(v.len()).saturating_add(8))
                .fold(0usize, usize::saturating_add),
            Command::Delete { keys } => keys
                .iter()
                .map(|k| k.len().saturating_add(4))
                .fold(0usize, usize::saturating_add),
            Command::IncrBy { key, .. }
            | Command::GetDel { key }
            | Command::Expire { key, .. }
            | Command::GetEx { key, .. } => key.len(),
        }
    }
}
