//! `mesh daemon`: one per host. It serves the CLI on a unix socket, and once
//! the node is in a cluster it runs the agent (session with the leader,
//! gossip membership) and, on managers, the raft store and the 2377
//! services. Every node serves task output to managers on its control port
//! ([`logs`]): a manager beside its own services, a worker on a port of its
//! own that it hands over when promoted.
//!
//! Lifecycle changes (init, join, leave, promotion, demotion, removal) are
//! serialized by the `member` mutex; request routing reads a cheap snapshot
//! (`view`) so that CLI calls never wait behind a lifecycle change.
//!
//! # Layout
//! - this file: [`Daemon`], its unix-socket servers and request routing.
//! - [`member`]: a node that is in a cluster ([`member::Member`]).
//! - [`manager`]: the manager role ([`manager::RunningManager`]).
//! - [`local`]: the node-local API (init, join, leave, info, exec).
//! - [`join`]: the join handshake.
//! - [`host_net`]: the host's routes and resolvers, which no network may take.
//! - [`logs`]: the control port every node serves (task output).

pub mod host_net;
pub mod join;
pub mod local;
pub mod logs;
pub mod manager;
pub mod member;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use mesh_common::Liveness;
use mesh_common::auth::Caller;
use mesh_common::channels::{ChannelProvider, TlsChannels};
use mesh_common::metrics::Metrics;
use mesh_control::controlapi::{ControlContext, ControlService, Route, forward_deadline};
use mesh_control::manager::Manager;
use mesh_proto::NodeRole;
use mesh_proto::control_server::ControlServer;
use mesh_proto::local_server::LocalServer;
use tokio::net::UnixListener;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{error, info, warn};

use crate::agent::AgentEvent;
use crate::config::DaemonConfig;
use crate::membership::Membership;
use crate::state_dir::{Certs, NodeState, StateDir};
use crate::worker::WorkerEnv;
use manager::ManagerStart;
use member::{Member, MemberEnv};

pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub config: DaemonConfig,
    pub hostname: String,
    /// Prefix of the network namespaces this daemon creates (default
    /// `mesh-<node id prefix>-`); must differ between daemons sharing a
    /// machine's /run/netns.
    pub netns_prefix: Option<String>,
    /// How the worker is started: on this host's kernel and processes, or on fakes.
    pub workers: Arc<dyn WorkerEnv>,
    /// Start the stored manager as the only voter of its cluster (quorum-loss recovery).
    pub force_new_cluster: bool,
    /// Every family the daemon exports; its parts are handed their handles.
    pub metrics: Arc<Metrics>,
    /// Where to serve `metrics` over HTTP (`--metrics-addr`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

pub struct Daemon {
    dir: StateDir,
    config: DaemonConfig,
    hostname: String,
    netns_prefix: Option<String>,
    workers: Arc<dyn WorkerEnv>,
    member: Mutex<Option<Member>>,
    view: RwLock<Option<View>>,
    events: mpsc::Sender<AgentEvent>,
    metrics: Arc<Metrics>,
}

/// What request routing needs, copied out of the running member.
#[derive(Clone)]
struct View {
    channels: Arc<TlsChannels>,
    manager: Option<Arc<Manager>>,
    managers: Vec<String>,
    upstream: watch::Receiver<Option<String>>,
    membership: Membership,
}

/// The VXLAN port a cluster uses unless `mesh init --data-path-port` says otherwise.
pub const DEFAULT_DATA_PORT: u16 = 4789;

pub(crate) fn not_in_cluster() -> Status {
    Status::failed_precondition(
        "this node is not part of a cluster: run `mesh init` or `mesh join` first",
    )
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    serve(opts, shutdown).await
}

