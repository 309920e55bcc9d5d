//! The non-interactive front ends: script mode (commands read from a
//! non-terminal stdin, one per line, one result line each, flushed as it is
//! produced) and one-shot mode (one command from the command line).
//!
//! Input lines are bytes, not necessarily UTF-8; a trailing `\n` or `\r\n` is
//! not part of the command. `quit` ends a script early. Blank lines and
//! comments produce no output.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::command::{parse_words, Word};
use crate::session::{Outcome, Session};

/// What a script run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptSummary {
    /// Commands run (blank lines and comments excluded).
    pub commands: u64,
    /// Commands that failed.
    pub failed: u64,
}

impl ScriptSummary {
    /// Whether every command succeeded.
    pub fn all_ok(&self) -> bool {
        self.failed == 0
    }
}

/// Runs every line of `input` through `session`, writing one line per command
/// to `out` and flushing after each.
///
/// # Errors
/// Reading `input` or writing `out` failed; the summary so far is lost, the
/// output so far was flushed.
pub async fn run_script<R, W>(
    session: &mut Session,
    mut input: R,
    out: &mut W,
) -> std::io::Result<ScriptSummary>
where
    R: AsyncBufRead + Unpin,
    W: Write,
{
    let mut summary = ScriptSummary::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).await? == 0 {
            return Ok(summary);
        }
        let text = strip_newline(&line);
        let outcome = session.run_line(text).await;
        if outcome.quit {
            return Ok(summary);
        }
        if let Some(shown) = &outcome.text {
            summary.commands += 1;
            if !outcome.ok {
                summary.failed += 1;
            }
            writeln!(out, "{shown}")?;
            out.flush()?;
        }
    }
}

fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Runs one command given as command-line words. Each word is taken
/// literally (the shell already did the quoting), so `semikv set k "a b"`
/// stores `a b` and `semikv set k=v=w` stores `v=w` under `k`.
pub async fn run_once(session: &mut Session, words: Vec<OsString>) -> Outcome {
    let words: Vec<Word> = words
        .into_iter()
        .map(|w| Word::literal(w.into_vec()))
        .collect();
    match parse_words(words) {
        Ok(Some(command)) => session.execute(command).await,
        Ok(None) => Outcome::nothing(),
        Err(e) => Outcome::failed(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::output::Style;
    use crate::testing::FakeServer;
    use semikv_client::ClientConfig;

    fn session(addr: &str) -> Session {
        Session::new(
            addr,
            ClientConfig::default(),
            Style {
                json: false,
                one_line: true,
            },
        )
    }

    #[tokio::test]
    async fn script_prints_one_line_per_command_and_counts_failures() {
        let server = FakeServer::start().await;
        let mut s = session(&server.addr());
        let input: &[u8] =
            b"set a=1\r\n\n# comment\nget a\nget missing\nnope\nstatus\nset readonly=x\nping";
        let mut out = Vec::new();
        let summary = run_script(&mut s, input, &mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert_eq!(lines[0], "OK");
        assert_eq!(lines[1], "1");
        assert_eq!(lines[2], "(nil)");
        assert!(lines[3].starts_with("(error) unknown command"));
        let status: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
        assert_eq!(status["leader"], "127.0.0.1:9001");
        assert!(lines[5].starts_with("(error) NotLeader"));
        assert_eq!(lines[6], "PONG");
        assert_eq!(
            summary,
            ScriptSummary {
                commands: 7,
                failed: 2
            }
        );
    }

    #[tokio::test]
    async fn quit_stops_the_script() {
        let server = FakeServer::start().await;
        let mut s = session(&server.addr());
        let input: &[u8] = b"set a=1\nquit\nset b=2\n";
        let mut out = Vec::new();
        let summary = run_script(&mut s, input, &mut out).await.unwrap();
        assert_eq!(summary.commands, 1);
        assert_eq!(server.value(b"b"), None);
    }

    #[tokio::test]
    async fn non_utf8_lines_are_commands_too() {
        let server = FakeServer::start().await;
        let mut s = session(&server.addr());
        let input: &[u8] = b"set k \xff\xfe\nget k\n";
        let mut out = Vec::new();
        run_script(&mut s, input, &mut out).await.unwrap();
        assert_eq!(server.value(b"k").as_deref(), Some(&b"\xff\xfe"[..]));
        assert_eq!(String::from_utf8(out).unwrap(), "OK\n\"\\xff\\xfe\"\n");
    }

    #[tokio::test]
    async fn one_shot_words_are_literal() {
        let server = FakeServer::start().await;
        let mut s = session(&server.addr());
        let words = |ws: &[&str]| ws.iter().map(OsString::from).collect::<Vec<_>>();
        let o = run_once(&mut s, words(&["set", "k=v=w"])).await;
        assert_eq!(o.text.as_deref(), Some("OK"));
        assert_eq!(server.value(b"k").as_deref(), Some(&b"v=w"[..]));
        let o = run_once(&mut s, words(&["set", "a b", "\"c\""])).await;
        assert!(o.ok);
        assert_eq!(server.value(b"a b").as_deref(), Some(&b"\"c\""[..]));
        let o = run_once(&mut s, words(&["get", "a b"])).await;
        assert_eq!(o.text.as_deref(), Some(r#""\"c\"""#));
        let o = run_once(&mut s, words(&["get"])).await;
        assert!(!o.ok);
    }
}
