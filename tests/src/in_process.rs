//! Clusters of daemons in this one process (the second layer of tests): every node is a real
//! `mesh daemon` (raft, CA, dispatcher, control API over tonic and rustls, gossip over UDP and
//! TCP) on its own loopback address and free ports, with its worker on fakes
//! ([`FakeWorkers`]): no root, no namespaces, seconds not minutes.
//!
//! Each node runs on a tokio runtime of its own, so [`Cluster::kill`] can stop one abruptly
//! (no goodbye to gossip or raft), as a crash would.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_common::metrics::Metrics;
use mesh_lab::wait::wait_for_async;
use mesh_node::config::DaemonConfig;
use mesh_node::daemon::{self, DaemonOptions};
use mesh_node::worker::fake::{FakeHost, FakeWorkers};
use mesh_proto::control_client::ControlClient;
use mesh_proto::local_client::LocalClient;
use mesh_proto::{
    GetJoinTokenRequest, InfoRequest, InitRequest, JoinRequest, ListNodesRequest, NodeRole,
    NodeStatus,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::FAST_CONFIG;

/// How long cluster formation may take.
const FORMATION: Duration = Duration::from_secs(30);

/// One daemon of the cluster.
pub struct Node {
    pub name: String,
    /// Its underlay address (a loopback address of its own).
    pub addr: Ipv4Addr,
    pub control_port: u16,
    pub node_id: String,
    socket: PathBuf,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    /// What the daemon exports (its `--metrics-addr` would serve these).
    pub metrics: Arc<Metrics>,
}

impl Node {
    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn control_addr(&self) -> String {
        format!("{}:{}", self.addr, self.control_port)
    }

    /// A client of its control API, as its local CLI would be.
    pub async fn control(&self) -> Result<ControlClient<Channel>> {
        Ok(ControlClient::new(
            mesh_node::cli::client::connect(&self.host()).await?,
        ))
    }

    /// A client of its node-local API (init, join, info).
    pub async fn local(&self) -> Result<LocalClient<Channel>> {
        Ok(LocalClient::new(
            mesh_node::cli::client::connect(&self.host()).await?,
        ))
    }

    pub fn is_running(&self) -> bool {
        self.runtime.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A cluster of daemons in this process.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub workers: Arc<FakeWorkers>,
    // Dropped last: the nodes' state dirs and sockets.
    _dir: tempfile::TempDir,
}

/// A port free for TCP and UDP on every address, for this process to bind next.
fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP")
}

impl Cluster {
    /// `size` daemons, the first `managers` of them managers (node1 inits, the others join),
    /// every node ready in every manager's view. `tweak` adjusts the fast test config.
    pub async fn start(
        size: usize,
        managers: usize,
        tweak: impl Fn(&mut DaemonConfig),
    ) -> Result<Cluster> {
        let dir = tempfile::tempdir().context("cluster dir")?;
        let workers = FakeWorkers::new();
        let mut nodes = Vec::new();
        for i in 1..=size {
            let name = format!("node{i}");
            let mut config: DaemonConfig =
                toml::from_str(FAST_CONFIG).context("fast test config")?;
            config.agent.gossip_port = free_port()?;
            config.agent.reconcile_ms = 500;
            tweak(&mut config);
            let socket = dir.path().join(&name).join("mesh.sock");
            let metrics = Arc::new(Metrics::new());
            let opts = DaemonOptions {
                state_dir: dir.path().join(&name).join("state"),
                socket: socket.clone(),
                config,
                hostname: name.clone(),
                netns_prefix: Some(format!("ip{i}-")),
                workers: workers.clone(),
                force_new_cluster: false,
                metrics: metrics.clone(),
                metrics_addr: None,
            };
            let shutdown = CancellationToken::new();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(format!("{name}-rt"))
                .enable_all()
                .build()
                .context("node runtime")?;
            runtime.spawn(daemon::serve(opts, shutdown.clone()));
            nodes.push(Node {
                name,
                addr: Ipv4Addr::new(127, 0, 0, 10 + i as u8),
                control_port: free_port()?,
                node_id: String::new(),
                socket,
                shutdown,
                runtime: Some(runtime),
                metrics,
            });
        }
        let mut cluster = Cluster {
            nodes,
            workers,
            _dir: dir,
        };
        cluster.form(managers).await?;
        Ok(cluster)
    }

    async fn form(&mut self, managers: usize) -> Result<()> {
        for n in &self.nodes {
            wait_for_async(&format!("{} to listen", n.name), FORMATION, async || {
                Ok(n.local().await.is_ok())
            })
            .await?;
        }
        let first = &self.nodes[0];
        first
            .local()
            .await?
            .init(InitRequest {
                advertise_addr: first.addr.to_string(),
                listen_addr: first.control_addr(),
                ..Default::default()
            })
            .await
            .context("init")?;
        let mut control = first.control().await?;
        let mut tokens = Vec::new();
        for role in [NodeRole::Worker, NodeRole::Manager] {
            let resp = control
                .get_join_token(GetJoinTokenRequest {
                    role: role as i32,
                    rotate: false,
                })
                .await?;
            tokens.push(resp.into_inner().token);
        }
        let (worker_token, manager_token) = (tokens[0].clone(), tokens[1].clone());
        let remote = self.nodes[0].control_addr();
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            let token = if i < managers {
                manager_token.clone()
            } else {
                worker_token.clone()
            };
            n.local()
                .await?
                .join(JoinRequest {
                    token,
                    remote_addr: remote.clone(),
                    advertise_addr: n.addr.to_string(),
                    listen_addr: n.control_addr(),
                })
                .await
                .with_context(|| format!("{} joins", n.name))?;
        }
        for i in 0..self.nodes.len() {
            let info = self.nodes[i].local().await?.info(InfoRequest {}).await?;
            self.nodes[i].node_id = info.into_inner().node_id;
        }
        let size = self.nodes.len();
        wait_for_async("every node ready", FORMATION, async || {
            let mut control = self.nodes[0].control().await?;
            let nodes = control
                .list_nodes(ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            let ready = nodes
                .iter()
                .filter(|n| n.status() == NodeStatus::Ready)
                .count();
            Ok((ready == size).then_some(()))
        })
        .await
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The fakes of node `i` (its worker must have started).
    pub fn host(&self, i: usize) -> FakeHost {
        self.workers
            .host(&self.nodes[i].node_id)
            .expect("the node's worker started")
    }

    /// Index of the node with id `node_id`.
    pub fn index_of(&self, node_id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node_id == node_id)
    }

    /// Stops node `i` abruptly: its runtime is dropped with everything on it, with no
    /// goodbye to gossip or raft, as a crash would (its worker's thread ends with it).
    pub fn kill(&mut self, i: usize) {
        if let Some(rt) = self.nodes[i].runtime.take() {
            rt.shutdown_background();
        }
    }

    /// A manager that is running, for control calls.
    pub async fn control(&self) -> Result<ControlClient<Channel>> {
        let n = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .context("no node is running")?;
        n.control().await
    }
}
