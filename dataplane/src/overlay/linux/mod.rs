//! The Linux dataplane: observes and applies over rtnetlink, and `nft` for the masquerade rule.
//!
//! # Threads and sockets
//! Each [`Dataplane::observe`] or [`Dataplane::apply`] call runs on one fresh OS thread that
//! enters the daemon's namespace (see [`crate::netns`]) and keeps a netlink
//! [`Session`] there: one socket per namespace it needs serves the
//! whole batch, and nothing ever runs in another namespace on a thread that outlives the call.
//!
//! # Layout
//! - this module: [`LinuxDataplane`] and [`overlay_mtu`].
//! - [`observe`]: reading one namespace into an [`NsSnapshot`].
//! - [`apply`]: applying one [`Op`].

pub mod apply;
pub mod observe;

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::netlink::{Netlink, Session};
use crate::netns::Netns;
use crate::nft;
use crate::overlay::Dataplane;
use crate::overlay::model::{Scope, VXLAN_OVERHEAD};
use crate::overlay::observed::{NsSnapshot, Observed};
use crate::overlay::op::Op;
use crate::sysctl;

/// The overlay on the real kernel, run from the daemon's (underlay) namespace.
#[derive(Debug)]
pub struct LinuxDataplane {
    host: Netns,
}

impl LinuxDataplane {
    /// A dataplane whose daemon namespace is `host`: VXLAN sockets, the gateway bridge and the
    /// masquerade rule live there.
    pub fn new(host: Netns) -> LinuxDataplane {
        LinuxDataplane { host }
    }

    /// A dataplane in the calling thread's namespace.
    pub fn current() -> Result<LinuxDataplane> {
        Ok(LinuxDataplane::new(Netns::current()?))
    }

    /// The daemon's namespace.
    pub fn host(&self) -> &Netns {
        &self.host
    }
}

