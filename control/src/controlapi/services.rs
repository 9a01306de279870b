//! Service and task calls of the control API.
//!
//! A stored service keeps its spec exactly as the user gave it; what the system resolved
//! lives beside it: the networks by id ([`mesh_proto::Service::networks`]), the VIPs and the
//! published ports as allocated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_common::auth::Caller;
use mesh_common::ids::random_id;
use mesh_common::task::{health_problem, health_settings};
use mesh_common::time::now_ms;
use mesh_proto::{
    CreateServiceRequest, EndpointMode, GetServiceRequest, ListServicesRequest,
    ListServicesResponse, ListTasksRequest, ListTasksResponse, NetworkAttachmentConfig,
    NodeAvailability, PublishMode, RemoveServiceRequest, RemoveServiceResponse, Service,
    ServiceMode, ServiceSpec, ServiceView, TaskState, TaskView, Transaction, UpdateServiceRequest,
    UpdateState, UpdateStatus,
};
use tracing::info;

use super::context::{ApiContext, manager_check};
use super::resolve::{check_dns_name, resolve_network, resolve_node, resolve_service};
use crate::allocator::{self, service::protocol_name};
use crate::config::LimitsConfig;
use crate::error::{ControlError, Result};
use crate::objects::{availability, service_name};
use crate::placement::Rules;
use crate::store::{StoreState, txn};

fn invalid(msg: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(msg.into())
}

/// Checks a spec against the store and resolves its networks to ids. `id` is the service
/// being updated (its own name and ports do not conflict). The spec is not changed.
fn validate(
    s: &StoreState,
    spec: &ServiceSpec,
    id: Option<&str>,
    limits: &LimitsConfig,
) -> Result<Vec<NetworkAttachmentConfig>> {
    check_dns_name("--name", "service", &spec.name)?;
    if spec.replicas > limits.max_replicas {
        return Err(invalid(format!(
            "--replicas: {} is more than the {} replicas a service may have ([limits] max_replicas)",
            spec.replicas, limits.max_replicas
        )));
    }
    let size = prost::Message::encoded_len(spec) as u64;
    if size > limits.max_spec_bytes {
        return Err(invalid(format!(
            "the service spec is {size} bytes, more than {} ([limits] max_spec_bytes): use fewer or shorter labels, env values or arguments",
            limits.max_spec_bytes
        )));
    }
    let wanted = |sp: &ServiceSpec| match sp.mode() {
        ServiceMode::Global => s.nodes.len() as u64,
        _ => sp.replicas,
    };
    let others_want: u64 = s
        .services
        .values()
        .filter(|v| Some(v.id.as_str()) != id)
        .filter_map(|v| v.spec.as_ref())
        .map(wanted)
        .sum();
    let total = others_want.saturating_add(wanted(spec));
    let now = id
        .and_then(|id| s.services.get(id))
        .and_then(|v| v.spec.as_ref())
        .map_or(0, wanted);
    // A change that asks for fewer tasks always goes (limits may have been lowered).
    if total > limits.max_tasks && wanted(spec) > now {
        return Err(ControlError::FailedPrecondition(format!(
            "the services would ask for {total} tasks, more than the {} the cluster may run ([limits] max_tasks)",
            limits.max_tasks
        )));
    }
    if id.is_none() && s.services.len() as u64 >= limits.max_services {
        return Err(ControlError::FailedPrecondition(format!(
            "the cluster already has {} services, the most it may hold ([limits] max_services)",
            s.services.len()
        )));
    }
    // DNS compares names without case: `web` and `WEB` are one name there.
    let others = || s.services.values().filter(|v| Some(v.id.as_str()) != id);
    if let Some(other) = others().find(|v| service_name(v).eq_ignore_ascii_case(&spec.name)) {
        return Err(ControlError::AlreadyExists(format!(
            "service {} already exists ({})",
            service_name(other),
            other.id
        )));
    }
    let aliases = |v: &Service| -> Vec<String> {
        v.spec
            .iter()
            .flat_map(|sp| sp.networks.iter())
            .flat_map(|a| a.aliases.iter().cloned())
            .collect()
    };
    if let Some(other) = others().find(|v| {
        aliases(v)
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&spec.name))
    }) {
        return Err(ControlError::AlreadyExists(format!(
            "--name: {} is a network alias of service {}",
            spec.name,
            service_name(other)
        )));
    }
    let task = spec.task.clone().unwrap_or_default();
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
    if let Some(u) = &spec.update {
        let ratio = u.max_failure_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(invalid(format!(
                "--update-max-failure-ratio: {ratio} is not a number from 0 to 1"
            )));
        }
        if u.monitor_ms > 24 * 3600 * 1000 || u.delay_ms > 24 * 3600 * 1000 {
            return Err(invalid(
                "--update-monitor and --update-delay are at most 24h",
            ));
        }
    }
    if let Some(h) = &task.health {
        let (interval, timeout, retries, start_period) = health_settings(h);
        if let Some(problem) = health_problem(&h.cmd, interval, timeout, retries, start_period) {
            return Err(invalid(problem));
        }
    }
    if let Some(p) = &task.placement {
        Rules::parse(p).map_err(invalid)?;
        if spec.mode() == ServiceMode::Global && p.max_replicas != 0 {
            return Err(invalid(
                "--replicas-max-per-node: a global service runs one task per node already",
            ));
        }
        if p.max_replicas > limits.max_replicas {
            return Err(invalid(format!(
                "--replicas-max-per-node: {} is more than the {} replicas a service may have ([limits] max_replicas)",
                p.max_replicas, limits.max_replicas
            )));
        }
    }
    let mut seen = BTreeSet::new();
    let mut resolved = Vec::new();
    for attach in &spec.networks {
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
            check_dns_name("--network alias", "alias", alias)?;
            if let Some(other) = others().find(|v| service_name(v).eq_ignore_ascii_case(alias)) {
                return Err(ControlError::AlreadyExists(format!(
                    "--network alias: {alias} is the name of service {}",
                    service_name(other)
                )));
            }
        }
        resolved.push(NetworkAttachmentConfig {
            target: network.id.clone(),
            aliases: attach.aliases.clone(),
        });
    }
    let endpoint = spec.endpoint.clone().unwrap_or_default();
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
                protocol_name(p.protocol())
            )));
        }
    }
    Ok(resolved)
}

