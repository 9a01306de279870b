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

pub mod join;
pub mod local;
pub mod logs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use mesh_common::Liveness;
use mesh_common::auth::Caller;
use mesh_common::channels::{ChannelProvider, SharedChannels, TlsChannels};
use mesh_common::leader::leader_hint;
use mesh_common::tls::Credentials;
use mesh_control::controlapi::{ControlContext, ControlService, Route, forward_deadline};
use mesh_control::manager::{Manager, ManagerOptions};
use mesh_control::store::{Store, StoreOptions};
use mesh_proto::control_server::ControlServer;
use mesh_proto::local_server::LocalServer;
use mesh_proto::raft_client::RaftClient;
use mesh_proto::{JoinRaftRequest, NodeRole, Transaction};
use tokio::net::UnixListener;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{error, info, warn};

use crate::agent::{Agent, AgentEvent};
use crate::config::DaemonConfig;
use crate::membership::Membership;
use crate::state_dir::{Certs, NodeState, StateDir};
use crate::worker::{Reporter, WorkerConfig, WorkerHandle};

pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub config: DaemonConfig,
    pub hostname: String,
    /// Prefix of the network namespaces this daemon creates (default
    /// `mesh-<node id prefix>-`); must differ between daemons sharing a
    /// machine's /run/netns.
    pub netns_prefix: Option<String>,
}

pub struct Daemon {
    dir: StateDir,
    config: DaemonConfig,
    hostname: String,
    netns_prefix: Option<String>,
    member: Mutex<Option<Member>>,
    view: RwLock<Option<View>>,
    events: mpsc::Sender<AgentEvent>,
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

/// A node that is in a cluster.
struct Member {
    state: NodeState,
    creds: Arc<Credentials>,
    channels: Arc<TlsChannels>,
    membership: Membership,
    manager: Option<RunningManager>,
    /// A worker's control port (a manager serves the same on its own).
    node_port: Option<logs::NodePort>,
    agent: CancellationToken,
    upstream: watch::Receiver<Option<String>>,
    worker: WorkerHandle,
}

struct RunningManager {
    mgr: Arc<Manager>,
    store: Store,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

/// How a manager's raft store comes up.
enum ManagerStart {
    /// First manager of a new cluster: bootstrap raft and write this.
    Bootstrap(Transaction),
    /// Joined as a manager: become a voter before returning.
    Join,
    /// Restart or promotion: become a voter in the background if needed.
    Resume,
}

pub(crate) fn not_in_cluster() -> Status {
    Status::failed_precondition(
        "this node is not part of a cluster: run `mesh init` or `mesh join` first",
    )
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
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
        member: Mutex::new(None),
        view: RwLock::new(None),
        events: events_tx,
    });
    if let Some((state, certs)) = dir.load()? {
        info!(node = %state.node_id, cluster = %state.cluster_id, "resuming cluster membership");
        let mut member = daemon.member.lock().await;
        let role = mesh_common::pki::parse_cert_pem(&certs.cert_pem)
            .context("stored node certificate is unusable")?
            .role;
        let start = if role == NodeRole::Manager {
            Some(ManagerStart::Resume)
        } else {
            None
        };
        *member = Some(daemon.start_member(state, &certs, start).await?);
    }
    tokio::spawn(daemon.clone().handle_events(events_rx));

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
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
            ControlService::new(daemon.clone()),
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

