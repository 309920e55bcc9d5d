//! `INFO`'s text from the balancer's view of the cluster, in Redis's
//! `# Section` / `field:value` format and Redis's field names where a field
//! has a Redis equivalent (so that tools that read `role`,
//! `connected_slaves` or `slaveN` lines find them).

use std::fmt::Write as _;
use std::time::Duration;

use semikv_protocol::{ClusterStatus, NodeRole, Reply};

use super::command::error;
use super::reply::Resp;

/// What INFO says beyond the cluster's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Local {
    /// Since the balancer started.
    pub uptime: Duration,
    /// Client connections open on the RESP door now.
    pub clients: usize,
    /// The RESP door's port.
    pub port: u16,
}

/// The sections INFO prints when asked for none, `default` or `all`.
const SECTIONS: &[&str] = &["server", "clients", "replication", "keyspace"];

/// Whether INFO with `sections` prints the keyspace (and so asks a
/// replica for its key count).
pub fn wants_keyspace(sections: &[String]) -> bool {
    wanted(sections).contains(&"keyspace")
}

/// The sections INFO prints for `sections` (lower case), in their order.
fn wanted(sections: &[String]) -> Vec<&'static str> {
    if sections.is_empty()
        || sections
            .iter()
            .any(|s| matches!(s.as_str(), "all" | "default" | "everything"))
    {
        SECTIONS.to_vec()
    } else {
        SECTIONS
            .iter()
            .copied()
            .filter(|s| sections.iter().any(|w| w == s))
            .collect()
    }
}

/// INFO's answer for `sections` from `reply` (the balancer's status) and
/// `count` (a replica's answer to `DbSize`, if asked).
pub fn info(reply: &Reply, count: Option<&Reply>, sections: &[String], local: Local) -> Resp {
    let status = match reply {
        Reply::ClusterView(view) => &view.report.status,
        Reply::ClusterReport(report) => &report.status,
        Reply::Cluster(status) => status,
        Reply::Error(e) => return error(e),
        other => return Resp::err(format!("unexpected status reply {other:?}")),
    };
    let mut out = String::new();
    for section in wanted(sections) {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        match section {
            "server" => server(&mut out, local),
            "clients" => {
                let _ = write!(out, "# Clients\r\nconnected_clients:{}\r\n", local.clients);
            }
            "replication" => replication(&mut out, status),
            // As Redis: no line for an empty database, and none either
            // when the count could not be had.
            _ => {
                out.push_str("# Keyspace\r\n");
                if let Some(Reply::KeyCount(c)) = count {
                    if c.keys > 0 {
                        let _ = write!(
                            out,
                            "db0:keys={},expires={},avg_ttl=0\r\n",
                            c.keys, c.expiring
                        );
                    }
                }
            }
        }
    }
    Resp::Verbatim(out)
}

fn server(out: &mut String, local: Local) {
    let _ = write!(
        out,
        "# Server\r\n\
         redis_version:7.2.0\r\n\
         semikv_version:{}\r\n\
         redis_mode:standalone\r\n\
         os:{}\r\n\
         arch_bits:{}\r\n\
         process_id:{}\r\n\
         tcp_port:{}\r\n\
         uptime_in_seconds:{}\r\n\
         uptime_in_days:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        usize::BITS,
        std::process::id(),
        local.port,
        local.uptime.as_secs(),
        local.uptime.as_secs() / 86_400,
    );
}

/// The leader as Redis's master; each other healthy replica as a slave with
/// its offset (applied index) and lag (entries behind the leader).
fn replication(out: &mut String, status: &ClusterStatus) {
    let leader = status.replicas.iter().find(|r| {
        r.role == NodeRole::Leader && r.healthy && Some(&r.addr) == status.leader.as_ref()
    });
    let followers: Vec<_> = status
        .replicas
        .iter()
        .filter(|r| r.healthy && r.role == NodeRole::Follower)
        .collect();
    out.push_str("# Replication\r\nrole:master\r\n");
    let _ = write!(out, "connected_slaves:{}\r\n", followers.len());
    for (i, r) in followers.iter().enumerate() {
        let (ip, port) = r.addr.rsplit_once(':').unwrap_or((r.addr.as_str(), "0"));
        let _ = write!(
            out,
            "slave{i}:ip={ip},port={port},state=online,offset={},lag={}\r\n",
            r.applied_index.0, r.lag
        );
    }
    let _ = write!(
        out,
        "semikv_leader:{}\r\nsemikv_epoch:{}\r\nmaster_repl_offset:{}\r\n",
        status.leader.as_deref().unwrap_or(""),
        status.epoch,
        leader.map_or(0, |l| l.last_index.0),
    );
}
