//! Service and task calls of the control API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_proto::{
    CreateServiceRequest, EndpointMode, GetServiceRequest, ListServicesRequest,
    ListServicesResponse, ListTasksRequest, ListTasksResponse, PortConfig, PortProtocol,
    PublishMode, RemoveServiceRequest, RemoveServiceResponse, Service, ServiceMode, ServiceSpec,
    ServiceView, TaskState, TaskView, Transaction, UpdateServiceRequest, VirtualIp,
};
use tracing::info;

use super::networks::{alloc_error, check_name, resolve_network};
use super::{manager_check, resolve, resolve_node};
use crate::allocator;
use crate::auth::Caller;
use crate::ca::{self, now_ms};
use crate::error::{ControlError, Result};
use crate::manager::Manager;
use crate::orchestrator::shut_down;
use crate::store::{StoreState, txn};

/// Ports handed out when a service publishes one without a number.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

fn invalid(msg: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(msg.into())
}

pub(crate) fn service_name(v: &Service) -> &str {
    v.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

pub(crate) fn resolve_service<'a>(s: &'a StoreState, reference: &str) -> Result<&'a Service> {
    resolve(&s.services, "service", reference, service_name)
}

fn proto_name(p: PortProtocol) -> &'static str {
    if p == PortProtocol::Udp { "udp" } else { "tcp" }
}

/// Checks a spec and rewrites its network references to ids. `id` is the
/// service being updated (its own name and ports do not conflict).
fn validate(s: &StoreState, spec: &mut ServiceSpec, id: Option<&str>) -> Result<()> {
    check_name("--name", "service", &spec.name)?;
    if let Some(other) = s
        .services
        .values()
        .find(|v| service_name(v) == spec.name && Some(v.id.as_str()) != id)
    {
        return Err(ControlError::AlreadyExists(format!(
            "service {} already exists ({})",
            spec.name, other.id
        )));
    }
    let task = spec.task.get_or_insert_with(Default::default);
    if task.command.is_empty() || task.command[0].is_empty() {
        return Err(invalid(
            "a command is required: mesh service create --name NAME [OPTIONS] -- COMMAND [ARGS...]",
        ));
    }
    if let Some(bad) = task
        .env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return Err(invalid(format!("--env: {bad:?} is not KEY=VALUE")));
    }
    if spec.mode() == ServiceMode::Global && spec.replicas != 0 {
        return Err(invalid("--replicas: cannot be used with --mode global"));
    }
    let mut seen = BTreeSet::new();
    for attach in &mut spec.networks {
        let network = resolve_network(s, &attach.target)?;
        let name = network
            .spec
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        if network.spec.as_ref().is_some_and(|n| n.ingress) {
            return Err(invalid(format!(
                "--network: {name} is the routing mesh; publish ports with --publish instead"
            )));
        }
        if !seen.insert(network.id.clone()) {
            return Err(invalid(format!("--network: {name} is given twice")));
        }
        for alias in &attach.aliases {
            check_name("--network alias", "alias", alias)?;
        }
        attach.target = network.id.clone();
    }
    let endpoint = spec.endpoint.get_or_insert_with(Default::default);
    let mut published = BTreeSet::new();
    for p in &endpoint.ports {
        if p.target_port == 0 || p.target_port > 65535 {
            return Err(invalid(format!(
                "--publish: target port {} is out of range (1 to 65535)",
                p.target_port
            )));
        }
        if p.published_port > 65535 {
            return Err(invalid(format!(
                "--publish: published port {} is out of range (1 to 65535)",
                p.published_port
            )));
        }
        if p.publish_mode() == PublishMode::Host && p.published_port == 0 {
            return Err(invalid("--publish: mode=host needs a published port"));
        }
        if endpoint.mode == EndpointMode::Dnsrr as i32 && p.publish_mode() == PublishMode::Ingress {
            return Err(invalid(
                "--endpoint-mode dnsrr: ports cannot be published through the routing mesh (use mode=host)",
            ));
        }
        if p.published_port != 0 && !published.insert((p.published_port, p.protocol)) {
            return Err(invalid(format!(
                "--publish: port {}/{} is given twice",
                p.published_port,
                proto_name(p.protocol())
            )));
        }
    }
    Ok(())
}

