//! An in-memory kernel that applies [`Op`]s with the semantics the Linux implementation has,
//! for tests of the agent that should not need root (feature `fake`).
//!
//! It models what the overlay can observe: namespaces, links (kind, MTU, MAC, state,
//! controller, isolation, addresses, VXLAN configuration), veth pairs across namespaces (deleting
//! one end deletes the other; deleting a namespace deletes its links), FDB and neighbor entries
//! per device, the default route, `ip_forward` and our nftables tables. It refuses what the
//! kernel would refuse when the planner orders ops wrongly (a port enslaved to a missing bridge,
//! an entry on a missing VXLAN device, a veth into a missing namespace), so the conformance
//! suite catches ordering bugs on the fake too.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::link::{IfName, Ipv4Cidr};
use crate::nft::Masquerade;
use crate::overlay::Dataplane;
use crate::overlay::model::{
    BRIDGE_IFNAME, Mac, Scope, TASK_GATEWAY_IFNAME, VXLAN_IFNAME, vxlan_staging_name,
};
use crate::overlay::observed::{FdbEntry, LinkKind, LinkState, NsSnapshot, Observed, sort_addrs};
use crate::overlay::plan::{At, Op};

/// Where a fake link lives.
type Loc = At;

/// One fake namespace: what can be observed, plus the veth peers and the default route's
/// device (to delete the route with its device).
#[derive(Clone, Debug, Default)]
pub struct FakeNs {
    pub snapshot: NsSnapshot,
    peers: BTreeMap<IfName, (Loc, IfName)>,
    default_dev: Option<IfName>,
}

impl FakeNs {
    fn with_loopback() -> FakeNs {
        let mut ns = FakeNs::default();
        ns.snapshot.links.insert(
            IfName::new("lo").expect("valid"),
            LinkState::new(LinkKind::Other, 65536),
        );
        ns
    }
}

/// The whole fake kernel: the daemon's namespace, the named namespaces, our nftables tables.
#[derive(Clone, Debug)]
pub struct FakeKernel {
    pub host: FakeNs,
    pub named: BTreeMap<String, FakeNs>,
    pub tables: BTreeMap<String, Masquerade>,
    /// Every op applied, in order.
    pub applied: Vec<Op>,
    next_mac: u32,
}

impl Default for FakeKernel {
    fn default() -> FakeKernel {
        FakeKernel {
            host: FakeNs::with_loopback(),
            named: BTreeMap::new(),
            tables: BTreeMap::new(),
            applied: Vec::new(),
            next_mac: 0,
        }
    }
}

/// The fake dataplane: a [`FakeKernel`] behind a mutex, so it can be shared between tasks.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    kernel: Mutex<FakeKernel>,
}

impl FakeDataplane {
    pub fn new() -> FakeDataplane {
        FakeDataplane::default()
    }

    /// The kernel, to inspect or to change behind the dataplane's back (drift, crashes).
    pub fn kernel(&self) -> MutexGuard<'_, FakeKernel> {
        self.kernel.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Dataplane for FakeDataplane {
    fn observe(&self, scope: &Scope) -> Result<Observed> {
        let k = self.kernel();
        let named = k
            .named
            .iter()
            .filter(|(name, _)| scope.prefix.parse(name).is_some())
            .map(|(name, ns)| (name.clone(), ns.snapshot.clone()));
        Ok(Observed::from_snapshots(
            scope,
            &k.host.snapshot,
            k.tables.get(&scope.nft_table).cloned(),
            named,
        ))
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        let mut k = self.kernel();
        for op in ops {
            k.apply_one(op).map_err(|source| Error::Apply {
                op: op.to_string(),
                source: Box::new(source),
            })?;
            k.applied.push(op.clone());
        }
        Ok(())
    }
}

fn name(s: &str) -> IfName {
    IfName::new(s).expect("constant interface names are valid")
}

fn netns_missing(name: &str) -> Error {
    Error::Netns {
        op: "open",
        name: name.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }
}

impl FakeKernel {
    /// The names of the named namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.named.keys().cloned().collect()
    }

    fn ns(&self, at: &Loc) -> Option<&FakeNs> {
        match at {
            At::Host => Some(&self.host),
            At::Netns(n) => self.named.get(n),
        }
    }

