//! Network calls of the control API.

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_common::auth::Caller;
use mesh_common::ids::random_id;
use mesh_common::task::{is_terminal, observed_state};
use mesh_common::time::now_ms;
use mesh_proto::inspect_client::InspectClient;
use mesh_proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, ListNetworksResponse, Network,
    NetworkNodesResponse, NetworkSpec, NetworkStateRequest, NetworkView, NodeNetworkState,
    NodeStatus, RemoveNetworkRequest, RemoveNetworkResponse, Task, TaskState, Transaction,
};
use tracing::info;

use super::context::{ApiContext, manager_check};
use super::resolve::{check_name, resolve_network};
use crate::allocator;
use crate::error::{ControlError, Result};
use crate::objects::{control_addr, network_name, service_networks};
use crate::store::{StoreState, txn};

/// How long one node may take to report its kernel state of a network.
const NODE_INSPECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Overlay MTU bounds accepted from `--opt mtu`.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;

/// A task still holding an address on some network.
fn holds_address(t: &Task) -> bool {
    !(t.desired_state() != TaskState::Running && is_terminal(observed_state(t)))
}

fn view(s: &StoreState, n: &Network) -> NetworkView {
    let attached: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| holds_address(t) && t.networks.iter().any(|a| a.network_id == n.id))
        .collect();
    let peers: BTreeSet<String> = attached
        .iter()
        .filter(|t| !t.node_id.is_empty())
        .map(|t| t.node_id.clone())
        .collect();
    NetworkView {
        network: Some(n.clone()),
        peers: peers.into_iter().collect(),
        tasks: attached.len() as u32,
    }
}

pub fn validate(spec: &NetworkSpec, max_bytes: u64) -> Result<()> {
    check_name("name", "network", &spec.name)?;
    let size = prost::Message::encoded_len(spec) as u64;
    if size > max_bytes {
        return Err(ControlError::InvalidArgument(format!(
            "the network spec is {size} bytes, more than {max_bytes} ([limits] max_spec_bytes): use fewer or shorter labels"
        )));
    }
    if !spec.driver.is_empty() && spec.driver != "overlay" {
        return Err(ControlError::InvalidArgument(format!(
            "--driver: only overlay is supported, not {:?}",
            spec.driver
        )));
    }
    if spec.mtu != 0 && !MTU_RANGE.contains(&spec.mtu) {
        return Err(ControlError::InvalidArgument(format!(
            "--opt mtu={}: must be between {} and {}",
            spec.mtu,
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )));
    }
    if spec.ingress {
        return Err(ControlError::InvalidArgument(
            "the ingress network is created by `mesh init`".into(),
        ));
    }
    Ok(())
}

pub struct NetworkApi {
    ctx: Arc<ApiContext>,
}

impl NetworkApi {
    pub fn new(ctx: Arc<ApiContext>) -> NetworkApi {
        NetworkApi { ctx }
    }

    pub async fn create_network(
        &self,
        caller: &Caller,
        req: CreateNetworkRequest,
    ) -> Result<NetworkView> {
        manager_check(caller)?;
        let mut spec = req
            .spec
            .ok_or_else(|| ControlError::InvalidArgument("spec: required".into()))?;
        if spec.driver.is_empty() {
            spec.driver = "overlay".into();
        }
        validate(&spec, self.ctx.config.limits.max_spec_bytes)?;
        let id = random_id().map_err(|e| ControlError::Internal(e.to_string()))?;
        let mut created = None;
        self.ctx
            .store
            .update(|s| {
                let limit = self.ctx.config.limits.max_networks;
                if s.networks.len() as u64 >= limit {
                    return Err(ControlError::FailedPrecondition(format!(
                        "the cluster already has {} networks, the most it may hold ([limits] max_networks)",
                        s.networks.len()
                    )));
                }
                if let Some(other) = s.networks.values().find(|n| network_name(n) == spec.name) {
                    return Err(ControlError::AlreadyExists(format!(
                        "network {} already exists ({})",
                        spec.name, other.id
                    )));
                }
                let cluster = s
                    .cluster
                    .as_ref()
                    .and_then(|c| c.spec.clone())
                    .unwrap_or_default();
                let existing: Vec<&Network> = s.networks.values().collect();
                let avoid = allocator::reserved_subnets(s);
                let alloc = allocator::allocate_network(&spec, &existing, &cluster, &avoid)?;
                let now = now_ms();
                let network = Network {
                    id: id.clone(),
                    spec: Some(spec.clone()),
                    subnet: alloc.subnet.to_string(),
                    gateway: alloc.gateway.to_string(),
                    vni: alloc.vni,
                    created_at_ms: now,
                    updated_at_ms: now,
                    ..Default::default()
                };
                created = Some(network.clone());
                Ok(Transaction {
                    ops: vec![txn::put_if_unchanged(network)],
                })
            })
            .await?;
        let network =
            created.ok_or_else(|| ControlError::Internal("network was not created".into()))?;
        info!(network = %network.id, name = %spec.name, subnet = %network.subnet, vni = network.vni, "network created");
        Ok(self.ctx.store.read(|s| view(s, &network)))
    }

