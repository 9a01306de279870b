//! The agent's view of cluster membership: adapts the gossip layer to what
//! the daemon and the manager need. The ports are bound when the node
//! starts (so a port conflict fails `init`/`join` at once), but gossip
//! itself starts only when the first keyring arrives from the managers:
//! without a key nothing can be sealed or opened.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use anyhow::Context;
use mesh_common::Liveness as LivenessView;
use mesh_common::metrics::{GossipMetrics, MemberCounts};
use mesh_gossip::{Gossip, GossipConfig, Keyring, Liveness, NodeIdentity, Peer, Stats};
use mesh_proto::{GossipKey, NodeStatus};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

/// How often the gossip plane's counters are copied into the exported metrics.
const METRICS_PERIOD: Duration = Duration::from_secs(1);

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
    metrics: GossipMetrics,
}

impl Membership {
    /// Binds the gossip port (udp and tcp) on `bind`; `advertise` is what
    /// other nodes reach it on. Once gossip runs, its members and packet counts are
    /// exported through `metrics`.
    pub async fn start(
        config: &GossipConfig,
        node_id: &str,
        bind: SocketAddr,
        advertise: SocketAddr,
        metrics: GossipMetrics,
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
                metrics,
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
                tokio::spawn(export_metrics(Arc::downgrade(&self.inner)));
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
        self.inner.metrics.set_members(MemberCounts::default());
    }
}

/// Copies the gossip plane's stats into the exported metrics every [`METRICS_PERIOD`], until
/// the plane is shut down (which zeroes the member gauges) or the membership is dropped.
/// Periodic rather than at scrape time: a scrape then never touches the gossip core's lock.
async fn export_metrics(inner: Weak<Inner>) {
    let mut last = Stats::default();
    let mut tick = tokio::time::interval(METRICS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(g) = inner.gossip.read().expect("gossip lock poisoned").clone() else {
            return;
        };
        let now = g.stats();
        export(&inner.metrics, &last, &now);
        last = now;
    }
}

/// Exports `now`: member gauges as they are, counters by what they grew since `last`.
fn export(metrics: &GossipMetrics, last: &Stats, now: &Stats) {
    metrics.set_members(MemberCounts {
        alive: now.members_alive.saturating_sub(now.members_suspect),
        suspect: now.members_suspect,
        down: now.members_down,
    });
    metrics.add_packets(
        now.packets_out.saturating_sub(last.packets_out),
        now.packets_in.saturating_sub(last.packets_in),
    );
    metrics.add_auth_failures(now.auth_failures.saturating_sub(last.auth_failures));
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

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::metrics::Metrics;

    fn sample(m: &Metrics, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let text = m.encode();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("the exposition parses");
        scrape
            .samples
            .into_iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                other => panic!("{name}: unexpected {other:?}"),
            })
    }

    #[test]
    fn gossip_stats_export_members_by_state_and_counter_growth() {
        let m = Metrics::new();
        let first = Stats {
            members_alive: 4,
            members_suspect: 1,
            members_down: 2,
            packets_in: 10,
            packets_out: 7,
            auth_failures: 1,
            ..Stats::default()
        };
        export(&m.gossip, &Stats::default(), &first);
        let members = |state| sample(&m, "mesh_gossip_members", Some(("state", state)));
        assert_eq!(
            (members("alive"), members("suspect"), members("down")),
            (Some(3.0), Some(1.0), Some(2.0)),
            "a suspect is not counted alive"
        );
        let second = Stats {
            packets_in: 15,
            packets_out: 9,
            auth_failures: 4,
            ..first.clone()
        };
        export(&m.gossip, &first, &second);
        let packets = |d| sample(&m, "mesh_gossip_packets_total", Some(("direction", d)));
        assert_eq!(
            (packets("received"), packets("sent")),
            (Some(15.0), Some(9.0))
        );
        assert_eq!(
            sample(&m, "mesh_gossip_auth_failures_total", None),
            Some(4.0)
        );
    }
}
