//! The REPL commands that become an evaluated write or an expiry read
//! (protocol 5): `set` with options, `incr`, `decr`, `incrby`, `append`,
//! `getdel`, `mset`, `msetnx`, `del` of several keys, `expire`, `persist`,
//! `ttl`; the reads about every key (protocol 6): `keys`, `scan`, `dbsize`;
//! and how each one's answer is shown.

use bytes::Bytes;
use semikv_protocol::{Command as Eval, Cond, ExpireCond, Op, Scan, TtlChange};

use super::{arity, check_key, one_key, Command, ParseError, Word};

/// How an evaluated command's answer is shown (Redis's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// `OK` if applied, `(nil)` if not.
    Applied,
    /// The value it reports, or `(nil)`.
    Value,
    /// `(integer) N`: the number it reports.
    Int,
    /// `(integer) 1` if applied, else `(integer) 0`.
    Flag,
}

fn eval(op: Op, show: Show) -> Command {
    Command::Eval { op, show }
}

/// Milliseconds from a whole number of `unit`-millisecond units.
fn millis(word: &Word, unit: u64) -> Result<u64, ParseError> {
    let text = String::from_utf8_lossy(&word.bytes);
    text.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| ParseError::BadNumber(text.into_owned()))
}

fn integer(word: &Word) -> Result<i64, ParseError> {
    let text = String::from_utf8_lossy(&word.bytes);
    text.parse::<i64>()
        .map_err(|_| ParseError::BadNumber(text.into_owned()))
}

/// `set KEY VALUE` (or `KEY=VALUE`) followed by options: `nx`, `xx`,
/// `ex SECS`, `px MS`, `keepttl`, `get`.
pub(super) fn set_with_options(
    key: Bytes,
    value: Bytes,
    options: &[Word],
) -> Result<Command, ParseError> {
    let mut cond = Cond::Always;
    let mut ttl = TtlChange::Persist;
    let mut get_old = false;
    let mut words = options.iter();
    while let Some(word) = words.next() {
        let option = String::from_utf8_lossy(&word.bytes).to_ascii_lowercase();
        match option.as_str() {
            "nx" => cond = Cond::IfAbsent,
            "xx" => cond = Cond::IfPresent,
            "keepttl" => ttl = TtlChange::Keep,
            "get" => get_old = true,
            "ex" | "px" => {
                let unit = if option == "ex" { 1000 } else { 1 };
                let n = words.next().ok_or_else(|| arity("set"))?;
                ttl = TtlChange::AfterMs(millis(n, unit)?);
            }
            _ => return Err(ParseError::UnknownOption(option)),
        }
    }
    let show = if get_old { Show::Value } else { Show::Applied };
    let command = Eval::Set {
        key,
        value,
        cond,
        ttl,
        get_old,
    };
    Ok(eval(Op::Command(command), show))
}

/// `scan CURSOR [match PATTERN] [count N]`: one page, as Redis's SCAN.
fn scan(args: Vec<Word>) -> Result<Command, ParseError> {
    let mut words = args.iter();
    let cursor = words.next().ok_or_else(|| arity("scan"))?;
    let text = String::from_utf8_lossy(&cursor.bytes);
    let cursor = text
        .parse::<u64>()
        .map_err(|_| ParseError::BadNumber(text.into_owned()))?;
    let mut scan = Scan {
        cursor,
        count: 10,
        pattern: None,
    };
    while let Some(word) = words.next() {
        let option = String::from_utf8_lossy(&word.bytes).to_ascii_lowercase();
        let value = words.next().ok_or_else(|| arity("scan"))?;
        match option.as_str() {
            "match" => scan.pattern = Some(Bytes::from(value.bytes.clone())),
            "count" => {
                let text = String::from_utf8_lossy(&value.bytes);
                scan.count = text
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| ParseError::BadNumber(text.into_owned()))?;
            }
            _ => return Err(ParseError::UnknownOption(option)),
        }
    }
    Ok(eval(Op::Scan(scan), Show::Value))
}

/// `KEY=VALUE` words, as `mset` takes them.
fn pairs(name: &'static str, args: Vec<Word>) -> Result<Vec<(Bytes, Bytes)>, ParseError> {
    if args.is_empty() {
        return Err(arity(name));
    }
    args.into_iter()
        .map(|word| {
            let eq = word.first_unquoted_eq.ok_or(ParseError::MissingEquals)?;
            let mut key = word.bytes;
            let value = key.split_off(eq);
            Ok((check_key(key)?, Bytes::from(value).slice(1..)))
        })
        .collect()
}

