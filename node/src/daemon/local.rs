//! The node-local API on the unix socket: init, join, leave, info.

use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use mesh_control::ca::{self, JoinToken, NodeKey, RootCa, now_ms};
use mesh_control::net::ChannelProvider;
use mesh_proto::dispatcher_client::DispatcherClient;
use mesh_proto::local_server::Local;
use mesh_proto::{
    Cluster, ClusterSpec, GossipKey, InfoRequest, InfoResponse, InitRequest, InitResponse,
    JoinRequest, JoinResponse, LeaveClusterRequest, LeaveRequest, LeaveResponse, Network,
    NetworkSpec, Node, NodeRole, NodeSpec, StoreOp, TaskExecRequest, TaskExecResponse, Transaction,
    store_op::Op,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::join::{self, JoinParams};
use super::state::{Certs, NodeState};
use super::{Daemon, ManagerStart, not_in_cluster, parse_advertise, parse_socket_addr};

pub const DEFAULT_CONTROL_PORT: u16 = 2377;
pub const DEFAULT_DATA_PATH_PORT: u32 = 4789;
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_ADDR_POOL_MASK: u32 = 24;
pub const DEFAULT_INGRESS_SUBNET: &str = "10.255.0.0/16";
/// Name of the routing-mesh network `mesh init` creates.
pub const INGRESS_NETWORK: &str = "ingress";

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

/// Validates the cluster-wide settings `mesh init` takes.
fn cluster_spec(
    req: &InitRequest,
    cert_validity_secs: u64,
    control_port: u16,
    gossip_port: u16,
) -> Result<ClusterSpec, Status> {
    let pools = if req.default_addr_pool.is_empty() {
        vec![DEFAULT_ADDR_POOL.to_string()]
    } else {
        req.default_addr_pool.clone()
    };
    let mask = if req.default_addr_pool_mask_length == 0 {
        DEFAULT_ADDR_POOL_MASK
    } else {
        req.default_addr_pool_mask_length
    };
    let mut nets: Vec<Ipv4Net> = Vec::new();
    for p in &pools {
        let net: Ipv4Net = p.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "--default-addr-pool: {p:?} is not an IPv4 CIDR (like 10.0.0.0/8)"
            ))
        })?;
        if net.network() != net.addr() {
            return Err(Status::invalid_argument(format!(
                "--default-addr-pool: {p} has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        if let Some(other) = nets.iter().find(|o| o.contains(&net) || net.contains(*o)) {
            return Err(Status::invalid_argument(format!(
                "--default-addr-pool: {p} overlaps {other}"
            )));
        }
        if mask < u32::from(net.prefix_len()) {
            return Err(Status::invalid_argument(format!(
                "--default-addr-pool-mask-length: /{mask} is larger than the pool {p}"
            )));
        }
        nets.push(net);
    }
    if !(16..=29).contains(&mask) {
        return Err(Status::invalid_argument(format!(
            "--default-addr-pool-mask-length: {mask} is out of range (16 to 29)"
        )));
    }
    let data_path_port = if req.data_path_port == 0 {
        DEFAULT_DATA_PATH_PORT
    } else {
        req.data_path_port
    };
    if !(1024..=65535).contains(&data_path_port) {
        return Err(Status::invalid_argument(format!(
            "--data-path-port: {data_path_port} is out of range (1024 to 65535)"
        )));
    }
    if data_path_port == u32::from(control_port) || data_path_port == u32::from(gossip_port) {
        return Err(Status::invalid_argument(format!(
            "--data-path-port: {data_path_port} is already the control or gossip port"
        )));
    }
    let cert_validity_secs = if req.cert_validity_secs == 0 {
        cert_validity_secs
    } else {
        req.cert_validity_secs
    };
    if cert_validity_secs < 3600 {
        return Err(Status::invalid_argument(
            "--cert-expiry: must be at least 1h",
        ));
    }
    Ok(ClusterSpec {
        default_addr_pool: nets.iter().map(ToString::to_string).collect(),
        default_addr_pool_mask_length: mask,
        data_path_port,
        cert_validity_secs,
    })
}

/// The routing-mesh network of a new cluster.
fn ingress_network(req: &InitRequest, cluster: &ClusterSpec, now: i64) -> Result<Network, Status> {
    let subnet = if req.ingress_subnet.is_empty() {
        DEFAULT_INGRESS_SUBNET
    } else {
        req.ingress_subnet.as_str()
    };
    let spec = NetworkSpec {
        name: INGRESS_NETWORK.into(),
        driver: "overlay".into(),
        subnet: subnet.into(),
        ingress: true,
        ..Default::default()
    };
    let alloc = mesh_control::allocator::allocate_network(&spec, &[], cluster).map_err(|e| {
        Status::invalid_argument(e.to_string().replace("--subnet", "--ingress-subnet"))
    })?;
    Ok(Network {
        id: ca::new_node_id().map_err(|e| Status::internal(e.to_string()))?,
        spec: Some(spec),
        subnet: alloc.subnet.to_string(),
        gateway: alloc.gateway.to_string(),
        vni: alloc.vni,
        created_at_ms: now,
        updated_at_ms: now,
        ..Default::default()
    })
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
        let spec = cluster_spec(
            &req,
            self.config.ca.cert_validity_secs,
            listen.port(),
            gossip_port,
        )?;
        let validity = Duration::from_secs(spec.cert_validity_secs);

        let err = |e: ca::CaError| Status::internal(e.to_string());
        let cluster_id = ca::new_cluster_id().map_err(err)?;
        let node_id = ca::new_node_id().map_err(err)?;
        let root = RootCa::generate(&cluster_id).map_err(err)?;
        let key = NodeKey::generate().map_err(err)?;
        let cert_pem = root
            .sign_csr(
                &key.csr_pem().map_err(err)?,
                &node_id,
                NodeRole::Manager,
                &cluster_id,
                validity,
            )
            .map_err(err)?;
        let now = now_ms();
        let cluster = Cluster {
            id: cluster_id.clone(),
            spec: Some(spec),
            ca_cert_pem: root.cert_pem().to_string(),
            ca_key_pem: root.key_pem(),
            worker_secret: ca::new_secret().map_err(err)?,
            manager_secret: ca::new_secret().map_err(err)?,
            gossip_keys: vec![GossipKey {
                id: 1,
                key: ca::new_symmetric_key().map_err(err)?,
                created_at_ms: now,
            }],
            created_at_ms: now,
            last_raft_id: 1,
            ..Default::default()
        };
        let mut node = Node {
            id: node_id.clone(),
            spec: Some(NodeSpec {
                desired_role: NodeRole::Manager as i32,
            }),
            hostname: self.hostname.clone(),
            addr: advertise.to_string(),
            control_port: u32::from(listen.port()),
            gossip_port: u32::from(gossip_port),
            raft_id: 1,
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        node.set_role(NodeRole::Manager);
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
            ca_pem: root.cert_pem().to_string(),
            cert_pem,
            key_pem: key.to_pem(),
        };
        let digest = root.digest().map_err(err)?;
        let tokens = (
            JoinToken {
                ca_digest: digest.clone(),
                secret: cluster.worker_secret.clone(),
            }
            .to_string(),
            JoinToken {
                ca_digest: digest,
                secret: cluster.manager_secret.clone(),
            }
            .to_string(),
        );
        let ingress = ingress_network(&req, cluster.spec.as_ref().expect("spec set above"), now)?;
        let txn = Transaction {
            ops: vec![
                StoreOp {
                    op: Some(Op::PutCluster(cluster)),
                    expect_version: Some(0),
                },
                StoreOp {
                    op: Some(Op::PutNetwork(ingress)),
                    expect_version: Some(0),
                },
                StoreOp {
                    op: Some(Op::PutNode(node)),
                    expect_version: Some(0),
                },
            ],
        };
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
            .map_err(|e: ca::CaError| Status::invalid_argument(format!("--token: {e}")))?;
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
}
