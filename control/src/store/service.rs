//! The `mesh.v1.Raft` gRPC service: openraft's RPCs between managers
//! (payloads postcard-encoded, openraft errors included in the reply) and
//! `JoinRaft`, by which a new manager asks the leader to become a voter.
//!
//! Every RPC needs a [`Caller::Node`] with the manager role in the request
//! extensions (set by the 2377 server's interceptor from the client
//! certificate); without one it is refused with PERMISSION_DENIED. Workers
//! hold valid certificates too, and must not be able to feed the log.

use mesh_proto::raft_server::Raft as RaftRpc;
use mesh_proto::{JoinRaftRequest, JoinRaftResponse, NodeRole, RaftPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::types::{decode, encode};
use super::{Store, StoreError};
use mesh_common::auth::Caller;

pub struct RaftService {
    store: Store,
}

impl RaftService {
    pub(crate) fn new(store: Store) -> Self {
        RaftService { store }
    }
}

/// The calling manager's node id, or PERMISSION_DENIED.
fn manager_caller<T>(req: &Request<T>, rpc: &str) -> Result<String, Status> {
    match Caller::of(req) {
        Some(Caller::Node {
            node_id,
            role: NodeRole::Manager,
            ..
        }) => Ok(node_id.clone()),
        Some(Caller::Node { node_id, .. }) => Err(Status::permission_denied(format!(
            "{rpc}: node {node_id} is not a manager"
        ))),
        Some(Caller::Local) => Err(Status::permission_denied(format!(
            "{rpc}: only managers may call it"
        ))),
        None => Err(Status::permission_denied(format!(
            "{rpc}: caller is not authenticated"
        ))),
    }
}

fn decode_request<T: DeserializeOwned>(req: &RaftPayload, rpc: &str) -> Result<T, Status> {
    decode(&req.data)
        .map_err(|e| Status::invalid_argument(format!("{rpc}: undecodable request: {e}")))
}

fn encode_reply<T: Serialize>(reply: &T, rpc: &str) -> Result<Response<RaftPayload>, Status> {
    let data =
        encode(reply).map_err(|e| Status::internal(format!("{rpc}: encoding the reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "append entries";
        manager_caller(&req, RPC)?;
        let rpc = decode_request(req.get_ref(), RPC)?;
        let res = self.store.inner.raft.append_entries(rpc).await;
        encode_reply(&res, RPC)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "vote";
        manager_caller(&req, RPC)?;
        let rpc = decode_request(req.get_ref(), RPC)?;
        let res = self.store.inner.raft.vote(rpc).await;
        encode_reply(&res, RPC)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "install snapshot";
        manager_caller(&req, RPC)?;
        let rpc = decode_request(req.get_ref(), RPC)?;
        let res = self.store.inner.raft.install_snapshot(rpc).await;
        encode_reply(&res, RPC)
    }

    /// Only the leader adds voters; a follower answers FAILED_PRECONDITION
    /// with the leader's address in the `mesh-leader` metadata. The caller
    /// must be the manager node that owns `raft_id`: its node object must
    /// exist with that raft id and the manager role desired.
    async fn join_raft(
        &self,
        req: Request<JoinRaftRequest>,
    ) -> Result<Response<JoinRaftResponse>, Status> {
        const RPC: &str = "join raft";
        let node_id = manager_caller(&req, RPC)?;
        let JoinRaftRequest { raft_id, addr } = req.into_inner();
        if addr.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{RPC}: empty raft address for raft id {raft_id}"
            )));
        }
        if !self.store.is_leader() {
            return Err(StoreError::NotLeader {
                leader: self.store.leader(),
            }
            .into());
        }
        self.store.read(|s| match s.nodes.get(&node_id) {
            None => Err(Status::permission_denied(format!(
                "{RPC}: node {node_id} is not in the cluster"
            ))),
            Some(n) if n.raft_id != raft_id => Err(Status::permission_denied(format!(
                "{RPC}: node {node_id} has raft id {}, not {raft_id}",
                n.raft_id
            ))),
            Some(n)
                if n.spec
                    .as_ref()
                    .is_none_or(|s| s.desired_role != NodeRole::Manager as i32) =>
            {
                Err(Status::permission_denied(format!(
                    "{RPC}: node {node_id} is not meant to be a manager"
                )))
            }
            Some(_) => Ok(()),
        })?;
        tracing::info!(%node_id, raft_id, %addr, "manager joining raft");
        self.store.add_voter(raft_id, addr).await?;
        Ok(Response::new(JoinRaftResponse {}))
    }
}
