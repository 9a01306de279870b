//! Reading one namespace into an [`NsSnapshot`] over rtnetlink.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};

use crate::error::Result;
use crate::netlink::Netlink;
use crate::overlay::ids::Vni;
use crate::overlay::observed::{
    FdbEntry, LinkKind, LinkState, NsSnapshot, VxlanConfig, sort_addrs,
};
use crate::types::{IfName, Ipv4Cidr, Mac};

pub(super) fn link_name(link: &LinkMessage) -> Option<IfName> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => IfName::new(n.as_str()).ok(),
        _ => None,
    })
}

/// Reads one namespace. `entries`: also its FDB, neighbor and default-route state (not for the
/// daemon's namespace, whose tables are not ours and may be large).
pub(super) async fn snapshot(r: &Netlink, entries: bool) -> Result<NsSnapshot> {
    let messages = r.dump_links().await?;
    let names: HashMap<u32, IfName> = messages
        .iter()
        .filter_map(|m| Some((m.header.index, link_name(m)?)))
        .collect();
    let mut snap = NsSnapshot::default();
    for m in &messages {
        let Some(name) = names.get(&m.header.index) else {
            continue;
        };
        snap.links.insert(name.clone(), link_state(m, &names));
    }
    for m in r.dump_ipv4_addresses().await? {
        let Some(name) = names.get(&m.header.index) else {
            continue;
        };
        for a in &m.attributes {
            if let AddressAttribute::Local(IpAddr::V4(addr)) = a
                && let Some(link) = snap.links.get_mut(name)
            {
                link.addrs.push(Ipv4Cidr::new(*addr, m.header.prefix_len)?);
            }
        }
    }
    for link in snap.links.values_mut() {
        sort_addrs(&mut link.addrs);
    }
    if !entries {
        return Ok(snap);
    }
    for m in r.dump_neighbors(AddressFamily::Bridge).await? {
        let Some(name) = names.get(&m.header.ifindex) else {
            continue;
        };
        if snap.links.get(name).map(|l| l.kind) != Some(LinkKind::Vxlan) {
            continue;
        }
        if let (Some(mac), Some(vtep)) = mac_and_ipv4(&m) {
            snap.fdb
                .entry(name.clone())
                .or_default()
                .insert(FdbEntry { mac, vtep });
        }
    }
    for m in r.dump_neighbors(AddressFamily::Inet).await? {
        let Some(name) = names.get(&m.header.ifindex) else {
            continue;
        };
        if m.header.state != NeighbourState::Permanent {
            continue;
        }
        if let (Some(mac), Some(ip)) = mac_and_ipv4(&m) {
            snap.neighbors
                .entry(name.clone())
                .or_default()
                .insert(ip, mac);
        }
    }
    snap.default_gateway = r.default_gateway().await?;
    Ok(snap)
}

/// The link-layer address and IPv4 destination of a neighbor or FDB entry.
fn mac_and_ipv4(m: &NeighbourMessage) -> (Option<Mac>, Option<Ipv4Addr>) {
    let mut mac = None;
    let mut ip = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::try_from(b.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => ip = Some(*addr),
            // In the bridge family the crate leaves the address undecoded.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
            }
            _ => {}
        }
    }
    (mac, ip)
}

pub(super) fn link_state(m: &LinkMessage, names: &HashMap<u32, IfName>) -> LinkState {
    let mut state = LinkState::new(LinkKind::Other, 0);
    state.up = m.header.flags.contains(LinkFlags::Up);
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
            LinkAttribute::Address(bytes) => state.mac = Mac::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Controller(index) => state.controller = names.get(index).cloned(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Bridge) => state.kind = LinkKind::Bridge,
                        LinkInfo::Kind(InfoKind::Veth) => state.kind = LinkKind::Veth,
                        LinkInfo::Kind(InfoKind::Vxlan) => state.kind = LinkKind::Vxlan,
                        LinkInfo::Data(InfoData::Vxlan(data)) => state.vxlan = vxlan_config(data),
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            state.isolated = port.contains(&InfoBridgePort::Isolated(true));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    state
}

fn vxlan_config(data: &[InfoVxlan]) -> Option<VxlanConfig> {
    let mut vni = None;
    let mut config = VxlanConfig {
        vni: Vni::new(1).expect("valid"),
        port: 0,
        local: None,
        learning: true,
        proxy: false,
    };
    for d in data {
        match d {
            InfoVxlan::Id(id) => vni = Vni::new(*id).ok(),
            InfoVxlan::Port(port) => config.port = *port,
            InfoVxlan::Local(ip) => config.local = Some(*ip),
            InfoVxlan::Learning(on) => config.learning = *on,
            InfoVxlan::Proxy(on) => config.proxy = *on,
            _ => {}
        }
    }
    config.vni = vni?;
    Some(config)
}
