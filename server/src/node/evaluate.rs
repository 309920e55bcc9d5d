//! Evaluating a [`Command`] into the plain mutations the leader logs: a pure
//! function of the command, the time, and the state of the keys it reads
//! (which the leader takes from its newest proposed state, see
//! `pending.rs`). Followers never evaluate: they apply the mutations.
//!
//! Expired keys read as absent. A key the command found expired and does
//! not write itself gets a delete in the same entry, so the leader's lazy
//! expiry goes through the log like every other change.

use std::collections::HashMap;

use bytes::Bytes;
use semikv_protocol::{
    Command, Cond, ErrorReply, ExpireCond, LogIndex, Mutation, Outcome, TtlChange, UnixMillis,
};

/// A key's state as the leader last proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// Its value.
    pub value: Bytes,
    /// When it expires; `None`: never.
    pub expires_at: Option<UnixMillis>,
}

/// What evaluating a command gave.
#[derive(Debug)]
pub struct Evaluation {
    /// What to log, in order; empty when nothing changes.
    pub mutations: Vec<Mutation>,
    /// The answer (its `index` is filled in once logged), or the error to
    /// answer with. An error comes with no mutations.
    pub answer: Result<Outcome, ErrorReply>,
    /// The newest uncommitted log entry whose effect the evaluation read
    /// (0 if it read only committed state): an answer that writes nothing
    /// must not be sent before that entry commits.
    pub read_from: LogIndex,
}

/// Reads keys through the writes the command made so far, records which
/// expired keys it met and which uncommitted entries it read.
struct Scratch<'a, F> {
    state: &'a F,
    now: UnixMillis,
    mutations: Vec<Mutation>,
    /// Key to its position in `mutations`.
    written: HashMap<Bytes, usize>,
    expired: Vec<Bytes>,
    read_from: LogIndex,
}

impl<'a, F> Scratch<'a, F>
where
    F: Fn(&Bytes) -> (Option<KeyState>, LogIndex),
{
    fn new(state: &'a F, now: UnixMillis) -> Self {
        Scratch {
            state,
            now,
            mutations: Vec::new(),
            written: HashMap::new(),
            expired: Vec::new(),
            read_from: LogIndex(0),
        }
    }

    /// `key`'s live state: what this command wrote to it, else the
    /// proposed state unless it has expired.
    fn live(&mut self, key: &Bytes) -> Option<KeyState> {
        if let Some(&at) = self.written.get(key) {
            let m = &self.mutations[at];
            return m.value.clone().map(|value| KeyState {
                value,
                expires_at: m.expires_at,
            });
        }
        let (state, from) = (self.state)(key);
        self.read_from = self.read_from.max(from);
        match state {
            Some(s) if s.expires_at.is_some_and(|at| at <= self.now) => {
                self.expired.push(key.clone());
                None
            }
            other => other,
        }
    }

    /// Sets `key` (an expiry at or before now deletes it instead: the key
    /// would be hidden at once, so it is not kept).
    fn set(&mut self, key: &Bytes, value: Bytes, expires_at: Option<UnixMillis>) {
        if expires_at.is_some_and(|at| at <= self.now) {
            self.delete(key);
            return;
        }
        self.write(key, Some(value), expires_at);
    }

    fn delete(&mut self, key: &Bytes) {
        self.write(key, None, None);
    }

    fn write(&mut self, key: &Bytes, value: Option<Bytes>, expires_at: Option<UnixMillis>) {
        let mutation = Mutation {
            key: key.clone(),
            value,
            expires_at,
        };
        match self.written.get(key) {
            Some(&at) => self.mutations[at] = mutation,
            None => {
                self.written.insert(key.clone(), self.mutations.len());
                self.mutations.push(mutation);
            }
        }
    }

    /// The mutations, with a delete for every expired key met and not
    /// written (once each).
    fn finish(mut self, answer: Result<Outcome, ErrorReply>) -> Evaluation {
        if answer.is_ok() {
            for key in std::mem::take(&mut self.expired) {
                if !self.written.contains_key(&key) {
                    self.delete(&key);
                }
            }
        } else {
            // An error writes nothing, lazy deletes included: an error is
            // "nothing happened".
            self.mutations.clear();
        }
        Evaluation {
            mutations: self.mutations,
            answer,
            read_from: self.read_from,
        }
    }
}

/// The absolute expiry `ttl` asks for at `now`, given the key's current
/// one: `None` for never.
fn resolve(ttl: TtlChange, current: Option<UnixMillis>, now: UnixMillis) -> Option<UnixMillis> {
    match ttl {
        TtlChange::Keep => current,
        TtlChange::Persist => None,
        TtlChange::At(at) => Some(at),
        TtlChange::AfterMs(ms) => Some(UnixMillis(now.0.saturating_add(ms))),
    }
}

