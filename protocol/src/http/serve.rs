//! The HTTP/1.1 serving loop: hyper's connection driver under our accept
//! loop, so an HTTP listener gets the same connection limit as the others,
//! and each connection a bound on its header bytes and on how long its
//! headers may take (a slowloris holds one connection, for seconds).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::net::Listener;

/// What one HTTP connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive, from its first
    /// byte; the connection closes after it (hyper answers 408 when it can).
    pub header_timeout: Duration,
    /// Bytes a connection buffers while it reads a request's head: headers
    /// beyond it get 431 and the connection closes.
    pub max_head_bytes: usize,
    /// How long a connection may sit with no request at all.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What a connection over the limit is told before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n";

/// Serves `app` on `listener` until `shutdown`, each connection on `tasks`
/// within `limits`, holding what `counted` returns while it is open (a
/// metrics guard); `what` names the listener in logs. Handlers find the
/// peer's address as `ConnectInfo<SocketAddr>`. Open connections finish
/// their request in progress and close once `shutdown` fires.
pub async fn serve<G: Send + 'static>(
    listener: Listener,
    app: axum::Router,
    limits: HttpLimits,
    counted: impl Fn() -> G,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    what: &'static str,
) {
    let admission =
        Admission::new(limits.max_connections).refusing_with(Bytes::from_static(TOO_MANY));
    crate::process::accept_loop(
        &listener,
        &admission,
        &shutdown,
        &tasks,
        what,
        |stream, peer, _reserved| {
            let guard = counted();
            let app = app
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let shutdown = shutdown.clone();
            async move {
                connection(stream, peer, app, limits, shutdown).await;
                drop(guard);
            }
        },
    )
    .await;
}

/// Drives one connection until the client closes it, it breaks a limit, or
/// `shutdown` (then after the request in progress).
async fn connection(
    stream: crate::transport::Stream,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let idle = IdleClock::new(limits.idle_timeout);
    let service = TowerToHyperService::new(idle.touching(app));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(peer = %peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = idle.expired(), if !closing => {
                tracing::debug!(peer = %peer, "closing an idle HTTP connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// When a connection last started a request: past `after` with none in
/// progress, it is idle.
#[derive(Debug, Clone)]
struct IdleClock {
    after: Duration,
    state: std::sync::Arc<std::sync::Mutex<(tokio::time::Instant, usize)>>,
}

impl IdleClock {
    fn new(after: Duration) -> IdleClock {
        IdleClock {
            after,
            state: std::sync::Arc::new(std::sync::Mutex::new((tokio::time::Instant::now(), 0))),
        }
    }

    /// `app`, noting each request's start and end on this clock.
    fn touching(&self, app: axum::Router) -> axum::Router {
        let clock = self.clone();
        app.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let clock = clock.clone();
                async move {
                    clock.begin();
                    let response = next.run(request).await;
                    clock.end();
                    response
                }
            },
        ))
    }

    fn begin(&self) {
        let mut state = crate::sync::lock(&self.state);
        state.1 += 1;
    }

    fn end(&self) {
        let mut state = crate::sync::lock(&self.state);
        state.0 = tokio::time::Instant::now();
        state.1 = state.1.saturating_sub(1);
    }

    /// Resolves once the connection has been idle for `after`.
    async fn expired(&self) {
        loop {
            let (last, busy) = *crate::sync::lock(&self.state);
            let due = last + self.after;
            if busy == 0 && tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.max(tokio::time::Instant::now() + self.after / 4)).await;
        }
    }
}
