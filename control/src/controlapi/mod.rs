//! The control API: what the CLI calls. [`ControlService`] routes each call
//! (answer here on the leader, forward to the leader elsewhere) and the
//! `Manager` methods in the submodules answer it on the leader.

mod logs;
mod networks;
mod nodes;
mod services;

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::control_client::ControlClient;
use mesh_proto::control_server::Control;
use mesh_proto::{
    ClusterInfo, CreateNetworkRequest, CreateServiceRequest, GetClusterInfoRequest,
    GetJoinTokenRequest, GetJoinTokenResponse, GetNetworkRequest, GetNodeRequest,
    GetServiceRequest, ListNetworksRequest, ListNetworksResponse, ListNodesRequest,
    ListNodesResponse, ListServicesRequest, ListServicesResponse, ListTasksRequest,
    ListTasksResponse, NetworkView, Node, NodeView, RemoveNetworkRequest, RemoveNetworkResponse,
    RemoveNodeRequest, RemoveNodeResponse, RemoveServiceRequest, RemoveServiceResponse,
    RotateGossipKeyRequest, RotateGossipKeyResponse, ServiceLogsRequest, ServiceView,
    SetNodeRoleRequest, UpdateServiceRequest,
};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::error::{ControlError, Result};
use crate::manager::{Liveness, Manager, Route};
use crate::server::{caller, require_manager};
use crate::store::StoreState;

const HOPS_KEY: &str = "mesh-hops";
const MAX_HOPS: u32 = 3;
const DEADLINE_KEY: &str = "mesh-give-up-at-ms";

/// What a [`ControlService`] needs from the node it runs on.
pub trait ControlContext: Send + Sync + 'static {
    /// Where to answer: here (leader) or forwarded.
    fn route(self: &Arc<Self>) -> std::result::Result<Route, Status>;
    /// This node's SWIM view, laid over node lists before they are returned
    /// to a local CLI (so `node ls` shows what this node sees).
    fn local_liveness(self: &Arc<Self>) -> Option<Arc<dyn Liveness>> {
        None
    }
}

impl ControlContext for Manager {
    fn route(self: &Arc<Self>) -> std::result::Result<Route, Status> {
        Manager::route(self)
    }
}

pub struct ControlService<C> {
    ctx: Arc<C>,
}

impl<C: ControlContext> ControlService<C> {
    pub fn new(ctx: Arc<C>) -> Self {
        ControlService { ctx }
    }

    fn overlay(&self, nodes: &mut [NodeView]) {
        if let Some(live) = self.ctx.local_liveness() {
            for n in nodes {
                n.set_status(live.status(&n.id));
            }
        }
    }
}

