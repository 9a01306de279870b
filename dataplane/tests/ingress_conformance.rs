//! The routing mesh's conformance suite on Linux: [`LinuxMesh`] and the overlay's
//! [`LinuxDataplane`] from a fresh daemon namespace (`mic<pid>x<n>-host`, with an underlay
//! bridge), the overlay's sandboxes under the prefix `mic<pid>x<n>-m-`. Everything is removed on
//! drop, also on panic. Needs root and `nft`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_dataplane::ingress::LinuxMesh;
use mesh_dataplane::ingress::conformance::Harness;
use mesh_dataplane::netlink::in_netns;
use mesh_dataplane::netns::Netns;
use mesh_dataplane::overlay::{LinuxDataplane, Prefix};
use mesh_dataplane::types::IfName;

/// Removes every namespace whose name starts with the root, the daemon's last.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut names: Vec<String> = Netns::list()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.0)))
            .collect();
        names.sort_by_key(|n| n.ends_with("-host"));
        for name in names {
            let _ = Netns::remove(&name);
        }
    }
}

fn linux_harness() -> Harness<LinuxMesh, LinuxDataplane> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let root = format!(
        "mic{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let cleanup = Cleanup(root.clone());
    let host = Netns::ensure(&format!("{root}-host")).expect("host namespace");
    let ifname = |s: &str| IfName::new(s).expect("valid ifname");
    in_netns(&host, async |nl| {
        let ul0 = ifname("ul0");
        nl.set_up(&ifname("lo")).await?;
        nl.ensure_bridge(&ul0).await?;
        nl.ensure_address(&ul0, "10.250.0.1/24".parse()?).await?;
        nl.set_up(&ul0).await
    })
    .expect("underlay");
    Harness {
        mesh: LinuxMesh::new(host.try_clone().expect("namespace handle")),
        overlay: LinuxDataplane::new(host),
        prefix: Prefix::new(format!("{root}-m-")).expect("valid prefix"),
        underlay_ip: Ipv4Addr::new(10, 250, 0, 1),
        guard: Box::new(cleanup),
    }
}

mesh_dataplane::ingress_conformance_tests!(linux_harness);
