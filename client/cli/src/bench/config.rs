//! What a run is asked to do ([`BenchConfig`], [`Stop`]) and the settings it refuses.

use std::time::Duration;

use semikv_client::{ClientConfig, ClientError};

/// Smallest `--value-size`: room for a `client:seq:` tag in any realistic
/// run (a longer tag makes that value longer, never unparseable).
const MIN_VALUE_SIZE: usize = 16;

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests in total.
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Balancer (or replica) address.
    pub addr: String,
    /// Connections.
    pub clients: u32,
    /// Requests in flight per connection.
    pub pipeline: u32,
    /// When to stop.
    pub stop: Stop,
    /// Relative weight of sets.
    pub set_weight: u32,
    /// Relative weight of gets.
    pub get_weight: u32,
    /// Keys per client.
    pub keyspace: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Seed of the key and op choices.
    pub seed: u64,
    /// Write every key once before the measured run, so gets read values
    /// (not misses); those writes are neither timed nor counted.
    pub prefill: bool,
    /// Connection settings.
    pub client: ClientConfig,
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The settings make no sense.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// The first connection failed: nothing to measure.
    #[error("cannot reach {addr}: {error}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why (shown in the message, so deliberately not a `source`).
        error: ClientError,
    },
}

impl BenchConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] naming the first bad setting.
    pub(super) fn validate(&self) -> Result<(), BenchError> {
        let invalid = |m: &str| Err(BenchError::Invalid(m.to_string()));
        if self.clients == 0 {
            return invalid("--clients must be at least 1");
        }
        if self.pipeline == 0 {
            return invalid("--pipeline must be at least 1");
        }
        if self.set_weight == 0 && self.get_weight == 0 {
            return invalid("--ratio must not be 0:0");
        }
        if self.keyspace < u64::from(self.pipeline) {
            return invalid("--keyspace must be at least --pipeline");
        }
        if self.value_size < MIN_VALUE_SIZE {
            return invalid("--value-size must be at least 16 (the value carries its tag)");
        }
        match self.stop {
            Stop::Requests(0) => invalid("--requests must be at least 1"),
            Stop::Duration(d) if d.is_zero() => invalid("--duration must be positive"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(super) mod tests {
    use super::*;

    /// A small run: 4 clients of 4 lanes over 64 keys, 2000 requests.
    pub(in crate::bench) fn config(addr: String) -> BenchConfig {
        BenchConfig {
            addr,
            clients: 4,
            pipeline: 4,
            stop: Stop::Requests(2000),
            set_weight: 1,
            get_weight: 1,
            keyspace: 64,
            value_size: 32,
            seed: 1,
            prefill: false,
            client: ClientConfig::default(),
        }
    }

    #[test]
    fn settings_are_validated() {
        let ok = config("x".into());
        assert!(ok.validate().is_ok());
        for bad in [
            BenchConfig {
                clients: 0,
                ..ok.clone()
            },
            BenchConfig {
                pipeline: 0,
                ..ok.clone()
            },
            BenchConfig {
                set_weight: 0,
                get_weight: 0,
                ..ok.clone()
            },
            BenchConfig {
                keyspace: 2,
                ..ok.clone()
            },
            BenchConfig {
                value_size: 3,
                ..ok.clone()
            },
            BenchConfig {
                stop: Stop::Requests(0),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
