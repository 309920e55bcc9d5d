//! The server-level commands a client asks at start-up: `COMMAND` (with
//! the table of commands this door knows) and `CONFIG GET`, with Redis's
//! glob patterns.

use bytes::Bytes;

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

/// Redis's glob matching: `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Iterative,
/// with one backtracking point (the last `*`): time at most the product of
/// the two lengths, and no recursion a long pattern could overflow the
/// stack with.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and the next
    // position of `s` to try it from.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            star = Some((p, i));
            continue;
        }
        if p < pattern.len() {
            if let Some(len) = one(&pattern[p..], s[i]) {
                p += len;
                i += 1;
                continue;
            }
        }
        match star {
            Some((resume, from)) => {
                p = resume;
                i = from + 1;
                star = Some((resume, from + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the pattern element at the start of `pattern` (`?`, a class,
/// an escape or a byte) matches `c`: its length if it does.
fn one(pattern: &[u8], c: u8) -> Option<usize> {
    match pattern {
        [b'?', ..] => Some(1),
        [b'\\', x, ..] => (*x == c).then_some(2),
        [b'[', rest @ ..] => {
            let (negate, mut at) = match rest.first() {
                Some(b'^') => (true, 1),
                _ => (false, 0),
            };
            let mut matched = false;
            loop {
                match &rest[at..] {
                    // An unclosed class matches nothing.
                    [] => return None,
                    [b']', ..] => break,
                    [b'\\', x, ..] => {
                        matched |= *x == c;
                        at += 2;
                    }
                    [a, b'-', b, ..] if *b != b']' => {
                        let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                        matched |= (lo..=hi).contains(&c);
                        at += 3;
                    }
                    [x, ..] => {
                        matched |= *x == c;
                        at += 1;
                    }
                }
            }
            (matched != negate).then_some(at + 2)
        }
        [x, ..] => (*x == c).then_some(1),
        [] => None,
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

    #[test]
    fn glob_matches_as_redis_does() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"h[ae]llo", b"hello"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"a\\*", b"a*"));
        assert!(!glob(b"a\\*", b"ab"));
        assert!(glob(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob(b"*a*b*c", b"xxaxxbxx"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"a"));
        assert!(glob(b"**", b""));
    }

    #[test]
    fn a_hostile_pattern_costs_neither_stack_nor_time() {
        // Recursion on each star overflowed the stack with this; trying
        // every split took 10^12 steps with 60 stars and a mismatch.
        let stars = vec![b'*'; 100_000];
        assert!(glob(&stars, b"appendonly"));
        let mut slow = vec![b'*'; 60];
        slow.push(b'z');
        assert!(!glob(&slow, &[b'a'; 4096]));
    }
}