impl Dataplane for LinuxDataplane {
    fn observe(&self, scope: &Scope) -> Result<Observed> {
        let names: Vec<String> = Netns::list()?
            .into_iter()
            .filter(|n| scope.prefix.parse(n).is_some())
            .collect();
        let masquerade = nft::observe_masquerade(&self.host, &scope.nft_table)?;
        self.host.run_async(async || {
            let mut session = Session::open(&self.host)?;
            let mut host = observe::snapshot(session.home(), false).await?;
            host.ip_forward = sysctl::read(sysctl::IP_FORWARD)?.as_deref() == Some("1");
            let mut named = Vec::new();
            for name in names {
                match session.open_named(&name) {
                    Ok(()) => {}
                    // Gone since the listing.
                    Err(Error::Netns { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        continue;
                    }
                    // A name left by a crash before its namespace was mounted: empty.
                    Err(Error::Netns { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        named.push((name, NsSnapshot::default()));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                let snap = observe::snapshot(session.opened(&name).1, true).await?;
                named.push((name, snap));
            }
            Ok(Observed::from_snapshots(scope, &host, masquerade, named))
        })?
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.host.run_async(async || {
            let mut session = Session::open(&self.host)?;
            for op in ops {
                apply::apply_one(&mut session, op)
                    .await
                    .map_err(|source| Error::Apply {
                        op: op.to_string(),
                        source: Box::new(source),
                    })?;
                tracing::debug!(%op, "applied");
            }
            Ok(())
        })?
    }
}

/// The overlay MTU: `mtu` if given, else the MTU of the interface of `host` that holds
/// `underlay_ip`, minus [`VXLAN_OVERHEAD`].
pub fn overlay_mtu(host: &Netns, underlay_ip: Ipv4Addr, mtu: Option<u32>) -> Result<u32> {
    if let Some(mtu) = mtu {
        return Ok(mtu);
    }
    let found = host.run_async(async || {
        Netlink::connect(host.name())?
            .mtu_of_address(underlay_ip)
            .await
    })??;
    match found {
        Some(mtu) => Ok(mtu.saturating_sub(VXLAN_OVERHEAD)),
        None => Err(Error::NoInterfaceWithAddress {
            addr: underlay_ip,
            netns: host.name().to_owned(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Need root. Every harness lives in namespaces named `mdo<pid>x<n>-...`, removed on drop
    //! (also on panic): the daemon's namespace is `...-host`, ours are `...-m-*`, foreign ones
    //! `...-f-*`.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::netlink::in_netns;
    use crate::overlay::conformance::Harness;
    use crate::overlay::ids::{Prefix, Vni};
    use crate::types::{IfName, Mac};

    fn ifname(name: &str) -> IfName {
        IfName::new(name).expect("valid interface name")
    }

    /// Removes every namespace whose name starts with the root, the daemon's last.
    pub(crate) struct Cleanup(pub String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let mut names: Vec<String> = Netns::list()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.starts_with(&self.0))
                .collect();
            names.sort_by_key(|n| n.ends_with("-host"));
            for name in names {
                let _ = Netns::remove(&name);
            }
        }
    }

    pub(crate) fn unique_root() -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "mdo{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn linux_harness() -> Harness<LinuxDataplane> {
        let root = unique_root();
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
        Harness {
            dp: LinuxDataplane::new(host),
            prefix: Prefix::new(format!("{root}-m-")).expect("valid prefix"),
            foreign: format!("{root}-f-"),
            underlay_ip: Ipv4Addr::new(10, 250, 0, 1),
            guard: Box::new(cleanup),
        }
    }

    crate::overlay_conformance_tests!(linux_harness);

    #[test]
    fn overlay_mtu_follows_the_underlay_interface() {
        let h = linux_harness();
        let host = h.dp.host();
        assert_eq!(overlay_mtu(host, h.underlay_ip, None).unwrap(), 1450);
        in_netns(host, async |nl| {
            nl.set_mtu(&ifname("ul0"), 9000).await?;
            nl.is_up(&ifname("ul0")).await
        })
        .unwrap();
        assert_eq!(overlay_mtu(host, h.underlay_ip, None).unwrap(), 8950);
        assert_eq!(overlay_mtu(host, h.underlay_ip, Some(1380)).unwrap(), 1380);
        let err = overlay_mtu(host, Ipv4Addr::new(10, 9, 9, 9), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no interface holds address 10.9.9.9 in {}", host.name())
        );
    }

    #[test]
    fn a_foreign_link_with_the_staging_name_is_left_alone() {
        let h = linux_harness();
        let staging = ifname("mvx4100");
        in_netns(h.dp.host(), async |nl| {
            nl.ensure_bridge(&staging).await.map(drop)
        })
        .unwrap();
        let netns = h.prefix.network_netns(Vni::new(4100).unwrap());
        let err =
            h.dp.apply(&[
                Op::CreateNetworkSandbox {
                    netns: netns.clone(),
                    gateway: "10.41.0.1/24".parse().unwrap(),
                    mtu: 1400,
                },
                Op::CreateVxlan {
                    netns,
                    vxlan: crate::overlay::VxlanSpec {
                        vni: Vni::new(4100).unwrap(),
                        port: 4789,
                        local: h.underlay_ip,
                        mtu: 1400,
                    },
                },
            ])
            .unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(
            cause,
            format!(
                "link mvx4100 in {} exists and is not a vxlan device staged by mesh",
                h.dp.host().name()
            )
        );
        let still = in_netns(h.dp.host(), async |nl| nl.link_index(&staging).await).unwrap();
        assert!(still.is_some());
    }

    #[test]
    fn apply_errors_name_the_op_and_the_cause() {
        let h = linux_harness();
        let netns = h.prefix.network_netns(Vni::new(7).unwrap());
        let err =
            h.dp.apply(&[Op::AddFdb {
                netns: netns.clone(),
                mac: Mac([2, 0, 0, 0, 0, 1]),
                vtep: Ipv4Addr::new(10, 0, 0, 1),
            }])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("apply add fdb 02:00:00:00:00:01 dst 10.0.0.1 in {netns}")
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains(&netns), "{cause}");
    }
}