/// Resolves and allocates what `spec` needs, onto `service` (keeping VIPs it already had).
fn resolve_and_allocate(
    s: &StoreState,
    spec: &ServiceSpec,
    service: &mut Service,
    limits: &LimitsConfig,
) -> Result<()> {
    let id = (!service.id.is_empty()).then_some(service.id.as_str());
    let networks = validate(s, spec, id, limits)?;
    let endpoint = spec.endpoint.clone().unwrap_or_default();
    let ports = allocator::allocate_ports(s, &endpoint.ports, id)?;
    service.vips = allocator::allocate_vips(
        s,
        &networks,
        endpoint.mode() == EndpointMode::Dnsrr,
        &ports,
        &service.vips,
    )?;
    service.ports = ports;
    service.networks = networks;
    Ok(())
}

/// `current` with `spec`, checked and allocated: the tasks are replaced (spec version bumped,
/// a rolling update started) when what they carry changes, and the spec it had is kept as
/// the previous one. `rollback` marks the change as a return to the previous spec (by
/// `mesh service rollback`, or by an update's failure action).
pub(crate) fn respec(
    s: &StoreState,
    current: &Service,
    spec: ServiceSpec,
    rollback: bool,
    limits: &LimitsConfig,
    now: i64,
) -> Result<Service> {
    if spec.name != service_name(current) {
        return Err(invalid("--name: a service cannot be renamed"));
    }
    let old = current.spec.clone().unwrap_or_default();
    if spec.mode() != old.mode() {
        return Err(invalid("--mode: a service's mode cannot change"));
    }
    let mut next = current.clone();
    resolve_and_allocate(s, &spec, &mut next, limits)?;
    // Tasks carry their networks, endpoint mode and published ports: a change of any of them
    // replaces the tasks.
    let mode = |s: &ServiceSpec| s.endpoint.as_ref().map(|e| e.mode()).unwrap_or_default();
    let ports = |s: &ServiceSpec| {
        s.endpoint
            .as_ref()
            .map(|e| e.ports.clone())
            .unwrap_or_default()
    };
    let task = |s: &ServiceSpec| s.task.clone().unwrap_or_default();
    if task(&spec) != task(&old)
        || next.networks != crate::objects::service_networks(current)
        || mode(&spec) != mode(&old)
        || ports(&spec) != ports(&old)
    {
        next.spec_version += 1;
        let (state, message) = if rollback {
            (UpdateState::RollbackStarted, "rollback started")
        } else {
            (UpdateState::Updating, "update in progress")
        };
        next.update_status = Some(UpdateStatus {
            state: state as i32,
            message: message.into(),
            started_at_ms: now,
            completed_at_ms: 0,
        });
    }
    if spec != old {
        next.previous_spec = Some(old);
    }
    next.spec = Some(spec);
    next.updated_at_ms = now;
    Ok(next)
}

