//! Daemon configurations for the lab: the fast timings the tests use by default, and how the
//! timings the tests depend on relate to each other.
//!
//! Defaults of the product (raft heartbeat 150 ms, elections after 0.75-1.5 s, gossip probe
//! every 500 ms, suspicion 1 s) suit real clusters; tests shrink them so that a failover or a
//! death is seen in about a second, leaving room for assertions with honest bounds.

use std::time::Duration;

/// Raft leader heartbeat in [`FAST_CONFIG`].
pub const FAST_HEARTBEAT: Duration = Duration::from_millis(100);
/// Upper end of the election timeout in [`FAST_CONFIG`].
pub const FAST_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(800);
/// A write not committed within this time fails with the no-quorum error ([`FAST_CONFIG`]).
pub const FAST_WRITE_TIMEOUT: Duration = Duration::from_millis(3000);
/// `mesh join` gives up after this long ([`FAST_CONFIG`]).
pub const FAST_JOIN_TIMEOUT: Duration = Duration::from_millis(5000);
/// A node down this long has its replicated tasks replaced elsewhere ([`FAST_CONFIG`]).
pub const FAST_NODE_DOWN_GRACE: Duration = Duration::from_millis(3000);
/// Between withdrawing a task from every load balancer and stopping it ([`FAST_CONFIG`]; the
/// product's default).
pub const FAST_DRAIN: Duration = Duration::from_millis(1000);

/// The daemon config every test cluster gets unless it asks otherwise: raft heartbeat 100 ms,
/// elections after 400-800 ms, writes time out after 3 s; SWIM probes every 300 ms (ack
/// within 150 ms) and a suspect is down after 900 ms; the agent retries its session quickly
/// and a join gives up after 5 s; a task is stopped 1 s after it was withdrawn from the load
/// balancers, and the tasks of a node down for 3 s are replaced elsewhere. Keep these in step with the `FAST_*` constants.
pub const FAST_CONFIG: &str = r#"# mesh-tests: fast timings (mesh_tests::FAST_CONFIG)
[raft]
heartbeat_ms = 100
election_timeout_min_ms = 400
election_timeout_max_ms = 800
write_timeout_ms = 3000

[gossip]
probe_period_ms = 300
probe_rtt_ms = 150
suspect_to_down_ms = 900
rejoin_interval_ms = 1000

[agent]
session_retry_ms = 100
session_retry_max_ms = 1000
join_timeout_ms = 5000
drain_ms = 1000

[orchestrator]
node_down_grace_ms = 3000
"#;

/// The product's default timings (an empty config file): what the benchmark measures.
pub const DEFAULT_CONFIG: &str = "";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_config_parses_as_a_daemon_config_with_the_documented_values() {
        let cfg: mesh_node::config::DaemonConfig = toml::from_str(FAST_CONFIG).unwrap();
        assert_eq!(cfg.raft.heartbeat(), FAST_HEARTBEAT);
        assert_eq!(
            Duration::from_millis(cfg.raft.election_timeout_max_ms),
            FAST_ELECTION_TIMEOUT_MAX
        );
        assert_eq!(cfg.raft.write_timeout(), FAST_WRITE_TIMEOUT);
        assert_eq!(cfg.agent.join_timeout(), FAST_JOIN_TIMEOUT);
        assert_eq!(Duration::from_millis(cfg.agent.drain_ms), FAST_DRAIN);
        assert_eq!(
            Duration::from_millis(cfg.orchestrator.node_down_grace_ms),
            FAST_NODE_DOWN_GRACE
        );
        cfg.gossip.validate().unwrap();
    }
}
