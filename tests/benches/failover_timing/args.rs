//! The harness's command line: `failover_timing [SERVER_BIN] [ROUNDS]
//! [--mode kill|stop|both] [--hold-ms MS] [--keep-logs]`.

use std::path::PathBuf;
use std::time::Duration;

use crate::Mode;

/// Rounds per mode when none are given.
const DEFAULT_ROUNDS: usize = 10;

/// What the command line asks for.
pub struct Options {
    /// A `semikv-server` to run instead of the one built in this profile.
    pub server: Option<PathBuf>,
    /// Rounds per mode.
    pub rounds: usize,
    /// The modes, in order.
    pub modes: Vec<Mode>,
    /// How long a stopped leader stays stopped after the first write on the
    /// new leader.
    pub hold: Duration,
    /// Keep the temp dir (data and logs) even when all went well.
    pub keep_logs: bool,
}

pub const USAGE: &str = "usage: failover_timing [SERVER_BIN] [ROUNDS] [--mode kill|stop|both] \
                         [--hold-ms MS] [--keep-logs]";

/// Parses `args` (the program name first). A first positional argument
/// that is a number is ROUNDS: SERVER_BIN may be left out.
///
/// # Errors
/// The message to print, usage included.
pub fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut positional = Vec::new();
    let mut modes = vec![Mode::Kill, Mode::Stop];
    let mut hold = Duration::ZERO;
    let mut keep_logs = false;
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => {
                modes = match args.next().as_deref() {
                    Some("kill") => vec![Mode::Kill],
                    Some("stop") => vec![Mode::Stop],
                    Some("both") => vec![Mode::Kill, Mode::Stop],
                    other => return Err(format!("bad --mode {other:?}\n{USAGE}")),
                }
            }
            "--hold-ms" => {
                let value = args.next().unwrap_or_default();
                let ms = value
                    .parse()
                    .map_err(|_| format!("bad --hold-ms {value:?}\n{USAGE}"))?;
                hold = Duration::from_millis(ms);
            }
            "--keep-logs" => keep_logs = true,
            // What `cargo bench` adds to a bench binary's arguments.
            "--bench" => {}
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}\n{USAGE}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter().peekable();
    let server = match positional.peek() {
        Some(first) if first.parse::<usize>().is_err() => positional.next().map(PathBuf::from),
        _ => None,
    };
    let rounds = match positional.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("ROUNDS must be a number, not {s:?}\n{USAGE}"))?,
        None => DEFAULT_ROUNDS,
    };
    if positional.next().is_some() {
        return Err(USAGE.into());
    }
    Ok(Options {
        server,
        rounds,
        modes,
        hold,
        keep_logs,
    })
}
