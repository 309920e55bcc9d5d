//! The HTTP door (`--http ADDR`): the key-value API under `/v1/kv` (and the
//! seeds' `/key` shapes), the cluster's status, health for orchestrators and
//! Prometheus `/metrics`. Requests take the router's own path, with the
//! same routing, guarantees and errors as the other doors; [`answer`] says
//! how each reply becomes a status code and a body.
//!
//! HTTP clients keep no connection state, so the door is one session: a
//! read reflects every write this door acknowledged (to anyone), and the
//! position the client passes (`?after=N`, or the `x-semikv-index` header
//! of an earlier answer, from any door).

pub mod answer;
pub mod auth;
pub mod kv;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use semikv_protocol::http::{metrics, HttpLimits};
use semikv_protocol::net::Listener;
use semikv_protocol::{ErrorReply, LogIndex, NodeRole, Op, Reply};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::{Door, Meter, OpKind};
use crate::request::Position;
use crate::router::Router;
use crate::users::UserRole;

/// How long a request's head may take, and a keep-alive connection may
/// wait for its next request (lower with `--idle-timeout-secs`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request of the door shares.
#[derive(Debug)]
pub struct HttpDoor {
    router: Arc<Router>,
    config: Arc<Config>,
    meter: Meter,
    /// The highest position any answer of this door carried.
    seen: Position,
    registry: prometheus_client::registry::Registry,
    /// Bytes of request bodies all connections of every door may buffer
    /// at once (the balancer's one read budget).
    budget: semikv_protocol::budget::ReadBudget,
    logins: auth::Logins,
}

/// The state handlers get.
pub type Shared = Arc<HttpDoor>;

impl HttpDoor {
    /// The door over `router`, configured by `config`, its bodies read
    /// under `budget`.
    pub fn new(
        router: Arc<Router>,
        config: Arc<Config>,
        budget: semikv_protocol::budget::ReadBudget,
    ) -> HttpDoor {
        let groups = (0..1).map(|i| router.group(i).clone()).collect();
        HttpDoor {
            registry: crate::metrics::registry(config.metrics.clone(), groups),
            meter: Meter::new(config.metrics.clone(), Door::Http),
            seen: Position::default(),
            budget,
            logins: auth::Logins::new(),
            router,
            config,
        }
    }

    /// Routes `op` for a client that has seen `after`, counting it; the
    /// reply and the position to tell the client.
    pub async fn route(&self, op: Op, after: LogIndex) -> (Reply, LogIndex) {
        let kind = OpKind::of(&op);
        let counted = Counted::new(&self.meter, kind);
        let seen = self.seen.get().max(after);
        let reply = self
            .router
            .handle_at(op, self.router.default_consistency(), seen)
            .await;
        self.seen.note(&reply);
        if let Reply::Error(ErrorReply::Behind { applied, .. }) = &reply {
            // Even the leader has not applied the door's position: a
            // position from a write the new leader never had (acknowledged
            // by a deposed leader under async fallback). The door's own
            // position promises nothing to anyone; the client's `after`
            // still holds.
            self.seen.lower_to((*applied).max(after));
        }
        counted.answered(&reply);
        (reply, self.seen.get().max(after))
    }

    /// Counts a request refused before it was routed.
    pub fn refused(&self, op: OpKind, reply: &Reply) {
        self.meter.refused(op, reply);
    }

    /// The user's role when the balancer has users: from the request's
    /// Basic credentials, checked as a login is.
    ///
    /// # Errors
    /// The answer to send instead: 401 with the challenge, or 403.
    pub async fn authorize(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        op: &Op,
    ) -> Result<(), Box<Response>> {
        let Some(users) = &self.config.users else {
            return Ok(());
        };
        let Some((name, password)) = answer::basic_credentials(headers) else {
            return Err(Box::new(answer::unauthorized(
                "this balancer requires a user: send HTTP Basic credentials",
            )));
        };
        let role: UserRole = match self.logins.login(users, peer.ip(), &name, &password).await {
            Ok(role) => role,
            Err(crate::users::LoginError::HeldBack(secs)) => {
                return Err(Box::new(answer::held_back(secs)))
            }
            Err(e) => return Err(Box::new(answer::unauthorized(&e.to_string()))),
        };
        if !role.permits(op) {
            let reply = Reply::Error(ErrorReply::NoPermission {
                reason: format!("user {name} has role {role}, which may not {}", op.name()),
            });
            self.refused(OpKind::of(op), &reply);
            return Err(Box::new(answer::error(&reply_error(reply))));
        }
        Ok(())
    }
}

/// A request counted taken, and answered exactly once: with its reply, or,
/// when the client left first (hyper drops the handler's future), as
/// cancelled.
struct Counted<'m> {
    meter: &'m Meter,
    kind: OpKind,
    since: tokio::time::Instant,
    done: bool,
}

