//! What each Redis command means here: the connection's own state
//! (protocol, name, user, database) and, per command, either an answer at
//! once or the semikv ops to forward and how their replies combine into
//! one RESP answer. Redis's reply shapes and error strings throughout, so
//! that clients that parse Redis errors behave.

use bytes::Bytes;
use semikv_protocol::{Consistency, ErrorReply, Op, Reply};

use super::reply::Resp;
use super::server;

/// How the replies of a command's forwarded ops become its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One `Get`: the value or nil.
    Value,
    /// One write: `+OK`.
    Ok,
    /// A command: `+OK` (MSET, SETEX).
    Done,
    /// A `SET` with options: `+OK` if it wrote, nil if its condition
    /// failed.
    SetResult,
    /// A command: 1 if it applied, else 0 (SETNX, MSETNX, EXPIRE).
    Applied,
    /// A command: its integer (DEL's count, INCR's value, APPEND's length).
    Int,
    /// A command: the value it read (GETSET, GETDEL, GETEX, SET ... GET).
    OldValue,
    /// One `Get`: the value's length (STRLEN).
    Strlen,
    /// One `Get`: `string`, or `none` without the key (TYPE).
    Type,
    /// One `Ttl`: seconds (TTL) or milliseconds (PTTL) left, -1 or -2.
    Ttl {
        /// PTTL.
        millis: bool,
    },
    /// Several `Get`s: an array of values (MGET).
    Values,
    /// Several `Get`s: how many found a value (EXISTS).
    Count,
    /// One `Scan`: the next cursor and the page's keys (SCAN).
    Scan,
    /// One `DbSize`: the number of keys (DBSIZE).
    DbSize,
    /// One `Status`, then a `DbSize` if the keyspace section is wanted:
    /// INFO's text for these sections (empty: the default), with the
    /// door's own facts (filled in when the command is taken).
    Info {
        /// The sections asked for, lower case.
        sections: Vec<String>,
        /// Uptime, clients, port.
        local: super::info::Local,
    },
}

/// What to do with one command.
#[derive(Debug)]
pub enum Plan {
    /// Answer this now.
    Now(Resp),
    /// Forward these ops (in order) and combine their replies.
    Forward {
        /// The ops, each one request.
        ops: Vec<Op>,
        /// How their replies combine.
        shape: Shape,
    },
    /// Check a password, then answer as [`Login::then`] says.
    Login(Login),
    /// `KEYS pattern`: a whole scan, run before the next answer.
    Keys(Bytes),
    /// Answer `+OK`, then close the connection.
    Quit,
}

/// A login the connection must check before it answers.
#[derive(Debug)]
pub struct Login {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
    /// What the successful login answers: `AUTH`'s `+OK`, or `HELLO`'s
    /// greeting with the protocol and name it asked for.
    pub then: AfterLogin,
}

/// What a successful [`Login`] does.
#[derive(Debug)]
pub enum AfterLogin {
    /// `AUTH`: `+OK`.
    Ok,
    /// `HELLO`: switch to this protocol, take this name, greet.
    Hello {
        /// 2 or 3.
        protocol: u8,
        /// `SETNAME`, if given.
        name: Option<String>,
    },
}

/// Facts about the balancer a command may answer with.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Whether clients must log in (`--users-file`).
    pub needs_login: bool,
    /// Followers every acknowledged write reached (`--sync-replicas`,
    /// capped at the other replicas).
    pub sync_replicas: i64,
}

/// One RESP connection's own state.
#[derive(Debug)]
pub struct Conn {
    /// The connection's id (`CLIENT ID`).
    pub id: u64,
    /// Its peer, for `CLIENT INFO`.
    pub peer: std::net::SocketAddr,
    /// The door's address, for `CLIENT INFO`.
    pub local: Option<std::net::SocketAddr>,
    /// Whether answers are RESP3 (after `HELLO 3`).
    pub resp3: bool,
    /// `CLIENT SETNAME`.
    pub name: Option<String>,
    /// The user logged in as, when the balancer has users.
    pub user: Option<String>,
    /// `CLIENT SETINFO lib-name` and `lib-ver`.
    pub lib: (Option<String>, Option<String>),
    /// `CLIENT CONSISTENCY`: the level of this connection's reads; `None`:
    /// the balancer's default.
    pub consistency: Option<Consistency>,
}

