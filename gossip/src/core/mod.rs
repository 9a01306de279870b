//! The sans-IO gossip state machine: SWIM membership (foca), the endpoint record table, and
//! anti-entropy, driven only by what the caller feeds it.
//!
//! # Contract with a driver
//! Inputs: [`Core::handle_datagram`], [`Core::handle_sync_request`],
//! [`Core::handle_sync_reply`], [`Core::handle_timeout`] and the local API calls, each given
//! the current `tokio::time::Instant`. Outputs: [`Core::poll_transmit`] (datagrams to send,
//! sync exchanges to run) and [`Core::poll_timeout`] (when to call `handle_timeout` next).
//! The core never reads a clock, never touches a socket and never spawns: the crate's tokio
//! driver and the in-memory test network run the very same code.
//!
//! # Layout
//! - this file: [`Core`]'s state, construction, timers and the drain of foca's effects;
//! - `swim`: the node list and liveness (foca notifications, suppression, rejoin, leave);
//! - `scopes`: the local API of scopes and own records, and their events;
//! - `packets`: what arrives and leaves (datagrams, sync frames), sealed with the keyring;
//! - `spread`: how records move between nodes (pushes, merges, repair, anti-entropy).
//!
//! # How records spread (and why not as foca custom broadcasts)
//! foca piggybacks custom broadcasts on messages to random members, with no say per item on
//! who receives it; records must reach only the members of their scope. So:
//! - **scope membership** is itself a record table, the internal *membership scope* (key = a
//!   scope this node joined; a tombstone means it left). Every node is in it, so every node
//!   knows who is in which scope;
//! - **a write** is pushed by its owner straight to every live member of the scope (one
//!   datagram each), together with the owner's membership record for that scope, so the
//!   receiver can check the owner is in the scope even if the membership push was lost;
//! - **a node joining a scope** is sent every member's own records of that scope by the
//!   member itself (when the membership record reaches it), and runs one sync at once;
//! - **anti-entropy**: every `anti_entropy_interval_ms` a node exchanges, over tcp, the
//!   membership table and the full tables (tombstones included) of the scopes it shares with a
//!   random live peer; both sides merge by version. A lost push is repaired there.
//!
//! A record enters the table only if its owner is listed by [`Core::set_peers`], alive in SWIM,
//! of the current start (incarnation), and a member of the record's scope. When SWIM declares
//! the owner down, or it is renamed (restarted), or it leaves the scope or the cluster, its
//! records are withdrawn at once, with a [`Removed`](crate::RecordEventKind::Removed) event each.
//!
//! The owner is the authority on its records: if a peer offers it a live record of its own
//! that it does not hold (a copy from before a restart, or one whose tombstone was swept), it
//! answers with a fresh tombstone.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, PostcardCodec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::config::GossipConfig;
use crate::crypto::Keyring;
use crate::error::GossipError;
use crate::identity::NodeIdentity;
use crate::io::{Liveness, Membership, Stats, Transmit};
use crate::records::{Record, RecordEvent, Table};

mod packets;
mod scopes;
mod spread;
mod swim;

/// The internal scope holding who joined which scope. Users cannot name it: scopes are
/// non-empty.
const MEMBERSHIP_SCOPE: &str = "";
/// Records held per owner until it is seen alive.
const MAX_PENDING_PER_OWNER: usize = 4096;
pub use crate::records::MAX_NAME_LEN;

#[derive(Debug)]
enum CoreTimer {
    Foca(foca::Timer<NodeIdentity>),
    AntiEntropy,
    Rejoin,
    Sweep,
}

type Swim = Foca<NodeIdentity, PostcardCodec, StdRng, NoCustomBroadcast>;

/// The gossip state machine of one node. See the module doc.
pub struct Core {
    config: GossipConfig,
    identity: NodeIdentity,
    foca: Swim,
    rt: AccumulatingRuntime<NodeIdentity>,
    rng: StdRng,
    keys: Keyring,
    /// The cluster's node list (this node excluded): the only nodes heard.
    peers: BTreeMap<String, SocketAddr>,
    /// Members foca holds active and that are listed, by node id.
    active: HashMap<String, NodeIdentity>,
    /// Identities this node declared down locally because they are not listed; forgotten
    /// (foca `RemoveDown`) if they get listed.
    suppressed: HashMap<String, NodeIdentity>,
    /// Records whose owner is listed but not (yet) alive here, replayed when it comes up: the
    /// owner's first pushes often overtake the SWIM message that makes it alive here (after a
    /// start or a rejoin). Bounded per owner; dropped when the owner goes down.
    pending: HashMap<String, VecDeque<Record>>,
    /// When an authenticated packet last came from each node (see [`Core::confirm_down`]).
    last_heard: HashMap<String, Instant>,
    table: Table,
    scopes: BTreeSet<String>,
    /// Joined scopes whose records this node has had a full exchange of since joining (or
    /// that had no other member): what it knows of them is the cluster's view, not a start.
    synced: BTreeSet<String>,
    counter: u64,
    timers: BTreeMap<(Instant, u64), CoreTimer>,
    timer_seq: u64,
    transmits: VecDeque<Transmit>,
    membership: watch::Sender<Membership>,
    subscribers: Vec<mpsc::UnboundedSender<RecordEvent>>,
    stats: Stats,
    left: bool,
}

