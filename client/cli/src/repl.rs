//! The interactive front end: a rustyline editor whose prompt shows the
//! address, with completion and hints for command names, history in
//! `$HOME/.semikv_history`, Ctrl-C clearing the line (or interrupting a
//! running command) and Ctrl-D leaving.

use std::borrow::Cow;
use std::path::PathBuf;

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Context, Editor, Helper};

use crate::session::Session;

/// Name of the history file in the user's home directory.
pub const HISTORY_FILE: &str = ".semikv_history";
/// Entries kept in the history file.
const HISTORY_LEN: usize = 1000;

/// Why the REPL stopped other than by the user leaving.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The terminal could not be read.
    #[error("terminal error: {0}")]
    Terminal(#[from] ReadlineError),
}

/// Completion and hints for command names. `local` adds `kill` and
/// `restart`.
#[derive(Debug, Clone, Copy)]
pub struct CommandHelper {
    /// Whether the local-cluster commands are offered.
    pub local: bool,
}

impl CommandHelper {
    fn names(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        crate::command::synopses(self.local)
    }

    /// Command names that start with `prefix` (case-insensitively).
    pub fn candidates(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.to_ascii_lowercase();
        self.names()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// The hint shown after the cursor at the end of `line`: the rest of the
    /// only command name it can start, or the arguments of the command it
    /// names.
    pub fn hint_for(&self, line: &str) -> Option<String> {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            return None;
        }
        match trimmed.split_once([' ', '\t']) {
            None => {
                let candidates = self.candidates(trimmed);
                let [only] = candidates.as_slice() else {
                    return None;
                };
                let (_, usage) = self.names().find(|(name, _)| name == only)?;
                let rest = only.get(trimmed.len()..)?;
                if usage.is_empty() {
                    Some(rest.to_string()).filter(|r| !r.is_empty())
                } else {
                    Some(format!("{rest} {usage}"))
                }
            }
            Some((word, args)) if args.trim().is_empty() => {
                let word = word.to_ascii_lowercase();
                let (_, usage) = self.names().find(|(name, _)| *name == word)?;
                Some(usage.to_string()).filter(|u| !u.is_empty())
            }
            Some(_) => None,
        }
    }
}

impl Completer for CommandHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = line.get(..pos).unwrap_or(line);
        let start = before.len() - before.trim_start().len();
        let word = &before[start..];
        // Only the first word is a command name; keys are not completed.
        if word.contains([' ', '\t']) {
            return Ok((pos, Vec::new()));
        }
        Ok((start, self.candidates(word)))
    }
}

impl Hinter for CommandHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        if pos < line.len() {
            return None;
        }
        self.hint_for(line)
    }
}

impl Highlighter for CommandHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        // Dim, so a hint is not mistaken for typed text.
        Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }
}

impl Validator for CommandHelper {}

impl Helper for CommandHelper {}

/// Where history is kept: `$HOME/.semikv_history`, or nowhere without HOME.
pub fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(HISTORY_FILE))
}

/// Runs the REPL on the terminal until the user leaves (`quit`, `exit`,
/// Ctrl-D). Commands run on `runtime`; Ctrl-C while one runs abandons it.
///
/// # Errors
/// [`ReplError`] when the terminal cannot be used.
pub fn run(session: &mut Session, runtime: &tokio::runtime::Runtime) -> Result<(), ReplError> {
    let config = Config::builder()
        .max_history_size(HISTORY_LEN)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .auto_add_history(false)
        .build();
    let mut editor: Editor<CommandHelper, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(CommandHelper {
        local: session.is_local(),
    }));
    let history = history_path();
    if let Some(path) = &history {
        // No history yet is normal.
        let _ = editor.load_history(path);
    }
    println!(
        "semikv: commands go to {} (type 'help'; Ctrl-D quits)",
        session.addr()
    );
    if session.is_local() {
        println!("local cluster: 'kill ID' and 'restart ID' stop and start a replica");
    }
    let prompt = format!("{}> ", session.addr());
    let result = loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ok(()),
            Err(e) => break Err(ReplError::Terminal(e)),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        let outcome = runtime.block_on(async {
            tokio::select! {
                outcome = session.run_line(line.as_bytes()) => Some(outcome),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        let Some(outcome) = outcome else {
            println!("(interrupted)");
            continue;
        };
        if let Some(text) = &outcome.text {
            println!("{text}");
        }
        if outcome.quit {
            break Ok(());
        }
    };
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("semikv: cannot save history to {}: {e}", path.display());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_filter_by_prefix_and_mode() {
        let plain = CommandHelper { local: false };
        let local = CommandHelper { local: true };
        assert_eq!(plain.candidates("s"), ["set", "scan", "status"]);
        assert_eq!(plain.candidates("G"), ["get", "getdel"]);
        assert_eq!(plain.candidates("k"), ["keys"]);
        assert_eq!(local.candidates("k"), ["keys", "kill"]);
        assert_eq!(plain.candidates("").len(), 23);
        assert_eq!(plain.candidates("t"), ["ttl", "token"]);
    }

    #[test]
    fn hints_complete_names_then_show_arguments() {
        let h = CommandHelper { local: false };
        assert_eq!(h.hint_for("getd").as_deref(), Some("el KEY"));
        assert_eq!(h.hint_for("ge"), None, "get or getdel");
        assert_eq!(h.hint_for("pi").as_deref(), Some("ng"));
        assert_eq!(
            h.hint_for("set ").as_deref(),
            Some("KEY=VALUE | KEY VALUE [nx|xx] [ex SECS|px MS|keepttl] [get]")
        );
        assert_eq!(h.hint_for("s"), None);
        assert_eq!(h.hint_for("ping"), None);
        assert_eq!(h.hint_for("ping "), None);
        assert_eq!(h.hint_for("get foo"), None);
        assert_eq!(h.hint_for(""), None);
        assert_eq!(h.hint_for("zzz"), None);
    }
}