impl<'m> Counted<'m> {
    fn new(meter: &'m Meter, kind: OpKind) -> Self {
        meter.taken();
        Counted {
            meter,
            kind,
            since: tokio::time::Instant::now(),
            done: false,
        }
    }

    fn answered(mut self, reply: &Reply) {
        self.meter.answered(self.kind, reply, self.since);
        self.done = true;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.meter.cancelled(self.kind);
        }
    }
}

fn reply_error(reply: Reply) -> ErrorReply {
    match reply {
        Reply::Error(e) => e,
        other => ErrorReply::Invalid {
            reason: format!("unexpected reply {other:?}"),
        },
    }
}

/// The door's routes over `door`.
pub fn app(door: Shared) -> axum::Router {
    axum::Router::new()
        .merge(kv::routes())
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(door)
}

/// Serves the door on `listener` until `shutdown`.
pub async fn run(
    listener: Listener,
    router: Arc<Router>,
    config: Arc<Config>,
    budget: semikv_protocol::budget::ReadBudget,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = HttpLimits {
        // HTTPS with the TLS material of the other doors.
        tls: config.tls.clone(),
        max_connections: config.max_connections,
        // A keep-alive connection waits at most this for its next request.
        header_timeout: config
            .idle_timeout
            .map_or(HEADER_TIMEOUT, |idle| idle.min(HEADER_TIMEOUT)),
        ..HttpLimits::default()
    };
    let metrics = config.metrics.clone();
    let door = Arc::new(HttpDoor::new(router, config, budget));
    semikv_protocol::http::serve(
        listener,
        app(door),
        limits,
        move || metrics.connection(Door::Http),
        shutdown,
        tasks,
        "http",
    )
    .await;
}

async fn not_found() -> Response {
    answer::json_error(
        StatusCode::NOT_FOUND,
        "no such path: the key-value API is under /v1/kv/KEY",
        None,
    )
}

async fn not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let hint = if uri.path().starts_with("/v1/kv") {
        "; /v1/kv/KEY takes GET, PUT and DELETE, /v1/kv takes POST"
    } else {
        ""
    };
    answer::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {}{hint}", uri.path()),
        None,
    )
}

/// `GET /v1/status`: the JSON of `semikv status --json`; with users, for
/// any of them (as `semikv status` logs in first).
async fn status(State(door): State<Shared>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(denied) = door.authorize(peer.0, &headers, &Op::Status).await {
        return *denied;
    }
    let now = tokio::time::Instant::now().into_std();
    let view = door.router.group(0).table().cluster_view(now);
    axum::Json(semikv_protocol::json::cluster_view(&view)).into_response()
}

/// `GET /healthz`: the process answers.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// `GET /readyz`: 200 while a leader is known and writable (healthy, with
/// room on its disk), 503 otherwise, with the reason. Open to all, for
/// orchestrators' probes; with users it names no replica's address.
async fn readyz(State(door): State<Shared>) -> Response {
    let now = tokio::time::Instant::now().into_std();
    let view = door.router.group(0).table().cluster_view(now);
    let status = &view.report.status;
    let leader = status
        .replicas
        .iter()
        .enumerate()
        .find(|(_, r)| status.leader.as_deref() == Some(r.addr.as_str()));
    let reason = match leader {
        None => Some("no leader: an election or a failover is under way".to_string()),
        Some((_, r)) if !r.healthy => Some(format!("the leader {} fails health checks", r.addr)),
        Some((_, r)) if r.role != NodeRole::Leader => {
            Some(format!("{} does not report itself leader yet", r.addr))
        }
        Some((slot, r)) => view
            .report
            .resources
            .get(slot)
            .and_then(|res| res.as_ref())
            .and_then(|res| res.disk_full.as_ref())
            .map(|why| format!("the leader {} refuses writes: {why}", r.addr)),
    };
    let open = door.config.users.is_none();
    match reason {
        None if open => axum::Json(json!({
            "ready": true,
            "leader": status.leader,
            "epoch": status.epoch.to_string(),
        }))
        .into_response(),
        None => {
            axum::Json(json!({"ready": true, "epoch": status.epoch.to_string()})).into_response()
        }
        Some(reason) => {
            let reason = if open {
                reason
            } else {
                "no writable leader".to_string()
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"ready": false, "reason": reason})),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: the Prometheus page; with users, for any of them
/// (Prometheus's `basic_auth`): it names the replicas.
async fn metrics_page(State(door): State<Shared>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(denied) = door.authorize(peer.0, &headers, &Op::Status).await {
        return *denied;
    }
    let page = metrics::render(&door.registry);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], page).into_response()
}

/// The peer of a request, as the serving loop records it.
pub type Peer = ConnectInfo<SocketAddr>;