impl Core {
    /// A node that knows no peer yet. `seed` seeds every random choice (probe order, sync
    /// partner), so a test run is reproducible; production passes a random one.
    pub fn new(
        config: GossipConfig,
        identity: NodeIdentity,
        keys: Keyring,
        seed: u64,
        now: Instant,
    ) -> Result<Self, GossipError> {
        config.validate()?;
        let foca = Foca::new(
            identity.clone(),
            config.foca_config(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
        );
        let mut membership = Membership::new();
        membership.insert(identity.node_id.to_string(), Liveness::Up);
        let mut core = Self {
            foca,
            rt: AccumulatingRuntime::new(),
            rng: StdRng::seed_from_u64(seed.rotate_left(17) ^ 0x5eed),
            keys,
            peers: BTreeMap::new(),
            active: HashMap::new(),
            suppressed: HashMap::new(),
            last_heard: HashMap::new(),
            pending: HashMap::new(),
            table: Table::default(),
            scopes: BTreeSet::new(),
            synced: BTreeSet::new(),
            counter: 0,
            timers: BTreeMap::new(),
            timer_seq: 0,
            transmits: VecDeque::new(),
            membership: watch::Sender::new(membership),
            subscribers: Vec::new(),
            stats: Stats::default(),
            left: false,
            identity,
            config,
        };
        // Spread the first syncs so nodes started together do not sync in lockstep.
        let ae = core.config.anti_entropy_interval();
        let first = core.rng.random_range(ae / 2..=ae);
        core.schedule(now + first, CoreTimer::AntiEntropy);
        core.schedule(now + core.config.rejoin_interval(), CoreTimer::Rejoin);
        core.schedule(now + core.config.gc_interval(), CoreTimer::Sweep);
        Ok(core)
    }

    /// This node's current identity (its incarnation changes if it had to rejoin).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let alive = self
            .active
            .keys()
            .filter(|id| self.peers.contains_key(*id))
            .count();
        let suspect = self
            .foca
            .iter_members()
            .filter(|m| m.state() == foca::State::Suspect)
            .filter(|m| {
                self.peers.contains_key(&*m.id().node_id)
                    && self.active.get(&*m.id().node_id) == Some(m.id())
            })
            .count();
        Stats {
            members_alive: 1 + alive,
            members_suspect: suspect,
            members_down: self.peers.len() - alive,
            ..self.stats.clone()
        }
    }

    /// When [`Core::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if self.left {
                continue;
            }
            match timer {
                CoreTimer::Foca(t) => {
                    if !self.confirm_down(&t, now) {
                        continue;
                    }
                    if let Err(e) = self.foca.handle_timer(t, &mut self.rt) {
                        debug!(error = %e, "swim timer");
                    }
                }
                CoreTimer::AntiEntropy => {
                    self.anti_entropy();
                    let next = now + self.config.anti_entropy_interval();
                    self.schedule(next, CoreTimer::AntiEntropy);
                }
                CoreTimer::Rejoin => {
                    self.rejoin();
                    self.schedule(now + self.config.rejoin_interval(), CoreTimer::Rejoin);
                }
                CoreTimer::Sweep => {
                    let swept = self
                        .table
                        .sweep_tombstones(now, self.config.tombstone_ttl());
                    if swept > 0 {
                        debug!(swept, "tombstones swept");
                    }
                    self.schedule(now + self.config.gc_interval(), CoreTimer::Sweep);
                }
            }
            self.drain(now);
        }
    }

    /// The next packet to deliver.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn schedule(&mut self, at: Instant, timer: CoreTimer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// Feeds foca's accumulated effects out: notifications, datagrams, timers; then
    /// publishes the membership view.
    fn drain(&mut self, now: Instant) {
        while self.rt.backlog() > 0 {
            while let Some(n) = self.rt.to_notify() {
                self.on_notification(n, now);
            }
            while let Some((to, data)) = self.rt.to_send() {
                self.send_swim(&to, data.to_vec());
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                self.schedule(now + after, CoreTimer::Foca(timer));
            }
        }
        self.publish_membership();
    }
}

fn encoded_len(record: &Record) -> usize {
    postcard::experimental::serialized_size(record).unwrap_or(usize::MAX / 2)
}
