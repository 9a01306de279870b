//! The paths other crates use for interface names, addresses and the netlink handle:
//! `mesh_dataplane::link::{IfName, Ipv4Cidr, Netlink, in_netns}`. The types live in
//! [`crate::types`], the handle in [`crate::netlink`].

pub use crate::netlink::{Netlink, in_netns};
pub use crate::types::{IfName, Ipv4Cidr};