/// Runs the daemon until `shutdown` fires. Tasks keep running afterwards: the next start
/// adopts them.
pub async fn serve(opts: DaemonOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = StateDir::new(&opts.state_dir);
    dir.create()?;
    let _lock = dir.lock()?;
    let uds = bind_socket(&opts.socket).await?;
    let (events_tx, events_rx) = mpsc::channel(16);
    let daemon = Arc::new(Daemon {
        dir: dir.clone(),
        config: opts.config,
        hostname: opts.hostname,
        netns_prefix: opts.netns_prefix,
        workers: opts.workers,
        member: Mutex::new(None),
        view: RwLock::new(None),
        events: events_tx,
        metrics: opts.metrics.clone(),
    });
    let loaded = dir.load()?;
    anyhow::ensure!(
        loaded.is_some() || !opts.force_new_cluster,
        "--force-new-cluster: {} holds no cluster state to recover",
        opts.state_dir.display()
    );
    if let Some(addr) = opts.metrics_addr {
        let state = loaded.as_ref().map(|(s, _)| s);
        let listener = crate::metrics::bind(
            "--metrics-addr",
            addr,
            &reserved_ports(&daemon.config, state),
        )
        .await?;
        tokio::spawn(crate::metrics::serve(
            listener,
            opts.metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let Some((state, certs)) = loaded {
        info!(node = %state.node_id, cluster = %state.cluster_id, "resuming cluster membership");
        let mut member = daemon.member.lock().await;
        let role = mesh_common::pki::parse_cert_pem(&certs.cert_pem)
            .context("stored node certificate is unusable")?
            .role;
        let store = dir.raft_dir().join(mesh_control::store::DB_FILE);
        anyhow::ensure!(
            role != NodeRole::Manager || store.exists() || !dir.raft_dir().exists(),
            "damaged state: {} is missing: this manager's raft store; restore it, or remove {} and join again",
            store.display(),
            opts.state_dir.display()
        );
        let start = match role {
            NodeRole::Manager if opts.force_new_cluster => Some(ManagerStart::ForceNewCluster),
            NodeRole::Manager => Some(ManagerStart::Resume),
            _ if opts.force_new_cluster => anyhow::bail!(
                "--force-new-cluster: this node is not a manager; run it on a surviving manager"
            ),
            _ => None,
        };
        *member = Some(daemon.start_member(state, &certs, start).await?);
    }
    tokio::spawn(daemon.clone().handle_events(events_rx));

    let local = |mut req: tonic::Request<()>| {
        req.extensions_mut().insert(Caller::Local);
        Ok(req)
    };
    info!(socket = %opts.socket.display(), "daemon listening");
    let served = tonic::transport::Server::builder()
        .add_service(LocalServer::with_interceptor(
            local::LocalService::new(daemon.clone()),
            local,
        ))
        .add_service(ControlServer::with_interceptor(
            ControlService::new(daemon.clone(), opts.metrics.api.clone()),
            local,
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(uds), shutdown.cancelled_owned())
        .await;
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(m) = daemon.member.lock().await.take() {
        // Tasks keep running: the next start of the daemon adopts them.
        daemon.stop_member(m, false).await;
    }
    info!("daemon stopped");
    served.context("local API server failed")
}

/// The ports of the cluster's own that no other listener of this node may take: control
/// (2377, or this node's), gossip, and VXLAN's default data port.
fn reserved_ports(config: &DaemonConfig, state: Option<&NodeState>) -> Vec<(u16, &'static str)> {
    let mut ports = vec![
        (local::DEFAULT_CONTROL_PORT, "control"),
        (config.agent.gossip_port, "gossip"),
        (DEFAULT_DATA_PORT, "data path"),
    ];
    if let Some(s) = state {
        ports.push((s.control_port, "control"));
        ports.push((s.gossip_port, "gossip"));
    }
    ports
}

async fn signal_shutdown(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutting down");
    token.cancel();
}

async fn bind_socket(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another mesh daemon is listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let uds =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    Ok(uds)
}

/// Checks an advertise address: an IP of this host.
pub(crate) fn parse_advertise(flag: &str, s: &str) -> Result<IpAddr, Status> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{flag}: {s:?} is not an IP address")))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(Status::invalid_argument(format!(
            "{flag}: {ip} cannot be advertised to other nodes"
        )));
    }
    std::net::UdpSocket::bind((ip, 0)).map_err(|_| {
        Status::invalid_argument(format!("{flag}: {ip} is not an address of this host"))
    })?;
    Ok(ip)
}

/// `ip:port`, or `ip` with the default port.
pub(crate) fn parse_socket_addr(
    flag: &str,
    s: &str,
    default_port: u16,
) -> Result<SocketAddr, Status> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(Status::invalid_argument(format!(
        "{flag}: {s:?} is not an IP address or IP:PORT"
    )))
}