/// Parses the store commands by name; `None` for another name.
pub(super) fn parse(name: &str, args: Vec<Word>) -> Option<Result<Command, ParseError>> {
    let incr = |name, args, by: Option<i64>| -> Result<Command, ParseError> {
        let (key, by) = match by {
            Some(by) => (one_key(name, args)?, by),
            None => {
                let [key, by]: [Word; 2] = args.try_into().map_err(|_| arity(name))?;
                (check_key(key.bytes)?, integer(&by)?)
            }
        };
        Ok(eval(Op::Command(Eval::IncrBy { key, by }), Show::Int))
    };
    Some(match name {
        "incr" => incr("incr", args, Some(1)),
        "decr" => incr("decr", args, Some(-1)),
        "incrby" => incr("incrby", args, None),
        "append" => (|| {
            let [key, value]: [Word; 2] = args.try_into().map_err(|_| arity("append"))?;
            let command = Eval::Append {
                key: check_key(key.bytes)?,
                value: Bytes::from(value.bytes),
            };
            Ok(eval(Op::Command(command), Show::Int))
        })(),
        "getdel" => {
            one_key("getdel", args).map(|key| eval(Op::Command(Eval::GetDel { key }), Show::Value))
        }
        "ttl" => one_key("ttl", args).map(|key| eval(Op::Ttl { key }, Show::Value)),
        "dbsize" if args.is_empty() => Ok(eval(Op::DbSize, Show::Value)),
        "dbsize" => Err(arity("dbsize")),
        "keys" => match <[Word; 1]>::try_from(args) {
            Ok([pattern]) => Ok(Command::Keys {
                pattern: Some(Bytes::from(pattern.bytes)),
            }),
            Err(args) if args.is_empty() => Ok(Command::Keys { pattern: None }),
            Err(_) => Err(arity("keys")),
        },
        "scan" => scan(args),
        "persist" => one_key("persist", args).map(|key| {
            let command = Eval::Expire {
                key,
                ttl: TtlChange::Persist,
                cond: ExpireCond::Always,
            };
            eval(Op::Command(command), Show::Flag)
        }),
        "expire" => (|| {
            let [key, secs]: [Word; 2] = args.try_into().map_err(|_| arity("expire"))?;
            let command = Eval::Expire {
                key: check_key(key.bytes)?,
                ttl: TtlChange::AfterMs(millis(&secs, 1000)?),
                cond: ExpireCond::Always,
            };
            Ok(eval(Op::Command(command), Show::Flag))
        })(),
        "mset" | "msetnx" => {
            let only_if_none_exist = name == "msetnx";
            let name = if only_if_none_exist { "msetnx" } else { "mset" };
            pairs(name, args).map(|pairs| {
                let show = if only_if_none_exist {
                    Show::Flag
                } else {
                    Show::Applied
                };
                let command = Eval::MSet {
                    pairs,
                    only_if_none_exist,
                };
                eval(Op::Command(command), show)
            })
        }
        _ => return None,
    })
}

/// `del KEY...`: one key stays the plain `Delete` (answered `OK`), more
/// become one multi-key delete answered with how many existed.
pub(super) fn parse_del(args: Vec<Word>) -> Result<Command, ParseError> {
    if args.len() == 1 {
        return Ok(Command::Del {
            key: one_key("del", args)?,
        });
    }
    if args.is_empty() {
        return Err(arity("del"));
    }
    let keys = args
        .into_iter()
        .map(|word| check_key(word.bytes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(eval(Op::Command(Eval::Delete { keys }), Show::Int))
}

#[cfg(test)]
mod tests {
    use super::super::parse_line;
    use super::*;

    fn parsed(line: &str) -> Command {
        parse_line(line.as_bytes()).unwrap().unwrap()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn set_takes_redis_options_after_its_pair() {
        assert_eq!(
            parsed("set k=v nx ex 10"),
            eval(
                Op::Command(Eval::Set {
                    key: b("k"),
                    value: b("v"),
                    cond: Cond::IfAbsent,
                    ttl: TtlChange::AfterMs(10_000),
                    get_old: false,
                }),
                Show::Applied
            )
        );
        assert!(matches!(
            parsed("set k v xx keepttl get"),
            Command::Eval {
                show: Show::Value,
                ..
            }
        ));
        // Without options, the plain write it always was.
        assert_eq!(
            parsed("set k nx"),
            Command::Set {
                key: b("k"),
                value: b("nx")
            }
        );
        assert_eq!(
            parse_line(b"set a=b c"),
            Err(ParseError::AmbiguousSet),
            "a word that is no option still says why"
        );
        assert!(parse_line(b"set k v ex 0").is_err());
        assert!(parse_line(b"set k v ex").is_err());
    }

    #[test]
    fn counters_expiries_and_multi_key_writes_parse() {
        assert_eq!(
            parsed("incrby n -5"),
            eval(
                Op::Command(Eval::IncrBy {
                    key: b("n"),
                    by: -5
                }),
                Show::Int
            )
        );
        assert!(matches!(parsed("decr n"), Command::Eval { .. }));
        assert_eq!(parsed("ttl k"), eval(Op::Ttl { key: b("k") }, Show::Value));
        assert_eq!(
            parsed("mset a=1 b=2"),
            eval(
                Op::Command(Eval::MSet {
                    pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
                    only_if_none_exist: false,
                }),
                Show::Applied
            )
        );
        assert_eq!(
            parsed("del a b"),
            eval(
                Op::Command(Eval::Delete {
                    keys: vec![b("a"), b("b")]
                }),
                Show::Int
            )
        );
        assert_eq!(parsed("del a"), Command::Del { key: b("a") });
        assert!(parse_line(b"expire k soon").is_err());
        assert!(parse_line(b"mset a").is_err());
    }
}
