//! The checker's verdict: every broken guarantee as a [`Violation`] naming
//! the operations involved (indexes into the history), and the figures of
//! the run in a [`Report`].

use std::fmt;

use bytes::Bytes;

use super::history::Event;

/// A broken guarantee, naming the operations (indexes into the history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A read returned a value no `Set` of that key ever wrote.
    ReadOfUnwrittenValue {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The read.
        read: usize,
    },
    /// A read returned the value of a write reported failed-for-sure.
    ReadOfFailedWrite {
        /// The key.
        key: Bytes,
        /// The read.
        read: usize,
        /// The write.
        write: usize,
    },
    /// A read ended before the write of the value it returned started.
    ReadFromTheFuture {
        /// The key.
        key: Bytes,
        /// The read.
        read: usize,
        /// The write.
        write: usize,
    },
    /// The final state holds a value no `Set` of that key ever wrote.
    FinalValueUnwritten {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// The final state holds the value of a write reported failed-for-sure
    /// (a phantom).
    FinalValueOfFailedWrite {
        /// The key.
        key: Bytes,
        /// The write.
        write: usize,
    },
    /// An acknowledged write was lost: the final value was written by an
    /// operation that ended before it started.
    LostWrite {
        /// The key.
        key: Bytes,
        /// The acknowledged write.
        write: usize,
        /// The key's final value.
        final_value: Option<Bytes>,
    },
    /// A read returned a value that was later rolled back: its write is not
    /// in the final state and nothing that could have replaced it survived.
    RolledBackRead {
        /// The key.
        key: Bytes,
        /// The write whose value was read.
        write: usize,
        /// A read that returned it.
        read: usize,
        /// The key's final value.
        final_value: Option<Bytes>,
    },
}

/// The checker's verdict and the figures behind it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Operations in the history.
    pub ops: usize,
    /// Writes acknowledged.
    pub writes_acked: usize,
    /// Writes with an unknown outcome.
    pub writes_unknown: usize,
    /// Writes that failed for sure.
    pub writes_failed: usize,
    /// Reads that returned a value (or absence) and were checked.
    pub reads_checked: usize,
    /// Keys in the final state.
    pub keys: usize,
    /// Everything wrong, empty when the history is consistent.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether no guarantee was broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations with the operations they name, for a failure message.
    pub fn explain(&self, history: &[Event]) -> String {
        let mut out = format!("{self}\n");
        let show = |out: &mut String, what: &str, i: usize| {
            if let Some(e) = history.get(i) {
                out.push_str(&format!("    {what} #{i}: {e:?}\n"));
            }
        };
        for v in &self.violations {
            out.push_str(&format!("  {v:?}\n"));
            match v {
                Violation::ReadOfUnwrittenValue { read, .. } => show(&mut out, "read", *read),
                Violation::ReadOfFailedWrite { read, write, .. }
                | Violation::ReadFromTheFuture { read, write, .. }
                | Violation::RolledBackRead { read, write, .. } => {
                    show(&mut out, "read", *read);
                    show(&mut out, "write", *write);
                }
                Violation::FinalValueOfFailedWrite { write, .. }
                | Violation::LostWrite { write, .. } => show(&mut out, "write", *write),
                Violation::FinalValueUnwritten { .. } => {}
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ops={} writes_acked={} writes_unknown={} writes_failed={} reads_checked={} keys={} violations={}",
            self.ops,
            self.writes_acked,
            self.writes_unknown,
            self.writes_failed,
            self.reads_checked,
            self.keys,
            self.violations.len()
        )
    }
}
