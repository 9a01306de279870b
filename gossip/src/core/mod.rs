//! The sans-IO gossip state machine: SWIM membership (foca), the endpoint record table, and
//! anti-entropy, driven only by what the caller feeds it.
//!
//! # Contract with a driver
//! Inputs: [`Core::handle_datagram`], [`Core::handle_sync_request`],
//! [`Core::handle_sync_reply`], [`Core::handle_timeout`] and the local API calls, each given
//! the current `tokio::time::Instant`. Outputs: [`Core::poll_transmit`] (datagrams to send,
//! sync exchanges to run) and [`Core::poll_timeout`] (when to call `handle_timeout` next).
//! The core never reads a clock, never touches a socket and never spawns: the tokio driver
//! ([`super::driver`]) and the in-memory test network run the very same code.
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
//! records are withdrawn at once, with a [`Removed`](super::RecordEventKind::Removed) event each.
//!
//! The owner is the authority on its records: if a peer offers it a live record of its own
//! that it does not hold (a copy from before a restart, or one whose tombstone was swept), it
//! answers with a fresh tombstone.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use foca::{
    AccumulatingRuntime, Foca, Member, NoCustomBroadcast, OwnedNotification, PostcardCodec, State,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::config::GossipConfig;
use super::crypto::Keyring;
use super::error::GossipError;
use super::identity::{NodeIdentity, Peer};
use super::records::{Record, RecordEvent, Table, Version};
use super::wire::{Body, Envelope};

mod spread;

/// The internal scope holding who joined which scope. Users cannot name it: scopes are
/// non-empty.
const MEMBERSHIP_SCOPE: &str = "";
/// Records held per owner until it is seen alive.
const MAX_PENDING_PER_OWNER: usize = 4096;
/// Longest scope name or record key, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Whether a node is alive, as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Alive (or suspected but not yet declared down).
    Up,
    /// Declared down, or never seen.
    Down,
}

/// Liveness of every listed node (and of this node, always [`Liveness::Up`]), by node id.
pub type Membership = BTreeMap<String, Liveness>;

/// Counters of the gossip plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Listed members seen alive, this node included.
    pub members_alive: usize,
    /// Packets or frames dropped because they did not open (wrong or unknown key, tampered,
    /// truncated, unknown version).
    pub auth_failures: u64,
    /// Datagrams and sync frames received.
    pub packets_in: u64,
    /// Datagrams and sync frames produced.
    pub packets_out: u64,
    /// Authenticated packets that did not decode or came on the wrong transport.
    pub malformed: u64,
    /// Authenticated packets from nodes not listed by `set_peers` (removed nodes).
    pub ignored: u64,
    /// Records refused (owner not alive or not in the scope, stale start).
    pub records_rejected: u64,
    /// Anti-entropy exchanges that completed (as the asking side).
    pub syncs_completed: u64,
    /// Anti-entropy exchanges that failed (reported by the driver).
    pub sync_failures: u64,
}

/// What a [`Transmit`] carries; the driver uses it to pick the transport, tests to drop
/// selectively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransmitKind {
    /// A SWIM datagram.
    Swim,
    /// A record push datagram.
    Records,
    /// An anti-entropy request: open a tcp connection, send it as a frame, read one reply
    /// frame and hand it to [`Core::handle_sync_reply`].
    SyncRequest,
}