    /// Brings up gossip, the manager (when `manager` says how) and the agent.
    async fn start_member(
        self: &Arc<Self>,
        state: NodeState,
        certs: &Certs,
        manager: Option<ManagerStart>,
    ) -> anyhow::Result<Member> {
        let creds = Credentials::new(&certs.ca_pem, &certs.cert_pem, &certs.key_pem)?;
        let channels = TlsChannels::new(&creds)?;
        let bind = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), state.gossip_port);
        let advertise = SocketAddr::new(
            state
                .advertise_addr
                .parse()
                .context("stored advertise address")?,
            state.gossip_port,
        );
        let membership = Membership::start(&self.config.gossip, &state.node_id, bind, advertise)
            .await
            .with_context(|| format!("cannot start gossip on port {}", state.gossip_port))?;
        let running = match manager {
            Some(how) => match self
                .start_manager(&state, &creds, &channels, &membership, how)
                .await
            {
                Ok(r) => Some(r),
                Err(e) => {
                    membership.shutdown().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let node_port = match &running {
            Some(_) => None,
            None => self.open_node_port(&state, &creds).await,
        };
        let (upstream_tx, upstream_rx) = watch::channel(None);
        let worker = match self.start_worker(&state, &channels, &membership, &upstream_rx) {
            Ok(w) => w,
            Err(e) => {
                if let Some(r) = running {
                    stop_manager(r).await;
                }
                if let Some(p) = node_port {
                    p.stop().await;
                }
                membership.shutdown().await;
                return Err(e);
            }
        };
        let agent_shutdown = CancellationToken::new();
        let agent = Agent {
            node_id: state.node_id.clone(),
            hostname: state.hostname.clone(),
            creds: creds.clone(),
            channels: channels.clone(),
            dir: self.dir.clone(),
            config: self.config.agent.clone(),
            renew_check: Duration::from_millis(self.config.ca.renew_check_ms),
            membership: membership.clone(),
            worker: worker.clone(),
            managers: state.managers.clone(),
            upstream: upstream_tx,
            events: self.events.clone(),
        };
        tokio::spawn(agent.run(agent_shutdown.clone()));
        let member = Member {
            state,
            creds,
            channels,
            membership,
            manager: running,
            node_port,
            agent: agent_shutdown,
            upstream: upstream_rx,
            worker,
        };
        self.publish(&member);
        Ok(member)
    }

    async fn start_manager(
        &self,
        state: &NodeState,
        creds: &Arc<Credentials>,
        channels: &Arc<TlsChannels>,
        membership: &Membership,
        how: ManagerStart,
    ) -> anyhow::Result<RunningManager> {
        let listener = logs::bind_control_port(&state.listen_addr).await?;
        let raft_addr = format!("{}:{}", state.advertise_addr, state.control_port);
        let shared: SharedChannels = channels.clone();
        let store = Store::open(StoreOptions {
            dir: self.dir.raft_dir(),
            raft_id: state.raft_id,
            addr: raft_addr.clone(),
            config: self.config.raft.clone(),
            channels: shared.clone(),
        })
        .await
        .context("cannot open the raft store")?;
        let liveness: Arc<dyn Liveness> = Arc::new(membership.clone());
        let mgr = Manager::new(ManagerOptions {
            node_id: state.node_id.clone(),
            cluster_id: state.cluster_id.clone(),
            store: store.clone(),
            creds: creds.clone(),
            channels: shared,
            config: self.config.manager(),
            liveness,
        });
        let shutdown = CancellationToken::new();
        let server = {
            let mgr = mgr.clone();
            let shutdown = shutdown.clone();
            let node = logs::LogsService::routes(
                self.dir.tasks_dir(),
                &state.cluster_id,
                shutdown.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = mgr.serve(listener, node, shutdown).await {
                    error!(error = %e, "control port server failed");
                }
            })
        };
        mgr.spawn_components(&shutdown);
        let running = RunningManager {
            mgr,
            store: store.clone(),
            shutdown,
            server,
        };
        let ready = match how {
            ManagerStart::Bootstrap(txn) => {
                bootstrap(&store, txn, self.config.raft.write_timeout()).await
            }
            ManagerStart::Join => {
                let deadline = self.config.agent.join_timeout();
                tokio::time::timeout(
                    deadline,
                    become_voter(
                        store.clone(),
                        channels.clone(),
                        state.managers.clone(),
                        raft_addr,
                    ),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!("joined, but did not become a raft voter within {deadline:?}")
                })
            }
            ManagerStart::Resume => {
                tokio::spawn(become_voter(
                    store.clone(),
                    channels.clone(),
                    state.managers.clone(),
                    raft_addr,
                ));
                Ok(())
            }
        };
        if let Err(e) = ready {
            stop_manager(running).await;
            return Err(e);
        }
        info!(node = %state.node_id, "manager running");
        Ok(running)
    }

    /// A worker's control port, serving what every node serves. A failure is
    /// logged, not fatal: the node still runs its tasks, and only their output
    /// is out of the managers' reach.
    async fn open_node_port(
        &self,
        state: &NodeState,
        creds: &Arc<Credentials>,
    ) -> Option<logs::NodePort> {
        let stop = CancellationToken::new();
        let routes =
            logs::LogsService::routes(self.dir.tasks_dir(), &state.cluster_id, stop.clone());
        logs::NodePort::start(&state.listen_addr, creds, routes, stop)
            .await
            .inspect_err(|e| {
                error!(error = %format!("{e:#}"), "managers cannot read this node's task output")
            })
            .ok()
    }

    fn start_worker(
        &self,
        state: &NodeState,
        channels: &Arc<TlsChannels>,
        membership: &Membership,
        upstream: &watch::Receiver<Option<String>>,
    ) -> anyhow::Result<WorkerHandle> {
        let netns_prefix = self
            .netns_prefix
            .clone()
            .unwrap_or_else(|| format!("mesh-{}-", &state.node_id[..state.node_id.len().min(8)]));
        let config = WorkerConfig {
            node_id: state.node_id.clone(),
            hostname: state.hostname.clone(),
            underlay_ip: state
                .advertise_addr
                .parse()
                .context("stored advertise address")?,
            netns_prefix,
            tasks_dir: self.dir.tasks_dir(),
            shim_binary: std::env::current_exe()
                .context("cannot find this binary for the task shims")?,
            reconcile_interval: Duration::from_millis(self.config.agent.reconcile_ms.max(100)),
            drain: Duration::from_millis(self.config.agent.drain_ms),
            lb_backend: match self.config.agent.lb_backend.as_str() {
                "" | "auto" => None,
                other => Some(other.to_string()),
            },
            dns: crate::dns::DnsConfig::from_host().unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the host's resolvers; names outside the cluster will not resolve");
                crate::dns::DnsConfig::with_upstreams(Vec::new())
            }),
            runtime: tokio::runtime::Handle::current(),
        };
        let reporter = Reporter {
            channels: channels.clone(),
            upstream: upstream.clone(),
        };
        crate::worker::start(config, membership.clone(), reporter)
    }

    /// Stops what runs for the cluster. With `cleanup` (leaving, removed)
    /// tasks are stopped and the overlay removed; without (daemon stop)
    /// they keep running for the next start to adopt.
    async fn stop_member(&self, m: Member, cleanup: bool) {
        m.agent.cancel();
        m.worker.stop(cleanup).await;
        if let Some(r) = m.manager {
            stop_manager(r).await;
        }
        if let Some(p) = m.node_port {
            p.stop().await;
        }
        m.membership.shutdown().await;
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
                AgentEvent::RoleChanged(NodeRole::Manager) if m.manager.is_none() => {
                    info!("promoted: starting the manager");
                    // The manager takes over the control port.
                    if let Some(p) = m.node_port.take() {
                        p.stop().await;
                    }
                    match self
                        .start_manager(
                            &m.state,
                            &m.creds,
                            &m.channels,
                            &m.membership,
                            ManagerStart::Resume,
                        )
                        .await
                    {
                        Ok(r) => m.manager = Some(r),
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "cannot start the manager after promotion");
                            m.node_port = self.open_node_port(&m.state, &m.creds).await;
                        }
                    }
                }
                AgentEvent::RoleChanged(NodeRole::Worker) => {
                    if let Some(r) = m.manager.take() {
                        info!("demoted: stopping the manager");
                        stop_manager(r).await;
                        if let Err(e) = std::fs::remove_dir_all(self.dir.raft_dir()) {
                            warn!(error = %e, "cannot remove the raft store of a demoted manager");
                        }
                        m.node_port = self.open_node_port(&m.state, &m.creds).await;
                    }
                }
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

