//! The semikv-protocol door: its listener, the server side of the handshake,
//! request frames in and response frames out. Everything between is the
//! router's: this door turns each `Request` into a tagged op for the
//! connection's [`Session`] (the request's id is its tag) and each
//! [`Answer`] into `Response` frames. Bad input gets a `Reject` frame and
//! closes that connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use semikv_protocol::admission::Admission;
use semikv_protocol::budget::ReadBudget;
use semikv_protocol::codec::{self, BudgetedConn, FrameClock};
use semikv_protocol::net::Listener;
use semikv_protocol::{
    ErrorReply, Message, ProtocolError, Reply, RequestId, Response, Role, Welcome, WireError,
    PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::output::{Charge, ChargedAnswers, OutputBudget};
use crate::config::Config;
use crate::request::{Answer, Tag};
use crate::router::{Router, Session, Window};
use crate::users::{UserRole, Users};
use semikv_protocol::outbox::{self, Outgoing, Sink};
use semikv_protocol::throttle::LogThrottle;
use semikv_protocol::transport::Stream;

/// Requests one client may have in flight before the balancer stops reading
/// from it.
const MAX_IN_FLIGHT: usize = 1024;

/// Bytes of answers one client may have forwarded and not yet written to
/// it: its [`Window`]. What a client that stops reading has in flight
/// crosses the replica links whether it is wanted or not, and other
/// clients' answers on those links wait behind it; 64 MiB is tens of
/// milliseconds of a link, and still a deep pipeline of the largest values
/// (8 of 8 MiB). With an output limit under half of it, the window is
/// twice the limit instead, so that a client that stops reading passes
/// the limit and is cut off; otherwise it is cut off when its socket has
/// taken nothing for the write timeout.
const MAX_WINDOW_BYTES: usize = 64 * 1024 * 1024;

/// How long a new connection has to send its `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing one frame to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves semikv-protocol clients on `listener` until `shutdown`, each
/// connection on `tasks`, at most `config.max_connections` at once, their
/// frames read under `budget`.
pub async fn run(
    listener: Listener,
    router: Arc<Router>,
    config: Arc<Config>,
    budget: ReadBudget,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let admission = Admission::new(config.max_connections);
    semikv_protocol::process::accept_loop(
        &listener,
        &admission,
        &shutdown,
        &tasks,
        "semikv",
        // No peer connects to a balancer: it reserves no slot for one.
        |stream, peer, _reserved| {
            serve(
                router.clone(),
                config.clone(),
                budget.clone(),
                stream,
                peer,
                shutdown.clone(),
            )
        },
    )
    .await;
}

/// What the connection's writer sends: the door's own messages (`Welcome`
/// and `Reject`) and the router's answers, each charged to the client's
/// output budget until it is encoded.
#[derive(Debug)]
enum ToClient {
    Message(Message),
    Answer(Answer, Charge),
}

impl Outgoing for ToClient {
    fn is_last(&self) -> bool {
        matches!(self, ToClient::Message(Message::Reject(_)))
    }

    fn write_into(self, sink: &mut Sink) -> Result<(), ProtocolError> {
        match self {
            ToClient::Message(message) => outbox::encode(&message, sink),
            // The slots and the charges go once their answers are encoded.
            ToClient::Answer(
                Answer::One {
                    tag,
                    reply,
                    slot: _,
                },
                _charge,
            ) => outbox::encode(&response(tag, reply), sink),
            ToClient::Answer(Answer::Run { replies, slot: _ }, _charge) => {
                for (tag, reply) in replies {
                    outbox::encode(&response(tag, reply), sink)?;
                }
                Ok(())
            }
        }
    }
}

fn response(tag: Tag, reply: semikv_protocol::Reply) -> Message {
    Message::Response(Response {
        id: RequestId(tag.0),
        reply,
    })
}

impl From<(Answer, Charge)> for ToClient {
    fn from((answer, charge): (Answer, Charge)) -> ToClient {
        ToClient::Answer(answer, charge)
    }
}

/// Serves one client connection until it closes, errs, or `shutdown`.
/// Never panics on bad input: protocol errors are answered with `Reject`.
async fn serve(
    router: Arc<Router>,
    config: Arc<Config>,
    budget: ReadBudget,
    stream: Stream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _counted = config.metrics.connection(crate::metrics::Door::Semikv);
    let stream = match &config.tls {
        None => stream,
        Some(tls) => match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
            Ok(stream) => stream,
            Err(why) => {
                debug!(peer = %peer, error = %why, "no TLS session");
                return;
            }
        },
    };
    // Read under the budget from the first byte: a Hello may be as large
    // as any frame.
    let mut framed = codec::framed(stream, config.max_frame_len, &budget);
    // One bound for the whole handshake, a login's password check
    // included (the TLS handshake had its own, just before).
    let shaken = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut framed, config.users.as_ref(), peer),
    )
    .await;
    let Ok(Some((role, user))) = shaken else {
        return;
    };
    let (mut stream, sink) = codec::split(framed);
    // One more than the slots: a final Reject needs no slot.
    let (tx, rx) = mpsc::channel::<ToClient>(MAX_IN_FLIGHT + 1);
    let conn_closed = shutdown.child_token();
    let writer = tokio::spawn(outbox::run(sink, rx, conn_closed.clone(), WRITE_TIMEOUT));
    // At least one frame: a single answer never trips it alone.
    let limit = config.max_client_output.max(config.max_frame_len);
    let budget = OutputBudget::new(limit, peer, conn_closed.clone());
    let window = Arc::new(Window::sized(
        MAX_IN_FLIGHT,
        limit.saturating_mul(2).min(MAX_WINDOW_BYTES),
    ));
    let answers = ChargedAnswers::new(tx.clone(), budget, window.clone());
    let mut session = Session::windowed(&router, Arc::new(answers), window.clone());
    let slots = session.slots().clone();
    // One wait for the whole loop, not a waiter registered per batch.
    let closed = conn_closed.cancelled();
    tokio::pin!(closed);
    // Gives up on a frame that starts arriving and stalls.
    let mut clock = FrameClock::new(config.frame_timeout);
    // Closes a connection idle for `idle_timeout`, when one is set.
    let idle_after = config.idle_timeout;
    let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(idle);
    loop {
        tokio::select! {
            _ = &mut closed => break,
            () = &mut idle, if idle_after.is_some() => {
                if slots.available_permits() == MAX_IN_FLIGHT {
                    debug!(peer = %peer, "closing an idle client connection");
                    break;
                }
                // Requests in flight: not idle; look again later.
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
            }
            () = session.progress() => {}
            // Only while there is room: without it, whole frames wait in
            // the buffer, and they are not stalled.
            () = clock.tick(), if window.has_room() => {
                if let Err(stalled) = clock.check(&stream) {
                    info!(peer = %peer, error = %stalled, "closing a client that stalled mid-frame");
                    break;
                }
            }
            frame = next_frame(&mut stream, &window) => {
                clock.frame_arrived();
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
                // Every request already buffered is taken now, as one burst:
                // its reads go to one replica, so their answers come back
                // together and leave in one write.
                let mut frame = Some(frame);
                let mut refused = None;
                while let Some(one) = frame.take() {
                    if let Err(reason) = take(&mut session, one, role, user.as_ref()) {
                        refused = Some(reason);
                        break;
                    }
                    if session.burst_has_room() {
                        frame = stream.next().now_or_never();
                    }
                }
                // Sent even when the connection is ending: a client that
                // only closed its sending half still gets its answers
                // (after a Reject the writer stops at once, and they go
                // nowhere).
                session.end_burst();
                if let Some(reason) = refused {
                    if let Some(wire) = reason {
                        let _ = tx.send(ToClient::Message(Message::Reject(wire))).await;
                    }
                    break;
                }
            }
        }
    }
    // The socket closes once the writer also lets go of its half: at once
    // after a Reject, otherwise when the answers in flight are written.
    drop(stream);
    session.finish().await;
    drop(tx);
    match writer.await {
        Ok(Err(blocked @ outbox::WriteFailed::Blocked(_))) => {
            info!(peer = %peer, error = %blocked, "client read none of its answers for the write timeout; disconnected it");
        }
        Ok(Err(failed)) => debug!(peer = %peer, error = %failed, "writing to a client failed"),
        _ => {}
    }
}