/// A sealed packet to deliver.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// Destination gossip address.
    pub to: SocketAddr,
    /// What it is.
    pub kind: TransmitKind,
    /// The sealed bytes.
    pub data: Vec<u8>,
}

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

    // ----- membership ---------------------------------------------------------------------

    /// Sets the cluster's node list (idempotent; this node may be in it). Nodes new to the
    /// list and not yet alive are announced to; nodes gone from it are declared down here
    /// (not gossiped), their records withdrawn and their packets ignored from now on.
    pub fn set_peers(&mut self, peers: Vec<Peer>, now: Instant) {
        let me = self.identity.node_id.clone();
        let new: BTreeMap<String, SocketAddr> = peers
            .into_iter()
            .filter(|p| *p.node_id != *me && super::identity::validate_node_id(&p.node_id).is_ok())
            .map(|p| (p.node_id, p.addr))
            .collect();
        let removed: Vec<String> = self
            .peers
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        let added: Vec<(String, SocketAddr)> = new
            .iter()
            .filter(|(id, _)| !self.peers.contains_key(*id))
            .map(|(id, addr)| (id.clone(), *addr))
            .collect();
        self.peers = new;

        for node_id in removed {
            info!(node_id, "node removed from the cluster, forgetting it");
            if let Some(identity) = self.active.get(&node_id).cloned() {
                self.suppress(identity);
            }
            self.pending.remove(&node_id);
            let events = self.table.remove_where(|r| r.owner == node_id);
            self.emit(events);
        }
        for (node_id, addr) in added {
            if self.left {
                break;
            }
            if let Some(identity) = self.suppressed.remove(&node_id) {
                // We declared it down locally only; let foca forget that so it can come back.
                let _ = self
                    .foca
                    .handle_timer(foca::Timer::RemoveDown(identity), &mut self.rt);
            }
            if !self.active.contains_key(&node_id) {
                debug!(node_id, %addr, "announcing to new peer");
                self.announce(&node_id, addr);
            }
        }
        self.drain(now);
    }

    /// Liveness of a node; this node is always up, an unknown node is down.
    pub fn liveness(&self, node_id: &str) -> Liveness {
        if *self.identity.node_id == *node_id
            || (self.peers.contains_key(node_id) && self.active.contains_key(node_id))
        {
            Liveness::Up
        } else {
            Liveness::Down
        }
    }

    /// Liveness of every listed node.
    pub fn membership(&self) -> Membership {
        self.membership.borrow().clone()
    }

    /// A watch of [`Core::membership`], updated on every change.
    pub fn watch_membership(&self) -> watch::Receiver<Membership> {
        self.membership.subscribe()
    }

    /// Replaces the keyring (newest key first). Takes effect for the next packet.
    pub fn set_keys(&mut self, keys: Keyring) {
        info!(key_ids = ?keys.key_ids(), "gossip keyring replaced");
        self.keys = keys;
    }

    /// Leaves the cluster gracefully: tells a few members this identity is down so the
    /// cluster learns at once instead of by probing. The core is inert afterwards.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        info!("leaving the gossip cluster");
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            warn!(error = %e, "foca leave_cluster");
        }
        self.left = true;
        self.drain(now);
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            members_alive: 1 + self
                .active
                .keys()
                .filter(|id| self.peers.contains_key(*id))
                .count(),
            ..self.stats.clone()
        }
    }

    // ----- records ------------------------------------------------------------------------

    /// Joins a scope: its records start flowing to this node (idempotent).
    pub fn join_scope(&mut self, scope: &str, now: Instant) -> Result<(), GossipError> {
        validate_scope(scope)?;
        if self.left || !self.scopes.insert(scope.to_owned()) {
            return Ok(());
        }
        info!(scope, "joined gossip scope");
        let record = self.write_own(MEMBERSHIP_SCOPE, scope, Vec::new(), false, now);
        let to = self.recipients(MEMBERSHIP_SCOPE);
        self.push(&to, vec![record]);
        // Owners push their records when our membership reaches them; one sync now also
        // fetches what they relay for others and anything whose push is lost.
        let members = self.recipients(scope);
        if let Some(peer) = members.choose(&mut self.rng).cloned() {
            self.request_sync(&peer);
        }
        self.drain(now);
        Ok(())
    }

    /// Leaves a scope: its records are dropped here (with `Removed` events) and stop flowing
    /// to this node; other members withdraw this node's records of it (idempotent).
    pub fn leave_scope(&mut self, scope: &str, now: Instant) -> Result<(), GossipError> {
        validate_scope(scope)?;
        if !self.scopes.remove(scope) {
            return Ok(());
        }
        info!(scope, "left gossip scope");
        let record = self.write_own(MEMBERSHIP_SCOPE, scope, Vec::new(), true, now);
        let to = self.recipients(MEMBERSHIP_SCOPE);
        self.push(&to, vec![record]);
        let events = self.table.drop_scope(scope);
        self.emit(events);
        self.drain(now);
        Ok(())
    }

    /// Creates or replaces this node's record `key` in `scope` and pushes it to the scope's
    /// members.
    pub fn upsert_local(
        &mut self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        now: Instant,
    ) -> Result<(), GossipError> {
        validate_scope(scope)?;
        validate_key(scope, key)?;
        if !self.scopes.contains(scope) {
            return Err(GossipError::NotInScope {
                scope: scope.to_owned(),
            });
        }
        let probe = Record {
            scope: scope.to_owned(),
            key: key.to_owned(),
            owner: self.identity.node_id.to_string(),
            version: Version {
                incarnation: u64::MAX,
                counter: u64::MAX,
            },
            value,
            deleted: false,
        };
        let size = encoded_len(&probe) + encoded_len(&self.membership_probe(scope));
        let max = self.config.push_budget();
        if size > max {
            return Err(GossipError::RecordTooLarge {
                scope: scope.to_owned(),
                key: key.to_owned(),
                size,
                max,
            });
        }
        if self.left {
            return Ok(());
        }
        let record = self.write_own(scope, key, probe.value, false, now);
        self.push_scope_records(scope, vec![record]);
        self.drain(now);
        Ok(())
    }

    /// Deletes this node's record `key` in `scope` (absent is success).
    pub fn delete_local(
        &mut self,
        scope: &str,
        key: &str,
        now: Instant,
    ) -> Result<(), GossipError> {
        validate_scope(scope)?;
        validate_key(scope, key)?;
        let me = self.identity.node_id.clone();
        if self.left || !self.scopes.contains(scope) || !self.table.is_live(scope, &me, key) {
            return Ok(());
        }
        let record = self.write_own(scope, key, Vec::new(), true, now);
        self.push_scope_records(scope, vec![record]);
        self.drain(now);
        Ok(())
    }

    /// Live records of a scope this node joined, its own included.
    pub fn records(&self, scope: &str) -> Vec<Record> {
        if scope == MEMBERSHIP_SCOPE || !self.scopes.contains(scope) {
            return Vec::new();
        }
        self.table.live(scope)
    }

    /// The scopes this node joined.
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.iter().cloned().collect()
    }

    /// The live nodes known to have joined `scope` (this node included if it did).
    pub fn scope_members(&self, scope: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .recipients(scope)
            .into_iter()
            .map(|id| id.node_id.to_string())
            .collect();
        if self.scopes.contains(scope) {
            out.push(self.identity.node_id.to_string());
        }
        out.sort();
        out
    }

    /// Scopes this node holds any record of (the membership scope excluded), for tests that
    /// check records never reach a node outside their scope.
    #[cfg(test)]
    pub(crate) fn held_scopes(&self) -> Vec<String> {
        let mut held = self.table.held_scopes();
        held.retain(|s| s != MEMBERSHIP_SCOPE);
        held
    }

    /// A stream of changes to the live records of the joined scopes (this node's own writes
    /// included). Unbounded: a consumer must keep reading.
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<RecordEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        rx
    }

    // ----- driver interface ---------------------------------------------------------------

    /// A datagram arrived.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        if self.left {
            return;
        }
        let Some(envelope) = self.open(from, data, now) else {
            return;
        };
        match envelope.body {
            Body::Swim(bytes) => {
                if let Err(e) = self.foca.handle_data(&bytes, &mut self.rt) {
                    trace!(%from, error = %e, "swim packet refused");
                }
            }
            Body::Push(records) => {
                trace!(%from, node_id = %envelope.from, records = records.len(), "record push");
                self.merge_remote(records, now);
            }
            Body::SyncRequest(_) | Body::SyncReply(_) => {
                self.stats.malformed += 1;
                debug!(%from, "sync body in a datagram, ignored");
            }
        }
        self.drain(now);
    }

    /// A peer opened an anti-entropy exchange with `frame`; returns the reply frame (or
    /// `None` to just close the connection).
    pub fn handle_sync_request(
        &mut self,
        from: SocketAddr,
        frame: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.stats.packets_in += 1;
        if self.left {
            return None;
        }
        let envelope = self.open(from, frame, now)?;
        let Body::SyncRequest(state) = envelope.body else {
            self.stats.malformed += 1;
            debug!(%from, "non-sync body on the sync port, ignored");
            return None;
        };
        debug!(%from, node_id = %envelope.from, records = state.records.len(), "sync request");
        let theirs: BTreeSet<String> = state.scopes.into_iter().collect();
        self.merge_remote(state.records, now);
        let reply = self.sync_state(|scope| theirs.contains(scope));
        let sealed = self.seal(Body::SyncReply(reply));
        if sealed.is_some() {
            self.stats.packets_out += 1;
        }
        self.drain(now);
        sealed
    }

    /// The reply to a sync request this node sent (see [`TransmitKind::SyncRequest`]).
    pub fn handle_sync_reply(&mut self, from: SocketAddr, frame: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        if self.left {
            return;
        }
        let Some(envelope) = self.open(from, frame, now) else {
            return;
        };
        let Body::SyncReply(state) = envelope.body else {
            self.stats.malformed += 1;
            return;
        };
        debug!(%from, node_id = %envelope.from, records = state.records.len(), "sync reply");
        self.stats.syncs_completed += 1;
        self.merge_remote(state.records, now);
        self.drain(now);
    }

    /// The driver could not complete a sync exchange with `peer`.
    pub fn sync_failed(&mut self, peer: SocketAddr) {
        self.stats.sync_failures += 1;
        debug!(%peer, "sync failed");
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

    // ----- internals ----------------------------------------------------------------------

    fn schedule(&mut self, at: Instant, timer: CoreTimer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// Whether a suspicion timer may turn a suspect into a death. Not when the suspect has
    /// talked to this node since the suspicion was raised: it is alive, and what failed was a
    /// blip (often on this node's side: a node cut off for a moment suspects everyone, and its
    /// suspicion updates are spent on the dead link, so nobody learns to refute them). The
    /// member stays suspect here (still up) and a later failed probe arms a new timer, so a
    /// real death is still detected. A small part of Lifeguard, which foca lacks.
    fn confirm_down(&self, timer: &foca::Timer<NodeIdentity>, now: Instant) -> bool {
        let foca::Timer::ChangeSuspectToDown { member_id, .. } = timer else {
            return true;
        };
        let raised = now
            .checked_sub(self.config.suspect_to_down())
            .unwrap_or(now);
        match self.last_heard.get(&*member_id.node_id) {
            Some(heard) if *heard > raised => {
                debug!(node_id = %member_id.node_id, "suspect was heard from since, not declaring it down");
                false
            }
            _ => true,
        }
    }

    fn announce(&mut self, node_id: &str, addr: SocketAddr) {
        // foca accepts an Announce addressed to any identity with the right node id, so the
        // incarnation we do not know yet does not matter.
        let dst = NodeIdentity {
            node_id: Arc::from(node_id),
            addr,
            incarnation: 0,
        };
        if let Err(e) = self.foca.announce(dst, &mut self.rt) {
            debug!(node_id, error = %e, "announce");
        }
    }

    /// Announces to every listed peer not seen alive (never met, restarted, partitioned).
    fn rejoin(&mut self) {
        let missing: Vec<(String, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(id, _)| !self.active.contains_key(*id))
            .map(|(id, addr)| (id.clone(), *addr))
            .collect();
        for (node_id, addr) in missing {
            trace!(node_id, "announcing to missing peer");
            self.announce(&node_id, addr);
        }
    }

    /// Declares a member down in this node's foca only (not gossiped).
    fn suppress(&mut self, identity: NodeIdentity) {
        let down = Member::new(identity.clone(), 0, State::Down);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), false, &mut self.rt)
        {
            debug!(error = %e, "suppressing member");
        }
        self.suppressed
            .insert(identity.node_id.to_string(), identity);
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

    fn on_notification(&mut self, n: OwnedNotification<NodeIdentity>, now: Instant) {
        match n {
            OwnedNotification::MemberUp(id) => {
                let node_id = id.node_id.to_string();
                if !self.peers.contains_key(&node_id) {
                    debug!(node_id, "member not in the node list, ignoring it");
                    self.suppress(id);
                    return;
                }
                info!(node_id, incarnation = id.incarnation, addr = %id.addr, "member up");
                self.active.insert(node_id.clone(), id.clone());
                self.push_membership_to(&id);
                self.replay_pending(&node_id, now);
            }
            OwnedNotification::MemberDown(id) => {
                let node_id = id.node_id.to_string();
                if self
                    .active
                    .get(&node_id)
                    .is_some_and(|cur| cur.incarnation <= id.incarnation)
                {
                    self.active.remove(&node_id);
                    self.pending.remove(&node_id);
                    info!(node_id, incarnation = id.incarnation, "member down");
                }
                let inc = id.incarnation;
                let events = self
                    .table
                    .remove_where(|r| r.owner == node_id && r.version.incarnation <= inc);
                self.emit(events);
            }
            OwnedNotification::Rename(old, new) => {
                let node_id = new.node_id.to_string();
                debug!(
                    node_id,
                    old = old.incarnation,
                    new = new.incarnation,
                    "member renamed"
                );
                let inc = new.incarnation;
                let events = self
                    .table
                    .remove_where(|r| r.owner == node_id && r.version.incarnation < inc);
                self.emit(events);
                if let Some(cur) = self.active.get_mut(&node_id) {
                    // Alive before and after (a fast restart): no MemberUp follows, so greet
                    // the new start here.
                    *cur = new.clone();
                    self.push_membership_to(&new);
                    self.replay_pending(&node_id, now);
                }
            }
            OwnedNotification::Rejoin(new) => {
                warn!(
                    incarnation = new.incarnation,
                    "declared down by the cluster, rejoined"
                );
                self.identity = new;
                self.republish(now);
            }
            OwnedNotification::Active => debug!("gossip connected"),
            OwnedNotification::Idle => debug!("gossip idle: no live member"),
            OwnedNotification::Defunct => warn!("gossip identity declared down and not renewed"),
        }
    }

    /// After a rejoin under a new incarnation every peer dropped this node's records: write
    /// them again under the new incarnation and push them.
    fn republish(&mut self, now: Instant) {
        let me = self.identity.node_id.to_string();
        let mut scopes: Vec<String> = vec![MEMBERSHIP_SCOPE.to_owned()];
        scopes.extend(self.scopes.iter().cloned());
        let now_records: Vec<Record> = scopes
            .iter()
            .flat_map(|s| {
                self.table
                    .owned(s, &me)
                    .filter(|r| !r.deleted)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        for mut r in now_records {
            self.counter += 1;
            r.version = Version {
                incarnation: self.identity.incarnation,
                counter: self.counter,
            };
            // The same value under a newer version: no event for local subscribers.
            let _ = self.table.merge(r, now);
        }
        let peers: Vec<NodeIdentity> = self.recipients(MEMBERSHIP_SCOPE);
        for peer in peers {
            self.push_membership_to(&peer);
            for scope in self.shared_scopes(&peer.node_id) {
                let records: Vec<Record> = self.table.owned(&scope, &me).cloned().collect();
                self.push_with_membership(&scope, std::slice::from_ref(&peer), records);
            }
        }
    }

    fn publish_membership(&mut self) {
        let mut view = Membership::new();
        view.insert(self.identity.node_id.to_string(), Liveness::Up);
        for node_id in self.peers.keys() {
            let l = if self.active.contains_key(node_id) {
                Liveness::Up
            } else {
                Liveness::Down
            };
            view.insert(node_id.clone(), l);
        }
        self.membership.send_if_modified(|cur| {
            if *cur == view {
                false
            } else {
                *cur = view;
                true
            }
        });
    }

    fn emit(&mut self, events: Vec<RecordEvent>) {
        for event in events {
            if event.scope == MEMBERSHIP_SCOPE {
                continue;
            }
            trace!(scope = %event.scope, key = %event.key, owner = %event.owner, kind = ?event.kind, "record event");
            self.subscribers.retain(|tx| tx.send(event.clone()).is_ok());
        }
    }

    fn seal(&mut self, body: Body) -> Option<Vec<u8>> {
        let envelope = Envelope {
            from: self.identity.node_id.clone(),
            body,
        };
        let plain = match postcard::to_stdvec(&envelope) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "encoding a gossip packet");
                return None;
            }
        };
        match self.keys.seal(&plain) {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                warn!(error = %e, "sealing a gossip packet");
                None
            }
        }
    }

    fn open(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> Option<Envelope> {
        let plain = match self.keys.open(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.auth_failures += 1;
                debug!(%from, len = data.len(), error = %e, "dropped gossip packet");
                return None;
            }
        };
        let envelope: Envelope = match postcard::from_bytes(&plain) {
            Ok(e) => e,
            Err(e) => {
                self.stats.malformed += 1;
                debug!(%from, error = %e, "undecodable gossip packet");
                return None;
            }
        };
        if *envelope.from == *self.identity.node_id || !self.peers.contains_key(&*envelope.from) {
            self.stats.ignored += 1;
            trace!(%from, node_id = %envelope.from, "packet from a node not in the list");
            return None;
        }
        self.last_heard.insert(envelope.from.to_string(), now);
        Some(envelope)
    }

    fn transmit(&mut self, to: SocketAddr, kind: TransmitKind, data: Vec<u8>) {
        self.stats.packets_out += 1;
        trace!(%to, ?kind, len = data.len(), "transmit");
        self.transmits.push_back(Transmit { to, kind, data });
    }

    fn send_swim(&mut self, to: &NodeIdentity, data: Vec<u8>) {
        if !self.peers.contains_key(&*to.node_id) {
            trace!(node_id = %to.node_id, "not sending to a node not in the list");
            return;
        }
        if let Some(sealed) = self.seal(Body::Swim(data)) {
            self.transmit(to.addr, TransmitKind::Swim, sealed);
        }
    }
}

fn encoded_len(record: &Record) -> usize {
    postcard::experimental::serialized_size(record).unwrap_or(usize::MAX / 2)
}

fn validate_scope(scope: &str) -> Result<(), GossipError> {
    let reason = if scope.is_empty() {
        "is empty"
    } else if scope.len() > MAX_NAME_LEN {
        "is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(GossipError::Scope {
        scope: scope.to_owned(),
        reason,
    })
}

fn validate_key(scope: &str, key: &str) -> Result<(), GossipError> {
    let reason = if key.is_empty() {
        "is empty"
    } else if key.len() > MAX_NAME_LEN {
        "is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(GossipError::Key {
        scope: scope.to_owned(),
        key: key.to_owned(),
        reason,
    })
}
