//! The HTTP/1.1 serving loop: hyper's connection driver under our accept
//! loop, so an HTTP listener gets the same connection limit as the others,
//! and each connection bounds on what a hostile client can hold: its head's
//! bytes, how long the head may take (hyper's header timeout, which also
//! closes a keep-alive connection idle for that long), and how long an
//! answer may sit unread (a client that stops reading is cut off).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::net::Listener;
use crate::tls::Tls;
use crate::transport::Stream;

/// What one HTTP connection may cost, and how it is secured.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// With TLS material, every connection is HTTPS: the handshake must
    /// end within `header_timeout`, and a plain-HTTP client is answered a
    /// plain 400 that says so.
    pub tls: Option<Arc<Tls>>,
    /// Connections open at once; more are answered 503 and closed (only
    /// closed over TLS: the client could not read a plain answer).
    pub max_connections: usize,
    /// How long a request's head may take to arrive; also how long a
    /// keep-alive connection may wait for its next request. Past it the
    /// connection closes (hyper answers 408 to a head begun).
    pub header_timeout: Duration,
    /// Bytes a connection buffers while it reads a request's head: a head
    /// beyond it gets 431 and the connection closes.
    pub max_head_bytes: usize,
    /// How long an answer may wait for the client to take any of its
    /// bytes; past it the connection closes.
    pub write_timeout: Duration,
    /// How long a connection gets to finish its request in progress once
    /// the process shuts down.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            tls: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What a connection over the limit is told before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n";

/// How often a connection's watchdog looks at its writes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown`, each connection on `tasks`
/// within `limits`, holding what `counted` returns while it is open (a
/// metrics guard); `what` names the listener in logs. Handlers find the
/// peer's address as `ConnectInfo<SocketAddr>`. Open connections finish
/// their request in progress (for at most `limits.shutdown_grace`) and
/// close once `shutdown` fires.
pub async fn serve<G: Send + 'static>(
    listener: Listener,
    app: axum::Router,
    limits: HttpLimits,
    counted: impl Fn() -> G,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    what: &'static str,
) {
    let admission = Admission::new(limits.max_connections);
    // A TLS client could not read a plain answer: it is only closed.
    let admission = match limits.tls {
        None => admission.refusing_with(Bytes::from_static(TOO_MANY)),
        Some(_) => admission,
    };
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
            let limits = limits.clone();
            async move {
                let stream = match &limits.tls {
                    None => stream,
                    Some(tls) => match tls.accept_https(stream, limits.header_timeout).await {
                        Ok(stream) => stream,
                        Err(why) => {
                            tracing::debug!(peer = %peer, error = %why, "no TLS session");
                            return;
                        }
                    },
                };
                connection(stream, peer, app, &limits, shutdown).await;
                drop(guard);
            }
        },
    )
    .await;
}

/// Drives one connection until the client closes it, it breaks a limit, or
/// `shutdown` (then after the request in progress, within the grace).
async fn connection(
    stream: Stream,
    peer: SocketAddr,
    app: axum::Router,
    limits: &HttpLimits,
    shutdown: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let blocked = Arc::new(AtomicU64::new(NOT_BLOCKED));
    let io = Watched {
        inner: stream,
        started,
        blocked: blocked.clone(),
    };
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Armed at shutdown; until then, far away.
    let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
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
                grace.as_mut().reset(tokio::time::Instant::now() + limits.shutdown_grace);
            }
            () = &mut grace, if closing => {
                tracing::debug!(peer = %peer, "HTTP connection still busy after the shutdown grace; closed");
                return;
            }
            _ = watch.tick() => {
                let since = blocked.load(Ordering::Relaxed);
                if since != NOT_BLOCKED {
                    let stuck = started.elapsed().saturating_sub(Duration::from_millis(since));
                    if stuck >= limits.write_timeout {
                        tracing::info!(peer = %peer, stuck_ms = u64::try_from(stuck.as_millis()).unwrap_or(u64::MAX), "HTTP client took none of its answer for the write timeout; disconnected it");
                        return;
                    }
                }
            }
        }
    }
}

/// [`Watched::blocked`] when no write waits.
const NOT_BLOCKED: u64 = u64::MAX;

/// A connection's stream that notes since when a write has waited for the
/// client to take bytes (milliseconds after `started`).
struct Watched {
    inner: Stream,
    started: tokio::time::Instant,
    blocked: Arc<AtomicU64>,
}

impl Watched {
    fn note<T>(&self, polled: &Poll<std::io::Result<T>>) {
        match polled {
            Poll::Pending => {
                let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                // The first wait counts; a later one does not reset it.
                let _ = self.blocked.compare_exchange(
                    NOT_BLOCKED,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => self.blocked.store(NOT_BLOCKED, Ordering::Relaxed),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