/// A command name lower-cased on the stack: every command is matched by
/// name, and a `String` per command showed in profiles of pipelined GETs.
struct Name {
    bytes: [u8; Name::MAX],
    len: usize,
}

impl Name {
    /// Longer than any command this door knows.
    const MAX: usize = 24;

    /// `arg` lower-cased, or `None` when it is longer than any command.
    fn new(arg: &[u8]) -> Option<Name> {
        let mut bytes = [0u8; Name::MAX];
        bytes.get_mut(..arg.len())?.copy_from_slice(arg);
        bytes.make_ascii_lowercase();
        Some(Name {
            bytes,
            len: arg.len(),
        })
    }

    /// The name, if it is UTF-8 (every known one is ASCII).
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// Lower-case ASCII of a command name, for matching.
pub(super) fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

pub(super) fn wrong_arity(name: &str) -> Resp {
    Resp::err(format!("wrong number of arguments for '{name}' command"))
}

pub(super) fn text(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// Redis's answer to a command it does not know, naming the first
/// arguments as Redis does.
fn unknown(args: &[Bytes]) -> Resp {
    let name: String = text(&args[0]).chars().take(128).collect();
    let mut rest = String::new();
    for arg in args.iter().skip(1).take(8) {
        let arg: String = text(arg).chars().take(64).collect();
        rest.push_str(&format!("'{arg}' "));
    }
    Resp::err(format!(
        "unknown command '{name}', with args beginning with: {rest}"
    ))
}

impl Conn {
    /// A fresh connection: RESP2, no name, not logged in.
    pub fn new(id: u64, peer: std::net::SocketAddr, local: Option<std::net::SocketAddr>) -> Conn {
        Conn {
            id,
            peer,
            local,
            resp3: false,
            name: None,
            user: None,
            lib: (None, None),
            consistency: None,
        }
    }

    /// What to do with `args` (never empty), given `facts`.
    pub fn plan(&mut self, args: &[Bytes], facts: &Facts) -> Plan {
        // A name too long for any command is matched as an unknown one.
        let name = Name::new(&args[0]).unwrap_or(Name {
            bytes: [0; Name::MAX],
            len: 0,
        });
        let name = name.as_str();
        if facts.needs_login
            && self.user.is_none()
            && !matches!(name, "auth" | "hello" | "quit" | "reset")
        {
            return Plan::Now(Resp::coded("NOAUTH", "Authentication required."));
        }
        let n = args.len();
        if let Some(plan) = super::keys::plan(name, args) {
            return plan;
        }
        if let Some(plan) = super::keyspace::plan(name, args) {
            return plan;
        }
        match name {
            "get" if n == 2 => Plan::Forward {
                ops: vec![Op::Get {
                    key: args[1].clone(),
                }],
                shape: Shape::Value,
            },
            "mget" if n >= 2 => Plan::Forward {
                ops: args[1..]
                    .iter()
                    .map(|key| Op::Get { key: key.clone() })
                    .collect(),
                shape: Shape::Values,
            },
            "exists" if n >= 2 => Plan::Forward {
                ops: args[1..]
                    .iter()
                    .map(|key| Op::Get { key: key.clone() })
                    .collect(),
                shape: Shape::Count,
            },
            "ping" if n == 1 => Plan::Now(Resp::Simple("PONG")),
            "ping" if n == 2 => Plan::Now(Resp::Bulk(args[1].clone())),
            "echo" if n == 2 => Plan::Now(Resp::Bulk(args[1].clone())),
            "quit" => Plan::Quit,
            "select" if n == 2 => Plan::Now(match text(&args[1]).parse::<i64>() {
                Ok(0) => Resp::OK,
                Ok(_) => Resp::err("DB index is out of range"),
                Err(_) => Resp::err("value is not an integer or out of range"),
            }),
            "hello" => self.hello(args, facts),
            "auth" if n == 2 || n == 3 => self.auth(args, facts),
            "client" => self.client(args),
            "reset" if n == 1 => {
                self.resp3 = false;
                self.name = None;
                self.user = None;
                Plan::Now(Resp::Simple("RESET"))
            }
            "command" => Plan::Now(server::command(args)),
            "config" => Plan::Now(server::config(args)),
            "info" => {
                let sections: Vec<String> = args[1..].iter().map(|a| lower(a)).collect();
                let mut ops = vec![Op::Status];
                if super::info::wants_keyspace(&sections) {
                    ops.push(Op::DbSize);
                }
                Plan::Forward {
                    ops,
                    shape: Shape::Info {
                        sections,
                        local: super::info::Local::default(),
                    },
                }
            }
            "wait" if n == 3 => Plan::Now(
                match (text(&args[1]).parse::<i64>(), text(&args[2]).parse::<i64>()) {
                    (Ok(_), Ok(timeout)) if timeout >= 0 => Resp::Int(facts.sync_replicas),
                    (Ok(_), Ok(_)) => Resp::err("timeout is negative"),
                    _ => Resp::err("value is not an integer or out of range"),
                },
            ),
            "multi" | "exec" | "discard" | "watch" | "unwatch" => Plan::Now(Resp::err(format!(
                "{} is not supported: semikv has no transactions yet",
                name.to_ascii_uppercase()
            ))),
            known if server::COMMANDS.iter().any(|c| c.0 == known) => Plan::Now(wrong_arity(known)),
            _ => Plan::Now(unknown(args)),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello(&mut self, args: &[Bytes], facts: &Facts) -> Plan {
        let mut protocol = if self.resp3 { 3 } else { 2 };
        let mut login = None;
        let mut name = None;
        if let Some(v) = args.get(1) {
            match text(v).parse::<i64>() {
                Ok(v @ (2 | 3)) => protocol = v as u8,
                Ok(_) => return Plan::Now(Resp::coded("NOPROTO", "unsupported protocol version")),
                Err(_) => {
                    return Plan::Now(Resp::err(
                        "Protocol version is not an integer or out of range",
                    ))
                }
            }
        }
        let mut i = 2;
        while i < args.len() {
            match lower(&args[i]).as_str() {
                "auth" if i + 2 < args.len() => {
                    login = Some((text(&args[i + 1]), text(&args[i + 2])));
                    i += 3;
                }
                "setname" if i + 1 < args.len() => {
                    name = Some(text(&args[i + 1]));
                    i += 2;
                }
                other => {
                    return Plan::Now(Resp::err(format!("Syntax error in HELLO option '{other}'")))
                }
            }
        }
        if let Some(name) = &name {
            if let Err(e) = check_name(name) {
                return Plan::Now(e);
            }
        }
        match login {
            Some((user, password)) if facts.needs_login => Plan::Login(Login {
                user,
                password,
                then: AfterLogin::Hello { protocol, name },
            }),
            // Without users, Redis's `default` user has no password: any
            // password logs in as it.
            Some((user, _)) if user == "default" => Plan::Now(self.greet(protocol, name)),
            Some(_) => Plan::Now(wrong_pass()),
            None if facts.needs_login && self.user.is_none() => {
                Plan::Now(Resp::coded("NOAUTH", "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"))
            }
            None => Plan::Now(self.greet(protocol, name)),
        }
    }

    /// Switches to `protocol`, takes `name`, and answers `HELLO`'s greeting
    /// (in the new protocol).
    pub fn greet(&mut self, protocol: u8, name: Option<String>) -> Resp {
        self.resp3 = protocol == 3;
        if name.is_some() {
            self.name = name;
        }
        Resp::Map(vec![
            (Resp::text("server"), Resp::text("semikv")),
            (Resp::text("version"), Resp::text(env!("CARGO_PKG_VERSION"))),
            (Resp::text("proto"), Resp::Int(i64::from(protocol))),
            (Resp::text("id"), Resp::Int(self.id as i64)),
            (Resp::text("mode"), Resp::text("standalone")),
            (Resp::text("role"), Resp::text("master")),
            (Resp::text("modules"), Resp::Array(Vec::new())),
        ])
    }

    /// `AUTH [user] password`.
    fn auth(&mut self, args: &[Bytes], facts: &Facts) -> Plan {
        if !facts.needs_login {
            return Plan::Now(match args.len() {
                // As Redis with no password: the one-argument form is a
                // mistake worth saying; `default` with any password is in.
                2 => no_password_set(),
                _ if args[1].as_ref() == b"default" => Resp::OK,
                _ => wrong_pass(),
            });
        }
        let (user, password) = if args.len() == 3 {
            (text(&args[1]), text(&args[2]))
        } else {
            ("default".to_string(), text(&args[1]))
        };
        Plan::Login(Login {
            user,
            password,
            then: AfterLogin::Ok,
        })
    }

    /// `CLIENT SETNAME|GETNAME|SETINFO|ID|INFO|CONSISTENCY`.
    fn client(&mut self, args: &[Bytes]) -> Plan {
        let Some(sub) = args.get(1) else {
            return Plan::Now(wrong_arity("client"));
        };
        let sub = lower(sub);
        let n = args.len();
        Plan::Now(match sub.as_str() {
            "setname" if n == 3 => {
                let name = text(&args[2]);
                match check_name(&name) {
                    Ok(()) => {
                        self.name = (!name.is_empty()).then_some(name);
                        Resp::OK
                    }
                    Err(e) => e,
                }
            }
            "getname" if n == 2 => self.name.clone().map_or(Resp::Nil, Resp::text),
            "id" if n == 2 => Resp::Int(self.id as i64),
            "setinfo" if n == 4 => {
                let value = text(&args[3]);
                let attr = lower(&args[2]);
                // Shown in CLIENT INFO's one line: no spaces or line breaks
                // that would forge fields, and no unbounded length.
                if value.len() > MAX_CLIENT_INFO || check_name(&value).is_err() {
                    return Plan::Now(Resp::err(format!(
                        "{attr} cannot contain spaces, newlines or special characters, \
                         nor be longer than {MAX_CLIENT_INFO} bytes."
                    )));
                }
                match attr.as_str() {
                    "lib-name" => {
                        self.lib.0 = Some(value);
                        Resp::OK
                    }
                    "lib-ver" => {
                        self.lib.1 = Some(value);
                        Resp::OK
                    }
                    other => Resp::err(format!("Unrecognized option '{other}'")),
                }
            }
            "info" if n == 2 => Resp::Verbatim(self.info_line()),
            // semikv's own: the consistency level of this connection's
            // reads (see the README), shown or set.
            "consistency" if n == 2 => Resp::text(
                self.consistency
                    .map_or_else(|| "default".to_string(), |l| l.to_string()),
            ),
            "consistency" if n == 3 => match text(&args[2]).parse::<Consistency>() {
                Ok(level) => {
                    self.consistency = Some(level);
                    Resp::OK
                }
                Err(_) if lower(&args[2]) == "default" => {
                    self.consistency = None;
                    Resp::OK
                }
                Err(why) => Resp::err(why),
            },
            "setname" | "getname" | "id" | "setinfo" | "info" | "consistency" => Resp::err(
                format!("wrong number of arguments for 'client|{sub}' command"),
            ),
            _ => Resp::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                text(&args[1])
            )),
        })
    }

    /// This connection as one `CLIENT INFO`/`CLIENT LIST` line.
    pub fn info_line(&self) -> String {
        format!(
            "id={} addr={} laddr={} name={} db=0 user={} resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.peer,
            self.local.map(|a| a.to_string()).unwrap_or_default(),
            self.name.as_deref().unwrap_or(""),
            self.user.as_deref().unwrap_or("default"),
            if self.resp3 { 3 } else { 2 },
            self.lib.0.as_deref().unwrap_or(""),
            self.lib.1.as_deref().unwrap_or(""),
        )
    }
}

/// Longest `CLIENT SETNAME` or `SETINFO` value.
const MAX_CLIENT_INFO: usize = 256;

/// A client name may not hold spaces or line breaks (Redis's rule), nor be
/// longer than [`MAX_CLIENT_INFO`].
fn check_name(name: &str) -> Result<(), Resp> {
    if name.len() > MAX_CLIENT_INFO {
        return Err(Resp::err(format!(
            "Client names cannot be longer than {MAX_CLIENT_INFO} bytes."
        )));
    }
    if name.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
        return Err(Resp::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

/// Redis's answer to a wrong user or password.
pub fn wrong_pass() -> Resp {
    Resp::coded(
        "WRONGPASS",
        "invalid username-password pair or user is disabled.",
    )
}

fn no_password_set() -> Resp {
    Resp::err(
        "AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?",
    )
}

/// The RESP error for a semikv error reply, with the Redis code a client
/// library acts on where one fits.
pub fn error(e: &ErrorReply) -> Resp {
    match e {
        ErrorReply::NotLeader { .. } | ErrorReply::Unavailable { .. } => Resp::coded("TRYAGAIN", e),
        ErrorReply::NotEnoughReplicas { .. } => Resp::coded("NOREPLICAS", e),
        ErrorReply::OutOfMemory { .. } => Resp::coded("OOM", e),
        ErrorReply::DiskFull { .. } => Resp::coded("MISCONF", e),
        ErrorReply::NoPermission { .. } => Resp::coded("NOPERM", e),
        ErrorReply::Invalid { reason } => Resp::err(reason),
        ErrorReply::NotAnInteger => Resp::err("value is not an integer or out of range"),
        ErrorReply::Overflow => Resp::err("increment or decrement would overflow"),
        other => Resp::err(other),
    }
}

/// The answer of `shape` from its ops' replies, in order (a read at the
/// connection's level answered as the read it wraps).
pub fn combine(shape: &Shape, mut replies: Vec<Reply>) -> Resp {
    for reply in &mut replies {
        if let Reply::Read(answer) = reply {
            let inner = std::mem::replace(answer.reply.as_mut(), Reply::Pong);
            *reply = inner;
        }
    }
    if let Shape::Info { sections, local } = shape {
        // A key count that failed leaves its section empty, not INFO.
        return match replies.first() {
            Some(r) => super::info::info(r, replies.get(1), sections, *local),
            None => Resp::Verbatim(String::new()),
        };
    }
    if let Some(Reply::Error(e)) = replies.iter().find(|r| matches!(r, Reply::Error(_))) {
        return error(e);
    }
    let unexpected = |r: &Reply| Resp::err(format!("unexpected reply {r:?}"));
    match shape {
        Shape::Value => match replies.first() {
            Some(Reply::Value(Some(v))) => Resp::Bulk(v.clone()),
            Some(Reply::Value(None)) => Resp::Nil,
            Some(other) => unexpected(other),
            None => Resp::Nil,
        },
        Shape::Ok => match replies.first() {
            Some(Reply::Written { .. }) => Resp::OK,
            Some(other) => unexpected(other),
            None => Resp::OK,
        },
        Shape::Values => Resp::Array(
            replies
                .into_iter()
                .map(|r| match r {
                    Reply::Value(Some(v)) => Resp::Bulk(v),
                    _ => Resp::Nil,
                })
                .collect(),
        ),
        Shape::Count => Resp::Int(
            replies
                .iter()
                .filter(|r| matches!(r, Reply::Value(Some(_))))
                .count() as i64,
        ),
        Shape::Info { .. } => Resp::Verbatim(String::new()),
        Shape::Scan => match replies.into_iter().next() {
            Some(Reply::Keys(page)) => super::keyspace::page(page),
            Some(other) => unexpected(&other),
            None => Resp::Nil,
        },
        Shape::DbSize => match replies.first() {
            Some(Reply::KeyCount(count)) => Resp::Int(count.keys as i64),
            Some(other) => unexpected(other),
            None => Resp::Int(0),
        },
        Shape::Strlen | Shape::Type => match replies.first() {
            Some(Reply::Value(v)) => match (shape, v) {
                (Shape::Strlen, v) => Resp::Int(v.as_ref().map_or(0, |v| v.len() as i64)),
                (_, Some(_)) => Resp::Simple("string"),
                (_, None) => Resp::Simple("none"),
            },
            Some(other) => unexpected(other),
            None => Resp::Nil,
        },
        Shape::Ttl { millis } => match replies.first() {
            Some(Reply::Ttl(t)) => super::keys::ttl(t, *millis),
            Some(other) => unexpected(other),
            None => Resp::Nil,
        },
        Shape::Done | Shape::SetResult | Shape::Applied | Shape::Int | Shape::OldValue => {
            match replies.first() {
                Some(Reply::Outcome(o)) => {
                    super::keys::outcome(shape, o).unwrap_or_else(|| unexpected(&replies[0]))
                }
                Some(other) => unexpected(other),
                None => Resp::Nil,
            }
        }
    }
}

#[cfg(test)]
mod tests;
