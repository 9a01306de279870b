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
//!
//! Its state lives in a [`FakeNet`] it may share with the other fakes: each namespace's links
//! are that namespace's [`FakeNs`] part.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::fake::{FakeNet, World, netns_missing};
use crate::netns::At;
use crate::nft::Masquerade;
use crate::overlay::Dataplane;
use crate::overlay::ids::vxlan_staging_name;
use crate::overlay::model::{
    BRIDGE_IFNAME, Scope, TASK_GATEWAY_IFNAME, VXLAN_IFNAME, VXLAN_OVERHEAD,
};
use crate::overlay::observed::{FdbEntry, LinkKind, LinkState, NsSnapshot, Observed, sort_addrs};
use crate::overlay::op::Op;
use crate::types::{IfName, Ipv4Cidr, Mac};

/// What the overlay fake keeps in one namespace: what can be observed, plus the veth peers,
/// the default route's device (to delete the route with its device), a serial number per
/// link (a link made again is another link) and our nftables tables.
#[derive(Clone, Debug)]
pub struct FakeNs {
    pub snapshot: NsSnapshot,
    peers: BTreeMap<IfName, (At, IfName)>,
    default_dev: Option<IfName>,
    serials: BTreeMap<IfName, u64>,
    tables: BTreeMap<String, Masquerade>,
}

impl Default for FakeNs {
    /// A fresh namespace: only `lo`, down.
    fn default() -> FakeNs {
        let mut snapshot = NsSnapshot::default();
        snapshot
            .links
            .insert(name("lo"), LinkState::new(LinkKind::Other, 65536));
        FakeNs {
            snapshot,
            peers: BTreeMap::new(),
            default_dev: None,
            serials: BTreeMap::new(),
            tables: BTreeMap::new(),
        }
    }
}

impl FakeNs {
    /// The link `name`, if it exists.
    pub fn link(&self, name: &IfName) -> Option<&LinkState> {
        self.snapshot.links.get(name)
    }

    /// The serial number of the link `name`: equal for as long as that very link exists.
    pub fn link_serial(&self, name: &IfName) -> Option<u64> {
        self.link(name)?;
        Some(self.serials.get(name).copied().unwrap_or(0))
    }
}

/// World-wide state of the overlay fake.
#[derive(Debug, Default)]
struct OverlayLog {
    /// Every op applied, in order.
    applied: Vec<Op>,
    /// Links made so far: the next serial number, and the source of fresh MACs.
    links: u64,
}

/// The fake dataplane: the overlay's view of a [`FakeNet`].
#[derive(Clone, Debug, Default)]
pub struct FakeDataplane {
    net: FakeNet,
}

impl FakeDataplane {
    /// A dataplane on a kernel of its own.
    pub fn new() -> FakeDataplane {
        FakeDataplane::default()
    }

    /// A dataplane on the shared kernel `net`.
    pub fn on(net: FakeNet) -> FakeDataplane {
        FakeDataplane { net }
    }

    /// The kernel, to inspect or to change behind the dataplane's back (drift, crashes).
    pub fn net(&self) -> &FakeNet {
        &self.net
    }

    /// The names of the named namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.net.lock().names()
    }

    /// What the overlay sees of the namespace `at`, if it exists.
    pub fn snapshot(&self, at: &At) -> Option<NsSnapshot> {
        let mut w = self.net.lock();
        Some(K(&mut w).ns(at).ok()?.snapshot.clone())
    }

    /// Every op applied so far, in order.
    pub fn applied(&self) -> Vec<Op> {
        self.net.lock().shared::<OverlayLog>().applied.clone()
    }

    /// Adds a link that mesh did not make to the daemon's namespace, up, holding `addr`: the
    /// underlay interface.
    pub fn add_host_link(&self, name: IfName, addr: Ipv4Cidr, mtu: u32) -> Result<()> {
        let mut w = self.net.lock();
        let mut link = LinkState::new(LinkKind::Other, mtu);
        link.up = true;
        link.addrs = vec![addr];
        K(&mut w).add_link(&At::Host, &name, link)
    }

    /// [`overlay_mtu`](crate::overlay::overlay_mtu) on the fake: `mtu` if given, else the MTU of
    /// the link of the daemon's namespace that holds `underlay_ip`, minus the VXLAN overhead.
    pub fn overlay_mtu(&self, underlay_ip: Ipv4Addr, mtu: Option<u32>) -> Result<u32> {
        if let Some(mtu) = mtu {
            return Ok(mtu);
        }
        let mut w = self.net.lock();
        let mut k = K(&mut w);
        k.ns(&At::Host)?
            .snapshot
            .links
            .values()
            .find(|l| l.addrs.iter().any(|a| a.addr() == underlay_ip))
            .map(|l| l.mtu.saturating_sub(VXLAN_OVERHEAD))
            .ok_or_else(|| Error::NoInterfaceWithAddress {
                addr: underlay_ip,
                netns: At::Host.to_string(),
            })
    }
}

