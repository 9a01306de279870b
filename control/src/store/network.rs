//! openraft's network over tonic: one [`PeerClient`] per peer, sending
//! openraft's messages postcard-encoded in `RaftPayload.data`.
//!
//! Channels come from the [`ChannelProvider`], which keeps one cached,
//! lazily connected channel per address. The client asks the provider on
//! every RPC (a map lookup), so a provider that swaps a channel, e.g.
//! after a certificate renewal, is followed at once.
//!
//! Failure mapping, so openraft backs off where it should:
//! - no channel, or the peer cannot be reached or refuses us
//!   (UNAVAILABLE, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED):
//!   `Unreachable`, and openraft waits [`PeerClient::backoff`] before retrying;
//! - any other status or an undecodable reply: `NetworkError`;
//! - an error raised by the peer's raft: `RemoteError`.

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::RaftPayload;
use mesh_proto::raft_client::RaftClient;
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;

use super::types::{TypeConfig, decode, encode};
use mesh_common::channels::ChannelProvider;

pub(crate) struct NetworkFactory {
    pub(crate) channels: Arc<dyn ChannelProvider>,
    pub(crate) backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            channels: Arc::clone(&self.channels),
            backoff: self.backoff,
        }
    }
}

pub(crate) struct PeerClient {
    target: u64,
    addr: String,
    channels: Arc<dyn ChannelProvider>,
    backoff: Duration,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

/// Errors raised while decoding a reply.
#[derive(Debug, thiserror::Error)]
#[error("decoding the {rpc} reply from raft peer {target}")]
struct DecodeReply {
    rpc: RPCTypes,
    target: u64,
    #[source]
    source: postcard::Error,
}

#[derive(Debug, thiserror::Error)]
#[error("encoding the {rpc} request to raft peer {target}")]
struct EncodeRequest {
    rpc: RPCTypes,
    target: u64,
    #[source]
    source: postcard::Error,
}

#[derive(Debug, thiserror::Error)]
#[error("no channel to raft peer {target} at {addr}")]
struct NoChannel {
    target: u64,
    addr: String,
    #[source]
    source: tonic::transport::Error,
}

impl PeerClient {
    async fn call<Req, Resp, E>(&self, rpc: RPCTypes, req: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = encode(req).map_err(|source| {
            RPCError::Network(NetworkError::new(&EncodeRequest {
                rpc,
                target: self.target,
                source,
            }))
        })?;
        let channel = self.channels.channel(&self.addr).map_err(|source| {
            RPCError::Unreachable(Unreachable::new(&NoChannel {
                target: self.target,
                addr: self.addr.clone(),
                source,
            }))
        })?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(super::MAX_RAFT_MESSAGE)
            .max_encoding_message_size(super::MAX_RAFT_MESSAGE);
        let payload = RaftPayload { data };
        let reply = match rpc {
            RPCTypes::AppendEntries => client.append_entries(payload).await,
            RPCTypes::Vote => client.vote(payload).await,
            RPCTypes::InstallSnapshot => client.install_snapshot(payload).await,
        };
        let reply = reply.map_err(|status| {
            tracing::debug!(target = self.target, addr = %self.addr, %rpc, %status, "raft rpc failed");
            match status.code() {
                Code::Unavailable | Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented => {
                    RPCError::Unreachable(Unreachable::new(&status))
                }
                _ => RPCError::Network(NetworkError::new(&status)),
            }
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            decode(&reply.get_ref().data).map_err(|source| {
                RPCError::Network(NetworkError::new(&DecodeReply {
                    rpc,
                    target: self.target,
                    source,
                }))
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, Infallible> {
        self.call(RPCTypes::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, Infallible> {
        self.call(RPCTypes::Vote, &rpc).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
