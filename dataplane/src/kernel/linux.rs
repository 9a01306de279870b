//! The kernel of the machine: the Linux implementations of every part, from the daemon's
//! namespace.

use std::net::Ipv4Addr;

use crate::error::Result;
use crate::ingress::{LinuxMesh, RoutingMesh};
use crate::kernel::Kernel;
use crate::lb::{self, Backend, LoadBalancer};
use crate::netns::Netns;
use crate::overlay::{self, Dataplane, LinuxDataplane};

/// The Linux kernel, run from the daemon's namespace.
pub struct LinuxKernel {
    overlay: LinuxDataplane,
    mesh: LinuxMesh,
    lb: Box<dyn LoadBalancer + Send + Sync>,
    /// For forwarding namespaces when `lb` is IPVS (see [`Kernel::lb_for`]).
    forwarding_lb: lb::NftLb,
    backend: Backend,
}

impl LinuxKernel {
    /// A kernel whose daemon namespace is `host`, balancing with `backend`.
    pub fn new(host: Netns, backend: Backend) -> Result<LinuxKernel> {
        Ok(LinuxKernel {
            mesh: LinuxMesh::new(host.try_clone()?),
            overlay: LinuxDataplane::new(host),
            lb: backend.load_balancer(),
            forwarding_lb: lb::NftLb::new(),
            backend,
        })
    }

    /// A kernel in the calling thread's namespace. `backend`: the load-balancing backend, or
    /// `None` for the one this kernel has ([`lb::detect`]: IPVS if it can be loaded, else
    /// nftables).
    pub fn current(backend: Option<Backend>) -> Result<LinuxKernel> {
        LinuxKernel::new(Netns::current()?, backend.unwrap_or_else(lb::detect))
    }

    /// The load-balancing backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The daemon's namespace.
    pub fn host(&self) -> &Netns {
        self.overlay.host()
    }
}

impl std::fmt::Debug for LinuxKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxKernel")
            .field("host", &self.host().name())
            .field("backend", &self.backend)
            .finish()
    }
}

impl Kernel for LinuxKernel {
    fn overlay(&self) -> &dyn Dataplane {
        &self.overlay
    }

    fn overlay_mtu(&self, underlay_ip: Ipv4Addr, wanted: Option<u32>) -> Result<u32> {
        overlay::overlay_mtu(self.host(), underlay_ip, wanted)
    }

    fn lb(&self) -> &dyn LoadBalancer {
        self.lb.as_ref()
    }

    fn lb_for(&self, forwarding: bool) -> &dyn LoadBalancer {
        match (forwarding, self.backend) {
            (true, Backend::Ipvs) => &self.forwarding_lb,
            _ => self.lb.as_ref(),
        }
    }

    fn routing_mesh(&self) -> &dyn RoutingMesh {
        &self.mesh
    }

    fn netns_exists(&self, name: &str) -> bool {
        Netns::exists(name)
    }
}
