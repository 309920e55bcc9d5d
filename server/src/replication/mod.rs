//! Log shipping between replicas. Followers pull: a follower connects to its
//! leader, subscribes with its log position and history, and the leader
//! answers with the common prefix (or a snapshot) and then streams entries
//! without waiting for acks, with its commit index on every batch and on idle
//! heartbeats. Followers ack their durable index as it grows and on every
//! heartbeat tick, which doubles as their liveness signal.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use semikv_protocol::budget::ReadBudget;
use semikv_protocol::handshake::{self, HandshakeError};
use semikv_protocol::{
    Ack, Entries, Epoch, Hello, LeadCheck, LogIndex, Message, ReplicaId, Role, SnapshotChunk,
    SnapshotOffer, StreamFrom, Subscribe, WireError,
};
use tokio::time::timeout;

use crate::node::{FollowTarget, StreamError, StreamPlan};
use crate::replica::Replica;
use crate::storage;
use intake::{install_snapshot, Intake};

mod intake;

/// Interval of leader heartbeats and follower acks on an idle stream.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// A stream silent for this long is considered dead.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on connecting to a leader and on its handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one write to a peer that does not read.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most entries in one batch.
const BATCH_ENTRIES: usize = 1024;
/// About the most bytes in one batch.
const BATCH_BYTES: usize = 1024 * 1024;
/// Bytes of snapshot per chunk.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// How long a follower whose disk had no room for its leader's snapshot
/// waits before asking again: each attempt has the leader read and start
/// sending its snapshot, for nothing while the disk stays full.
const NO_ROOM_RETRY: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A replication stream, read under a [`ReadBudget`].
type Conn = semikv_protocol::codec::BudgetedConn;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// Framing or decoding failed.
    #[error("protocol: {0}")]
    Protocol(#[from] semikv_protocol::ProtocolError),
    /// The peer sent nothing for too long, or did not read.
    #[error("peer timed out")]
    Timeout,
    /// The peer closed the stream.
    #[error("peer closed the stream")]
    Closed,
    /// The peer rejected us.
    #[error("peer rejected the stream: {0}")]
    Rejected(String),
    /// Our role or epoch moved on, or the logs disagree.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The peer sent a message that has no place here.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// Reading or installing a snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A snapshot from the leader was refused: invalid, not what the leader
    /// announced, or older than what this replica already committed.
    #[error("snapshot refused: {0}")]
    SnapshotRefused(#[from] storage::snapshot::InstallError),
    /// The disk has no room for the leader's snapshot (keeping its margin).
    #[error("no room on disk for the leader's snapshot: {reason}")]
    NoRoom {
        /// What was refused.
        reason: String,
        /// The free bytes it would take.
        needed: u64,
    },
}

async fn send(conn: &mut Conn, msg: Message) -> Result<(), ReplicationError> {
    timeout(SEND_TIMEOUT, conn.send(msg))
        .await
        .map_err(|_| ReplicationError::Timeout)??;
    Ok(())
}

/// The next message from a whole connection or its read half; silence for
/// [`SILENCE_TIMEOUT`] is an error.
async fn recv<S>(conn: &mut S) -> Result<Message, ReplicationError>
where
    S: futures::Stream<Item = Result<Message, semikv_protocol::ProtocolError>> + Unpin,
{
    match timeout(SILENCE_TIMEOUT, conn.next()).await {
        Err(_) => Err(ReplicationError::Timeout),
        Ok(None) => Err(ReplicationError::Closed),
        Ok(Some(msg)) => Ok(msg?),
    }
}

/// Leader side: serves one follower's stream on an accepted replica-role
/// connection, until it breaks or this node stops leading.
pub async fn serve_follower(replica: Arc<Replica>, mut conn: Conn, peer: Option<ReplicaId>) {
    let sub = match recv(&mut conn).await {
        Ok(Message::Subscribe(sub)) => sub,
        Ok(other) => {
            let what = other.name().to_string();
            let _ = send(&mut conn, Message::Reject(WireError::Unexpected { what })).await;
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "replica connection ended before subscribing");
            return;
        }
    };
    if peer.is_some_and(|p| p != sub.follower) {
        tracing::warn!(hello = ?peer, subscribe = %sub.follower, "follower id mismatch");
    }
    let follower = sub.follower;
    replica.with(|n| n.on_follower_stream(follower, true));
    let result = stream_to(&replica, conn, &sub).await;
    replica.with(|n| n.on_follower_stream(follower, false));
    match result {
        Ok(()) | Err(ReplicationError::Stream(StreamError::Superseded)) => {
            tracing::info!(follower = %follower, "follower stream closed: no longer leading");
        }
        Err(e) => tracing::info!(follower = %follower, error = %e, "follower stream ended"),
    }
}

