//! The command language of the `semikv` REPL, scripts and one-shot mode: one
//! line of text (or one argv) to a [`Command`].
//!
//! A line is words separated by ASCII spaces or tabs. A word is a run of
//! unquoted bytes and double-quoted segments, glued together as in a shell:
//! `greeting="hello world"` is one word. Inside double quotes, `\n`, `\r`,
//! `\t`, `\0`, `\\`, `\"` and `\xHH` stand for the byte they name, so any
//! byte string can be written; unquoted bytes are taken literally.
//! `set KEY=VALUE` splits its single word at the first *unquoted* `=`, so
//! values may contain `=` and keys may too when quoted (`set "a=b"=c`).
//! Blank lines and lines whose first word starts with `#` are no command.
//! [`quote`] is the inverse: it renders bytes as one word that parses back to
//! the same bytes.

use bytes::Bytes;
use semikv_protocol::{Op, ReplicaId, MAX_KEY_LEN};

mod store;
pub use store::Show;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `set KEY=VALUE` or `set KEY VALUE`.
    Set {
        /// The key (never empty).
        key: Bytes,
        /// The value (possibly empty).
        value: Bytes,
    },
    /// `get KEY`.
    Get {
        /// The key (never empty).
        key: Bytes,
    },
    /// `del KEY`.
    Del {
        /// The key (never empty).
        key: Bytes,
    },
    /// `ping`.
    Ping,
    /// `status`.
    Status,
    /// `help`.
    Help,
    /// `quit` or `exit`.
    Quit,
    /// `kill ID`: kill a replica of the local cluster.
    Kill(ReplicaId),
    /// `restart ID`: restart a killed replica of the local cluster.
    Restart(ReplicaId),
    /// `keys [PATTERN]`: every key the pattern matches, by a whole scan.
    Keys {
        /// A Redis glob; `None`: every key.
        pattern: Option<Bytes>,
    },
    /// `consistency [LEVEL]`: show the level reads ask for, or set it.
    Consistency(Option<semikv_protocol::Consistency>),
    /// `token`: show the session's token (the highest position seen).
    Token,
    /// An evaluated write or an expiry read (`set` with options, `incr`,
    /// `mset`, `del` of several keys, `expire`, `ttl`, ...), and how its
    /// answer is shown.
    Eval {
        /// The request.
        op: Op,
        /// How its answer is shown.
        show: Show,
    },
}

/// The argument synopsis of each command, for help and hints.
pub const SYNOPSES: &[(&str, &str)] = &[
    (
        "set",
        "KEY=VALUE | KEY VALUE [nx|xx] [ex SECS|px MS|keepttl] [get]",
    ),
    ("get", "KEY"),
    ("del", "KEY..."),
    ("mset", "KEY=VALUE..."),
    ("msetnx", "KEY=VALUE..."),
    ("incr", "KEY"),
    ("decr", "KEY"),
    ("incrby", "KEY N"),
    ("append", "KEY VALUE"),
    ("getdel", "KEY"),
    ("expire", "KEY SECS"),
    ("persist", "KEY"),
    ("ttl", "KEY"),
    ("keys", "[PATTERN]"),
    ("scan", "CURSOR [match PATTERN] [count N]"),
    ("dbsize", ""),
    ("ping", ""),
    ("status", ""),
    ("consistency", "[stale|session|linearizable|bounded:MS]"),
    ("token", ""),
    ("help", ""),
    ("quit", ""),
    ("exit", ""),
    ("kill", "ID"),
    ("restart", "ID"),
];

/// The synopses a user can use: `kill` and `restart` only with `--local`.
pub fn synopses(local: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    SYNOPSES
        .iter()
        .copied()
        .filter(move |(name, _)| local || !matches!(*name, "kill" | "restart"))
}

