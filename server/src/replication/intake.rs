//! The follower's side of a snapshot transfer: the leader's offer (its
//! size, checked against free disk before anything is taken), then chunks
//! written to a staging file as they arrive, each checked against what was
//! offered and announced, then the install.

use std::sync::Arc;

use semikv_protocol::blocking::Blocking;
use semikv_protocol::{Epoch, SnapshotChunk, SnapshotOffer};

use super::ReplicationError;
use crate::replica::Replica;
use crate::storage;
use crate::storage::snapshot::{ReceiveError, Receiving, Staged};
use crate::storage::DataDir;

/// A full disk is told apart: the follower waits for room rather than ask
/// for the snapshot again at once.
fn receive_error(e: ReceiveError) -> ReplicationError {
    match e {
        ReceiveError::NoRoom { needed, .. } => ReplicationError::NoRoom {
            reason: e.to_string(),
            needed,
        },
        e => ReplicationError::Snapshot(e.to_string()),
    }
}

/// A snapshot transfer in progress, from the leader's offer to its last
/// chunk.
#[derive(Debug, Default)]
pub(super) struct Intake {
    offer: Option<SnapshotOffer>,
    announced: Option<Announced>,
    receiving: Option<Receiving>,
}

impl Intake {
    /// Whether a snapshot was offered and not yet completely received.
    pub(super) fn in_progress(&self) -> bool {
        self.offer.is_some()
    }

    /// Takes the leader's offer: refused if one is already in progress, or
    /// if the disk cannot hold the announced size and keep its margin free
    /// (before a single byte is written).
    pub(super) async fn offer(
        &mut self,
        data_dir: &DataDir,
        offer: SnapshotOffer,
        blocking: Blocking,
    ) -> Result<(), ReplicationError> {
        if self.in_progress() {
            return Err(ReplicationError::Unexpected(
                "a second SnapshotOffer before the first snapshot ended".to_string(),
            ));
        }
        let receiving = Receiving::start(data_dir, offer.total_len, blocking)
            .await
            .map_err(receive_error)?;
        self.receiving = Some(receiving);
        self.offer = Some(offer);
        Ok(())
    }

    /// Takes one chunk; the whole snapshot and what was announced for it
    /// once the last chunk arrived.
    ///
    /// # Errors
    /// A chunk with no offer before it, one that does not describe the
    /// offered snapshot, one past the offered size (or a last chunk short of
    /// it), or a staging file that cannot be written.
    pub(super) async fn chunk(
        &mut self,
        chunk: SnapshotChunk,
    ) -> Result<Option<(Announced, Staged)>, ReplicationError> {
        let (Some(offer), Some(receiving)) = (&self.offer, &mut self.receiving) else {
            return Err(ReplicationError::Unexpected(
                "snapshot chunk without a SnapshotOffer before it".to_string(),
            ));
        };
        if chunk.epoch != offer.epoch || chunk.last_index != offer.last_index {
            return Err(storage::snapshot::InstallError::Mismatch {
                field: "epoch or last index against the offer",
                announced: format!("{} at {}", offer.epoch, offer.last_index),
                found: format!("{} at {}", chunk.epoch, chunk.last_index),
            }
            .into());
        }
        // Bytes clones share the buffer.
        let (data, done, offset) = (chunk.data.clone(), chunk.done, chunk.offset);
        match &self.announced {
            None => self.announced = Some(Announced::from_first(chunk)),
            Some(first) => first.check_next(&chunk)?,
        }
        receiving
            .append(offset, data)
            .await
            .map_err(receive_error)?;
        if !done {
            return Ok(None);
        }
        self.offer = None;
        let (Some(announced), Some(receiving)) = (self.announced.take(), self.receiving.take())
        else {
            return Err(ReplicationError::Unexpected(
                "snapshot without an announcement".to_string(),
            ));
        };
        let staged = receiving
            .finish()
            .map_err(|e| ReplicationError::Snapshot(e.to_string()))?;
        Ok(Some((announced, staged)))
    }
}

/// What a leader announced for the snapshot it streams, in its first chunk;
/// every later chunk must repeat it.
#[derive(Debug)]
pub(super) struct Announced {
    /// The leader's epoch.
    epoch: Epoch,
    /// Last index, its epoch, and the history up to it.
    pub(super) meta: storage::snapshot::SnapshotMeta,
}

impl Announced {
    fn from_first(chunk: SnapshotChunk) -> Announced {
        Announced {
            epoch: chunk.epoch,
            meta: storage::snapshot::SnapshotMeta {
                last_index: chunk.last_index,
                last_epoch: chunk.last_epoch,
                history: chunk.history,
            },
        }
    }

    /// A later chunk must describe the same snapshot; the leader sends the
    /// history only in the first one.
    fn check_next(&self, chunk: &SnapshotChunk) -> Result<(), ReplicationError> {
        let mismatch = |field, announced: String, found: String| {
            Err(storage::snapshot::InstallError::Mismatch {
                field,
                announced,
                found,
            }
            .into())
        };
        if chunk.epoch != self.epoch {
            return mismatch(
                "leader epoch in a later chunk",
                self.epoch.to_string(),
                chunk.epoch.to_string(),
            );
        }
        if chunk.last_index != self.meta.last_index {
            return mismatch(
                "last index in a later chunk",
                self.meta.last_index.to_string(),
                chunk.last_index.to_string(),
            );
        }
        if chunk.last_epoch != self.meta.last_epoch {
            return mismatch(
                "last epoch in a later chunk",
                self.meta.last_epoch.to_string(),
                chunk.last_epoch.to_string(),
            );
        }
        if !chunk.history.is_empty() && chunk.history != self.meta.history {
            return mismatch(
                "epoch history in a later chunk",
                format!("{:?}", self.meta.history),
                format!("{:?}", chunk.history),
            );
        }
        Ok(())
    }
}

/// Installs a fully received snapshot from its staging file, refusing it
/// before anything touches the data directory unless it is exactly what
/// the leader announced and does not roll back what this replica already
/// committed.
pub(super) async fn install_snapshot(
    replica: &Arc<Replica>,
    role_gen: u64,
    announced: Announced,
    staged: Staged,
) -> Result<(), ReplicationError> {
    // The stream must still be ours at the leader's epoch, and the commit
    // index is the floor. Only this stream advances a follower's commit, so
    // it cannot move between here and the install.
    let floor = {
        let node = replica.lock();
        node.ackable(role_gen, announced.epoch)?;
        node.commit_index()
    };
    let dir = replica.config.data_dir.clone();
    let expected = announced.meta;
    let installed = replica
        .config
        .blocking
        .run(move || storage::snapshot::install(&dir, staged.path(), &expected, floor))
        .await
        .map_err(|e| ReplicationError::Snapshot(e.to_string()))?;
    let (meta, store) = match installed {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, commit = %floor, "refused the leader's snapshot; resubscribing later");
            return Err(e.into());
        }
    };
    // `install` returned, so the new snapshot is durable (file fsynced,
    // renamed, directory fsynced) and only then were older snapshots
    // deleted. Only now may the log be reset: had the reset reached the disk
    // first, a crash in between would leave no snapshot covering the state
    // the discarded log held. A crash after this point restarts from the new
    // snapshot, and recovery drops log entries it covers.
    replica.with(|n| {
        n.on_snapshot_installed(
            role_gen,
            announced.epoch,
            meta.last_index,
            meta.last_epoch,
            meta.history,
            store,
        )
    })?;
    Ok(())
}
