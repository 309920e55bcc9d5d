//! Replica configuration: everything `run` needs, parsed from the CLI or built
//! by tests.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use semikv_protocol::frame::DEFAULT_MAX_FRAME_LEN;
use semikv_protocol::{ReplicaId, DEFAULT_MAX_VALUE_LEN};

/// When the write-ahead log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before anything is acknowledged (group commit: one fsync covers every
    /// write queued while the previous one ran).
    Always,
    /// Every interval; a crash can lose the writes of the last interval on
    /// this replica (not on the cluster, as long as a follower has them).
    Interval(Duration),
    /// Never; the OS writes back when it likes.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .ok_or_else(|| format!("expected always, never or interval:MS, got {s:?}"))?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("interval must be whole milliseconds, got {ms:?}"))?;
                if ms == 0 {
                    return Err("interval must be at least 1 ms".to_string());
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// Default size of the log since the last snapshot that triggers a new one.
pub const DEFAULT_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// A replica's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The replica's id.
    pub id: ReplicaId,
    /// Where the WAL, snapshots and epoch live.
    pub data_dir: PathBuf,
    /// Fsync policy of the WAL.
    pub fsync: FsyncPolicy,
    /// Largest frame accepted or sent.
    pub max_frame_len: usize,
    /// Largest value accepted.
    pub max_value_len: usize,
    /// Log bytes since the last snapshot that trigger a new one.
    pub snapshot_bytes: usize,
    /// WAL segment size.
    pub segment_bytes: u64,
    /// Where to write the bound address once serving.
    pub ready_file: Option<PathBuf>,
    /// Connections the listener holds open at once (clients, balancers and
    /// followers together); past it new ones are refused with a frame that
    /// says so.
    pub max_connections: usize,
    /// Longest a request frame may take to arrive whole once its first
    /// bytes did; past it the connection is closed.
    pub frame_timeout: Duration,
    /// Bytes of large frames (over [`semikv_protocol::budget::SMALL_FRAME`])
    /// the accepted connections together may buffer while they arrive; a
    /// connection whose next frame does not fit stops reading until bytes
    /// come back. Never below `max_frame_len`. (The stream from a leader
    /// reads one frame at a time under a budget of its own.)
    pub max_buffered_input: usize,
    /// How long a client connection (not a balancer's or a follower's) may
    /// stay idle, nothing in flight and nothing sent, before it is closed;
    /// `None`: never (the default, like Redis's `timeout 0`).
    pub idle_timeout: Option<Duration>,
}

impl Config {
    /// Defaults for replica `id` with data in `data_dir`.
    pub fn new(id: ReplicaId, data_dir: PathBuf) -> Config {
        Config {
            id,
            data_dir,
            fsync: FsyncPolicy::Always,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
            segment_bytes: 64 * 1024 * 1024,
            ready_file: None,
            max_connections: 10_000,
            frame_timeout: semikv_protocol::codec::DEFAULT_FRAME_TIMEOUT,
            max_buffered_input: semikv_protocol::budget::DEFAULT_READ_BUDGET,
            idle_timeout: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fsync_policies() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:250".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
        assert!("interval:x".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