async fn stop_manager(r: RunningManager) {
    r.shutdown.cancel();
    r.store.shutdown().await;
    let _ = r.server.await;
    drop(r.mgr);
}

/// Starts a one-voter raft cluster and writes the initial objects.
async fn bootstrap(store: &Store, txn: Transaction, timeout: Duration) -> anyhow::Result<()> {
    store.initialize().await.context("cannot initialize raft")?;
    let mut leader = store.watch_leader();
    tokio::time::timeout(timeout, async {
        while !store.is_leader() {
            if leader.changed().await.is_err() {
                break;
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("this node did not become raft leader within {timeout:?}"))?;
    store
        .propose(txn)
        .await
        .context("cannot write the new cluster")?;
    Ok(())
}

/// Asks the leader to make this manager a voter until the local raft log
/// shows it is one. The leader is found through the known managers and
/// `mesh-leader` redirects.
async fn become_voter(
    store: Store,
    channels: Arc<TlsChannels>,
    managers: Vec<String>,
    addr: String,
) {
    let raft_id = store.raft_id();
    let is_voter = |s: &Store| s.status().voters.iter().any(|(id, _)| *id == raft_id);
    let mut i = 0usize;
    let mut hint: Option<String> = None;
    let mut delay = Duration::from_millis(100);
    while !is_voter(&store) {
        let target = match hint.take() {
            Some(h) => h,
            None if managers.is_empty() => return,
            None => {
                i += 1;
                managers[i % managers.len()].clone()
            }
        };
        let result = match channels.channel(&target) {
            Ok(ch) => RaftClient::new(ch)
                .join_raft(JoinRaftRequest {
                    raft_id,
                    addr: addr.clone(),
                })
                .await
                .map(|_| ()),
            Err(e) => Err(Status::unavailable(e.to_string())),
        };
        match result {
            Ok(()) => {
                // Replication of the new membership reaches us shortly.
                let mut changes = store.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while !is_voter(&store) && changes.changed().await.is_ok() {}
                })
                .await;
            }
            Err(s) => {
                hint = leader_hint(&s).filter(|h| *h != target);
                if hint.is_none() {
                    warn!(manager = %target, error = %s.message(), "cannot become a raft voter yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    info!(raft_id, "this manager is a raft voter");
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
