//! A manager: the raft store plus the services it answers on 2377 (raft,
//! CA, dispatcher, control API) and the loops only the leader runs.
//!
//! Requests a follower cannot answer are forwarded to the leader
//! ([`Route::Forward`]); the leader answers them itself ([`Route::Local`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::ca_server::CaServer;
use mesh_proto::control_server::ControlServer;
use mesh_proto::dispatcher_server::DispatcherServer;
use mesh_proto::{Node, NodeRole, NodeStatus, StoreOp, Transaction};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Server};
use tracing::{debug, info, warn};

use crate::ca::{self, now_ms};
use crate::config::ManagerConfig;
use crate::controlapi::ControlService;
use crate::error::ControlError;
use crate::net::SharedChannels;
use crate::server::{Authenticator, Policy};
use crate::store::{Store, StoreError, StoreState, txn};
use crate::tls::{self, Credentials};
use crate::{orchestrator, scheduler};

/// Liveness of nodes as this node's SWIM view sees them.
pub trait Liveness: Send + Sync + 'static {
    fn status(&self, node_id: &str) -> NodeStatus;
}

/// Where a control request is answered.
pub enum Route {
    Local(Arc<Manager>),
    /// A channel to the node to forward to, and its address (for errors).
    /// and how long to wait for its answer.
    Forward(Channel, String, Duration),
}

pub struct ManagerOptions {
    pub node_id: String,
    pub cluster_id: String,
    pub store: Store,
    pub creds: Arc<Credentials>,
    pub channels: SharedChannels,
    pub config: ManagerConfig,
    pub liveness: Arc<dyn Liveness>,
}

