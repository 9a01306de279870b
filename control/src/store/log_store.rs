//! openraft's log storage on redb: entries, vote, committed and last purged
//! log ids. Every write is durable before openraft is told it is done.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::disk::{Disk, DiskError, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOGS, put_meta};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote, encode};

/// The raft log. Cheap to clone: clones share the database (openraft uses
/// clones as readers for its replication tasks).
#[derive(Clone)]
pub(crate) struct LogStore {
    disk: Arc<Disk>,
    /// Last committed log index seen by [`RaftLogStorage::save_committed`],
    /// for status reports.
    committed: Arc<Mutex<Option<u64>>>,
}

impl LogStore {
    pub(crate) fn new(disk: Arc<Disk>) -> Result<Self, DiskError> {
        let committed: Option<LogId> = disk.read_meta(KEY_COMMITTED)?;
        let committed = Arc::new(Mutex::new(committed.map(|l| l.index)));
        Ok(LogStore { disk, committed })
    }

    /// Shared view of the last committed index, for status reports.
    pub(crate) fn committed_index(&self) -> Arc<Mutex<Option<u64>>> {
        Arc::clone(&self.committed)
    }
}

fn read_err(e: DiskError) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: DiskError) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.disk.read_logs(bounds).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.disk.read_meta(KEY_LAST_PURGED).map_err(read_err)?;
        let last: Option<Entry> = self.disk.last_log().map_err(read_err)?;
        let last_log_id = last.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.disk
            .write(move |txn| put_meta(txn, KEY_VOTE, Some(&vote)))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.disk
            .read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.disk
            .write_lazy(move |txn| put_meta(txn, KEY_COMMITTED, committed.as_ref()))
            .await
            .map_err(write_err)?;
        *self
            .committed
            .lock()
            .expect("committed index lock poisoned") = committed.map(|l| l.index);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.disk.read_meta(KEY_COMMITTED).map_err(read_err)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = encode(&e)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, AnyError::new(&err)))?;
            encoded.push((e.log_id.index, bytes));
        }
        let res = self
            .disk
            .write(move |txn| {
                let mut table = txn.open_table(LOGS).map_err(DiskError::redb)?;
                for (index, bytes) in &encoded {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(DiskError::redb)?;
                }
                Ok(())
            })
            .await;
        // The write above is durable (fsync'd) when it returns, so the
        // callback can be told at once; on failure openraft gets the error
        // both ways, as the v2 contract asks.
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk
            .write(move |txn| {
                let mut table = txn.open_table(LOGS).map_err(DiskError::redb)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(DiskError::redb)?;
                Ok(())
            })
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk
            .write(move |txn| {
                put_meta(txn, KEY_LAST_PURGED, Some(&log_id))?;
                let mut table = txn.open_table(LOGS).map_err(DiskError::redb)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(DiskError::redb)?;
                Ok(())
            })
            .await
            .map_err(write_err)
    }
}
