//! Membership and endpoint gossip: SWIM liveness (foca) and a scoped, replicated record table,
//! over sealed udp datagrams plus tcp anti-entropy on one port (7946 by default).
//!
//! # Layout
//! - [`core`]: the sans-IO state machine ([`Core`]): SWIM, records, anti-entropy. Fed packets
//!   and timeouts with the current instant, it returns packets to send and its next deadline.
//!   Split by responsibility: `swim` (node list, liveness), `scopes` (local record API),
//!   `packets` (what arrives and leaves, sealed), `spread` (pushes, merges, anti-entropy).
//! - [`io`]: what the core and a driver exchange: [`Transmit`] and [`TransmitKind`] (packets
//!   to deliver), [`Liveness`], [`Membership`] and [`Stats`] (what the core reports).
//! - [`driver`]: the tokio shell ([`Gossip`]): sockets, timers, tcp sync exchanges.
//! - [`identity`]: [`NodeIdentity`] (node id, address, incarnation) as a foca identity; [`Peer`].
//! - [`records`]: [`Record`], [`Version`], [`RecordEvent`] and the pure merge table.
//! - [`crypto`]: [`Keyring`], ChaCha20-Poly1305 sealing of every packet.
//! - [`wire`]: what a sealed packet carries, tcp framing.
//! - [`config`]: [`GossipConfig`], the timing knobs and their foca mapping.
//! - [`error`]: the error type, [`GossipError`].
//! - `tests`: the core over an in-memory network with paused tokio time (`sim`, and the
//!   `membership`, `records` and `crypto` cases on it), and the real driver over 127.0.0.1
//!   (`udp`).
//!
//! Used by the agent (`mesh-node`): its membership service and its worker.
//!
//! # Use
//! ```no_run
//! # async fn f() -> Result<(), mesh_gossip::GossipError> {
//! use mesh_gossip::{Gossip, GossipConfig, Keyring, Peer};
//! let keys = Keyring::new(vec![(1, [7u8; 32])])?;
//! let (gossip, task) = Gossip::start(
//!     GossipConfig::default(), "node-a", "10.0.0.1:7946".parse().unwrap(), None, keys).await?;
//! gossip.set_peers(vec![Peer { node_id: "node-b".into(), addr: "10.0.0.2:7946".parse().unwrap() }]);
//! gossip.join_scope("net1")?;
//! gossip.upsert_local("net1", "endpoint-1", b"ip, mac, vtep".to_vec())?;
//! let mut events = gossip.subscribe();
//! gossip.leave().await;
//! # let _ = (task, events.try_recv()); Ok(()) }
//! ```

pub mod config;
pub mod core;
pub mod crypto;
pub mod driver;
pub mod error;
pub mod identity;
pub mod io;
pub mod records;
pub mod wire;

#[cfg(test)]
mod tests;

pub use self::config::{DEFAULT_PORT, GossipConfig};
pub use self::core::Core;
pub use self::crypto::{Keyring, OpenError};
pub use self::driver::Gossip;
pub use self::error::GossipError;
pub use self::identity::{NodeIdentity, Peer};
pub use self::io::{Liveness, Membership, Stats, Transmit, TransmitKind};
pub use self::records::{Record, RecordEvent, RecordEventKind, Version};
