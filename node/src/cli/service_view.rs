//! What `mesh service ls|ps|inspect` print: table cells and JSON.

use mesh_proto::{
    EndpointMode, PortConfig, PortProtocol, PublishMode, RestartCondition, ServiceMode,
    ServiceView, TaskHealth, TaskView, UpdateState,
};
use serde_json::{Value, json};

use super::format::{self, Row, RowKind};
use super::progress::state_name;

pub(super) fn mode_text(v: &ServiceView) -> String {
    let mode = v
        .service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .map(|s| s.mode())
        .unwrap_or_default();
    if mode == ServiceMode::Global {
        "global".into()
    } else {
        "replicated".into()
    }
}

pub(super) fn ports_text(v: &ServiceView) -> String {
    let ports = v
        .service
        .as_ref()
        .map(|s| s.ports.as_slice())
        .unwrap_or_default();
    ports
        .iter()
        .map(|p| {
            let proto = if p.protocol() == PortProtocol::Udp {
                "udp"
            } else {
                "tcp"
            };
            let mode = if p.publish_mode() == PublishMode::Host {
                " (host)"
            } else {
                ""
            };
            format!("*:{}->{}/{proto}{mode}", p.published_port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn service_json(v: &ServiceView) -> Value {
    let s = v.service.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let restart = task.restart.unwrap_or_default();
    let endpoint = spec.endpoint.clone().unwrap_or_default();
    let port = |p: &PortConfig| {
        json!({
            "protocol": if p.protocol() == PortProtocol::Udp { "udp" } else { "tcp" },
            "target": p.target_port,
            "published": p.published_port,
            "mode": if p.publish_mode() == PublishMode::Host { "host" } else { "ingress" },
        })
    };
    json!({
        "id": s.id,
        "name": spec.name,
        "version": s.version,
        "mode": mode_text(v),
        "replicas": spec.replicas,
        "running": v.running,
        "desired": v.desired,
        "command": task.command,
        "env": task.env,
        "restart": {
            "condition": match restart.condition() { RestartCondition::Any => "any", RestartCondition::OnFailure => "on-failure", RestartCondition::None => "none" },
            "delay_ms": restart.delay_ms,
            "max_attempts": restart.max_attempts,
        },
        "health": task.health.map(|h| json!({
            "cmd": h.cmd,
            "interval_ms": h.interval_ms,
            "timeout_ms": h.timeout_ms,
            "retries": h.retries,
            "start_period_ms": h.start_period_ms,
        })),
        "placement": task.placement.map(|p| json!({
            "constraints": p.constraints,
            "preferences": p.spread.iter().map(|k| json!({"spread": k})).collect::<Vec<_>>(),
            "max_replicas_per_node": p.max_replicas,
        })),
        // The networks as resolved to ids (the spec keeps what the user typed).
        "networks": if s.networks.is_empty() { &spec.networks } else { &s.networks }.iter().map(|n| json!({"network": n.target, "aliases": n.aliases})).collect::<Vec<_>>(),
        "endpoint_mode": if endpoint.mode() == EndpointMode::Dnsrr { "dnsrr" } else { "vip" },
        "vips": s.vips.iter().map(|v| json!({"network": v.network_id, "addr": v.addr})).collect::<Vec<_>>(),
        "ports": s.ports.iter().map(port).collect::<Vec<_>>(),
        "problems": v.problems,
        "labels": spec.labels,
        "spec_version": s.spec_version,
        "update_status": s.update_status.as_ref().map(|u| json!({
            "state": update_state_name(u.state()),
            "message": u.message,
            "started_at_ms": u.started_at_ms,
            "completed_at_ms": u.completed_at_ms,
        })),
        "has_previous_spec": s.previous_spec.is_some(),
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
    })
}

pub fn task_json(t: &TaskView) -> Value {
    let task = t.task.clone().unwrap_or_default();
    let st = task.status.clone().unwrap_or_default();
    json!({
        "id": task.id,
        "name": task.name,
        "service": task.service_name,
        "service_id": task.service_id,
        "slot": task.slot,
        "node": t.node_hostname,
        "node_id": task.node_id,
        "desired_state": state_name(task.desired_state()),
        "state": state_name(st.state()),
        "message": st.message,
        "error": st.err,
        "exit_code": st.exit_code,
        "restarts": st.restarts,
        "health": health_name(st.health()),
        "addresses": task.networks.iter().map(|a| json!({"network": a.network_id, "addr": a.addr, "mac": a.mac})).collect::<Vec<_>>(),
        "spec_version": task.spec_version,
        "updated_at_ms": task.updated_at_ms,
    })
}

/// The rows of `mesh service ls`. Command stands where Docker has Image.
pub(super) const SERVICE_ROWS: RowKind = RowKind {
    fields: &[
        ("ID", "ID"),
        ("Name", "NAME"),
        ("Mode", "MODE"),
        ("Replicas", "REPLICAS"),
        ("Ports", "PORTS"),
        ("Command", "COMMAND"),
    ],
    table: &["ID", "Name", "Mode", "Replicas", "Ports"],
};

pub(super) fn service_row(v: &ServiceView, no_trunc: bool) -> Row {
    let s = v.service.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    vec![
        format::id(&s.id, no_trunc),
        spec.name,
        mode_text(v),
        format!("{}/{}", v.running, v.desired),
        ports_text(v),
        spec.task.unwrap_or_default().command.join(" "),
    ]
}

/// The rows of `mesh service ps`.
pub(super) const TASK_ROWS: RowKind = RowKind {
    fields: &[
        ("ID", "ID"),
        ("Name", "NAME"),
        ("Service", "SERVICE"),
        ("Node", "NODE"),
        ("DesiredState", "DESIRED STATE"),
        ("CurrentState", "CURRENT STATE"),
        ("Error", "ERROR"),
        ("Addresses", "ADDRESSES"),
    ],
    table: &[
        "ID",
        "Name",
        "Node",
        "DesiredState",
        "CurrentState",
        "Addresses",
        "Error",
    ],
};

/// Docker's words for an update's state.
pub(super) fn update_state_name(s: UpdateState) -> &'static str {
    match s {
        UpdateState::Unknown => "unknown",
        UpdateState::Updating => "updating",
        UpdateState::Paused => "paused",
        UpdateState::Completed => "completed",
        UpdateState::RollbackStarted => "rollback_started",
        UpdateState::RollbackPaused => "rollback_paused",
        UpdateState::RollbackCompleted => "rollback_completed",
    }
}

/// Docker's health words; `None` for a task without a check.
fn health_name(h: TaskHealth) -> Option<&'static str> {
    match h {
        TaskHealth::None => None,
        TaskHealth::Starting => Some("starting"),
        TaskHealth::Healthy => Some("healthy"),
        TaskHealth::Unhealthy => Some("unhealthy"),
    }
}

/// ` (healthy)` after a state, as `docker ps` shows it.
fn health_suffix(h: TaskHealth) -> String {
    health_name(h)
        .map(|h| format!(" ({h})"))
        .unwrap_or_default()
}

pub(super) fn task_row(t: &TaskView, no_trunc: bool) -> Row {
    let task = t.task.clone().unwrap_or_default();
    let st = task.status.clone().unwrap_or_default();
    let addrs = task
        .networks
        .iter()
        .map(|n| n.addr.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let restarts = if st.restarts > 0 {
        format!(" ({} restarts)", st.restarts)
    } else {
        String::new()
    };
    vec![
        format::id(&task.id, no_trunc),
        task.name.clone(),
        task.service_name.clone(),
        t.node_hostname.clone(),
        state_name(task.desired_state()).to_string(),
        format!(
            "{}{}{restarts}",
            state_name(st.state()),
            health_suffix(st.health())
        ),
        st.err,
        addrs,
    ]
}
