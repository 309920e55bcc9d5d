//! Redis's key and string commands as semikv ops: plain reads and writes
//! as `Get`/`Set`, everything conditional, read-modify-write, multi-key or
//! about expiry as one [`Command`] the leader evaluates in log order (so a
//! failover can never apply one twice), with Redis's option parsing and
//! error strings.

use bytes::Bytes;
use semikv_protocol::{Command, Cond, ExpireCond, KeyTtl, Op, Outcome, TtlChange};

use super::command::{Plan, Shape};
use super::reply::Resp;
use semikv_protocol::ids::UnixMillis;

/// Redis's `string2ll`: an optional `-`, digits, no `+`, spaces or leading
/// zeros, within `i64`.
pub fn int_arg(arg: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(arg).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return None;
    }
    s.parse().ok()
}

fn not_an_integer() -> Plan {
    Plan::Now(Resp::err("value is not an integer or out of range"))
}

fn syntax_error() -> Plan {
    Plan::Now(Resp::err("syntax error"))
}

fn invalid_expire(command: &str) -> Plan {
    Plan::Now(Resp::err(format!(
        "invalid expire time in '{command}' command"
    )))
}

fn one(command: Command, shape: Shape) -> Plan {
    Plan::Forward {
        ops: vec![Op::Command(command)],
        shape,
    }
}

/// An expiry option's value as a [`TtlChange`]: `EX`/`PX` relative (must
/// be positive, as `SET` requires), `EXAT`/`PXAT` absolute.
fn expiry(option: &str, arg: &[u8], command: &str) -> Result<TtlChange, Plan> {
    let n = int_arg(arg).ok_or_else(not_an_integer)?;
    if n <= 0 {
        return Err(invalid_expire(command));
    }
    let n = n as u64;
    let ms = |secs: u64| {
        secs.checked_mul(1000)
            .ok_or_else(|| invalid_expire(command))
    };
    Ok(match option {
        "ex" => relative(ms(n)?, command)?,
        "px" => relative(n, command)?,
        "exat" => TtlChange::At(UnixMillis(ms(n)?)),
        _ => TtlChange::At(UnixMillis(n)),
    })
}

/// A relative expiry, refused (as Redis refuses it) when now plus it would
/// pass `i64::MAX` milliseconds: judged by this balancer's clock, which
/// the leader's roughly matches, and far from any real expiry.
fn relative(ms: u64, command: &str) -> Result<TtlChange, Plan> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if ms > (i64::MAX as u64).saturating_sub(now) {
        return Err(invalid_expire(command));
    }
    Ok(TtlChange::AfterMs(ms))
}

