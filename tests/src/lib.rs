//! Multi-host test harness: what the end-to-end tests need, on top of the lab of
//! [`mesh_lab`] (hosts are network namespaces on one switch namespace, each running the real
//! `mesh` binary).
//!
//! ```no_run
//! use std::time::Duration;
//! # fn main() -> anyhow::Result<()> {
//! let lab = mesh_tests::cluster(3, 2)?; // node1..3 managers, node4..5 workers, all ready
//! let rows = mesh_tests::nodes(lab.host(1))?;
//! assert_eq!(rows.iter().filter(|r| r.is_manager()).count(), 3);
//! lab.host(2).kill()?;
//! lab.wait_for("node2 to be seen down", Duration::from_secs(20), || {
//!     Ok(mesh_tests::nodes(lab.host(1))?.iter().any(|r| r.hostname == "node2" && !r.is_ready()))
//! })?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - the lab itself, re-exported from [`mesh_lab`]: [`Lab`], [`Host`], [`LabOptions`],
//!   waits with deadlines ([`wait_for`], [`Lab::wait_for`], [`wait`]), [`lab_root`]; and
//!   [`sandbox`], the `mesh sandbox` command of [`mesh_node`].
//! - [`cluster`] / [`cluster_with`]: a lab whose daemons have formed a cluster via the CLI
//!   ([`Lab::form_cluster`]), with the fast timings of [`config::FAST_CONFIG`] unless told
//!   otherwise.
//! - [`nodes`], [`info`]: the CLI's `--format json` output, parsed.
//! - [`ops`]: operations and observations through the CLI (leader, every node's view, writes
//!   expected to succeed or to be refused with one line).
//! - [`in_process`]: clusters of real daemons in this one process, workers on fakes (no
//!   root): the in-process layer of tests.
//! - [`grpc`]: in-process gRPC clients of the daemons (unix socket, 2377 with or without a
//!   client certificate).
//! - [`services`]: networks and services through the CLI, and what each host's kernel shows
//!   of them (VXLAN FDB and neighbors, task load balancers); waits whose failures also dump
//!   the daemons' own namespaces.
//! - [`traffic`]: real traffic from inside a task's namespace: HTTP to `mesh whoami` (one
//!   request, bursts, a loop in the background, a long-lived stream), DNS, ping, TCP.
//! - [`metrics`]: scrapes of a daemon's metrics endpoint from inside its host, parsed.
//! - [`bench`]: what the benchmarks share (knobs, percentiles).
//! - [`config`]: the daemon configs (fast test timings, product defaults).
//! - [`mesh_binary`], [`standin_binary`], [`mesh_bin!`]: the binaries under test.
//! - [`entry`]: the body of the `mesh-e2e` binary.
//!
//! Environment knobs: `MESH_BIN` (binary under test), `MESH_TEST_PATIENCE` (deadline
//! multiplier), `MESH_LAB_DIR` (lab root, default /tmp/mesh-lab), `MESH_LAB_KEEP` (keep lab
//! files after a run, until the next run removes them).

pub mod bench;
pub mod command;
pub mod config;
pub mod entry;
pub mod grpc;
pub mod in_process;
pub mod metrics;
pub mod ops;
pub mod services;
pub mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

pub use config::{
    DEFAULT_CONFIG, FAST_CONFIG, FAST_DRAIN, FAST_ELECTION_TIMEOUT_MAX, FAST_HEARTBEAT,
    FAST_JOIN_TIMEOUT, FAST_NODE_DOWN_GRACE, FAST_WRITE_TIMEOUT,
};
pub use mesh_dataplane::link;
pub use mesh_dataplane::netns::Netns;
pub use mesh_lab::{
    CmdOutput, Host, IntoPoll, Lab, LabOptions, Poll, cleanup_lock, host_ip, lab_root,
    unique_prefix, wait, wait_for,
};
pub use mesh_node::sandbox;