/// Why a line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A double quote was opened and never closed.
    #[error("unterminated double quote")]
    UnterminatedQuote,
    /// A backslash escape that is not one of the known ones.
    #[error("unknown escape '\\{0}' (use \\n \\r \\t \\0 \\\\ \\\" or \\xHH)")]
    BadEscape(char),
    /// `\x` not followed by two hex digits.
    #[error("\\x must be followed by two hex digits")]
    BadHexEscape,
    /// A backslash at the very end of the line, inside quotes.
    #[error("backslash at the end of a quoted string")]
    DanglingBackslash,
    /// The first word is not a command.
    #[error("unknown command '{0}' (try 'help')")]
    UnknownCommand(String),
    /// The command got the wrong number of arguments.
    #[error("wrong number of arguments for '{name}': usage {name} {usage}")]
    Arity {
        /// The command.
        name: &'static str,
        /// Its synopsis.
        usage: &'static str,
    },
    /// `set` with one word that has no unquoted `=`.
    #[error("set needs KEY=VALUE or KEY VALUE")]
    MissingEquals,
    /// `set a=b c`: a `KEY=VALUE` word followed by more. Taking `a=b` as the
    /// key would silently store under a key the user did not mean.
    #[error("set KEY=VALUE takes one word: quote a value with spaces (set k=\"a b\") or a key with '=' (set \"a=b\" VALUE)")]
    AmbiguousSet,
    /// An empty key.
    #[error("empty key")]
    EmptyKey,
    /// A key over the protocol's limit.
    #[error("key of {len} bytes exceeds the limit of {MAX_KEY_LEN} bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
    /// A replica id that is not a number.
    #[error("replica id must be a number, got '{0}'")]
    BadReplicaId(String),
    /// A count or duration that is not a (positive, for a duration) number.
    #[error("expected a number, got '{0}'")]
    BadNumber(String),
    /// A `set` option that is not one of `nx`, `xx`, `ex`, `px`, `keepttl`,
    /// `get`.
    #[error("unknown option '{0}' (set takes nx, xx, ex SECS, px MS, keepttl, get)")]
    UnknownOption(String),
    /// A consistency level that is not one of the four.
    #[error("{0}")]
    BadLevel(String),
}

/// One word of a line: its bytes, and where its first unquoted `=` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word's bytes, escapes resolved.
    pub bytes: Vec<u8>,
    /// Offset in `bytes` of the first `=` that was not inside quotes.
    pub first_unquoted_eq: Option<usize>,
}

impl Word {
    /// A word taken literally, as from a command-line argument: every `=` is
    /// unquoted.
    pub fn literal(bytes: impl Into<Vec<u8>>) -> Word {
        let bytes = bytes.into();
        let first_unquoted_eq = bytes.iter().position(|&b| b == b'=');
        Word {
            bytes,
            first_unquoted_eq,
        }
    }
}

/// Parses one line. `Ok(None)` for a blank line or a comment.
///
/// # Errors
/// [`ParseError`] for bad quoting, unknown commands and wrong arguments.
pub fn parse_line(line: &[u8]) -> Result<Option<Command>, ParseError> {
    if line.iter().find(|b| !is_space(**b)) == Some(&b'#') {
        return Ok(None);
    }
    parse_words(split_words(line)?)
}

/// Builds a command from words already split (e.g. argv). `Ok(None)` for no
/// words.
///
/// # Errors
/// [`ParseError`] for unknown commands and wrong arguments.
pub fn parse_words(words: Vec<Word>) -> Result<Option<Command>, ParseError> {
    let mut words = words.into_iter();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let name = String::from_utf8_lossy(&first.bytes).to_ascii_lowercase();
    let args: Vec<Word> = words.collect();
    let command = match name.as_str() {
        "set" => parse_set(args)?,
        "get" => Command::Get {
            key: one_key("get", args)?,
        },
        "del" => store::parse_del(args)?,
        "ping" => no_args("ping", args, Command::Ping)?,
        "status" => no_args("status", args, Command::Status)?,
        "token" => no_args("token", args, Command::Token)?,
        "consistency" => match <[Word; 1]>::try_from(args) {
            Ok([word]) => Command::Consistency(Some(
                String::from_utf8_lossy(&word.bytes)
                    .parse()
                    .map_err(ParseError::BadLevel)?,
            )),
            Err(args) if args.is_empty() => Command::Consistency(None),
            Err(_) => return Err(arity("consistency")),
        },
        "help" => Command::Help,
        "quit" => no_args("quit", args, Command::Quit)?,
        "exit" => no_args("exit", args, Command::Quit)?,
        "kill" => Command::Kill(one_id("kill", args)?),
        "restart" => Command::Restart(one_id("restart", args)?),
        other => match store::parse(other, args) {
            Some(parsed) => parsed?,
            None => return Err(ParseError::UnknownCommand(name)),
        },
    };
    Ok(Some(command))
}

fn usage(name: &'static str) -> &'static str {
    SYNOPSES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, u)| *u)
}

