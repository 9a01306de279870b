//! openraft glue: its configuration from ours, who leads as its metrics say, and its errors
//! as [`StoreError`]s; the status types the store reports.

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, RaftMetrics, ServerState, SnapshotPolicy};

use super::StoreError;
use crate::config::RaftConfig;

/// Who leads, as far as this manager knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    pub raft_id: u64,
    /// `host:port` of the leader's raft (and control) gRPC endpoint.
    pub addr: String,
}

/// A snapshot of this manager's raft state, for status displays and waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub raft_id: u64,
    pub state: ServerState,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// Last log index included in the latest snapshot.
    pub snapshot: Option<u64>,
    /// Last purged log index.
    pub purged: Option<u64>,
    pub leader: Option<LeaderInfo>,
    /// `(raft id, addr)` of every voter (both halves of a joint config).
    pub voters: Vec<(u64, String)>,
    pub learners: Vec<(u64, String)>,
}

pub(super) fn openraft_config(c: &RaftConfig) -> Result<openraft::Config, StoreError> {
    let config = openraft::Config {
        cluster_name: "mesh".to_string(),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_timeout_min_ms,
        election_timeout_max: c.election_timeout_max_ms,
        // Sending one snapshot chunk may take as long as a write may.
        install_snapshot_timeout: c.write_timeout_ms,
        snapshot_policy: if c.snapshot_logs == 0 {
            SnapshotPolicy::Never
        } else {
            SnapshotPolicy::LogsSinceLast(c.snapshot_logs)
        },
        max_in_snapshot_log_to_keep: c.keep_logs,
        // Purging is driven by snapshots (openraft purges only what a
        // snapshot covers), so each snapshot purges down to `keep_logs`.
        purge_batch_size: 1,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StoreError::Raft(format!("invalid raft config: {e}")))
}

/// Leader as seen in `m`. A node that still holds a vote for itself but
/// no longer leads (removed from the voters) is not reported as leader.
pub(super) fn leader_of(m: &RaftMetrics<u64, BasicNode>) -> Option<LeaderInfo> {
    let id = m.current_leader?;
    if id == m.id && m.state != ServerState::Leader {
        return None;
    }
    let node = m.membership_config.membership().get_node(&id)?;
    Some(LeaderInfo {
        raft_id: id,
        addr: node.addr.clone(),
    })
}

pub(super) fn fatal(e: Fatal<u64>) -> StoreError {
    match e {
        Fatal::Stopped => StoreError::Shutdown,
        Fatal::StorageError(e) => StoreError::storage("raft core", e),
        Fatal::Panicked => StoreError::Raft("raft core panicked".to_string()),
    }
}

pub(super) fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader: f
                .leader_id
                .zip(f.leader_node)
                .map(|(raft_id, n)| LeaderInfo {
                    raft_id,
                    addr: n.addr,
                }),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            StoreError::Raft(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(f) => fatal(f),
    }
}
