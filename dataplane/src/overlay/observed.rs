//! The observed model: what the kernel (or the fake) holds in our scope.
//!
//! Both implementations read each of our namespaces into the same [`NsSnapshot`] shape and
//! then share [`Observed::from_snapshots`], so what counts as ours, stale or stray is decided in
//! one place, for the fake exactly as for Linux.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::nft::Masquerade;
use crate::overlay::ids::{OwnedName, VXLAN_STAGING_PREFIX, Vni};
use crate::overlay::model::Scope;
use crate::types::{IfName, Ipv4Cidr, Mac};

/// The kind of a link, as far as the overlay cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Vxlan,
    /// Loopback and every kind we never create.
    Other,
}

/// The configuration of a VXLAN device that decides whether it is the right one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: Vni,
    /// UDP destination port.
    pub port: u16,
    /// Source address of the outer packets.
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
    /// ARP suppression from the neighbor table.
    pub proxy: bool,
}

/// One link of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub kind: LinkKind,
    pub mtu: u32,
    pub mac: Option<Mac>,
    /// Administratively up.
    pub up: bool,
    /// The bridge it is enslaved to (same namespace).
    pub controller: Option<IfName>,
    /// A bridge port that may talk only to non-isolated ports (`bridge link set isolated on`).
    pub isolated: bool,
    /// IPv4 addresses, sorted.
    pub addrs: Vec<Ipv4Cidr>,
    pub vxlan: Option<VxlanConfig>,
}

impl LinkState {
    /// A link of `kind` with nothing set: down, no address, no controller.
    pub fn new(kind: LinkKind, mtu: u32) -> LinkState {
        LinkState {
            kind,
            mtu,
            mac: None,
            up: false,
            controller: None,
            isolated: false,
            addrs: Vec::new(),
            vxlan: None,
        }
    }

    /// Whether the link holds exactly the address `addr`.
    pub fn has_only_address(&self, addr: Ipv4Cidr) -> bool {
        self.addrs == [addr]
    }
}

/// Sorts addresses the way [`LinkState::addrs`] holds them.
pub(crate) fn sort_addrs(addrs: &mut [Ipv4Cidr]) {
    addrs.sort_by_key(|c| (c.addr(), c.prefix_len()));
}

/// One entry of a VXLAN device's forwarding database (`bridge fdb ... self`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    /// The remote VTEP frames to `mac` are sent to.
    pub vtep: Ipv4Addr,
}

/// Everything the overlay reads from one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsSnapshot {
    pub links: BTreeMap<IfName, LinkState>,
    /// Forwarding entries with a remote destination, per VXLAN device.
    pub fdb: BTreeMap<IfName, BTreeSet<FdbEntry>>,
    /// Permanent IPv4 neighbor entries, per device.
    pub neighbors: BTreeMap<IfName, BTreeMap<Ipv4Addr, Mac>>,
    /// Gateway of the IPv4 default route of the main table.
    pub default_gateway: Option<Ipv4Addr>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: bool,
}

impl NsSnapshot {
    pub fn link(&self, name: &str) -> Option<&LinkState> {
        self.links
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, l)| l)
    }

    /// The FDB entries of the device `name` (empty if none).
    pub fn fdb_of(&self, name: &str) -> BTreeSet<FdbEntry> {
        self.fdb
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }

    /// The permanent neighbors of the device `name` (empty if none).
    pub fn neighbors_of(&self, name: &str) -> BTreeMap<Ipv4Addr, Mac> {
        self.neighbors
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }
}

/// The daemon's own namespace, as far as the overlay owns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedHost {
    pub gateway_bridge: Option<LinkState>,
    /// Links enslaved to the gateway bridge.
    pub gateway_ports: BTreeMap<IfName, LinkState>,
    /// VXLAN devices left in the daemon's namespace between creation and the move into their
    /// sandbox (a crash in between).
    pub staging_vxlans: BTreeSet<IfName>,
    pub ip_forward: bool,
    pub masquerade: Option<Masquerade>,
}

/// Everything in our scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub host: ObservedHost,
    /// Network sandboxes by VNI.
    pub networks: BTreeMap<Vni, NsSnapshot>,
    /// Task sandboxes by short task id.
    pub tasks: BTreeMap<String, NsSnapshot>,
    /// Namespaces with our prefix of no known shape.
    pub strays: BTreeSet<String>,
}

impl Observed {
    /// Builds the observed model from the daemon's namespace, our table's masquerade rule, and
    /// the snapshots of the named namespaces whose names carry our prefix (others are ignored).
    pub fn from_snapshots(
        scope: &Scope,
        host: &NsSnapshot,
        masquerade: Option<Masquerade>,
        named: impl IntoIterator<Item = (String, NsSnapshot)>,
    ) -> Observed {
        let gateway_bridge = host.links.get(&scope.gateway_bridge).cloned();
        let gateway_ports = host
            .links
            .iter()
            .filter(|(_, l)| l.controller.as_ref() == Some(&scope.gateway_bridge))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        let staging_vxlans = host
            .links
            .iter()
            .filter(|(n, l)| l.kind == LinkKind::Vxlan && is_staging_name(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        let mut observed = Observed {
            host: ObservedHost {
                gateway_bridge,
                gateway_ports,
                staging_vxlans,
                ip_forward: host.ip_forward,
                masquerade,
            },
            ..Observed::default()
        };
        for (name, snapshot) in named {
            match scope.prefix.parse(&name) {
                None => {}
                Some(OwnedName::Network(vni)) => {
                    observed.networks.insert(vni, snapshot);
                }
                Some(OwnedName::Task(short)) => {
                    observed.tasks.insert(short, snapshot);
                }
                Some(OwnedName::Stray) => {
                    observed.strays.insert(name);
                }
            }
        }
        observed
    }
}

fn is_staging_name(name: &str) -> bool {
    name.strip_prefix(VXLAN_STAGING_PREFIX)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}
