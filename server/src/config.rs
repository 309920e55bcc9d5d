//! Replica configuration: everything `run` needs, parsed from the CLI or built
//! by tests.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use semikv_protocol::blocking::Blocking;
use semikv_protocol::frame::DEFAULT_MAX_FRAME_LEN;
use semikv_protocol::net::Net;
use semikv_protocol::{ReplicaId, DEFAULT_MAX_VALUE_LEN};

use crate::clock::Clock;
use crate::storage::DataDir;

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

/// Smallest `--max-memory` accepted: below it a store holds a few thousand
/// small keys at most, and a figure that low is more likely a unit left
/// out (`512` for `512mb`) than a wish.
pub const MIN_MAX_MEMORY: u64 = 1 << 20;

/// Largest `--max-memory` accepted (1 PiB): more than any machine semikv
/// runs on, so a larger figure is a typo.
pub const MAX_MAX_MEMORY: u64 = 1 << 50;

/// Parses a `--max-memory` size: whole bytes, or a number with one of
/// Redis's units (`k`, `m`, `g`: powers of 1000; `kb`, `mb`, `gb`: powers
/// of 1024, as in `maxmemory 512mb`; `kib`, `mib`, `gib` too), any case.
///
/// # Errors
/// A message naming what is wrong: not a size, 0, below
/// [`MIN_MAX_MEMORY`] or above [`MAX_MAX_MEMORY`].
pub fn parse_max_memory(s: &str) -> Result<u64, String> {
    let not_a_size = || format!("expected bytes or a size such as 512mb or 2gb, got {s:?}");
    let too_large = || format!("{s} is above the largest limit accepted, 1 PiB");
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" | "kib" => 1 << 10,
        "m" => 1000 * 1000,
        "mb" | "mib" => 1 << 20,
        "g" => 1000 * 1000 * 1000,
        "gb" | "gib" => 1 << 30,
        _ => return Err(not_a_size()),
    };
    let number: u64 = match number.parse() {
        Ok(number) => number,
        Err(_) if number.is_empty() => return Err(not_a_size()),
        // Digits only, so too many of them for a u64.
        Err(_) => return Err(too_large()),
    };
    if number == 0 {
        return Err("0 would refuse every write; leave the flag out for no limit".to_string());
    }
    let bytes = number
        .checked_mul(scale)
        .filter(|&b| b <= MAX_MAX_MEMORY)
        .ok_or_else(too_large)?;
    if bytes < MIN_MAX_MEMORY {
        return Err(format!(
            "{s} is {bytes} bytes, below the smallest limit accepted, 1 MiB \
             ({MIN_MAX_MEMORY} bytes); did you leave out a unit, as in {number}mb?"
        ));
    }
    Ok(bytes)
}

/// Default size of the log since the last snapshot that triggers a new one.
pub const DEFAULT_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// A replica's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The replica's id.
    pub id: ReplicaId,
    /// Where the WAL, snapshots and epoch live, and the disk they are on.
    pub data_dir: DataDir,
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
    /// `--max-memory`: the bytes the store may grow to through writes this
    /// replica leads (see [`crate::storage::store::Store::bytes`]); past
    /// it they are refused with `OutOfMemory`. `None`: no limit (the
    /// default).
    pub max_memory: Option<u64>,
    /// `--cluster-secret-file`: when set, balancers and replicas must prove
    /// they hold it in their handshake, and clients are not served (they go
    /// through the balancer). `None`: anyone may take any role.
    pub cluster_secret: Option<semikv_protocol::auth::ClusterSecret>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`: TLS on the listener and, with
    /// a CA, on the stream from a leader, with balancers and replicas
    /// required to present a certificate the CA signed. `None`: plain TCP.
    pub tls: Option<std::sync::Arc<semikv_protocol::tls::Tls>>,
    /// The network the stream from a leader connects over (the listener
    /// is given to [`crate::run`] bound): the operating system's TCP, or a
    /// simulated one.
    pub net: Net,
    /// The address balancers and followers reach this replica at, as it
    /// reports it (the leader's address in its status). `None`: the
    /// listener's bound address, which is right unless it is the
    /// unspecified address (`0.0.0.0`) or behind a translation.
    pub advertise: Option<String>,
    /// Where blocking work runs (recovery, snapshots, epoch files, the
    /// WAL): [`Blocking::Threads`] for a real process (the default: the
    /// WAL writer on a thread of its own, the rest on tokio's blocking
    /// pool), [`Blocking::Inline`] for a deterministic simulation (all of
    /// it on the runtime's thread, the WAL writer an async task).
    pub blocking: Blocking,
    /// The wall clock key expiries are judged by: the system's (the
    /// default), or one a test or a simulation controls.
    pub clock: Clock,
}

impl Config {
    /// Defaults for replica `id` with data in `data_dir` on the real file
    /// system (a simulation replaces [`Config::data_dir`]).
    pub fn new(id: ReplicaId, data_dir: PathBuf) -> Config {
        Config {
            id,
            data_dir: DataDir::on_os(data_dir),
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
            max_memory: None,
            cluster_secret: None,
            tls: None,
            net: Net::Tokio,
            advertise: None,
            blocking: Blocking::Threads,
            clock: Clock::system(),
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

    #[test]
    fn parses_memory_limits_in_bytes_and_redis_units() {
        assert_eq!(parse_max_memory("2097152"), Ok(2 << 20));
        assert_eq!(parse_max_memory("512mb"), Ok(512 << 20));
        assert_eq!(parse_max_memory("512MiB"), Ok(512 << 20));
        assert_eq!(parse_max_memory("1gb"), Ok(1 << 30));
        assert_eq!(parse_max_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_max_memory("2000k"), Ok(2_000_000));
        assert_eq!(parse_max_memory("4096kb"), Ok(4 << 20));
        assert_eq!(parse_max_memory(" 3m "), Ok(3_000_000));
        assert_eq!(parse_max_memory("1048576b"), Ok(MIN_MAX_MEMORY));
    }

    #[test]
    fn refuses_memory_limits_that_are_no_limit_or_absurd() {
        for (arg, says) in [
            ("0", "leave the flag out"),
            ("0gb", "leave the flag out"),
            ("", "expected bytes"),
            ("mb", "expected bytes"),
            ("12 mb", "expected bytes"),
            ("1.5gb", "expected bytes"),
            ("-1", "expected bytes"),
            ("10tb", "expected bytes"),
            ("512", "did you leave out a unit, as in 512mb?"),
            ("1048575", "below the smallest limit"),
            ("1048577gb", "above the largest limit"),
            ("99999999999999999999", "above the largest limit"),
            ("18446744073709551615gb", "above the largest limit"),
        ] {
            let err = parse_max_memory(arg).expect_err(arg);
            assert!(err.contains(says), "{arg:?}: {err}");
        }
    }
}
