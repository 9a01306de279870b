//! Network calls of the control API.

use std::collections::BTreeSet;

use mesh_proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, ListNetworksResponse, Network,
    NetworkSpec, NetworkView, RemoveNetworkRequest, RemoveNetworkResponse, Task, TaskState,
    Transaction,
};
use tracing::info;

use super::{manager_check, resolve};
use crate::allocator::{self, AllocError};
use crate::auth::Caller;
use crate::ca::{self, now_ms};
use crate::error::{ControlError, Result};
use crate::manager::Manager;
use crate::orchestrator::is_terminal;
use crate::store::{StoreState, txn};

/// Overlay MTU bounds accepted from `--opt mtu`.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;

pub(crate) fn alloc_error(e: AllocError) -> ControlError {
    match e {
        AllocError::Invalid(m) => ControlError::InvalidArgument(m),
        AllocError::Exhausted(m) => ControlError::FailedPrecondition(m),
    }
}

/// Names of networks, services: what DNS and humans can use.
pub(crate) fn check_name(flag: &str, kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        return Ok(());
    }
    Err(ControlError::InvalidArgument(format!(
        "{flag}: {name:?} is not a valid {kind} name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63)"
    )))
}

/// A task still holding an address on some network.
fn holds_address(t: &Task) -> bool {
    let observed = t
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New);
    !(t.desired_state() != TaskState::Running && is_terminal(observed))
}

pub(crate) fn network_name(n: &Network) -> &str {
    n.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

pub(crate) fn resolve_network<'a>(s: &'a StoreState, reference: &str) -> Result<&'a Network> {
    resolve(&s.networks, "network", reference, network_name)
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

fn validate(spec: &NetworkSpec) -> Result<()> {
    check_name("name", "network", &spec.name)?;
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

impl Manager {
    pub(crate) async fn create_network(
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
        validate(&spec)?;
        let id = ca::new_node_id()?;
        let mut created = None;
        self.store
            .update(|s| {
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
                let alloc =
                    allocator::allocate_network(&spec, &existing, &cluster).map_err(alloc_error)?;
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
        Ok(self.store.read(|s| view(s, &network)))
    }

    pub(crate) async fn list_networks(
        &self,
        _caller: &Caller,
        _req: ListNetworksRequest,
    ) -> Result<ListNetworksResponse> {
        let networks = self
            .store
            .read_consistent(|s| s.networks.values().map(|n| view(s, n)).collect())
            .await?;
        Ok(ListNetworksResponse { networks })
    }

    pub(crate) async fn get_network(
        &self,
        _caller: &Caller,
        req: GetNetworkRequest,
    ) -> Result<NetworkView> {
        self.store
            .read_consistent(|s| resolve_network(s, &req.network).map(|n| view(s, n)))
            .await?
    }

    pub(crate) async fn remove_network(
        &self,
        caller: &Caller,
        req: RemoveNetworkRequest,
    ) -> Result<RemoveNetworkResponse> {
        manager_check(caller)?;
        let mut removed = String::new();
        self.store
            .update(|s| {
                let n = resolve_network(s, &req.network)?;
                let name = network_name(n);
                if n.spec.as_ref().is_some_and(|s| s.ingress) {
                    return Err(ControlError::FailedPrecondition(format!("network {name} is the routing mesh and cannot be removed")));
                }
                let users: Vec<&str> = s
                    .services
                    .values()
                    .filter(|v| v.spec.as_ref().is_some_and(|sp| sp.networks.iter().any(|a| a.target == n.id)))
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
