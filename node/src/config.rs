//! The daemon's configuration file (TOML). Every timing knob of the manager
//! components and the agent is here, so tests can run a fast cluster.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use mesh_control::config::{CaConfig, LimitsConfig, ManagerConfig, OrchestratorConfig, RaftConfig};
use mesh_gossip::GossipConfig;
use serde::{Deserialize, Serialize};

/// The agent: sessions with the managers and joining.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// First retry delay after a session with the managers breaks; doubles
    /// up to `session_retry_max_ms`.
    pub session_retry_ms: u64,
    pub session_retry_max_ms: u64,
    /// How long `mesh join` may take before it gives up.
    pub join_timeout_ms: u64,
    /// UDP/TCP port of the gossip layer.
    pub gossip_port: u16,
    /// Renew the node certificate once this share of its lifetime passed.
    pub renew_at_fraction: f64,
    /// How often the worker reconciles tasks and the overlay with nothing
    /// else prompting it (repairs drift, retries failures).
    pub reconcile_ms: u64,
    /// Between withdrawing a task from every load balancer and DNS and
    /// stopping it (scale-down, update, removal).
    pub drain_ms: u64,
    /// Load-balancing backend: "auto" (IPVS when the kernel has it,
    /// nftables otherwise), "ipvs" or "nftables".
    pub lb_backend: String,
    /// Longest wait between restarts of a task that keeps failing quickly: the restart
    /// delay doubles with each run shorter than 10 s, up to this.
    pub restart_backoff_max_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            session_retry_ms: 200,
            session_retry_max_ms: 5000,
            join_timeout_ms: 30_000,
            gossip_port: 7946,
            renew_at_fraction: 0.66,
            reconcile_ms: 5000,
            drain_ms: 1000,
            lb_backend: "auto".into(),
            restart_backoff_max_ms: 60_000,
        }
    }
}

impl AgentConfig {
    pub fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms)
    }
}

/// The daemon's metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` where `GET /metrics` answers in the Prometheus text format, as dockerd's
    /// `metrics-addr` (e.g. "127.0.0.1:9323"); empty: no endpoint. `mesh daemon
    /// --metrics-addr` overrides it.
    pub addr: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub raft: RaftConfig,
    pub ca: CaConfig,
    pub orchestrator: OrchestratorConfig,
    pub gossip: GossipConfig,
    pub agent: AgentConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
}

impl DaemonConfig {
    pub fn load(path: &Path) -> anyhow::Result<DaemonConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn manager(&self) -> ManagerConfig {
        ManagerConfig {
            raft: self.raft.clone(),
            ca: self.ca.clone(),
            orchestrator: self.orchestrator.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The config file the Debian package installs as `/etc/mesh/mesh.toml`: every key with its
/// default value, commented out, under its section. As shipped it changes nothing; a key
/// uncommented overrides that default.
pub fn commented_default() -> String {
    let text = toml::to_string(&DaemonConfig::default()).expect("the defaults serialize");
    let mut out = String::from(
        "# mesh daemon configuration (`mesh daemon --config /etc/mesh/mesh.toml`).\n\
         # Every key is shown with its default value, commented out: uncomment a key to\n\
         # change it, then `systemctl restart mesh`. Unknown keys are refused at start.\n",
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('[') {
            out.push('\n');
        } else {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_changes_nothing_and_uncommented_gives_every_default() {
        let shipped = commented_default();
        let as_is: DaemonConfig = toml::from_str(&shipped).unwrap();
        assert_eq!(as_is, DaemonConfig::default());
        let keys = shipped
            .lines()
            .filter(|l| l.starts_with("# ") && l.contains(" = "))
            .count();
        assert!(keys >= 20, "only {keys} keys:\n{shipped}");
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv) if kv.contains(" = ") => kv,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: DaemonConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed, DaemonConfig::default());
        assert!(
            shipped.contains("\n[metrics]\n# addr = \"\"\n"),
            "{shipped}"
        );
    }
}
