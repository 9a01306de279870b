//! A manager: builds the components of a manager node and runs them. It serves raft, the
//! CA, the dispatcher and the control API on the control port, each with the narrow context
//! it needs, and starts the leader's components (allocator, orchestrators, scheduler, task
//! reaper, role reconciler), which idle on followers.
//!
//! Requests a follower cannot answer are forwarded to the leader ([`Route::Forward`]); the
//! leader answers them itself ([`Route::Local`]).

use std::sync::Arc;
use std::time::Duration;

use mesh_common::Liveness;
use mesh_common::channels::SharedChannels;
use mesh_common::metrics::ApiMetrics;
use mesh_common::tls::{self, Credentials};
use mesh_proto::ca_server::CaServer;
use mesh_proto::control_server::ControlServer;
use mesh_proto::dispatcher_server::DispatcherServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::allocator::Allocator;
use crate::ca_service::CaService;
use crate::component;
use crate::config::ManagerConfig;
use crate::controlapi::{
    ApiContext, ControlApi, ControlContext, ControlService, Route, forward_deadline,
};
use crate::dispatcher::DispatcherService;
use crate::error::ControlError;
use crate::orchestrator::{Kind as OrchestratorKind, NodeFailures, Orchestrator, TaskReaper};
use crate::roles::RoleReconciler;
use crate::scheduler::Scheduler;
use crate::server::{Authenticator, Policy};
use crate::store::{Store, StoreError};

pub struct ManagerOptions {
    pub node_id: String,
    pub cluster_id: String,
    pub store: Store,
    pub creds: Arc<Credentials>,
    pub channels: SharedChannels,
    pub config: ManagerConfig,
    pub liveness: Arc<dyn Liveness>,
    /// Where the control API served on the control port times its calls.
    pub api_metrics: ApiMetrics,
}

pub struct Manager {
    node_id: String,
    cluster_id: String,
    store: Store,
    creds: Arc<Credentials>,
    channels: SharedChannels,
    config: ManagerConfig,
    liveness: Arc<dyn Liveness>,
    api: Arc<ControlApi>,
    api_metrics: ApiMetrics,
}

impl Manager {
    pub fn new(opts: ManagerOptions) -> Arc<Manager> {
        let api = ControlApi::new(ApiContext {
            node_id: opts.node_id.clone(),
            store: opts.store.clone(),
            liveness: opts.liveness.clone(),
            channels: opts.channels.clone(),
            config: opts.config.clone(),
        });
        Arc::new(Manager {
            node_id: opts.node_id,
            cluster_id: opts.cluster_id,
            store: opts.store,
            creds: opts.creds,
            channels: opts.channels,
            config: opts.config,
            liveness: opts.liveness,
            api,
            api_metrics: opts.api_metrics,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Answer here when leader, else forward to the leader.
    pub fn route(&self) -> Result<Route, Status> {
        if self.store.is_leader() {
            return Ok(Route::Local(self.api.clone()));
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
            CaService::new(
                self.store.clone(),
                self.creds.ca_pem().to_string(),
                self.liveness.clone(),
            ),
            auth.interceptor(Policy::Open),
        );
        let dispatcher = DispatcherServer::with_interceptor(
            DispatcherService::new(self.store.clone(), self.write_batch()),
            auth.interceptor(Policy::Member),
        );
        let control = ControlServer::with_interceptor(
            ControlService::new(self.clone(), self.api_metrics.clone()),
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

    /// How much one write of a leader component (or of reported statuses) may hold.
    fn write_batch(&self) -> crate::store::txn::Batch {
        crate::store::txn::Batch {
            objects: self.config.limits.batch_objects.max(1),
            // Room for the transaction's own framing.
            bytes: (self.config.limits.max_write_bytes as usize).saturating_sub(1024),
        }
    }

    /// Starts the leader's components; they idle on followers and end with `shutdown`.
    pub fn spawn_components(&self, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let store = &self.store;
        let runner = component::Runner {
            store: store.clone(),
            // What depends on time (grace periods, update delays) is looked at this often.
            tick: Duration::from_millis(self.config.raft.heartbeat_ms.max(100) * 4),
            shutdown: shutdown.clone(),
        };
        let grace = Duration::from_millis(self.config.orchestrator.node_down_grace_ms);
        let batch = self.write_batch();
        let (me, live) = (&self.node_id, &self.liveness);
        vec![
            runner.run(RoleReconciler::new(store.clone())),
            runner.run(Orchestrator::new(
                OrchestratorKind::Replicated,
                store.clone(),
                NodeFailures::new(me.clone(), live.clone(), grace),
                batch,
                self.config.limits.clone(),
            )),
            runner.run(Orchestrator::new(
                OrchestratorKind::Global,
                store.clone(),
                NodeFailures::new(me.clone(), live.clone(), grace),
                batch,
                self.config.limits.clone(),
            )),
            runner.run(Allocator::new(store.clone(), batch)),
            runner.run(Scheduler::new(
                store.clone(),
                me.clone(),
                live.clone(),
                batch,
            )),
            runner.run(TaskReaper::new(store.clone(), batch)),
        ]
    }
}

impl ControlContext for Manager {
    fn route(self: &Arc<Self>) -> Result<Route, Status> {
        Manager::route(self)
    }
}
