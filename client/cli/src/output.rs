//! How replies are shown to a user, in the style redis-cli users know: `OK`,
//! the value, `(nil)`, `(error) ...`, and the cluster status as a table or as
//! JSON.
//!
//! Values print as they are when they are non-empty text without control
//! characters and cannot be mistaken for a marker (they do not start with `"`
//! or `(`); anything else prints double-quoted with the escapes the command
//! parser reads, so `get` output can be pasted back into `set`.

use std::fmt::Write as _;

use bytes::Bytes;
use semikv_protocol::json;
use semikv_protocol::{
    ClusterReport, ClusterStatus, ClusterView, KeyPage, KeyTtl, NodeReport, NodeStatus, Outcome,
    Reply, Resources,
};
use serde_json::Value;

use crate::command::{quote_always, Show};

/// How results are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    /// `status` as a JSON object instead of a table.
    pub json: bool,
    /// Every result on exactly one line (script mode): `status` becomes
    /// one-line JSON and `help` one line.
    pub one_line: bool,
}

/// Renders a value for display (see the module docs for when it is quoted).
pub fn value(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text.is_empty()
                && !text.starts_with('"')
                && !text.starts_with('(')
                && !text.chars().any(char::is_control) =>
        {
            text.to_string()
        }
        _ => quote_always(bytes),
    }
}

/// The line shown for an error.
pub fn error(message: impl std::fmt::Display) -> String {
    format!("(error) {message}")
}

/// Renders a reply. The flag is false for [`Reply::Error`].
pub fn reply(reply: &Reply, style: Style) -> (String, bool) {
    match reply {
        Reply::Value(Some(v)) => (value(v), true),
        Reply::Value(None) => ("(nil)".to_string(), true),
        Reply::Written { .. } => ("OK".to_string(), true),
        Reply::Pong => ("PONG".to_string(), true),
        Reply::Error(e) => (error(e), false),
        Reply::Node(_) | Reply::NodeReport(_) => match reply.clone().into_node_report() {
            Ok(report) => (node_report(&report, style), true),
            Err(_) => (String::new(), true),
        },
        Reply::Cluster(_) | Reply::ClusterReport(_) => match reply.clone().into_cluster_report() {
            Ok(report) => (cluster_report(&report, style), true),
            Err(_) => (String::new(), true),
        },
        Reply::Outcome(outcome) => (self::outcome(outcome), true),
        Reply::Ttl(ttl) => (self::ttl(*ttl), true),
        Reply::Keys(page) => (self::page(page), true),
        Reply::KeyCount(count) => (format!("(integer) {}", count.keys), true),
        Reply::Read(answer) => self::reply(&answer.reply, style),
        Reply::ClusterView(view) => (cluster_view(view, style), true),
    }
}

/// Keys as Redis's numbered list: `1) a` per line, or `(empty array)`.
pub fn keys(keys: &[Bytes]) -> String {
    if keys.is_empty() {
        return "(empty array)".to_string();
    }
    let lines: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{}) {}", i + 1, value(k)))
        .collect();
    lines.join("\n")
}

/// A scan page: the next cursor (0: done), then its keys.
pub fn page(page: &KeyPage) -> String {
    format!("cursor {}\n{}", page.cursor, keys(&page.keys))
}

/// Renders the reply to an evaluated command as `show` says (Redis's
/// conventions: `OK`, `(nil)`, `(integer) N`); any other reply as
/// [`reply`] does. The flag is false for [`Reply::Error`].
pub fn evaluated(reply: &Reply, show: Show, style: Style) -> (String, bool) {
    let Reply::Outcome(o) = reply else {
        return self::reply(reply, style);
    };
    let text = match show {
        Show::Applied if o.applied => "OK".to_string(),
        Show::Applied => "(nil)".to_string(),
        Show::Value => match &o.value {
            Some(v) => value(v),
            None => "(nil)".to_string(),
        },
        Show::Int => format!("(integer) {}", o.int),
        Show::Flag => format!("(integer) {}", i32::from(o.applied)),
    };
    (text, true)
}

/// A command's outcome when the command is not known: its value if it
/// reports one, else its number.
pub fn outcome(outcome: &Outcome) -> String {
    match &outcome.value {
        Some(v) => value(v),
        None => format!("(integer) {}", outcome.int),
    }
}

