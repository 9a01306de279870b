//! Cluster-wide calls of the control API: join tokens, cluster info, gossip key rotation.

use std::sync::Arc;

use mesh_common::auth::Caller;
use mesh_common::pki::{self, JoinToken, role_name};
use mesh_common::time::now_ms;
use mesh_proto::{
    ClusterInfo, GetClusterInfoRequest, GetJoinTokenRequest, GetJoinTokenResponse, GossipKey,
    NodeRole, RotateGossipKeyRequest, RotateGossipKeyResponse, Transaction,
};
use tracing::info;

use super::context::{ApiContext, manager_check};
use crate::ca;
use crate::error::{ControlError, Result};
use crate::objects::{control_addr, manager_addrs};
use crate::store::txn;

/// Keys kept in the gossip keyring: the new one and the one before it, so
/// nodes that have not heard of the rotation yet still authenticate.
const GOSSIP_KEYS_KEPT: usize = 2;

pub struct ClusterApi {
    ctx: Arc<ApiContext>,
}

impl ClusterApi {
    pub fn new(ctx: Arc<ApiContext>) -> ClusterApi {
        ClusterApi { ctx }
    }

    pub async fn get_join_token(
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
            let secret = pki::new_secret()?;
            self.ctx
                .store
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
            .ctx
            .store
            .read_consistent(|s| (s.cluster.clone(), manager_addrs(s)))
            .await?;
        let cluster =
            cluster.ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
        let secret = if role == NodeRole::Manager {
            cluster.manager_secret
        } else {
            cluster.worker_secret
        };
        let token = JoinToken {
            ca_digest: pki::ca_digest(&cluster.ca_cert_pem)?,
            secret,
        };
        Ok(GetJoinTokenResponse {
            token: token.to_string(),
            managers,
        })
    }

    pub async fn get_cluster_info(
        &self,
        _caller: &Caller,
        _req: GetClusterInfoRequest,
    ) -> Result<ClusterInfo> {
        let (cluster, managers, leader_node) = self
            .ctx
            .store
            .read_consistent(|s| {
                let leader = self.ctx.store.leader().map(|l| l.raft_id);
                let leader_node = s
                    .nodes
                    .values()
                    .find(|n| Some(n.raft_id) == leader)
                    .cloned();
                (s.cluster.clone(), manager_addrs(s), leader_node)
            })
            .await?;
        let cluster =
            cluster.ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
        let st = self.ctx.store.status();
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
            leader_time_ms: mesh_common::time::now_ms(),
        })
    }

    pub async fn rotate_gossip_key(
        &self,
        caller: &Caller,
        _req: RotateGossipKeyRequest,
    ) -> Result<RotateGossipKeyResponse> {
        manager_check(caller)?;
        let key = ca::new_symmetric_key()?;
        let mut key_id = 0;
        self.ctx
            .store
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
