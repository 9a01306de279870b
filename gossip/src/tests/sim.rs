//! An in-memory network of [`Core`]s driven by paused tokio time.
//!
//! Every packet a core emits is delivered `latency` later to the core at its address (unless a
//! drop rule or a cut link eats it); sync requests are answered in place and the reply
//! delivered `latency` later, like one tcp round trip. The loop always jumps the paused clock
//! to the next thing that happens (a delivery or a core timeout), so minutes of protocol time
//! run in milliseconds and every run with the same seeds is the same run.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Core, GossipConfig, Keyring, Liveness, NodeIdentity, Peer, RecordEvent, TransmitKind};

/// Incarnation of a node's first start in the simulation.
pub const FIRST_INCARNATION: u64 = 1_000;

pub fn keyring(ids: &[u32]) -> Keyring {
    Keyring::new(ids.iter().map(|id| (*id, [*id as u8; 32])).collect()).expect("valid test keyring")
}

pub struct SimNode {
    pub id: String,
    pub addr: SocketAddr,
    /// `None` while the node is killed.
    pub core: Option<Core>,
    events: Option<mpsc::UnboundedReceiver<RecordEvent>>,
    starts: u64,
}

enum Delivery {
    Packet {
        from: usize,
        to: SocketAddr,
        kind: TransmitKind,
        data: Vec<u8>,
    },
    SyncReply {
        from: SocketAddr,
        to: usize,
        data: Vec<u8>,
    },
}

type DropRule = Box<dyn Fn(usize, usize, TransmitKind) -> bool>;

pub struct Sim {
    pub nodes: Vec<SimNode>,
    pub config: GossipConfig,
    pub keys: Keyring,
    pub latency: Duration,
    /// Nodes whose links are down: nothing in or out.
    pub cut: HashSet<usize>,
    /// Drops a packet from `from` to `to` of `kind` when it returns true.
    pub drop_rule: Option<DropRule>,
    /// Packets eaten by `cut` or `drop_rule`.
    pub dropped: u64,
    inflight: BTreeMap<(Instant, u64), Delivery>,
    seq: u64,
    seed: u64,
}

impl Sim {
    /// `n` nodes, each told about all the others.
    pub fn new(n: usize, config: GossipConfig, seed: u64) -> Self {
        let mut sim = Self {
            nodes: Vec::new(),
            config,
            keys: keyring(&[1]),
            latency: Duration::from_millis(1),
            cut: HashSet::new(),
            drop_rule: None,
            dropped: 0,
            inflight: BTreeMap::new(),
            seq: 0,
            seed,
        };
        for i in 0..n {
            let addr: SocketAddr = format!("127.0.1.{}:7946", i + 1).parse().expect("addr");
            sim.nodes.push(SimNode {
                id: format!("node-{i}"),
                addr,
                core: None,
                events: None,
                starts: 0,
            });
        }
        for i in 0..n {
            sim.start(i, FIRST_INCARNATION);
        }
        sim
    }

    pub fn peers(&self) -> Vec<Peer> {
        self.nodes
            .iter()
            .map(|n| Peer {
                node_id: n.id.clone(),
                addr: n.addr,
            })
            .collect()
    }

    /// (Re)starts node `i` as a fresh process with `incarnation`, keyring `self.keys`.
    pub fn start(&mut self, i: usize, incarnation: u64) {
        self.start_with_keys(i, incarnation, self.keys.clone());
    }

    pub fn start_with_keys(&mut self, i: usize, incarnation: u64, keys: Keyring) {
        let peers = self.peers();
        let node = &mut self.nodes[i];
        node.starts += 1;
        let identity = NodeIdentity::new(&node.id, node.addr, incarnation).expect("identity");
        let seed = self.seed * 1000 + i as u64 * 10 + node.starts;
        let now = Instant::now();
        let mut core =
            Core::new(self.config.clone(), identity, keys, seed, now).expect("core starts");
        node.events = Some(core.subscribe());
        core.set_peers(peers, now);
        node.core = Some(core);
    }