fn arity(name: &'static str) -> ParseError {
    ParseError::Arity {
        name,
        usage: usage(name),
    }
}

fn no_args(name: &'static str, args: Vec<Word>, command: Command) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(arity(name))
    }
}

fn check_key(key: Vec<u8>) -> Result<Bytes, ParseError> {
    if key.is_empty() {
        return Err(ParseError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ParseError::KeyTooLong { len: key.len() });
    }
    Ok(Bytes::from(key))
}

fn one_key(name: &'static str, args: Vec<Word>) -> Result<Bytes, ParseError> {
    let [word]: [Word; 1] = args.try_into().map_err(|_| arity(name))?;
    check_key(word.bytes)
}

fn one_id(name: &'static str, args: Vec<Word>) -> Result<ReplicaId, ParseError> {
    let [word]: [Word; 1] = args.try_into().map_err(|_| arity(name))?;
    let text = String::from_utf8_lossy(&word.bytes);
    text.parse::<u32>()
        .map(ReplicaId)
        .map_err(|_| ParseError::BadReplicaId(text.into_owned()))
}

/// `set KEY=VALUE [OPTION...]` or `set KEY VALUE [OPTION...]`: a plain
/// write without options, an evaluated one with them.
fn parse_set(mut args: Vec<Word>) -> Result<Command, ParseError> {
    let first = args.first().ok_or_else(|| arity("set"))?;
    let (key, value, options) = if let Some(eq) = first.first_unquoted_eq {
        let options = args.split_off(1);
        let [word]: [Word; 1] = args.try_into().map_err(|_| arity("set"))?;
        let mut key = word.bytes;
        // `split_off` leaves the `=` at the start of the value.
        let value = Bytes::from(key.split_off(eq)).slice(1..);
        // `set a=b c` with `c` no option: the user may have meant the key
        // `a=b`; storing under `a` would surprise them.
        if !options.is_empty()
            && store::set_with_options(Bytes::new(), Bytes::new(), &options).is_err()
        {
            return Err(ParseError::AmbiguousSet);
        }
        (key, value, options)
    } else {
        if args.len() < 2 {
            return Err(if args.len() == 1 {
                ParseError::MissingEquals
            } else {
                arity("set")
            });
        }
        let options = args.split_off(2);
        let [key, value]: [Word; 2] = args.try_into().map_err(|_| arity("set"))?;
        (key.bytes, Bytes::from(value.bytes), options)
    };
    let key = check_key(key)?;
    if options.is_empty() {
        return Ok(Command::Set { key, value });
    }
    store::set_with_options(key, value, &options)
}

