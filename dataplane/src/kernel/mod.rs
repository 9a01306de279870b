//! One node's kernel as its agent uses it: the overlay, the load balancer of each namespace,
//! the routing mesh, and whether a namespace exists. The agent is handed a [`Kernel`], so it
//! runs on Linux ([`LinuxKernel`]) and, in tests, in memory (`FakeKernel`,
//! feature `fake`).
//!
//! [`Kernel`] is object-safe: hold a `Box<dyn Kernel + Send + Sync>`, or be generic over
//! `K: Kernel + Send + 'static`; both implementations are `Send + Sync`. Its parts are the
//! subsystems' own traits, so [`overlay::reconcile`](crate::overlay::reconcile),
//! [`ensure_remote`](crate::overlay::ensure_remote), [`lb::reconcile`](crate::lb::reconcile)
//! and [`ingress::Applied`](crate::ingress::Applied) take `kernel.overlay()`, `kernel.lb()` and
//! `kernel.routing_mesh()` as they are.
//!
//! # Layout
//! - this module: the [`Kernel`] trait.
//! - [`linux`]: [`LinuxKernel`], from the daemon's namespace, with the load-balancing backend
//!   chosen as [`lb::detect`](crate::lb::detect) and [`Backend`](crate::lb::Backend) do.
//! - `fake` (feature `fake`): `FakeKernel`, the three fakes on one shared
//!   in-memory kernel, with accessors to inspect it.

pub mod linux;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

use std::net::Ipv4Addr;

use crate::error::Result;
use crate::ingress::RoutingMesh;
use crate::lb::LoadBalancer;
use crate::overlay::Dataplane;

pub use linux::LinuxKernel;

/// What one node's agent does to its kernel.
pub trait Kernel {
    /// The overlay data path: sandboxes, links, FDB and neighbor entries, the gateway bridge.
    fn overlay(&self) -> &dyn Dataplane;

    /// The overlay MTU: `wanted` if given, else the MTU of the interface of the daemon's
    /// namespace that holds `underlay_ip`, minus the VXLAN overhead.
    fn overlay_mtu(&self, underlay_ip: Ipv4Addr, wanted: Option<u32>) -> Result<u32>;

    /// The load balancer of every namespace, addressed by namespace name.
    fn lb(&self) -> &dyn LoadBalancer;

    /// The load balancer of a namespace that balances traffic it forwards (`forwarding`: the
    /// routing mesh's ingress sandbox) or only its own connections (a task). IPVS serves
    /// forwarded packets only for addresses local to the namespace, so a kernel balancing
    /// with IPVS gives forwarding namespaces nftables' DNAT, which serves both.
    fn lb_for(&self, forwarding: bool) -> &dyn LoadBalancer {
        let _ = forwarding;
        self.lb()
    }

    /// The routing mesh: published ports, the ingress sandbox, reply routing.
    fn routing_mesh(&self) -> &dyn RoutingMesh;

    /// Whether the named namespace `name` exists.
    fn netns_exists(&self, name: &str) -> bool;
}