/// A key's expiry: `(no such key)`, `(no expiry)` or the time left.
pub fn ttl(ttl: KeyTtl) -> String {
    match ttl {
        KeyTtl::NoKey => "(no such key)".to_string(),
        KeyTtl::Persistent => "(no expiry)".to_string(),
        KeyTtl::Expires { remaining_ms, .. } => format!("{remaining_ms} ms"),
    }
}

/// A replica's resources in a table cell: `disk full` while it refuses
/// writes for lack of disk, then the store's size and limit.
fn resources_cell(resources: Option<&Resources>) -> String {
    let Some(r) = resources else {
        return "-".to_string();
    };
    let memory = match r.memory_limit {
        Some(limit) => format!("{}/{}", bytes(r.memory_used), bytes(limit)),
        None => bytes(r.memory_used),
    };
    match r.disk_full {
        Some(_) => format!("DISK FULL, {memory}"),
        None => memory,
    }
}

/// A byte count the way people read it: `512 B`, `3.1 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The balancer's report: [`cluster_status`] with each replica's disk and
/// memory.
pub fn cluster_report(report: &ClusterReport, style: Style) -> String {
    if style.json || style.one_line {
        return render_json(&json::cluster_report(report), style);
    }
    cluster_table(&report.status, Some(&report.resources), None)
}

/// The balancer's view: [`cluster_report`] with each replica's read lag
/// (`read lag` column; `read_lag_ms` in JSON, `null` when the replica gets
/// no reads or its lag is unknown).
pub fn cluster_view(view: &ClusterView, style: Style) -> String {
    if style.json || style.one_line {
        return render_json(&json::cluster_view(view), style);
    }
    cluster_table(
        &view.report.status,
        Some(&view.report.resources),
        Some(&view.lag_ms),
    )
}

/// A replica's own report: [`node_status`] with its disk and memory.
pub fn node_report(report: &NodeReport, style: Style) -> String {
    if style.json || style.one_line {
        return render_json(&json::node_report(report), style);
    }
    node_table(&report.status, Some(&report.resources))
}

fn render_json(value: &Value, style: Style) -> String {
    let text = if style.one_line {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    };
    // Serialising a `Value` cannot fail (its map keys are strings).
    text.unwrap_or_default()
}

/// The cluster status: a table, or JSON with `style.json` or `style.one_line`.
pub fn cluster_status(status: &ClusterStatus, style: Style) -> String {
    if style.json || style.one_line {
        return render_json(&json::cluster_status(status), style);
    }
    cluster_table(status, None, None)
}

/// The table; with `resources` (a report), a last column shows each
/// replica's disk and memory.
fn cluster_table(
    status: &ClusterStatus,
    resources: Option<&[Option<Resources>]>,
    lag_ms: Option<&[Option<u64>]>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leader: {}  epoch: {}",
        status.leader.as_deref().unwrap_or("(none)"),
        status.epoch
    );
    let rows: Vec<Vec<String>> = status
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = vec![
                r.id.map_or_else(|| "?".to_string(), |id| id.to_string()),
                r.addr.clone(),
                r.role.to_string(),
                if r.healthy { "up" } else { "down" }.to_string(),
                r.epoch.to_string(),
                r.last_index.to_string(),
                r.lag.to_string(),
            ];
            if let Some(lag_ms) = lag_ms {
                row.push(r.applied_index.to_string());
                row.push(match lag_ms.get(i).copied().flatten() {
                    Some(ms) => format!("{ms} ms"),
                    None => "-".to_string(),
                });
            }
            if let Some(resources) = resources {
                row.push(resources_cell(resources.get(i).and_then(Option::as_ref)));
            }
            row
        })
        .collect();
    let mut header = vec![
        "id",
        "address",
        "role",
        "health",
        "epoch",
        "last index",
        "lag",
    ];
    if lag_ms.is_some() {
        header.push("applied");
        header.push("read lag");
    }
    if resources.is_some() {
        header.push("resources");
    }
    out.push_str(&table(&header, &rows));
    out
}

/// A replica's own status: a small table, or JSON.
pub fn node_status(status: &NodeStatus, style: Style) -> String {
    if style.json || style.one_line {
        return render_json(&json::node_status(status), style);
    }
    node_table(status, None)
}

