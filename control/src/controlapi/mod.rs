//! The control API: what the CLI calls. [`ControlService`] routes each call (answered here
//! on the leader, forwarded to the leader elsewhere); [`ControlApi`] answers it on the
//! leader, one handler per area, each over a narrow [`ApiContext`].
//!
//! # Layout
//! - [`context`]: [`ApiContext`], what the handlers share.
//! - [`forward`]: relaying a call to the leader (hops, deadlines, error texts).
//! - [`resolve`]: objects by id, name or id prefix; name rules.
//! - `nodes`, `cluster`, `networks`, `services`, `logs`: the handlers ([`NodeApi`],
//!   [`ClusterApi`], [`NetworkApi`], [`ServiceApi`], [`LogsApi`]).

pub mod context;
pub mod forward;
pub mod resolve;

mod cluster;
mod logs;
mod networks;
mod nodes;
pub(crate) mod services;

/// The checks a network spec passes before it is created, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub use networks::validate as validate_network_spec;

use std::sync::Arc;
use std::time::Duration;

use mesh_common::Liveness;
use mesh_common::auth::caller;
use mesh_common::metrics::{ApiMetrics, ApiRoute};
use mesh_proto::control_client::ControlClient;
use mesh_proto::control_server::Control;
use mesh_proto::{
    ClusterInfo, CreateNetworkRequest, CreateServiceRequest, GetClusterInfoRequest,
    GetJoinTokenRequest, GetJoinTokenResponse, GetNetworkRequest, GetNodeRequest,
    GetServiceRequest, ListNetworksRequest, ListNetworksResponse, ListNodesRequest,
    ListNodesResponse, ListServicesRequest, ListServicesResponse, ListTasksRequest,
    ListTasksResponse, NetworkNodesResponse, NetworkView, NodeView, RemoveNetworkRequest,
    RemoveNetworkResponse, RemoveNodeRequest, RemoveNodeResponse, RemoveServiceRequest,
    RemoveServiceResponse, RotateGossipKeyRequest, RotateGossipKeyResponse, ServiceLogsRequest,
    ServiceView, SetNodeRoleRequest, UpdateNodeRequest, UpdateServiceRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use cluster::ClusterApi;
pub use context::ApiContext;
pub use forward::forward_deadline;
pub use logs::{LogsApi, ServiceLogsStream};
pub use networks::NetworkApi;
pub use nodes::NodeApi;
pub use services::ServiceApi;

use forward::{check_deadline, forward, forward_failed, forward_timed_out};

/// The handlers of every area of the control API, on the leader.
pub struct ControlApi {
    pub nodes: NodeApi,
    pub cluster: ClusterApi,
    pub networks: NetworkApi,
    pub services: ServiceApi,
    pub logs: LogsApi,
}

impl ControlApi {
    pub fn new(ctx: ApiContext) -> Arc<ControlApi> {
        let ctx = Arc::new(ctx);
        Arc::new(ControlApi {
            nodes: NodeApi::new(ctx.clone()),
            cluster: ClusterApi::new(ctx.clone()),
            networks: NetworkApi::new(ctx.clone()),
            services: ServiceApi::new(ctx.clone()),
            logs: LogsApi::new(ctx),
        })
    }
}

/// Where a control request is answered.
pub enum Route {
    Local(Arc<ControlApi>),
    /// A channel to the manager to forward to, its address (for errors), and how long to
    /// wait for its answer.
    Forward(Channel, String, Duration),
}

/// What a [`ControlService`] needs from the node it runs on.
pub trait ControlContext: Send + Sync + 'static {
    /// Where to answer: here (leader) or forwarded.
    fn route(self: &Arc<Self>) -> Result<Route, Status>;
    /// This node's SWIM view, laid over node lists before they are returned
    /// to a local CLI (so `node ls` shows what this node sees).
    fn local_liveness(self: &Arc<Self>) -> Option<Arc<dyn Liveness>> {
        None
    }
}

pub struct ControlService<C> {
    ctx: Arc<C>,
    metrics: ApiMetrics,
}

impl<C: ControlContext> ControlService<C> {
    /// Answers or forwards calls as `ctx` routes them, timing each in `metrics`.
    pub fn new(ctx: Arc<C>, metrics: ApiMetrics) -> Self {
        ControlService { ctx, metrics }
    }

    fn overlay(&self, nodes: &mut [NodeView]) {
        if let Some(live) = self.ctx.local_liveness() {
            for n in nodes {
                n.set_status(live.status(&n.id));
            }
        }
    }
}