/// Splits a line into words, resolving quotes and escapes.
///
/// # Errors
/// [`ParseError::UnterminatedQuote`] and the escape errors.
pub fn split_words(line: &[u8]) -> Result<Vec<Word>, ParseError> {
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|b| is_space(*b)) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(words);
        }
        let mut word = Word {
            bytes: Vec::new(),
            first_unquoted_eq: None,
        };
        while let Some(&b) = line.get(i) {
            if is_space(b) {
                break;
            }
            if b == b'"' {
                i = read_quoted(line, i + 1, &mut word.bytes)?;
                continue;
            }
            if b == b'=' && word.first_unquoted_eq.is_none() {
                word.first_unquoted_eq = Some(word.bytes.len());
            }
            word.bytes.push(b);
            i += 1;
        }
        words.push(word);
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Reads a quoted segment starting just after its opening quote; returns the
/// position just after the closing quote.
fn read_quoted(line: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ParseError> {
    loop {
        match line.get(i) {
            None => return Err(ParseError::UnterminatedQuote),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => {
                let Some(&esc) = line.get(i + 1) else {
                    return Err(ParseError::DanglingBackslash);
                };
                let byte = match esc {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'0' => 0,
                    b'\\' => b'\\',
                    b'"' => b'"',
                    b'x' => {
                        let hi = line.get(i + 2).and_then(|b| hex_value(*b));
                        let lo = line.get(i + 3).and_then(|b| hex_value(*b));
                        let (Some(hi), Some(lo)) = (hi, lo) else {
                            return Err(ParseError::BadHexEscape);
                        };
                        out.push(hi << 4 | lo);
                        i += 4;
                        continue;
                    }
                    other => return Err(ParseError::BadEscape(char::from(other))),
                };
                out.push(byte);
                i += 2;
            }
            Some(&b) => {
                out.push(b);
                i += 1;
            }
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Renders `bytes` as one word that [`split_words`] reads back as exactly
/// `bytes`, with no unquoted `=`: bare when every character is a visible,
/// non-special one, double-quoted with escapes otherwise. Valid UTF-8 text
/// keeps its characters; other bytes become `\xHH`.
pub fn quote(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.is_empty() && text.chars().all(is_bare_char) {
            return text.to_string();
        }
    }
    quote_always(bytes)
}

/// Renders `bytes` double-quoted with escapes, whatever they are.
pub fn quote_always(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        push_hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out.push('"');
    out
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\x");
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

fn is_bare_char(c: char) -> bool {
    !c.is_control() && !c.is_whitespace() && !matches!(c, '"' | '=' | '#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> Result<Option<Command>, ParseError> {
        parse_line(line.as_bytes())
    }

    fn set(key: &[u8], value: &[u8]) -> Command {
        Command::Set {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        }
    }

    #[test]
    fn set_with_equals_splits_at_the_first_equals() {
        assert_eq!(parse("set foo=bar").unwrap(), Some(set(b"foo", b"bar")));
        assert_eq!(parse("set a=b=c").unwrap(), Some(set(b"a", b"b=c")));
        assert_eq!(parse("set a=").unwrap(), Some(set(b"a", b"")));
    }

    #[test]
    fn set_with_two_words() {
        assert_eq!(parse("set foo bar").unwrap(), Some(set(b"foo", b"bar")));
        assert_eq!(
            parse("  SET\tfoo   bar  ").unwrap(),
            Some(set(b"foo", b"bar"))
        );
        // `set greeting=hello world` must not store "world" under "greeting=hello".
        assert_eq!(parse("set a=b c"), Err(ParseError::AmbiguousSet));
        assert_eq!(parse(r#"set "a=b" c"#).unwrap(), Some(set(b"a=b", b"c")));
    }

    #[test]
    fn quoted_equals_does_not_split() {
        assert_eq!(parse(r#"set "a=b"=c"#).unwrap(), Some(set(b"a=b", b"c")));
        assert_eq!(
            parse(r#"set greeting="hello world""#).unwrap(),
            Some(set(b"greeting", b"hello world"))
        );
        assert_eq!(parse(r#"set "k=v""#), Err(ParseError::MissingEquals));
    }

    #[test]
    fn escapes_produce_any_byte() {
        assert_eq!(
            parse(r#"set "\x00\xff" "a\nb\t\r\\\"\0""#).unwrap(),
            Some(set(&[0, 0xff], b"a\nb\t\r\\\"\0"))
        );
        assert_eq!(
            parse(r#"get "\xAb""#).unwrap(),
            Some(Command::Get {
                key: Bytes::from_static(&[0xab])
            })
        );
    }

    #[test]
    fn unquoted_backslashes_are_literal() {
        assert_eq!(
            parse(r"get a\nb").unwrap(),
            Some(Command::Get {
                key: Bytes::from_static(br"a\nb")
            })
        );
    }

    #[test]
    fn bad_quoting_is_an_error() {
        assert_eq!(parse(r#"get "abc"#), Err(ParseError::UnterminatedQuote));
        assert_eq!(parse(r#"get "a\q""#), Err(ParseError::BadEscape('q')));
        assert_eq!(parse(r#"get "\x4""#), Err(ParseError::BadHexEscape));
        assert_eq!(parse(r#"get "\xzz""#), Err(ParseError::BadHexEscape));
        assert_eq!(parse(r#"get "\"#), Err(ParseError::DanglingBackslash));
    }

    #[test]
    fn arity_and_names() {
        assert_eq!(parse("ping").unwrap(), Some(Command::Ping));
        assert_eq!(parse("STATUS").unwrap(), Some(Command::Status));
        assert_eq!(parse("exit").unwrap(), Some(Command::Quit));
        assert_eq!(parse("quit").unwrap(), Some(Command::Quit));
        assert_eq!(parse("help set").unwrap(), Some(Command::Help));
        assert_eq!(
            parse("del k").unwrap(),
            Some(Command::Del {
                key: Bytes::from_static(b"k")
            })
        );
        assert!(matches!(
            parse("get"),
            Err(ParseError::Arity { name: "get", .. })
        ));
        assert!(matches!(parse("get a b"), Err(ParseError::Arity { .. })));
        assert!(matches!(parse("set"), Err(ParseError::Arity { .. })));
        assert_eq!(
            parse("set a b c"),
            Err(ParseError::UnknownOption("c".into()))
        );
        assert!(matches!(parse("ping x"), Err(ParseError::Arity { .. })));
        assert_eq!(parse("token").unwrap(), Some(Command::Token));
        assert_eq!(
            parse("consistency").unwrap(),
            Some(Command::Consistency(None))
        );
        assert_eq!(
            parse("consistency bounded:250").unwrap(),
            Some(Command::Consistency(Some(
                semikv_protocol::Consistency::Bounded { max_lag_ms: 250 }
            )))
        );
        assert!(matches!(
            parse("consistency strong"),
            Err(ParseError::BadLevel(_))
        ));
        assert!(matches!(
            parse("consistency stale session"),
            Err(ParseError::Arity { .. })
        ));
        assert_eq!(parse("set foo"), Err(ParseError::MissingEquals));
        assert_eq!(
            parse("frobnicate x"),
            Err(ParseError::UnknownCommand("frobnicate".into()))
        );
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(parse("set =v"), Err(ParseError::EmptyKey));
        assert_eq!(parse(r#"get """#), Err(ParseError::EmptyKey));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            parse(&format!("get {long}")),
            Err(ParseError::KeyTooLong {
                len: MAX_KEY_LEN + 1
            })
        );
    }

    #[test]
    fn replica_ids() {
        assert_eq!(parse("kill 2").unwrap(), Some(Command::Kill(ReplicaId(2))));
        assert_eq!(
            parse("restart 3").unwrap(),
            Some(Command::Restart(ReplicaId(3)))
        );
        assert_eq!(
            parse("kill two"),
            Err(ParseError::BadReplicaId("two".into()))
        );
        assert!(matches!(parse("restart"), Err(ParseError::Arity { .. })));
    }

    #[test]
    fn blank_and_comment_lines_are_no_command() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("   \t ").unwrap(), None);
        assert_eq!(parse("# set a=b").unwrap(), None);
    }

    #[test]
    fn argv_words_are_literal() {
        let words = vec![Word::literal("set"), Word::literal(r#"k="x y""#)];
        assert_eq!(parse_words(words).unwrap(), Some(set(b"k", br#""x y""#)));
        let words = vec![
            Word::literal("set"),
            Word::literal("a b"),
            Word::literal("c"),
        ];
        assert_eq!(parse_words(words).unwrap(), Some(set(b"a b", b"c")));
    }

    #[test]
    fn quote_examples() {
        assert_eq!(quote(b"plain"), "plain");
        assert_eq!(quote("héllo".as_bytes()), "héllo");
        assert_eq!(quote(b""), r#""""#);
        assert_eq!(quote(b"a b"), r#""a b""#);
        assert_eq!(quote(b"a=b"), r#""a=b""#);
        assert_eq!(quote(b"\x00\xff\n\"\\"), r#""\x00\xff\n\"\\""#);
        assert_eq!(quote(b"\x7f"), r#""\x7f""#);
    }

    proptest! {
        #[test]
        fn quote_parses_back(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let words = split_words(quote(&bytes).as_bytes()).unwrap();
            prop_assert_eq!(words.len(), 1);
            prop_assert_eq!(&words[0].bytes, &bytes);
            prop_assert_eq!(words[0].first_unquoted_eq, None);
        }

        #[test]
        fn quoted_set_round_trips(
            key in proptest::collection::vec(any::<u8>(), 1..32),
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let expected = Some(set(&key, &value));
            let eq_form = format!("set {}={}", quote(&key), quote(&value));
            prop_assert_eq!(parse_line(eq_form.as_bytes()).unwrap(), expected.clone());
            let two_words = format!("set {} {}", quote(&key), quote(&value));
            prop_assert_eq!(parse_line(two_words.as_bytes()).unwrap(), expected);
        }

        #[test]
        fn quote_utf8_text_round_trips(text in "\\PC*") {
            let words = split_words(quote(text.as_bytes()).as_bytes()).unwrap();
            let got = words.into_iter().next().map(|w| w.bytes).unwrap_or_default();
            prop_assert_eq!(got, text.as_bytes().to_vec());
        }

        #[test]
        fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_line(&line);
        }
    }
}
