//! What a node knows of the others' liveness: its SWIM view.

use mesh_proto::NodeStatus;

/// Liveness of nodes as one node's gossip sees them.
pub trait Liveness: Send + Sync + 'static {
    fn status(&self, node_id: &str) -> NodeStatus;
}
