//! Node calls of the control API: list, inspect, promote/demote, availability and labels,
//! remove.

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_common::auth::Caller;
use mesh_common::pki::role_name;
use mesh_common::time::now_ms;
use mesh_proto::{
    GetNodeRequest, ListNodesRequest, ListNodesResponse, Node, NodeAvailability, NodeRole,
    NodeStatus, NodeView, RemoveNodeRequest, RemoveNodeResponse, SetNodeRoleRequest, StoreOp,
    Transaction, UpdateNodeRequest, store_op::Op,
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
        if let Some(spec) = &n.spec {
            v.set_availability(spec.availability());
            v.labels = spec.labels.clone();
        }
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

    /// Writes the node `plan` makes of the state, if it makes one: planned on a consistent
    /// read first (a request that changes nothing writes nothing), then again inside the
    /// write. The id of the node written, and node `node` as stored after.
    async fn write_node(
        &self,
        node: &str,
        plan: impl Fn(&StoreState) -> Result<Option<Node>>,
    ) -> Result<(Option<String>, Node)> {
        let mut written = None;
        if self
            .ctx
            .store
            .read_consistent(|s| plan(s))
            .await??
            .is_some()
        {
            self.ctx
                .store
                .update(|s| {
                    let ops = match plan(s)? {
                        Some(n) => {
                            written = Some(n.id.clone());
                            vec![txn::put_if_unchanged(n)]
                        }
                        None => vec![],
                    };
                    Ok::<_, ControlError>(Transaction { ops })
                })
                .await?;
        }
        let after = self.ctx.store.read(|s| resolve_node(s, node).cloned())?;
        Ok((written, after))
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
            next.spec.get_or_insert_default().desired_role = role as i32;
            next.updated_at_ms = now_ms();
            Ok(Some(next))
        };
        let (written, target) = self.write_node(&req.node, plan).await?;
        if let Some(id) = written {
            info!(node = %id, role = role_name(role), "node role change requested");
        }
        Ok(self.views(std::slice::from_ref(&target)).remove(0))
    }

    /// `mesh node update`: availability and labels. Checked whole before anything is
    /// written; a request that changes nothing writes nothing.
    pub async fn update_node(&self, caller: &Caller, req: UpdateNodeRequest) -> Result<NodeView> {
        manager_check(caller)?;
        let change = NodeChange::parse(&req)?;
        let plan = |s: &StoreState| -> Result<Option<Node>> {
            let node = resolve_node(s, &req.node)?;
            let mut next = node.clone();
            change.apply(next.spec.get_or_insert_default())?;
            if next.spec == node.spec {
                return Ok(None);
            }
            next.updated_at_ms = now_ms();
            Ok(Some(next))
        };
        let (written, node) = self.write_node(&req.node, plan).await?;
        if let Some(id) = written {
            info!(node = %id, availability = ?change.availability, "node updated");
        }
        Ok(self.views(std::slice::from_ref(&node)).remove(0))
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

/// Most labels a node may carry, and the longest key and value.
pub const MAX_NODE_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 128;
pub const MAX_LABEL_VALUE: usize = 256;

/// What a `mesh node update` asks, checked.
#[derive(Debug, PartialEq)]
pub struct NodeChange {
    pub availability: Option<NodeAvailability>,
    pub add: Vec<(String, String)>,
    pub rm: Vec<String>,
}

fn bad(msg: String) -> ControlError {
    ControlError::InvalidArgument(msg)
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY {
        return Err(bad(format!(
            "label key {key:?}: 1 to {MAX_LABEL_KEY} characters"
        )));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(bad(format!(
            "label key {key:?}: only letters, digits and . _ - /"
        )));
    }
    Ok(())
}

impl NodeChange {
    pub fn parse(req: &UpdateNodeRequest) -> Result<NodeChange> {
        let availability = match req.availability.as_str() {
            "" => None,
            "active" => Some(NodeAvailability::Active),
            "pause" => Some(NodeAvailability::Pause),
            "drain" => Some(NodeAvailability::Drain),
            other => {
                return Err(bad(format!(
                    "availability {other:?}: must be active, pause or drain"
                )));
            }
        };
        if req.label_add.len() + req.label_rm.len() > MAX_NODE_LABELS {
            return Err(bad(format!(
                "at most {MAX_NODE_LABELS} labels may change at once"
            )));
        }
        let mut add = Vec::new();
        for kv in &req.label_add {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            check_key(k)?;
            if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
                return Err(bad(format!(
                    "label {k}: the value must be at most {MAX_LABEL_VALUE} printable characters"
                )));
            }
            add.push((k.to_string(), v.to_string()));
        }
        for k in &req.label_rm {
            check_key(k)?;
        }
        Ok(NodeChange {
            availability,
            add,
            rm: req.label_rm.clone(),
        })
    }

    /// Applies the change to `spec`; fails if the node would carry too many labels.
    pub fn apply(&self, spec: &mut mesh_proto::NodeSpec) -> Result<()> {
        if let Some(a) = self.availability {
            spec.set_availability(a);
        }
        for k in &self.rm {
            spec.labels.remove(k);
        }
        for (k, v) in &self.add {
            spec.labels.insert(k.clone(), v.clone());
        }
        if spec.labels.len() > MAX_NODE_LABELS {
            return Err(bad(format!(
                "a node carries at most {MAX_NODE_LABELS} labels"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod change_tests {
    use super::*;

    fn req(availability: &str, add: &[&str], rm: &[&str]) -> UpdateNodeRequest {
        UpdateNodeRequest {
            node: "n".into(),
            availability: availability.into(),
            label_add: add.iter().map(|s| s.to_string()).collect(),
            label_rm: rm.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_change_is_checked_whole_and_applied_in_order() {
        let c = NodeChange::parse(&req("drain", &["zone=a", "ssd"], &["old"])).unwrap();
        let mut spec = mesh_proto::NodeSpec::default();
        spec.labels.insert("old".into(), "x".into());
        c.apply(&mut spec).unwrap();
        assert_eq!(spec.availability(), NodeAvailability::Drain);
        assert_eq!(spec.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(spec.labels.get("ssd").map(String::as_str), Some(""));
        assert!(!spec.labels.contains_key("old"));
    }

    #[test]
    fn hostile_changes_are_refused_with_what_was_wrong() {
        for (r, says) in [
            (req("off", &[], &[]), "availability"),
            (req("", &["=v"], &[]), "label key"),
            (req("", &["a b=c"], &[]), "label key"),
            (req("", &[&format!("k={}", "v".repeat(300))], &[]), "value"),
            (req("", &["k=a\nb"], &[]), "value"),
            (req("", &[], &[&"k".repeat(200)]), "label key"),
        ] {
            match NodeChange::parse(&r) {
                Err(e) => assert!(e.to_string().contains(says), "{e}"),
                Ok(c) => panic!("{r:?} accepted: {c:?}"),
            }
        }
        let many: Vec<String> = (0..=MAX_NODE_LABELS).map(|i| format!("k{i}=v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(NodeChange::parse(&req("", &many, &[])).is_err());
    }
}