fn node_table(status: &NodeStatus, resources: Option<&Resources>) -> String {
    let mut row = vec![
        status.id.to_string(),
        status.role.to_string(),
        status.epoch.to_string(),
        status.last_index.to_string(),
        status.commit_index.to_string(),
        status.applied_index.to_string(),
        status.leader.clone().unwrap_or_else(|| "-".to_string()),
    ];
    let mut header = vec![
        "id",
        "role",
        "epoch",
        "last index",
        "commit",
        "applied",
        "leader",
    ];
    if let Some(resources) = resources {
        row.push(resources_cell(Some(resources)));
        header.push("resources");
    }
    table(&header, &[row])
}

/// Left-aligned columns separated by two spaces; no trailing newline.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    let header: Vec<String> = headers.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        lines.push(line.trim_end().to_string());
    }
    lines.join("\n")
}

/// The help text; `local` adds the local-cluster commands.
pub fn help(style: Style, local: bool) -> String {
    let visible = crate::command::synopses(local);
    if style.one_line {
        let names: Vec<&str> = visible.map(|(name, _)| name).collect();
        return format!("commands: {}", names.join(" "));
    }
    let mut out = String::from("commands:\n");
    for (name, usage) in visible {
        let what = describe(name);
        let synopsis = format!("{name} {usage}");
        let _ = writeln!(out, "  {:<28} {what}", synopsis.trim_end());
    }
    out.push_str(
        "keys and values may be double-quoted, with escapes \\n \\r \\t \\0 \\\\ \\\" \\xHH",
    );
    out
}

