//! The worker: turns the tasks the leader assigned to this node into running processes on
//! overlay networks, and keeps the node's view of other nodes' endpoints current.
//!
//! It is one actor on a thread of its own (the kernel calls block, and a reconcile must never
//! interleave with an incremental FDB change: one owner of the desired state and the kernel
//! makes that true by construction). It reacts to:
//! - assignments from the agent's session (the full set first, deltas after);
//! - gossip record events: remote endpoints to program or withdraw;
//! - task state changes from the runtime, reported to the leader;
//! - a periodic tick that repairs drift and retries what failed.
//!
//! Order when a task starts: network sandbox and task sandbox, then its endpoint records are
//! published, then the process starts. When it stops: its records are withdrawn first, then
//! (after the drain) the process is stopped, then the sandboxes go. Nothing is touched before
//! the first full assignment set arrives, so a restarted agent adopts running tasks instead
//! of tearing them down.
//!
//! The worker is handed everything it changes: a [`mesh_dataplane::Kernel`], a [`Runtime`]
//! for task processes, [`Resolvers`] for the tasks' DNS servers, a [`RecordSource`] for the
//! gossip plane, and a [`StatusSink`] for reports; [`LinuxWorkers`] gives it the real ones,
//! and the fakes (feature `test-util`) let it run in memory.
//!
//! # Layout
//! - [`actor`]: the actor and the order of its steps.
//! - [`assigned`]: what the leader assigned.
//! - [`sandboxes`]: the overlay intent (network and task sandboxes, remote endpoints).
//! - [`endpoints`]: every endpoint known, typed, and what is derived from it (LB backends,
//!   DNS entries, published ports, ingress sandboxes).
//! - [`record`]: the endpoint record on the wire and its parsing into [`record::Endpoint`].
//! - [`publications`]: this node's own records and the gossip scopes it joined.
//! - [`services`]: the DNS server and load balancer of each local sandbox.
//! - [`balancers`]: each local sandbox's load balancer and the conntrack flushes after drains.
//! - [`ingress`]: the routing mesh's desired state and its sync.
//! - [`launch`]: a task's launch spec.
//! - [`reports`]: status reports to the leader.
//! - [`env`]: the traits of what the worker is given, with the real implementations.
//! - `fake` (feature `test-util`): in-memory implementations.
//! - [`timers`]: deadlines of drains.

pub mod actor;
pub mod assigned;
pub mod balancers;
pub mod endpoints;
pub mod env;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod ingress;
pub mod inspect;
pub mod launch;
pub mod publications;
pub mod record;
pub mod reports;
pub mod sandboxes;
pub mod services;
pub mod timers;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use mesh_common::NodeId;
use mesh_common::channels::{ChannelProvider, TlsChannels};
use mesh_common::leader::leader_hint;
use mesh_common::metrics::{DnsMetrics, WorkerMetrics};
use mesh_dataplane::Kernel;
use mesh_dataplane::kernel::LinuxKernel;
use mesh_dataplane::lb::Backend;
use mesh_dataplane::overlay::Prefix;
use mesh_proto::dispatcher_client::DispatcherClient;
use mesh_proto::{
    Assignments, NetworkAttachment, Peer, RoutedPort, TaskStatusUpdate, UpdateTaskStatusRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::dns::{DnsConfig, DnsManager};
use crate::membership::Membership;
use crate::runtime::TaskRuntime;
use actor::Worker;

pub use env::{RecordSource, Records, Resolvers, Runtime, StatusSink};
pub use sandboxes::INGRESS_SANDBOX;

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
    /// Longest wait between restarts of a task that keeps failing quickly.
    pub restart_backoff_max: Duration,
    /// Between withdrawing a task from every load balancer and stopping it, so requests in
    /// flight elsewhere finish and no new one reaches it.
    pub drain: Duration,
    /// Load-balancing backend: `None` picks IPVS when the kernel has it, nftables otherwise.
    pub lb_backend: Option<String>,
    /// Ports this node's agent uses itself (control, gossip): never published, whatever an
    /// assignment says.
    pub reserved_ports: Vec<u16>,
    /// The daemon's runtime: the DNS servers of the tasks run there, not on the worker's own
    /// thread (which blocks on kernel calls).
    pub runtime: tokio::runtime::Handle,
    /// Where the worker exports its reconciles, load balancers, overlay and tasks.
    pub metrics: WorkerMetrics,
    /// Where the tasks' DNS servers export their queries (used by [`LinuxWorkers`]; the
    /// fakes answer nothing).
    pub dns_metrics: DnsMetrics,
}

/// Status updates sent in one report (the dispatcher refuses more than 1024).
const STATUS_UPDATES_PER_REPORT: usize = 256;

/// Where status reports go: the manager the agent's session is connected to.
#[derive(Clone)]
pub struct Reporter {
    pub channels: Arc<TlsChannels>,
    pub upstream: watch::Receiver<Option<String>>,
}