/// A copy of `req` for the next hop, refusing forwarding loops.
/// A copy of `req` for the next hop, refusing forwarding loops. It carries
/// the time after which its sender has given up on it (the earliest of its
/// own and that of the hop before), so a request held up in a broken
/// connection is never acted on after its sender reported a failure.
fn forward<T>(
    req: Request<T>,
    deadline: std::time::Duration,
    caller: &Caller,
) -> std::result::Result<Request<T>, Status> {
    let hops = req
        .metadata()
        .get(HOPS_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if hops >= MAX_HOPS {
        return Err(Status::unavailable(
            "request forwarded too many times: the managers do not agree on a leader",
        ));
    }
    let mine = crate::ca::now_ms() + deadline.as_millis() as i64;
    let until = give_up_at(&req).map_or(mine, |earlier| earlier.min(mine));
    let mut out = Request::new(req.into_inner());
    out.metadata_mut().insert(HOPS_KEY, (hops + 1).into());
    out.metadata_mut().insert(DEADLINE_KEY, until.into());
    // The next hop sees this node's certificate: name who is really asking,
    // so a worker's request relayed by a manager is still a worker's.
    if let Some(node_id) = caller.node_id()
        && let Ok(v) = node_id.parse()
    {
        out.metadata_mut()
            .insert(crate::server::ON_BEHALF_OF_KEY, v);
    }
    Ok(out)
}

/// When the sender of a forwarded request gives up on it (unix ms).
fn give_up_at<T>(req: &Request<T>) -> Option<i64> {
    req.metadata()
        .get(DEADLINE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Refuses a forwarded request whose sender already gave up on it.
fn check_deadline<T>(req: &Request<T>) -> std::result::Result<(), Status> {
    match give_up_at(req) {
        Some(at) if crate::ca::now_ms() > at => Err(Status::deadline_exceeded(
            "the request arrived after its sender gave up on it: not applied",
        )),
        _ => Ok(()),
    }
}

/// A forwarded call that did not reach its target gets a message naming
/// it; statuses the target itself answered pass through unchanged.
fn forward_failed(target: &str, status: Status) -> Status {
    if std::error::Error::source(&status).is_none() {
        return status;
    }
    Status::unavailable(format!(
        "cannot reach the manager at {target} ({}): if it just failed, a new leader is being elected; retry shortly",
        status.message()
    ))
}

/// A forwarded call with no answer in time. A write may still be applied
/// later (it may be queued at the leader): say so rather than claim it failed.
fn forward_timed_out(target: &str, deadline: std::time::Duration) -> Status {
    Status::unavailable(format!(
        "the manager at {target} did not answer within {:.0}s (unreachable?); a change requested may still be applied: check before retrying",
        deadline.as_secs_f64()
    ))
}

macro_rules! route {
    ($self:ident, $req:ident, $method:ident) => {{
        let caller = caller(&$req)?;
        match $self.ctx.route()? {
            Route::Local(m) => {
                check_deadline(&$req)?;
                m.$method(&caller, $req.into_inner())
                    .await
                    .map_err(Status::from)?
            }
            Route::Forward(ch, target, deadline) => {
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
    ) -> std::result::Result<Response<ListNodesResponse>, Status> {
        let mut resp = route!(self, req, list_nodes);
        self.overlay(&mut resp.nodes);
        Ok(Response::new(resp))
    }

    async fn get_node(
        &self,
        req: Request<GetNodeRequest>,
    ) -> std::result::Result<Response<NodeView>, Status> {
        let mut resp = route!(self, req, get_node);
        self.overlay(std::slice::from_mut(&mut resp));
        Ok(Response::new(resp))
    }

    async fn set_node_role(
        &self,
        req: Request<SetNodeRoleRequest>,
    ) -> std::result::Result<Response<NodeView>, Status> {
        Ok(Response::new(route!(self, req, set_node_role)))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> std::result::Result<Response<RemoveNodeResponse>, Status> {
        Ok(Response::new(route!(self, req, remove_node)))
    }

    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> std::result::Result<Response<GetJoinTokenResponse>, Status> {
        Ok(Response::new(route!(self, req, get_join_token)))
    }

    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> std::result::Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(route!(self, req, get_cluster_info)))
    }

    async fn rotate_gossip_key(
        &self,
        req: Request<RotateGossipKeyRequest>,
    ) -> std::result::Result<Response<RotateGossipKeyResponse>, Status> {
        Ok(Response::new(route!(self, req, rotate_gossip_key)))
    }

    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> std::result::Result<Response<NetworkView>, Status> {
        Ok(Response::new(route!(self, req, create_network)))
    }

    async fn list_networks(
        &self,
        req: Request<ListNetworksRequest>,
    ) -> std::result::Result<Response<ListNetworksResponse>, Status> {
        Ok(Response::new(route!(self, req, list_networks)))
    }

    async fn get_network(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> std::result::Result<Response<NetworkView>, Status> {
        Ok(Response::new(route!(self, req, get_network)))
    }

    async fn remove_network(
        &self,
        req: Request<RemoveNetworkRequest>,
    ) -> std::result::Result<Response<RemoveNetworkResponse>, Status> {
        Ok(Response::new(route!(self, req, remove_network)))
    }

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> std::result::Result<Response<ServiceView>, Status> {
        Ok(Response::new(route!(self, req, create_service)))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> std::result::Result<Response<ListServicesResponse>, Status> {
        Ok(Response::new(route!(self, req, list_services)))
    }

    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> std::result::Result<Response<ServiceView>, Status> {
        Ok(Response::new(route!(self, req, get_service)))
    }

    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> std::result::Result<Response<ServiceView>, Status> {
        Ok(Response::new(route!(self, req, update_service)))
    }

    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> std::result::Result<Response<RemoveServiceResponse>, Status> {
        Ok(Response::new(route!(self, req, remove_service)))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> std::result::Result<Response<ListTasksResponse>, Status> {
        Ok(Response::new(route!(self, req, list_tasks)))
    }

    type ServiceLogsStream = logs::ServiceLogsStream;

    /// Streams are not relayed by [`route!`]: the answer's first part comes
    /// within the forwarding deadline, the rest as long as it flows.
    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> std::result::Result<Response<Self::ServiceLogsStream>, Status> {
        let caller = caller(&req)?;
        match self.ctx.route()? {
            Route::Local(m) => {
                check_deadline(&req)?;
                Ok(Response::new(m.service_logs(&caller, req.into_inner())?))
            }
            Route::Forward(ch, target, deadline) => {
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

fn manager_check(caller: &Caller) -> Result<()> {
    require_manager(caller).map_err(|s| ControlError::PermissionDenied(s.message().to_string()))
}

/// Finds an object by id, name or unique id prefix (names first, as users
/// type them; ids always win).
pub(crate) fn resolve<'a, T>(
    map: &'a BTreeMap<String, T>,
    kind: &str,
    reference: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    if reference.is_empty() {
        return Err(ControlError::InvalidArgument(format!(
            "{kind}: a {kind} id or name is required"
        )));
    }
    if let Some(found) = map.get(reference) {
        return Ok(found);
    }
    let pick = |found: Vec<&'a T>, what: &str| -> Option<Result<&'a T>> {
        match found.len() {
            0 => None,
            1 => Some(Ok(found[0])),
            k => Some(Err(ControlError::InvalidArgument(format!(
                "{kind} {reference:?} is ambiguous: {k} {kind}s match that {what}; use an id"
            )))),
        }
    };
    if let Some(r) = pick(
        map.values().filter(|o| name_of(o) == reference).collect(),
        "name",
    ) {
        return r;
    }
    if let Some(r) = pick(
        map.iter()
            .filter(|(id, _)| id.starts_with(reference))
            .map(|(_, o)| o)
            .collect(),
        "id prefix",
    ) {
        return r;
    }
    Err(ControlError::NotFound(format!(
        "{kind} {reference:?} not found"
    )))
}

/// Finds a node by id, hostname or unique id prefix.
pub(crate) fn resolve_node<'a>(s: &'a StoreState, reference: &str) -> Result<&'a Node> {
    resolve(&s.nodes, "node", reference, |n| n.hostname.as_str())
}
