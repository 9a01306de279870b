//! The worker: turns the tasks the leader assigned to this node into
//! running processes on overlay networks, and keeps the overlay's view of
//! other nodes' endpoints current.
//!
//! It is one actor on a thread of its own (the dataplane calls block, and a
//! reconcile must never interleave with an incremental FDB change: one owner
//! of the desired state and the kernel makes that true by construction). It
//! reacts to:
//! - assignments from the agent's session (the full set first, deltas after);
//! - gossip record events: remote endpoints to program or withdraw;
//! - task state changes from the runtime, reported to the leader;
//! - a periodic tick that repairs drift and retries what failed.
//!
//! Order when a task starts: network sandbox and task sandbox, then its
//! endpoint records are published, then the process starts. When it stops:
//! its records are withdrawn first, then the process is stopped, then the
//! sandboxes go. Nothing is touched before the first full assignment set
//! arrives, so a restarted agent adopts running tasks instead of tearing
//! them down.

mod ingress;
pub mod record;
pub mod services;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_common::channels::{ChannelProvider, TlsChannels};
use mesh_common::leader::leader_hint;
use mesh_dataplane::link::{IfName, Ipv4Cidr};
use mesh_dataplane::netns::Netns;
use mesh_dataplane::overlay::{
    self, Dataplane, GatewayAllocator, LinuxDataplane, LocalEndpoint, Mac, NetworkSpec,
    NodeDataplane, Prefix, RemoteEndpoint, TaskId, TaskSandbox, Vni,
};
use mesh_gossip::{Gossip, RecordEvent, RecordEventKind};
use mesh_proto::dispatcher_client::DispatcherClient;
use mesh_proto::{
    Assignments, Network, NetworkAttachment, Task, TaskState, TaskStatus, TaskStatusUpdate,
    UpdateTaskStatusRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use mesh_dataplane::lb::{self, Backend, LbTable, LoadBalancer};

use crate::dns::DnsManager;
use crate::membership::Membership;
use crate::runtime::{self, TaskPhase, TaskRuntime};
use record::EndpointRecord;
use services::Endpoints;

/// The sandbox id of the node's ingress sandbox (the routing mesh's entry
/// point: a task sandbox with no process).
pub const INGRESS_SANDBOX: &str = "ingress_sbox";

/// What the worker needs to know about its node.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub node_id: String,
    pub hostname: String,
    pub underlay_ip: Ipv4Addr,
    /// Prefix of every network namespace this node creates (unique per daemon).
    pub netns_prefix: String,
    /// Where task directories live (`<state-dir>/tasks`).
    pub tasks_dir: PathBuf,
    /// The binary the task shims run (this one).
    pub shim_binary: PathBuf,
    /// How often the whole node is reconciled even when nothing happened.
    pub reconcile_interval: Duration,
    /// Between withdrawing a task from every load balancer and stopping it,
    /// so requests in flight elsewhere finish and no new one reaches it.
    pub drain: Duration,
    /// Load-balancing backend: `None` picks IPVS when the kernel has it,
    /// nftables otherwise.
    pub lb_backend: Option<String>,
    /// The daemon's runtime: the DNS servers of the tasks run there, not on
    /// the worker's own thread (which blocks on kernel calls).
    pub runtime: tokio::runtime::Handle,
}

/// Where status reports go: the manager the agent's session is connected to.
#[derive(Clone)]
pub struct Reporter {
    pub channels: Arc<TlsChannels>,
    pub upstream: watch::Receiver<Option<String>>,
}

impl Reporter {
    async fn send(&self, updates: Vec<TaskStatusUpdate>) -> Result<(), String> {
        let Some(mut target) = self.upstream.borrow().clone() else {
            return Err("no session with the leader".into());
        };
        for _ in 0..2 {
            let ch = self.channels.channel(&target).map_err(|e| e.to_string())?;
            let req = UpdateTaskStatusRequest {
                updates: updates.clone(),
            };
            match DispatcherClient::new(ch).update_task_status(req).await {
                Ok(_) => return Ok(()),
                Err(s) => match leader_hint(&s) {
                    Some(leader) if leader != target => target = leader,
                    _ => return Err(s.message().to_string()),
                },
            }
        }
        Err("the managers keep redirecting".into())
    }
}

enum Msg {
    Assignments(Box<Assignments>, u16, Option<NetworkAttachment>),
    Stop {
        cleanup: bool,
        done: oneshot::Sender<()>,
    },
}

/// The handle the daemon keeps.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::UnboundedSender<Msg>,
    runtime: Arc<TaskRuntime>,
    tasks: Arc<std::sync::RwLock<BTreeMap<String, String>>>,
}

impl WorkerHandle {
    /// Hands the worker what a session message assigned (`data_port`: the
    /// cluster's VXLAN port).
    pub fn assignments(&self, a: Assignments, data_port: u16, ingress: Option<NetworkAttachment>) {
        let _ = self
            .tx
            .send(Msg::Assignments(Box::new(a), data_port, ingress));
    }

    /// Stops the worker. With `cleanup`, every task is stopped and the
    /// overlay removed (leaving the cluster); without, tasks keep running
    /// for the next start of the agent to adopt.
    pub async fn stop(&self, cleanup: bool) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Stop { cleanup, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// The pid of a task running here, by id, id prefix or name.
    pub fn exec_target(&self, reference: &str) -> Result<(String, i32), String> {
        let tasks = self.tasks.read().expect("task names lock poisoned");
        let matches: Vec<&String> = tasks
            .iter()
            .filter(|(id, name)| {
                *id == reference || *name == reference || id.starts_with(reference)
            })
            .map(|(id, _)| id)
            .collect();
        let id = match matches.as_slice() {
            [id] => (*id).clone(),
            [] => return Err(format!("task {reference:?} is not running on this node")),
            _ => {
                return Err(format!(
                    "task {reference:?} is ambiguous on this node; use its id"
                ));
            }
        };
        let pid = self
            .runtime
            .exec_target(&id)
            .ok_or_else(|| format!("task {reference:?} has no running process"))?;
        Ok((id, pid))
    }
}

/// How a daemon starts its worker: on this host's kernel and processes ([`LinuxWorkers`]),
/// or on fakes (in-process tests).
pub trait WorkerEnv: Send + Sync + 'static {
    fn start(
        &self,
        config: WorkerConfig,
        membership: Membership,
        reporter: Reporter,
    ) -> anyhow::Result<WorkerHandle>;
}