impl Daemon {
    /// The task `reference` on this node and its pid, for `mesh exec`.
    pub(crate) async fn exec_target(&self, reference: &str) -> Result<(String, i32), Status> {
        let member = self.member.lock().await;
        let m = member.as_ref().ok_or_else(not_in_cluster)?;
        m.worker.exec_target(reference).map_err(Status::not_found)
    }

    fn set_view(&self, view: Option<View>) {
        *self.view.write().expect("view lock poisoned") = view;
    }

    fn view(&self) -> Option<View> {
        self.view.read().expect("view lock poisoned").clone()
    }

    fn publish(&self, m: &Member) {
        self.set_view(Some(View {
            channels: m.channels.clone(),
            manager: m.manager.as_ref().map(|r| r.mgr.clone()),
            managers: m.state.managers.clone(),
            upstream: m.upstream.clone(),
            membership: m.membership.clone(),
        }));
    }

    fn member_env(&self) -> MemberEnv<'_> {
        MemberEnv {
            dir: &self.dir,
            config: &self.config,
            hostname: &self.hostname,
            netns_prefix: self.netns_prefix.as_deref(),
            events: &self.events,
            workers: self.workers.as_ref(),
            metrics: &self.metrics,
        }
    }

    /// Brings up gossip, the manager (when `manager` says how) and the agent.
    async fn start_member(
        &self,
        state: NodeState,
        certs: &Certs,
        manager: Option<ManagerStart>,
    ) -> anyhow::Result<Member> {
        let member = Member::start(&self.member_env(), state, certs, manager).await?;
        self.publish(&member);
        Ok(member)
    }

    /// Stops what runs for the cluster (see [`Member::stop`]).
    async fn stop_member(&self, m: Member, cleanup: bool) {
        m.stop(cleanup).await;
        self.set_view(None);
    }

    /// Acts on what the agent learned; see [`AgentEvent`].
    async fn handle_events(self: Arc<Self>, mut rx: mpsc::Receiver<AgentEvent>) {
        while let Some(ev) = rx.recv().await {
            let mut guard = self.member.lock().await;
            let Some(m) = guard.as_mut() else { continue };
            match ev {
                AgentEvent::Managers(list) => {
                    m.state.managers = list;
                    if let Err(e) = self.dir.save_state(&m.state) {
                        warn!(error = %format!("{e:#}"), "cannot persist the managers list");
                    }
                }
                AgentEvent::RoleChanged(NodeRole::Manager) => {
                    m.promote(&self.dir, &self.config, &self.metrics).await;
                }
                AgentEvent::RoleChanged(NodeRole::Worker) => m.demote(&self.dir).await,
                AgentEvent::RoleChanged(_) => {}
                AgentEvent::Removed(why) => {
                    error!(reason = %why, "removed from the cluster: forgetting it");
                    if let Some(m) = guard.take() {
                        self.stop_member(m, true).await;
                    }
                    if let Err(e) = self.dir.wipe() {
                        error!(error = %format!("{e:#}"), "cannot wipe the state dir");
                    }
                    continue;
                }
            }
            self.publish(m);
        }
    }
}

impl ControlContext for Daemon {
    fn route(self: &Arc<Self>) -> Result<Route, Status> {
        let view = self.view().ok_or_else(not_in_cluster)?;
        if let Some(m) = &view.manager {
            return m.route();
        }
        let target = view
            .upstream
            .borrow()
            .clone()
            .or_else(|| view.managers.first().cloned())
            .ok_or_else(|| Status::unavailable("no manager is known to forward the request to"))?;
        let ch = view
            .channels
            .channel(&target)
            .map_err(|e| Status::unavailable(format!("cannot reach manager {target}: {e}")))?;
        Ok(Route::Forward(
            ch,
            target,
            forward_deadline(&self.config.raft),
        ))
    }

    fn local_liveness(self: &Arc<Self>) -> Option<Arc<dyn Liveness>> {
        self.view()
            .map(|v| Arc::new(v.membership) as Arc<dyn Liveness>)
    }
}
