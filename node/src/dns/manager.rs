//! [`DnsManager`]: one DNS server per task, listening on 127.0.0.11:53 (UDP and TCP) inside
//! the task's network namespace, all answering from one [`SharedTable`].
//!
//! # Sockets and runtime
//! The listening sockets are created inside the task's namespace by the socket thread of
//! [`NetnsSockets`] and then served by hickory's [`Server`] on the runtime that called
//! [`DnsManager::attach`]; no runtime thread ever enters a namespace. The manager keeps the
//! namespace open while the server runs, so a task that exits before [`DnsManager::detach`]
//! leaves a server nobody can reach, not a socket in some other namespace.
//!
//! # Concurrency
//! Attach and detach of all tasks are serialized by one async mutex over the server map (each
//! is a few socket calls). Queries never take it: a server reads the table's lock and its
//! own network list only.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_server::Server;
use mesh_common::metrics::DnsMetrics;
use mesh_dataplane::link::{self, IfName};
use mesh_dataplane::netns::Netns;
use tracing::{debug, info, warn};

use super::config::DnsConfig;
use super::error::{DnsError, Result};
use super::forward::Forwarder;
use super::handler::{SharedTable, TaskHandler, TaskNetworks};
use super::sockets::{NetnsRuntime, NetnsSockets};

/// The address every task's resolver is at, as in Docker.
pub const DNS_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(DNS_IP), 53);
/// The resolver's address.
const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// A TCP client connection idle this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How long a detach waits for the server's tasks to end before dropping them.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The DNS servers of this node's tasks (see the module doc).
pub struct DnsManager {
    config: Arc<DnsConfig>,
    table: SharedTable,
    sockets: NetnsSockets,
    servers: tokio::sync::Mutex<HashMap<String, TaskServer>>,
    metrics: DnsMetrics,
}

struct TaskServer {
    /// Identity of the namespace served, to tell a re-attach to a new namespace.
    netns_id: (u64, u64),
    networks: TaskNetworks,
    server: Server<TaskHandler>,
}

impl DnsManager {
    /// A manager with no server yet; forwarding as `config` says. The table starts empty,
    /// with `config`'s search domains.
    pub fn new(config: DnsConfig) -> Self {
        Self::with_metrics(config, DnsMetrics::default())
    }