/// Published ports of the service as allocated: ingress ports without a
/// number get one from [`DYNAMIC_PORTS`]; a number another service already
/// publishes through the routing mesh is refused.
fn allocate_ports(s: &StoreState, spec: &ServiceSpec, id: Option<&str>) -> Result<Vec<PortConfig>> {
    let taken: BTreeMap<(u32, i32), &str> = s
        .services
        .values()
        .filter(|v| Some(v.id.as_str()) != id)
        .flat_map(|v| {
            v.ports
                .iter()
                .filter(|p| p.publish_mode() == PublishMode::Ingress)
                .map(move |p| ((p.published_port, p.protocol), service_name(v)))
        })
        .collect();
    let mut mine: BTreeSet<(u32, i32)> = BTreeSet::new();
    let mut out = Vec::new();
    for p in spec
        .endpoint
        .as_ref()
        .map(|e| e.ports.as_slice())
        .unwrap_or_default()
    {
        let mut p = *p;
        if p.publish_mode() == PublishMode::Ingress {
            if p.published_port == 0 {
                p.published_port = DYNAMIC_PORTS
                    .clone()
                    .find(|n| {
                        !taken.contains_key(&(*n, p.protocol)) && !mine.contains(&(*n, p.protocol))
                    })
                    .ok_or_else(|| {
                        ControlError::FailedPrecondition(
                            "no published port left in 30000-32767".into(),
                        )
                    })?;
            } else if let Some(other) = taken.get(&(p.published_port, p.protocol)) {
                return Err(ControlError::FailedPrecondition(format!(
                    "port {}/{} is already published by service {other}",
                    p.published_port,
                    proto_name(p.protocol())
                )));
            }
            mine.insert((p.published_port, p.protocol));
        }
        out.push(p);
    }
    Ok(out)
}