impl Dataplane for FakeDataplane {
    fn observe(&self, scope: &Scope) -> Result<Observed> {
        let mut w = self.net.lock();
        let mut k = K(&mut w);
        let host = k.ns(&At::Host)?.clone();
        let mut named = Vec::new();
        for n in k.0.names() {
            if scope.prefix.parse(&n).is_some() {
                named.push((n.clone(), k.ns(&At::Netns(n))?.snapshot.clone()));
            }
        }
        let masquerade = host.tables.get(&scope.nft_table).cloned();
        Ok(Observed::from_snapshots(
            scope,
            &host.snapshot,
            masquerade,
            named,
        ))
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        let mut w = self.net.lock();
        for op in ops {
            K(&mut w).apply_one(op).map_err(|source| Error::Apply {
                op: op.to_string(),
                source: Box::new(source),
            })?;
            w.shared::<OverlayLog>().applied.push(op.clone());
        }
        Ok(())
    }
}

fn name(s: &str) -> IfName {
    IfName::new(s).expect("constant interface names are valid")
}

/// The overlay's operations on the world.
struct K<'a>(&'a mut World);

impl K<'_> {
    /// The overlay part of the namespace `at`; the kernel's error if it does not exist.
    fn ns(&mut self, at: &At) -> Result<&mut FakeNs> {
        Ok(self.0.require(at)?.get_mut::<FakeNs>())
    }

    fn exists(&self, at: &At) -> bool {
        self.0.get(at).is_some()
    }

    fn link_mut(&mut self, at: &At, ifname: &IfName) -> Result<&mut LinkState> {
        self.ns(at)?
            .snapshot
            .links
            .get_mut(ifname)
            .ok_or_else(|| Error::LinkNotFound {
                ifname: ifname.to_string(),
                netns: at.to_string(),
            })
    }

    fn has_link(&mut self, at: &At, ifname: &IfName) -> bool {
        self.exists(at) && self.ns(at).is_ok_and(|ns| ns.link(ifname).is_some())
    }

    /// A new link of `kind` with a fresh MAC and serial number.
    fn add_link(&mut self, at: &At, ifname: &IfName, mut link: LinkState) -> Result<()> {
        let log = self.0.shared::<OverlayLog>();
        log.links += 1;
        let serial = log.links;
        let [_, _, _, _, _, b, c, d] = serial.to_be_bytes();
        link.mac = Some(Mac([0x0e, 0xfa, 0x4e, b, c, d]));
        let ns = self.ns(at)?;
        ns.snapshot.links.insert(ifname.clone(), link);
        ns.serials.insert(ifname.clone(), serial);
        Ok(())
    }

    /// Deletes a link with what goes with it: its entries, routes, enslavements and veth peer.
    fn delete_link(&mut self, at: &At, ifname: &IfName) {
        if !self.exists(at) {
            return;
        }
        let Ok(ns) = self.ns(at) else { return };
        if ns.snapshot.links.remove(ifname).is_none() {
            return;
        }
        ns.serials.remove(ifname);
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

    fn ensure_netns(&mut self, netns: &str) {
        self.0.ensure(netns).get_mut::<FakeNs>();
    }

    fn remove_netns(&mut self, netns: &str) {
        let at = At::Netns(netns.to_owned());
        if !self.exists(&at) {
            return;
        }
        let links: Vec<IfName> = self
            .ns(&at)
            .map(|ns| ns.snapshot.links.keys().cloned().collect())
            .unwrap_or_default();
        for link in links {
            self.delete_link(&at, &link);
        }
        self.0.remove(netns);
    }

    /// A veth pair unless a link of either name exists (the kernel's EEXIST, taken as success).
    fn ensure_veth_pair(&mut self, a_at: &At, a: &IfName, b_at: &At, b: &IfName) -> Result<()> {
        for at in [a_at, b_at] {
            if !self.exists(at) {
                return Err(netns_missing(&at.to_string()));
            }
        }
        if self.has_link(a_at, a) || self.has_link(b_at, b) {
            return Ok(());
        }
        self.add_link(a_at, a, LinkState::new(LinkKind::Veth, 1500))?;
        self.add_link(b_at, b, LinkState::new(LinkKind::Veth, 1500))?;
        self.ns(a_at)?
            .peers
            .insert(a.clone(), (b_at.clone(), b.clone()));
        self.ns(b_at)?
            .peers
            .insert(b.clone(), (a_at.clone(), a.clone()));
        Ok(())
    }

    fn enslave(&mut self, at: &At, port: &IfName, bridge: &IfName) -> Result<()> {
        let is_bridge = self.exists(at)
            && self
                .ns(at)?
                .link(bridge)
                .is_some_and(|l| l.kind == LinkKind::Bridge);
        if !is_bridge {
            return Err(Error::LinkNotFound {
                ifname: bridge.to_string(),
                netns: at.to_string(),
            });
        }
        self.link_mut(at, port)?.controller = Some(bridge.clone());
        Ok(())
    }

    /// Bridge `ifname` (created if absent) with this MTU, exactly this address, up.
    fn ensure_bridge(&mut self, at: &At, ifname: &IfName, mtu: u32, addr: Ipv4Cidr) -> Result<()> {
        if !self.has_link(at, ifname) {
            self.add_link(at, ifname, LinkState::new(LinkKind::Bridge, 1500))?;
        }
        let link = self.link_mut(at, ifname)?;
        link.addrs = vec![addr];
        link.mtu = mtu;
        link.up = true;
        Ok(())
    }

    fn configure_task_end(
        &mut self,
        at: &At,
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

    /// The sandbox `netns`, which must hold the VXLAN device, for entry ops.
    fn vxlan_ns(&mut self, netns: &str) -> Result<&mut FakeNs> {
        let at = At::Netns(netns.to_owned());
        self.link_mut(&at, &name(VXLAN_IFNAME))?;
        self.ns(&at)
    }

    /// The overlay part of `netns` if that namespace exists: removals in an absent one are
    /// success.
    fn existing(&mut self, netns: &str) -> Option<&mut FakeNs> {
        let at = At::Netns(netns.to_owned());
        if !self.exists(&at) {
            return None;
        }
        self.ns(&at).ok()
    }

    fn apply_one(&mut self, op: &Op) -> Result<()> {
        let vxlan0 = name(VXLAN_IFNAME);
        let br0 = name(BRIDGE_IFNAME);
        match op {
            Op::RemoveSandbox { netns } => self.remove_netns(netns),
            Op::RemoveLink { at, ifname } => self.delete_link(at, ifname),
            Op::RemoveDefaultRoute { netns } => {
                if let Some(ns) = self.existing(netns) {
                    ns.snapshot.default_gateway = None;
                    ns.default_dev = None;
                }
            }
            Op::RemoveFdb { netns, mac, vtep } => {
                if let Some(ns) = self.existing(netns) {
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
                if let Some(ns) = self.existing(netns) {
                    let entries = &mut ns.snapshot.neighbors;
                    if let Some(map) = entries.get_mut(&vxlan0) {
                        map.remove(ip);
                    }
                    entries.retain(|_, map| !map.is_empty());
                }
            }
            Op::RemoveMasquerade { table } => {
                self.ns(&At::Host)?.tables.remove(table);
            }
            Op::EnsureGatewayBridge {
                bridge,
                address,
                mtu,
            } => {
                self.ensure_bridge(&At::Host, bridge, *mtu, *address)?;
                self.ns(&At::Host)?.snapshot.ip_forward = true;
            }
            Op::EnsureMasquerade(rule) => {
                self.ns(&At::Host)?
                    .tables
                    .insert(rule.table.clone(), rule.clone());
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
                if !self.exists(&at) {
                    return Err(netns_missing(netns));
                }
                if !self.has_link(&at, &vxlan0) {
                    self.delete_link(&At::Host, &vxlan_staging_name(vxlan.vni));
                    let mut link = LinkState::new(LinkKind::Vxlan, vxlan.mtu);
                    link.vxlan = Some(vxlan.config());
                    // Created in the daemon's namespace and moved: the end state is the same.
                    self.add_link(&at, &vxlan0, link)?;
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
                let ns = self.ns(&task)?;
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
    use crate::overlay::ids::Prefix;

    fn fake_harness() -> Harness<FakeDataplane> {
        Harness {
            dp: FakeDataplane::new(),
            prefix: Prefix::new("mesh-fake-").expect("valid"),
            foreign: "mesh-other-".into(),
            underlay_ip: Ipv4Addr::new(10, 250, 0, 1),
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
                vtep: Ipv4Addr::new(10, 0, 0, 1),
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
        assert_eq!(dp.namespaces(), vec!["mesh-fake-tx".to_owned()]);
    }

    #[test]
    fn a_link_made_again_is_another_link() {
        let dp = FakeDataplane::new();
        let host = At::Host;
        let bridge = name("gwb");
        let ensure = Op::EnsureGatewayBridge {
            bridge: bridge.clone(),
            address: "172.30.0.1/16".parse().unwrap(),
            mtu: 1500,
        };
        dp.apply(std::slice::from_ref(&ensure)).unwrap();
        let serial = |dp: &FakeDataplane| {
            let mut w = dp.net().lock();
            K(&mut w).ns(&host).unwrap().link_serial(&bridge)
        };
        let first = serial(&dp);
        dp.apply(std::slice::from_ref(&ensure)).unwrap();
        assert_eq!(serial(&dp), first, "ensured again, kept");
        dp.apply(&[
            Op::RemoveLink {
                at: host.clone(),
                ifname: bridge.clone(),
            },
            ensure,
        ])
        .unwrap();
        assert_ne!(serial(&dp), first, "made again");
    }
}
