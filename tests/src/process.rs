//! [`Proc`]: a child process owned by a guard. Dropping the guard SIGKILLs
//! and reaps the child, so a failing test never leaks a server.
//!
//! The child's stderr (and stdout) go to files, appended to across restarts,
//! so a failure can show what the process said, and figures a process logs
//! can be read back from them ([`Proc::last_logged`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Lines of stderr [`Proc::stderr_tail`] returns.
pub const TAIL_LINES: usize = 40;

/// How often exit is polled while waiting for one.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// How often `/proc` is read while waiting for a SIGSTOP to land: fine, as
/// failover timings count from that moment.
const STOP_POLL: Duration = Duration::from_millis(1);

/// A running (or exited, not yet dropped) child process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stderr/stdout appended to
    /// `stderr_path` / `stderr_path` with extension `stdout`.
    ///
    /// # Errors
    /// The log files cannot be opened or the program cannot be started.
    pub fn spawn(name: &str, mut cmd: Command, stderr_path: &Path) -> anyhow::Result<Proc> {
        let mut stderr = append(stderr_path)?;
        // Restarts share the file; a marker shows where each run begins.
        writeln!(stderr, "---- harness: starting {name}: {cmd:?}")
            .with_context(|| format!("writing {}", stderr_path.display()))?;
        let stdout = append(&stderr_path.with_extension("stdout"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stderr_path: stderr_path.to_path_buf(),
            exit: None,
        })
    }

    /// The name given at spawn, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its stderr goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Its exit status if it has exited, without blocking.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("polling {}", self.name))?;
        }
        Ok(self.exit)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `signal` unless the child has already been reaped.
    ///
    /// # Errors
    /// `kill(2)` failed.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGKILL and reap: the process is gone when this returns.
    ///
    /// # Errors
    /// Signalling or reaping failed.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// SIGSTOP: freezes the process (its sockets stay open, nothing answers).
    ///
    /// # Errors
    /// `kill(2)` failed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: resumes a stopped process.
    ///
    /// # Errors
    /// `kill(2)` failed.
    pub fn cont(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Waits until the kernel reports the process stopped (state `T` in
    /// `/proc/PID/stat`): after [`Proc::stop`] returns, the signal may not
    /// have landed yet, and a measurement that starts "once the process is
    /// frozen" must wait for this.
    ///
    /// # Errors
    /// The process exited, `/proc` could not be read, or it was not stopped
    /// within `timeout`.
    pub async fn wait_stopped(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let path = format!("/proc/{}/stat", self.pid());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!("{} exited with {status} instead of stopping", self.name);
            }
            let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let state = proc_state(&stat);
            if state == Some("T") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not stopped within {timeout:?} (state {state:?})",
                    self.name
                );
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit.
    ///
    /// # Errors
    /// Signalling failed, or the process did not exit in time (it is then
    /// left running; the guard still kills it on drop).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    ///
    /// # Errors
    /// It did not exit in time (the error carries its stderr tail).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not exit within {timeout:?}; stderr tail:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// The last [`TAIL_LINES`] lines of its stderr (all runs, newest last).
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_path, TAIL_LINES)
    }

    /// How often `message` occurs in its stderr, over all its runs (a
    /// warning at each restart, say).
    ///
    /// # Errors
    /// The stderr file cannot be read.
    pub fn count_logged(&self, message: &str) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(&self.stderr_path)
            .with_context(|| format!("reading {}", self.stderr_path.display()))?;
        Ok(text.matches(message).count())
    }

    /// The most memory the process has held resident so far (`VmHWM` in
    /// `/proc/PID/status`), in bytes.
    ///
    /// # Errors
    /// The status file cannot be read (the process is gone) or has no such
    /// line.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmHWM:")
    }

    /// The memory the process holds resident now (`VmRSS` in
    /// `/proc/PID/status`), in bytes.
    ///
    /// # Errors
    /// As [`Proc::peak_rss_bytes`].
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmRSS:")
    }

    /// Bytes the process has passed to `write` and its kin so far, to
    /// files and sockets alike (`wchar` in `/proc/PID/io`).
    ///
    /// # Errors
    /// As [`Proc::peak_rss_bytes`].
    pub fn written_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/io", self.pid());
        let io = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        io.lines()
            .find_map(|line| line.strip_prefix("wchar:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .with_context(|| format!("no wchar line in {path}"))
    }

    /// The `/proc/PID/status` line starting with `key`, a size in KiB, in
    /// bytes.
    fn status_bytes(&self, key: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("no {key} line in {path}"))?;
        Ok(kib * 1024)
    }

    /// The value of `field` on the last line of its stderr that contains
    /// `message`: a figure a process logs as a structured `tracing` field
    /// (`3` from `... promoted new leader ... elapsed_ms=3`). `None`
    /// when no such line or field exists or the log cannot be read.
    pub fn last_logged(&self, message: &str, field: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.stderr_path).ok()?;
        let line = text.lines().rev().find(|l| l.contains(message))?;
        logged_field(line, field).map(str::to_string)
    }
}

/// The process state letter of a `/proc/PID/stat` line (`R`, `S`, `T`,
/// ...). It follows the command name, which is in parentheses and may itself
/// hold spaces and parentheses, so the last `)` is the anchor.
fn proc_state(stat: &str) -> Option<&str> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().next()
}

/// The value of `field=value` in a `tracing` fmt line (up to the next space).
fn logged_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let key = format!(" {field}=");
    let start = line.find(&key)? + key.len();
    let value = line.get(start..)?.split_whitespace().next()?;
    Some(value)
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The last `lines` lines of the file at `path`, or a note that it is
/// unreadable.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(proc_state("42 (semikv-server) T 1 42"), Some("T"));
        assert_eq!(proc_state("42 (a) b (c)) S 1"), Some("S"));
        assert_eq!(proc_state("garbage"), None);
    }

    #[test]
    fn a_logged_field_is_read_up_to_the_next_space() {
        let line = "2026-12-06T02:50:00Z  INFO semikv_lb::group::election::ballot: \
                    promoted new leader leader=127.0.0.1:4 epoch=7 elapsed_ms=12";
        assert_eq!(logged_field(line, "elapsed_ms"), Some("12"));
        assert_eq!(logged_field(line, "epoch"), Some("7"));
        assert_eq!(logged_field(line, "ms"), None);
        assert_eq!(logged_field(line, "missing"), None);
    }
}