    fn ns_mut(&mut self, at: &Loc) -> Result<&mut FakeNs> {
        match at {
            At::Host => Ok(&mut self.host),
            At::Netns(n) => self.named.get_mut(n).ok_or_else(|| netns_missing(n)),
        }
    }

    fn link_mut(&mut self, at: &Loc, ifname: &IfName) -> Result<&mut LinkState> {
        let ns = self.ns_mut(at)?;
        ns.snapshot
            .links
            .get_mut(ifname)
            .ok_or_else(|| Error::LinkNotFound {
                ifname: ifname.to_string(),
                netns: at.to_string(),
            })
    }

    fn has_link(&self, at: &Loc, ifname: &IfName) -> bool {
        self.ns(at)
            .is_some_and(|ns| ns.snapshot.links.contains_key(ifname))
    }

    fn new_mac(&mut self) -> Mac {
        self.next_mac += 1;
        let [_, b, c, d] = self.next_mac.to_be_bytes();
        Mac([0x0e, 0xfa, 0x4e, b, c, d])
    }

    fn add_link(&mut self, at: &Loc, ifname: &IfName, kind: LinkKind, mtu: u32) -> Result<()> {
        let mut link = LinkState::new(kind, mtu);
        link.mac = Some(self.new_mac());
        self.ns_mut(at)?.snapshot.links.insert(ifname.clone(), link);
        Ok(())
    }

    /// Deletes a link with what goes with it: its entries, routes, enslavements and veth peer.
    fn delete_link(&mut self, at: &Loc, ifname: &IfName) {
        let Ok(ns) = self.ns_mut(at) else { return };
        if ns.snapshot.links.remove(ifname).is_none() {
            return;
        }
        ns.snapshot.fdb.remove(ifname);
        ns.snapshot.neighbors.remove(ifname);
        if ns.default_dev.as_ref() == Some(ifname) {
            ns.default_dev = None;
            ns.snapshot.default_gateway = None;
        }
        for link in ns.snapshot.links.values_mut() {
            if link.controller.as_ref() == Some(ifname) {
                link.controller = None;
                link.isolated = false;
            }
        }
        if let Some((peer_at, peer)) = ns.peers.remove(ifname) {
            self.delete_link(&peer_at, &peer);
        }
    }

    fn ensure_netns(&mut self, name: &str) {
        self.named
            .entry(name.to_owned())
            .or_insert_with(FakeNs::with_loopback);
    }

    fn remove_netns(&mut self, name: &str) {
        let at = At::Netns(name.to_owned());
        let links: Vec<IfName> = self
            .ns(&at)
            .map(|ns| ns.snapshot.links.keys().cloned().collect())
            .unwrap_or_default();
        for link in links {
            self.delete_link(&at, &link);
        }
        self.named.remove(name);
    }

    /// A veth pair unless a link of either name exists (the kernel's EEXIST, taken as success).
    fn ensure_veth_pair(&mut self, a_at: &Loc, a: &IfName, b_at: &Loc, b: &IfName) -> Result<()> {
        for (at, _) in [(a_at, a), (b_at, b)] {
            if self.ns(at).is_none() {
                return Err(netns_missing(&at.to_string()));
            }
        }
        if self.has_link(a_at, a) || self.has_link(b_at, b) {
            return Ok(());
        }
        self.add_link(a_at, a, LinkKind::Veth, 1500)?;
        self.add_link(b_at, b, LinkKind::Veth, 1500)?;
        self.ns_mut(a_at)?
            .peers
            .insert(a.clone(), (b_at.clone(), b.clone()));
        self.ns_mut(b_at)?
            .peers
            .insert(b.clone(), (a_at.clone(), a.clone()));
        Ok(())
    }

    fn enslave(&mut self, at: &Loc, port: &IfName, bridge: &IfName) -> Result<()> {
        let is_bridge = self
            .ns(at)
            .and_then(|ns| ns.snapshot.links.get(bridge))
            .map(|l| l.kind == LinkKind::Bridge);
        match is_bridge {
            Some(true) => {}
            _ => {
                return Err(Error::LinkNotFound {
                    ifname: bridge.to_string(),
                    netns: at.to_string(),
                });
            }
        }
        self.link_mut(at, port)?.controller = Some(bridge.clone());
        Ok(())
    }

