//! The store's one redb file: tables, and helpers that run redb's blocking
//! I/O off the async runtime.
//!
//! Tables:
//! - `logs`: log index -> postcard(`Entry`)
//! - `meta`: `vote`, `committed`, `last_purged` -> postcard(value)
//! - `snapshot`: `meta` -> postcard(`SnapshotMeta`), `data` -> snapshot bytes
//!
//! Every write transaction commits with `Durability::Immediate` (fsync),
//! except the committed log id, which is only a hint for faster restart
//! (see [`Disk::write_lazy`]).

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{decode, encode};

pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";

/// What can go wrong below the store: redb, the codec, or the blocking task.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskError {
    #[error("redb")]
    Redb(#[from] redb::Error),
    #[error("decoding a stored value")]
    Codec(#[from] postcard::Error),
    #[error("decoding a snapshot")]
    Snapshot(#[from] prost::DecodeError),
    #[error("blocking disk task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl DiskError {
    pub(crate) fn redb(e: impl Into<redb::Error>) -> Self {
        DiskError::Redb(e.into())
    }
}

pub(crate) struct Disk {
    db: Database,
    /// Dropped right after `db` (fields drop in order): receivers learn
    /// that the database file is closed and its lock released.
    _closed: tokio::sync::watch::Sender<()>,
}

impl Disk {
    /// Opens (or creates) the database at `path` and makes sure every table
    /// exists, so readers never see "table does not exist".
    pub(crate) fn open(
        path: &Path,
        closed: tokio::sync::watch::Sender<()>,
    ) -> Result<Arc<Disk>, DiskError> {
        let db = Database::create(path).map_err(DiskError::redb)?;
        let txn = db.begin_write().map_err(DiskError::redb)?;
        txn.open_table(LOGS).map_err(DiskError::redb)?;
        txn.open_table(META).map_err(DiskError::redb)?;
        txn.open_table(SNAPSHOT).map_err(DiskError::redb)?;
        txn.commit().map_err(DiskError::redb)?;
        Ok(Arc::new(Disk {
            db,
            _closed: closed,
        }))
    }

    /// Runs `f` in a durable write transaction on the blocking pool and
    /// returns once it is on disk.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, DiskError> + Send + 'static,
    {
        self.write_with(Durability::Immediate, f).await
    }

    /// Like [`Disk::write`] but without fsync: the change becomes durable
    /// with the next durable write. Only for values that may be lost in a
    /// crash (the committed log id: a stale one only means re-applying
    /// fewer entries at startup, before the leader says more).
    pub(crate) async fn write_lazy<T, F>(self: &Arc<Self>, f: F) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, DiskError> + Send + 'static,
    {
        self.write_with(Durability::None, f).await
    }

    async fn write_with<T, F>(
        self: &Arc<Self>,
        durability: Durability,
        f: F,
    ) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, DiskError> + Send + 'static,
    {
        let disk = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut txn = disk.db.begin_write().map_err(DiskError::redb)?;
            txn.set_durability(durability).map_err(DiskError::redb)?;
            let out = f(&txn)?;
            txn.commit().map_err(DiskError::redb)?;
            Ok(out)
        })
        .await?
    }

    /// Reads and decodes `key` of the `meta` table.
    pub(crate) fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DiskError> {
        let txn = self.db.begin_read().map_err(DiskError::redb)?;
        let table = txn.open_table(META).map_err(DiskError::redb)?;
        match table.get(key).map_err(DiskError::redb)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Reads the raw bytes of `key` in the `snapshot` table.
    pub(crate) fn read_snapshot_raw(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError> {
        let txn = self.db.begin_read().map_err(DiskError::redb)?;
        let table = txn.open_table(SNAPSHOT).map_err(DiskError::redb)?;
        Ok(table
            .get(key)
            .map_err(DiskError::redb)?
            .map(|v| v.value().to_vec()))
    }

    /// Decoded log entries with index in `range`.
    pub(crate) fn read_logs<T: DeserializeOwned>(
        &self,
        range: (std::ops::Bound<u64>, std::ops::Bound<u64>),
    ) -> Result<Vec<T>, DiskError> {
        let txn = self.db.begin_read().map_err(DiskError::redb)?;
        let table = txn.open_table(LOGS).map_err(DiskError::redb)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(DiskError::redb)? {
            let (_, v) = item.map_err(DiskError::redb)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The decoded last log entry, if any.
    pub(crate) fn last_log<T: DeserializeOwned>(&self) -> Result<Option<T>, DiskError> {
        let txn = self.db.begin_read().map_err(DiskError::redb)?;
        let table = txn.open_table(LOGS).map_err(DiskError::redb)?;
        match table.last().map_err(DiskError::redb)? {
            Some((_, v)) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }
}

/// Sets (`Some`) or clears (`None`) `key` of the `meta` table inside `txn`.
pub(crate) fn put_meta<T: Serialize>(
    txn: &WriteTransaction,
    key: &str,
    value: Option<&T>,
) -> Result<(), DiskError> {
    let mut table = txn.open_table(META).map_err(DiskError::redb)?;
    match value {
        Some(v) => {
            table
                .insert(key, encode(v)?.as_slice())
                .map_err(DiskError::redb)?;
        }
        None => {
            table.remove(key).map_err(DiskError::redb)?;
        }
    }
    Ok(())
}