#[async_trait]
impl StatusSink for Reporter {
    async fn send(&self, updates: Vec<TaskStatusUpdate>) -> Result<(), String> {
        let Some(mut target) = self.upstream.borrow().clone() else {
            return Err("no session with the leader".into());
        };
        // The dispatcher takes at most MAX_STATUS_UPDATES per report.
        'chunks: for chunk in updates.chunks(STATUS_UPDATES_PER_REPORT) {
            for _ in 0..2 {
                let ch = self.channels.channel(&target).map_err(|e| e.to_string())?;
                let req = UpdateTaskStatusRequest {
                    updates: chunk.to_vec(),
                };
                match DispatcherClient::new(ch).update_task_status(req).await {
                    Ok(_) => continue 'chunks,
                    Err(s) => match leader_hint(&s) {
                        Some(leader) if leader != target => target = leader,
                        _ => return Err(s.message().to_string()),
                    },
                }
            }
            return Err("the managers keep redirecting".into());
        }
        Ok(())
    }
}

/// What one session message tells the worker: the assignments (the full set first, deltas
/// after) and the cluster-wide facts it needs whole every time.
#[derive(Clone, Debug, Default)]
pub struct Session {
    pub assignments: Assignments,
    /// The cluster's VXLAN port (0: not known).
    pub data_port: u16,
    /// This node's ingress-sandbox address.
    pub ingress: Option<NetworkAttachment>,
    /// Every node of the cluster (their ingress sandboxes included).
    pub peers: Vec<Peer>,
    /// Every port published through the routing mesh.
    pub routed: Vec<RoutedPort>,
    /// The name and aliases of every service of the cluster (for DNS: names a task may not
    /// see are still the cluster's, never asked upstream).
    pub service_names: Vec<String>,
}

pub(crate) enum Msg {
    Session(Box<Session>),
    Stop {
        cleanup: bool,
        done: oneshot::Sender<()>,
    },
    /// `mesh network inspect --verbose`: the kernel's state of a network here.
    InspectNetwork {
        network_id: String,
        vni: u32,
        reply: oneshot::Sender<mesh_proto::NodeNetworkState>,
    },
}

/// The handle the daemon keeps.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::UnboundedSender<Msg>,
    runtime: Arc<dyn Runtime>,
    tasks: Arc<RwLock<BTreeMap<String, String>>>,
}

impl WorkerHandle {
    /// Hands the worker what a session message said.
    pub fn session(&self, session: Session) {
        let _ = self.tx.send(Msg::Session(Box::new(session)));
    }

    /// Stops the worker. With `cleanup`, every task is stopped and the overlay removed
    /// (leaving the cluster); without, tasks keep running for the next start of the agent to
    /// adopt.
    pub async fn stop(&self, cleanup: bool) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Stop { cleanup, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// This node's kernel state of a network against what the worker wants there; `None` if
    /// the worker is gone.
    pub async fn inspect_network(
        &self,
        network_id: String,
        vni: u32,
    ) -> Option<mesh_proto::NodeNetworkState> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::InspectNetwork {
                network_id,
                vni,
                reply,
            })
            .ok()?;
        answer.await.ok()
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
        let backend = match &config.lb_backend {
            Some(name) => Some(name.parse::<Backend>().context("load-balancing backend")?),
            None => None,
        };
        let kernel =
            LinuxKernel::current(backend).context("cannot open this node's network namespace")?;
        info!(backend = %kernel.backend(), "load balancing backend");
        let runtime = Arc::new(TaskRuntime::new(
            config.tasks_dir.clone(),
            config.shim_binary.clone(),
        ));
        let dns_config = DnsConfig::from_host().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the host's resolvers; names outside the cluster will not resolve");
            DnsConfig::with_upstreams(Vec::new())
        });
        let dns = Arc::new(DnsManager::with_metrics(
            dns_config,
            config.dns_metrics.clone(),
        ));
        spawn(
            config,
            Parts {
                kernel,
                runtime,
                dns,
                records: membership,
                sink: Arc::new(reporter),
            },
        )
    }
}

/// What a worker is made of.
pub struct Parts<K, R: ?Sized, D: ?Sized, S> {
    pub kernel: K,
    pub runtime: Arc<R>,
    pub dns: Arc<D>,
    pub records: S,
    pub sink: Arc<dyn StatusSink>,
}

/// Starts a worker made of `parts` on a thread of its own.
pub fn spawn<K, R, D, S>(
    config: WorkerConfig,
    parts: Parts<K, R, D, S>,
) -> anyhow::Result<WorkerHandle>
where
    K: Kernel + Send + 'static,
    R: Runtime,
    D: Resolvers + ?Sized,
    S: RecordSource,
{
    let prefix = Prefix::new(config.netns_prefix.clone()).context("netns prefix")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let names = Arc::new(RwLock::new(BTreeMap::new()));
    let handle = WorkerHandle {
        tx,
        runtime: parts.runtime.clone(),
        tasks: names.clone(),
    };
    let services = services::Services::new(parts.dns, config.runtime.clone(), config.drain);
    let worker = Worker {
        services,
        me: NodeId::new(config.node_id.clone()),
        sandboxes: sandboxes::Sandboxes::new(prefix, config.underlay_ip),
        cfg: config,
        kernel: parts.kernel,
        runtime: parts.runtime,
        source: parts.records,
        gossip: None,
        sink: parts.sink,
        names,
        assigned: Default::default(),
        endpoints: Default::default(),
        publications: Default::default(),
        mesh: Default::default(),
        reports: Default::default(),
        dirty: Default::default(),
        mesh_stale: false,
        draining: Default::default(),
        withdrawals: Vec::new(),
        settled: false,
        started: tokio::time::Instant::now(),
        tasks_stale: true,
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
