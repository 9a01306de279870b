//! What the sans-IO core and a driver exchange: the packets the core asks to deliver
//! ([`Transmit`], [`TransmitKind`]) and what it reports ([`Liveness`], [`Membership`],
//! [`Stats`]). Kept apart from the core so a driver depends on this vocabulary and on the
//! core's methods, and the core on neither the driver nor its transports.

use std::collections::BTreeMap;
use std::net::SocketAddr;

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
    /// Listed members seen alive, this node included (suspects too: they count as alive
    /// until declared down).
    pub members_alive: usize,
    /// Of `members_alive`, those suspected of being down.
    pub members_suspect: usize,
    /// Listed members not seen alive (declared down, or never heard from).
    pub members_down: usize,
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
    /// Records refused (owner not alive or not in the scope, stale start, out of bounds).
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
    /// frame and hand it to [`Core::handle_sync_reply`](crate::Core::handle_sync_reply).
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
