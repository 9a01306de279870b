//! The CA on 2377: the join handshake (fetch the root CA, exchange a token
//! and a CSR for a node certificate) and certificate renewal.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::ca_server::Ca;
use mesh_proto::{
    GetRootCaRequest, GetRootCaResponse, IssueNodeCertificateRequest, IssueNodeCertificateResponse,
    Node, NodeRole, NodeSpec, NodeStatus, RenewNodeCertificateRequest,
    RenewNodeCertificateResponse, StoreOp, Transaction, store_op::Op,
};
use tonic::{Request, Response, Status};
use tracing::info;

use mesh_common::Liveness;
use mesh_common::auth::{Caller, caller};
use mesh_common::ids::random_id;
use mesh_common::pki::{self, JoinToken, secrets_equal};
use mesh_common::time::now_ms;

use crate::ca::RootCa;
use crate::error::{ControlError, Result};
use crate::objects::{desired_role, manager_addrs};
use crate::store::{Store, StoreState, txn};

/// The CA service needs the store, the cluster's CA certificate (served before the store
/// may have it, on a manager that just joined) and this node's view of who is up.
pub struct CaService {
    store: Store,
    ca_pem: String,
    liveness: Arc<dyn Liveness>,
}

impl CaService {
    pub fn new(store: Store, ca_pem: String, liveness: Arc<dyn Liveness>) -> Self {
        CaService {
            store,
            ca_pem,
            liveness,
        }
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_root_ca(
        &self,
        _req: Request<GetRootCaRequest>,
    ) -> std::result::Result<Response<GetRootCaResponse>, Status> {
        Ok(Response::new(GetRootCaResponse {
            ca_cert_pem: self.ca_pem.clone(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> std::result::Result<Response<IssueNodeCertificateResponse>, Status> {
        Ok(Response::new(self.issue(req.into_inner()).await?))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> std::result::Result<Response<RenewNodeCertificateResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(self.renew(&caller, req.into_inner()).await?))
    }
}

fn cluster_of(s: &StoreState) -> Result<&mesh_proto::Cluster> {
    s.cluster
        .as_ref()
        .ok_or_else(|| ControlError::Internal("cluster object missing".into()))
}

fn validity(c: &mesh_proto::Cluster) -> Duration {
    Duration::from_secs(
        c.spec
            .as_ref()
            .map(|s| s.cert_validity_secs)
            .filter(|v| *v > 0)
            .unwrap_or(90 * 24 * 3600),
    )
}

impl CaService {
    async fn issue(&self, r: IssueNodeCertificateRequest) -> Result<IssueNodeCertificateResponse> {
        let token: JoinToken = r
            .token
            .parse()
            .map_err(|e: pki::PkiError| ControlError::InvalidArgument(e.to_string()))?;
        if r.addr.parse::<IpAddr>().is_err() {
            return Err(ControlError::InvalidArgument(format!(
                "advertise address {:?} is not an IP address",
                r.addr
            )));
        }
        if r.hostname.is_empty() {
            return Err(ControlError::InvalidArgument(
                "hostname: must not be empty".into(),
            ));
        }
        if r.control_port == 0 || r.gossip_port == 0 {
            return Err(ControlError::InvalidArgument(
                "control and gossip ports must not be 0".into(),
            ));
        }
        let node_id = random_id().map_err(|e| ControlError::Internal(e.to_string()))?;
        let mut issued: Option<(String, NodeRole, u64, String)> = None;
        self.store
            .update(|s| {
                let cluster = cluster_of(s)?;
                if token.ca_digest != pki::ca_digest(&cluster.ca_cert_pem).map_err(|e| ControlError::Internal(e.to_string()))? {
                    return Err(ControlError::PermissionDenied(
                        "join token is for another cluster: its CA digest does not match this cluster's CA".into(),
                    ));
                }
                let role = if secrets_equal(&token.secret, &cluster.manager_secret) {
                    NodeRole::Manager
                } else if secrets_equal(&token.secret, &cluster.worker_secret) {
                    NodeRole::Worker
                } else {
                    return Err(ControlError::PermissionDenied(
                        "join token is not valid: its secret matches no current token (was it rotated?)".into(),
                    ));
                };
                for (port, what) in [(r.control_port, "control"), (r.gossip_port, "gossip")] {
                    if let Some(svc) = s.services.values().find(|v| {
                        v.ports.iter().any(|p| {
                            p.publish_mode() == mesh_proto::PublishMode::Ingress
                                && p.published_port == port
                        })
                    }) {
                        return Err(ControlError::FailedPrecondition(format!(
                            "the {what} port {port} of this node is published by service {}: give the node another port or unpublish it",
                            crate::objects::service_name(svc)
                        )));
                    }
                }
                if let Some(other) = s
                    .nodes
                    .values()
                    .find(|n| n.addr == r.addr && self.liveness.status(&n.id) == NodeStatus::Ready)
                {
                    return Err(ControlError::FailedPrecondition(format!(
                        "advertise address {} is already used by node {} ({}), which is up",
                        r.addr, other.hostname, other.id
                    )));
                }
                let cert = RootCa::from_pem(&cluster.ca_cert_pem, &cluster.ca_key_pem)?.sign_csr(
                    &r.csr_pem,
                    &node_id,
                    role,
                    &cluster.id,
                    validity(cluster),
                )?;
                let mut next = cluster.clone();
                next.last_raft_id += 1;
                let now = now_ms();
                let mut node = Node {
                    id: node_id.clone(),
                    spec: Some(NodeSpec {
                        desired_role: role as i32,
                        ..Default::default()
                    }),
                    hostname: r.hostname.clone(),
                    addr: r.addr.clone(),
                    control_port: r.control_port,
                    gossip_port: r.gossip_port,
                    raft_id: next.last_raft_id,
                    created_at_ms: now,
                    updated_at_ms: now,
                    ..Default::default()
                };
                node.set_role(role);
                issued = Some((cert, role, node.raft_id, cluster.id.clone()));
                Ok(Transaction {
                    ops: vec![
                        StoreOp { op: Some(Op::PutNode(node)), expect_version: Some(0) },
                        txn::put_if_unchanged(next),
                    ],
                })
            })
            .await?;
        let (cert_pem, role, raft_id, cluster_id) =
            issued.ok_or_else(|| ControlError::Internal("certificate was not issued".into()))?;
        let managers = self.store.read(manager_addrs);
        info!(node = %node_id, hostname = %r.hostname, addr = %r.addr, role = ?role, "node joined");
        Ok(IssueNodeCertificateResponse {
            node_id,
            cluster_id,
            role: role as i32,
            cert_pem,
            raft_id,
            managers,
        })
    }

    /// A fresh certificate for the calling node. Its role follows the
    /// store: manager when the node is to be a manager or is still a raft
    /// voter (a demotion completes only once raft let it go).
    async fn renew(
        &self,
        caller: &Caller,
        r: RenewNodeCertificateRequest,
    ) -> Result<RenewNodeCertificateResponse> {
        let node_id = caller
            .node_id()
            .ok_or_else(|| ControlError::PermissionDenied("only nodes renew certificates".into()))?
            .to_string();
        let voters: BTreeSet<u64> = self
            .store
            .status()
            .voters
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let mut issued: Option<(String, NodeRole)> = None;
        self.store
            .update(|s| {
                let cluster = cluster_of(s)?;
                let node = s.nodes.get(&node_id).ok_or_else(|| {
                    ControlError::NotFound(format!(
                        "node {node_id} is not a member of this cluster"
                    ))
                })?;
                let role =
                    if desired_role(node) == NodeRole::Manager || voters.contains(&node.raft_id) {
                        NodeRole::Manager
                    } else {
                        NodeRole::Worker
                    };
                let cert = RootCa::from_pem(&cluster.ca_cert_pem, &cluster.ca_key_pem)?.sign_csr(
                    &r.csr_pem,
                    &node_id,
                    role,
                    &cluster.id,
                    validity(cluster),
                )?;
                issued = Some((cert, role));
                let ops = if node.role() == role {
                    vec![]
                } else {
                    let mut n = node.clone();
                    n.set_role(role);
                    n.updated_at_ms = now_ms();
                    vec![txn::put_if_unchanged(n)]
                };
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        let (cert_pem, role) =
            issued.ok_or_else(|| ControlError::Internal("certificate was not issued".into()))?;
        info!(node = %node_id, role = ?role, "node certificate renewed");
        Ok(RenewNodeCertificateResponse {
            cert_pem,
            role: role as i32,
        })
    }
}
