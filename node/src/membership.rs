//! The agent's view of cluster membership: adapts the gossip layer to what
//! the daemon and the manager need. The ports are bound when the node
//! starts (so a port conflict fails `init`/`join` at once), but gossip
//! itself starts only when the first keyring arrives from the managers:
//! without a key nothing can be sealed or opened.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use mesh_common::Liveness as LivenessView;
use mesh_gossip::{Gossip, GossipConfig, Keyring, Liveness, NodeIdentity, Peer};
use mesh_proto::{GossipKey, NodeStatus};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    config: GossipConfig,
    advertise: SocketAddr,
    /// Bound but idle sockets, until the first keyring.
    sockets: Mutex<Option<(UdpSocket, TcpListener)>>,
    gossip: RwLock<Option<Gossip>>,
    /// Last peers and key ids handed down, to start with and to skip no-op updates.
    peers: Mutex<Vec<Peer>>,
    key_ids: Mutex<Vec<u32>>,
}

impl Membership {
    /// Binds the gossip port (udp and tcp) on `bind`; `advertise` is what
    /// other nodes reach it on.
    pub async fn start(
        config: &GossipConfig,
        node_id: &str,
        bind: SocketAddr,
        advertise: SocketAddr,
    ) -> anyhow::Result<Membership> {
        let udp = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("cannot bind gossip udp {bind}"))?;
        let tcp = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot bind gossip tcp {bind}"))?;
        Ok(Membership {
            inner: Arc::new(Inner {
                node_id: node_id.to_string(),
                config: config.clone(),
                advertise,
                sockets: Mutex::new(Some((udp, tcp))),
                gossip: RwLock::new(None),
                peers: Mutex::new(Vec::new()),
                key_ids: Mutex::new(Vec::new()),
            }),
        })
    }

    fn gossip(&self) -> Option<Gossip> {
        self.inner
            .gossip
            .read()
            .expect("gossip lock poisoned")
            .clone()
    }

    /// Installs the cluster's gossip keys (newest first); starts gossip on
    /// the first call.
    pub fn set_keys(&self, keys: &[GossipKey]) {
        let ids: Vec<u32> = keys.iter().map(|k| k.id).collect();
        if ids.is_empty() || *self.inner.key_ids.lock().expect("key ids lock poisoned") == ids {
            return;
        }
        let pairs: Result<Vec<(u32, [u8; 32])>, _> = keys
            .iter()
            .map(|k| <[u8; 32]>::try_from(k.key.as_slice()).map(|key| (k.id, key)))
            .collect();
        let ring = match pairs
            .map_err(|_| "a key is not 32 bytes".to_string())
            .and_then(|p| Keyring::new(p).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "ignoring unusable gossip keys");
                return;
            }
        };
        *self.inner.key_ids.lock().expect("key ids lock poisoned") = ids;
        if let Some(g) = self.gossip() {
            info!("gossip keyring updated");
            g.set_keys(ring);
            return;
        }
        let Some((udp, tcp)) = self
            .inner
            .sockets
            .lock()
            .expect("sockets lock poisoned")
            .take()
        else {
            return;
        };
        let started =
            NodeIdentity::fresh(&self.inner.node_id, self.inner.advertise).and_then(|identity| {
                Gossip::serve(
                    self.inner.config.clone(),
                    identity,
                    udp,
                    tcp,
                    ring,
                    rand::random(),
                )
            });
        match started {
            Ok((g, _task)) => {
                g.set_peers(
                    self.inner
                        .peers
                        .lock()
                        .expect("peers lock poisoned")
                        .clone(),
                );
                info!(addr = %self.inner.advertise, "gossip started");
                *self.inner.gossip.write().expect("gossip lock poisoned") = Some(g);
            }
            Err(e) => warn!(error = %e, "cannot start gossip"),
        }
    }

    /// The cluster's nodes, from the managers.
    pub fn set_peers(&self, peers: &[mesh_proto::Peer]) {
        let list: Vec<Peer> = peers
            .iter()
            .filter_map(|p| {
                let ip = p.addr.parse().ok()?;
                Some(Peer {
                    node_id: p.node_id.clone(),
                    addr: SocketAddr::new(ip, u16::try_from(p.gossip_port).ok()?),
                })
            })
            .collect();
        {
            let mut last = self.inner.peers.lock().expect("peers lock poisoned");
            if *last == list {
                return;
            }
            *last = list.clone();
        }
        if let Some(g) = self.gossip() {
            g.set_peers(list);
        }
    }

    /// Members seen alive, this node included.
    pub fn alive_members(&self) -> u32 {
        self.gossip()
            .map(|g| g.stats().members_alive as u32)
            .unwrap_or(1)
    }

    /// Packets dropped because they failed authentication.
    pub fn auth_failures(&self) -> u64 {
        self.gossip().map(|g| g.stats().auth_failures).unwrap_or(0)
    }

    /// The gossip plane, once started (endpoint records ride on it).
    pub fn plane(&self) -> Option<Gossip> {
        self.gossip()
    }

    /// Leaves gossip gracefully, so peers see this node go at once.
    pub async fn shutdown(&self) {
        let g = self
            .inner
            .gossip
            .write()
            .expect("gossip lock poisoned")
            .take();
        if let Some(g) = g {
            g.leave().await;
        }
        self.inner
            .sockets
            .lock()
            .expect("sockets lock poisoned")
            .take();
    }
}

impl LivenessView for Membership {
    fn status(&self, node_id: &str) -> NodeStatus {
        if node_id == self.inner.node_id {
            return NodeStatus::Ready;
        }
        match self.gossip().map(|g| g.liveness(node_id)) {
            Some(Liveness::Up) => NodeStatus::Ready,
            Some(Liveness::Down) => NodeStatus::Down,
            None => NodeStatus::Unknown,
        }
    }
}