async fn stream_to(
    replica: &Arc<Replica>,
    mut conn: Conn,
    sub: &Subscribe,
) -> Result<(), ReplicationError> {
    let planned = replica.with(|n| n.plan_stream(sub.epoch, sub.last_index, &sub.history));
    let (plan, role_gen) = match planned {
        Ok(p) => p,
        Err(reply) => {
            let what = reply.to_string();
            send(
                &mut conn,
                Message::Reject(WireError::Unexpected { what: what.clone() }),
            )
            .await?;
            return Err(ReplicationError::Rejected(what));
        }
    };
    let epoch = sub.epoch;
    let mut next = match plan {
        StreamPlan::FromPrefix {
            prefix,
            prefix_epoch,
            prefix_crc,
        } => {
            tracing::info!(follower = %sub.follower, prefix = %prefix, their_last = %sub.last_index, "streaming log to follower");
            let from = StreamFrom {
                epoch,
                prefix,
                prefix_epoch,
                prefix_crc,
            };
            send(&mut conn, Message::StreamFrom(from)).await?;
            prefix.next()
        }
        StreamPlan::Snapshot => send_snapshot(replica, &mut conn, epoch, sub.follower)
            .await?
            .next(),
    };
    let (mut stream, mut sink) = semikv_protocol::codec::split(conn);
    let follower = sub.follower;
    let acks = async {
        loop {
            let msg = match recv(&mut stream).await {
                Ok(msg) => msg,
                Err(e) => return e,
            };
            match msg {
                Message::Ack(Ack { epoch, match_index }) => {
                    replica.with(|n| n.on_ack(follower, epoch, match_index));
                }
                Message::LeadConfirm(LeadCheck { epoch, round }) => {
                    replica.with(|n| n.on_lead_confirm(follower, epoch, round));
                }
                other => return ReplicationError::Unexpected(other.name().to_string()),
            }
        }
    };
    let mut progress = replica.watch.progress.clone();
    // A round asked for before this stream started is sent at once: a read
    // may be waiting for it, and this follower may be the one it needs.
    let mut lead_check = replica.watch.lead_check.clone();
    lead_check.mark_changed();
    let ship = async {
        let mut sent_commit = LogIndex(0);
        // When an idle stream gets its heartbeat: HEARTBEAT after the last
        // batch, whatever else (a leadership check) was sent since.
        let mut heartbeat_at = tokio::time::Instant::now() + HEARTBEAT;
        loop {
            progress.borrow_and_update();
            loop {
                let batch =
                    replica
                        .lock()
                        .entries_for(role_gen, next, BATCH_ENTRIES, BATCH_BYTES)?;
                let Some((entries, commit)) = batch else {
                    // Compacted under us: the follower resubscribes and gets a snapshot.
                    return Ok::<(), ReplicationError>(());
                };
                if entries.is_empty() && commit == sent_commit {
                    break;
                }
                let prev_index = next.prev();
                next = LogIndex(next.0 + entries.len() as u64);
                let last_batch = entries.is_empty();
                sent_commit = commit;
                timeout(
                    SEND_TIMEOUT,
                    sink.feed(Message::Entries(Entries {
                        epoch,
                        prev_index,
                        entries,
                        commit_index: commit,
                    })),
                )
                .await
                .map_err(|_| ReplicationError::Timeout)??;
                heartbeat_at = tokio::time::Instant::now() + HEARTBEAT;
                if last_batch {
                    break;
                }
            }
            timeout(SEND_TIMEOUT, SinkExt::<Message>::flush(&mut sink))
                .await
                .map_err(|_| ReplicationError::Timeout)??;
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(heartbeat_at) => {
                    // Force a heartbeat on the next round.
                    sent_commit = LogIndex(u64::MAX);
                }
                changed = lead_check.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    // After the entries queued so far: the follower confirms
                    // in stream order, once it has read them.
                    let round = *lead_check.borrow_and_update();
                    if round > 0 {
                        timeout(SEND_TIMEOUT, sink.send(Message::LeadCheck(LeadCheck { epoch, round })))
                            .await
                            .map_err(|_| ReplicationError::Timeout)??;
                    }
                }
                () = replica.shutdown.cancelled() => return Ok(()),
            }
        }
    };
    tokio::select! {
        e = acks => Err(e),
        r = ship => r,
    }
}