/// The path of the `mesh-e2e` binary, as seen by the integration test expanding it
/// (`CARGO_BIN_EXE_mesh-e2e`), unless `MESH_BIN` is set.
#[macro_export]
macro_rules! mesh_bin {
    () => {
        ::std::env::var_os("MESH_BIN")
            .map(::std::path::PathBuf::from)
            .unwrap_or_else(|| ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_mesh-e2e")))
    };
}

/// The binary under test: `MESH_BIN` if set, else `mesh-e2e` of this workspace's target
/// directory (found next to the running test executable).
pub fn mesh_binary() -> PathBuf {
    binary("MESH_BIN", "mesh-e2e")
}

/// The stand-in of `mesh` used to test the lab itself (`MESH_STANDIN_BIN` overrides).
pub fn standin_binary() -> PathBuf {
    binary("MESH_STANDIN_BIN", "mesh-standin")
}

fn binary(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    // Integration tests run from target/<profile>/deps/; binaries are in target/<profile>/.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// node1..node`managers` are managers.
    pub managers: usize,
    /// The following `workers` nodes are workers.
    pub workers: usize,
    /// The following `spares` hosts run a daemon that joins nothing (for join tests, or a
    /// second cluster).
    pub spares: usize,
    pub binary: PathBuf,
    /// Every daemon's config file (TOML); tests shrink timings here.
    pub daemon_config: String,
    /// How long a daemon gets to answer after it starts.
    pub ready_timeout: Duration,
    /// How long the cluster gets to list every node as ready after the joins.
    pub converge_timeout: Duration,
}

impl ClusterOptions {
    /// `managers` + `workers` nodes running [`mesh_binary`] with [`FAST_CONFIG`].
    pub fn new(managers: usize, workers: usize) -> Self {
        Self {
            managers,
            workers,
            spares: 0,
            binary: mesh_binary(),
            daemon_config: FAST_CONFIG.to_owned(),
            ready_timeout: Duration::from_secs(20),
            converge_timeout: Duration::from_secs(30),
        }
    }
}

/// A lab of `managers + workers` hosts whose daemons formed a cluster, every node listed
/// ready by `mesh node ls` on node1.
pub fn cluster(managers: usize, workers: usize) -> Result<Lab> {
    cluster_with(ClusterOptions::new(managers, workers))
}

/// [`cluster`] with options.
pub fn cluster_with(opts: ClusterOptions) -> Result<Lab> {
    ensure!(opts.managers >= 1, "a cluster needs a manager");
    ensure!(
        opts.binary.exists(),
        "the mesh binary {} does not exist (build it, or set MESH_BIN)",
        opts.binary.display()
    );
    let total = opts.managers + opts.workers;
    let lab = Lab::new(LabOptions {
        hosts: total + opts.spares,
        binary: Some(opts.binary.clone()),
        daemon_config: opts.daemon_config.clone(),
        ..LabOptions::default()
    })?;
    lab.start_all()?;
    lab.wait_all_ready(opts.ready_timeout)?;
    lab.form_cluster(opts.managers, total)?;
    lab.wait_for(
        &format!("{total} ready nodes in `node ls` on node1"),
        opts.converge_timeout,
        || {
            let rows = nodes(lab.host(1))?;
            let ready = rows.iter().filter(|r| r.is_ready()).count();
            Ok(if rows.len() == total && ready == total {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} rows, {ready} ready: {rows:?}", rows.len()))
            })
        },
    )?;
    Ok(lab)
}

/// One row of `mesh node ls --format json`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    /// As printed (`manager`, `NODE_ROLE_MANAGER`, ...); see [`NodeRow::is_manager`].
    pub role: String,
    /// As printed; empty if the CLI prints none. See [`NodeRow::is_ready`].
    pub status: String,
    pub addr: String,
    /// The whole row, for fields this parser does not know.
    pub raw: Value,
}

impl NodeRow {
    /// `leader`, `reachable`, `unreachable`, or empty (not a raft voter).
    pub fn manager_status(&self) -> &str {
        self.raw["manager_status"].as_str().unwrap_or_default()
    }

    /// Whether this row is the raft leader.
    pub fn is_leader(&self) -> bool {
        self.raw["leader"].as_bool().unwrap_or(false)
    }