    fn set_only_address(&mut self, at: &Loc, ifname: &IfName, addr: Ipv4Cidr) -> Result<()> {
        self.link_mut(at, ifname)?.addrs = vec![addr];
        Ok(())
    }

    /// Bridge `ifname` (created if absent) with this MTU, exactly this address, up.
    fn ensure_bridge(&mut self, at: &Loc, ifname: &IfName, mtu: u32, addr: Ipv4Cidr) -> Result<()> {
        if !self.has_link(at, ifname) {
            self.add_link(at, ifname, LinkKind::Bridge, 1500)?;
        }
        self.set_only_address(at, ifname, addr)?;
        let link = self.link_mut(at, ifname)?;
        link.mtu = mtu;
        link.up = true;
        Ok(())
    }

    fn configure_task_end(
        &mut self,
        at: &Loc,
        ifname: &IfName,
        mac: Mac,
        mtu: u32,
        addr: Ipv4Cidr,
    ) -> Result<()> {
        let link = self.link_mut(at, ifname)?;
        link.mac = Some(mac);
        link.mtu = mtu;
        link.addrs = vec![addr];
        sort_addrs(&mut link.addrs);
        link.up = true;
        Ok(())
    }

    /// The VXLAN device of a sandbox, for entry ops.
    fn vxlan_ns(&mut self, netns: &str) -> Result<&mut FakeNs> {
        let at = At::Netns(netns.to_owned());
        self.link_mut(&at, &name(VXLAN_IFNAME))?;
        self.ns_mut(&at)
    }

