//! The `mesh` command line. Every command but `daemon` and `sandbox` is a
//! gRPC call to the local daemon, which forwards to the leader when needed.
//! Failures print one line on stderr and exit non-zero.

pub mod client;
mod doctor;
mod filter;
mod format;
mod logs;
mod network;
mod node;
mod output;
mod progress;
mod service;
mod service_flags;
mod service_pretty;
mod service_view;

/// The parsers of free-text service flags, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub use service_flags::{parse_network, parse_publish, port_key};

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_proto::control_client::ControlClient;
use mesh_proto::local_client::LocalClient;
use mesh_proto::{
    GetJoinTokenRequest, InfoRequest, InitRequest, JoinRequest, LeaveRequest, NodeRole,
    RotateGossipKeyRequest, VersionRequest,
};
use tonic::transport::Channel;

pub use client::DEFAULT_HOST;
use format::{Format, FormatArgs};

use crate::version::BuildInfo;

#[derive(Parser, Debug)]
#[command(
    name = "mesh",
    version,
    about = "A cluster overlay mesh: Swarm-style overlay networks, service VIPs and a routing mesh"
)]
pub struct Cli {
    /// Daemon to talk to.
    #[arg(long, global = true, env = "MESH_HOST", default_value = DEFAULT_HOST)]
    pub host: String,
    /// Log filter (tracing env-filter syntax); default `info` for the daemon, `warn` otherwise.
    #[arg(long, global = true, env = "MESH_LOG")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node agent (one per host).
    Daemon(DaemonArgs),
    /// Create a new cluster with this node as its first manager.
    Init(InitArgs),
    /// Join a cluster through one of its managers.
    Join(JoinArgs),
    /// Print or rotate the join token for workers or managers.
    JoinToken(JoinTokenArgs),
    /// Leave the cluster.
    Leave(LeaveArgs),
    /// Show this node's cluster membership.
    Info(FormatArgs),
    /// Print the version of this `mesh` binary and of the daemon it talks to.
    Version(VersionArgs),
    /// Check this host for what mesh needs (kernel features, ports, sysctls, firewall, MTU,
    /// subnets, certificate): a line per check, a fix under each warning or problem; exit
    /// status 1 when a problem was found.
    Doctor(doctor::DoctorArgs),
    /// Manage nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Cluster-wide operations.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a command inside a task's namespaces (on the node that runs it):
    /// `mesh exec web.1 -- ip addr`.
    Exec(crate::runtime::ExecArgs),
    /// A small server answering with its task, node and addresses and the
    /// client's address (HTTP and UDP): the demo and test workload.
    Whoami(crate::whoami::WhoamiArgs),
    /// A demo cluster on this machine: each node a network namespace.
    #[command(subcommand)]
    Sandbox(crate::sandbox::cli::SandboxCommand),
    /// The supervisor of one task (started by the agent).
    #[command(hide = true)]
    TaskShim(crate::runtime::TaskShimArgs),
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Where the node keeps its identity, certificates and (managers) the raft store.
    #[arg(long, default_value = "/var/lib/mesh")]
    pub state_dir: PathBuf,
    /// Unix socket of the local API.
    #[arg(long, default_value = "/run/mesh/mesh.sock")]
    pub socket: PathBuf,
    /// TOML config file with timing knobs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name this node reports (default: the host name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Prefix of the network namespaces the daemon creates (default
    /// mesh-<node id>-); give each daemon its own when several share a machine.
    #[arg(long)]
    pub netns_prefix: Option<String>,
    /// Load-balancing backend: auto (IPVS if the kernel has it, else
    /// nftables), ipvs or nftables. Overrides the config file.
    #[arg(long)]
    pub lb_backend: Option<String>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (like dockerd's --metrics-addr,
    /// e.g. 127.0.0.1:9323); off by default. Overrides `[metrics] addr` of the config
    /// file. Families: mesh_raft_* (term, commit and applied index, is_leader, leader
    /// changes, write apply latency), mesh_gossip_* (members by state, packets,
    /// authentication failures), mesh_worker_reconcile_*, mesh_lb_backends{service},
    /// mesh_overlay_fdb_entries, mesh_conntrack_flushes_total, mesh_tasks{state},
    /// mesh_dns_* (queries by result, latency), mesh_api_request_duration_seconds{method}.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<String>,
    /// Recover a cluster that lost its quorum of managers (like `docker swarm init
    /// --force-new-cluster`): this manager keeps the cluster's state and becomes its only
    /// manager; the other managers are demoted and rejoin with a manager token once their
    /// state is cleared. Only for a node whose state dir holds a manager's store.
    #[arg(long)]
    pub force_new_cluster: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Address other nodes reach this node on (an IP of this host).
    #[arg(long)]
    pub advertise_addr: String,
    /// Where the control port listens.
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: String,
    /// Pool overlay subnets are taken from when none is given (repeatable).
    #[arg(long)]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of the subnets taken from the pool.
    #[arg(long, default_value_t = 24)]
    pub default_addr_pool_mask_length: u32,
    /// UDP port of the VXLAN data path.
    #[arg(long, default_value_t = 4789)]
    pub data_path_port: u32,
    /// Validity of node certificates (e.g. 90d, 2160h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cert_expiry: Option<Duration>,
    /// Subnet of the routing-mesh network published ports go through [default: 10.255.0.0/16,
    /// or the next free 10.N.0.0/16 below it when this host's routes or resolvers use it].
    #[arg(long, default_value = "")]
    pub ingress_subnet: String,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Join token from `mesh join-token worker|manager` on a manager.
    #[arg(long)]
    pub token: String,
    /// Address other nodes reach this node on (default: the one that routes to the manager).
    #[arg(long, default_value = "")]
    pub advertise_addr: String,
    /// Where the control port listens if this node is or becomes a manager.
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: String,
    /// A manager, as IP[:PORT] (port 2377 by default).
    pub manager: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Worker,
    Manager,
}

impl From<Role> for NodeRole {
    fn from(r: Role) -> NodeRole {
        match r {
            Role::Worker => NodeRole::Worker,
            Role::Manager => NodeRole::Manager,
        }
    }
}

#[derive(Args, Debug)]
pub struct JoinTokenArgs {
    /// Whose token: worker or manager.
    pub role: Role,
    /// Print the token only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Make a new token; the old one stops working.
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// Leave even if this node is a manager or the managers cannot be reached.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Output format: `table` (lines for people), `json`, or a Go template over the JSON
    /// document (`'{{.Client.Version}}'`, `'{{.Server.Version}}'`).
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Replace the key that encrypts gossip; the previous key stays valid
    /// until the next rotation so no node is cut off meanwhile.
    RotateGossipKey,
}

/// Entry point of the `mesh` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // openraft and hickory log every election step and query at info.
    let default_level = if matches!(cli.command, Command::Daemon(_) | Command::TaskShim(_)) {
        "info,openraft=warn,hickory_server=warn,hickory_proto=warn"
    } else {
        "warn"
    };
    init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// An error as one line: a gRPC status shows its message, other errors
/// their chain of causes.
fn one_line(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        let msg = status.message();
        return if msg.is_empty() {
            format!("{:?}", status.code())
        } else {
            msg.replace('\n', " ")
        };
    }
    format!("{e:#}").replace('\n', " ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Command::Daemon(args) => return run_daemon(args).map(|()| ExitCode::SUCCESS),
        Command::Sandbox(cmd) => return crate::sandbox::cli::run(cmd),
        // The shim forks the task from this thread: no runtime must exist yet.
        Command::TaskShim(args) => return Ok(crate::runtime::shim::run(args)),
        Command::Whoami(args) => return Ok(crate::whoami::run(args)),
        Command::Exec(args) => return exec(&cli.host, args),
        Command::Doctor(args) => return doctor::run(&cli.host, args),
        Command::Version(args) => return version(&cli.host, &args.format),
        other => other,
    };
    check_format(&command)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let channel = client::connect(&cli.host).await?;
        run_client(channel, command).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses a bad `--format` before the daemon is asked anything (the commands read it
/// again when they print).
fn check_format(command: &Command) -> anyhow::Result<()> {
    use network::NetworkCommand as Net;
    use node::NodeCommand as Node;
    use service::ServiceCommand as Svc;
    let (text, kind) = match command {
        Command::Node(Node::Ls(a)) => (&a.format.format, Some(&output::NODE_ROWS)),
        Command::Node(Node::Inspect(a)) => (&a.format.format, None),
        Command::Network(Net::Ls(a)) => (&a.format.format, Some(&network::NETWORK_ROWS)),
        Command::Network(Net::Inspect(a)) => (&a.format.format, None),
        Command::Service(Svc::Ls(a)) => (&a.format.format, Some(&service_view::SERVICE_ROWS)),
        Command::Service(Svc::Ps(service::PsArgs { list, .. }))
        | Command::Node(Node::Ps(node::NodePsArgs { list, .. })) => {
            filter::TaskFilter::parse(&list.filters)?;
            (&list.format.format, Some(&service_view::TASK_ROWS))
        }
        Command::Service(Svc::Inspect(a)) => (&a.format.format, None),
        Command::Info(a) if a.format.trim() == "table" => return Ok(()),
        Command::Info(a) => (&a.format, None),
        _ => return Ok(()),
    };
    Format::parse(text, kind).map(drop)
}

/// How long `mesh version` waits for the daemon's answer.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// `mesh version`: this binary's version, and the daemon's. Without a daemon to ask, the
/// client's part is printed and the error follows (as `docker version` does).
fn version(host: &str, format: &str) -> anyhow::Result<ExitCode> {
    let format = if format.trim() == "table" {
        Format::Table
    } else {
        Format::parse(format, None)?
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let server = rt.block_on(async {
        let channel = client::connect(host).await?;
        let mut local = LocalClient::new(channel);
        let ask = local.version(VersionRequest {});
        let resp = tokio::time::timeout(VERSION_TIMEOUT, ask)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the mesh daemon did not tell its version within {VERSION_TIMEOUT:?}"
                )
            })?
            .map_err(|s| {
                anyhow::anyhow!("cannot ask the mesh daemon its version: {}", s.message())
            })?;
        Ok::<_, anyhow::Error>(BuildInfo::from_daemon(&resp.into_inner()))
    });
    let client = BuildInfo::this_binary();
    let mut out = std::io::stdout().lock();
    output::print_version(&mut out, &format, &client, server.as_ref().ok())?;
    out.flush()?;
    server.map(|_| ExitCode::SUCCESS)
}

