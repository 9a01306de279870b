//! A node that is in a cluster: gossip membership, the agent (session with the leader), the
//! worker, the manager role when it is one, and a worker's control port. Started on init,
//! join and restart; stopped on leave, removal and daemon shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_common::channels::TlsChannels;
use mesh_common::metrics::Metrics;
use mesh_common::tls::Credentials;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::logs;
use super::manager::{ManagerParams, ManagerStart, RunningManager};
use crate::agent::{Agent, AgentEvent};
use crate::config::DaemonConfig;
use crate::membership::Membership;
use crate::state_dir::{Certs, NodeState, StateDir};
use crate::worker::{Reporter, WorkerConfig, WorkerEnv, WorkerHandle};

/// What a member needs from its daemon.
pub struct MemberEnv<'a> {
    pub dir: &'a StateDir,
    pub config: &'a DaemonConfig,
    pub hostname: &'a str,
    pub netns_prefix: Option<&'a str>,
    pub events: &'a mpsc::Sender<AgentEvent>,
    pub workers: &'a dyn WorkerEnv,
    pub metrics: &'a Metrics,
}

/// A node that is in a cluster.
pub struct Member {
    pub state: NodeState,
    pub creds: Arc<Credentials>,
    pub channels: Arc<TlsChannels>,
    pub membership: Membership,
    pub manager: Option<RunningManager>,
    /// A worker's control port (a manager serves the same on its own).
    node_port: Option<logs::NodePort>,
    agent: CancellationToken,
    pub upstream: watch::Receiver<Option<String>>,
    pub worker: WorkerHandle,
}

impl Member {
    /// Brings up gossip, the manager (when `manager` says how) and the agent.
    pub async fn start(
        env: &MemberEnv<'_>,
        state: NodeState,
        certs: &Certs,
        manager: Option<ManagerStart>,
    ) -> anyhow::Result<Member> {
        let creds = Credentials::new(&certs.ca_pem, &certs.cert_pem, &certs.key_pem).with_context(
            || {
                format!(
                    "the certificates in {} are unusable",
                    env.dir.certs().display()
                )
            },
        )?;
        let channels = TlsChannels::new(&creds)?;
        let bind = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), state.gossip_port);
        let advertise = SocketAddr::new(
            state
                .advertise_addr
                .parse()
                .context("stored advertise address")?,
            state.gossip_port,
        );
        let membership = Membership::start(
            &env.config.gossip,
            &state.node_id,
            bind,
            advertise,
            env.metrics.gossip.clone(),
        )
        .await
        .with_context(|| format!("cannot start gossip on port {}", state.gossip_port))?;
        // Filled once the worker runs; the control port it serves opens before.
        let worker_cell = logs::WorkerCell::default();
        let params = ManagerParams {
            dir: env.dir,
            config: env.config,
            state: &state,
            creds: &creds,
            channels: &channels,
            membership: &membership,
            worker: worker_cell.clone(),
            metrics: env.metrics,
        };
        let running = match manager {
            Some(how) => match RunningManager::start(params, how).await {
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
            None => open_node_port(env.dir, &state, &creds, worker_cell.clone()).await,
        };
        let (upstream_tx, upstream_rx) = watch::channel(None);
        let worker = match start_worker(env, &state, &channels, &membership, &upstream_rx) {
            Ok(w) => w,
            Err(e) => {
                if let Some(r) = running {
                    r.stop().await;
                }
                if let Some(p) = node_port {
                    p.stop().await;
                }
                membership.shutdown().await;
                return Err(e);
            }
        };
        let _ = worker_cell.set(worker.clone());
        let agent_shutdown = CancellationToken::new();
        let agent = Agent {
            node_id: state.node_id.clone(),
            hostname: state.hostname.clone(),
            creds: creds.clone(),
            channels: channels.clone(),
            dir: env.dir.clone(),
            config: env.config.agent.clone(),
            renew_check: Duration::from_millis(env.config.ca.renew_check_ms),
            membership: membership.clone(),
            worker: worker.clone(),
            managers: state.managers.clone(),
            upstream: upstream_tx,
            events: env.events.clone(),
        };
        tokio::spawn(agent.run(agent_shutdown.clone()));
        Ok(Member {
            state,
            creds,
            channels,
            membership,
            manager: running,
            node_port,
            agent: agent_shutdown,
            upstream: upstream_rx,
            worker,
        })
    }

    /// Stops what runs for the cluster. With `cleanup` (leaving, removed) tasks are stopped
    /// and the overlay removed; without (daemon stop) they keep running for the next start
    /// to adopt.
    pub async fn stop(self, cleanup: bool) {
        self.agent.cancel();
        self.worker.stop(cleanup).await;
        if let Some(r) = self.manager {
            r.stop().await;
        }
        if let Some(p) = self.node_port {
            p.stop().await;
        }
        self.membership.shutdown().await;
    }

    /// Promoted: the manager starts and takes over the control port.
    pub async fn promote(&mut self, dir: &StateDir, config: &DaemonConfig, metrics: &Metrics) {
        if self.manager.is_some() {
            return;
        }
        info!("promoted: starting the manager");
        if let Some(p) = self.node_port.take() {
            p.stop().await;
        }
        let params = ManagerParams {
            dir,
            config,
            state: &self.state,
            creds: &self.creds,
            channels: &self.channels,
            membership: &self.membership,
            worker: self.worker_cell(),
            metrics,
        };
        match RunningManager::start(params, ManagerStart::Resume).await {
            Ok(r) => self.manager = Some(r),
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot start the manager after promotion");
                self.node_port =
                    open_node_port(dir, &self.state, &self.creds, self.worker_cell()).await;
            }
        }
    }

    /// Demoted: the manager stops, its raft store is removed, the worker's control port
    /// opens again.
    pub async fn demote(&mut self, dir: &StateDir) {
        let Some(r) = self.manager.take() else {
            return;
        };
        info!("demoted: stopping the manager");
        r.stop().await;
        if let Err(e) = std::fs::remove_dir_all(dir.raft_dir()) {
            warn!(error = %e, "cannot remove the raft store of a demoted manager");
        }
        self.node_port = open_node_port(dir, &self.state, &self.creds, self.worker_cell()).await;
    }

    /// The worker, for the control port's services.
    fn worker_cell(&self) -> logs::WorkerCell {
        Arc::new(std::sync::OnceLock::from(self.worker.clone()))
    }
}

