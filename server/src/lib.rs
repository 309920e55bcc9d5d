//! semikv replica server: an in-memory map made durable by a write-ahead log,
//! replicated semi-synchronously from a leader to its followers.
//!
//! [`run`] serves one replica on a bound listener until its shutdown token is
//! cancelled; the `semikv-server` binary only parses arguments around it
//! ([`cli`]). Tests run it in-process on `127.0.0.1:0`.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod expiry;
pub mod http;
pub mod log;
pub mod metrics;
pub mod node;
pub mod replica;
pub mod replication;
pub mod room;
pub mod service;
pub mod storage;
pub mod sweeper;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, FsyncPolicy};
pub use semikv_protocol::blocking::Blocking;

use semikv_protocol::admission::Admission;
use semikv_protocol::net::Listener;

use crate::log::MemLog;
use crate::node::{Node, Recovered, Signals};
use crate::replica::{Replica, Watches};
use crate::storage::DataDir;
use crate::writer::{Writer, WriterError, WriterStats};

/// Connection slots a replica keeps for balancers and followers (at most
/// half of `--max-connections`): a flood of clients that fills the others
/// cannot keep a follower's stream or a balancer's link out.
pub const RESERVED_PEER_SLOTS: usize = 16;

/// How often the snapshotter checks the log's size.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(100);
/// How long open connections get to finish at shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Serves a replica on `listener` until `shutdown` is cancelled (or the disk
/// fails, which cancels it too). Recovers the data directory first; writes
/// the ready file once connections are accepted; flushes the log last.
///
/// # Errors
/// Recovery failures (corrupt log or snapshot, unreadable data directory),
/// and a write-ahead log failure while running.
pub async fn run(
    config: Config,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    run_with_http(config, listener, None, shutdown).await
}

