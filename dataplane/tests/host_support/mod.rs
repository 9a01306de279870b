//! A daemon's namespace for tests of the Linux kernel: `<tag><pid>x<n>-host`, with an underlay
//! bridge `ul0` at 10.250.0.1/24. Every namespace whose name starts with the root is removed on
//! drop (also on panic), the daemon's last.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_dataplane::netlink::in_netns;
use mesh_dataplane::netns::Netns;
use mesh_dataplane::types::IfName;

/// The daemon's address on the underlay.
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

/// Removes every namespace whose name starts with `<root>-`, the daemon's last.
pub struct Cleanup(pub String);

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

/// A fresh daemon namespace and the root of every name the test makes.
pub struct TestHost {
    pub root: String,
    pub host: Netns,
    pub cleanup: Cleanup,
}

pub fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid ifname")
}

impl TestHost {
    /// Names start with `tag` (letters, for the lab's leftover cleaner: `m<letters><pid>x<n>`).
    pub fn new(tag: &str) -> TestHost {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = format!(
            "{tag}{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let cleanup = Cleanup(root.clone());
        let host = Netns::ensure(&format!("{root}-host")).expect("host namespace");
        in_netns(&host, async |nl| {
            let ul0 = ifname("ul0");
            nl.set_up(&ifname("lo")).await?;
            nl.ensure_bridge(&ul0).await?;
            nl.ensure_address(&ul0, "10.250.0.1/24".parse()?).await?;
            nl.set_up(&ul0).await
        })
        .expect("underlay");
        TestHost {
            root,
            host,
            cleanup,
        }
    }
}
