//! Sandbox mode: a demo cluster on one machine for `mesh sandbox up|down|status|exec`.
//!
//! [`up`] builds a detached lab with a well-known prefix (`msb`) and directory
//! (`/var/lib/mesh-sandbox`), starts one daemon per node in its own session (so they outlive
//! the command), runs `mesh init` on node1 and `mesh join` on the others, and records the
//! sandbox in `sandbox.json`. [`down`] finds the processes by network namespace, so it also
//! cleans up a sandbox whose `up` failed half-way or whose state file is gone.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mesh_dataplane::netns::Netns;
use mesh_lab::{Host, Lab, LabOptions, pid_alive, remove_lab};
use serde::{Deserialize, Serialize};

/// Where the sandbox keeps its files.
pub const DEFAULT_DIR: &str = "/var/lib/mesh-sandbox";
/// Prefix of the sandbox's namespaces (`msb-node1`, `msb-sw`).
pub const DEFAULT_PREFIX: &str = "msb";
/// A command that asks the demo service by name, from one of its tasks:
/// DNS at 127.0.0.11 answers the VIP, the kernel balances over every task.
fn demo_command(node1: &Host) -> Result<String> {
    let ps = node1
        .cli(["service", "ps", DEMO_SERVICE, "--format", "json"])?
        .ok_stdout()?;
    let tasks: Vec<serde_json::Value> =
        serde_json::from_str(&ps).context("service ps --format json")?;
    let from = tasks.first().context("the demo service has no task")?;
    let field = |k: &str| from[k].as_str().unwrap_or_default().to_owned();
    Ok(format!(
        "mesh sandbox exec {} -- mesh exec {} -- curl -s http://{DEMO_SERVICE}/",
        field("node"),
        field("name")
    ))
}

/// The demo's overlay network and service.
pub const DEMO_NETWORK: &str = "demo";
pub const DEMO_SERVICE: &str = "whoami";
/// The demo service's published port (routing mesh: every node answers on 8080).
pub const DEMO_PUBLISH: &str = "8080:80";
/// The sandbox's record of itself, in its directory.
const STATE_FILE: &str = "sandbox.json";

/// Where a sandbox lives: its directory and the prefix of its namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLocation {
    pub dir: PathBuf,
    pub prefix: String,
}

impl Default for SandboxLocation {
    fn default() -> Self {
        Self {
            dir: DEFAULT_DIR.into(),
            prefix: DEFAULT_PREFIX.into(),
        }
    }
}

/// What [`up`] builds.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Number of managers (the first nodes); `None` is `min(3, nodes)`.
    pub managers: Option<usize>,
    /// The `mesh` binary the daemons run.
    pub binary: PathBuf,
    /// Contents of every daemon's config file (TOML).
    pub daemon_config: String,
    pub location: SandboxLocation,
    /// How long each daemon gets to answer after it starts.
    pub ready_timeout: Duration,
    /// Also create the demo overlay network and `whoami` service.
    pub demo_service: bool,
}

impl SandboxOptions {
    /// `nodes` nodes running `binary`, with the defaults for the rest.
    pub fn new(nodes: usize, binary: impl Into<PathBuf>) -> Self {
        Self {
            nodes,
            managers: None,
            binary: binary.into(),
            daemon_config: String::new(),
            location: SandboxLocation::default(),
            ready_timeout: Duration::from_secs(30),
            demo_service: true,
        }
    }
}

/// A node as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNode {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// `manager` or `worker`.
    pub role: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    prefix: String,
    binary: PathBuf,
    /// Holds a `mesh` link to the binary; put first on `PATH` by [`exec`].
    bin_dir: PathBuf,
    nodes: Vec<SandboxNode>,
}

/// A node and whether its daemon runs.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node: SandboxNode,
    /// The daemon's pid, if it is alive and inside the node's namespace.
    pub pid: Option<u32>,
}

