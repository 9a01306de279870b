//! Every allocation of the cluster, as functions of the store state: subnets (from the
//! cluster's default pools when none is asked for), gateways and VNIs of networks (the
//! ingress network at bootstrap included), task and node addresses, service VIPs and
//! published ports. The allocator component ([`Allocator`]) gives new tasks their addresses
//! and nodes their ingress-sandbox address; the control API allocates a network's addressing
//! and a service's VIPs and ports in the transaction that stores them, so a request that
//! cannot be satisfied is refused with one line.
//!
//! Nothing is kept beside the store: what is in use is read from the objects themselves
//! (networks' subnets and VNIs, tasks' attachments, services' VIPs and ports, nodes' ingress
//! attachments), so an allocation made by one leader is seen by the next, and two allocations
//! can never hand out the same thing (the transaction that stores them is conditional on the
//! versions they were computed from).
//!
//! # Layout
//! - [`network`]: subnets, gateways and VNIs of a new network.
//! - [`address`]: addresses on a network (tasks, VIPs, ingress sandboxes) and their MACs.
//! - [`service`]: a service's VIPs and published ports.
//! - [`tasks`]: the [`Allocator`] component.

pub mod address;
pub mod network;
pub mod service;
pub mod tasks;

pub use address::{
    Addresses, addresses_in_use, allocate_address, ingress_network, mac_for, publishes_ingress,
};
pub use network::{
    FIRST_VNI, MAX_VNI, NetworkAlloc, allocate_network, allocate_network_as, parse_subnet,
    reserved_subnets, unusable_subnets,
};
pub use service::{DYNAMIC_PORTS, allocate_ports, allocate_vips, reserved_ports};
pub use tasks::Allocator;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// An input is malformed or inconsistent; the message names the flag.
    #[error("{0}")]
    Invalid(String),
    /// A pool is used up.
    #[error("{0}")]
    Exhausted(String),
    /// What is asked for is held by another object.
    #[error("{0}")]
    Conflict(String),
    /// An object the allocation needs does not exist.
    #[error("{0}")]
    NotFound(String),
}

pub(crate) fn invalid(msg: impl Into<String>) -> AllocError {
    AllocError::Invalid(msg.into())
}

/// A network named `name` with `subnet` and `vni`, for tests.
#[cfg(test)]
pub(crate) fn test_network(name: &str, subnet: &str, vni: u32) -> mesh_proto::Network {
    mesh_proto::Network {
        id: format!("id-{name}"),
        spec: Some(mesh_proto::NetworkSpec {
            name: name.into(),
            ..Default::default()
        }),
        subnet: subnet.into(),
        gateway: network::first_host(&subnet.parse().expect("a CIDR")).to_string(),
        vni,
        ..Default::default()
    }
}

impl From<AllocError> for crate::error::ControlError {
    fn from(e: AllocError) -> crate::error::ControlError {
        match e {
            AllocError::Invalid(m) => crate::error::ControlError::InvalidArgument(m),
            AllocError::NotFound(m) if m.starts_with("network ") => {
                crate::error::ControlError::NotFound(m)
            }
            AllocError::Exhausted(m) | AllocError::Conflict(m) | AllocError::NotFound(m) => {
                crate::error::ControlError::FailedPrecondition(m)
            }
        }
    }
}