fn view(s: &StoreState, v: &Service) -> ServiceView {
    let live = s
        .tasks
        .values()
        .filter(|t| t.service_id == v.id && t.desired_state() == TaskState::Running);
    let mut running = 0;
    // Nodes with a live task of the service.
    let mut on: BTreeSet<&str> = BTreeSet::new();
    let mut problems: BTreeMap<String, usize> = BTreeMap::new();
    for t in live {
        if !t.node_id.is_empty() {
            on.insert(&t.node_id);
        }
        let st = t.status.clone().unwrap_or_default();
        if st.state() == TaskState::Running {
            running += 1;
        } else if !st.err.is_empty() {
            *problems.entry(st.err).or_default() += 1;
        }
    }
    let spec = v.spec.as_ref();
    let desired = match spec.map(|s| s.mode()) {
        // One task per node the orchestrator gives one (before it has run, too): active
        // nodes that satisfy the constraints, and nodes that still run one (paused).
        Some(ServiceMode::Global) => {
            let rules = Rules::of(
                spec.and_then(|s| s.task.as_ref())
                    .and_then(|t| t.placement.as_ref()),
            );
            s.nodes
                .values()
                .filter(|n| {
                    on.contains(n.id.as_str())
                        || (availability(n) == NodeAvailability::Active && rules.fits(n))
                })
                .count() as u64
        }
        _ => spec.map(|s| s.replicas).unwrap_or(0),
    };
    ServiceView {
        service: Some(v.clone()),
        running,
        desired,
        problems: problems
            .into_iter()
            .map(|(why, n)| {
                let tasks = if n == 1 { "task" } else { "tasks" };
                format!("{n} {tasks}: {why}")
            })
            .collect(),
    }
}

pub struct ServiceApi {
    ctx: Arc<ApiContext>,
}

impl ServiceApi {
    pub fn new(ctx: Arc<ApiContext>) -> ServiceApi {
        ServiceApi { ctx }
    }

    pub async fn create_service(
        &self,
        caller: &Caller,
        req: CreateServiceRequest,
    ) -> Result<ServiceView> {
        manager_check(caller)?;
        let spec = req.spec.ok_or_else(|| invalid("spec: required"))?;
        let id = random_id().map_err(|e| ControlError::Internal(e.to_string()))?;
        let mut created = None;
        self.ctx
            .store
            .update(|s| {
                let now = now_ms();
                let mut service = Service {
                    id: id.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                    spec_version: 1,
                    ..Default::default()
                };
                // Its own id does not exist yet: nothing of it can conflict.
                service.id.clear();
                resolve_and_allocate(s, &spec, &mut service, &self.ctx.config.limits)?;
                service.id = id.clone();
                service.spec = Some(spec.clone());
                created = Some(service.clone());
                Ok::<_, ControlError>(Transaction {
                    ops: vec![txn::put_if_unchanged(service)],
                })
            })
            .await?;
        let service =
            created.ok_or_else(|| ControlError::Internal("service was not created".into()))?;
        info!(service = %service.id, name = service_name(&service), "service created");
        Ok(self.ctx.store.read(|s| view(s, &service)))
    }

    pub async fn list_services(
        &self,
        _caller: &Caller,
        _req: ListServicesRequest,
    ) -> Result<ListServicesResponse> {
        let services = self
            .ctx
            .store
            .read_consistent(|s| s.services.values().map(|v| view(s, v)).collect())
            .await?;
        Ok(ListServicesResponse { services })
    }

    pub async fn get_service(
        &self,
        _caller: &Caller,
        req: GetServiceRequest,
    ) -> Result<ServiceView> {
        self.ctx
            .store
            .read_consistent(|s| resolve_service(s, &req.service).map(|v| view(s, v)))
            .await?
    }

    pub async fn update_service(
        &self,
        caller: &Caller,
        req: UpdateServiceRequest,
    ) -> Result<ServiceView> {
        manager_check(caller)?;
        let spec = match (req.spec.clone(), req.rollback) {
            (Some(spec), _) => spec,
            (None, true) => ServiceSpec::default(),
            (None, false) => return Err(invalid("spec: required")),
        };
        let mut updated = None;
        self.ctx
            .store
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
                let spec = if req.rollback {
                    current.previous_spec.clone().ok_or_else(|| {
                        ControlError::FailedPrecondition(format!(
                            "service {} has no previous spec to roll back to",
                            service_name(current)
                        ))
                    })?
                } else {
                    spec.clone()
                };
                let next = respec(s, current, spec, req.rollback, &self.ctx.config.limits, now_ms())?;
                updated = Some(next.clone());
                Ok(Transaction {
                    ops: vec![txn::put_if_unchanged(next)],
                })
            })
            .await?;
        let service =
            updated.ok_or_else(|| ControlError::Internal("service was not updated".into()))?;
        info!(service = %service.id, name = service_name(&service), "service updated");
        Ok(self.ctx.store.read(|s| view(s, &service)))
    }

    pub async fn remove_service(
        &self,
        caller: &Caller,
        req: RemoveServiceRequest,
    ) -> Result<RemoveServiceResponse> {
        manager_check(caller)?;
        let mut removed = String::new();
        self.ctx
            .store
            .update(|s| {
                // The orchestrator shuts its tasks down, in batches: however many there
                // are, removing a service is one small write.
                let v = resolve_service(s, &req.service)?;
                removed = v.id.clone();
                Ok::<_, ControlError>(Transaction {
                    ops: vec![txn::delete_if_unchanged(v)],
                })
            })
            .await?;
        info!(service = %removed, "service removed");
        Ok(RemoveServiceResponse {})
    }

    pub async fn list_tasks(
        &self,
        _caller: &Caller,
        req: ListTasksRequest,
    ) -> Result<ListTasksResponse> {
        self.ctx
            .store
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