/// Builds the sandbox and forms the cluster, printing progress and usage to `out`. On
/// failure the sandbox is left in place for inspection (`down` removes it).
pub fn up(opts: &SandboxOptions, out: &mut dyn Write) -> Result<()> {
    let loc = &opts.location;
    ensure!(opts.nodes >= 1, "a sandbox needs at least 1 node");
    let managers = opts.managers.unwrap_or(opts.nodes.min(3));
    ensure!(
        (1..=opts.nodes).contains(&managers),
        "managers must be 1..={} (the number of nodes), not {managers}",
        opts.nodes
    );
    if loc.dir.join(STATE_FILE).exists() {
        bail!(
            "a sandbox is already up in {} (run `mesh sandbox down` first)",
            loc.dir.display()
        );
    }
    let lab = Lab::new(LabOptions {
        hosts: opts.nodes,
        prefix: Some(loc.prefix.clone()),
        dir: Some(loc.dir.clone()),
        binary: Some(opts.binary.clone()),
        daemon_config: opts.daemon_config.clone(),
        detached: true,
        ..LabOptions::default()
    })
    .context("create the sandbox's hosts (`mesh sandbox down` removes leftovers)")?;
    let state = State {
        prefix: loc.prefix.clone(),
        binary: opts
            .binary
            .canonicalize()
            .unwrap_or_else(|_| opts.binary.clone()),
        bin_dir: lab.bin_dir(),
        nodes: lab
            .hosts()
            .iter()
            .map(|h| SandboxNode {
                name: h.name().to_owned(),
                netns: h.netns().name().to_owned(),
                ip: h.ip(),
                role: if h.number() <= managers {
                    "manager"
                } else {
                    "worker"
                }
                .to_owned(),
                socket: h.socket_path(),
                log: h.log_path(),
                pid_file: h.pid_path(),
            })
            .collect(),
    };
    write_state(&loc.dir, &state)?;

    let hint = "the sandbox is left up for inspection; `mesh sandbox down` removes it";
    writeln!(
        out,
        "starting {} daemons in {}",
        opts.nodes,
        loc.dir.display()
    )?;
    lab.start_all().context(hint)?;
    lab.wait_all_ready(opts.ready_timeout).context(hint)?;
    writeln!(
        out,
        "forming the cluster: {managers} manager(s), {} worker(s)",
        opts.nodes - managers
    )?;
    lab.form_cluster(managers, opts.nodes).context(hint)?;
    let mut demo_hint = None;
    if opts.demo_service {
        writeln!(
            out,
            "starting the demo: network {DEMO_NETWORK}, service {DEMO_SERVICE} with {} replicas",
            opts.nodes
        )?;
        let node1 = lab.host(1);
        node1
            .cli(["network", "create", DEMO_NETWORK])?
            .ok_stdout()
            .context(hint)?;
        let replicas = opts.nodes.to_string();
        let create = [
            "service",
            "create",
            "--name",
            DEMO_SERVICE,
            "--replicas",
            &replicas,
            "--network",
            DEMO_NETWORK,
            "--publish",
            DEMO_PUBLISH,
            "--",
            "mesh",
            "whoami",
            "--port",
            "80",
        ];
        node1.cli(create)?.ok_stdout().context(hint)?;
        let ps = node1
            .cli(["service", "ps", DEMO_SERVICE])?
            .ok_stdout()
            .context(hint)?;
        writeln!(out, "{ps}")?;
        demo_hint = demo_command(node1).ok();
    }

    writeln!(out)?;
    for node in &state.nodes {
        writeln!(
            out,
            "  {:<8} {:<12} {:<8} log {}",
            node.name,
            node.ip,
            node.role,
            node.log.display()
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Run a command on a node:  mesh sandbox exec node1 -- mesh node ls"
    )?;
    writeln!(
        out,
        "A shell on a node:        mesh sandbox exec node2 -- sh"
    )?;
    if let Some(cmd) = demo_hint {
        writeln!(
            out,
            "Ask the service by name (VIP, balanced over its tasks): {cmd}"
        )?;
        writeln!(
            out,
            "Its tasks' output, from every node: mesh sandbox exec node1 -- mesh service logs {DEMO_SERVICE}"
        )?;
        if let (Some(first), Some(last)) = (state.nodes.first(), state.nodes.last()) {
            writeln!(
                out,
                "Its published port, on any node (routing mesh): mesh sandbox exec {} -- curl -s http://{}:8080/",
                first.name, last.ip
            )?;
        }
    }
    writeln!(out, "Nodes and daemons:        mesh sandbox status")?;
    writeln!(out, "Remove everything:        mesh sandbox down")?;
    Ok(())
}

/// Kills every process in the sandbox's namespaces, removes them and the directory.
/// Nothing to remove is success.
pub fn down(loc: &SandboxLocation) -> Result<()> {
    let prefix = read_state(&loc.dir)
        .map(|s| s.prefix)
        .unwrap_or_else(|_| loc.prefix.clone());
    remove_lab(&prefix, Some(&loc.dir))
}

/// The sandbox's nodes and their daemons.
pub fn status(loc: &SandboxLocation) -> Result<Vec<NodeStatus>> {
    let state = read_state(&loc.dir)?;
    Ok(state
        .nodes
        .into_iter()
        .map(|node| {
            let pid = running_pid(&node);
            NodeStatus { node, pid }
        })
        .collect())
}

/// Runs `argv` inside node `node` (a name, `node2`, or a number, `2`) with `MESH_HOST` set to
/// its daemon and the sandbox's `mesh` first on `PATH`; stdio is inherited.
pub fn exec(loc: &SandboxLocation, node: &str, argv: &[OsString]) -> Result<ExitStatus> {
    let state = read_state(&loc.dir)?;
    let Some((program, args)) = argv.split_first() else {
        bail!("no command given to run on {node}");
    };
    let wanted = if node.bytes().all(|b| b.is_ascii_digit()) {
        format!("node{node}")
    } else {
        node.to_owned()
    };
    let Some(found) = state.nodes.iter().find(|n| n.name == wanted) else {
        let names: Vec<_> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "no node {node:?} in the sandbox (nodes: {})",
            names.join(", ")
        );
    };
    let ns = Netns::open(&found.netns)
        .with_context(|| format!("node {} is gone: run `mesh sandbox down`", found.name))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(state.bin_dir.clone()).chain(std::env::split_paths(&path)),
    )?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("MESH_HOST", format!("unix://{}", found.socket.display()))
        .env("PATH", path);
    ns.enter_on_exec(&mut cmd)?;
    cmd.status()
        .with_context(|| format!("run {} on {}", program.to_string_lossy(), found.name))
}

/// The pid in the node's pid file, if that process is alive and inside the node's namespace.
fn running_pid(node: &SandboxNode) -> Option<u32> {
    let pid: u32 = fs::read_to_string(&node.pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let ns = Netns::open(&node.netns).ok()?;
    let theirs = Netns::open_path("daemon", Path::new(&format!("/proc/{pid}/ns/net"))).ok()?;
    (pid_alive(pid) && ns.id().ok()? == theirs.id().ok()?).then_some(pid)
}

fn write_state(dir: &Path, state: &State) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let json = serde_json::to_string_pretty(state)?;
    fs::write(&path, json).with_context(|| format!("write {}", path.display()))
}

fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE_FILE);
    let json = fs::read_to_string(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            anyhow::anyhow!("no sandbox in {} (run `mesh sandbox up`)", dir.display())
        }
        _ => anyhow::Error::new(e).context(format!("read {}", path.display())),
    })?;
    serde_json::from_str(&json).with_context(|| format!("parse {}", path.display()))
}