/// Workers on this host: its kernel, task processes under shims, DNS servers in the tasks'
/// namespaces.
pub struct LinuxWorkers;

impl WorkerEnv for LinuxWorkers {
    fn start(
        &self,
        config: WorkerConfig,
        membership: Membership,
        reporter: Reporter,
    ) -> anyhow::Result<WorkerHandle> {
        start(config, membership, reporter)
    }
}

/// Starts the worker on a thread of its own.
pub fn start(
    config: WorkerConfig,
    membership: Membership,
    reporter: Reporter,
) -> anyhow::Result<WorkerHandle> {
    let prefix = Prefix::new(config.netns_prefix.clone()).context("netns prefix")?;
    let dp = LinuxDataplane::current().context("cannot open this node's network namespace")?;
    let runtime = Arc::new(TaskRuntime::new(
        config.tasks_dir.clone(),
        config.shim_binary.clone(),
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let names = Arc::new(std::sync::RwLock::new(BTreeMap::new()));
    let handle = WorkerHandle {
        tx,
        runtime: runtime.clone(),
        tasks: names.clone(),
    };
    let desired = NodeDataplane::new(prefix, config.underlay_ip);
    let gw = GatewayAllocator::new(&desired.gateway);
    let backend = match &config.lb_backend {
        Some(name) => name.parse::<Backend>().context("load-balancing backend")?,
        None => lb::detect(),
    };
    info!(%backend, "load balancing backend");
    let dns_config = crate::dns::DnsConfig::from_host().unwrap_or_else(|e| {
        warn!(error = %e, "cannot read the host's resolvers; names outside the cluster will not resolve");
        crate::dns::DnsConfig::with_upstreams(Vec::new())
    });
    let dns = Arc::new(DnsManager::new(dns_config));
    let worker = Worker {
        cfg: config,
        dp,
        desired,
        gw,
        runtime,
        membership,
        gossip: None,
        tasks: BTreeMap::new(),
        networks: BTreeMap::new(),
        have_full: false,
        mtus: BTreeMap::new(),
        joined: BTreeSet::new(),
        published: BTreeMap::new(),
        remotes: BTreeMap::new(),
        pending: BTreeMap::new(),
        reported: BTreeMap::new(),
        reporter,
        names,
        endpoints: Endpoints::default(),
        dirty: BTreeSet::new(),
        lb: backend.load_balancer(),
        lb_applied: BTreeMap::new(),
        dns,
        ingress: None,
        ingress_applied: ingress::IngressApplied::default(),
        ingress_stale: false,
        draining: BTreeMap::new(),
        withdrawals: Vec::new(),
        flushes: Vec::new(),
    };
    std::thread::Builder::new()
        .name("mesh-worker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("worker runtime");
            rt.block_on(worker.run(rx));
        })
        .context("cannot start the worker thread")?;
    Ok(handle)
}

struct Worker {
    cfg: WorkerConfig,
    dp: LinuxDataplane,
    desired: NodeDataplane,
    gw: GatewayAllocator,
    runtime: Arc<TaskRuntime>,
    membership: Membership,
    gossip: Option<Gossip>,
    /// Assigned tasks and the networks they use, as the leader sent them.
    tasks: BTreeMap<String, Task>,
    networks: BTreeMap<String, Network>,
    have_full: bool,
    mtus: BTreeMap<u32, u32>,
    /// Gossip scopes (network ids) joined.
    joined: BTreeSet<String>,
    /// Records published: task id -> (network id -> record).
    published: BTreeMap<String, BTreeMap<String, EndpointRecord>>,
    /// Remote endpoints programmed from records: (scope, owner, key) -> (vni, ip).
    remotes: BTreeMap<(String, String, String), (Vni, Ipv4Addr)>,
    pending: BTreeMap<String, TaskStatus>,
    reported: BTreeMap<String, TaskStatus>,
    reporter: Reporter,
    names: Arc<std::sync::RwLock<BTreeMap<String, String>>>,
    /// Every endpoint record known (own and gossiped), for DNS and load balancing.
    endpoints: Endpoints,
    /// Networks whose records changed since the services were last refreshed.
    dirty: BTreeSet<String>,
    lb: Box<dyn LoadBalancer + Send + Sync>,
    /// What each local task's load balancer holds (as last applied).
    lb_applied: BTreeMap<String, LbTable>,
    dns: Arc<DnsManager>,
    /// This node's address on the ingress network, for its ingress sandbox.
    ingress: Option<NetworkAttachment>,
    /// The routing mesh's kernel state as last applied.
    ingress_applied: ingress::IngressApplied,
    /// Whether what the routing mesh derives from (assignments, sandboxes, ingress records)
    /// may have changed since [`Worker::sync_ingress`] last ran.
    ingress_stale: bool,
    /// Tasks withdrawn from load balancers and DNS, stopped once their drain ends.
    draining: BTreeMap<String, tokio::time::Instant>,
    /// Remote endpoints withdrawn by their owners: (when the drain ends, vni, address).
    withdrawals: Vec<(tokio::time::Instant, (Vni, Ipv4Addr))>,
    /// Conntrack entries to flush once the drain ends: (when, task, backends gone from its
    /// load balancer).
    flushes: Vec<(tokio::time::Instant, (String, BTreeSet<Ipv4Addr>))>,
}

fn status(state: TaskState, message: impl Into<String>) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        message: message.into(),
        timestamp_ms: mesh_common::time::now_ms(),
        ..Default::default()
    }
}

