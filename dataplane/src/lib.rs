//! Kernel-facing side of mesh.
//!
//! # Layout
//! - [`netns`]: named network namespaces (iproute2-compatible) and running code inside them.
//! - [`link`]: links over rtnetlink: veth pairs across namespaces, bridges, addresses.
//! - [`rtnl`]: more rtnetlink helpers: VXLAN devices, FDB and neighbor entries, routes, MTU,
//!   moving links between namespaces, namespace dumps.
//! - [`nft`]: our nftables table (the egress masquerade rule), through the `nft` binary.
//! - [`overlay`]: the overlay data path: intent model, observed model, pure planner, Linux
//!   implementation, fake (feature `fake`) and the conformance suite both pass.
//! - [`lb`]: load balancing of service VIPs over task IPs inside a namespace: intent model,
//!   pure planner, nftables (`numgen` DNAT) and IPVS (generic netlink) backends.
//! - [`ingress`]: the routing mesh's kernel state: published ports (DNAT in our own table)
//!   and the reply routing that keeps client addresses.
//! - [`error`]: the crate's error type.

pub mod error;
pub mod ingress;
pub mod lb;
pub mod link;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod rtnl;

pub use error::{Error, Result};
