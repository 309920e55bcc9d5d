//! [`Proc`]: a child process owned by a guard. Dropping the guard SIGKILLs
//! and reaps the child, so a failing test never leaks a server.
//!
//! The child's stderr (and stdout) go to files, appended to across restarts,
//! so a failure can show what the process said.

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
