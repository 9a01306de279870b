//! Node, token and cluster-wide calls of the control API.

use std::collections::BTreeSet;

use mesh_proto::{
    ClusterInfo, GetClusterInfoRequest, GetJoinTokenRequest, GetJoinTokenResponse, GetNodeRequest,
    GossipKey, ListNodesRequest, ListNodesResponse, Node, NodeRole, NodeSpec, NodeStatus, NodeView,
    RemoveNodeRequest, RemoveNodeResponse, RotateGossipKeyRequest, RotateGossipKeyResponse,
    SetNodeRoleRequest, StoreOp, Transaction, store_op::Op,
};
use tracing::info;

use super::{manager_check, resolve_node};
use crate::auth::Caller;
use crate::ca::{self, JoinToken, now_ms};
use crate::error::{ControlError, Result};
use crate::manager::{Manager, control_addr, desired_role};
use crate::store::{StoreState, txn};

/// Keys kept in the gossip keyring: the new one and the one before it, so
/// nodes that have not heard of the rotation yet still authenticate.
const GOSSIP_KEYS_KEPT: usize = 2;

fn role_name(role: NodeRole) -> &'static str {
    if role == NodeRole::Manager {
        "manager"
    } else {
        "worker"
    }
}

impl Manager {
    fn voters(&self) -> BTreeSet<u64> {
        self.store
            .status()
            .voters
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    fn view(&self, n: &Node, leader: Option<u64>, voters: &BTreeSet<u64>) -> NodeView {
        let status = if n.id == self.node_id {
            NodeStatus::Ready
        } else {
            self.liveness.status(&n.id)
        };
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
        let leader = self.store.leader().map(|l| l.raft_id);
        let voters = self.voters();
        nodes
            .iter()
            .map(|n| self.view(n, leader, &voters))
            .collect()
    }

    pub(crate) async fn list_nodes(
        &self,
        _caller: &Caller,
        _req: ListNodesRequest,
    ) -> Result<ListNodesResponse> {
        let nodes = self
            .store
            .read_consistent(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await?;
        Ok(ListNodesResponse {
            nodes: self.views(&nodes),
        })
    }

    pub(crate) async fn get_node(&self, _caller: &Caller, req: GetNodeRequest) -> Result<NodeView> {
        let node = self
            .store
            .read_consistent(|s| resolve_node(s, &req.node).cloned())
            .await??;
        Ok(self.views(std::slice::from_ref(&node)).remove(0))
    }

    pub(crate) async fn set_node_role(
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
            let status = |n: &Node| {
                if n.id == self.node_id {
                    NodeStatus::Ready
                } else {
                    self.liveness.status(&n.id)
                }
            };
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
        let target = match self.store.read_consistent(|s| plan(s)).await?? {
            None => self.store.read(|s| resolve_node(s, &req.node).cloned())?,
            Some(_) => {
                let mut id = String::new();
                self.store
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
                self.store.read(|s| resolve_node(s, &req.node).cloned())?
            }
        };
        Ok(self.views(std::slice::from_ref(&target)).remove(0))
    }

    pub(crate) async fn remove_node(
        &self,
        caller: &Caller,
        req: RemoveNodeRequest,
    ) -> Result<RemoveNodeResponse> {
        manager_check(caller)?;
        let mut removed = String::new();
        self.store
            .update(|s| {
                let node = resolve_node(s, &req.node)?;
                if node.role() == NodeRole::Manager || desired_role(node) == NodeRole::Manager {
                    return Err(ControlError::FailedPrecondition(format!(
                        "node {} is a manager: demote it first (mesh node demote {})",
                        node.hostname, node.hostname
                    )));
                }
                if !req.force && self.liveness.status(&node.id) == NodeStatus::Ready {
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

    pub(crate) async fn get_join_token(
        &self,
        caller: &Caller,
        req: GetJoinTokenRequest,
    ) -> Result<GetJoinTokenResponse> {
        manager_check(caller)?;
        let role = match req.role() {
            r @ (NodeRole::Manager | NodeRole::Worker) => r,
            NodeRole::Unspecified => {
                return Err(ControlError::InvalidArgument(
                    "role: must be manager or worker".into(),
                ));
            }
        };
        if req.rotate {
            let secret = ca::new_secret()?;
            self.store
                .update(|s| {
                    let mut c = s
                        .cluster
                        .clone()
                        .ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
                    if role == NodeRole::Manager {
                        c.manager_secret = secret.clone();
                    } else {
                        c.worker_secret = secret.clone();
                    }
                    Ok::<_, ControlError>(Transaction {
                        ops: vec![txn::put_if_unchanged(c)],
                    })
                })
                .await?;
            info!(role = role_name(role), "join token rotated");
        }
        let (cluster, managers) = self
            .store
            .read_consistent(|s| (s.cluster.clone(), Manager::manager_addrs(s)))
            .await?;
        let cluster =
            cluster.ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
        let secret = if role == NodeRole::Manager {
            cluster.manager_secret
        } else {
            cluster.worker_secret
        };
        let token = JoinToken {
            ca_digest: ca::ca_digest(&cluster.ca_cert_pem)?,
            secret,
        };
        Ok(GetJoinTokenResponse {
            token: token.to_string(),
            managers,
        })
    }

    pub(crate) async fn get_cluster_info(
        &self,
        _caller: &Caller,
        _req: GetClusterInfoRequest,
    ) -> Result<ClusterInfo> {
        let (cluster, managers, leader_node) = self
            .store
            .read_consistent(|s| {
                let leader = self.store.leader().map(|l| l.raft_id);
                let leader_node = s
                    .nodes
                    .values()
                    .find(|n| Some(n.raft_id) == leader)
                    .cloned();
                (s.cluster.clone(), Manager::manager_addrs(s), leader_node)
            })
            .await?;
        let cluster =
            cluster.ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
        let st = self.store.status();
        Ok(ClusterInfo {
            cluster_id: cluster.id.clone(),
            leader_id: leader_node
                .as_ref()
                .map(|n| n.id.clone())
                .unwrap_or_default(),
            leader_addr: leader_node.as_ref().map(control_addr).unwrap_or_default(),
            term: st.term,
            commit_index: st.committed.unwrap_or(0),
            applied_index: st.applied.unwrap_or(0),
            managers,
            data_path_port: cluster
                .spec
                .as_ref()
                .map(|s| s.data_path_port)
                .unwrap_or_default(),
            gossip_key_id: cluster
                .gossip_keys
                .first()
                .map(|k| k.id)
                .unwrap_or_default(),
            created_at_ms: cluster.created_at_ms,
        })
    }

    pub(crate) async fn rotate_gossip_key(
        &self,
        caller: &Caller,
        _req: RotateGossipKeyRequest,
    ) -> Result<RotateGossipKeyResponse> {
        manager_check(caller)?;
        let key = ca::new_symmetric_key()?;
        let mut key_id = 0;
        self.store
            .update(|s| {
                let mut c = s
                    .cluster
                    .clone()
                    .ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
                key_id = c.gossip_keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
                c.gossip_keys.insert(
                    0,
                    GossipKey {
                        id: key_id,
                        key: key.clone(),
                        created_at_ms: now_ms(),
                    },
                );
                c.gossip_keys.truncate(GOSSIP_KEYS_KEPT);
                Ok::<_, ControlError>(Transaction {
                    ops: vec![txn::put_if_unchanged(c)],
                })
            })
            .await?;
        info!(key_id, "gossip key rotated");
        Ok(RotateGossipKeyResponse { key_id })
    }
}
