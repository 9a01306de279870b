//! Kernel-facing side of mesh.
//!
//! # Layout
//! - [`types`]: kernel value types checked once: interface names, IPv4 interface addresses,
//!   MACs.
//! - [`netns`]: named network namespaces (iproute2-compatible), running code inside them, and
//!   [`At`](netns::At), where something lives.
//! - [`netlink`]: the rtnetlink handle, its operations grouped by kernel object, and sessions
//!   of handles across namespaces.
//! - [`link`]: the paths other crates use for [`IfName`](types::IfName),
//!   [`Ipv4Cidr`](types::Ipv4Cidr) and the netlink handle.
//! - [`sysctl`]: reading and writing `/proc/sys` files of a namespace.
//! - [`nft`]: our nftables tables through the `nft` binary: the egress masquerade rule, the DNS
//!   redirect, and the helpers every table of ours uses.
//! - [`overlay`]: the overlay data path: intent model, observed model, pure planner, Linux
//!   implementation, fake (feature `fake`) and the conformance suite both pass.
//! - [`lb`]: load balancing of service VIPs over task IPs inside a namespace (by name): intent
//!   model, pure planner, nftables (`numgen` DNAT) and IPVS (generic netlink) backends, a fake
//!   and the conformance suite they pass.
//! - [`ingress`]: the routing mesh's kernel state: published ports (DNAT in our own table),
//!   the ingress sandbox as a router, and the reply routing that keeps client addresses;
//!   intent model, observed model, pure planner, Linux implementation, fake and conformance
//!   suite, as the overlay.
//! - [`kernel`]: [`Kernel`], everything one node's agent does to its kernel in one trait, with
//!   [`LinuxKernel`](kernel::LinuxKernel) and `FakeKernel` (feature `fake`).
//! - `fake` (feature `fake`): the in-memory kernel the fakes share.
//! - [`error`]: the crate's error type.

pub mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod ingress;
pub mod kernel;
pub mod lb;
pub mod link;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod sysctl;
pub mod types;

pub use error::{Error, Result};
pub use kernel::Kernel;
