//! Redis's commands about the whole key space: `SCAN` (one page, forwarded
//! as one `Scan`), `KEYS` (a whole scan the connection runs before its next
//! answer, as Redis's own KEYS holds its server), and `DBSIZE`.
//!
//! The cursor is the replicas' scan position as a decimal `u64`, so
//! clients that parse it as an integer (redis-py, redis-cli) work; it
//! means the same on every replica, so a scan's pages may be answered by
//! any of them.

use bytes::Bytes;
use semikv_protocol::{KeyPage, Op, Reply, Scan, MAX_SCAN_COUNT};

use super::command::{error, lower, text, wrong_arity, Plan, Shape};
use super::reply::Resp;
use crate::router::Router;

/// Keys a `KEYS` page asks for: fewer round trips than `SCAN`'s default.
const KEYS_PAGE: u32 = MAX_SCAN_COUNT;

/// Plans `SCAN`, `KEYS` and `DBSIZE`; `None` for another command.
pub fn plan(name: &str, args: &[Bytes]) -> Option<Plan> {
    let n = args.len();
    Some(match name {
        "dbsize" if n == 1 => Plan::Forward {
            ops: vec![Op::DbSize],
            shape: Shape::DbSize,
        },
        "dbsize" => Plan::Now(wrong_arity("dbsize")),
        "keys" if n == 2 => Plan::Keys(args[1].clone()),
        "keys" => Plan::Now(wrong_arity("keys")),
        "scan" if n >= 2 => scan(args),
        "scan" => Plan::Now(wrong_arity("scan")),
        _ => return None,
    })
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
fn scan(args: &[Bytes]) -> Plan {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Plan::Now(Resp::err("invalid cursor"));
    };
    let mut scan = Scan {
        cursor,
        count: 10,
        pattern: None,
    };
    let mut only_other_type = false;
    let mut options = args[2..].chunks(2);
    for pair in options.by_ref() {
        let [option, value] = pair else {
            return Plan::Now(Resp::err("syntax error"));
        };
        match lower(option).as_str() {
            "match" => scan.pattern = Some(value.clone()),
            "count" => match text(value).parse::<i64>() {
                Ok(count) if count >= 1 => {
                    scan.count = u32::try_from(count).unwrap_or(u32::MAX);
                }
                Ok(_) => return Plan::Now(Resp::err("syntax error")),
                Err(_) => return Plan::Now(Resp::err("value is not an integer or out of range")),
            },
            // Every semikv value is a string.
            "type" => only_other_type = !lower(value).eq("string"),
            _ => return Plan::Now(Resp::err("syntax error")),
        }
    }
    if let Err(reason) = scan.validate() {
        return Plan::Now(Resp::err(reason));
    }
    if only_other_type {
        // No key has another type: the whole scan is this empty page.
        return Plan::Now(page(KeyPage {
            keys: Vec::new(),
            cursor: 0,
        }));
    }
    Plan::Forward {
        ops: vec![Op::Scan(scan)],
        shape: Shape::Scan,
    }
}

/// A page as Redis answers `SCAN`: the next cursor as a bulk string, then
/// the keys.
pub fn page(page: KeyPage) -> Resp {
    Resp::Array(vec![
        Resp::text(page.cursor.to_string()),
        Resp::Array(page.keys.into_iter().map(Resp::Bulk).collect()),
    ])
}

/// Runs `KEYS pattern`: scans every page through `router` and answers the
/// matching keys, or an error, without holding more than `max_bytes` of
/// keys (past that, `SCAN` is the way). Every page is read at `level` (the
/// balancer's default if `None`) after the connection's position `seen`.
pub async fn keys(
    router: &Router,
    pattern: Bytes,
    max_bytes: usize,
    level: Option<semikv_protocol::Consistency>,
    seen: semikv_protocol::LogIndex,
) -> Resp {
    let level = level.unwrap_or(router.default_consistency());
    let pattern = if pattern.as_ref() == b"*" {
        None
    } else {
        Some(pattern)
    };
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    let mut cursor = 0;
    loop {
        let scan = Scan {
            cursor,
            count: KEYS_PAGE,
            pattern: pattern.clone(),
        };
        if let Err(reason) = scan.validate() {
            return Resp::err(reason);
        }
        let page = match router.handle_at(Op::Scan(scan), level, seen).await {
            Reply::Keys(page) => page,
            Reply::Error(e) => return error(&e),
            other => return Resp::err(format!("unexpected reply {other:?}")),
        };
        for key in page.keys {
            bytes += key.len() + 16;
            if bytes > max_bytes {
                return Resp::err(format!(
                    "KEYS would answer more than {max_bytes} bytes; use SCAN to page through them"
                ));
            }
            keys.push(Resp::Bulk(key));
        }
        if page.cursor == 0 {
            return Resp::Array(keys);
        }
        cursor = page.cursor;
    }
}
