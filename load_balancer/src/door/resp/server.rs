//! The server-level commands a client asks at start-up: `COMMAND` (with
//! the table of commands this door knows) and `CONFIG GET`, with Redis's
//! glob patterns (matched by `semikv_protocol::glob`).

use bytes::Bytes;
use semikv_protocol::glob::glob;

use super::command::{lower, text, wrong_arity};
use super::reply::Resp;

/// A command's name, arity, flags, first key, last key and key step.
pub type CommandInfo = (&'static str, i64, &'static [&'static str], i64, i64, i64);

/// The commands this door knows, with Redis's arity (negative: at least
/// that many arguments, name included), flags, and key positions (first,
/// last, step), for `COMMAND`.
pub const COMMANDS: &[CommandInfo] = &[
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("setex", 4, &["write", "denyoom"], 1, 1, 1),
    ("psetex", 4, &["write", "denyoom"], 1, 1, 1),
    ("getset", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getdel", 2, &["write", "fast"], 1, 1, 1),
    ("getex", -2, &["write", "fast"], 1, 1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("msetnx", -3, &["write", "denyoom"], 1, -1, 2),
    ("del", -2, &["write"], 1, -1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("type", 2, &["readonly", "fast"], 1, 1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("expire", -3, &["write", "fast"], 1, 1, 1),
    ("pexpire", -3, &["write", "fast"], 1, 1, 1),
    ("expireat", -3, &["write", "fast"], 1, 1, 1),
    ("pexpireat", -3, &["write", "fast"], 1, 1, 1),
    ("persist", 2, &["write", "fast"], 1, 1, 1),
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("quit", -1, &["fast"], 0, 0, 0),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    (
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    (
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("client", -2, &[], 0, 0, 0),
    (
        "reset",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &[], 0, 0, 0),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("wait", 3, &[], 0, 0, 0),
];

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS`.
pub fn command(args: &[Bytes]) -> Resp {
    let info = |c: &CommandInfo| {
        Resp::Array(vec![
            Resp::text(c.0),
            Resp::Int(c.1),
            Resp::Array(c.2.iter().copied().map(Resp::Simple).collect()),
            Resp::Int(c.3),
            Resp::Int(c.4),
            Resp::Int(c.5),
        ])
    };
    match args.get(1).map(|a| lower(a)).as_deref() {
        None => Resp::Array(COMMANDS.iter().map(info).collect()),
        Some("count") => Resp::Int(COMMANDS.len() as i64),
        Some("info") => Resp::Array(
            args[2..]
                .iter()
                .map(|a| {
                    let a = lower(a);
                    COMMANDS.iter().find(|c| c.0 == a).map_or(Resp::Nil, info)
                })
                .collect(),
        ),
        // No documentation to give: an empty answer, not an error, so that
        // redis-cli's start-up carries on.
        Some("docs") => Resp::Map(Vec::new()),
        Some("list") => Resp::Array(COMMANDS.iter().map(|c| Resp::text(c.0)).collect()),
        Some(other) => Resp::err(format!("unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

/// The settings `CONFIG GET` knows: what redis-benchmark and clients ask
/// at start, answered with what semikv does.
pub const CONFIG: &[(&str, &str)] = &[
    // Durability is the WAL's, not RDB snapshots'.
    ("save", ""),
    ("appendonly", "yes"),
    ("databases", "1"),
    ("maxmemory", "0"),
    ("timeout", "0"),
];

/// `CONFIG GET pattern...`; `CONFIG SET` is refused.
pub fn config(args: &[Bytes]) -> Resp {
    match args.get(1).map(|a| lower(a)).as_deref() {
        Some("get") if args.len() >= 3 => {
            let mut pairs = Vec::new();
            for pattern in &args[2..] {
                for (k, v) in CONFIG {
                    if glob(&pattern.to_ascii_lowercase(), k.as_bytes())
                        && !pairs
                            .iter()
                            .any(|(name, _): &(Resp, Resp)| *name == Resp::text(*k))
                    {
                        pairs.push((Resp::text(*k), Resp::text(*v)));
                    }
                }
            }
            Resp::Map(pairs)
        }
        Some("get") => wrong_arity("config|get"),
        Some("set") => {
            Resp::err("CONFIG SET is not supported: semikv is configured by its command line")
        }
        Some("resetstat") => Resp::OK,
        _ => Resp::err(format!(
            "unknown subcommand '{}'. Try CONFIG HELP.",
            args.get(1).map(text).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn config_get_answers_what_benchmarks_ask_by_pattern() {
        assert_eq!(
            config(&args(&["CONFIG", "GET", "save"])),
            Resp::Map(vec![(Resp::text("save"), Resp::text(""))])
        );
        let Resp::Map(all) = config(&args(&["CONFIG", "GET", "*"])) else {
            panic!("not a map")
        };
        assert_eq!(all.len(), CONFIG.len());
        assert_eq!(
            config(&args(&["CONFIG", "GET", "nothing-like-it"])),
            Resp::Map(Vec::new())
        );
    }

    #[test]
    fn command_docs_is_an_empty_answer_not_an_error() {
        assert_eq!(command(&args(&["COMMAND", "DOCS"])), Resp::Map(Vec::new()));
        assert_eq!(
            command(&args(&["COMMAND", "COUNT"])),
            Resp::Int(COMMANDS.len() as i64)
        );
    }
}
