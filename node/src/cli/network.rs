//! `mesh network ...`.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, NetworkSpec, NetworkView,
    RemoveNetworkRequest,
};
use serde_json::{Value, json};
use tabwriter::TabWriter;
use tonic::transport::Channel;

use super::{Format, FormatArgs};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(FormatArgs),
    /// Show networks in detail (JSON).
    Inspect(NamesArgs),
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
pub struct NamesArgs {
    /// Networks: names, ids or id prefixes.
    #[arg(required = true)]
    pub networks: Vec<String>,
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
        NetworkCommand::Ls(f) => {
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
            if f.format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Value::Array(
                        nets.iter().map(network_json).collect()
                    ))?
                );
                return Ok(());
            }
            let mut tw = TabWriter::new(std::io::stdout()).padding(3);
            writeln!(tw, "NETWORK ID\tNAME\tDRIVER\tSUBNET\tVNI\tTASKS")?;
            for v in &nets {
                let n = v.network.clone().unwrap_or_default();
                let s = n.spec.clone().unwrap_or_default();
                writeln!(
                    tw,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    &n.id[..n.id.len().min(12)],
                    s.name,
                    s.driver,
                    n.subnet,
                    n.vni,
                    v.tasks
                )?;
            }
            tw.flush()?;
        }
        NetworkCommand::Inspect(a) => {
            let mut out = Vec::new();
            for name in a.networks {
                out.push(network_json(
                    &control
                        .get_network(GetNetworkRequest { network: name })
                        .await?
                        .into_inner(),
                ));
            }
            println!("{}", serde_json::to_string_pretty(&Value::Array(out))?);
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