/// Answers `$req` with `$area.$method` on the leader, or forwards it to the leader; the
/// time it takes, whatever the outcome, is observed under the method's name.
macro_rules! route {
    ($self:ident, $req:ident, $area:ident . $method:ident) => {{
        let caller = caller(&$req)?;
        match $self.ctx.route()? {
            Route::Local(api) => {
                let _timer = $self.metrics.timer(stringify!($method), ApiRoute::Leader);
                check_deadline(&$req)?;
                api.$area
                    .$method(&caller, $req.into_inner())
                    .await
                    .map_err(Status::from)?
            }
            Route::Forward(ch, target, deadline) => {
                let _timer = $self
                    .metrics
                    .timer(stringify!($method), ApiRoute::Forwarded);
                let mut client = ControlClient::new(ch);
                let call = client.$method(forward($req, deadline, &caller)?);
                match tokio::time::timeout(deadline, call).await {
                    Ok(answer) => answer.map_err(|s| forward_failed(&target, s))?.into_inner(),
                    Err(_elapsed) => return Err(forward_timed_out(&target, deadline)),
                }
            }
        }
    }};
}

#[tonic::async_trait]
impl<C: ControlContext> Control for ControlService<C> {
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let mut resp = route!(self, req, nodes.list_nodes);
        self.overlay(&mut resp.nodes);
        Ok(Response::new(resp))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeView>, Status> {
        let mut resp = route!(self, req, nodes.get_node);
        self.overlay(std::slice::from_mut(&mut resp));
        Ok(Response::new(resp))
    }

    async fn set_node_role(
        &self,
        req: Request<SetNodeRoleRequest>,
    ) -> Result<Response<NodeView>, Status> {
        Ok(Response::new(route!(self, req, nodes.set_node_role)))
    }

    async fn update_node(
        &self,
        req: Request<UpdateNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        Ok(Response::new(route!(self, req, nodes.update_node)))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        Ok(Response::new(route!(self, req, nodes.remove_node)))
    }

    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        Ok(Response::new(route!(self, req, cluster.get_join_token)))
    }

    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(route!(self, req, cluster.get_cluster_info)))
    }

    async fn rotate_gossip_key(
        &self,
        req: Request<RotateGossipKeyRequest>,
    ) -> Result<Response<RotateGossipKeyResponse>, Status> {
        Ok(Response::new(route!(self, req, cluster.rotate_gossip_key)))
    }

    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> Result<Response<NetworkView>, Status> {
        Ok(Response::new(route!(self, req, networks.create_network)))
    }

    async fn list_networks(
        &self,
        req: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        Ok(Response::new(route!(self, req, networks.list_networks)))
    }

    async fn get_network(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> Result<Response<NetworkView>, Status> {
        Ok(Response::new(route!(self, req, networks.get_network)))
    }

    async fn inspect_network_nodes(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> Result<Response<NetworkNodesResponse>, Status> {
        Ok(Response::new(route!(
            self,
            req,
            networks.inspect_network_nodes
        )))
    }

    async fn remove_network(
        &self,
        req: Request<RemoveNetworkRequest>,
    ) -> Result<Response<RemoveNetworkResponse>, Status> {
        Ok(Response::new(route!(self, req, networks.remove_network)))
    }

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<ServiceView>, Status> {
        Ok(Response::new(route!(self, req, services.create_service)))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        Ok(Response::new(route!(self, req, services.list_services)))
    }

    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<ServiceView>, Status> {
        Ok(Response::new(route!(self, req, services.get_service)))
    }

    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<ServiceView>, Status> {
        Ok(Response::new(route!(self, req, services.update_service)))
    }

    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        Ok(Response::new(route!(self, req, services.remove_service)))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Ok(Response::new(route!(self, req, services.list_tasks)))
    }

    type ServiceLogsStream = ServiceLogsStream;

    /// Streams are not relayed by `route!`: the answer's first part comes
    /// within the forwarding deadline, the rest as long as it flows. Its timing covers
    /// the opening of the stream only.
    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let caller = caller(&req)?;
        match self.ctx.route()? {
            Route::Local(api) => {
                let _timer = self.metrics.timer("service_logs", ApiRoute::Leader);
                check_deadline(&req)?;
                Ok(Response::new(
                    api.logs.service_logs(&caller, req.into_inner())?,
                ))
            }
            Route::Forward(ch, target, deadline) => {
                let _timer = self.metrics.timer("service_logs", ApiRoute::Forwarded);
                let mut client = ControlClient::new(ch);
                let call = client.service_logs(forward(req, deadline, &caller)?);
                let stream = match tokio::time::timeout(deadline, call).await {
                    Ok(answer) => answer.map_err(|s| forward_failed(&target, s))?.into_inner(),
                    Err(_elapsed) => return Err(forward_timed_out(&target, deadline)),
                };
                Ok(Response::new(Box::pin(stream)))
            }
        }
    }
}