    pub async fn list_networks(
        &self,
        _caller: &Caller,
        _req: ListNetworksRequest,
    ) -> Result<ListNetworksResponse> {
        let networks = self
            .ctx
            .store
            .read_consistent(|s| s.networks.values().map(|n| view(s, n)).collect())
            .await?;
        Ok(ListNetworksResponse { networks })
    }

    pub async fn get_network(
        &self,
        _caller: &Caller,
        req: GetNetworkRequest,
    ) -> Result<NetworkView> {
        self.ctx
            .store
            .read_consistent(|s| resolve_network(s, &req.network).map(|n| view(s, n)))
            .await?
    }

    /// `mesh network inspect --verbose`: every node's kernel state of the network against
    /// what its agent wants (`Inspect.NetworkState` on each node's control port, side by
    /// side, a few seconds each). A node that is down or does not answer is listed with why.
    pub async fn inspect_network_nodes(
        &self,
        _caller: &Caller,
        req: GetNetworkRequest,
    ) -> Result<NetworkNodesResponse> {
        let (network, nodes) = self
            .ctx
            .store
            .read_consistent(|s| {
                resolve_network(s, &req.network)
                    .map(|n| (n.clone(), s.nodes.values().cloned().collect::<Vec<_>>()))
            })
            .await??;
        let asks = nodes.into_iter().map(|node| {
            let ctx = self.ctx.clone();
            let network = network.clone();
            async move {
                let failed = |error: String| NodeNetworkState {
                    node_id: node.id.clone(),
                    hostname: node.hostname.clone(),
                    error,
                    ..Default::default()
                };
                if ctx.liveness.status(&node.id) == NodeStatus::Down {
                    return failed("the node is down".into());
                }
                let addr = control_addr(&node);
                let channel = match ctx.channels.node_channel(&addr, node.role()) {
                    Ok(c) => c,
                    Err(e) => return failed(format!("cannot reach it at {addr}: {e}")),
                };
                let mut call = tonic::Request::new(NetworkStateRequest {
                    network_id: network.id.clone(),
                    vni: network.vni,
                });
                call.set_timeout(NODE_INSPECT_TIMEOUT);
                match InspectClient::new(channel).network_state(call).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => failed(format!("{addr}: {}", s.message())),
                }
            }
        });
        let mut nodes = futures::future::join_all(asks).await;
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(NetworkNodesResponse { nodes })
    }

    pub async fn remove_network(
        &self,
        caller: &Caller,
        req: RemoveNetworkRequest,
    ) -> Result<RemoveNetworkResponse> {
        manager_check(caller)?;
        let mut removed = String::new();
        self.ctx.store
            .update(|s| {
                let n = resolve_network(s, &req.network)?;
                let name = network_name(n);
                if n.spec.as_ref().is_some_and(|s| s.ingress) {
                    return Err(ControlError::FailedPrecondition(format!("network {name} is the routing mesh and cannot be removed")));
                }
                let users: Vec<&str> = s
                    .services
                    .values()
                    .filter(|v| service_networks(v).iter().any(|a| a.target == n.id))
                    .map(|v| v.spec.as_ref().map(|sp| sp.name.as_str()).unwrap_or(""))
                    .collect();
                if !users.is_empty() {
                    return Err(ControlError::FailedPrecondition(format!(
                        "network {name} is in use by service {}: remove or update it first",
                        users.join(", ")
                    )));
                }
                let tasks = view(s, n).tasks;
                if tasks > 0 {
                    return Err(ControlError::FailedPrecondition(format!(
                        "network {name} still has {tasks} task(s) attached that are shutting down; try again shortly"
                    )));
                }
                removed = n.id.clone();
                Ok(Transaction { ops: vec![txn::delete_if_unchanged(n)] })
            })
            .await?;
        info!(network = %removed, "network removed");
        Ok(RemoveNetworkResponse {})
    }
}
