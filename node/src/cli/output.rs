//! Tables for people and JSON for scripts. The JSON field names are an
//! interface: scripts rely on them, so they only ever grow.

use std::io::Write;

use mesh_proto::{InfoResponse, NodeAvailability, NodeRole, NodeStatus, NodeView};
use serde_json::{Value, json};
use tabwriter::TabWriter;

use super::format::{self, Format, Row, RowKind};
use crate::version::BuildInfo;

fn role(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
        NodeRole::Unspecified => "",
    }
}

pub fn availability(a: NodeAvailability) -> &'static str {
    match a {
        NodeAvailability::Active => "active",
        NodeAvailability::Pause => "pause",
        NodeAvailability::Drain => "drain",
    }
}

fn status(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
        NodeStatus::Unknown => "unknown",
    }
}

pub fn nodes_json(nodes: &[NodeView], me: &str) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id,
                    "hostname": n.hostname,
                    "addr": n.addr,
                    "role": role(n.role()),
                    "desired_role": role(n.desired_role()),
                    "status": status(n.status()),
                    "availability": availability(n.availability()),
                    "labels": n.labels,
                    "leader": n.leader,
                    "manager_status": n.manager_status,
                    "self": n.id == me,
                    "raft_id": n.raft_id,
                    "control_port": n.control_port,
                    "gossip_port": n.gossip_port,
                    "created_at_ms": n.created_at_ms,
                    "updated_at_ms": n.updated_at_ms,
                })
            })
            .collect(),
    )
}

pub fn print_nodes(nodes: &[NodeView], me: &str) -> anyhow::Result<()> {
    let mut tw = TabWriter::new(std::io::stdout()).padding(3);
    writeln!(
        tw,
        "ID\tHOSTNAME\tADDRESS\tSTATUS\tAVAILABILITY\tROLE\tMANAGER STATUS"
    )?;
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    for n in sorted {
        let mark = if n.id == me { " *" } else { "" };
        writeln!(
            tw,
            "{}{mark}\t{}\t{}\t{}\t{}\t{}\t{}",
            n.id,
            n.hostname,
            n.addr,
            status(n.status()),
            availability(n.availability()),
            role(n.role()),
            n.manager_status
        )?;
    }
    tw.flush()?;
    Ok(())
}

pub fn info_json(i: &InfoResponse) -> Value {
    json!({
        "node_id": i.node_id,
        "cluster_id": i.cluster_id,
        "role": role(i.role()),
        "hostname": i.hostname,
        "addr": i.addr,
        "leader_id": i.leader_id,
        "leader_addr": i.leader_addr,
        "managers": i.managers,
        "raft": { "term": i.raft_term, "commit_index": i.raft_commit_index, "applied_index": i.raft_applied_index },
        "gossip": { "members": i.gossip_members, "auth_failures": i.gossip_auth_failures },
        "cert_not_after_ms": i.cert_not_after_ms,
    })
}

pub fn print_info(i: &InfoResponse, format: &Format) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&info_json(i))?);
            return Ok(());
        }
        Format::Template(_) => {
            return format::write_docs(&mut std::io::stdout().lock(), format, &[info_json(i)]);
        }
        Format::Table => {}
    }
    if i.node_id.is_empty() {
        println!("This node ({}) is not part of a cluster.", i.hostname);
        return Ok(());
    }
    let mut tw = TabWriter::new(std::io::stdout()).padding(2);
    writeln!(tw, "Node ID:\t{}", i.node_id)?;
    writeln!(tw, "Hostname:\t{}", i.hostname)?;
    writeln!(tw, "Address:\t{}", i.addr)?;
    writeln!(tw, "Role:\t{}", role(i.role()))?;
    writeln!(tw, "Cluster ID:\t{}", i.cluster_id)?;
    let leader = if i.leader_id.is_empty() {
        i.leader_addr.clone()
    } else {
        format!("{} ({})", i.leader_id, i.leader_addr)
    };
    writeln!(
        tw,
        "Leader:\t{}",
        if leader.is_empty() {
            "unknown".into()
        } else {
            leader
        }
    )?;
    writeln!(tw, "Managers:\t{}", i.managers.join(", "))?;
    if i.role() == NodeRole::Manager {
        writeln!(
            tw,
            "Raft:\tterm {}, commit index {}, applied index {}",
            i.raft_term, i.raft_commit_index, i.raft_applied_index
        )?;
    }
    writeln!(
        tw,
        "Gossip:\t{} members alive, {} packets failed authentication",
        i.gossip_members, i.gossip_auth_failures
    )?;
    let expires =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(i.cert_not_after_ms.max(0) as u64);
    writeln!(
        tw,
        "Certificate expires:\t{}",
        humantime::format_rfc3339_seconds(expires)
    )?;
    tw.flush()?;
    Ok(())
}

/// The rows of `mesh node ls`.
pub const NODE_ROWS: RowKind = RowKind {
    fields: &[
        ("ID", "ID"),
        ("Self", "SELF"),
        ("Hostname", "HOSTNAME"),
        ("Address", "ADDRESS"),
        ("Status", "STATUS"),
        ("Availability", "AVAILABILITY"),
        ("Role", "ROLE"),
        ("ManagerStatus", "MANAGER STATUS"),
    ],
    table: &[
        "ID",
        "Hostname",
        "Address",
        "Status",
        "Availability",
        "Role",
        "ManagerStatus",
    ],
};

pub fn node_row(n: &NodeView, me: &str) -> Row {
    vec![
        n.id.clone(),
        (n.id == me).to_string(),
        n.hostname.clone(),
        n.addr.clone(),
        status(n.status()).to_string(),
        availability(n.availability()).to_string(),
        role(n.role()).to_string(),
        n.manager_status.clone(),
    ]
}

/// The nodes in the order of the table: by hostname.
pub fn sort_nodes(nodes: &mut [NodeView]) {
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
}

/// The document `mesh version` prints: this binary's build under `Client`, the daemon's
/// under `Server` (`null` when it could not be asked).
pub fn version_json(client: &BuildInfo, server: Option<&BuildInfo>) -> Value {
    json!({
        "Client": client.to_json(),
        "Server": server.map(BuildInfo::to_json),
    })
}

/// `mesh version` in `format`: `table` (Docker's layout: a Client section, then a Server
/// section when the daemon answered), `json`, or a template over [`version_json`].
pub fn print_version(
    out: &mut impl Write,
    format: &Format,
    client: &BuildInfo,
    server: Option<&BuildInfo>,
) -> anyhow::Result<()> {
    match format {
        Format::Table => {
            write_build(out, "Client", client)?;
            if let Some(server) = server {
                writeln!(out)?;
                write_build(out, "Server", server)?;
            }
        }
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&version_json(client, server))?
        )?,
        _ => format::write_docs(out, format, &[version_json(client, server)])?,
    }
    Ok(())
}

fn write_build(out: &mut impl Write, title: &str, b: &BuildInfo) -> std::io::Result<()> {
    writeln!(out, "{title}:")?;
    let mut line = |key: &str, value: &str| writeln!(out, " {:<14}{value}", format!("{key}:"));
    line("Version", &b.version)?;
    line("API version", &b.api_version)?;
    if !b.git_commit.is_empty() {
        line("Git commit", &b.git_commit)?;
    }
    line("Rust version", &b.rust_version)?;
    line("OS/Arch", &format!("{}/{}", b.os, b.arch))
}
