//! What a history is made of: one [`Event`] per operation a client ran,
//! with what it did ([`Action`]), when (`start`, `end`) and how it ended
//! from the client's point of view ([`Outcome`]).

use std::time::Instant;

use bytes::Bytes;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `Set key value`.
    Set(Bytes),
    /// `Delete key`.
    Delete,
    /// `Get key`, with the value it returned (meaningful when the outcome is
    /// [`Outcome::Ok`]).
    Get(Option<Bytes>),
}

/// How an operation ended, from its client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (a write: `Written`; a read: a value).
    Ok,
    /// Definitely not applied (`NotLeader`, `Unavailable`, `Invalid`, or
    /// never sent).
    Failed,
    /// May or may not have applied (`Indeterminate`, `NotEnoughReplicas`,
    /// a timeout, the connection breaking mid-flight).
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Event {
    /// Which workload client ran it.
    pub client: usize,
    /// The key.
    pub key: Bytes,
    /// What it did.
    pub action: Action,
    /// Just before the request was sent.
    pub start: Instant,
    /// Just after the answer (or the failure) arrived.
    pub end: Instant,
    /// How it ended.
    pub outcome: Outcome,
    /// The reply or error, for reports.
    pub detail: String,
}

impl Event {
    pub(super) fn is_write(&self) -> bool {
        !matches!(self.action, Action::Get(_))
    }

    /// When it last could have taken effect: never ends if unknown.
    pub(super) fn effective_end(&self) -> Option<Instant> {
        match self.outcome {
            Outcome::Unknown => None,
            _ => Some(self.end),
        }
    }
}