/// Asks the daemon for the task's pid, then becomes the command inside the
/// task's namespaces (no runtime left running around the exec).
fn exec(host: &str, args: crate::runtime::ExecArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let pid = rt.block_on(async {
        let channel = client::connect(host).await?;
        let request = mesh_proto::TaskExecRequest {
            task: args.task.clone(),
        };
        let resp = LocalClient::new(channel).task_exec(request).await?;
        Ok::<_, anyhow::Error>(resp.into_inner().pid)
    })?;
    drop(rt);
    Ok(crate::runtime::run_exec(pid, &args.command))
}

fn run_daemon(args: DaemonArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => crate::config::DaemonConfig::load(path)?,
        None => crate::config::DaemonConfig::default(),
    };
    if let Some(backend) = args.lb_backend {
        if backend != "auto" {
            backend
                .parse::<mesh_dataplane::lb::Backend>()
                .map_err(|_| {
                    anyhow::anyhow!("--lb-backend: {backend:?} is not auto, ipvs or nftables")
                })?;
        }
        config.agent.lb_backend = backend;
    }
    let metrics_addr = match (&args.metrics_addr, config.metrics.addr.trim()) {
        (Some(flag), _) => Some(crate::metrics::parse_addr("--metrics-addr", flag)?),
        (None, "") => None,
        (None, text) => {
            let source = match &args.config {
                Some(path) => format!("[metrics] addr in {}", path.display()),
                None => "[metrics] addr".to_string(),
            };
            Some(crate::metrics::parse_addr(&source, text)?)
        }
    };
    let hostname = match args.hostname {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .context("cannot read the host name")?
            .to_string_lossy()
            .into_owned(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(crate::daemon::run(crate::daemon::DaemonOptions {
        state_dir: args.state_dir,
        socket: args.socket,
        config,
        hostname,
        netns_prefix: args.netns_prefix,
        workers: std::sync::Arc::new(crate::worker::LinuxWorkers),
        force_new_cluster: args.force_new_cluster,
        metrics: std::sync::Arc::new(mesh_common::metrics::Metrics::new()),
        metrics_addr,
    }))
}

async fn run_client(channel: Channel, command: Command) -> anyhow::Result<()> {
    let mut local = LocalClient::new(channel.clone());
    let mut control = ControlClient::new(channel);
    match command {
        Command::Daemon(_)
        | Command::Sandbox(_)
        | Command::TaskShim(_)
        | Command::Whoami(_)
        | Command::Version(_)
        | Command::Doctor(_)
        | Command::Exec(_) => {
            unreachable!("handled before connecting")
        }
        Command::Init(a) => {
            let resp = local
                .init(InitRequest {
                    advertise_addr: a.advertise_addr,
                    listen_addr: a.listen_addr,
                    default_addr_pool: a.default_addr_pool,
                    default_addr_pool_mask_length: a.default_addr_pool_mask_length,
                    data_path_port: a.data_path_port,
                    cert_validity_secs: a.cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
                    ingress_subnet: a.ingress_subnet,
                })
                .await?
                .into_inner();
            println!(
                "Cluster initialized: this node ({}) is now a manager.\n",
                resp.node_id
            );
            println!("To add a worker to this cluster, run on the worker:\n");
            println!(
                "    mesh join --token {} {}\n",
                resp.worker_token, resp.manager_addr
            );
            println!(
                "To add a manager, run `mesh join-token manager` and follow the instructions."
            );
        }
        Command::Join(a) => {
            let resp = local
                .join(JoinRequest {
                    token: a.token,
                    remote_addr: a.manager,
                    advertise_addr: a.advertise_addr,
                    listen_addr: a.listen_addr,
                })
                .await?
                .into_inner();
            let role = if resp.role() == NodeRole::Manager {
                "manager"
            } else {
                "worker"
            };
            println!(
                "This node ({}) joined the cluster as a {role}.",
                resp.node_id
            );
        }
        Command::JoinToken(a) => {
            let role = NodeRole::from(a.role);
            let resp = control
                .get_join_token(GetJoinTokenRequest {
                    role: role as i32,
                    rotate: a.rotate,
                })
                .await?
                .into_inner();
            let name = if a.role == Role::Manager {
                "manager"
            } else {
                "worker"
            };
            if a.quiet {
                println!("{}", resp.token);
            } else {
                if a.rotate {
                    println!("Rotated the {name} join token.\n");
                }
                let manager = resp
                    .managers
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "MANAGER:2377".into());
                println!(
                    "To add a {name} to this cluster, run:\n\n    mesh join --token {} {manager}\n",
                    resp.token
                );
            }
        }
        Command::Leave(a) => {
            local.leave(LeaveRequest { force: a.force }).await?;
            println!("This node left the cluster.");
        }
        Command::Info(f) => {
            let format = if f.format.trim() == "table" {
                Format::Table
            } else {
                Format::parse(&f.format, None)?
            };
            let info = local.info(InfoRequest {}).await?.into_inner();
            output::print_info(&info, &format)?;
        }
        Command::Node(cmd) => node::run(&mut local, &mut control, cmd).await?,
        Command::Network(cmd) => network::run(&mut control, cmd).await?,
        Command::Service(cmd) => service::run(&mut control, cmd).await?,
        Command::Cluster(ClusterCommand::RotateGossipKey) => {
            let resp = control
                .rotate_gossip_key(RotateGossipKeyRequest {})
                .await?
                .into_inner();
            println!(
                "Gossip key rotated: key {} now encrypts, the previous key still decrypts.",
                resp.key_id
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
