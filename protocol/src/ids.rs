//! Newtypes for the numbers that must never be mixed up: epochs, log indexes,
//! replica ids and request ids.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// A leadership term. Each promotion uses a strictly higher epoch; a replica
    /// rejects admin and replication messages from lower epochs. Epoch 0 means
    /// "no leader was ever promoted".
    Epoch(u64)
);
id_newtype!(
    /// Position of an entry in the replicated log. The first entry has index 1;
    /// index 0 means "before the first entry" (an empty log).
    LogIndex(u64)
);
id_newtype!(
    /// A replica's number, as given on `semikv-server ID`.
    ReplicaId(u32)
);
id_newtype!(
    /// Chosen by the sender of a request and echoed in its response, so that a
    /// connection can carry many requests at once.
    RequestId(u64)
);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}