async fn send_snapshot(
    replica: &Arc<Replica>,
    conn: &mut Conn,
    epoch: Epoch,
    follower: ReplicaId,
) -> Result<LogIndex, ReplicationError> {
    let dir = replica.config.data_dir.clone();
    let opened = replica
        .config
        .blocking
        .run(move || storage::snapshot::open_latest(&dir))
        .await
        .map_err(|e| ReplicationError::Snapshot(e.to_string()))?
        .map_err(|e| ReplicationError::Snapshot(e.to_string()))?;
    let Some((meta, mut file, total_len)) = opened else {
        return Err(ReplicationError::Snapshot(
            "follower needs a snapshot but none exists".to_string(),
        ));
    };
    tracing::info!(follower = %follower, index = %meta.last_index, bytes = total_len, "sending snapshot to follower");
    send(
        conn,
        Message::SnapshotOffer(SnapshotOffer {
            epoch,
            last_index: meta.last_index,
            total_len,
        }),
    )
    .await?;
    // Read a chunk at a time: memory holds one chunk, however large the
    // snapshot. The file goes to the blocking seam (inline in a
    // simulation) and comes back with each chunk.
    let mut offset = 0u64;
    loop {
        let want = usize::try_from(total_len - offset)
            .unwrap_or(usize::MAX)
            .min(SNAPSHOT_CHUNK);
        let (back, read) = replica
            .config
            .blocking
            .run(move || {
                let mut file = file;
                let mut data = bytes::BytesMut::zeroed(want);
                let read = file.read_exact(&mut data).map(|()| data);
                (file, read)
            })
            .await
            .map_err(|e| ReplicationError::Snapshot(format!("reading the snapshot: {e}")))?;
        file = back;
        let data =
            read.map_err(|e| ReplicationError::Snapshot(format!("reading the snapshot: {e}")))?;
        let next = offset + want as u64;
        let done = next == total_len;
        send(
            conn,
            Message::Snapshot(SnapshotChunk {
                epoch,
                last_index: meta.last_index,
                last_epoch: meta.last_epoch,
                history: if offset == 0 {
                    meta.history.clone()
                } else {
                    Vec::new()
                },
                offset,
                data: data.freeze(),
                done,
            }),
        )
        .await?;
        if done {
            return Ok(meta.last_index);
        }
        offset = next;
    }
}

/// Waits until the WAL writer has found room for what the full disk
/// refused (see [`crate::writer::DISK_FULL_RETRY`]); `false` on shutdown.
async fn wait_for_disk_room(replica: &Replica) -> bool {
    while replica.lock().disk_full().is_some() {
        tokio::select! {
            () = tokio::time::sleep(crate::writer::DISK_FULL_RETRY) => {}
            () = replica.shutdown.cancelled() => return false,
        }
    }
    true
}