/// VIPs for the service's networks (endpoint mode vip): kept for networks
/// it already had, allocated for new ones.
fn allocate_vips(
    s: &StoreState,
    spec: &ServiceSpec,
    current: &[VirtualIp],
) -> Result<Vec<VirtualIp>> {
    if spec
        .endpoint
        .as_ref()
        .is_some_and(|e| e.mode() == EndpointMode::Dnsrr)
    {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut targets: Vec<&str> = spec.networks.iter().map(|a| a.target.as_str()).collect();
    let ports = spec
        .endpoint
        .as_ref()
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    let ingress = allocator::ingress_network(s);
    if allocator::publishes_ingress(ports) {
        let ingress = ingress.ok_or_else(|| {
            ControlError::FailedPrecondition(
                "this cluster has no ingress network to publish ports on".into(),
            )
        })?;
        targets.push(&ingress.id);
    }
    for target in targets {
        if let Some(v) = current.iter().find(|v| v.network_id == target) {
            out.push(v.clone());
            continue;
        }
        let network = s
            .networks
            .get(target)
            .ok_or_else(|| ControlError::NotFound(format!("network {target} not found")))?;
        let mut used: BTreeSet<Ipv4Addr> = allocator::addresses_in_use(s, &network.id);
        let addr = allocator::allocate_address(network, &mut used).map_err(alloc_error)?;
        out.push(VirtualIp {
            network_id: network.id.clone(),
            addr,
        });
    }
    Ok(out)
}

fn view(s: &StoreState, v: &Service) -> ServiceView {
    let live = s
        .tasks
        .values()
        .filter(|t| t.service_id == v.id && t.desired_state() == TaskState::Running);
    let (mut running, mut total) = (0, 0);
    for t in live {
        total += 1;
        if t.status
            .as_ref()
            .is_some_and(|st| st.state() == TaskState::Running)
        {
            running += 1;
        }
    }
    let spec = v.spec.as_ref();
    let desired = match spec.map(|s| s.mode()) {
        // One task per node, as the orchestrator places them (before it has run, too).
        Some(ServiceMode::Global) => total.max(s.nodes.len() as _),
        _ => spec.map(|s| s.replicas).unwrap_or(0),
    };
    ServiceView {
        service: Some(v.clone()),
        running,
        desired,
    }
}

impl Manager {
    pub(crate) async fn create_service(
        &self,
        caller: &Caller,
        req: CreateServiceRequest,
    ) -> Result<ServiceView> {
        manager_check(caller)?;
        let spec = req.spec.ok_or_else(|| invalid("spec: required"))?;
        let id = ca::new_node_id()?;
        let mut created = None;
        self.store
            .update(|s| {
                let mut spec = spec.clone();
                validate(s, &mut spec, None)?;
                let now = now_ms();
                let service = Service {
                    id: id.clone(),
                    vips: allocate_vips(s, &spec, &[])?,
                    ports: allocate_ports(s, &spec, None)?,
                    spec: Some(spec),
                    created_at_ms: now,
                    updated_at_ms: now,
                    spec_version: 1,
                    ..Default::default()
                };
                created = Some(service.clone());
                Ok::<_, ControlError>(Transaction {
                    ops: vec![txn::put_if_unchanged(service)],
                })
            })
            .await?;
        let service =
            created.ok_or_else(|| ControlError::Internal("service was not created".into()))?;
        info!(service = %service.id, name = service_name(&service), "service created");
        Ok(self.store.read(|s| view(s, &service)))
    }

    pub(crate) async fn list_services(
        &self,
        _caller: &Caller,
        _req: ListServicesRequest,
    ) -> Result<ListServicesResponse> {
        let services = self
            .store
            .read_consistent(|s| s.services.values().map(|v| view(s, v)).collect())
            .await?;
        Ok(ListServicesResponse { services })
    }

    pub(crate) async fn get_service(
        &self,
        _caller: &Caller,
        req: GetServiceRequest,
    ) -> Result<ServiceView> {
        self.store
            .read_consistent(|s| resolve_service(s, &req.service).map(|v| view(s, v)))
            .await?
    }

    pub(crate) async fn update_service(
        &self,
        caller: &Caller,
        req: UpdateServiceRequest,
    ) -> Result<ServiceView> {
        manager_check(caller)?;
        let spec = req.spec.ok_or_else(|| invalid("spec: required"))?;
        let mut updated = None;
        self.store
            .update(|s| {
                let current = resolve_service(s, &req.service)?;
                if req.version != 0 && req.version != current.version {
                    return Err(ControlError::FailedPrecondition(format!(
                        "service {} changed since it was read (version {} is now {}): read it again",
                        service_name(current),
                        req.version,
                        current.version
                    )));
                }
                let mut spec = spec.clone();
                if spec.name != service_name(current) {
                    return Err(invalid("--name: a service cannot be renamed"));
                }
                let old = current.spec.clone().unwrap_or_default();
                if spec.mode() != old.mode() {
                    return Err(invalid("--mode: a service's mode cannot change"));
                }
                validate(s, &mut spec, Some(&current.id))?;
                let mut next = current.clone();
                next.vips = allocate_vips(s, &spec, &current.vips)?;
                next.ports = allocate_ports(s, &spec, Some(&current.id))?;
                let mode = |s: &ServiceSpec| s.endpoint.as_ref().map(|e| e.mode()).unwrap_or_default();
                // Tasks carry their networks, endpoint mode and published
                // ports: a change of any of them replaces the tasks.
                let ports = |s: &ServiceSpec| s.endpoint.as_ref().map(|e| e.ports.clone()).unwrap_or_default();
                if spec.task != old.task
                    || spec.networks != old.networks
                    || mode(&spec) != mode(&old)
                    || ports(&spec) != ports(&old)
                {
                    next.spec_version += 1;
                }
                next.spec = Some(spec);
                next.updated_at_ms = now_ms();
                updated = Some(next.clone());
                Ok(Transaction { ops: vec![txn::put_if_unchanged(next)] })
            })
            .await?;
        let service =
            updated.ok_or_else(|| ControlError::Internal("service was not updated".into()))?;
        info!(service = %service.id, name = service_name(&service), "service updated");
        Ok(self.store.read(|s| view(s, &service)))
    }

    pub(crate) async fn remove_service(
        &self,
        caller: &Caller,
        req: RemoveServiceRequest,
    ) -> Result<RemoveServiceResponse> {
        manager_check(caller)?;
        let mut removed = String::new();
        self.store
            .update(|s| {
                let v = resolve_service(s, &req.service)?;
                removed = v.id.clone();
                let now = now_ms();
                let mut ops = vec![txn::delete_if_unchanged(v)];
                ops.extend(
                    s.tasks
                        .values()
                        .filter(|t| t.service_id == v.id && t.desired_state() == TaskState::Running)
                        .map(|t| shut_down(t, now)),
                );
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        info!(service = %removed, "service removed");
        Ok(RemoveServiceResponse {})
    }

    pub(crate) async fn list_tasks(
        &self,
        _caller: &Caller,
        req: ListTasksRequest,
    ) -> Result<ListTasksResponse> {
        self.store
            .read_consistent(|s| {
                let service = if req.service.is_empty() {
                    None
                } else {
                    Some(resolve_service(s, &req.service)?.id.clone())
                };
                let node = if req.node.is_empty() {
                    None
                } else {
                    Some(resolve_node(s, &req.node)?.id.clone())
                };
                let tasks = s
                    .tasks
                    .values()
                    .filter(|t| service.as_ref().is_none_or(|id| t.service_id == *id))
                    .filter(|t| node.as_ref().is_none_or(|id| t.node_id == *id))
                    .map(|t| TaskView {
                        task: Some(t.clone()),
                        node_hostname: s
                            .nodes
                            .get(&t.node_id)
                            .map(|n| n.hostname.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
                Ok(ListTasksResponse { tasks })
            })
            .await?
    }
}
