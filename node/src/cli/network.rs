//! `mesh network ...`.

use std::collections::HashMap;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, NetworkSpec, NetworkView,
    RemoveNetworkRequest,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::format::{self, Format, FormatArgs, InspectFormatArgs, Row, RowKind};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks in detail (JSON).
    Inspect(InspectArgs),
    /// Remove networks.
    #[command(alias = "remove")]
    Rm(NamesArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Network driver.
    #[arg(long, short = 'd', default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form (default: one from the cluster's address pool).
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway address (default: the subnet's first address).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Part of the subnet task addresses come from.
    #[arg(long)]
    pub ip_range: Option<String>,
    /// Let tasks of any service attach later.
    #[arg(long)]
    pub attachable: bool,
    /// No egress to the outside world.
    #[arg(long)]
    pub internal: bool,
    /// Driver options: mtu=N.
    #[arg(long = "opt", short = 'o', value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
    /// A label on the network (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Name of the network.
    pub name: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Print network ids only, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole ids (tables and templates show their first 12 characters).
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Networks: names, ids or id prefixes.
    #[arg(required = true)]
    pub networks: Vec<String>,
    #[command(flatten)]
    pub format: InspectFormatArgs,
    /// Add, per node, what its kernel holds for the network (peers, FDB and neighbor
    /// entries, load balancer backends per VIP) against what its agent wants, differences
    /// flagged `missing` or `stray`.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    /// Networks: names, ids or id prefixes.
    #[arg(required = true)]
    pub networks: Vec<String>,
}

/// One node's kernel state of a network, for `network inspect --verbose`.
fn node_state_json(n: &mesh_proto::NodeNetworkState) -> serde_json::Value {
    let entries = |v: &[mesh_proto::KernelEntry], key: &str, value: &str| {
        v.iter()
            .map(|e| serde_json::json!({ key: e.key, value: e.value, "state": e.state }))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "node": n.hostname,
        "node_id": n.node_id,
        "sandbox": n.has_sandbox,
        "peers": n.peers,
        "fdb": entries(&n.fdb, "mac", "vtep"),
        "neighbors": entries(&n.neighbors, "ip", "mac"),
        "lb_namespace": n.lb_namespace,
        "lb": entries(&n.lb, "vip", "backend"),
        "differences": n.differences,
        "error": n.error,
    })
}

/// The rows of `mesh network ls`. Scope is always `swarm`: every network is the cluster's.
pub const NETWORK_ROWS: RowKind = RowKind {
    fields: &[
        ("ID", "NETWORK ID"),
        ("Name", "NAME"),
        ("Driver", "DRIVER"),
        ("Scope", "SCOPE"),
        ("Subnet", "SUBNET"),
        ("VNI", "VNI"),
        ("Tasks", "TASKS"),
        ("Internal", "INTERNAL"),
        ("Attachable", "ATTACHABLE"),
    ],
    table: &["ID", "Name", "Driver", "Subnet", "VNI", "Tasks"],
};

pub fn network_row(v: &NetworkView, no_trunc: bool) -> Row {
    let n = v.network.clone().unwrap_or_default();
    let s = n.spec.clone().unwrap_or_default();
    vec![
        format::id(&n.id, no_trunc),
        s.name,
        s.driver,
        "swarm".into(),
        n.subnet,
        n.vni.to_string(),
        v.tasks.to_string(),
        s.internal.to_string(),
        s.attachable.to_string(),
    ]
}

/// `KEY=VALUE` pairs of a repeatable flag.
pub fn key_values(flag: &str, items: &[String]) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag}: {kv:?} is not KEY=VALUE"),
        })
        .collect()
}

fn spec(a: CreateArgs) -> anyhow::Result<NetworkSpec> {
    let mut mtu = 0;
    for (k, v) in key_values("--opt", &a.opts)? {
        match k.as_str() {
            "mtu" => {
                mtu = v
                    .parse()
                    .with_context(|| format!("--opt mtu={v}: not a number"))?
            }
            other => bail!("--opt: unknown option {other:?} (known: mtu)"),
        }
    }
    Ok(NetworkSpec {
        name: a.name,
        driver: a.driver,
        subnet: a.subnet.unwrap_or_default(),
        gateway: a.gateway.unwrap_or_default(),
        ip_range: a.ip_range.unwrap_or_default(),
        attachable: a.attachable,
        internal: a.internal,
        mtu,
        labels: key_values("--label", &a.labels)?,
        ..Default::default()
    })
}

pub fn network_json(v: &NetworkView) -> Value {
    let n = v.network.clone().unwrap_or_default();
    let s = n.spec.clone().unwrap_or_default();
    json!({
        "id": n.id,
        "name": s.name,
        "driver": s.driver,
        "subnet": n.subnet,
        "gateway": n.gateway,
        "ip_range": s.ip_range,
        "vni": n.vni,
        "mtu": s.mtu,
        "attachable": s.attachable,
        "internal": s.internal,
        "ingress": s.ingress,
        "encrypted": s.encrypted,
        "labels": s.labels,
        "peers": v.peers,
        "tasks": v.tasks,
        "created_at_ms": n.created_at_ms,
    })
}

pub async fn run(control: &mut ControlClient<Channel>, cmd: NetworkCommand) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create(a) => {
            let v = control
                .create_network(CreateNetworkRequest {
                    spec: Some(spec(a)?),
                })
                .await?
                .into_inner();
            println!("{}", v.network.map(|n| n.id).unwrap_or_default());
        }
        NetworkCommand::Ls(a) => {
            let format = Format::parse(&a.format.format, Some(&NETWORK_ROWS))?;
            let mut nets = control
                .list_networks(ListNetworksRequest {})
                .await?
                .into_inner()
                .networks;
            nets.sort_by_key(|v| {
                v.network
                    .as_ref()
                    .and_then(|n| n.spec.as_ref())
                    .map(|s| s.name.clone())
            });
            format::print_list(&NETWORK_ROWS, &format, a.quiet, &nets, network_json, |v| {
                network_row(v, a.no_trunc)
            })?;
        }
        NetworkCommand::Inspect(a) => {
            let format = Format::parse(&a.format.format, None)?;
            let mut docs = Vec::new();
            for name in a.networks {
                let mut doc = network_json(
                    &control
                        .get_network(GetNetworkRequest {
                            network: name.clone(),
                        })
                        .await?
                        .into_inner(),
                );
                if a.verbose {
                    let nodes = control
                        .inspect_network_nodes(GetNetworkRequest { network: name })
                        .await?
                        .into_inner()
                        .nodes;
                    doc["nodes"] = nodes.iter().map(node_state_json).collect();
                }
                docs.push(doc);
            }
            format::write_docs(&mut std::io::stdout().lock(), &format, &docs)?;
        }
        NetworkCommand::Rm(a) => {
            for name in a.networks {
                control
                    .remove_network(RemoveNetworkRequest {
                        network: name.clone(),
                    })
                    .await?;
                println!("{name}");
            }
        }
    }
    Ok(())
}