/// Takes one frame of a burst into the session.
///
/// # Errors
/// The connection ends: with the `Reject` to send, if there is a reason to
/// give (none when the client closed or the frame was unreadable without
/// a wire error).
fn take(
    session: &mut Session<'_>,
    frame: Option<Result<Message, ProtocolError>>,
    role: Role,
    user: Option<&LoggedIn>,
) -> Result<(), Option<WireError>> {
    let request = match frame {
        Some(Ok(Message::Request(request))) => request,
        Some(Ok(other)) => {
            let what = other.name().to_string();
            return Err(Some(WireError::Unexpected { what }));
        }
        Some(Err(e)) => return Err(e.to_wire()),
        None => return Err(None),
    };
    if request.op.is_admin() {
        let what = request.op.name().to_string();
        return Err(Some(WireError::WrongRole { role, what }));
    }
    // The caller saw a free slot, and only this task takes them.
    let tag = Tag(request.id.0);
    if let Some(refusal) = user.and_then(|u| u.refuses(&request.op)) {
        let kind = crate::metrics::OpKind::of(&request.op);
        return session
            .refuse(tag, kind, Reply::Error(refusal))
            .map_err(|_| None);
    }
    session.submit(tag, request.op).map_err(|_| None)
}

/// The user a connection logged in as, checked again on every request: a
/// user removed from the file (or given a lesser role) since the login is
/// refused from its next request on.
#[derive(Debug)]
struct LoggedIn {
    name: String,
    users: Arc<Users>,
    /// The user's role as of a generation of the users file: read again
    /// only when a reload moved the generation, so that a request costs one
    /// atomic load rather than a lock and a lookup.
    role: std::cell::Cell<(u64, Option<UserRole>)>,
}

