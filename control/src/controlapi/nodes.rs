//! Node calls of the control API: list, inspect, promote/demote, remove.

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_common::auth::Caller;
use mesh_common::pki::role_name;
use mesh_common::time::now_ms;
use mesh_proto::{
    GetNodeRequest, ListNodesRequest, ListNodesResponse, Node, NodeRole, NodeSpec, NodeStatus,
    NodeView, RemoveNodeRequest, RemoveNodeResponse, SetNodeRoleRequest, StoreOp, Transaction,
    store_op::Op,
};
use tracing::info;

use super::context::{ApiContext, manager_check};
use super::resolve::resolve_node;
use crate::error::{ControlError, Result};
use crate::objects::desired_role;
use crate::store::{StoreState, txn};

pub struct NodeApi {
    ctx: Arc<ApiContext>,
}

impl NodeApi {
    pub fn new(ctx: Arc<ApiContext>) -> NodeApi {
        NodeApi { ctx }
    }

    /// A node's status as this manager sees it (itself: ready).
    fn status(&self, n: &Node) -> NodeStatus {
        if n.id == self.ctx.node_id {
            NodeStatus::Ready
        } else {
            self.ctx.liveness.status(&n.id)
        }
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.ctx
            .store
            .status()
            .voters
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    fn view(&self, n: &Node, leader: Option<u64>, voters: &BTreeSet<u64>) -> NodeView {
        let status = self.status(n);
        let manager_status = if !voters.contains(&n.raft_id) {
            ""
        } else if leader == Some(n.raft_id) {
            "leader"
        } else if status == NodeStatus::Ready {
            "reachable"
        } else {
            "unreachable"
        };
        let mut v = NodeView {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            addr: n.addr.clone(),
            leader: leader == Some(n.raft_id),
            raft_id: n.raft_id,
            control_port: n.control_port,
            gossip_port: n.gossip_port,
            created_at_ms: n.created_at_ms,
            updated_at_ms: n.updated_at_ms,
            manager_status: manager_status.to_string(),
            ..Default::default()
        };
        v.set_role(n.role());
        v.set_desired_role(desired_role(n));
        v.set_status(status);
        v
    }

    fn views(&self, nodes: &[Node]) -> Vec<NodeView> {
        let leader = self.ctx.store.leader().map(|l| l.raft_id);
        let voters = self.voters();
        nodes
            .iter()
            .map(|n| self.view(n, leader, &voters))
            .collect()
    }

    pub async fn list_nodes(
        &self,
        _caller: &Caller,
        _req: ListNodesRequest,
    ) -> Result<ListNodesResponse> {
        let nodes = self
            .ctx
            .store
            .read_consistent(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await?;
        Ok(ListNodesResponse {
            nodes: self.views(&nodes),
        })
    }

    pub async fn get_node(&self, _caller: &Caller, req: GetNodeRequest) -> Result<NodeView> {
        let node = self
            .ctx
            .store
            .read_consistent(|s| resolve_node(s, &req.node).cloned())
            .await??;
        Ok(self.views(std::slice::from_ref(&node)).remove(0))
    }

    pub async fn set_node_role(
        &self,
        caller: &Caller,
        req: SetNodeRoleRequest,
    ) -> Result<NodeView> {
        manager_check(caller)?;
        let role = match req.role() {
            r @ (NodeRole::Manager | NodeRole::Worker) => r,
            NodeRole::Unspecified => {
                return Err(ControlError::InvalidArgument(
                    "role: must be manager or worker".into(),
                ));
            }
        };
        let voters = self.voters();
        let plan = |s: &StoreState| -> Result<Option<Node>> {
            let node = resolve_node(s, &req.node)?;
            if desired_role(node) == role {
                return Ok(None);
            }
            let status = |n: &Node| self.status(n);
            if role == NodeRole::Manager && status(node) != NodeStatus::Ready {
                return Err(ControlError::FailedPrecondition(format!(
                    "node {} is down: it can only be promoted while it is up",
                    node.hostname
                )));
            }
            if role == NodeRole::Worker {
                let remaining: Vec<&Node> = s
                    .nodes
                    .values()
                    .filter(|n| voters.contains(&n.raft_id) && n.id != node.id)
                    .collect();
                if remaining.is_empty() {
                    return Err(ControlError::FailedPrecondition(format!(
                        "cannot demote node {}: it is the last manager",
                        node.hostname
                    )));
                }
                let reachable = remaining
                    .iter()
                    .filter(|n| status(n) == NodeStatus::Ready)
                    .count();
                if reachable <= remaining.len() / 2 {
                    return Err(ControlError::FailedPrecondition(format!(
                        "demoting node {} would leave {} managers of which only {reachable} are reachable: the cluster would lose quorum",
                        node.hostname,
                        remaining.len()
                    )));
                }
            }
            let mut next = node.clone();
            next.spec = Some(NodeSpec {
                desired_role: role as i32,
            });
            next.updated_at_ms = now_ms();
            Ok(Some(next))
        };
        let target = match self.ctx.store.read_consistent(|s| plan(s)).await?? {
            None => self
                .ctx
                .store
                .read(|s| resolve_node(s, &req.node).cloned())?,
            Some(_) => {
                let mut id = String::new();
                self.ctx
                    .store
                    .update(|s| {
                        let ops = match plan(s)? {
                            Some(n) => {
                                id = n.id.clone();
                                vec![txn::put_if_unchanged(n)]
                            }
                            None => vec![],
                        };
                        Ok::<_, ControlError>(Transaction { ops })
                    })
                    .await?;
                info!(node = %id, role = role_name(role), "node role change requested");
                self.ctx
                    .store
                    .read(|s| resolve_node(s, &req.node).cloned())?
            }
        };
        Ok(self.views(std::slice::from_ref(&target)).remove(0))
    }

    pub async fn remove_node(
        &self,
        caller: &Caller,
        req: RemoveNodeRequest,
    ) -> Result<RemoveNodeResponse> {
        manager_check(caller)?;
        let mut removed = String::new();
        self.ctx
            .store
            .update(|s| {
                let node = resolve_node(s, &req.node)?;
                if node.role() == NodeRole::Manager || desired_role(node) == NodeRole::Manager {
                    return Err(ControlError::FailedPrecondition(format!(
                        "node {} is a manager: demote it first (mesh node demote {})",
                        node.hostname, node.hostname
                    )));
                }
                if !req.force && self.ctx.liveness.status(&node.id) == NodeStatus::Ready {
                    return Err(ControlError::FailedPrecondition(format!(
                        "node {} is ready: stop it or run `mesh leave` on it first, or use --force",
                        node.hostname
                    )));
                }
                let mut cluster = s
                    .cluster
                    .clone()
                    .ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
                cluster.removed_nodes.push(node.id.clone());
                removed = node.id.clone();
                Ok(Transaction {
                    ops: vec![
                        StoreOp {
                            op: Some(Op::DeleteNode(node.id.clone())),
                            expect_version: Some(node.version),
                        },
                        txn::put_if_unchanged(cluster),
                    ],
                })
            })
            .await?;
        info!(node = %removed, "node removed");
        Ok(RemoveNodeResponse {})
    }
}
