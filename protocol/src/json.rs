//! The JSON shapes of the status reports (`semikv status --json`, the
//! HTTP door's `/v1/status`): one definition for every tool that shows them.
//! Epochs are strings (a 128-bit number is more than a JSON number holds
//! exactly), with their term beside them as a number.

use serde_json::{json, Value};

use crate::{ClusterReport, ClusterStatus, ClusterView, NodeReport, NodeStatus, Resources};

/// A replica's resources as JSON fields: `disk_full` (the reason, or null),
/// `memory_used` and `memory_limit` (bytes, or null without a limit); all
/// null when the replica has not reported them.
fn resources(of: Option<&Resources>) -> [(&'static str, Value); 3] {
    [
        ("disk_full", json!(of.and_then(|r| r.disk_full.clone()))),
        ("memory_used", json!(of.map(|r| r.memory_used))),
        ("memory_limit", json!(of.and_then(|r| r.memory_limit))),
    ]
}

/// [`cluster_status`] with each replica's [`resources`] fields.
pub fn cluster_report(report: &ClusterReport) -> Value {
    let mut value = cluster_status(&report.status);
    if let Some(Value::Array(rows)) = value.get_mut("replicas") {
        for (i, row) in rows.iter_mut().enumerate() {
            let reported = report.resources.get(i).and_then(Option::as_ref);
            if let Value::Object(fields) = row {
                for (name, v) in resources(reported) {
                    fields.insert(name.to_string(), v);
                }
            }
        }
    }
    value
}

/// The cluster status as JSON:
/// `{"leader": ADDR|null, "epoch": "TERM.COORDINATOR", "term": N, "replicas":
/// [{"id", "addr", "role", "healthy", "epoch", "term", "last_index",
/// "commit_index", "applied_index", "lag"}]}`. An epoch is a string because
/// it is a 128-bit number (term and coordinator, see the README), more than
/// a JSON number holds exactly; its term is also given as a number.
pub fn cluster_status(status: &ClusterStatus) -> Value {
    let replicas: Vec<Value> = status
        .replicas
        .iter()
        .map(|r| {
            json!({
                "id": r.id.map(|id| id.0),
                "addr": r.addr,
                "role": r.role.to_string(),
                "healthy": r.healthy,
                "epoch": r.epoch.to_string(),
                "term": r.epoch.term(),
                "last_index": r.last_index.0,
                "commit_index": r.commit_index.0,
                "applied_index": r.applied_index.0,
                "lag": r.lag,
            })
        })
        .collect();
    json!({
        "leader": status.leader,
        "epoch": status.epoch.to_string(),
        "term": status.epoch.term(),
        "replicas": replicas,
    })
}

/// One replica's own status as JSON (when connected to a replica directly),
/// epochs as strings as in [`cluster_status`].
pub fn node_status(status: &NodeStatus) -> Value {
    let followers: Vec<Value> = status
        .followers
        .iter()
        .map(|f| {
            json!({
                "id": f.id.0,
                "match_index": f.match_index.0,
                "connected": f.connected,
            })
        })
        .collect();
    json!({
        "id": status.id.0,
        "role": status.role.to_string(),
        "epoch": status.epoch.to_string(),
        "term": status.epoch.term(),
        "last_index": status.last_index.0,
        "last_epoch": status.last_epoch.to_string(),
        "commit_index": status.commit_index.0,
        "applied_index": status.applied_index.0,
        "leader": status.leader,
        "followers": followers,
    })
}

/// The balancer's view: [`cluster_report`] with each replica's read lag
/// (`read_lag_ms`, `null` when the replica gets no reads or its lag is
/// unknown).
pub fn cluster_view(view: &ClusterView) -> Value {
    let mut value = cluster_report(&view.report);
    if let Some(Value::Array(rows)) = value.get_mut("replicas") {
        for (i, row) in rows.iter_mut().enumerate() {
            if let Value::Object(fields) = row {
                let lag = view.lag_ms.get(i).copied().flatten();
                fields.insert("read_lag_ms".to_string(), json!(lag));
            }
        }
    }
    value
}

/// A replica's own report: [`node_status`] with its [`resources`] fields.
pub fn node_report(report: &NodeReport) -> Value {
    let mut value = node_status(&report.status);
    if let Value::Object(fields) = &mut value {
        for (name, v) in resources(Some(&report.resources)) {
            fields.insert(name.to_string(), v);
        }
    }
    value
}
