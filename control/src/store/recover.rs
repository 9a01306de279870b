//! Recovery from a lost quorum (`mesh daemon --force-new-cluster`): before raft starts, the
//! surviving manager appends to its own log a membership in which it is the only voter. raft
//! takes the last membership in the log as the effective one, so the node elects itself with
//! what it holds (every entry it has, committed or not, becomes committed under its
//! leadership) and the cluster goes on as a single-manager cluster. The other managers'
//! logs no longer count: they rejoin with a manager token after their state is cleared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::{BasicNode, EntryPayload, Membership};

use super::disk::{Disk, DiskError, KEY_LAST_PURGED, KEY_SNAPSHOT_META, LOGS};
use super::types::{Entry, LogId, SnapshotMeta, decode, encode};

/// What the forced membership was written after.
#[derive(Debug)]
pub(crate) enum Recovered {
    /// The new membership entry's log id.
    At(LogId),
    /// The store holds no cluster state at all: nothing to recover.
    Empty,
}

/// Appends the membership `{raft_id: addr}` after the last log id the store knows (its log,
/// else what was purged, else its snapshot).
pub(crate) async fn force_single_voter(
    disk: &Arc<Disk>,
    raft_id: u64,
    addr: &str,
) -> Result<Recovered, DiskError> {
    let last = match disk.last_log::<Entry>()? {
        Some(e) => Some(e.log_id),
        None => match disk.read_meta::<LogId>(KEY_LAST_PURGED)? {
            Some(id) => Some(id),
            None => match disk.read_snapshot_raw(KEY_SNAPSHOT_META)? {
                Some(raw) => decode::<SnapshotMeta>(&raw)?.last_log_id,
                None => None,
            },
        },
    };
    let Some(last) = last else {
        return Ok(Recovered::Empty);
    };
    let membership = Membership::new(
        vec![BTreeSet::from([raft_id])],
        BTreeMap::from([(raft_id, BasicNode::new(addr))]),
    );
    let entry = Entry {
        log_id: LogId::new(last.leader_id, last.index + 1),
        payload: EntryPayload::Membership(membership),
    };
    let log_id = entry.log_id;
    let bytes = encode(&entry)?;
    disk.write(move |txn| {
        let mut table = txn.open_table(LOGS).map_err(DiskError::redb)?;
        table
            .insert(log_id.index, bytes.as_slice())
            .map_err(DiskError::redb)?;
        Ok(())
    })
    .await?;
    Ok(Recovered::At(log_id))
}