pub struct Manager {
    pub(crate) node_id: String,
    pub(crate) cluster_id: String,
    pub(crate) store: Store,
    pub(crate) creds: Arc<Credentials>,
    pub(crate) channels: SharedChannels,
    pub(crate) config: ManagerConfig,
    pub(crate) liveness: Arc<dyn Liveness>,
    /// When this leader first saw each node down (see `failed_nodes`).
    down_since: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

impl Manager {
    pub fn new(opts: ManagerOptions) -> Arc<Manager> {
        Arc::new(Manager {
            node_id: opts.node_id,
            cluster_id: opts.cluster_id,
            store: opts.store,
            creds: opts.creds,
            channels: opts.channels,
            config: opts.config,
            liveness: opts.liveness,
            down_since: Default::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn liveness(&self) -> &Arc<dyn Liveness> {
        &self.liveness
    }

    /// Answer here when leader, else forward to the leader.
    pub fn route(self: &Arc<Self>) -> Result<Route, Status> {
        if self.store.is_leader() {
            return Ok(Route::Local(self.clone()));
        }
        match self.store.leader() {
            Some(leader) if leader.raft_id != self.store.raft_id() => {
                let ch = self.channels.channel(&leader.addr).map_err(|e| {
                    Status::unavailable(format!("cannot reach the leader at {}: {e}", leader.addr))
                })?;
                Ok(Route::Forward(
                    ch,
                    leader.addr,
                    forward_deadline(&self.config.raft),
                ))
            }
            _ => Err(ControlError::Store(StoreError::NotLeader { leader: None }).into()),
        }
    }

    /// Serves raft, CA, dispatcher and control API on `listener` with mTLS
    /// until `shutdown` fires, and with them `node`: the services every node
    /// serves on its control port (task output), whatever its role.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        node: Routes,
        shutdown: CancellationToken,
    ) -> Result<(), ControlError> {
        let tls_config = self
            .creds
            .server_config()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let incoming = tls::tls_incoming(listener, tls_config);
        let auth = Authenticator::new(self.store.clone(), self.cluster_id.clone());
        let raft = InterceptedService::new(self.store.service(), auth.interceptor(Policy::Manager));
        let ca = CaServer::with_interceptor(
            crate::ca_service::CaService::new(self.clone()),
            auth.interceptor(Policy::Open),
        );
        let dispatcher = DispatcherServer::with_interceptor(
            crate::dispatcher::DispatcherService::new(self.clone()),
            auth.interceptor(Policy::Member),
        );
        let control = ControlServer::with_interceptor(
            ControlService::new(self.clone()),
            auth.interceptor(Policy::Member),
        );
        Server::builder()
            .tcp_nodelay(true)
            .add_routes(node)
            .add_service(raft)
            .add_service(ca)
            .add_service(dispatcher)
            .add_service(control)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .map_err(|e| ControlError::Internal(format!("control server: {e}")))
    }

    /// Starts the loops only the leader acts in. They idle on followers.
    pub fn spawn_reconcilers(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut changes = me.store.subscribe();
            let mut tick = tokio::time::interval(Duration::from_millis(
                me.config.raft.heartbeat_ms.max(100) * 4,
            ));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    r = changes.changed() => if r.is_err() { return },
                }
                if !me.store.is_leader() {
                    continue;
                }
                if let Err(e) = me.reconcile_roles().await {
                    warn!(error = %e, "role reconciliation failed; retrying");
                }
                if let Err(e) = me.reconcile_tasks().await {
                    warn!(error = %e, "task reconciliation failed; retrying");
                }
            }
        })
    }

    /// Makes raft membership follow the nodes' desired roles: voters whose
    /// node was demoted (or removed) leave the voter set, then the node's
    /// role is recorded as worker so that its agent renews into a worker
    /// certificate. Promotions are driven by the promoted node itself
    /// (`Raft.JoinRaft`), since it must run raft before it can vote.
    async fn reconcile_roles(&self) -> Result<(), ControlError> {
        let status = self.store.status();
        let voters: BTreeSet<u64> = status.voters.iter().map(|(id, _)| *id).collect();
        let leaving: Vec<u64> = self.store.read(|s| {
            voters
                .iter()
                .copied()
                .filter(
                    |raft_id| match s.nodes.values().find(|n| n.raft_id == *raft_id) {
                        Some(n) => desired_role(n) == NodeRole::Worker,
                        None => s.cluster.is_some(),
                    },
                )
                .collect()
        });
        for raft_id in leaving {
            if voters.len() <= 1 {
                break;
            }
            info!(raft_id, "removing demoted manager from the raft voters");
            self.store.remove_voter(raft_id).await?;
        }
        let voters: BTreeSet<u64> = self
            .store
            .status()
            .voters
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let demoted = |s: &StoreState| -> Vec<StoreOp> {
            s.nodes
                .values()
                .filter(|n| n.role() == NodeRole::Manager && desired_role(n) == NodeRole::Worker)
                .filter(|n| !voters.contains(&n.raft_id))
                .map(|n| {
                    let mut n = n.clone();
                    n.set_role(NodeRole::Worker);
                    n.updated_at_ms = now_ms();
                    txn::put_if_unchanged(n)
                })
                .collect()
        };
        if self.store.read(|s| demoted(s).is_empty()) {
            return Ok(());
        }
        self.store
            .update(|s: &StoreState| Ok::<_, ControlError>(Transaction { ops: demoted(s) }))
            .await?;
        debug!("roles reconciled");
        Ok(())
    }

    /// Nodes this leader has seen down for longer than the grace period.
    /// The clock starts when this leader first sees a node down, so a new
    /// leader waits a full grace period again: never earlier than intended.
    fn failed_nodes(&self) -> BTreeSet<String> {
        let grace = Duration::from_millis(self.config.orchestrator.node_down_grace_ms);
        let now = tokio::time::Instant::now();
        let nodes: Vec<String> = self.store.read(|s| s.nodes.keys().cloned().collect());
        let mut since = self.down_since.lock().expect("down_since lock poisoned");
        since.retain(|id, _| nodes.contains(id));
        nodes
            .into_iter()
            .filter(|id| {
                if *id == self.node_id || self.liveness.status(id) != NodeStatus::Down {
                    since.remove(id);
                    return false;
                }
                let first = *since.entry(id.clone()).or_insert(now);
                now.duration_since(first) >= grace
            })
            .collect()
    }

    /// Brings tasks in line with services, then places them, then deletes
    /// the finished ones; each step commits on its own, with preconditions
    /// on the versions it planned from.
    async fn reconcile_tasks(&self) -> Result<(), ControlError> {
        let mut new_id = || ca::new_node_id().unwrap_or_else(|_| format!("t{}", now_ms()));
        self.store
            .update(|s| {
                let ops = orchestrator::plan_node_attachments(s)
                    .map_err(|e| ControlError::FailedPrecondition(e.to_string()))?;
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        let failed = self.failed_nodes();
        let node_failed = |id: &str| failed.contains(id);
        self.store
            .update(|s| {
                let mut ctx = orchestrator::Context {
                    now_ms: now_ms(),
                    new_id: &mut new_id,
                    node_failed: &node_failed,
                };
                let ops = orchestrator::plan(s, &mut ctx)
                    .map_err(|e| ControlError::FailedPrecondition(e.to_string()))?;
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        let ready = |id: &str| id == self.node_id || self.liveness.status(id) == NodeStatus::Ready;
        self.store
            .update(|s| {
                Ok::<_, ControlError>(Transaction {
                    ops: scheduler::plan(s, &ready, now_ms()),
                })
            })
            .await?;
        self.store
            .update(|s| {
                Ok::<_, ControlError>(Transaction {
                    ops: orchestrator::plan_reap(s),
                })
            })
            .await?;
        Ok(())
    }

    /// Control addresses (`ip:port`) of the managers, from the store.
    pub(crate) fn manager_addrs(s: &StoreState) -> Vec<String> {
        s.nodes
            .values()
            .filter(|n| n.role() == NodeRole::Manager)
            .map(control_addr)
            .collect()
    }
}

/// How long a forwarded call may take: the leader's own write timeout plus
/// a margin, so its no-quorum answer arrives before this gives up.
pub fn forward_deadline(raft: &crate::config::RaftConfig) -> Duration {
    raft.write_timeout() + Duration::from_secs(1)
}

pub(crate) fn desired_role(n: &Node) -> NodeRole {
    n.spec
        .as_ref()
        .map(|s| s.desired_role())
        .unwrap_or(n.role())
}

pub(crate) fn control_addr(n: &Node) -> String {
    format!("{}:{}", n.addr, n.control_port)
}
