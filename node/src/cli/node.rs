//! `mesh node ...`.

use std::time::Duration;

use clap::{Args, Subcommand};
use mesh_proto::control_client::ControlClient;
use mesh_proto::local_client::LocalClient;
use mesh_proto::{
    GetNodeRequest, InfoRequest, ListNodesRequest, ListTasksRequest, NodeRole, NodeView,
    RemoveNodeRequest, SetNodeRoleRequest, UpdateNodeRequest,
};
use tonic::transport::Channel;

use super::format::{self, Format, FormatArgs, InspectFormatArgs};
use super::output::{self, NODE_ROWS};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the nodes of the cluster.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show details of nodes (JSON).
    Inspect(NodesArgs),
    /// Make workers managers.
    Promote(RoleArgs),
    /// Make managers workers.
    Demote(RoleArgs),
    /// List the tasks on nodes (this node by default).
    Ps(NodePsArgs),
    /// Set a node's availability or labels: `mesh node update --availability drain node2`.
    Update(UpdateArgs),
    /// Remove nodes from the cluster.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

#[derive(Args, Debug)]
pub struct NodePsArgs {
    /// Node ids, id prefixes or hostnames (default: this node).
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub list: super::service::TaskListArgs,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Node id, id prefix or hostname.
    pub node: String,
    /// active: takes new tasks; pause: keeps its tasks, takes no new ones; drain: its tasks
    /// are withdrawn from every load balancer, stopped and placed on other nodes.
    #[arg(long, value_parser = ["active", "pause", "drain"])]
    pub availability: Option<String>,
    /// Add or replace a label (`key=value`, or `key`), for placement constraints.
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a label.
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Print node ids only.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Node ids, id prefixes or hostnames.
    #[arg(required = true)]
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub format: InspectFormatArgs,
}

#[derive(Args, Debug)]
pub struct RoleArgs {
    /// Node ids, id prefixes or hostnames.
    #[arg(required = true)]
    pub nodes: Vec<String>,
    /// Return at once instead of waiting for the role change to complete.
    #[arg(short, long)]
    pub detach: bool,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Node ids, id prefixes or hostnames.
    #[arg(required = true)]
    pub nodes: Vec<String>,
    /// Remove even a node that is still up.
    #[arg(short, long)]
    pub force: bool,
}

/// How long `promote`/`demote` wait for the change to take effect.
const ROLE_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a role change waits out a cluster without a leader.
const LEADERLESS_PATIENCE: Duration = Duration::from_secs(15);

pub async fn run(
    local: &mut LocalClient<Channel>,
    control: &mut ControlClient<Channel>,
    cmd: NodeCommand,
) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls(a) => {
            let format = Format::parse(&a.format.format, Some(&NODE_ROWS))?;
            let mut nodes = control
                .list_nodes(ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            if a.quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
                return Ok(());
            }
            let me = local.info(InfoRequest {}).await?.into_inner().node_id;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&output::nodes_json(&nodes, &me))?
                ),
                Format::Table => output::print_nodes(&nodes, &me)?,
                Format::Template(_) => {
                    output::sort_nodes(&mut nodes);
                    let rows: Vec<_> = nodes.iter().map(|n| output::node_row(n, &me)).collect();
                    format::write_rows(&mut std::io::stdout().lock(), &NODE_ROWS, &format, &rows)?;
                }
            }
        }
        NodeCommand::Inspect(a) => {
            let format = Format::parse(&a.format.format, None)?;
            let me = local.info(InfoRequest {}).await?.into_inner().node_id;
            let mut views = Vec::new();
            for n in a.nodes {
                views.push(
                    control
                        .get_node(GetNodeRequest { node: n })
                        .await?
                        .into_inner(),
                );
            }
            let docs = match output::nodes_json(&views, &me) {
                serde_json::Value::Array(docs) => docs,
                _ => unreachable!("nodes_json makes an array"),
            };
            format::write_docs(&mut std::io::stdout().lock(), &format, &docs)?;
        }
        NodeCommand::Ps(a) => {
            let nodes = if a.nodes.is_empty() {
                vec![local.info(InfoRequest {}).await?.into_inner().node_id]
            } else {
                a.nodes
            };
            let queries = nodes
                .into_iter()
                .map(|node| ListTasksRequest {
                    service: String::new(),
                    node,
                })
                .collect();
            super::service::print_tasks(control, queries, &a.list).await?;
        }
        NodeCommand::Update(a) => {
            let v = control
                .update_node(UpdateNodeRequest {
                    node: a.node,
                    availability: a.availability.unwrap_or_default(),
                    label_add: a.label_add,
                    label_rm: a.label_rm,
                })
                .await?
                .into_inner();
            println!("{}", v.hostname);
        }
        NodeCommand::Promote(a) => set_role(control, a, NodeRole::Manager).await?,
        NodeCommand::Demote(a) => set_role(control, a, NodeRole::Worker).await?,
        NodeCommand::Rm(a) => {
            for n in a.nodes {
                control
                    .remove_node(RemoveNodeRequest {
                        node: n.clone(),
                        force: a.force,
                    })
                    .await?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

fn done(v: &NodeView, role: NodeRole) -> bool {
    match role {
        NodeRole::Manager => {
            v.role() == NodeRole::Manager
                && matches!(v.manager_status.as_str(), "leader" | "reachable")
        }
        _ => v.role() == NodeRole::Worker && v.manager_status.is_empty(),
    }
}

/// Asks for the role change, retrying while the cluster has no leader (as
/// right after a demoted leader stepped down): the request is idempotent.
async fn set_role_retrying(
    control: &mut ControlClient<Channel>,
    node: &str,
    role: NodeRole,
) -> anyhow::Result<NodeView> {
    let deadline = tokio::time::Instant::now() + LEADERLESS_PATIENCE;
    loop {
        let req = SetNodeRoleRequest {
            node: node.to_string(),
            role: role as i32,
        };
        match control.set_node_role(req).await {
            Ok(v) => return Ok(v.into_inner()),
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

async fn set_role(
    control: &mut ControlClient<Channel>,
    a: RoleArgs,
    role: NodeRole,
) -> anyhow::Result<()> {
    let what = if role == NodeRole::Manager {
        "promoted to a manager"
    } else {
        "demoted to a worker"
    };
    for n in a.nodes {
        let v = set_role_retrying(control, &n, role).await?;
        if !a.detach && !done(&v, role) {
            let deadline = tokio::time::Instant::now() + ROLE_CHANGE_TIMEOUT;
            loop {
                // Demoting the leader leaves the cluster without one for an
                // election: ride out unavailability until the deadline.
                match control
                    .get_node(GetNodeRequest { node: v.id.clone() })
                    .await
                {
                    Ok(now) if done(now.get_ref(), role) => break,
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::Unavailable => {}
                    Err(s) => return Err(s.into()),
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "node {n} was asked to be {what} but has not completed the change within {}s (is it up?)",
                        ROLE_CHANGE_TIMEOUT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        println!("Node {} {what}.", v.hostname);
    }
    Ok(())
}