/// Parses a value as Redis's `string2ll` does: base 10, an optional `-`,
/// no `+`, no spaces, no leading zeros (except `0` itself), within `i64`.
pub fn parse_i64(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let leading_zero = digits.len() > 1 && digits[0] == b'0';
    let negative_zero = value.len() == 2 && value == b"-0";
    if digits.is_empty() || leading_zero || negative_zero || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // ASCII digits and an optional sign: valid UTF-8.
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// An outcome with the given fields (index filled in later).
fn outcome(applied: bool, value: Option<Bytes>, int: i64) -> Outcome {
    Outcome {
        index: LogIndex(0),
        applied,
        value,
        int,
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Evaluates `command` at `now` against `state` (a key's proposed state and
/// the uncommitted entry it comes from, or 0). `max_value_len` bounds the
/// values it may create (an `Append`).
pub fn evaluate<F>(
    command: &Command,
    now: UnixMillis,
    max_value_len: usize,
    state: &F,
) -> Evaluation
where
    F: Fn(&Bytes) -> (Option<KeyState>, LogIndex),
{
    let mut s = Scratch::new(state, now);
    let answer = match command {
        Command::Set {
            key,
            value,
            cond,
            ttl,
            get_old,
        } => {
            let current = s.live(key);
            let holds = match cond {
                Cond::Always => true,
                Cond::IfAbsent => current.is_none(),
                Cond::IfPresent => current.is_some(),
            };
            let current_expiry = current.as_ref().and_then(|c| c.expires_at);
            let old = current.map(|c| c.value).filter(|_| *get_old);
            if holds {
                s.set(key, value.clone(), resolve(*ttl, current_expiry, now));
            }
            Ok(outcome(holds, old, 0))
        }
        Command::MSet {
            pairs,
            only_if_none_exist,
        } => {
            let mut any = false;
            if *only_if_none_exist {
                for (key, _) in pairs {
                    any |= s.live(key).is_some();
                }
            }
            if any {
                Ok(outcome(false, None, 0))
            } else {
                for (key, value) in pairs {
                    s.set(key, value.clone(), None);
                }
                Ok(outcome(true, None, 1))
            }
        }
        Command::Delete { keys } => {
            let mut existed = 0usize;
            for key in keys {
                if s.live(key).is_some() {
                    existed += 1;
                    s.delete(key);
                }
            }
            Ok(outcome(existed > 0, None, count(existed)))
        }
        Command::IncrBy { key, by } => {
            let current = s.live(key);
            let (old, expires_at) = match &current {
                None => (Some(0), None),
                Some(c) => (parse_i64(&c.value), c.expires_at),
            };
            match old {
                None => Err(ErrorReply::NotAnInteger),
                Some(old) => match old.checked_add(*by) {
                    None => Err(ErrorReply::Overflow),
                    Some(new) => {
                        s.set(key, Bytes::from(new.to_string()), expires_at);
                        Ok(outcome(true, None, new))
                    }
                },
            }
        }
        Command::Append { key, value } => {
            let current = s.live(key);
            let (old, expires_at) = match current {
                None => (Bytes::new(), None),
                Some(c) => (c.value, c.expires_at),
            };
            let len = old.len().saturating_add(value.len());
            if len > max_value_len {
                Err(ErrorReply::Invalid {
                    reason: format!(
                        "the appended value of {len} bytes would exceed the limit of \
                         {max_value_len} bytes"
                    ),
                })
            } else {
                let mut new = Vec::with_capacity(len);
                new.extend_from_slice(&old);
                new.extend_from_slice(value);
                s.set(key, Bytes::from(new), expires_at);
                Ok(outcome(true, None, count(len)))
            }
        }
        Command::GetDel { key } => match s.live(key) {
            Some(c) => {
                s.delete(key);
                Ok(outcome(true, Some(c.value), 0))
            }
            None => Ok(outcome(false, None, 0)),
        },
        Command::Expire { key, ttl, cond } => match s.live(key) {
            None => Ok(outcome(false, None, 0)),
            Some(c) => {
                let new = resolve(*ttl, c.expires_at, now);
                // A key without an expiry expires never: later than any time.
                let later = |a: Option<UnixMillis>, b: Option<UnixMillis>| match (a, b) {
                    (None, None) | (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some(a), Some(b)) => a > b,
                };
                let holds = match cond {
                    ExpireCond::Always => true,
                    ExpireCond::IfNone => c.expires_at.is_none(),
                    ExpireCond::IfSome => c.expires_at.is_some(),
                    ExpireCond::IfLater => later(new, c.expires_at),
                    ExpireCond::IfEarlier => later(c.expires_at, new),
                    ExpireCond::IfSomeAndEarlier => {
                        c.expires_at.is_some() && later(c.expires_at, new)
                    }
                };
                // Persisting a key that never expires changes nothing; an
                // expiry set again to the same time counts, as in Redis.
                let applies = holds && (new.is_some() || new != c.expires_at);
                if applies {
                    s.set(key, c.value, new);
                }
                Ok(outcome(applies, None, 0))
            }
        },
        Command::GetEx { key, ttl } => match s.live(key) {
            None => Ok(outcome(false, None, 0)),
            Some(c) => {
                let new = resolve(*ttl, c.expires_at, now);
                if new != c.expires_at {
                    s.set(key, c.value.clone(), new);
                }
                Ok(outcome(true, Some(c.value), 0))
            }
        },
    };
    s.finish(answer)
}

#[cfg(test)]
mod tests;