    fn apply_one(&mut self, op: &Op) -> Result<()> {
        let vxlan0 = name(VXLAN_IFNAME);
        let br0 = name(BRIDGE_IFNAME);
        match op {
            Op::RemoveSandbox { netns } => self.remove_netns(netns),
            Op::RemoveLink { at, ifname } => self.delete_link(at, ifname),
            Op::RemoveDefaultRoute { netns } => {
                if let Some(ns) = self.named.get_mut(netns) {
                    ns.snapshot.default_gateway = None;
                    ns.default_dev = None;
                }
            }
            Op::RemoveFdb { netns, mac, vtep } => {
                if let Some(ns) = self.named.get_mut(netns) {
                    let entries = &mut ns.snapshot.fdb;
                    if let Some(set) = entries.get_mut(&vxlan0) {
                        set.remove(&FdbEntry {
                            mac: *mac,
                            vtep: *vtep,
                        });
                    }
                    entries.retain(|_, set| !set.is_empty());
                }
            }
            Op::RemoveNeighbor { netns, ip } => {
                if let Some(ns) = self.named.get_mut(netns) {
                    let entries = &mut ns.snapshot.neighbors;
                    if let Some(map) = entries.get_mut(&vxlan0) {
                        map.remove(ip);
                    }
                    entries.retain(|_, map| !map.is_empty());
                }
            }
            Op::RemoveMasquerade { table } => {
                self.tables.remove(table);
            }
            Op::EnsureGatewayBridge {
                bridge,
                address,
                mtu,
            } => {
                self.ensure_bridge(&At::Host, bridge, *mtu, *address)?;
                self.host.snapshot.ip_forward = true;
            }
            Op::EnsureMasquerade(rule) => {
                self.tables.insert(rule.table.clone(), rule.clone());
            }
            Op::CreateNetworkSandbox {
                netns,
                gateway,
                mtu,
            } => {
                self.ensure_netns(netns);
                self.ensure_bridge(&At::Netns(netns.clone()), &br0, *mtu, *gateway)?;
            }
            Op::CreateVxlan { netns, vxlan } => {
                let at = At::Netns(netns.clone());
                if self.ns(&at).is_none() {
                    return Err(netns_missing(netns));
                }
                if !self.has_link(&at, &vxlan0) {
                    let staging = vxlan_staging_name(vxlan.vni);
                    self.delete_link(&At::Host, &staging);
                    let mut link = LinkState::new(LinkKind::Vxlan, vxlan.mtu);
                    link.mac = Some(self.new_mac());
                    link.vxlan = Some(vxlan.config());
                    // Created in the daemon's namespace and moved: the end state is the same.
                    self.ns_mut(&at)?
                        .snapshot
                        .links
                        .insert(vxlan0.clone(), link);
                }
                self.link_mut(&at, &vxlan0)?.mtu = vxlan.mtu;
                self.enslave(&at, &vxlan0, &br0)?;
                self.link_mut(&at, &vxlan0)?.up = true;
            }
            Op::AddNeighbor { netns, ip, mac } => {
                self.vxlan_ns(netns)?
                    .snapshot
                    .neighbors
                    .entry(vxlan0)
                    .or_default()
                    .insert(*ip, *mac);
            }
            Op::AddFdb { netns, mac, vtep } => {
                let entries = self
                    .vxlan_ns(netns)?
                    .snapshot
                    .fdb
                    .entry(vxlan0)
                    .or_default();
                entries.retain(|e| e.mac != *mac);
                entries.insert(FdbEntry {
                    mac: *mac,
                    vtep: *vtep,
                });
            }
            Op::CreateTaskSandbox { netns } => {
                self.ensure_netns(netns);
                self.link_mut(&At::Netns(netns.clone()), &name("lo"))?.up = true;
            }
            Op::AttachEndpoint {
                task_netns,
                ifname,
                addr,
                mac,
                mtu,
                network_netns,
                port,
            } => {
                let task = At::Netns(task_netns.clone());
                let network = At::Netns(network_netns.clone());
                self.ensure_veth_pair(&task, ifname, &network, port)?;
                self.configure_task_end(&task, ifname, *mac, *mtu, *addr)?;
                self.link_mut(&network, port)?.mtu = *mtu;
                self.enslave(&network, port, &br0)?;
                self.link_mut(&network, port)?.up = true;
            }
            Op::AttachGateway {
                task_netns,
                addr,
                mac,
                mtu,
                port,
                bridge,
                gateway,
            } => {
                let task = At::Netns(task_netns.clone());
                let gw0 = name(TASK_GATEWAY_IFNAME);
                self.ensure_veth_pair(&task, &gw0, &At::Host, port)?;
                self.configure_task_end(&task, &gw0, *mac, *mtu, *addr)?;
                let ns = self.ns_mut(&task)?;
                ns.snapshot.default_gateway = Some(*gateway);
                ns.default_dev = Some(gw0);
                self.link_mut(&At::Host, port)?.mtu = *mtu;
                self.enslave(&At::Host, port, bridge)?;
                let link = self.link_mut(&At::Host, port)?;
                link.isolated = true;
                link.up = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::conformance::Harness;
    use crate::overlay::model::Prefix;

    fn fake_harness() -> Harness<FakeDataplane> {
        Harness {
            dp: FakeDataplane::new(),
            prefix: Prefix::new("mesh-fake-").expect("valid"),
            foreign: "mesh-other-".into(),
            underlay_ip: std::net::Ipv4Addr::new(10, 250, 0, 1),
            guard: Box::new(()),
        }
    }

    crate::overlay_conformance_tests!(fake_harness);

    #[test]
    fn misordered_ops_are_refused_like_the_kernel_does() {
        let dp = FakeDataplane::new();
        let err = dp
            .apply(&[Op::AddFdb {
                netns: "mesh-fake-n1".into(),
                mac: Mac([2, 0, 0, 0, 0, 1]),
                vtep: std::net::Ipv4Addr::new(10, 0, 0, 1),
            }])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "apply add fdb 02:00:00:00:00:01 dst 10.0.0.1 in mesh-fake-n1"
        );
        dp.apply(&[Op::CreateTaskSandbox {
            netns: "mesh-fake-tx".into(),
        }])
        .unwrap();
        let err = dp
            .apply(&[Op::AttachEndpoint {
                task_netns: "mesh-fake-tx".into(),
                ifname: name("eth0"),
                addr: "10.0.0.2/24".parse().unwrap(),
                mac: Mac([2, 0, 0, 0, 0, 2]),
                mtu: 1400,
                network_netns: "mesh-fake-n1".into(),
                port: name("vnx"),
            }])
            .unwrap_err();
        assert!(matches!(err, Error::Apply { .. }), "{err}");
        // Deleting one end of a veth deletes the other.
        let k = dp.kernel();
        assert_eq!(k.namespaces(), vec!["mesh-fake-tx".to_owned()]);
    }
}
