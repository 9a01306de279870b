//! The routing mesh's conformance suite on Linux: [`LinuxMesh`] and the overlay's
//! [`LinuxDataplane`] from a fresh daemon namespace (`mic<pid>x<n>-host`, see `host_support`),
//! the overlay's sandboxes under the prefix `mic<pid>x<n>-m-`. Everything is removed on drop,
//! also on panic. Needs root and `nft`.

mod host_support;

use host_support::{TestHost, UNDERLAY_IP};
use mesh_dataplane::ingress::LinuxMesh;
use mesh_dataplane::ingress::conformance::Harness;
use mesh_dataplane::overlay::{LinuxDataplane, Prefix};

fn linux_harness() -> Harness<LinuxMesh, LinuxDataplane> {
    let t = TestHost::new("mic");
    Harness {
        mesh: LinuxMesh::new(t.host.try_clone().expect("namespace handle")),
        overlay: LinuxDataplane::new(t.host),
        prefix: Prefix::new(format!("{}-m-", t.root)).expect("valid prefix"),
        underlay_ip: UNDERLAY_IP,
        guard: Box::new(t.cleanup),
    }
}

mesh_dataplane::ingress_conformance_tests!(linux_harness);
