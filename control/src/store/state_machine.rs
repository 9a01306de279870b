//! openraft's state machine: applies log entries to the in-memory
//! [`StoreState`] and keeps the latest snapshot durable in redb.
//!
//! Only snapshots are persisted, not every apply: at startup the state is
//! restored from the last snapshot and openraft re-applies the log after
//! it (up to the saved committed index at once, the rest as the leader
//! commits it).

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use redb::ReadableTable;
use tokio::sync::watch;

use super::disk::{Disk, DiskError, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT};
use super::state::StoreState;
use super::types::{
    Entry, LogId, SnapshotMeta, StorageError, StoreResponse, StoredMembership, TypeConfig, decode,
    encode,
};

/// State shared between the state machine (writer) and the store handle
/// (readers).
pub(crate) struct Shared {
    pub(crate) state: RwLock<StoreState>,
    /// Last applied log index; bumped after every apply and snapshot install.
    pub(crate) applied: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn read<R>(&self, f: impl FnOnce(&StoreState) -> R) -> R {
        // A poisoned lock means a panic mid-apply: the state may be half
        // written and must not be served.
        f(&self.state.read().expect("store state lock poisoned"))
    }
}

pub(crate) struct StateMachine {
    disk: Arc<Disk>,
    shared: Arc<Shared>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    /// Makes snapshot ids unique among snapshots built by this process.
    snapshot_seq: u64,
}

fn read_snapshot_err(e: DiskError) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachine {
    /// Opens the state machine, restored from the persisted snapshot if any.
    pub(crate) fn open(disk: Arc<Disk>) -> Result<(Self, Arc<Shared>), DiskError> {
        let mut sm = StateMachine {
            disk,
            shared: Arc::new(Shared {
                state: RwLock::new(StoreState::default()),
                applied: watch::channel(0).0,
            }),
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshot_seq: 0,
        };
        if let Some((meta, data)) = sm.load_snapshot()? {
            let state = StoreState::from_snapshot(&data)?;
            sm.set_state(&meta, state);
        }
        let shared = Arc::clone(&sm.shared);
        Ok((sm, shared))
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, DiskError> {
        let Some(meta) = self.disk.read_snapshot_raw(KEY_SNAPSHOT_META)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = decode(&meta)?;
        let data = self
            .disk
            .read_snapshot_raw(KEY_SNAPSHOT_DATA)?
            .unwrap_or_default();
        Ok(Some((meta, data)))
    }

    /// Replaces the whole state with a snapshot's.
    fn set_state(&mut self, meta: &SnapshotMeta, state: StoreState) {
        *self
            .shared
            .state
            .write()
            .expect("store state lock poisoned") = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.shared
            .applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
    }
}

/// Persists a snapshot. With `only_if_newer`, keeps the stored one when it
/// is at least as recent: snapshot builds run concurrently with installs,
/// and a slow build must not overwrite a newer installed snapshot.
async fn persist_snapshot(
    disk: &Arc<Disk>,
    meta: &SnapshotMeta,
    data: Vec<u8>,
    only_if_newer: bool,
) -> Result<(), StorageError> {
    let meta_bytes = encode(meta)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
    let last_log_id = meta.last_log_id;
    disk.write(move |txn| {
        let mut table = txn.open_table(SNAPSHOT).map_err(DiskError::redb)?;
        if only_if_newer
            && let Some(stored) = table.get(KEY_SNAPSHOT_META).map_err(DiskError::redb)?
        {
            let stored: SnapshotMeta = decode(stored.value())?;
            if stored.last_log_id >= last_log_id {
                return Ok(());
            }
        }
        table
            .insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())
            .map_err(DiskError::redb)?;
        table
            .insert(KEY_SNAPSHOT_DATA, data.as_slice())
            .map_err(DiskError::redb)?;
        Ok(())
    })
    .await
    .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into())
}

/// A point-in-time copy of the state, taken when openraft asks for a
/// builder; encoding and persisting happen later, off the apply path.
pub(crate) struct SnapshotBuilder {
    disk: Arc<Disk>,
    state: StoreState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = self.state.to_snapshot();
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        persist_snapshot(&self.disk, &meta, data.clone(), true).await?;
        tracing::debug!(snapshot = %meta, bytes = data.len(), "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<StoreResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        {
            let mut state = self
                .shared
                .state
                .write()
                .expect("store state lock poisoned");
            for entry in entries {
                let index = entry.log_id.index;
                self.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => Default::default(),
                    EntryPayload::Normal(req) => state.apply(req.0, index),
                    EntryPayload::Membership(m) => {
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Default::default()
                    }
                };
                replies.push(StoreResponse(reply));
            }
        }
        if let Some(l) = self.last_applied {
            self.shared.applied.send_replace(l.index);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshot_seq += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            disk: Arc::clone(&self.disk),
            state: self.shared.read(StoreState::clone),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = StoreState::from_snapshot(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        persist_snapshot(&self.disk, meta, data, false).await?;
        self.set_state(meta, state);
        tracing::info!(snapshot = %meta, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshot = self.load_snapshot().map_err(read_snapshot_err)?;
        Ok(snapshot.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