    /// Kills node `i`: it stops sending, receiving and keeping time.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].events = None;
    }

    pub fn core(&self, i: usize) -> &Core {
        self.nodes[i].core.as_ref().expect("node is running")
    }

    pub fn core_mut(&mut self, i: usize) -> &mut Core {
        self.nodes[i].core.as_mut().expect("node is running")
    }

    /// How node `observer` sees node `subject`.
    pub fn sees(&self, observer: usize, subject: usize) -> Liveness {
        self.core(observer).liveness(&self.nodes[subject].id)
    }

    /// Running nodes other than `except`.
    pub fn running_except(&self, except: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| *i != except && self.nodes[*i].core.is_some())
            .collect()
    }

    /// Every running node sees every running node up.
    pub fn all_running_up(&self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].core.is_some())
            .collect();
        running
            .iter()
            .all(|o| running.iter().all(|s| self.sees(*o, *s) == Liveness::Up))
    }

    /// Record events node `i` received since the last call.
    pub fn events(&mut self, i: usize) -> Vec<RecordEvent> {
        let mut out = Vec::new();
        if let Some(rx) = self.nodes[i].events.as_mut() {
            while let Ok(e) = rx.try_recv() {
                out.push(e);
            }
        }
        out
    }

    /// Runs the network for `d` of (paused) time.
    pub async fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false).await;
    }

    /// Runs until `cond` holds (checked after every delivery and timeout) or `limit` passes.
    /// Returns how long it took.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        let end = start + limit;
        loop {
            self.collect();
            if cond(self) {
                return Some(Instant::now() - start);
            }
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|n| n.core.as_ref()?.poll_timeout())
                .min();
            let next_packet = self.inflight.keys().next().map(|(at, _)| *at);
            let next = match (next_timer, next_packet) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            let now = Instant::now();
            if next > end {
                tokio::time::advance(end.saturating_duration_since(now)).await;
                return None;
            }
            if next > now {
                tokio::time::advance(next - now).await;
            }
            let now = Instant::now();
            while let Some(entry) = self.inflight.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let delivery = entry.remove();
                self.deliver(delivery, now);
                self.collect();
            }
            for node in &mut self.nodes {
                if let Some(core) = node.core.as_mut()
                    && core.poll_timeout().is_some_and(|t| t <= now)
                {
                    core.handle_timeout(now);
                }
            }
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    fn passes(&mut self, from: usize, to: usize, kind: TransmitKind) -> bool {
        let dropped = self.cut.contains(&from)
            || self.cut.contains(&to)
            || self.drop_rule.as_ref().is_some_and(|r| r(from, to, kind));
        self.dropped += u64::from(dropped);
        !dropped
    }

    /// Moves every queued transmit of every core onto the wire.
    fn collect(&mut self) {
        let at = Instant::now() + self.latency;
        for from in 0..self.nodes.len() {
            while let Some(t) = self.nodes[from]
                .core
                .as_mut()
                .and_then(|c| c.poll_transmit())
            {
                self.seq += 1;
                self.inflight.insert(
                    (at, self.seq),
                    Delivery::Packet {
                        from,
                        to: t.to,
                        kind: t.kind,
                        data: t.data,
                    },
                );
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery, now: Instant) {
        match delivery {
            Delivery::Packet {
                from,
                to,
                kind,
                data,
            } => {
                let Some(to) = self.index_of(to) else { return };
                if !self.passes(from, to, kind) {
                    return;
                }
                let from_addr = self.nodes[from].addr;
                let to_addr = self.nodes[to].addr;
                let Some(core) = self.nodes[to].core.as_mut() else {
                    // Killed: a real tcp connect would fail.
                    if kind == TransmitKind::SyncRequest
                        && let Some(c) = self.nodes[from].core.as_mut()
                    {
                        c.sync_failed(to_addr);
                    }
                    return;
                };
                match kind {
                    TransmitKind::Swim | TransmitKind::Records => {
                        core.handle_datagram(from_addr, &data, now)
                    }
                    TransmitKind::SyncRequest => {
                        let reply = core.handle_sync_request(from_addr, &data, now);
                        if let Some(reply) = reply
                            && self.passes(to, from, kind)
                        {
                            self.seq += 1;
                            self.inflight.insert(
                                (now + self.latency, self.seq),
                                Delivery::SyncReply {
                                    from: to_addr,
                                    to: from,
                                    data: reply,
                                },
                            );
                        }
                    }
                }
            }
            Delivery::SyncReply { from, to, data } => {
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.handle_sync_reply(from, &data, now);
                }
            }
        }
    }
}
