//! The Redis-protocol door (`--resp ADDR`): RESP2, and RESP3 after `HELLO 3`,
//! so that redis-cli, redis-benchmark and Redis client libraries work
//! unchanged. Commands become semikv ops for the connection's
//! [`Session`], like the semikv door's; RESP clients match answers by
//! position, so each request is numbered and the writer puts the answers
//! back in order, combining those of a command that became several ops
//! (MGET, EXISTS). Conditional, read-modify-write, multi-key and expiry
//! commands become one `Op::Command` the leader evaluates ([`keys`]). Bad input gets a RESP error and closes that connection
//! only.

mod command;
mod info;
mod keys;
pub mod parse;
mod reply;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use semikv_protocol::admission::Admission;
use semikv_protocol::budget::{ReadBudget, SMALL_FRAME};
use semikv_protocol::net::Listener;
use semikv_protocol::throttle::LogThrottle;
use semikv_protocol::transport::{Stream, WriteHalf};
use semikv_protocol::{ErrorReply, Op, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::output::{answer_bytes, Charge, OutputBudget};
use crate::config::Config;
use crate::request::{Answer, AnswerSink, Tag};
use crate::router::{Router, Session, Window};
use crate::users::Users;
use command::{AfterLogin, Conn, Facts, Plan, Shape};
use reply::Resp;

pub use command::glob;

/// Ops one client may have in flight before the door stops submitting.
const MAX_IN_FLIGHT: usize = 1024;

/// Commands one client may have unanswered (read, answer not yet written)
/// before the door stops reading from it: bounds the answers the writer
/// holds back to put them in order.
const MAX_COMMANDS: usize = 4096;

/// Bytes of answers one client may have forwarded and not yet written: its
/// window (see the semikv door's).
const MAX_WINDOW_BYTES: usize = 64 * 1024 * 1024;

/// How long writing to a client may be blocked before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the socket at a time, at most.
const READ_CHUNK: usize = 64 * 1024;

/// Numbers the connections for `CLIENT ID`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What every connection of the door shares.
#[derive(Debug)]
struct Shared {
    router: Arc<Router>,
    config: Arc<Config>,
    budget: ReadBudget,
    facts: Facts,
    started: tokio::time::Instant,
    clients: AtomicUsize,
    port: u16,
    local: Option<SocketAddr>,
}

/// Serves RESP clients on `listener` until `shutdown`, each connection on
/// `tasks`, at most `config.max_connections` at once, bulk strings read
/// under `budget`.
pub async fn run(
    listener: Listener,
    router: Arc<Router>,
    config: Arc<Config>,
    budget: ReadBudget,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // Redis's own words for a full server.
    let admission = Admission::new(config.max_connections).refusing_with(
        bytes::Bytes::from_static(b"-ERR max number of clients reached\r\n"),
    );
    let others = config.replicas.len().saturating_sub(1);
    let shared = Arc::new(Shared {
        facts: Facts {
            needs_login: config.users.is_some(),
            sync_replicas: i64::from(config.sync_replicas).min(others as i64),
        },
        router,
        budget,
        started: tokio::time::Instant::now(),
        clients: AtomicUsize::new(0),
        port: listener.local_addr().map_or(0, |a| a.port()),
        local: listener.local_addr().ok(),
        config,
    });
    semikv_protocol::process::accept_loop(
        &listener,
        &admission,
        &shutdown,
        &tasks,
        "resp",
        |stream, peer, _reserved| serve(shared.clone(), stream, peer, shutdown.clone()),
    )
    .await;
}

/// What the reader hands the writer, in the order of the client's commands.
#[derive(Debug)]
enum Out {
    /// An answer known at once.
    Ready {
        resp: Resp,
        resp3: bool,
        _permit: Option<OwnedSemaphorePermit>,
        _charge: Charge,
    },
    /// The answer to the ops tagged `first..first + count`, combined by
    /// `shape`, once all have replied.
    Expect {
        first: u64,
        count: usize,
        shape: Shape,
        resp3: bool,
        _permit: OwnedSemaphorePermit,
    },
    /// Replies from the router.
    Answer(Answer, Charge),
    /// Everything before is answered: write it and close.
    Close,
}

/// The connection's answer sink: the writer's queue, with room for every
/// slot and every command.
#[derive(Debug)]
struct Answers {
    queue: mpsc::Sender<Out>,
    budget: Arc<OutputBudget>,
    window: Arc<Window>,
}

impl AnswerSink for Answers {
    fn deliver(&self, answer: Answer) {
        let (bytes, largest) = answer_bytes(&answer);
        self.window.observe(largest);
        let charge = self.budget.charge(bytes);
        let _ = self.queue.try_send(Out::Answer(answer, charge));
    }
}

/// Decrements the door's client count when the connection ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one RESP connection until it closes, errs, quits or `shutdown`.
async fn serve(shared: Arc<Shared>, stream: Stream, peer: SocketAddr, shutdown: CancellationToken) {
    let stream = match &shared.config.tls {
        None => stream,
        Some(tls) => match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
            Ok(stream) => stream,
            Err(why) => {
                debug!(peer = %peer, error = %why, "no TLS session");
                return;
            }
        },
    };
    shared.clients.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(&shared.clients);
    let (mut read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Out>(MAX_IN_FLIGHT + MAX_COMMANDS + 2);
    let conn_closed = shutdown.child_token();
    let writer = tokio::spawn(write_answers(write, rx, conn_closed.clone()));
    let limit = shared
        .config
        .max_client_output
        .max(shared.config.max_frame_len);
    let window = Arc::new(Window::sized(
        MAX_IN_FLIGHT,
        limit.saturating_mul(2).min(MAX_WINDOW_BYTES),
    ));
    let output = OutputBudget::new(limit, peer, conn_closed.clone());
    let answers = Answers {
        queue: tx.clone(),
        budget: output.clone(),
        window: window.clone(),
    };
    let mut session = Session::windowed(&shared.router, Arc::new(answers), window.clone());
    let commands = Arc::new(Semaphore::new(MAX_COMMANDS));
    let mut conn = Conn::new(NEXT_ID.fetch_add(1, Ordering::Relaxed), peer, shared.local);
    let mut parser = parse::Parser::new(shared.config.max_frame_len);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Ops read and not yet submitted (a command's ops wait for slots).
    let mut pending: VecDeque<(Tag, Op)> = VecDeque::new();
    let mut next_tag = 0u64;
    // The budget held for the large bulk string being read: its length
    // and the grant.
    let mut grant: Option<(usize, OwnedSemaphorePermit)> = None;
    // Whole commands left in the buffer for want of a command permit.
    let mut backlog = false;
    let mut quitting = false;
    let closed = conn_closed.cancelled();
    tokio::pin!(closed);
    let frame_timeout = shared.config.frame_timeout;
    let mut ticks = tokio::time::interval((frame_timeout / 2).max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partial_since: Option<tokio::time::Instant> = None;
    let idle_after = shared.config.idle_timeout;
    let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(idle);
    loop {
        if quitting && pending.is_empty() {
            break;
        }
        let bulk = parser.bulk_len().filter(|len| len + 2 > SMALL_FRAME);
        if grant.as_ref().map(|(len, _)| *len) != bulk {
            // The large bulk it was for is read (or another began).
            grant = None;
        }
        let needs_grant = bulk.is_some() && grant.is_none();
        let can_read = pending.is_empty() && !quitting && !backlog && !needs_grant;
        if can_read && buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
        let mut took = false;
        tokio::select! {
            _ = &mut closed => break,
            () = &mut idle, if idle_after.is_some() => {
                if window.in_flight() == 0 && pending.is_empty() && buf.is_empty() && !parser.is_partial(&buf) {
                    debug!(peer = %peer, "closing an idle RESP connection");
                    break;
                }
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
            }
            () = session.progress() => {}
            _ = ticks.tick() => {
                // Only a command the client has not finished sending can
                // stall; one waiting here for room or budget is ours.
                if !parser.is_partial(&buf) || !can_read {
                    partial_since = None;
                } else {
                    let now = tokio::time::Instant::now();
                    let since = *partial_since.get_or_insert(now);
                    if now.duration_since(since) >= frame_timeout {
                        info!(peer = %peer, have = buf.len(), "closing a RESP client that stalled mid-command");
                        break;
                    }
                }
            }
            () = window.room(), if !pending.is_empty() => {}
            granted = shared.budget.grant(bulk.unwrap_or(0) + 2), if needs_grant => {
                if let (Some(len), Some(permit)) = (bulk, granted) {
                    grant = Some((len, permit));
                }
                partial_since = None;
            }
            permit = commands.clone().acquire_owned(), if backlog && pending.is_empty() && !quitting => {
                drop(permit);
                took = true;
            }
            read = read.read_buf(&mut buf), if can_read => {
                match read {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        debug!(peer = %peer, error = %e, "reading a RESP client failed");
                        break;
                    }
                }
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
                // Bytes alone do not reset the stall clock: a command
                // trickling in a byte at a time must still arrive whole
                // within the frame timeout. A whole command does (below).
                took = true;
            }
        }
        if took {
            let mut whole = false;
            let taken = take_commands(
                &shared,
                &mut conn,
                &mut parser,
                &mut buf,
                &commands,
                &output,
                &tx,
                &mut pending,
                &mut next_tag,
                &mut whole,
            )
            .await;
            if whole {
                partial_since = None;
            }
            backlog = false;
            match taken {
                Taken::More => {}
                Taken::Backlog => backlog = true,
                Taken::Quit => quitting = true,
                Taken::Refused(why) => {
                    debug!(peer = %peer, error = %why, "closing a RESP client that sent bad input");
                    // The command bound may be spent: the error goes
                    // without a permit (the queue keeps a place for it).
                    let resp = Resp::err(why);
                    let _ = tx.try_send(Out::Ready {
                        _charge: output.charge(resp.weight()),
                        resp,
                        resp3: conn.resp3,
                        _permit: None,
                    });
                    quitting = true;
                }
            }
        }
        // Submits what fits now, as one burst; the rest waits for room.
        if !pending.is_empty() && session.has_room() {
            while session.burst_has_room() {
                let Some((tag, op)) = pending.pop_front() else {
                    break;
                };
                if session.submit(tag, op).is_err() {
                    break;
                }
            }
            session.end_burst();
        }
    }
    drop(read);
    drop(grant);
    session.finish().await;
    let _ = tx.try_send(Out::Close);
    drop(tx);
    match writer.await {
        Ok(Err(WriteFailed::Blocked)) => {
            info!(peer = %peer, "RESP client read none of its answers for the write timeout; disconnected it")
        }
        Ok(Err(WriteFailed::Io(e))) => {
            debug!(peer = %peer, error = %e, "writing to a RESP client failed")
        }
        _ => {}
    }
}

/// How [`take_commands`] ended.
enum Taken {
    /// Every whole command in the buffer was taken.
    More,
    /// Whole commands are left in the buffer: the command bound is spent.
    Backlog,
    /// The client said QUIT.
    Quit,
    /// The input is not RESP: this error, then close.
    Refused(parse::ParseError),
}

/// Takes every whole command in `buf`: answers what can be answered at
/// once, queues the ops of the rest. Sets `whole` if it took any.
#[allow(clippy::too_many_arguments)]
async fn take_commands(
    shared: &Shared,
    conn: &mut Conn,
    parser: &mut parse::Parser,
    buf: &mut BytesMut,
    commands: &Arc<Semaphore>,
    output: &Arc<OutputBudget>,
    tx: &mpsc::Sender<Out>,
    pending: &mut VecDeque<(Tag, Op)>,
    next_tag: &mut u64,
    whole: &mut bool,
) -> Taken {
    loop {
        // Stop at the command bound: the rest stays in the buffer until
        // answers are written.
        let Ok(permit) = commands.clone().try_acquire_owned() else {
            return Taken::Backlog;
        };
        let args = match parser.next(buf) {
            Ok(Some(args)) => args,
            Ok(None) => return Taken::More,
            Err(e) => return Taken::Refused(e),
        };
        *whole = true;
        let plan = conn.plan(&args, &shared.facts);
        let resp3 = conn.resp3;
        let out = match plan {
            Plan::Now(resp) => Out::Ready {
                _charge: output.charge(resp.weight()),
                resp,
                resp3: conn.resp3,
                _permit: Some(permit),
            },
            Plan::Quit => {
                let _ = tx.try_send(Out::Ready {
                    _charge: output.charge(Resp::OK.weight()),
                    resp: Resp::OK,
                    resp3,
                    _permit: Some(permit),
                });
                return Taken::Quit;
            }
            Plan::Login(login) => {
                let resp = log_in(shared, conn, login).await;
                Out::Ready {
                    _charge: output.charge(resp.weight()),
                    resp,
                    resp3: conn.resp3,
                    _permit: Some(permit),
                }
            }
            Plan::Forward { ops, mut shape } => {
                if let Shape::Info { local, .. } = &mut shape {
                    *local = info::Local {
                        uptime: shared.started.elapsed(),
                        clients: shared.clients.load(Ordering::Relaxed),
                        port: shared.port,
                    };
                }
                if let Some(refusal) = refusal(shared, conn, &ops) {
                    let resp = command::error(&refusal);
                    Out::Ready {
                        _charge: output.charge(resp.weight()),
                        resp,
                        resp3,
                        _permit: Some(permit),
                    }
                } else {
                    let first = *next_tag;
                    let count = ops.len();
                    for op in ops {
                        pending.push_back((Tag(*next_tag), op));
                        *next_tag += 1;
                    }
                    Out::Expect {
                        first,
                        count,
                        shape,
                        resp3,
                        _permit: permit,
                    }
                }
            }
        };
        // Room is certain: every queued item holds a command permit or a
        // slot, and the queue has a place for each.
        let _ = tx.try_send(out);
    }
}

/// Why the connection's user may not run `ops`, if it may not.
fn refusal(shared: &Shared, conn: &Conn, ops: &[Op]) -> Option<ErrorReply> {
    let users = shared.config.users.as_ref()?;
    let name = conn.user.as_deref()?;
    let Some(role) = users.role_of(name) else {
        return Some(ErrorReply::NoPermission {
            reason: format!("user {name} no longer exists; log in again"),
        });
    };
    let op = ops.iter().find(|op| !role.permits(op))?;
    Some(ErrorReply::NoPermission {
        reason: format!(
            "this user has no permissions to run the '{}' command (user {name} has role {role})",
            op.name()
        ),
    })
}

/// Failed logins are said at most 20 times a second.
static LOGIN_FAILED: LogThrottle = LogThrottle::new(Duration::from_millis(50));

/// Checks a login against the users file; its answer.
async fn log_in(shared: &Shared, conn: &mut Conn, login: command::Login) -> Resp {
    let Some(users) = shared.config.users.as_ref() else {
        return Resp::err("no users configured");
    };
    match Users::login(users, conn.peer.ip(), &login.user, &login.password).await {
        Ok(_) => {
            conn.user = Some(login.user);
            match login.then {
                AfterLogin::Ok => Resp::OK,
                AfterLogin::Hello { protocol, name } => conn.greet(protocol, name),
            }
        }
        Err(e) => {
            if let Some(held) = LOGIN_FAILED.admit() {
                let user: String = login.user.chars().take(64).collect();
                warn!(peer = %conn.peer, user = ?user, error = %e, similar_since_last = held, "RESP login refused");
            }
            Resp::coded(
                "WRONGPASS",
                "invalid username-password pair or user is disabled.",
            )
        }
    }
}

/// Why the writer stopped early.
#[derive(Debug)]
enum WriteFailed {
    /// The client read nothing for [`WRITE_TIMEOUT`].
    Blocked,
    /// The socket failed.
    Io(std::io::Error),
}

/// A command waiting for its replies, in the client's order.
#[derive(Debug)]
enum Waiting {
    /// An answer known at once, charged until it is encoded.
    Ready {
        resp: Resp,
        resp3: bool,
        _charge: Charge,
    },
    Expect {
        first: u64,
        count: usize,
        shape: Shape,
        resp3: bool,
    },
}

/// Writes the answers in the order of the commands until `Close`, the
/// queue's end, or `closed`.
async fn write_answers(
    mut write: WriteHalf,
    mut rx: mpsc::Receiver<Out>,
    closed: CancellationToken,
) -> Result<(), WriteFailed> {
    let mut order: VecDeque<(Waiting, Option<OwnedSemaphorePermit>)> = VecDeque::new();
    // Replies that came before the ones ahead of them, with their charges.
    let mut held: HashMap<u64, (Reply, Option<Charge>)> = HashMap::new();
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut closing = false;
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => return Ok(()),
            item = rx.recv() => item,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Out::Ready {
                    resp,
                    resp3,
                    _permit,
                    _charge,
                } => order.push_back((
                    Waiting::Ready {
                        resp,
                        resp3,
                        _charge,
                    },
                    _permit,
                )),
                Out::Expect {
                    first,
                    count,
                    shape,
                    resp3,
                    _permit,
                } => order.push_back((
                    Waiting::Expect {
                        first,
                        count,
                        shape,
                        resp3,
                    },
                    Some(_permit),
                )),
                Out::Answer(Answer::One { tag, reply, slot }, charge) => {
                    // The slot goes now: the reply waits here, charged.
                    drop(slot);
                    held.insert(tag.0, (reply, Some(charge)));
                }
                Out::Answer(Answer::Run { replies, slot }, charge) => {
                    drop(slot);
                    let mut charge = Some(charge);
                    for (tag, reply) in replies {
                        held.insert(tag.0, (reply, charge.take()));
                    }
                }
                Out::Close => closing = true,
            }
            if out.len() < READ_CHUNK * 4 {
                next = rx.try_recv().ok();
            }
        }
        // Encodes every command at the front whose replies are all in.
        while let Some((front, _)) = order.front() {
            match front {
                Waiting::Ready { resp, resp3, .. } => resp.encode(*resp3, &mut out),
                Waiting::Expect {
                    first,
                    count,
                    shape,
                    resp3,
                } => {
                    if !(*first..*first + *count as u64).all(|t| held.contains_key(&t)) {
                        break;
                    }
                    let replies: Vec<Reply> = (*first..*first + *count as u64)
                        .filter_map(|t| held.remove(&t).map(|(r, _charge)| r))
                        .collect();
                    let resp = command::combine(shape, replies);
                    resp.encode(*resp3, &mut out);
                }
            }
            order.pop_front();
        }
        if !out.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(WriteFailed::Io(e)),
                Err(_) => return Err(WriteFailed::Blocked),
            }
            out.clear();
            if out.capacity() > 1024 * 1024 {
                out = BytesMut::with_capacity(16 * 1024);
            }
        }
        if closing && order.is_empty() {
            break;
        }
    }
    let _ = write.shutdown().await;
    Ok(())
}
