//! What the stored objects say, read the same way everywhere: names, nodes' roles and
//! control addresses, the networks a service is attached to.

use mesh_proto::{Network, NetworkAttachmentConfig, Node, NodeRole, Service};

use crate::store::StoreState;

/// The role the operator wants the node to have (promote/demote set it).
pub fn desired_role(n: &Node) -> NodeRole {
    n.spec
        .as_ref()
        .map(|s| s.desired_role())
        .unwrap_or(n.role())
}

/// The node's control address, `ip:port`.
pub fn control_addr(n: &Node) -> String {
    format!("{}:{}", n.addr, n.control_port)
}

/// Control addresses of the managers, from the store.
pub fn manager_addrs(s: &StoreState) -> Vec<String> {
    s.nodes
        .values()
        .filter(|n| n.role() == NodeRole::Manager)
        .map(control_addr)
        .collect()
}

/// A service's name.
pub fn service_name(v: &Service) -> &str {
    v.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

/// A network's name.
pub fn network_name(n: &Network) -> &str {
    n.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

/// The networks a service is attached to, by id: what the control API resolved from the
/// spec's references. A service stored before resolutions were kept beside the spec has its
/// spec's targets, which were ids then.
pub fn service_networks(v: &Service) -> &[NetworkAttachmentConfig] {
    if !v.networks.is_empty() {
        return &v.networks;
    }
    v.spec
        .as_ref()
        .map(|s| s.networks.as_slice())
        .unwrap_or_default()
}

/// A node's availability as the scheduler and orchestrators read it: active when unset.
pub fn availability(n: &mesh_proto::Node) -> mesh_proto::NodeAvailability {
    n.spec
        .as_ref()
        .map_or(mesh_proto::NodeAvailability::Active, |s| s.availability())
}