    /// The role the operator asked for (`manager`/`worker`).
    pub fn desired_role(&self) -> &str {
        self.raw["desired_role"].as_str().unwrap_or_default()
    }

    /// Whether this row is the node that answered.
    pub fn is_self(&self) -> bool {
        self.raw["self"].as_bool().unwrap_or(false)
    }

    /// Ready, strictly: the CLI printed `ready`.
    pub fn is_up(&self) -> bool {
        self.status == "ready"
    }

    /// Down, strictly: the CLI printed `down`.
    pub fn is_down(&self) -> bool {
        self.status == "down"
    }

    pub fn is_manager(&self) -> bool {
        self.role.to_ascii_lowercase().contains("manager")
    }

    /// Ready if the status says so, or if the CLI prints no status.
    pub fn is_ready(&self) -> bool {
        let status = self.status.to_ascii_lowercase();
        status.is_empty() || status == "ready" || status.ends_with("_ready")
    }

    /// Reads a row, tolerating the field spellings the CLI may choose.
    pub fn from_json(raw: &Value) -> NodeRow {
        let text = |keys: &[&str]| -> String {
            keys.iter()
                .filter_map(|k| pointer(raw, k))
                .find_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let mut role = text(&["role", "spec/desired_role"]);
        // A protobuf enum printed as its number: 1 worker, 2 manager.
        role = match role.as_str() {
            "1" => "worker".to_owned(),
            "2" => "manager".to_owned(),
            _ => role,
        };
        NodeRow {
            id: text(&["id", "node_id"]),
            hostname: text(&["hostname", "description/hostname"]),
            role,
            status: text(&["status", "state", "status/state"]),
            addr: text(&["addr", "address", "status/addr"]),
            raw: raw.clone(),
        }
    }
}

fn pointer<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(&format!("/{path}"))
}

/// `mesh node ls --format json` on `host`, parsed (a JSON array of rows, or an object whose
/// `nodes` is one).
pub fn nodes(host: &Host) -> Result<Vec<NodeRow>> {
    let out = host.cli(["node", "ls", "--format", "json"])?.ok_stdout()?;
    parse_nodes(&out)
}

/// Parses the output of `mesh node ls --format json`.
pub fn parse_nodes(json: &str) -> Result<Vec<NodeRow>> {
    let value: Value =
        serde_json::from_str(json).with_context(|| format!("node ls printed {json:?}"))?;
    let rows = match &value {
        Value::Array(rows) => rows,
        Value::Object(o) => o
            .get("nodes")
            .and_then(Value::as_array)
            .with_context(|| format!("node ls printed an object without `nodes`: {json}"))?,
        _ => anyhow::bail!("node ls printed neither an array nor an object: {json}"),
    };
    Ok(rows.iter().map(NodeRow::from_json).collect())
}

/// `mesh info --format json` on `host`, parsed.
pub fn info(host: &Host) -> Result<Value> {
    let out = host.cli(["info", "--format", "json"])?.ok_stdout()?;
    serde_json::from_str(&out).with_context(|| format!("info printed {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_rows_parse_from_arrays_and_objects() {
        let rows = parse_nodes(
            r#"[{"id":"a","hostname":"node1","role":"manager","status":"ready","addr":"10.77.0.11"},
                {"id":"b","hostname":"node2","role":1,"status":"down"}]"#,
        )
        .unwrap();
        assert_eq!((rows[0].is_manager(), rows[0].is_ready()), (true, true));
        assert_eq!(
            (rows[1].role.as_str(), rows[1].is_ready()),
            ("worker", false)
        );
        let rows =
            parse_nodes(r#"{"nodes":[{"id":"c","hostname":"node3","role":"NODE_ROLE_MANAGER"}]}"#)
                .unwrap();
        assert!(rows[0].is_manager() && rows[0].is_ready());
        assert!(parse_nodes("3").is_err());
        let not_ready = parse_nodes(r#"[{"hostname":"n","status":"not ready"}]"#).unwrap();
        assert!(!not_ready[0].is_ready());
    }
}