/// Follower side: follows whatever leader the node is told to, reconnecting
/// with backoff, until shutdown.
pub async fn follow_loop(replica: Arc<Replica>) {
    let mut target_rx = replica.watch.target.clone();
    let mut backoff = BACKOFF_MIN;
    loop {
        let target = target_rx.borrow_and_update().clone();
        let Some(target) = target else {
            tokio::select! {
                changed = target_rx.changed() => if changed.is_err() { return },
                () = replica.shutdown.cancelled() => return,
            }
            continue;
        };
        tokio::select! {
            result = follow_once(&replica, &target) => {
                match result {
                    Err(ReplicationError::Stream(StreamError::Superseded)) => {}
                    Err(ReplicationError::Stream(StreamError::DiskFull(reason))) => {
                        tracing::warn!(leader = %target.addr, reason = %reason, "disk full: stopped taking the leader's entries until space is freed");
                        if !wait_for_disk_room(&replica).await {
                            return;
                        }
                        tracing::info!(leader = %target.addr, "disk has room again: resubscribing to the leader");
                    }
                    Err(ReplicationError::NoRoom { reason, needed }) => {
                        // Once per episode: the retries say nothing new.
                        if replica.with(|n| n.on_no_room(Some((reason.clone(), needed)))) {
                            tracing::warn!(leader = %target.addr, reason = %reason, "no room on disk for the leader's snapshot: this replica gets no reads until it can install one; retrying every 2 s");
                        } else {
                            tracing::debug!(leader = %target.addr, reason = %reason, "still no room for the leader's snapshot");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(NO_ROOM_RETRY) => {}
                            _ = target_rx.changed() => {}
                            () = replica.shutdown.cancelled() => return,
                        }
                        continue;
                    }
                    Err(ReplicationError::Stream(StreamError::Diverged(reason))) => {
                        // The node stopped following and refuses everything
                        // (a new Follow included) until an operator acts; the
                        // marker keeps it stopped across restarts.
                        tracing::error!(leader = %target.addr, epoch = %target.epoch, reason = %reason, "this replica's log diverged from its leader's; it stopped serving (see the README: wipe its data directory to rejoin with a full copy)");
                        let dir = replica.config.data_dir.clone();
                        let marked = replica.config.blocking.run(move || {
                            storage::meta::mark_diverged(&dir, &reason)
                        })
                        .await;
                        if !matches!(marked, Ok(Ok(()))) {
                            tracing::error!(?marked, "could not record the divergence in the data directory; a restart would serve the diverged log");
                        }
                    }
                    Err(e) => {
                        tracing::info!(leader = %target.addr, epoch = %target.epoch, error = %e, "replication stream from leader ended; reconnecting");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = target_rx.changed() => {}
                            () = replica.shutdown.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    Ok(()) => {}
                }
            }
            changed = target_rx.changed() => if changed.is_err() { return },
            () = replica.shutdown.cancelled() => return,
        }
        backoff = BACKOFF_MIN;
    }
}

async fn follow_once(
    replica: &Arc<Replica>,
    target: &FollowTarget,
) -> Result<(), ReplicationError> {
    let stream = timeout(CONNECT_TIMEOUT, replica.config.net.connect(&target.addr))
        .await
        .map_err(|_| ReplicationError::Timeout)??;
    let stream = match &replica.config.tls {
        Some(tls) if tls.connects() => timeout(CONNECT_TIMEOUT, tls.connect(stream, &target.addr))
            .await
            .map_err(|_| ReplicationError::Timeout)??,
        _ => stream,
    };
    // A budget of its own, one frame, rather than the replica's: the
    // stream reads one frame at a time anyway, and behind clients that
    // stall mid-frame it would miss SILENCE_TIMEOUT and starve replication.
    let own = ReadBudget::new(replica.config.max_frame_len);
    let mut conn = semikv_protocol::codec::framed(stream, replica.config.max_frame_len, &own);
    let id = replica.config.id;
    let hello = handshake::hello_proving(
        &mut conn,
        Hello::new(Role::Replica, Some(id)),
        replica.config.cluster_secret.as_ref(),
    );
    match timeout(CONNECT_TIMEOUT, hello).await {
        Err(_) => return Err(ReplicationError::Timeout),
        Ok(Ok(_)) => {}
        Ok(Err(HandshakeError::Closed)) => return Err(ReplicationError::Closed),
        Ok(Err(HandshakeError::Rejected(e))) => {
            return Err(ReplicationError::Rejected(e.to_string()))
        }
        Ok(Err(HandshakeError::Unexpected(what))) => {
            return Err(ReplicationError::Unexpected(what.to_string()))
        }
        Ok(Err(HandshakeError::Protocol(e))) => return Err(e.into()),
        Ok(Err(e @ (HandshakeError::PeerNotProved | HandshakeError::Random(_)))) => {
            return Err(ReplicationError::Rejected(e.to_string()))
        }
    }
    let (epoch, last_index, last_epoch, history) = replica.lock().subscribe_info();
    if epoch != target.epoch {
        return Err(StreamError::Superseded.into());
    }
    send(
        &mut conn,
        Message::Subscribe(Subscribe {
            epoch,
            follower: id,
            last_index,
            last_epoch,
            history,
        }),
    )
    .await?;
    let role_gen = target.role_gen;
    // Until the leader has told us where our logs agree, our durable index
    // may cover a divergent tail: no ack may be sent before that.
    let mut intake = Intake::default();
    loop {
        match recv(&mut conn).await? {
            Message::StreamFrom(from) => {
                if intake.in_progress() {
                    return Err(ReplicationError::Unexpected(
                        "StreamFrom in the middle of a snapshot".to_string(),
                    ));
                }
                let StreamFrom {
                    epoch,
                    prefix,
                    prefix_epoch,
                    prefix_crc,
                } = from;
                replica.with(|n| {
                    n.on_stream_from(role_gen, epoch, prefix, prefix_epoch, prefix_crc)
                })?;
                tracing::info!(leader = %target.addr, epoch = %epoch, prefix = %prefix, "following leader");
                break;
            }
            Message::SnapshotOffer(offer) => {
                if let Err(e) = intake
                    .offer(&replica.config.data_dir, offer, replica.config.blocking)
                    .await
                {
                    tracing::warn!(leader = %target.addr, error = %e, "refused the leader's snapshot");
                    return Err(e);
                }
            }
            Message::Snapshot(chunk) => {
                let received = match intake.chunk(chunk).await {
                    Ok(received) => received,
                    Err(e) => {
                        tracing::warn!(leader = %target.addr, error = %e, "refused the leader's snapshot stream");
                        return Err(e);
                    }
                };
                if let Some((announced, staged)) = received {
                    let index = announced.meta.last_index;
                    install_snapshot(replica, role_gen, announced, staged).await?;
                    tracing::info!(leader = %target.addr, index = %index, "installed snapshot from leader");
                    break;
                }
            }
            Message::Reject(e) => return Err(ReplicationError::Rejected(e.to_string())),
            other => return Err(ReplicationError::Unexpected(other.name().to_string())),
        }
    }
    if replica.with(|n| n.on_no_room(None)) {
        tracing::info!(leader = %target.addr, "found room for the leader's snapshot");
    }
    let _following = replica.metrics.following();
    let (mut stream, mut sink) = semikv_protocol::codec::split(conn);
    // The last leadership check confirmed here, for the ack loop to send.
    let (confirm_tx, mut confirm_rx) = tokio::sync::watch::channel(0u64);
    let receive = async {
        loop {
            let msg = match recv(&mut stream).await {
                Ok(msg) => msg,
                Err(e) => return e,
            };
            let applied = match msg {
                Message::Entries(Entries {
                    epoch,
                    prev_index,
                    entries,
                    commit_index,
                }) => replica
                    .with(|n| n.on_entries(role_gen, epoch, prev_index, entries, commit_index)),
                Message::LeadCheck(LeadCheck { epoch, round }) => {
                    // Checked now, as the check is read: a fence after this
                    // point comes after the leader sent it, which is all a
                    // confirmation claims (see `node::reads`).
                    replica.lock().confirmable(role_gen, epoch).map(|()| {
                        confirm_tx.send_if_modified(|last| {
                            let newer = round > *last;
                            *last = (*last).max(round);
                            newer
                        });
                    })
                }
                Message::Reject(e) => return ReplicationError::Rejected(e.to_string()),
                other => return ReplicationError::Unexpected(other.name().to_string()),
            };
            if let Err(e) = applied {
                return e.into();
            }
        }
    };
    let mut durable = replica.watch.durable.clone();
    let epoch = target.epoch;
    let ack = async {
        loop {
            let match_index = replica.lock().ackable(role_gen, epoch)?;
            timeout(
                SEND_TIMEOUT,
                sink.send(Message::Ack(Ack { epoch, match_index })),
            )
            .await
            .map_err(|_| ReplicationError::Timeout)??;
            // The next ack goes HEARTBEAT after this one at the latest,
            // whatever confirmations go in between.
            let heartbeat = tokio::time::sleep(HEARTBEAT);
            tokio::pin!(heartbeat);
            loop {
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return Ok::<(), ReplicationError>(()) } else { break },
                    () = &mut heartbeat => break,
                    changed = confirm_rx.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let round = *confirm_rx.borrow_and_update();
                        timeout(SEND_TIMEOUT, sink.send(Message::LeadConfirm(LeadCheck { epoch, round })))
                            .await
                            .map_err(|_| ReplicationError::Timeout)??;
                    }
                }
            }
        }
    };
    tokio::select! {
        e = receive => Err(e),
        r = ack => r,
    }
}
