//! Errors of the gossip plane: what a caller of [`super::Gossip`] or [`super::Core`] can get back.

use std::net::SocketAddr;

/// Why a gossip operation was refused or could not run.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// A timing or size knob of [`super::GossipConfig`] is out of range.
    #[error("invalid gossip config: {field} {reason}")]
    Config {
        /// The config field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The keyring is empty, has a duplicate key id, or a key ring cannot use.
    #[error("invalid gossip keyring: {reason}")]
    Keyring {
        /// What is wrong with it.
        reason: String,
    },
    /// A node id that is empty or too long to fit every packet.
    #[error("invalid node id {node_id:?}: {reason}")]
    NodeId {
        /// The node id given.
        node_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A scope name that cannot be used (empty, or too long).
    #[error("invalid scope {scope:?}: {reason}")]
    Scope {
        /// The scope given.
        scope: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record was written to a scope this node has not joined.
    #[error("scope {scope:?} not joined: call join_scope first")]
    NotInScope {
        /// The scope given.
        scope: String,
    },
    /// A record key that is empty or too long.
    #[error("invalid record key {key:?} in scope {scope:?}: {reason}")]
    Key {
        /// The scope of the record.
        scope: String,
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record does not fit one datagram.
    #[error(
        "record {key:?} in scope {scope:?} is {size} bytes encoded, more than the {max} a datagram can carry"
    )]
    RecordTooLarge {
        /// The scope of the record.
        scope: String,
        /// The key of the record.
        key: String,
        /// Its encoded size.
        size: usize,
        /// The largest record a push packet can carry.
        max: usize,
    },
    /// A record received from a peer breaks a bound every record keeps (names, value size,
    /// owner id). It is dropped; the rest of the packet is still merged.
    #[error("record {key:?} of {owner:?} in scope {scope:?} refused: {reason}")]
    InvalidRecord {
        /// The owner it names (cut to the longest valid node id).
        owner: String,
        /// Its scope (cut to the longest valid scope).
        scope: String,
        /// Its key (cut to the longest valid key).
        key: String,
        /// Which bound it breaks.
        reason: &'static str,
    },
    /// A node already holds as many records as a node may own; the new one is refused (an
    /// existing one may still be changed or deleted).
    #[error("node {owner:?} already owns {max} records, the most a node may")]
    TooManyRecords {
        /// The owner.
        owner: String,
        /// The bound.
        max: usize,
    },
    /// Binding or configuring a gossip socket failed.
    #[error("gossip socket {op} on {addr}")]
    Socket {
        /// What was being done (`bind udp`, `bind tcp`, ...).
        op: &'static str,
        /// The address involved.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sealing a packet failed (the system random source failed).
    #[error("sealing a gossip packet with key {key_id}")]
    Seal {
        /// The key used.
        key_id: u32,
    },
    /// Encoding a message failed.
    #[error("encoding gossip {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: postcard::Error,
    },
}
