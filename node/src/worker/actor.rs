//! The worker actor: one owner of this node's desired state and of the kernel, driven by its
//! inputs (see the module doc of [`super`]). Each job's state lives in its own small struct;
//! this file is the order in which they are used.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use mesh_common::{NetworkId, NodeId};
use mesh_dataplane::Kernel;
use mesh_dataplane::overlay::{RemoteEndpoint, TaskId, Vni};
use mesh_gossip::{RecordEvent, RecordEventKind};
use mesh_proto::{Task, TaskState};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::assigned::Assigned;
use super::endpoints::{EndpointTable, RecordChange, Upserted};
use super::env::{RecordSource, Records, Resolvers, Runtime, StatusSink, netns_path};
use super::ingress::{self, MeshInputs, MeshState};
use super::launch::{Host, launch_spec};
use super::publications::Publications;
use super::record::Endpoint;
use super::reports::{Reports, status, status_of};
use super::sandboxes::{INGRESS_SANDBOX, Sandboxes};
use super::services::{Ctx, Services};
use super::timers::{recv_opt, sleep_until, take_due};
use super::{Msg, WorkerConfig};
use crate::runtime;

/// The services' view of the worker's parts (a macro: the fields are borrowed apart from
/// the services they are given to).
/// The most gossip records applied before the load balancers and DNS are refreshed: a burst
/// costs one refresh per this many records, and other work waits at most that long.
const RECORD_BATCH: usize = 1024;

/// How many task processes a node launches at once.
const PARALLEL_STARTS: usize = 8;

macro_rules! ctx {
    ($w:ident) => {
        Ctx {
            kernel: &$w.kernel,
            endpoints: &$w.endpoints,
            sandboxes: &$w.sandboxes,
            keep: !$w.settled,
        }
    };
}

/// What the worker is made of: the kernel and the injected parts.
pub struct Worker<K, R: ?Sized, D: ?Sized, S: RecordSource> {
    pub(super) cfg: WorkerConfig,
    pub(super) me: NodeId,
    pub(super) kernel: K,
    pub(super) runtime: Arc<R>,
    pub(super) source: S,
    pub(super) gossip: Option<S::Plane>,
    pub(super) sink: Arc<dyn StatusSink>,
    pub(super) names: Arc<RwLock<BTreeMap<String, String>>>,
    pub(super) assigned: Assigned,
    pub(super) sandboxes: Sandboxes,
    pub(super) endpoints: EndpointTable,
    pub(super) publications: Publications,
    pub(super) services: Services<D>,
    pub(super) mesh: MeshState,
    pub(super) reports: Reports,
    /// Networks whose endpoints changed since services were last refreshed.
    pub(super) dirty: BTreeSet<NetworkId>,
    /// Whether what the routing mesh derives from may have changed.
    pub(super) mesh_stale: bool,
    /// Tasks withdrawn from load balancers and DNS, stopped once their drain ends.
    pub(super) draining: BTreeMap<String, Instant>,
    /// Remote endpoints withdrawn by their owners, removed once the drain ends.
    pub(super) withdrawals: Vec<(Instant, (NetworkId, Vni, Ipv4Addr))>,
    /// Whether the endpoint table holds the cluster's view (see [`Worker::check_settled`]);
    /// until then load balancers only gain backends.
    pub(super) settled: bool,
    pub(super) started: Instant,
    /// Whether a task's state may have changed since the tasks were last exported.
    pub(super) tasks_stale: bool,
}

/// Longest a restarted agent keeps what its load balancers hold before trusting a partial
/// endpoint table.
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(10);

