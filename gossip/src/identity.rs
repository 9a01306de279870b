//! Who a node is on the gossip plane: its cluster node id, the address it gossips on, and which
//! start of it this is (the incarnation), as foca's [`foca::Identity`].
//!
//! foca keys members by [`foca::Identity::addr`]; ours is the node id, so a node that restarts
//! (same id, same or new address) is one member whose identity is replaced when the newer
//! incarnation wins the conflict. A node declared down while still running renews itself with
//! `incarnation + 1` and rejoins at once.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::GossipError;

/// Longest node id accepted, in bytes. Every packet carries the sender's id, so it is bounded to
/// keep the datagram budget fixed for every node of the cluster.
pub const MAX_NODE_ID_LEN: usize = 128;

/// The identity one start of a node gossips under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The cluster's node id (as the managers know it).
    pub node_id: Arc<str>,
    /// Where this node receives gossip (udp and tcp, same port).
    pub addr: SocketAddr,
    /// Which start of the node this is; a newer start must carry a larger number. Taken from the
    /// wall clock at start ([`NodeIdentity::fresh`]) and bumped by one on each rejoin.
    pub incarnation: u64,
}

impl NodeIdentity {
    /// An identity with an explicit incarnation (tests, or a caller keeping its own counter).
    pub fn new(node_id: &str, addr: SocketAddr, incarnation: u64) -> Result<Self, GossipError> {
        validate_node_id(node_id)?;
        Ok(Self {
            node_id: Arc::from(node_id),
            addr,
            incarnation,
        })
    }

    /// An identity for a new start of this node: the incarnation is the wall clock in
    /// milliseconds, so it beats any identity of an earlier start without storing anything.
    pub fn fresh(node_id: &str, addr: SocketAddr) -> Result<Self, GossipError> {
        // Wall clock on purpose: it must order starts of a process, which a monotonic clock
        // (reset at boot) cannot. A clock stepped back by more than the downtime only delays
        // the rejoin until the old identity is forgotten by foca.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self::new(node_id, addr, millis)
    }
}

pub(crate) fn validate_node_id(node_id: &str) -> Result<(), GossipError> {
    let reason = if node_id.is_empty() {
        "is empty"
    } else if node_id.len() > MAX_NODE_ID_LEN {
        "is longer than 128 bytes"
    } else {
        return Ok(());
    };
    Err(GossipError::NodeId {
        node_id: node_id.to_owned(),
        reason,
    })
}

impl foca::Identity for NodeIdentity {
    type Addr = Arc<str>;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            node_id: self.node_id.clone(),
            addr: self.addr,
            incarnation: self.incarnation.checked_add(1)?,
        })
    }

    fn addr(&self) -> Arc<str> {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newer start wins; the address only breaks a tie (two processes claiming one node id
        // in the same millisecond) so that every node picks the same winner.
        (self.incarnation, self.addr) > (adversary.incarnation, adversary.addr)
    }
}

/// A cluster node as the managers list it: what [`super::Gossip::set_peers`] takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The node id.
    pub node_id: String,
    /// Its gossip address.
    pub addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    #[test]
    fn gossip_identity_newer_incarnation_wins_and_renew_bumps() {
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let old = NodeIdentity::new("n1", addr, 10).unwrap();
        let new = old.renew().unwrap();
        assert_eq!(new.incarnation, 11);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        let moved = NodeIdentity::new("n1", "127.0.0.2:7946".parse().unwrap(), 10).unwrap();
        assert_ne!(moved.win_addr_conflict(&old), old.win_addr_conflict(&moved));
    }

    #[test]
    fn gossip_identity_rejects_bad_node_ids() {
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        assert!(NodeIdentity::new("", addr, 1).is_err());
        assert!(NodeIdentity::new(&"x".repeat(129), addr, 1).is_err());
    }
}
