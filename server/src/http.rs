//! The replica's HTTP listener (`--http ADDR`): `/healthz`, `/readyz`,
//! `/v1/status` (the JSON of `semikv status --json` against a replica) and
//! Prometheus `/metrics`. It serves no data: clients go through a balancer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use semikv_protocol::http::{metrics, HttpLimits};
use semikv_protocol::net::Listener;
use semikv_protocol::NodeRole;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::replica::Replica;

struct Door {
    replica: Arc<Replica>,
    registry: prometheus_client::registry::Registry,
}

/// The routes over `replica`.
pub fn app(replica: Arc<Replica>) -> axum::Router {
    let scraped = replica.clone();
    let registry = metrics::registry(move |page| crate::metrics::write(page, &scraped));
    axum::Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics_page))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "no such path: a replica serves /healthz, /readyz, /v1/status and /metrics"})),
            )
        })
        .with_state(Arc::new(Door { replica, registry }))
}

/// Serves the replica's routes on `listener` until `shutdown`.
pub async fn run(
    listener: Listener,
    replica: Arc<Replica>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = HttpLimits {
        // HTTPS when the replica serves TLS: every listener does.
        tls: replica.config.tls.clone(),
        // Operators and scrapers, not clients: a few are plenty.
        max_connections: 64,
        ..HttpLimits::default()
    };
    semikv_protocol::http::serve(
        listener,
        app(replica),
        limits,
        || (),
        shutdown,
        tasks,
        "http",
    )
    .await;
}

async fn status(State(door): State<Arc<Door>>) -> Response {
    let report = door.replica.lock().report();
    axum::Json(semikv_protocol::json::node_report(&report)).into_response()
}

/// 200 while the replica is in its role and caught up: a leader that takes
/// writes, a follower whose stream from its leader is up and that has
/// applied all it knows committed. 503 with the reason otherwise.
async fn readyz(State(door): State<Arc<Door>>) -> Response {
    let (serving, report) = {
        let node = door.replica.lock();
        (node.check_serving(), node.report())
    };
    let status = &report.status;
    let reason = match (serving, status.role) {
        (Err(e), _) => Some(format!("not serving: {e}")),
        (Ok(()), NodeRole::Idle) => Some("not yet told to lead or follow".to_string()),
        (Ok(()), NodeRole::Leader) => report
            .resources
            .disk_full
            .as_ref()
            .map(|why| format!("refusing writes: {why}")),
        (Ok(()), NodeRole::Follower) if !door.replica.metrics.is_following() => Some(format!(
            "no stream from the leader {} yet",
            status.leader.as_deref().unwrap_or("(unknown)")
        )),
        (Ok(()), NodeRole::Follower) if status.applied_index < status.commit_index => {
            Some(format!(
                "applied {} of {} committed",
                status.applied_index, status.commit_index
            ))
        }
        (Ok(()), NodeRole::Follower) => None,
    };
    match reason {
        None => axum::Json(json!({
            "ready": true,
            "role": status.role.to_string(),
            "epoch": status.epoch.to_string(),
        }))
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "role": status.role.to_string(), "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics_page(State(door): State<Arc<Door>>) -> Response {
    let page = metrics::render(&door.registry);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], page).into_response()
}