impl<K, R, D, S> Worker<K, R, D, S>
where
    K: Kernel + Send + 'static,
    R: Runtime + ?Sized,
    D: Resolvers + ?Sized,
    S: RecordSource,
{
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let adopted = self.runtime.adopt().await;
        if !adopted.is_empty() {
            info!(tasks = adopted.len(), "adopted running tasks");
        }
        let mut task_events = self.runtime.watch();
        match self
            .kernel
            .overlay()
            .observe(&self.sandboxes.desired.scope())
        {
            Ok(observed) => {
                let ids: Vec<TaskId> = adopted
                    .iter()
                    .filter_map(|id| TaskId::new(id.clone()).ok())
                    .collect();
                self.sandboxes.adopt(&observed, &ids);
                self.sandboxes.adopt_remotes(&observed);
            }
            Err(e) => warn!(error = %e, "cannot observe the overlay at start"),
        }
        let mut tick = tokio::time::interval(self.cfg.reconcile_interval);
        let mut records: Option<mpsc::UnboundedReceiver<RecordEvent>> = None;
        loop {
            if records.is_none()
                && let Some(g) = self.source.plane()
            {
                records = Some(g.subscribe());
                self.gossip = Some(g);
                self.sync_all_scopes();
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Session(session)) => {
                        self.assigned.apply(*session);
                        self.assigned.sync_cluster_names(&self.services.dns.table());
                        self.converge().await;
                    }
                    Some(Msg::InspectNetwork { network_id, vni, reply }) => {
                        let _ = reply.send(self.inspect_network(&network_id, vni));
                    }
                    Some(Msg::Stop { cleanup, done }) => {
                        if cleanup {
                            self.tear_down().await;
                        }
                        self.cfg.metrics.stopped();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                Some(ev) = recv_opt(&mut records) => {
                    // Records that arrived together are applied together: the load
                    // balancers and DNS are refreshed once for the whole batch.
                    self.on_record(ev);
                    if let Some(rx) = records.as_mut() {
                        for _ in 1..RECORD_BATCH {
                            match rx.try_recv() {
                                Ok(ev) => self.on_record(ev),
                                Err(_) => break,
                            }
                        }
                    }
                }
                ev = task_events.recv() => match ev {
                    Ok((id, st)) => self.on_task_state(&id, &st),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.refresh_states(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.converge().await,
                _ = sleep_until(self.next_deadline()) => {
                    // A task whose drain is over is stopped by a converge; the rest is
                    // run_due's.
                    let now = Instant::now();
                    let drained = self.draining.values().any(|until| *until <= now);
                    self.run_due();
                    if drained {
                        self.converge().await;
                    }
                }
            }
            self.check_settled();
            self.refresh_services();
            if std::mem::take(&mut self.mesh_stale) {
                self.sync_mesh();
            }
            self.reports.flush(self.sink.as_ref()).await;
            self.export_metrics();
        }
    }

    /// What the metrics show of the overlay and of this node's tasks (the load balancers'
    /// backends follow each refresh, in [`Worker::refresh_services`]).
    fn export_metrics(&mut self) {
        let m = &self.cfg.metrics;
        m.set_fdb_entries(self.sandboxes.desired.remotes.len());
        if std::mem::take(&mut self.tasks_stale) {
            let me = self.cfg.node_id.as_str();
            let reports = &self.reports;
            m.set_tasks(
                self.assigned
                    .tasks
                    .values()
                    .filter(|t| t.node_id == me)
                    .map(|t| match reports.last(&t.id) {
                        Some(s) => s.state(),
                        None => mesh_common::task::observed_state(t),
                    }),
            );
        }
    }

    /// An agent that starts knows only what its kernel holds and what the leader assigns;
    /// the endpoints of other nodes arrive by gossip. Until every scope it joined has been
    /// exchanged in full with another member (or [`SETTLE_MAX`] passed), its load balancers
    /// keep what they hold and only gain backends; then every network is refreshed, and what
    /// is gone goes.
    fn check_settled(&mut self) {
        if self.settled || !self.assigned.have_full {
            return;
        }
        let Some(g) = &self.gossip else { return };
        let joined = self.publications.joined_scopes();
        let synced = joined.iter().all(|s| g.scope_synced(s.as_str()));
        if !synced && self.started.elapsed() < SETTLE_MAX {
            return;
        }
        self.settled = true;
        info!(after = ?self.started.elapsed(), synced, "endpoints settled: load balancers and remote endpoints now follow them exactly");
        let wanted: BTreeSet<(Vni, Ipv4Addr)> = joined
            .iter()
            .filter_map(|n| Some((n, self.local_vni(n)?)))
            .flat_map(|(n, vni)| {
                self.endpoints
                    .remotes(n, &self.me)
                    .map(move |e| (vni, e.ip()))
            })
            .collect();
        self.sandboxes
            .settle_remotes(&self.kernel, |vni, ip| wanted.contains(&(vni, ip)));
        self.dirty.extend(joined);
    }

    /// Queues a status report of a task the leader assigned.
    fn queue(&mut self, task_id: &str, s: mesh_proto::TaskStatus) {
        if self.assigned.tasks.contains_key(task_id) {
            self.reports.queue(task_id, s);
        }
    }

    fn on_task_state(&mut self, id: &str, st: &runtime::TaskState) {
        self.tasks_stale = true;
        if let Some(t) = self.assigned.tasks.get(id).cloned()
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

    /// Makes the node match the assignments (see [`Worker::converge_now`]), timed in the
    /// metrics.
    async fn converge(&mut self) {
        if !self.assigned.have_full {
            return;
        }
        let start = Instant::now();
        let failed = self.converge_now().await;
        self.cfg.metrics.reconciled(start.elapsed(), failed);
        self.tasks_stale = true;
    }

    /// Makes the node match the assignments. Order when a task starts: network and task
    /// sandboxes, then its endpoint records, then its process. When it stops: its records
    /// are withdrawn first, then (after the drain) the process, then the sandboxes. True if
    /// the overlay could not be reconciled (retried at the next tick).
    async fn converge_now(&mut self) -> bool {
        // Tasks, sandboxes and networks may change here; the routing mesh follows (and
        // whatever failed there last time is retried).
        self.mesh_stale = true;
        let wanted = self.assigned.wanted(&self.cfg.node_id);
        let wanted_ids: BTreeSet<&str> = wanted.iter().map(|t| t.id.as_str()).collect();
        *self.names.write().expect("task names lock poisoned") = wanted
            .iter()
            .map(|t| (t.id.clone(), t.name.clone()))
            .collect();
        self.reports
            .retain(|id| self.assigned.tasks.contains_key(id));

        // 1. Stop what is no longer wanted: withdraw it from every load balancer and DNS
        // first (its records), let requests drain, then stop the process. The drain is a
        // deadline, not a sleep: the actor keeps applying other nodes' withdrawals meanwhile.
        let running: Vec<String> = self.runtime.list().into_iter().map(|(id, _)| id).collect();
        let leaving: Vec<&String> = running
            .iter()
            .filter(|id| !wanted_ids.contains(id.as_str()))
            .collect();
        let now = Instant::now();
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
            self.services.detach(id).await;
            if let Err(e) = self.runtime.remove(id).await {
                warn!(task = %id, error = %e, "cannot stop task");
                continue;
            }
            info!(task = %id, "task stopped");
            self.queue(id, status(TaskState::Shutdown, "stopped"));
        }
        let stopped: Vec<String> = self
            .assigned
            .tasks
            .values()
            .filter(|t| t.desired_state() != TaskState::Running && !running.contains(&t.id))
            .filter(|t| {
                !t.status
                    .as_ref()
                    .is_some_and(|s| mesh_common::task::is_terminal(s.state()))
            })
            .map(|t| t.id.clone())
            .collect();
        for id in stopped {
            self.unpublish(&id);
            self.queue(&id, status(TaskState::Shutdown, "stopped"));
        }
        for key in self.publications.keys() {
            if !wanted_ids.contains(key.as_str()) {
                self.unpublish(&key);
            }
        }

        // 2. Sandboxes for what is wanted, and for what drains (its process still answers
        // the connections that reach it meanwhile).
        let draining: BTreeSet<TaskId> = self
            .draining
            .keys()
            .filter_map(|id| TaskId::new(id.clone()).ok())
            .collect();
        self.sandboxes
            .plan(&self.kernel, &self.assigned, &wanted, &draining);
        let failed = self.sandboxes.reconcile(&self.kernel).err();
        if let Some(e) = &failed {
            warn!(error = %e, "overlay reconcile failed; retrying on the next tick");
        }

        // 3. Gossip scopes and our endpoint records.
        self.follow_scopes();
        for t in &wanted {
            self.publish(t);
        }
        self.sync_peer_sandboxes();
        if failed.is_none()
            && let Some(a) = self.assigned.ingress.clone()
            && !self.services.balancers.has(INGRESS_SANDBOX)
        {
            let ctx = ctx!(self);
            let ingress = [NetworkId::new(a.network_id)];
            self.services.apply_lb(&ctx, INGRESS_SANDBOX, &ingress);
        }

        // 4. Processes: each task prepared in turn, their processes launched together.
        let mut launches = Vec::new();
        for t in &wanted {
            if let Some(e) = &failed {
                if self.runtime.state(&t.id).is_none() {
                    let waiting = format!("waiting for its network: {e}");
                    self.queue(&t.id, status(TaskState::Starting, waiting));
                }
                continue;
            }
            match self.runtime.state(&t.id) {
                Some(st) if st.ended_from_outside() => {
                    // Its supervisor died with the host (a container restart, a kill) or was
                    // told to stop by something other than this agent (the host shutting
                    // down): the task did nothing wrong and is still wanted here, so it
                    // starts again.
                    info!(task = %t.id, name = %t.name, why = %st.message, "the task ended from outside; starting it again");
                    self.services.detach(&t.id).await;
                    match self.runtime.remove(&t.id).await {
                        Ok(()) => {
                            if let Some(spec) = self.prepare_start(t).await {
                                launches.push((t.clone(), spec));
                            }
                        }
                        Err(e) => {
                            warn!(task = %t.id, error = %e, "cannot clear the task's old run")
                        }
                    }
                }
                Some(st) if st.done => self.queue(&t.id, status_of(&st)),
                Some(st) => {
                    // Adopted after an agent restart, or a retry after a failure.
                    if !self.services.balancers.has(&t.id)
                        && let Err(e) = self.attach_services(t).await
                    {
                        warn!(task = %t.id, error = %e, "cannot attach DNS and load balancer");
                    }
                    self.queue(&t.id, status_of(&st));
                }
                None => {
                    if let Some(spec) = self.prepare_start(t).await {
                        launches.push((t.clone(), spec));
                    }
                }
            }
        }
        self.launch(launches).await;
        failed.is_some()
    }

    fn mesh_inputs(&self) -> MeshInputs<'_> {
        MeshInputs {
            node_id: &self.cfg.node_id,
            reserved_ports: &self.cfg.reserved_ports,
            assigned: &self.assigned,
            sandboxes: &self.sandboxes,
            kernel: &self.kernel,
        }
    }

    fn sync_mesh(&mut self) {
        let desired = ingress::desired_mesh(&self.mesh_inputs());
        self.mesh.sync(&self.kernel, &desired);
    }

    /// Everything a task's start needs before its process: checks, its status, its DNS and
    /// load balancer. The spec to launch, or `None` (the reason is queued).
    async fn prepare_start(&mut self, t: &Task) -> Option<runtime::TaskSpec> {
        let rejected = |why: String| {
            let mut s = status(TaskState::Rejected, "rejected");
            s.err = why;
            s
        };
        if let Some(reason) = ingress::host_port_conflict(&self.mesh_inputs(), t) {
            self.queue(&t.id, rejected(reason));
            return None;
        }
        let Some(netns) = self.sandboxes.netns(&t.id) else {
            self.queue(&t.id, rejected(format!("task id {:?} is not usable", t.id)));
            return None;
        };
        let netns = netns_path(&netns);
        let host = Host {
            node_id: &self.cfg.node_id,
            hostname: &self.cfg.hostname,
            netns: &netns,
            shim_binary: &self.cfg.shim_binary,
            backoff_max: self.cfg.restart_backoff_max,
        };
        let spec = match launch_spec(t, &host) {
            Ok(s) => s,
            Err(e) => {
                self.queue(&t.id, rejected(e));
                return None;
            }
        };
        self.queue(&t.id, status(TaskState::Starting, "starting"));
        if let Err(e) = self.attach_services(t).await {
            let waiting = format!("waiting for its DNS and load balancer: {e}");
            self.queue(&t.id, status(TaskState::Starting, waiting));
            return None;
        }
        Some(spec)
    }

    /// Launches the processes of `specs`, up to [`PARALLEL_STARTS`] at a time: a node's new
    /// tasks start side by side, not one after the other.
    async fn launch(&mut self, specs: Vec<(Task, runtime::TaskSpec)>) {
        use futures::StreamExt;
        let runtime = self.runtime.clone();
        let results: Vec<(Task, Result<(), String>)> = futures::stream::iter(specs)
            .map(|(t, spec)| {
                let runtime = runtime.clone();
                async move { (t, runtime.start(spec).await) }
            })
            .buffer_unordered(PARALLEL_STARTS)
            .collect()
            .await;
        for (t, result) in results {
            match result {
                Ok(()) => info!(task = %t.id, name = %t.name, "task started"),
                Err(e) => {
                    let mut s = status(TaskState::Rejected, "rejected");
                    s.err = e;
                    self.queue(&t.id, s);
                }
            }
        }
    }

    async fn attach_services(&mut self, t: &Task) -> Result<(), String> {
        let ctx = ctx!(self);
        self.services.attach(&ctx, t).await
    }

    /// Pushes changed endpoints into DNS, the load balancers and (for the ingress network)
    /// the routing mesh.
    fn refresh_services(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        if let Some(a) = &self.assigned.ingress
            && dirty.contains(a.network_id.as_str())
        {
            self.mesh_stale = true;
        }
        let ctx = ctx!(self);
        self.services.refresh(&ctx, &self.assigned, &dirty);
        self.cfg
            .metrics
            .set_lb_backends(&self.endpoints.backends_per_service());
    }

    /// Joins the gossip scopes of the networks in use, leaves the others.
    fn follow_scopes(&mut self) {
        let Some(g) = self.gossip.clone() else { return };
        let wanted: BTreeSet<NetworkId> = self
            .assigned
            .networks
            .values()
            .filter(|n| Vni::new(n.vni).is_ok_and(|v| self.sandboxes.has_network(v)))
            .map(|n| NetworkId::new(n.id.clone()))
            .collect();
        let (joined, left) = self.publications.follow(&g, &wanted);
        for scope in joined {
            self.sync_scope(&g, &scope);
        }
        for scope in left {
            self.endpoints.remove_network(&scope);
            self.dirty.insert(scope);
        }
    }

    fn sync_all_scopes(&mut self) {
        let Some(g) = self.gossip.clone() else { return };
        let scopes: Vec<NetworkId> = self
            .assigned
            .networks
            .keys()
            .map(|id| NetworkId::new(id.clone()))
            .filter(|n| self.publications.joined(n))
            .collect();
        for scope in scopes {
            self.sync_scope(&g, &scope);
        }
    }

    /// Programs every record the scope already holds (on joining it).
    fn sync_scope(&mut self, g: &S::Plane, scope: &NetworkId) {
        for r in g.records(scope.as_str()) {
            self.on_record(RecordEvent {
                scope: r.scope.clone(),
                key: r.key.clone(),
                owner: r.owner.clone(),
                kind: RecordEventKind::Upsert(r.value.clone()),
            });
        }
    }

    /// This node's kernel state of a network (see [`super::inspect`]); a node with nothing
    /// of the network reports an empty state.
    fn inspect_network(&self, network_id: &str, vni: u32) -> mesh_proto::NodeNetworkState {
        let mut state = match Vni::new(vni) {
            Ok(vni) => {
                let subnet = self
                    .assigned
                    .networks
                    .get(network_id)
                    .and_then(|n| n.subnet.parse().ok());
                let lb_netns = self
                    .assigned
                    .wanted(&self.cfg.node_id)
                    .iter()
                    .filter(|t| t.networks.iter().any(|a| a.network_id == network_id))
                    .filter_map(|t| self.sandboxes.netns(&t.id))
                    .find(|ns| self.kernel.netns_exists(ns));
                super::inspect::network_state(&super::inspect::Parts {
                    kernel: &self.kernel,
                    sandboxes: &self.sandboxes,
                    endpoints: &self.endpoints,
                    network: &NetworkId::new(network_id.to_string()),
                    vni,
                    subnet,
                    lb_netns,
                })
            }
            Err(e) => mesh_proto::NodeNetworkState {
                error: format!("vni {vni}: {e}"),
                ..Default::default()
            },
        };
        state.node_id = self.cfg.node_id.clone();
        state.hostname = self.cfg.hostname.clone();
        state
    }

    /// Publishes `e` on `network` and records it in the endpoint table.
    fn publish_endpoint(&mut self, network: &NetworkId, e: Endpoint) {
        let Some(g) = self.gossip.clone() else { return };
        if self.publications.publish(&g, network, &e)
            && self.endpoints.upsert(network, &self.me, e) != Upserted::Unchanged
        {
            self.dirty.insert(network.clone());
        }
    }

    fn publish(&mut self, t: &Task) {
        // In load balancers and DNS only while it serves: running, and healthy if it has a
        // health check.
        let running = self.runtime.state(&t.id).is_some_and(|s| s.serving());
        for a in &t.networks {
            let Some(e) = Endpoint::of_task(t, a, &self.me, self.cfg.underlay_ip, running) else {
                warn!(task = %t.id, network = %a.network_id, "unusable network attachment");
                continue;
            };
            self.publish_endpoint(&NetworkId::new(a.network_id.clone()), e);
        }
    }

    /// The other nodes' ingress sandboxes, from the store, as remote endpoints.
    fn sync_peer_sandboxes(&mut self) {
        let Some(a) = self.assigned.ingress.clone() else {
            return;
        };
        if let Some(vni) = self.local_vni(&NetworkId::new(a.network_id.clone())) {
            let peers = self.assigned.ingress_sandboxes(&a.network_id);
            let others = peers.into_iter().filter(|p| p.3 != self.cfg.node_id);
            self.sandboxes
                .sync_peer_sandboxes(&self.kernel, vni, others);
        }
    }

    /// Withdraws the records of `key`; true if it had any.
    fn unpublish(&mut self, key: &str) -> bool {
        let networks = self.publications.unpublish(self.gossip.as_ref(), key);
        for network in &networks {
            if self.endpoints.remove(network, &self.me, key).is_some() {
                self.dirty.insert(network.clone());
            }
        }
        !networks.is_empty()
    }

    /// The VNI of `network` if this node has a sandbox for it.
    fn local_vni(&self, network: &NetworkId) -> Option<Vni> {
        let n = self.assigned.networks.get(network.as_str())?;
        Vni::new(n.vni)
            .ok()
            .filter(|v| self.sandboxes.has_network(*v))
    }

    fn on_record(&mut self, ev: RecordEvent) {
        if ev.owner == self.cfg.node_id {
            return;
        }
        let change = match self.endpoints.apply_event(&ev) {
            Ok(Some(change)) => change,
            Ok(None) => return,
            Err(why) => {
                warn!(scope = %ev.scope, key = %ev.key, %why, "refusing an endpoint record");
                return;
            }
        };
        let network = change.network().clone();
        if !matches!(change, RecordChange::Upserted { ref previous, .. } if *previous == Upserted::Unchanged)
        {
            self.dirty.insert(network.clone());
        }
        let Some(vni) = self.local_vni(&network) else {
            return;
        };
        match change {
            RecordChange::Upserted {
                endpoint: e,
                previous,
                ..
            } => {
                if let Upserted::Replaced(old) = &previous
                    && old.ip() != e.ip()
                {
                    self.sandboxes.remove_remote(&self.kernel, vni, old.ip());
                }
                let remote = RemoteEndpoint {
                    vni,
                    ip: e.ip(),
                    mac: e.mac,
                    vtep: e.vtep,
                };
                self.sandboxes.ensure_remote(&self.kernel, remote);
                debug!(scope = %ev.scope, ip = %e.ip(), vtep = %e.vtep, "remote endpoint programmed");
            }
            RecordChange::Removed { endpoint: old, .. } => {
                // The task is draining: connections opened before its withdrawal reached our
                // load balancers must still reach it, so its entries go after the drain.
                let at = Instant::now() + self.cfg.drain;
                self.withdrawals.push((at, (network, vni, old.ip())));
            }
        }
    }

    /// Work whose drain is over: conntrack flushes of removed backends, and the FDB and
    /// neighbor entries of withdrawn remote endpoints (unless a newer endpoint holds the
    /// address).
    fn run_due(&mut self) {
        let now = Instant::now();
        let (sandboxes, kernel) = (&self.sandboxes, &self.kernel);
        let flushed = self.services.balancers.run_due(
            |id| kernel.lb_for(id == INGRESS_SANDBOX),
            now,
            |id| sandboxes.netns(id),
        );
        self.cfg.metrics.conntrack_flushed(flushed);
        for (network, vni, ip) in take_due(&mut self.withdrawals, now) {
            if self
                .endpoints
                .remotes(&network, &self.me)
                .any(|e| e.ip() == ip)
            {
                debug!(%ip, "withdrawn address reused by a newer endpoint; kept");
                continue;
            }
            self.sandboxes.remove_remote(&self.kernel, vni, ip);
        }
    }

    /// The next instant the actor has timed work for: a drain ending, or work waiting for one.
    fn next_deadline(&self) -> Option<Instant> {
        self.draining
            .values()
            .copied()
            .chain(self.withdrawals.iter().map(|(at, _)| *at))
            .chain(self.services.balancers.next_deadline())
            .min()
    }

    /// Leaving the cluster: every task stopped, the overlay removed.
    async fn tear_down(&mut self) {
        for (id, _) in self.runtime.list() {
            self.unpublish(&id);
            self.services.detach(&id).await;
            if let Err(e) = self.runtime.remove(&id).await {
                warn!(task = %id, error = %e, "cannot stop task");
            }
        }
        if let Some(g) = self.gossip.clone() {
            self.publications.leave_all(&g);
        }
        self.mesh.tear_down(&self.kernel, &self.sandboxes);
        self.sandboxes.clear();
        if let Err(e) = self.sandboxes.reconcile(&self.kernel) {
            warn!(error = %e, "cannot remove the overlay");
        }
    }
}