fn describe(name: &str) -> &'static str {
    match name {
        "set" => "write a key (splits at the first '=')",
        "get" => "read a key",
        "del" => "delete keys (one entry; with several, how many existed)",
        "mset" => "write several keys in one entry",
        "msetnx" => "write several keys if none exists",
        "incr" | "decr" | "incrby" => "add to an integer value",
        "append" => "append to a value",
        "getdel" => "read and delete a key",
        "expire" => "expire a key in SECS seconds",
        "persist" => "remove a key's expiry",
        "ttl" => "show a key's time left",
        "keys" => "list the keys a glob matches (a whole scan)",
        "scan" => "one page of keys from CURSOR (0 first; next cursor 0: done)",
        "dbsize" => "count the keys",
        "ping" => "check the server answers",
        "status" => "show the cluster (or replica) status",
        "help" => "show this help",
        "quit" | "exit" => "leave",
        "kill" => "kill replica ID of the local cluster",
        "restart" => "restart replica ID of the local cluster",
        _ => "",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::command::split_words;
    use crate::testing::sample_status;
    use bytes::Bytes;
    use semikv_protocol::{CoordinatorId, Epoch, ErrorReply, LogIndex, NodeRole, ReplicaId};

    #[test]
    fn simple_replies() {
        let style = Style::default();
        assert_eq!(reply(&Reply::Value(None), style), ("(nil)".into(), true));
        assert_eq!(
            reply(&Reply::Written { index: LogIndex(3) }, style),
            ("OK".into(), true)
        );
        assert_eq!(reply(&Reply::Pong, style), ("PONG".into(), true));
        assert_eq!(
            reply(&Reply::Value(Some(Bytes::from_static(b"bar"))), style),
            ("bar".into(), true)
        );
        let err = Reply::Error(ErrorReply::NotLeader {
            leader: Some("127.0.0.1:1".into()),
        });
        assert_eq!(
            reply(&err, style),
            ("(error) NotLeader: leader is 127.0.0.1:1".into(), false)
        );
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(value(b"hello world"), "hello world");
        assert_eq!(value(b"a=b"), "a=b");
        assert_eq!(value(b""), r#""""#);
        assert_eq!(value(b"(nil)"), r#""(nil)""#);
        assert_eq!(value(b"\"x\""), r#""\"x\"""#);
        assert_eq!(value(b"a\nb"), r#""a\nb""#);
        assert_eq!(value(&[0, 0xff]), r#""\x00\xff""#);
    }

    #[test]
    fn quoted_values_parse_back() {
        for bytes in [&b"a\nb"[..], &[0, 0xff, b'"'], b"", b"(x"] {
            let shown = value(bytes);
            let words = split_words(shown.as_bytes()).unwrap();
            assert_eq!(words.len(), 1, "{shown}");
            assert_eq!(words[0].bytes, bytes);
        }
    }

    #[test]
    fn status_table_has_every_column() {
        let text = cluster_status(&sample_status(), Style::default());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader: 127.0.0.1:9001  epoch: 3.ab");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["id", "address", "role", "health", "epoch", "last", "index", "lag"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["1", "127.0.0.1:9001", "leader", "up", "3.ab", "42", "0"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["?", "127.0.0.1:9002", "follower", "down", "2.ab", "40", "2"]
        );
        assert_eq!(lines.len(), 4);
    }

    fn sample_report() -> ClusterReport {
        ClusterReport {
            status: sample_status(),
            resources: vec![
                Some(Resources {
                    disk_full: Some("no space left".to_string()),
                    memory_used: 3 << 20,
                    memory_limit: Some(1 << 30),
                }),
                None,
            ],
        }
    }

    #[test]
    fn a_report_shows_disk_and_memory_in_the_table_and_the_json() {
        let text = cluster_report(&sample_report(), Style::default());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].ends_with("resources"), "{text}");
        assert!(lines[2].ends_with("DISK FULL, 3.0 MiB/1.0 GiB"), "{text}");
        assert!(lines[3].ends_with('-'), "{text}");
        let v = json::cluster_report(&sample_report());
        let r = &v["replicas"];
        assert_eq!(r[0]["disk_full"], "no space left");
        assert_eq!(r[0]["memory_used"], 3 << 20);
        assert_eq!(r[0]["memory_limit"], 1u64 << 30);
        assert_eq!(r[1]["disk_full"], Value::Null);
        assert_eq!(r[1]["memory_used"], Value::Null);
        assert_eq!(r[0]["lag"], 0);
    }

    #[test]
    fn status_json_shape() {
        let style = Style {
            json: true,
            one_line: false,
        };
        let text = cluster_status(&sample_status(), style);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["leader"], "127.0.0.1:9001");
        assert_eq!(v["epoch"], "3.ab");
        assert_eq!(v["term"], 3);
        let r = &v["replicas"];
        assert_eq!(r.as_array().unwrap().len(), 2);
        assert_eq!(r[0]["id"], 1);
        assert_eq!(r[0]["addr"], "127.0.0.1:9001");
        assert_eq!(r[0]["role"], "leader");
        assert_eq!(r[0]["healthy"], true);
        assert_eq!(r[0]["epoch"], "3.ab");
        assert_eq!(r[0]["term"], 3);
        assert_eq!(r[0]["last_index"], 42);
        assert_eq!(r[0]["commit_index"], 42);
        assert_eq!(r[0]["applied_index"], 42);
        assert_eq!(r[0]["lag"], 0);
        assert_eq!(r[1]["id"], Value::Null);
        assert_eq!(r[1]["commit_index"], 39);

        let mut no_leader = sample_status();
        no_leader.leader = None;
        let one_line = Style {
            json: false,
            one_line: true,
        };
        let text = cluster_status(&no_leader, one_line);
        assert!(!text.contains('\n'));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["leader"], Value::Null);
    }

    #[test]
    fn node_status_renders() {
        let status = NodeStatus {
            id: ReplicaId(2),
            role: NodeRole::Follower,
            epoch: Epoch::new(4, CoordinatorId(0xab)),
            last_index: LogIndex(10),
            last_epoch: Epoch::new(4, CoordinatorId(0xab)),
            commit_index: LogIndex(9),
            applied_index: LogIndex(9),
            leader: Some("127.0.0.1:1".into()),
            followers: vec![],
        };
        let text = node_status(&status, Style::default());
        assert!(text.lines().nth(1).unwrap().starts_with("2  "));
        let json: Value = serde_json::from_str(&node_status(
            &status,
            Style {
                json: true,
                one_line: false,
            },
        ))
        .unwrap();
        assert_eq!(json["role"], "follower");
        assert_eq!(json["commit_index"], 9);
    }

    #[test]
    fn help_lists_commands() {
        let text = help(Style::default(), false);
        assert!(text.contains("set KEY=VALUE"));
        assert!(!text.contains("kill"));
        assert!(help(Style::default(), true).contains("restart ID"));
        assert!(!help(
            Style {
                json: false,
                one_line: true
            },
            true
        )
        .contains('\n'));
    }
}