/// A worker's control port, serving what every node serves. A failure is logged, not fatal:
/// the node still runs its tasks, and only their output is out of the managers' reach.
async fn open_node_port(
    dir: &StateDir,
    state: &NodeState,
    creds: &Arc<Credentials>,
    worker: logs::WorkerCell,
) -> Option<logs::NodePort> {
    let stop = CancellationToken::new();
    let routes =
        logs::LogsService::routes(dir.tasks_dir(), &state.cluster_id, stop.clone(), worker);
    logs::NodePort::start(&state.listen_addr, creds, routes, stop)
        .await
        .inspect_err(
            |e| error!(error = %format!("{e:#}"), "managers cannot read this node's task output"),
        )
        .ok()
}

fn start_worker(
    env: &MemberEnv<'_>,
    state: &NodeState,
    channels: &Arc<TlsChannels>,
    membership: &Membership,
    upstream: &watch::Receiver<Option<String>>,
) -> anyhow::Result<WorkerHandle> {
    let netns_prefix = env
        .netns_prefix
        .map(str::to_string)
        .unwrap_or_else(|| format!("mesh-{}-", &state.node_id[..state.node_id.len().min(8)]));
    let agent = &env.config.agent;
    let config = WorkerConfig {
        node_id: state.node_id.clone(),
        hostname: state.hostname.clone(),
        underlay_ip: state
            .advertise_addr
            .parse()
            .context("stored advertise address")?,
        netns_prefix,
        tasks_dir: env.dir.tasks_dir(),
        shim_binary: std::env::current_exe()
            .context("cannot find this binary for the task shims")?,
        reconcile_interval: Duration::from_millis(agent.reconcile_ms.max(100)),
        restart_backoff_max: Duration::from_millis(agent.restart_backoff_max_ms),
        drain: Duration::from_millis(agent.drain_ms),
        lb_backend: match agent.lb_backend.as_str() {
            "" | "auto" => None,
            other => Some(other.to_string()),
        },
        reserved_ports: vec![state.control_port, state.gossip_port],
        runtime: tokio::runtime::Handle::current(),
        metrics: env.metrics.worker.clone(),
        dns_metrics: env.metrics.dns.clone(),
    };
    let reporter = Reporter {
        channels: channels.clone(),
        upstream: upstream.clone(),
    };
    env.workers.start(config, membership.clone(), reporter)
}