    /// [`DnsManager::new`], with every server counting and timing its answers in `metrics`.
    pub fn with_metrics(config: DnsConfig, metrics: DnsMetrics) -> Self {
        let table = SharedTable::new();
        table.update(|t| t.set_search_domains(&config.search_domains));
        Self {
            config: Arc::new(config),
            table,
            sockets: NetnsSockets::new(),
            servers: tokio::sync::Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The table every server answers from; update it as endpoint records come and go.
    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// The forwarding configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Serves `task_id` in the network namespace at `netns_path`, scoped to `networks` (first
    /// match wins). Idempotent: attaching an attached task only replaces its networks, unless
    /// the path now names another namespace, whose server then replaces the old one. Brings
    /// `lo` up if it is down (127.0.0.11 is unreachable without it). Must be called within a tokio
    /// runtime, which then runs the server.
    pub async fn attach(
        &self,
        task_id: &str,
        netns_path: &Path,
        networks: Vec<String>,
    ) -> Result<()> {
        let ns = Netns::open_path(task_id, netns_path).map_err(|source| DnsError::OpenNetns {
            task: task_id.to_owned(),
            path: netns_path.to_owned(),
            source: Box::new(source),
        })?;
        let netns_id = ns.id().map_err(|source| DnsError::OpenNetns {
            task: task_id.to_owned(),
            path: netns_path.to_owned(),
            source: Box::new(source),
        })?;
        let mut servers = self.servers.lock().await;
        if let Some(existing) = servers.get(task_id)
            && existing.netns_id == netns_id
        {
            *existing
                .networks
                .write()
                .unwrap_or_else(PoisonError::into_inner) = networks.into();
            debug!(task = task_id, "dns networks updated");
            return Ok(());
        }
        if let Some(old) = servers.remove(task_id) {
            debug!(task = task_id, "dns server moves to a new namespace");
            stop(task_id, old).await;
        }

        let ns = Arc::new(ns);
        let (udp, tcp) = self.bind(task_id, &ns).await?;
        let networks: TaskNetworks = Arc::new(RwLock::new(networks.into()));
        let handler = TaskHandler {
            task: task_id.to_owned(),
            table: self.table.clone(),
            networks: networks.clone(),
            forwarder: Forwarder::new(
                NetnsRuntime::new(ns.clone(), self.sockets.clone()),
                self.config.clone(),
            ),
            metrics: self.metrics.clone(),
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        servers.insert(
            task_id.to_owned(),
            TaskServer {
                netns_id,
                networks,
                server,
            },
        );
        info!(task = task_id, netns = %netns_path.display(), "dns server attached");
        Ok(())
    }

    /// Stops serving `task_id`; its sockets are closed when this returns. Absent is fine.
    pub async fn detach(&self, task_id: &str) {
        let removed = self.servers.lock().await.remove(task_id);
        if let Some(server) = removed {
            stop(task_id, server).await;
            info!(task = task_id, "dns server detached");
        }
    }

    /// The tasks served, sorted.
    pub async fn attached(&self) -> Vec<String> {
        let mut tasks: Vec<String> = self.servers.lock().await.keys().cloned().collect();
        tasks.sort();
        tasks
    }

    /// Stops every server.
    pub async fn shutdown(&self) {
        let servers: Vec<(String, TaskServer)> = self.servers.lock().await.drain().collect();
        for (task, server) in servers {
            stop(&task, server).await;
        }
    }

    /// UDP socket and TCP listener inside `ns`, answering at [`DNS_ADDR`]: they are bound to
    /// ephemeral ports of its address, and a DNAT in the namespace sends port 53 there, so a
    /// task may bind port 53 on the wildcard address itself (a DNS service).
    async fn bind(
        &self,
        task: &str,
        ns: &Arc<Netns>,
    ) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
        let socket_err = |op, source| DnsError::Socket {
            op,
            task: task.to_owned(),
            addr: DNS_ADDR,
            source,
        };
        // 127.0.0.11 is reachable only once lo is up, yet binding it works either way: so
        // check, rather than wait for a bind error that never comes.
        ensure_lo_up(task, ns).await?;
        let any_port = SocketAddr::from((DNS_IP, 0));
        let udp = self
            .sockets
            .bind_udp(ns, any_port)
            .await
            .map_err(|e| socket_err("bind udp", e))?;
        let tcp = self
            .sockets
            .listen_tcp(ns, any_port)
            .await
            .map_err(|e| socket_err("listen tcp", e))?;
        let udp_port = udp
            .local_addr()
            .map_err(|e| socket_err("bind udp", e))?
            .port();
        let tcp_port = tcp
            .local_addr()
            .map_err(|e| socket_err("listen tcp", e))?
            .port();
        let redirect_ns = ns.clone();
        tokio::task::spawn_blocking(move || {
            mesh_dataplane::nft::ensure_dns_redirect(&redirect_ns, DNS_IP, udp_port, tcp_port)?;
            // Flows to 127.0.0.11 that conntrack still maps to a previous server's ports (this
            // agent restarted; a resolver kept its socket) would be refused for as long as
            // they keep sending: start them over on the new ports.
            mesh_dataplane::lb::conntrack::flush_destination(&redirect_ns, DNS_IP)
        })
        .await
        .expect("the dns redirect does not panic")
        .map_err(|source| DnsError::Redirect {
            task: task.to_owned(),
            addr: DNS_ADDR,
            source: Box::new(source),
        })?;
        Ok((udp, tcp))
    }
}

/// Stops a server and waits (bounded) until its sockets are closed.
async fn stop(task: &str, mut server: TaskServer) {
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, server.server.shutdown_gracefully()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(task, %error, "dns server ended with an error"),
        // Dropping the server below aborts what is left, which closes the sockets too.
        Err(_) => warn!(task, "dns server slow to stop: aborting it"),
    }
}

/// Brings `lo` of `ns` up if it is down (the worker should have; a task without it could not
/// reach its resolver).
async fn ensure_lo_up(task: &str, ns: &Arc<Netns>) -> Result<()> {
    let ns = ns.clone();
    let task_id = task.to_owned();
    let up = tokio::task::spawn_blocking(move || {
        let lo = IfName::new("lo")?;
        link::in_netns(&ns, async |nl| {
            if !nl.is_up(&lo).await? {
                warn!(
                    task = task_id,
                    "lo is down in the task's namespace: bringing it up"
                );
                nl.set_up(&lo).await?;
            }
            Ok(())
        })
    })
    .await
    .map_err(|_| DnsError::LoopbackPanicked {
        task: task.to_owned(),
    })?;
    up.map_err(|source| DnsError::Loopback {
        task: task.to_owned(),
        source: Box::new(source),
    })
}
