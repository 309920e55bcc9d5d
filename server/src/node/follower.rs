//! The follower's side of the state machine: where its stream starts (with
//! the log-matching check), appending the leader's entries, acknowledging,
//! and installing a snapshot.

use super::*;

impl Node {
    /// What a follower subscribes with: its epoch, last index and epoch, and
    /// history, for the target it follows now.
    pub fn subscribe_info(&self) -> (Epoch, LogIndex, Epoch, Vec<EpochStart>) {
        (
            self.epoch,
            self.log.last_index(),
            self.log.last_epoch(),
            self.log.history().to_vec(),
        )
    }

    pub(super) fn check_follower(&self, role_gen: u64, epoch: Epoch) -> Result<(), StreamError> {
        match &self.role {
            Role::Follower(t)
                if self.role_gen == role_gen && t.epoch == epoch && self.epoch == epoch =>
            {
                Ok(())
            }
            _ => Err(StreamError::Superseded),
        }
    }

    /// The leader says the logs agree up to `prefix`, where its entry has
    /// `prefix_epoch` and checksum `prefix_crc`: drop everything after.
    ///
    /// # Errors
    /// `Superseded` if the role moved on; `Inconsistent` if `prefix` is past
    /// our log; `Diverged` (and the node stops) if our entry at `prefix` is
    /// not the leader's, or `prefix` would cut a committed entry: with one
    /// leader per epoch neither can happen, and merging would corrupt data.
    pub fn on_stream_from(
        &mut self,
        role_gen: u64,
        epoch: Epoch,
        prefix: LogIndex,
        prefix_epoch: Epoch,
        prefix_crc: Option<u32>,
    ) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)?;
        if prefix > self.log.last_index() {
            return Err(StreamError::Inconsistent(format!(
                "prefix {prefix} is past our last index {}",
                self.log.last_index()
            )));
        }
        if prefix < self.commit {
            return Err(self.diverge(format!(
                "the leader of epoch {epoch} would truncate committed entries: our logs agree \
                 only up to index {prefix}, but index {} is committed here",
                self.commit
            )));
        }
        // Below the base only the epoch is known (and `prefix >= commit >=
        // base` here, so the base is as low as it gets).
        let ours = self.log.epoch_at(prefix);
        if ours != Some(prefix_epoch) {
            return Err(self.diverge(format!(
                "at index {prefix}, where the leader of epoch {epoch} says our logs agree, our \
                 entry is of epoch {} and the leader's of epoch {prefix_epoch}",
                ours.unwrap_or_default()
            )));
        }
        let our_crc = self.log.get(prefix).and_then(Entry::checksum);
        if let (Some(theirs), Some(ours)) = (prefix_crc, our_crc) {
            if theirs != ours {
                return Err(self.diverge(format!(
                    "at index {prefix} (epoch {prefix_epoch}) our entry differs from the leader's \
                     (checksum {ours:08x}, the leader's {theirs:08x}): two entries of one \
                     index and epoch"
                )));
            }
        }
        if prefix < self.log.last_index() {
            self.log.truncate_after(prefix);
            self.generation += 1;
            self.durable = self.durable.min(prefix);
            self.effects.durable = Some(self.durable);
            self.push_wal(WalCmd::TruncateAfter(prefix));
        }
        Ok(())
    }

    /// A batch from the leader.
    ///
    /// # Errors
    /// `Superseded` if the role moved on; `Inconsistent` if the batch does not
    /// continue our log; `DiskFull` if it carries entries while the disk has
    /// no room for them (they would pile up in memory: the stream ends and
    /// resumes once the writer finds room).
    pub fn on_entries(
        &mut self,
        role_gen: u64,
        epoch: Epoch,
        prev_index: LogIndex,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)?;
        if prev_index != self.log.last_index() {
            return Err(StreamError::Inconsistent(format!(
                "batch after {prev_index} but our log ends at {}",
                self.log.last_index()
            )));
        }
        if !entries.is_empty() {
            if let Some(reason) = &self.disk_full {
                return Err(StreamError::DiskFull(reason.clone()));
            }
            let mut records = Vec::with_capacity(entries.len());
            for entry in entries {
                if entry.epoch > epoch {
                    return Err(StreamError::Inconsistent(format!(
                        "entry of epoch {} from a leader of epoch {epoch}",
                        entry.epoch
                    )));
                }
                self.log
                    .append(entry.clone())
                    .map_err(|e| StreamError::Inconsistent(e.to_string()))?;
                records.push(Record::Entry(entry));
            }
            self.push_wal(WalCmd::Append(records));
            self.signal_progress();
        }
        let commit = leader_commit.min(self.log.last_index());
        self.set_commit(commit);
        Ok(())
    }

    /// The durable index a follower may acknowledge for `role_gen`/`epoch`.
    ///
    /// # Errors
    /// `Superseded` if the role moved on.
    pub fn ackable(&self, role_gen: u64, epoch: Epoch) -> Result<LogIndex, StreamError> {
        self.check_follower(role_gen, epoch)?;
        Ok(self.durable)
    }

    /// A snapshot from the leader replaced our state (already durable on disk).
    ///
    /// # Errors
    /// `Superseded` if the role moved on meanwhile.
    pub fn on_snapshot_installed(
        &mut self,
        role_gen: u64,
        epoch: Epoch,
        last_index: LogIndex,
        last_epoch: Epoch,
        history: Vec<EpochStart>,
        store: Store,
    ) -> Result<(), StreamError> {
        self.check_follower(role_gen, epoch)?;
        self.log.reset(last_index, last_epoch, history);
        // A compaction target left from an own snapshot newer than this one
        // would drop entries streamed next before they are applied.
        self.compact_to = last_index;
        self.store = store;
        self.rebuild_expiry_index();
        self.commit = last_index;
        self.applied = last_index;
        self.recorded_commit = last_index;
        self.generation += 1;
        self.durable = last_index;
        self.effects.durable = Some(last_index);
        self.push_wal(WalCmd::Reset(last_index));
        self.signal_progress();
        Ok(())
    }
}