/// [`run`], serving `/healthz`, `/readyz`, `/v1/status` and `/metrics` on
/// `http` too when given (see [`http`]).
///
/// # Errors
/// As [`run`].
pub async fn run_with_http(
    config: Config,
    listener: impl Into<Listener>,
    http: Option<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    let listener = listener.into();
    let addr = listener.local_addr().context("reading the bound address")?;
    let advertised = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let dir = config.data_dir.clone();
    let wal_options = storage::wal::WalOptions {
        segment_bytes: config.segment_bytes,
        max_record_len: config.max_frame_len,
    };
    let (opened, log) = config
        .blocking
        .run(move || recover(&dir, wal_options))
        .await
        .context("recovery task")?
        .with_context(|| format!("recovering {}", config.data_dir.display()))?;
    tracing::info!(
        replica = %config.id,
        epoch = %opened.epoch,
        snapshot = %log.base_index(),
        last_index = %log.last_index(),
        commit = %opened.commit_index,
        "recovered data directory"
    );
    if let Some(tls) = config.tls.clone() {
        tokio::spawn(semikv_protocol::process::on_sighup(
            shutdown.clone(),
            move || match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificates not reloaded; the ones loaded before stay in use")
                }
            },
        ));
    }
    let signals = Signals::new();
    let watches = Watches::of(&signals);
    let mut node = Node::new(
        config.id,
        advertised,
        Recovered {
            epoch: opened.epoch,
            log,
            store: opened.store,
            commit: opened.commit_index,
        },
        signals,
    );
    node.set_memory_limit(config.max_memory);
    node.set_clock(config.clock.clone());
    node.set_max_value_len(config.max_value_len);
    if let Some(limit) = config.max_memory {
        let used = node.memory_used();
        if used > limit {
            tracing::warn!(
                used,
                limit,
                "recovered store is past --max-memory; writes that grow it are refused"
            );
        } else {
            tracing::info!(used, limit, "store memory limited");
        }
    }
    let replica = Arc::new(Replica::new(
        node,
        watches,
        config.clone(),
        shutdown.clone(),
    ));

    let stats: Arc<WriterStats> = replica.metrics.writer.clone();
    let writer = Writer::start(replica.clone(), opened.wal, stats.clone())
        .context("starting the WAL writer")?;

    let tasks = TaskTracker::new();
    tasks.spawn(replication::follow_loop(replica.clone()));
    tasks.spawn(snapshotter(replica.clone()));
    tasks.spawn(expiry::run(replica.clone()));
    tasks.spawn(sweeper::run(replica.clone()));
    tasks.spawn(room::run(replica.clone()));

    let mut ready = addr.to_string();
    if let Some(http) = http {
        if let Ok(bound) = http.local_addr() {
            tracing::info!(addr = %bound, "HTTP listening (health, status, metrics)");
            ready.push_str(&format!("\nhttp {bound}"));
        }
        tasks.spawn(http::run(
            http,
            replica.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    if let Some(path) = &config.ready_file {
        write_ready_file(path, &ready)
            .with_context(|| format!("writing ready file {}", path.display()))?;
    }
    tracing::info!(replica = %config.id, addr = %addr, "serving");

    let admission = Admission::with_reserved(config.max_connections, RESERVED_PEER_SLOTS);
    semikv_protocol::process::accept_loop(
        &listener,
        &admission,
        &shutdown,
        &tasks,
        "replica",
        |stream, _peer, reserved| {
            let counted = replica.metrics.connection();
            let serving = service::serve(replica.clone(), stream, reserved);
            async move {
                serving.await;
                drop(counted);
            }
        },
    )
    .await;
    drop(listener);
    tracing::info!(replica = %config.id, "shutting down");
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_DRAIN, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    replica.wake_writer();
    let written = writer.join().await;
    let fsyncs = stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    let entries = stats.entries.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(fsyncs, entries, "write-ahead log closed");
    match written {
        Ok(()) => Ok(Summary { fsyncs, entries }),
        // The WAL's error itself, as before (callers may downcast to it).
        Err(WriterError::Storage(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

/// Opens the data directory and rebuilds the in-memory log from the
/// snapshot and the WAL after it.
///
/// A tail that cannot follow the snapshot (a crash between installing a
/// leader's snapshot and resetting the log leaves the old, possibly
/// divergent entries behind) is cut if it lies past the recovered commit
/// index, where it is tentative by definition; inside it, it is corruption.
fn recover(
    dir: &DataDir,
    options: storage::wal::WalOptions,
) -> anyhow::Result<(storage::Opened, MemLog)> {
    let mut opened = storage::open(dir, options)?;
    let (base_index, base_epoch, history) = match &opened.snapshot {
        Some(meta) => (meta.last_index, meta.last_epoch, meta.history.clone()),
        None => Default::default(),
    };
    let mut log = MemLog::new(base_index, base_epoch, history);
    for entry in std::mem::take(&mut opened.entries) {
        let index = entry.index;
        if let Err(e) = log.append(entry) {
            if index <= opened.commit_index {
                return Err(anyhow::anyhow!(
                    "committed log entry {index} does not follow the snapshot: {e}"
                ));
            }
            tracing::warn!(index = %index, error = %e, "dropping an uncommitted log tail that does not follow the snapshot");
            opened.wal.truncate_after(index.prev())?;
            opened.wal.sync()?;
            break;
        }
    }
    Ok((opened, log))
}

/// What a replica did over its run, for benchmarks and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// fsync calls on the write-ahead log.
    pub fsyncs: u64,
    /// Log entries written; `entries / fsyncs` is the group-commit factor.
    pub entries: u64,
}

/// Takes snapshots when the log since the last one grows past the threshold.
///
/// It looks on a timer rather than on every log change: a check per write
/// cost a lock and a task wake-up on the hot path, and a snapshot a tenth of
/// a second late changes nothing.
async fn snapshotter(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = replica.shutdown.cancelled() => return,
        }
        // `lock`, not `with`: taking a job queues nothing for the writer.
        let job = replica.lock().snapshot_job(replica.config.snapshot_bytes);
        let Some(job) = job else {
            continue;
        };
        let dir = replica.config.data_dir.clone();
        let index = job.meta.last_index;
        let started = tokio::time::Instant::now();
        let written = replica
            .config
            .blocking
            .run(move || {
                let path = storage::snapshot::write(&dir, &job.meta, &job.store)?;
                // Its size for the metrics; unknown is not a failure.
                Ok::<u64, storage::error::StorageError>(
                    std::fs::metadata(&path).map_or(0, |m| m.len()),
                )
            })
            .await;
        match written {
            Ok(Ok(bytes)) => {
                tracing::info!(index = %index, bytes, "snapshot written");
                replica.metrics.snapshot_written(bytes, started.elapsed());
                replica.with(|n| n.snapshot_done(Some(index)));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "snapshot failed; the log keeps growing until one succeeds");
                replica.metrics.snapshot_failed();
                replica.with(|n| n.snapshot_done(None));
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot task failed");
                replica.metrics.snapshot_failed();
                replica.with(|n| n.snapshot_done(None));
            }
        }
    }
}

pub use semikv_protocol::process::write_ready_file;