impl LoggedIn {
    fn new(name: String, users: Arc<Users>) -> LoggedIn {
        // The generation before the role: a reload in between moves the
        // generation, and the next request reads the role again.
        let generation = users.generation();
        let role = users.role_of(&name);
        LoggedIn {
            name,
            users,
            role: std::cell::Cell::new((generation, role)),
        }
    }

    fn role(&self) -> Option<UserRole> {
        let generation = self.users.generation();
        let (seen, role) = self.role.get();
        if seen == generation {
            return role;
        }
        let role = self.users.role_of(&self.name);
        self.role.set((generation, role));
        role
    }

    /// Why this user may not run `op` now, if it may not.
    fn refuses(&self, op: &semikv_protocol::Op) -> Option<ErrorReply> {
        match self.role() {
            None => Some(ErrorReply::NoPermission {
                reason: format!("user {} no longer exists; log in again", self.name),
            }),
            Some(role) if !role.permits(op) => Some(ErrorReply::NoPermission {
                reason: format!(
                    "user {} has role {role}, which may not {}",
                    self.name,
                    op.name()
                ),
            }),
            Some(_) => None,
        }
    }
}

/// The server side of the handshake: the client's role (and user, when
/// the balancer has users) once it said a valid `Hello` (a `HelloAuth` with
/// a good password, when the balancer has users) and was welcomed; `None`
/// (after a `Reject` saying why, when there is a reason to give) otherwise.
async fn handshake(
    framed: &mut BudgetedConn,
    users: Option<&Arc<Users>>,
    peer: SocketAddr,
) -> Option<(Role, Option<LoggedIn>)> {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await;
    let (hello, login) = match first {
        Ok(Some(Ok(Message::Hello(hello)))) => (hello, None),
        Ok(Some(Ok(Message::HelloAuth(auth)))) => (auth.hello, Some((auth.user, auth.password))),
        Ok(Some(Ok(_))) | Err(_) => return refuse(framed, WireError::HandshakeRequired).await,
        Ok(Some(Err(e))) => return refuse(framed, e.to_wire()?).await,
        Ok(None) => return None,
    };
    if let Err(wire) = hello.check() {
        return refuse(framed, wire).await;
    }
    if hello.role == Role::Replica {
        let wire = WireError::WrongRole {
            role: hello.role,
            what: "connecting to the balancer".into(),
        };
        return refuse(framed, wire).await;
    }
    let user = match (users, login) {
        (None, None) => None,
        (None, Some((name, _))) => {
            let reason = format!(
                "this balancer has no users (it runs without --users-file); \
                 connect without logging in as {name}"
            );
            return refuse(framed, WireError::AuthFailed { reason }).await;
        }
        (Some(_), None) => {
            let reason = "this balancer requires a user: log in with a name and a \
                          password (semikv --user NAME)"
                .to_string();
            return refuse(framed, WireError::AuthFailed { reason }).await;
        }
        (Some(users), Some((name, password))) => {
            match users.login(peer.ip(), &name, &password).await {
                Ok(_) => Some(LoggedIn::new(name, users.clone())),
                Err(e) => {
                    if let Some(held) = LOGIN_FAILED.admit() {
                        // As the peer sent it, but short and escaped: a name
                        // is no place for a newline or a forged log line.
                        let user: String = name.chars().take(64).collect();
                        warn!(peer = %peer, user = ?user, error = %e, similar_since_last = held, "client login refused");
                    }
                    let reason = e.to_string();
                    return refuse(framed, WireError::AuthFailed { reason }).await;
                }
            }
        }
    };
    let welcome = Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node: None,
    });
    let sent = tokio::time::timeout(WRITE_TIMEOUT, framed.send(welcome)).await;
    matches!(sent, Ok(Ok(()))).then_some((hello.role, user))
}

/// Failed logins are said at most 20 times a second (each address is held
/// back after a few anyway; many addresses must not flood the log).
static LOGIN_FAILED: LogThrottle = LogThrottle::new(Duration::from_millis(50));

async fn refuse<T>(framed: &mut BudgetedConn, refusal: WireError) -> Option<T> {
    debug!(error = %refusal, "rejecting client connection");
    let _ = tokio::time::timeout(WRITE_TIMEOUT, framed.send(Message::Reject(refusal))).await;
    None
}

/// The client's next frame, once its window has room.
///
/// Waits on the window's semaphore when it has none: forwarded answers free
/// their slots from other tasks (the writer, once written), and only a
/// waiter on the semaphore hears of it; a loop that merely stopped polling
/// the socket at the limit never read from a deep-pipelining client again.
async fn next_frame<S: futures::Stream + Unpin>(
    stream: &mut S,
    window: &Window,
) -> Option<S::Item> {
    // The room is still there once found: only this task takes slots.
    window.room().await;
    stream.next().await
}
