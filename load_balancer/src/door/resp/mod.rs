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
mod keyspace;
pub mod parse;
mod reply;
mod server;
mod writer;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use semikv_protocol::admission::Admission;
use semikv_protocol::budget::{ReadBudget, SMALL_FRAME};
use semikv_protocol::net::Listener;
use semikv_protocol::throttle::LogThrottle;
use semikv_protocol::transport::Stream;
use semikv_protocol::{ErrorReply, Op};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::output::{Charge, ChargedAnswers, OutputBudget};
use crate::config::Config;
use crate::request::{Answer, Tag};
use crate::router::{Router, Session, Window};
use crate::users::Users;
use command::{AfterLogin, Conn, Facts, Plan, Shape};
use reply::Resp;
use writer::{write_answers, WriteFailed};

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

/// How long a TLS handshake, or checking a login's password, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A wait for a grant of the read budget.
type Granting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<OwnedSemaphorePermit>> + Send + 'a>>;

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

impl From<(Answer, Charge)> for Out {
    fn from((answer, charge): (Answer, Charge)) -> Out {
        Out::Answer(answer, charge)
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
    let _counted_door = shared.config.metrics.connection(crate::metrics::Door::Resp);
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
    // The queue has room for every slot and every command.
    let answers = ChargedAnswers::new(tx.clone(), output.clone(), window.clone());
    let mut session = Session::at_door(
        &shared.router,
        crate::metrics::Door::Resp,
        Arc::new(answers),
        window.clone(),
    );
    let commands = Arc::new(Semaphore::new(MAX_COMMANDS));
    let mut conn = Conn::new(NEXT_ID.fetch_add(1, Ordering::Relaxed), peer, shared.local);
    let max_command = shared.config.max_frame_len;
    let mut parser = parse::Parser::new(max_command);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Ops read and not yet submitted (a command's ops wait for slots).
    let mut pending: VecDeque<(Tag, Op)> = VecDeque::new();
    let mut next_tag = 0u64;
    // The read budget held for the large command being read: the bytes it
    // covers, and the grant.
    let mut grant: Option<(usize, OwnedSemaphorePermit)> = None;
    // A grant being waited for, kept from one turn of the loop to the
    // next so that it keeps its place in the budget's fair queue.
    let mut granting: Option<(usize, Granting<'_>)> = None;
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
        // A command over SMALL_FRAME takes the read budget for all its
        // bytes (its arguments stay in memory until it is whole), before
        // more of it is read; the grant grows by doubling, at most to the
        // command limit, and is given back once the command is taken.
        let want = parser.command_len();
        if want <= SMALL_FRAME {
            grant = None;
            granting = None;
        } else {
            let covered = |c: Option<usize>| c.is_some_and(|c| c >= want);
            if !covered(grant.as_ref().map(|g| g.0)) && !covered(granting.as_ref().map(|g| g.0)) {
                let len = want
                    .max(grant.as_ref().map_or(0, |(c, _)| c.saturating_mul(2)))
                    .min(max_command);
                // Nobody holds budget while waiting for budget.
                grant = None;
                granting = Some((len, Box::pin(shared.budget.grant(len))));
            }
        }
        let needs_grant = granting.is_some();
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
            granted = async {
                match granting.as_mut() {
                    Some((_, waiting)) => waiting.await,
                    None => std::future::pending().await,
                }
            }, if needs_grant => {
                if let (Some((len, _)), Some(permit)) = (granting.take(), granted) {
                    grant = Some((len, permit));
                }
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
                session.seen(),
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
                // Cannot fail: the loop saw room for it, and only this task
                // takes slots.
                let submitted = session.submit(tag, op);
                debug_assert!(submitted.is_ok(), "no slot though the window had room");
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
    seen: semikv_protocol::LogIndex,
) -> Taken {
    loop {
        // Stop at the command bound: the rest stays in the buffer until
        // answers are written.
        let Ok(permit) = commands.clone().try_acquire_owned() else {
            return Taken::Backlog;
        };
        // Redis's tighter limits until the connection logs in; a login
        // earlier in this same burst lifts them for what follows it.
        parser.set_unauthenticated(shared.facts.needs_login && conn.user.is_none());
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
            Plan::Keys(pattern) => {
                // Refused as the scan it runs would be.
                let scan = Op::Scan(semikv_protocol::Scan {
                    cursor: 0,
                    count: 1,
                    pattern: None,
                });
                let resp = match refusal(shared, conn, &[scan]) {
                    Some(refusal) => command::error(&refusal),
                    None => {
                        let max = shared.config.max_client_output;
                        keyspace::keys(&shared.router, pattern, max, conn.consistency, seen).await
                    }
                };
                Out::Ready {
                    _charge: output.charge(resp.weight()),
                    resp,
                    resp3,
                    _permit: Some(permit),
                }
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
                    // Counted as the other doors count a refusal: taken and
                    // answered at once, per op.
                    let refused = semikv_protocol::Reply::Error(refusal.clone());
                    for op in &ops {
                        shared.config.metrics.refused(
                            crate::metrics::Door::Resp,
                            crate::metrics::OpKind::of(op),
                            &refused,
                        );
                    }
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
                        let op = at_level(op, conn.consistency);
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

/// `op` at the connection's consistency level: a read wrapped in an
/// [`Op::Read`] when the connection chose one (`CLIENT CONSISTENCY`), so
/// that a level set later does not reach reads already taken.
fn at_level(op: Op, level: Option<semikv_protocol::Consistency>) -> Op {
    match level {
        Some(level) if op.is_read() => Op::Read(semikv_protocol::Read {
            op: Box::new(op),
            level: Some(level),
            after: semikv_protocol::LogIndex(0),
        }),
        _ => op,
    }
}

/// Why the connection's user may not run `ops`, if it may not.
fn refusal(shared: &Shared, conn: &Conn, ops: &[Op]) -> Option<ErrorReply> {
    let users = shared.config.users.as_ref()?;
    let Some(name) = conn.user.as_deref() else {
        // The NOAUTH check comes first; this keeps a gap in it from
        // becoming a way in.
        return Some(ErrorReply::NoPermission {
            reason: "log in first".into(),
        });
    };
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
    let checked = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        Users::login(users, conn.peer.ip(), &login.user, &login.password),
    )
    .await;
    let Ok(checked) = checked else {
        return Resp::err("the login was not checked in time; try again");
    };
    match checked {
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
            command::wrong_pass()
        }
    }
}