/// Plans the key and string commands; `None` for any other name (or a
/// wrong number of arguments, which the caller reports).
pub fn plan(name: &str, args: &[Bytes]) -> Option<Plan> {
    let n = args.len();
    let key = || args[1].clone();
    Some(match name {
        "set" if n >= 3 => set(args),
        "setnx" if n == 3 => one(
            Command::Set {
                key: key(),
                value: args[2].clone(),
                cond: Cond::IfAbsent,
                ttl: TtlChange::Persist,
                get_old: false,
            },
            Shape::Applied,
        ),
        "setex" | "psetex" if n == 4 => {
            let option = if name == "setex" { "ex" } else { "px" };
            match expiry(option, &args[2], name) {
                Ok(ttl) => one(
                    Command::Set {
                        key: key(),
                        value: args[3].clone(),
                        cond: Cond::Always,
                        ttl,
                        get_old: false,
                    },
                    Shape::Done,
                ),
                Err(plan) => plan,
            }
        }
        "getset" if n == 3 => one(
            Command::Set {
                key: key(),
                value: args[2].clone(),
                cond: Cond::Always,
                ttl: TtlChange::Persist,
                get_old: true,
            },
            Shape::OldValue,
        ),
        "getdel" if n == 2 => one(Command::GetDel { key: key() }, Shape::OldValue),
        "getex" if n >= 2 => getex(args),
        "mset" | "msetnx" if n >= 3 && n % 2 == 1 => {
            let pairs = args[1..]
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            let only_if_none_exist = name == "msetnx";
            one(
                Command::MSet {
                    pairs,
                    only_if_none_exist,
                },
                if only_if_none_exist {
                    Shape::Applied
                } else {
                    Shape::Done
                },
            )
        }
        "del" | "unlink" if n >= 2 => one(
            Command::Delete {
                keys: args[1..].to_vec(),
            },
            Shape::Int,
        ),
        "incr" | "decr" if n == 2 => one(
            Command::IncrBy {
                key: key(),
                by: if name == "incr" { 1 } else { -1 },
            },
            Shape::Int,
        ),
        "incrby" | "decrby" if n == 3 => {
            let Some(by) = int_arg(&args[2]) else {
                return Some(not_an_integer());
            };
            let by = if name == "incrby" {
                by
            } else {
                match by.checked_neg() {
                    Some(by) => by,
                    None => return Some(Plan::Now(Resp::err("decrement would overflow"))),
                }
            };
            one(Command::IncrBy { key: key(), by }, Shape::Int)
        }
        "append" if n == 3 => one(
            Command::Append {
                key: key(),
                value: args[2].clone(),
            },
            Shape::Int,
        ),
        "strlen" if n == 2 => Plan::Forward {
            ops: vec![Op::Get { key: key() }],
            shape: Shape::Strlen,
        },
        "type" if n == 2 => Plan::Forward {
            ops: vec![Op::Get { key: key() }],
            shape: Shape::Type,
        },
        "ttl" | "pttl" if n == 2 => Plan::Forward {
            ops: vec![Op::Ttl { key: key() }],
            shape: Shape::Ttl {
                millis: name == "pttl",
            },
        },
        "expire" | "pexpire" | "expireat" | "pexpireat" if n >= 3 => expire(name, args),
        "persist" if n == 2 => one(
            Command::Expire {
                key: key(),
                ttl: TtlChange::Persist,
                cond: ExpireCond::Always,
            },
            Shape::Applied,
        ),
        _ => return None,
    })
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn set(args: &[Bytes]) -> Plan {
    if args.len() == 3 {
        // The common case stays a plain write: no evaluation, no outcome.
        return Plan::Forward {
            ops: vec![Op::Set {
                key: args[1].clone(),
                value: args[2].clone(),
            }],
            shape: Shape::Ok,
        };
    }
    let mut cond = Cond::Always;
    // The expiry, and the option that gave it: Redis lets an option be
    // repeated (the last one counts) but not two different ones combined.
    let mut ttl: Option<(String, TtlChange)> = None;
    let mut get_old = false;
    let mut i = 3;
    while i < args.len() {
        let option = String::from_utf8_lossy(&args[i]).to_ascii_lowercase();
        let ttl_free = |o: &str| ttl.as_ref().is_none_or(|(given, _)| given == o);
        match option.as_str() {
            "nx" if cond != Cond::IfPresent => cond = Cond::IfAbsent,
            "xx" if cond != Cond::IfAbsent => cond = Cond::IfPresent,
            "get" => get_old = true,
            "keepttl" if ttl_free("keepttl") => ttl = Some((option, TtlChange::Keep)),
            "ex" | "px" | "exat" | "pxat" if ttl_free(&option) && i + 1 < args.len() => {
                match expiry(&option, &args[i + 1], "set") {
                    Ok(t) => ttl = Some((option, t)),
                    Err(plan) => return plan,
                }
                i += 1;
            }
            _ => return syntax_error(),
        }
        i += 1;
    }
    let ttl = ttl.map(|(_, t)| t);
    one(
        Command::Set {
            key: args[1].clone(),
            value: args[2].clone(),
            cond,
            ttl: ttl.unwrap_or(TtlChange::Persist),
            get_old,
        },
        if get_old {
            Shape::OldValue
        } else {
            Shape::SetResult
        },
    )
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
fn getex(args: &[Bytes]) -> Plan {
    let ttl = match args.len() {
        2 => TtlChange::Keep,
        3 if args[2].eq_ignore_ascii_case(b"persist") => TtlChange::Persist,
        4 => {
            let option = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
            if !matches!(option.as_str(), "ex" | "px" | "exat" | "pxat") {
                return syntax_error();
            }
            match expiry(&option, &args[3], "getex") {
                Ok(ttl) => ttl,
                Err(plan) => return plan,
            }
        }
        _ => return syntax_error(),
    };
    one(
        Command::GetEx {
            key: args[1].clone(),
            ttl,
        },
        Shape::OldValue,
    )
}

/// `EXPIRE|PEXPIRE|EXPIREAT|PEXPIREAT key time [NX|XX|GT|LT]`. A time at or
/// before now deletes the key, as in Redis.
fn expire(name: &str, args: &[Bytes]) -> Plan {
    let Some(n) = int_arg(&args[2]) else {
        return not_an_integer();
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &args[3..] {
        match String::from_utf8_lossy(option)
            .to_ascii_lowercase()
            .as_str()
        {
            "nx" => nx = true,
            "xx" => xx = true,
            "gt" => gt = true,
            "lt" => lt = true,
            other => return Plan::Now(Resp::err(format!("Unsupported option {other}"))),
        }
    }
    if nx && (xx || gt || lt) {
        return Plan::Now(Resp::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Plan::Now(Resp::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    // A key without an expiry counts as expiring never: GT already fails
    // on it, so XX GT is GT; LT succeeds on it, so XX LT is a condition of
    // its own.
    let cond = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCond::IfNone,
        (_, true, false, true) => ExpireCond::IfSomeAndEarlier,
        (_, _, true, _) => ExpireCond::IfLater,
        (_, _, _, true) => ExpireCond::IfEarlier,
        (_, true, ..) => ExpireCond::IfSome,
        _ => ExpireCond::Always,
    };
    let seconds = matches!(name, "expire" | "expireat");
    let Some(ms) = (if seconds {
        n.checked_mul(1000)
    } else {
        Some(n)
    }) else {
        return invalid_expire(name);
    };
    let ttl = if name.ends_with("at") {
        TtlChange::At(UnixMillis(ms.max(0) as u64))
    } else if ms <= 0 {
        // Already past: the leader deletes the key.
        TtlChange::At(UnixMillis(0))
    } else {
        match relative(ms as u64, name) {
            Ok(ttl) => ttl,
            Err(plan) => return plan,
        }
    };
    one(
        Command::Expire {
            key: args[1].clone(),
            ttl,
            cond,
        },
        Shape::Applied,
    )
}

/// The RESP answer of an [`Outcome`] in `shape`.
pub fn outcome(shape: &Shape, o: &Outcome) -> Option<Resp> {
    Some(match shape {
        Shape::Done => Resp::OK,
        Shape::SetResult if o.applied => Resp::OK,
        Shape::SetResult => Resp::Nil,
        Shape::Applied => Resp::Int(i64::from(o.applied)),
        Shape::Int => Resp::Int(o.int),
        Shape::OldValue => o.value.clone().map_or(Resp::Nil, Resp::Bulk),
        _ => return None,
    })
}

/// `TTL`/`PTTL`'s answer: -2 without the key, -1 without an expiry, else
/// the time left (seconds rounded as Redis rounds them).
pub fn ttl(t: &KeyTtl, millis: bool) -> Resp {
    match t {
        KeyTtl::NoKey => Resp::Int(-2),
        KeyTtl::Persistent => Resp::Int(-1),
        KeyTtl::Expires { remaining_ms, .. } => {
            let ms = i64::try_from(*remaining_ms).unwrap_or(i64::MAX);
            // Rounded to the nearest second, as Redis does, without the
            // overflow of (ms + 500) / 1000 near i64::MAX.
            Resp::Int(if millis {
                ms
            } else {
                ms / 1000 + i64::from(ms % 1000 >= 500)
            })
        }
    }
}

#[cfg(test)]
mod tests;
