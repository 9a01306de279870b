//! The node-local API on the unix socket: init, join, leave, info, exec, version.

use std::sync::Arc;
use std::time::Duration;

use mesh_common::channels::ChannelProvider;
use mesh_common::pki::{JoinToken, PkiError};
use mesh_control::bootstrap::{self, FirstNode};
use mesh_proto::dispatcher_client::DispatcherClient;
use mesh_proto::local_server::Local;
use mesh_proto::{
    InfoRequest, InfoResponse, InitRequest, InitResponse, JoinRequest, JoinResponse,
    LeaveClusterRequest, LeaveRequest, LeaveResponse, NodeRole, TaskExecRequest, TaskExecResponse,
    VersionRequest, VersionResponse,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::join::{self, JoinParams};
use super::{Daemon, ManagerStart, not_in_cluster, parse_advertise, parse_socket_addr};
use crate::state_dir::{Certs, NodeState};
use crate::version::BuildInfo;

pub const DEFAULT_CONTROL_PORT: u16 = 2377;

pub struct LocalService {
    daemon: Arc<Daemon>,
}

impl LocalService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        LocalService { daemon }
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

fn already_member(state: &NodeState) -> Status {
    Status::failed_precondition(format!(
        "this node is already part of a cluster (node {} in cluster {}): run `mesh leave` first",
        state.node_id, state.cluster_id
    ))
}

impl Daemon {
    async fn init(self: &Arc<Self>, req: InitRequest) -> Result<InitResponse, Status> {
        let mut member = self.member.lock().await;
        if let Some(m) = member.as_ref() {
            return Err(already_member(&m.state));
        }
        let advertise = parse_advertise("--advertise-addr", &req.advertise_addr)?;
        let listen_text = if req.listen_addr.is_empty() {
            format!("0.0.0.0:{DEFAULT_CONTROL_PORT}")
        } else {
            req.listen_addr.clone()
        };
        let listen = parse_socket_addr("--listen-addr", &listen_text, DEFAULT_CONTROL_PORT)?;
        let gossip_port = self.config.agent.gossip_port;
        let new = bootstrap::new_cluster(
            &req,
            FirstNode {
                hostname: self.hostname.clone(),
                addr: advertise,
                control_port: listen.port(),
                gossip_port,
                routes: super::host_net::routes(),
                resolvers: super::host_net::resolvers(),
            },
            self.config.ca.cert_validity_secs,
        )
        .map_err(Status::from)?;
        let (node_id, cluster_id) = (new.node_id.clone(), new.cluster_id.clone());
        let manager_addr = format!("{advertise}:{}", listen.port());
        let state = NodeState {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            raft_id: 1,
            hostname: self.hostname.clone(),
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
            control_port: listen.port(),
            gossip_port,
            managers: vec![manager_addr.clone()],
        };
        let certs = Certs {
            ca_pem: new.ca_pem,
            cert_pem: new.cert_pem,
            key_pem: new.key_pem,
        };
        let tokens = (new.worker_token, new.manager_token);
        let txn = new.txn;
        self.dir.wipe().map_err(internal)?;
        self.dir.save_certs(&certs).map_err(internal)?;
        let started = self
            .start_member(state.clone(), &certs, Some(ManagerStart::Bootstrap(txn)))
            .await;
        let m = match started.and_then(|m| self.dir.save_state(&state).map(|()| m)) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.dir.wipe();
                return Err(Status::failed_precondition(format!(
                    "cannot initialize the cluster: {e:#}"
                )));
            }
        };
        *member = Some(m);
        info!(node = %node_id, cluster = %cluster_id, "cluster initialized");
        Ok(InitResponse {
            node_id,
            cluster_id,
            worker_token: tokens.0,
            manager_token: tokens.1,
            manager_addr,
        })
    }

    async fn join(self: &Arc<Self>, req: JoinRequest) -> Result<JoinResponse, Status> {
        let mut member = self.member.lock().await;
        if let Some(m) = member.as_ref() {
            return Err(already_member(&m.state));
        }
        let token: JoinToken = req
            .token
            .parse()
            .map_err(|e: PkiError| Status::invalid_argument(format!("--token: {e}")))?;
        let remote = parse_socket_addr("manager address", &req.remote_addr, DEFAULT_CONTROL_PORT)?;
        let advertise = if req.advertise_addr.is_empty() {
            // The address this host uses to reach the manager.
            let probe = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|s| s.connect(remote).and_then(|()| s.local_addr()))
                .map_err(|e| {
                    Status::invalid_argument(format!(
                        "cannot find a local address that reaches {remote}: {e}"
                    ))
                })?;
            probe.ip()
        } else {
            parse_advertise("--advertise-addr", &req.advertise_addr)?
        };
        let listen_text = if req.listen_addr.is_empty() {
            format!("0.0.0.0:{DEFAULT_CONTROL_PORT}")
        } else {
            req.listen_addr.clone()
        };
        let listen = parse_socket_addr("--listen-addr", &listen_text, DEFAULT_CONTROL_PORT)?;
        let gossip_port = self.config.agent.gossip_port;
        let joined = join::handshake(JoinParams {
            token: &token,
            token_text: req.token.trim(),
            remote: &remote.to_string(),
            hostname: &self.hostname,
            addr: &advertise.to_string(),
            control_port: listen.port(),
            gossip_port,
            timeout: self.config.agent.join_timeout(),
        })
        .await?;
        let resp = joined.resp;
        let role = resp.role();
        let state = NodeState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id.clone(),
            raft_id: resp.raft_id,
            hostname: self.hostname.clone(),
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
            control_port: listen.port(),
            gossip_port,
            managers: if resp.managers.is_empty() {
                vec![remote.to_string()]
            } else {
                resp.managers.clone()
            },
        };
        self.dir.wipe().map_err(internal)?;
        self.dir.save_certs(&joined.certs).map_err(internal)?;
        let start = (role == NodeRole::Manager).then_some(ManagerStart::Join);
        let m = match self
            .start_member(state.clone(), &joined.certs, start)
            .await
            .and_then(|m| self.dir.save_state(&state).map(|()| m))
        {
            Ok(m) => m,
            Err(e) => {
                let _ = self.dir.wipe();
                return Err(Status::failed_precondition(format!(
                    "joined, but cannot start: {e:#}"
                )));
            }
        };
        *member = Some(m);
        info!(node = %resp.node_id, cluster = %resp.cluster_id, ?role, "joined the cluster");
        Ok(JoinResponse {
            node_id: resp.node_id,
            cluster_id: resp.cluster_id,
            role: role as i32,
        })
    }

    async fn leave(self: &Arc<Self>, req: LeaveRequest) -> Result<LeaveResponse, Status> {
        let mut member = self.member.lock().await;
        let Some(m) = member.as_ref() else {
            return Err(not_in_cluster());
        };
        let role = m.creds.identity().role;
        if role == NodeRole::Manager && !req.force {
            return Err(Status::failed_precondition(
                "this node is a manager: leaving can cost the cluster its quorum; demote it first (mesh node demote) or use --force",
            ));
        }
        let last_manager = m.manager.as_ref().is_some_and(|r| {
            let voters = r.store.status().voters;
            voters.len() <= 1 && voters.iter().all(|(id, _)| *id == m.state.raft_id)
        });
        if !last_manager {
            let target = m
                .manager
                .as_ref()
                .and_then(|r| r.store.leader().map(|l| l.addr))
                .or_else(|| m.upstream.borrow().clone())
                .or_else(|| m.state.managers.first().cloned());
            let result = match target {
                Some(t) => match m.channels.channel(&t) {
                    Ok(ch) => {
                        let mut r = Request::new(LeaveClusterRequest {});
                        r.set_timeout(Duration::from_secs(10));
                        DispatcherClient::new(ch)
                            .leave(r)
                            .await
                            .map(|_| ())
                            .map_err(|s| s.message().to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                None => Err("no manager is known".to_string()),
            };
            if let Err(e) = result {
                if !req.force {
                    return Err(Status::unavailable(format!(
                        "cannot tell the managers this node leaves ({e}); use --force to leave anyway"
                    )));
                }
                warn!(error = %e, "leaving without telling the managers (--force)");
            }
        }
        if let Some(m) = member.take() {
            self.stop_member(m, true).await;
        }
        self.dir.wipe().map_err(internal)?;
        info!("left the cluster");
        Ok(LeaveResponse {})
    }

    async fn info(self: &Arc<Self>) -> Result<InfoResponse, Status> {
        let member = self.member.lock().await;
        let Some(m) = member.as_ref() else {
            return Ok(InfoResponse {
                hostname: self.hostname.clone(),
                ..Default::default()
            });
        };
        let id = m.creds.identity();
        let mut resp = InfoResponse {
            node_id: m.state.node_id.clone(),
            cluster_id: m.state.cluster_id.clone(),
            role: id.role as i32,
            hostname: m.state.hostname.clone(),
            addr: m.state.advertise_addr.clone(),
            managers: m.state.managers.clone(),
            gossip_members: m.membership.alive_members(),
            gossip_auth_failures: m.membership.auth_failures(),
            cert_not_after_ms: id.not_after * 1000,
            ..Default::default()
        };
        if let Some(r) = &m.manager {
            let st = r.store.status();
            resp.raft_term = st.term;
            resp.raft_commit_index = st.committed.unwrap_or(0);
            resp.raft_applied_index = st.applied.unwrap_or(0);
            if let Some(l) = st.leader {
                resp.leader_addr = r
                    .store
                    .read(|s| {
                        s.nodes.values().find(|n| n.raft_id == l.raft_id).map(|n| {
                            resp.leader_id = n.id.clone();
                            format!("{}:{}", n.addr, n.control_port)
                        })
                    })
                    .unwrap_or(l.addr);
            }
        } else if let Some(up) = m.upstream.borrow().clone() {
            resp.leader_addr = up;
        }
        Ok(resp)
    }
}

#[tonic::async_trait]
impl Local for LocalService {
    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        Ok(Response::new(self.daemon.init(req.into_inner()).await?))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(self.daemon.join(req.into_inner()).await?))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        Ok(Response::new(self.daemon.leave(req.into_inner()).await?))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.daemon.info().await?))
    }

    async fn task_exec(
        &self,
        req: Request<TaskExecRequest>,
    ) -> Result<Response<TaskExecResponse>, Status> {
        let (task_id, pid) = self.daemon.exec_target(&req.into_inner().task).await?;
        Ok(Response::new(TaskExecResponse { task_id, pid }))
    }

    async fn version(
        &self,
        _req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(BuildInfo::this_binary().to_proto()))
    }
}
