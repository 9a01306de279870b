//! Timing knobs of the manager components. Defaults suit real clusters;
//! tests shrink them through the daemon's config file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Raft timing and log compaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout range. With openraft 0.9 a follower that stops
    /// hearing from its leader waits out the leader's lease (the range's
    /// maximum) and then a random timeout in this range before it stands
    /// for election, and twice the maximum more after a lost round: a
    /// failover takes between about `min + max` and `3 x max` (plus a commit).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// Log entries kept behind the last snapshot (lets slow followers catch up without one).
    pub keep_logs: u64,
    /// A write that is not committed within this time fails (lost quorum).
    pub write_timeout_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            snapshot_logs: 5000,
            keep_logs: 1000,
            write_timeout_ms: 5000,
        }
    }
}

impl RaftConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

/// Certificate lifetime and renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    /// Validity of a node certificate issued at init when none is given.
    pub cert_validity_secs: u64,
    /// How often a node checks whether its certificate needs renewing.
    pub renew_check_ms: u64,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            cert_validity_secs: 90 * 24 * 3600,
            renew_check_ms: 60_000,
        }
    }
}

/// The orchestrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// A node down this long (by the leader's SWIM view) has its replicated
    /// tasks replaced elsewhere. Shorter blips move nothing.
    pub node_down_grace_ms: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            node_down_grace_ms: 30_000,
        }
    }
}

/// Bounds on what the cluster accepts, so that no request, however large, can take it down:
/// a bigger request is refused with one line naming the limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most replicas one service may have.
    pub max_replicas: u64,
    /// Most services the cluster holds.
    pub max_services: u64,
    /// Most networks the cluster holds (the ingress network included).
    pub max_networks: u64,
    /// Most tasks all services together may ask for (replicas, and one per node for each
    /// global service).
    pub max_tasks: u64,
    /// Largest service spec (encoded: command, env, labels, ...), in bytes. Every task
    /// carries a copy, so this bounds a task and a node's assignments.
    pub max_spec_bytes: u64,
    /// Largest write to the raft store (one encoded transaction), in bytes: as etcd's
    /// request limit, it keeps every raft entry small enough to replicate.
    pub max_write_bytes: u64,
    /// Most objects a manager component writes at once: larger changes (a service of many
    /// replicas, removing one) are made in batches.
    pub batch_objects: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_replicas: 1000,
            max_services: 1000,
            max_networks: 256,
            max_tasks: 10_000,
            max_spec_bytes: 16_384,
            max_write_bytes: 1_572_864,
            batch_objects: 128,
        }
    }
}

/// Everything a manager takes from config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    pub raft: RaftConfig,
    pub ca: CaConfig,
    pub orchestrator: OrchestratorConfig,
    pub limits: LimitsConfig,
}