/// The status the leader should see for a runtime state.
fn status_of(st: &runtime::TaskState) -> TaskStatus {
    let mut s = match (st.state, st.done) {
        (TaskPhase::Starting, _) => status(TaskState::Starting, "starting"),
        (TaskPhase::Running, _) => status(TaskState::Running, "running"),
        (TaskPhase::Exited, true) if st.message.starts_with("stopped") => {
            status(TaskState::Shutdown, st.message.clone())
        }
        (TaskPhase::Exited, true) => status(TaskState::Complete, st.message.clone()),
        (TaskPhase::Failed, true) => {
            let mut s = status(TaskState::Failed, "failed");
            s.err = st.message.clone();
            s
        }
        (_, false) => status(TaskState::Starting, format!("restarting ({})", st.message)),
    };
    s.exit_code = st.exit_code.unwrap_or(0);
    s.restarts = st.restarts;
    s
}

fn same_status(a: &TaskStatus, b: &TaskStatus) -> bool {
    a.state == b.state
        && a.message == b.message
        && a.err == b.err
        && a.exit_code == b.exit_code
        && a.restarts == b.restarts
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let adopted = self.runtime.adopt().await;
        if !adopted.is_empty() {
            info!(tasks = adopted.len(), "adopted running tasks");
        }
        let mut task_events = self.runtime.watch();
        match self.dp.observe(&self.desired.scope()) {
            Ok(observed) => {
                let ids: Vec<TaskId> = adopted
                    .iter()
                    .filter_map(|id| TaskId::new(id.clone()).ok())
                    .collect();
                self.gw.adopt(&observed, ids.iter());
            }
            Err(e) => warn!(error = %e, "cannot observe the overlay at start"),
        }
        let mut tick = tokio::time::interval(self.cfg.reconcile_interval);
        let mut records: Option<mpsc::UnboundedReceiver<RecordEvent>> = None;
        loop {
            if records.is_none()
                && let Some(g) = self.membership.plane()
            {
                records = Some(g.subscribe());
                self.gossip = Some(g);
                self.sync_all_scopes();
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Assignments(a, port, ingress)) => {
                        self.ingress = ingress;
                        self.assign(*a, port);
                        self.converge().await;
                    }
                    Some(Msg::Stop { cleanup, done }) => {
                        if cleanup {
                            self.tear_down().await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                Some(ev) = recv_opt(&mut records) => self.on_record(ev),
                ev = task_events.recv() => match ev {
                    Ok((id, st)) => self.on_task_state(&id, &st),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.refresh_states(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.converge().await,
                _ = sleep_until(self.next_deadline()) => {
                    // A task whose drain is over is stopped by a converge; the rest is
                    // run_due's.
                    let now = tokio::time::Instant::now();
                    let drained = self.draining.values().any(|until| *until <= now);
                    self.run_due();
                    if drained {
                        self.converge().await;
                    }
                }
            }
            self.refresh_services();
            if std::mem::take(&mut self.ingress_stale) {
                self.sync_ingress();
            }
            self.flush_reports().await;
        }
    }

    fn assign(&mut self, a: Assignments, data_port: u16) {
        if a.full {
            self.tasks.clear();
            self.networks.clear();
            self.have_full = true;
        }
        for id in &a.removed_tasks {
            self.tasks.remove(id);
        }
        for id in &a.removed_networks {
            self.networks.remove(id);
        }
        for t in a.tasks {
            self.tasks.insert(t.id.clone(), t);
        }
        for n in a.networks {
            self.networks.insert(n.id.clone(), n);
        }
        if data_port != 0 {
            self.desired.data_port = data_port;
        }
    }

    fn is_ingress(&self, network_id: &str) -> bool {
        self.networks
            .get(network_id)
            .and_then(|n| n.spec.as_ref())
            .is_some_and(|s| s.ingress)
    }

    fn wanted(&self) -> Vec<Task> {
        self.tasks
            .values()
            .filter(|t| t.desired_state() == TaskState::Running && t.node_id == self.cfg.node_id)
            .cloned()
            .collect()
    }

    fn queue(&mut self, task_id: &str, s: TaskStatus) {
        if !self.tasks.contains_key(task_id) {
            return;
        }
        if self
            .pending
            .get(task_id)
            .or(self.reported.get(task_id))
            .is_some_and(|cur| same_status(cur, &s))
        {
            return;
        }
        self.pending.insert(task_id.to_string(), s);
    }

    async fn flush_reports(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let updates: Vec<TaskStatusUpdate> = self
            .pending
            .iter()
            .map(|(id, s)| TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(s.clone()),
            })
            .collect();
        match self.reporter.send(updates).await {
            Ok(()) => {
                let sent = std::mem::take(&mut self.pending);
                self.reported.extend(sent);
            }
            Err(e) => {
                debug!(error = %e, pending = self.pending.len(), "task status not reported yet")
            }
        }
    }

    fn on_task_state(&mut self, id: &str, st: &runtime::TaskState) {
        if let Some(t) = self.tasks.get(id).cloned()
            && t.desired_state() == TaskState::Running
        {
            self.publish(&t);
        }
        debug!(task = id, state = ?st.state, done = st.done, "task state");
        self.queue(id, status_of(st));
    }

    fn refresh_states(&mut self) {
        for (id, st) in self.runtime.list() {
            self.on_task_state(&id, &st);
        }
    }

    fn mtu(&mut self, n: &Network) -> u32 {
        let wanted = n.spec.as_ref().map(|s| s.mtu).filter(|m| *m != 0);
        if let Some(m) = self.mtus.get(&n.vni) {
            return *m;
        }
        let mtu = overlay::overlay_mtu(self.dp.host(), self.cfg.underlay_ip, wanted)
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the underlay MTU; using 1450");
                1450
            });
        self.mtus.insert(n.vni, mtu);
        mtu
    }

    /// The endpoint of one attachment (`eth{index}`) and its network as the
    /// overlay needs it, or `None` if the network is unknown or unusable.
    fn endpoint(
        &mut self,
        index: usize,
        addr: &str,
        network_id: &str,
    ) -> Option<(NetworkSpec, LocalEndpoint)> {
        let n = self.networks.get(network_id).cloned()?;
        let gateway = format!("{}/{}", n.gateway, prefix_len(&n.subnet));
        let (Ok(vni), Ok(addr), Ok(gw)) = (
            Vni::new(n.vni),
            addr.parse::<Ipv4Cidr>(),
            gateway.parse::<Ipv4Cidr>(),
        ) else {
            warn!(network = %n.id, %addr, "unusable network attachment");
            return None;
        };
        let internal = n.spec.as_ref().is_some_and(|s| s.internal);
        let mtu = self.mtu(&n);
        let ifname = IfName::new(format!("eth{index}")).expect("short interface name");
        Some((
            NetworkSpec {
                vni,
                gateway: gw,
                mtu,
                internal,
            },
            LocalEndpoint::new(vni, ifname, addr),
        ))
    }

    /// A sandbox with these endpoints, on the gateway bridge unless all its
    /// networks are internal.
    fn sandbox(
        &mut self,
        id: TaskId,
        parts: Vec<(NetworkSpec, LocalEndpoint)>,
        networks: &mut BTreeMap<Vni, NetworkSpec>,
    ) -> TaskSandbox {
        // A task on no network still gets the gateway bridge: egress, and host-mode ports.
        let needs_egress = parts.is_empty() || parts.iter().any(|(n, _)| !n.internal);
        let mut endpoints = Vec::new();
        for (spec, endpoint) in parts {
            networks.insert(spec.vni, spec);
            endpoints.push(endpoint);
        }
        let egress = if needs_egress {
            self.gw
                .allocate(&id)
                .map_err(
                    |e| warn!(task = %id.as_str(), error = %e, "no gateway address for the task"),
                )
                .ok()
        } else {
            self.gw.release(&id);
            None
        };
        TaskSandbox {
            id,
            endpoints,
            egress,
        }
    }

    /// The network and task sandboxes the wanted tasks need, plus this
    /// node's ingress sandbox when it has an ingress address.
    fn plan_sandboxes(
        &mut self,
        wanted: &[Task],
    ) -> (BTreeMap<Vni, NetworkSpec>, BTreeMap<TaskId, TaskSandbox>) {
        let mut networks = BTreeMap::new();
        let mut sandboxes = BTreeMap::new();
        for t in wanted {
            let Ok(id) = TaskId::new(t.id.clone()) else {
                continue;
            };
            let parts = t
                .networks
                .iter()
                .enumerate()
                .filter_map(|(i, a)| self.endpoint(i, &a.addr, &a.network_id))
                .collect();
            let sandbox = self.sandbox(id.clone(), parts, &mut networks);
            sandboxes.insert(id, sandbox);
        }
        if let Some(a) = self.ingress.clone()
            && let Some(part) = self.endpoint(0, &a.addr, &a.network_id)
        {
            let id = TaskId::new(INGRESS_SANDBOX).expect("valid task id");
            let sandbox = self.sandbox(id.clone(), vec![part], &mut networks);
            sandboxes.insert(id, sandbox);
        }
        (networks, sandboxes)
    }

    /// Makes the node match the assignments; see the module docs for the order.
    async fn converge(&mut self) {
        if !self.have_full {
            return;
        }
        // Tasks, sandboxes and networks may change here; the routing mesh follows (and
        // whatever failed there last time is retried).
        self.ingress_stale = true;
        let wanted = self.wanted();
        let wanted_ids: BTreeSet<&str> = wanted.iter().map(|t| t.id.as_str()).collect();
        *self.names.write().expect("task names lock poisoned") = wanted
            .iter()
            .map(|t| (t.id.clone(), t.name.clone()))
            .collect();

        // 1. Stop what is no longer wanted: withdraw it from every load
        // balancer and DNS first (its records), let requests drain, then
        // stop the process.
        let running: Vec<String> = self.runtime.list().into_iter().map(|(id, _)| id).collect();
        let leaving: Vec<&String> = running
            .iter()
            .filter(|id| !wanted_ids.contains(id.as_str()))
            .collect();
        // The drain is a deadline, not a sleep: the actor keeps applying
        // other nodes' withdrawals to its load balancers meanwhile.
        let now = tokio::time::Instant::now();
        let mut withdrawn = false;
        for id in &leaving {
            if self.unpublish(id) {
                withdrawn = true;
                self.draining.insert((*id).clone(), now + self.cfg.drain);
            }
        }
        if withdrawn {
            self.refresh_services();
            debug!(tasks = leaving.len(), drain = ?self.cfg.drain, "draining before stop");
        }
        self.draining.retain(|id, _| leaving.contains(&id));
        for id in leaving {
            if self.draining.get(id).is_some_and(|until| *until > now) {
                continue;
            }
            self.draining.remove(id);
            self.detach_services(id).await;
            if let Err(e) = self.runtime.remove(id).await {
                warn!(task = %id, error = %e, "cannot stop task");
                continue;
            }
            info!(task = %id, "task stopped");
            self.queue(id, status(TaskState::Shutdown, "stopped"));
        }
        let stopped: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.desired_state() != TaskState::Running && !running.contains(&t.id))
            .filter(|t| {
                !t.status
                    .as_ref()
                    .is_some_and(|s| crate::worker::is_final(s.state()))
            })
            .map(|t| t.id.clone())
            .collect();
        for id in stopped {
            self.unpublish(&id);
            self.queue(&id, status(TaskState::Shutdown, "stopped"));
        }
        let sandbox_key = format!("{INGRESS_SANDBOX}.{}", self.cfg.node_id);
        for id in self.published.keys().cloned().collect::<Vec<_>>() {
            if !wanted_ids.contains(id.as_str()) && id != sandbox_key {
                self.unpublish(&id);
            }
        }

        // 2. Sandboxes for what is wanted.
        let (networks, sandboxes) = self.plan_sandboxes(&wanted);
        for id in self.desired.tasks.keys().cloned().collect::<Vec<_>>() {
            if !sandboxes.contains_key(&id) {
                self.gw.release(&id);
            }
        }
        self.desired.networks = networks;
        self.desired.tasks = sandboxes;
        let live: BTreeSet<Vni> = self.desired.networks.keys().copied().collect();
        self.desired
            .remotes
            .retain(|(vni, _), _| live.contains(vni));
        self.remotes.retain(|_, (vni, _)| live.contains(vni));
        let failed = overlay::reconcile(&self.dp, &self.desired).err();
        if let Some(e) = &failed {
            warn!(error = %e, "overlay reconcile failed; retrying on the next tick");
        }

        // 3. Gossip scopes and our endpoint records.
        self.follow_scopes();
        for t in &wanted {
            self.publish(t);
        }
        self.publish_ingress_sandbox();
        if failed.is_none()
            && self.ingress.is_some()
            && !self.lb_applied.contains_key(INGRESS_SANDBOX)
        {
            self.setup_ingress_sandbox();
        }

        // 4. Processes.
        for t in &wanted {
            if let Some(e) = &failed {
                if self.runtime.state(&t.id).is_none() {
                    self.queue(
                        &t.id,
                        status(TaskState::Starting, format!("waiting for its network: {e}")),
                    );
                }
                continue;
            }
            match self.runtime.state(&t.id) {
                Some(st) if st.done => self.queue(&t.id, status_of(&st)),
                Some(st) => {
                    // Adopted after an agent restart, or a retry after a failure.
                    if !self.lb_applied.contains_key(&t.id)
                        && let Err(e) = self.attach_services(t).await
                    {
                        warn!(task = %t.id, error = %e, "cannot attach DNS and load balancer");
                    }
                    self.queue(&t.id, status_of(&st));
                }
                None => self.start_task(t).await,
            }
        }
    }

    async fn start_task(&mut self, t: &Task) {
        if let Some(reason) = self.host_port_conflict(t) {
            let mut s = status(TaskState::Rejected, "rejected");
            s.err = reason;
            self.queue(&t.id, s);
            return;
        }
        let spec = match self.launch_spec(t) {
            Ok(s) => s,
            Err(e) => {
                let mut s = status(TaskState::Rejected, "rejected");
                s.err = e;
                self.queue(&t.id, s);
                return;
            }
        };
        self.queue(&t.id, status(TaskState::Starting, "starting"));
        if let Err(e) = self.attach_services(t).await {
            self.queue(
                &t.id,
                status(
                    TaskState::Starting,
                    format!("waiting for its DNS and load balancer: {e}"),
                ),
            );
            return;
        }
        match self.runtime.start(spec).await {
            Ok(()) => info!(task = %t.id, name = %t.name, "task started"),
            Err(e) => {
                let mut s = status(TaskState::Rejected, "rejected");
                s.err = e.to_string();
                self.queue(&t.id, s);
            }
        }
    }

    /// DNS at 127.0.0.11 and the load balancer, in the task's namespace:
    /// both ready before its process starts (and again after an agent
    /// restart, for tasks that kept running).
    async fn attach_services(&mut self, t: &Task) -> Result<(), String> {
        let id = TaskId::new(t.id.clone()).map_err(|e| e.to_string())?;
        let path = Netns::path_of(&self.desired.prefix.task_netns(&id));
        let networks: Vec<String> = t.networks.iter().map(|a| a.network_id.clone()).collect();
        let dns = self.dns.clone();
        let task_id = t.id.clone();
        let nets = networks.clone();
        self.cfg
            .runtime
            .spawn(async move { dns.attach(&task_id, &path, nets).await })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !self.lb_applied.contains_key(&t.id) && !self.apply_lb(&t.id, &networks) {
            return Err("the load balancer could not be programmed".into());
        }
        Ok(())
    }

    fn launch_spec(&self, t: &Task) -> Result<runtime::TaskSpec, String> {
        let spec = t.spec.clone().unwrap_or_default();
        let mut argv = spec.command.clone();
        // `mesh ...` in a task means this very binary (whoami and friends).
        if argv.first().is_some_and(|a| a == "mesh") {
            argv[0] = self.cfg.shim_binary.display().to_string();
        }
        let mut rs = runtime::TaskSpec::new(t.id.clone(), argv);
        rs.name = t.name.clone();
        rs.env = spec
            .env
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (k, v) in [
            ("MESH_TASK_NAME", t.name.as_str()),
            ("MESH_TASK_ID", t.id.as_str()),
            ("MESH_SERVICE_NAME", t.service_name.as_str()),
            ("MESH_SERVICE_ID", t.service_id.as_str()),
            ("MESH_NODE_ID", self.cfg.node_id.as_str()),
            ("MESH_NODE_HOSTNAME", self.cfg.hostname.as_str()),
        ] {
            rs.env.push((k.to_string(), v.to_string()));
        }
        if !spec.dir.is_empty() {
            rs.workdir = Some(PathBuf::from(&spec.dir));
        }
        let id = TaskId::new(t.id.clone()).map_err(|e| e.to_string())?;
        rs.netns = Some(Netns::path_of(&self.desired.prefix.task_netns(&id)));
        let first_ip = t
            .networks
            .first()
            .and_then(|a| a.addr.split('/').next().map(str::to_string));
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        if let Some(ip) = first_ip {
            hosts.push_str(&format!(
                "{ip}\t{} {}\n",
                t.name,
                &t.id[..t.id.len().min(12)]
            ));
        }
        rs.hosts = Some(hosts);
        rs.resolv_conf = Some(crate::dns::RESOLV_CONF.to_string());
        let restart = spec.restart.unwrap_or_default();
        rs.restart = runtime::RestartPolicy {
            condition: match restart.condition() {
                mesh_proto::RestartCondition::Any => runtime::RestartCondition::Any,
                mesh_proto::RestartCondition::OnFailure => runtime::RestartCondition::OnFailure,
                mesh_proto::RestartCondition::None => runtime::RestartCondition::None,
            },
            delay: Duration::from_millis(restart.delay_ms),
            max_attempts: restart.max_attempts,
        };
        if spec.stop_grace_ms > 0 {
            rs.stop_grace = Duration::from_millis(spec.stop_grace_ms);
        }
        rs.validate().map_err(|e| e.to_string())?;
        Ok(rs)
    }

    /// Joins the gossip scopes of the networks in use, leaves the others.
    fn follow_scopes(&mut self) {
        let Some(g) = self.gossip.clone() else { return };
        let wanted: BTreeSet<String> = self
            .networks
            .values()
            .filter(|n| Vni::new(n.vni).is_ok_and(|v| self.desired.networks.contains_key(&v)))
            .map(|n| n.id.clone())
            .collect();
        for scope in wanted.difference(&self.joined.clone()) {
            match g.join_scope(scope) {
                Ok(()) => {
                    self.joined.insert(scope.clone());
                    self.sync_scope(&g, scope);
                }
                Err(e) => warn!(scope = %scope, error = %e, "cannot join gossip scope"),
            }
        }
        for scope in self.joined.clone().difference(&wanted) {
            if let Err(e) = g.leave_scope(scope) {
                warn!(scope = %scope, error = %e, "cannot leave gossip scope");
            }
            self.joined.remove(scope);
            self.remotes.retain(|(s, _, _), _| s != scope);
            self.endpoints.remove_network(scope);
            self.dirty.insert(scope.clone());
        }
    }

    fn sync_all_scopes(&mut self) {
        let Some(g) = self.gossip.clone() else { return };
        for scope in self.joined.clone() {
            self.sync_scope(&g, &scope);
        }
    }

    /// Programs every record the scope already holds (on joining it).
    fn sync_scope(&mut self, g: &Gossip, scope: &str) {
        for r in g.records(scope) {
            self.on_record(RecordEvent {
                scope: r.scope.clone(),
                key: r.key.clone(),
                owner: r.owner.clone(),
                kind: RecordEventKind::Upsert(r.value.clone()),
            });
        }
    }

    fn publish(&mut self, t: &Task) {
        let Some(g) = self.gossip.clone() else { return };
        let running = self
            .runtime
            .state(&t.id)
            .is_some_and(|s| s.state == TaskPhase::Running);
        for a in &t.networks {
            if !self.joined.contains(&a.network_id) {
                continue;
            }
            let record = EndpointRecord {
                task_id: t.id.clone(),
                task_name: t.name.clone(),
                service_id: t.service_id.clone(),
                service_name: t.service_name.clone(),
                node_id: self.cfg.node_id.clone(),
                addr: a.addr.clone(),
                mac: a.mac.clone(),
                vtep: self.cfg.underlay_ip,
                aliases: a.aliases.clone(),
                vip: a.vip.clone(),
                dnsrr: t.endpoint_mode() == mesh_proto::EndpointMode::Dnsrr,
                running,
                ports: if self.is_ingress(&a.network_id) {
                    ingress_ports(t)
                } else {
                    Vec::new()
                },
            };
            let known = self.published.get(&t.id).and_then(|m| m.get(&a.network_id));
            if known == Some(&record) {
                continue;
            }
            match g.upsert_local(&a.network_id, &t.id, record.encode()) {
                Ok(()) => {
                    if self
                        .endpoints
                        .upsert(&a.network_id, &self.cfg.node_id, record.clone())
                    {
                        self.dirty.insert(a.network_id.clone());
                    }
                    self.published
                        .entry(t.id.clone())
                        .or_default()
                        .insert(a.network_id.clone(), record);
                }
                Err(e) => warn!(task = %t.id, error = %e, "cannot publish endpoint record"),
            }
        }
    }

    /// The record of this node's ingress sandbox on the ingress network: it
    /// makes the sandbox reachable over the overlay (other nodes program
    /// its address) and tells tasks where routed connections may enter.
    /// A record with no service is a sandbox.
    fn publish_ingress_sandbox(&mut self) {
        let (Some(a), Some(g)) = (self.ingress.clone(), self.gossip.clone()) else {
            return;
        };
        if !self.joined.contains(&a.network_id) {
            return;
        }
        let record = EndpointRecord {
            task_id: format!("{INGRESS_SANDBOX}.{}", self.cfg.node_id),
            task_name: format!("{INGRESS_SANDBOX}.{}", self.cfg.hostname),
            service_id: String::new(),
            service_name: String::new(),
            node_id: self.cfg.node_id.clone(),
            addr: a.addr.clone(),
            mac: a.mac.clone(),
            vtep: self.cfg.underlay_ip,
            aliases: Vec::new(),
            vip: String::new(),
            dnsrr: false,
            running: false,
            ports: Vec::new(),
        };
        let key = record.task_id.clone();
        if self.published.get(&key).and_then(|m| m.get(&a.network_id)) == Some(&record) {
            return;
        }
        match g.upsert_local(&a.network_id, &key, record.encode()) {
            Ok(()) => {
                if self
                    .endpoints
                    .upsert(&a.network_id, &self.cfg.node_id, record.clone())
                {
                    self.dirty.insert(a.network_id.clone());
                }
                self.published
                    .entry(key)
                    .or_default()
                    .insert(a.network_id.clone(), record);
            }
            Err(e) => warn!(error = %e, "cannot publish the ingress sandbox record"),
        }
    }

    /// The ingress sandbox's load balancer (its routing: [`Worker::sync_ingress`]).
    fn setup_ingress_sandbox(&mut self) {
        let Some(a) = self.ingress.clone() else {
            return;
        };
        self.apply_lb(INGRESS_SANDBOX, &[a.network_id]);
    }

    /// Withdraws the task's endpoint records; true if it had any.
    fn unpublish(&mut self, task_id: &str) -> bool {
        let Some(networks) = self.published.remove(task_id) else {
            return false;
        };
        for scope in networks.keys() {
            if self.endpoints.remove(scope, &self.cfg.node_id, task_id) {
                self.dirty.insert(scope.clone());
            }
            if let Some(g) = &self.gossip
                && let Err(e) = g.delete_local(scope, task_id)
            {
                warn!(task = task_id, error = %e, "cannot withdraw endpoint record");
            }
        }
        true
    }

    /// Stops serving DNS in the task's namespace and forgets its load balancer.
    async fn detach_services(&mut self, task_id: &str) {
        self.lb_applied.remove(task_id);
        let dns = self.dns.clone();
        let id = task_id.to_string();
        let _ = self
            .cfg
            .runtime
            .spawn(async move { dns.detach(&id).await })
            .await;
    }

    /// Pushes changed records into DNS and into the load balancer of every
    /// local task attached to a changed network. Each task's balancer is
    /// diffed against what it holds, so a change costs that change.
    fn refresh_services(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        if let Some(a) = &self.ingress
            && dirty.contains(&a.network_id)
        {
            self.ingress_stale = true;
        }
        let table = self.dns.table();
        for network in &dirty {
            let entries = self.endpoints.dns_entries(network);
            table.update(|t| {
                if entries.is_empty() {
                    t.remove_network(network);
                } else {
                    t.set_network(network, entries);
                }
            });
        }
        let local: Vec<(String, Vec<String>)> = self
            .lb_applied
            .keys()
            .filter_map(|id| self.tasks.get(id))
            .map(|t| {
                (
                    t.id.clone(),
                    t.networks
                        .iter()
                        .map(|a| a.network_id.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, nets)| nets.iter().any(|n| dirty.contains(n)))
            .collect();
        let mut local = local;
        if let Some(a) = &self.ingress
            && dirty.contains(&a.network_id)
            && self.lb_applied.contains_key(INGRESS_SANDBOX)
        {
            local.push((INGRESS_SANDBOX.to_string(), vec![a.network_id.clone()]));
        }
        for (id, nets) in local {
            self.apply_lb(&id, &nets);
        }
    }

    /// Brings one task's load balancer to what the records say, and flushes
    /// conntrack entries of backends it no longer has.
    fn apply_lb(&mut self, task_id: &str, networks: &[String]) -> bool {
        let Ok(tid) = TaskId::new(task_id.to_string()) else {
            return false;
        };
        let ns = self.desired.prefix.task_netns(&tid);
        if let Err(e) = Netns::open(&ns) {
            debug!(task = task_id, error = %e, "no namespace for the load balancer yet");
            return false;
        }
        let desired = self.endpoints.lb_table(networks);
        let applied = self.lb_applied.get(task_id);
        let result = match applied {
            Some(applied) => {
                let changes = lb::plan(&desired, applied);
                self.lb.apply(&ns, &changes).map(|()| changes)
            }
            None => lb::reconcile(self.lb.as_ref(), &ns, &desired),
        };
        match result {
            Ok(changes) => {
                let before = applied.map(LbTable::backends).unwrap_or_default();
                let gone: BTreeSet<Ipv4Addr> =
                    before.difference(&desired.backends()).copied().collect();
                if !gone.is_empty() {
                    // After the drain: connections opened just before the change (even
                    // half-open ones) must finish; flows left after it (UDP, a dead node's)
                    // must not stick to a backend that is gone.
                    let at = tokio::time::Instant::now() + self.cfg.drain;
                    self.flushes.push((at, (task_id.to_string(), gone)));
                }
                if !changes.is_empty() {
                    debug!(
                        task = task_id,
                        changes = changes.len(),
                        "load balancer updated"
                    );
                }
                self.lb_applied.insert(task_id.to_string(), desired);
                true
            }
            Err(e) => {
                warn!(task = task_id, error = %e, "cannot program the load balancer; retrying");
                self.lb_applied.remove(task_id);
                false
            }
        }
    }

    fn on_record(&mut self, ev: RecordEvent) {
        if ev.owner == self.cfg.node_id {
            return;
        }
        let key = (ev.scope.clone(), ev.owner.clone(), ev.key.clone());
        match ev.kind {
            RecordEventKind::Upsert(value) => {
                let Some(record) = EndpointRecord::decode(&value) else {
                    warn!(scope = %ev.scope, key = %ev.key, "undecodable endpoint record");
                    return;
                };
                if record.task_id == ev.key
                    && self.endpoints.upsert(&ev.scope, &ev.owner, record.clone())
                {
                    self.dirty.insert(ev.scope.clone());
                }
                let Some(n) = self.networks.get(&ev.scope) else {
                    return;
                };
                let (Ok(vni), Some(ip)) = (Vni::new(n.vni), record.ip()) else {
                    return;
                };
                if !self.desired.networks.contains_key(&vni) {
                    return;
                }
                let Some(mac) = parse_mac(&record.mac) else {
                    return;
                };
                if let Some(old) = self.remotes.get(&key).copied()
                    && old != (vni, ip)
                    && let Err(e) =
                        overlay::remove_remote(&self.dp, &mut self.desired, old.0, old.1)
                {
                    warn!(error = %e, "cannot remove a moved remote endpoint");
                }
                let remote = RemoteEndpoint {
                    vni,
                    ip,
                    mac,
                    vtep: record.vtep,
                };
                match overlay::ensure_remote(&self.dp, &mut self.desired, remote) {
                    Ok(()) => {
                        debug!(scope = %ev.scope, %ip, vtep = %record.vtep, "remote endpoint programmed");
                        self.remotes.insert(key, (vni, ip));
                    }
                    Err(e) => {
                        warn!(scope = %ev.scope, %ip, error = %e, "cannot program remote endpoint")
                    }
                }
            }
            RecordEventKind::Removed => {
                if self.endpoints.remove(&ev.scope, &ev.owner, &ev.key) {
                    self.dirty.insert(ev.scope.clone());
                }
                let Some((vni, ip)) = self.remotes.remove(&key) else {
                    return;
                };
                // The task is draining: connections opened before its withdrawal reached our
                // load balancers must still reach it, so its entries go after the drain.
                let at = tokio::time::Instant::now() + self.cfg.drain;
                self.withdrawals.push((at, (vni, ip)));
            }
        }
    }

    /// Work whose drain is over: conntrack flushes of removed backends, and
    /// the FDB and neighbor entries of withdrawn remote endpoints (unless a
    /// newer endpoint holds the address).
    fn run_due(&mut self) {
        let now = tokio::time::Instant::now();
        for (task_id, gone) in take_due(&mut self.flushes, now) {
            // Backends that came back since are kept.
            let current = self
                .lb_applied
                .get(&task_id)
                .map(LbTable::backends)
                .unwrap_or_default();
            let gone: BTreeSet<Ipv4Addr> = gone.difference(&current).copied().collect();
            let Ok(tid) = TaskId::new(task_id.clone()) else {
                continue;
            };
            let Ok(ns) = Netns::open(&self.desired.prefix.task_netns(&tid)) else {
                continue;
            };
            if !gone.is_empty()
                && let Err(e) = self.lb.flush_conntrack(ns.name(), &gone)
            {
                warn!(task = %task_id, error = %e, "cannot flush conntrack of removed backends");
            }
        }
        for (vni, ip) in take_due(&mut self.withdrawals, now) {
            if self.remotes.values().any(|r| *r == (vni, ip)) {
                debug!(%ip, "withdrawn address reused by a newer endpoint; kept");
                continue;
            }
            match overlay::remove_remote(&self.dp, &mut self.desired, vni, ip) {
                Ok(()) => debug!(%ip, "remote endpoint withdrawn"),
                Err(e) => warn!(%ip, error = %e, "cannot withdraw remote endpoint"),
            }
        }
    }

    /// The next instant the actor has timed work for: a drain ending, or work waiting for one.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.draining
            .values()
            .copied()
            .chain(self.withdrawals.iter().map(|(at, _)| *at))
            .chain(self.flushes.iter().map(|(at, _)| *at))
            .min()
    }

    /// Leaving the cluster: every task stopped, the overlay removed.
    async fn tear_down(&mut self) {
        for (id, _) in self.runtime.list() {
            self.unpublish(&id);
            self.detach_services(&id).await;
            if let Err(e) = self.runtime.remove(&id).await {
                warn!(task = %id, error = %e, "cannot stop task");
            }
        }
        if let Some(g) = self.gossip.clone() {
            for scope in std::mem::take(&mut self.joined) {
                let _ = g.leave_scope(&scope);
            }
        }
        self.tear_down_ingress();
        self.desired.tasks.clear();
        self.desired.networks.clear();
        self.desired.remotes.clear();
        if let Err(e) = overlay::reconcile(&self.dp, &self.desired) {
            warn!(error = %e, "cannot remove the overlay");
        }
    }
}

/// The ports a task's service publishes through the routing mesh.
fn ingress_ports(t: &Task) -> Vec<record::PublishedPort> {
    t.ports
        .iter()
        .filter(|p| p.publish_mode() == mesh_proto::PublishMode::Ingress)
        .filter_map(|p| {
            Some(record::PublishedPort {
                udp: p.protocol() == mesh_proto::PortProtocol::Udp,
                published: u16::try_from(p.published_port).ok()?,
                target: u16::try_from(p.target_port).ok()?,
            })
        })
        .collect()
}

pub(crate) fn is_final(s: TaskState) -> bool {
    mesh_common::task::is_terminal(s)
}

fn prefix_len(subnet: &str) -> u8 {
    subnet
        .split('/')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(24)
}

fn parse_mac(text: &str) -> Option<Mac> {
    let bytes: Vec<u8> = text
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

/// The items of `queue` due at `now`, taken out of it in order.
fn take_due<T>(queue: &mut Vec<(tokio::time::Instant, T)>, now: tokio::time::Instant) -> Vec<T> {
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(queue)
        .into_iter()
        .partition(|(at, _)| *at <= now);
    *queue = later;
    due.into_iter().map(|(_, item)| item).collect()
}

/// Resolves at `until`; never if `None`.
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
