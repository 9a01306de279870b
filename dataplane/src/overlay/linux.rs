//! The Linux dataplane: observes and applies over rtnetlink, and `nft` for the masquerade rule.
//!
//! # Threads and sockets
//! Each [`Dataplane::observe`] or [`Dataplane::apply`] call runs on one fresh OS thread that
//! enters the daemon's namespace (see [`crate::netns`]). When an op needs another namespace,
//! that thread enters it just long enough to open netlink sockets there and goes back: the
//! sockets stay bound to the namespace they were opened in, so one thread and one socket pair
//! per namespace serve a whole batch of ops. Nothing ever runs in another namespace on a
//! thread that outlives the call.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::link::{IfName, Ipv4Cidr};
use crate::netns::Netns;
use crate::nft;
use crate::overlay::Dataplane;
use crate::overlay::model::{
    BRIDGE_IFNAME, Mac, Scope, TASK_GATEWAY_IFNAME, VXLAN_IFNAME, VXLAN_OVERHEAD, Vni,
    vxlan_staging_name,
};
use crate::overlay::observed::{
    FdbEntry, LinkKind, LinkState, NsSnapshot, Observed, VxlanConfig, sort_addrs,
};
use crate::overlay::plan::{At, Op};
use crate::rtnl::{Rtnl, VxlanParams};

/// `net.ipv4.ip_forward`, read and written by a thread in the namespace it is about.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

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
            let mut host = snapshot(&session.host, false).await?;
            host.ip_forward = read_ip_forward()?;
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
                let snap = snapshot(&session.named[&name].1, true).await?;
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
                apply_one(&mut session, op)
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
        Rtnl::connect(host.name())?
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

/// Netlink sockets of one worker thread: the daemon's namespace's, and those of the named
/// namespaces opened so far.
struct Session<'a> {
    host_ns: &'a Netns,
    host: Rtnl,
    named: HashMap<String, (Netns, Rtnl)>,
}

impl<'a> Session<'a> {
    /// Must be called on a thread inside `host_ns`, within a tokio runtime.
    fn open(host_ns: &'a Netns) -> Result<Session<'a>> {
        Ok(Session {
            host_ns,
            host: Rtnl::connect(host_ns.name())?,
            named: HashMap::new(),
        })
    }

    /// Opens sockets in the named namespace `name` unless already open: this thread enters it,
    /// connects, and returns to the daemon's namespace.
    fn open_named(&mut self, name: &str) -> Result<()> {
        if self.named.contains_key(name) {
            return Ok(());
        }
        let ns = Netns::open(name)?;
        let enter = |target: &Netns| {
            nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                Error::Netns {
                    op: "enter",
                    name: target.name().to_owned(),
                    source: errno.into(),
                }
            })
        };
        enter(&ns)?;
        let connected = Rtnl::connect(name);
        // Back home before anything else, whatever connect did.
        enter(self.host_ns)?;
        self.named.insert(name.to_owned(), (ns, connected?));
        Ok(())
    }

    /// The sockets of the namespace `at`, opening them if needed.
    fn rtnl(&mut self, at: &At) -> Result<&Rtnl> {
        match at {
            At::Host => Ok(&self.host),
            At::Netns(name) => {
                self.open_named(name)?;
                Ok(&self.named[name].1)
            }
        }
    }

    /// Like [`Session::rtnl`] for a named namespace, but `None` if it does not exist: removing
    /// something from an absent namespace is success.
    fn rtnl_if_exists(&mut self, name: &str) -> Result<Option<&Rtnl>> {
        match self.open_named(name) {
            Ok(()) => Ok(Some(&self.named[name].1)),
            Err(Error::Netns { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Drops the sockets of `name` (they would keep a removed namespace alive).
    fn forget(&mut self, name: &str) {
        self.named.remove(name);
    }
}

fn ifname(name: &str) -> IfName {
    IfName::new(name).expect("constant interface names are valid")
}

async fn apply_one(s: &mut Session<'_>, op: &Op) -> Result<()> {
    let vxlan0 = ifname(VXLAN_IFNAME);
    let br0 = ifname(BRIDGE_IFNAME);
    match op {
        Op::RemoveSandbox { netns } => {
            if let Some(r) = s.rtnl_if_exists(netns)? {
                // Delete the links first: a veth's peer in another namespace goes at once,
                // not when the kernel gets round to destroying this namespace.
                for link in r.dump_links().await? {
                    if let Some(name) = link_name(&link)
                        && name.as_str() != "lo"
                    {
                        r.link().remove_link(&name).await?;
                    }
                }
            }
            s.forget(netns);
            Netns::remove(netns)
        }
        Op::RemoveLink { at, ifname } => {
            let r = match at {
                At::Host => &s.host,
                At::Netns(name) => match s.rtnl_if_exists(name)? {
                    Some(r) => r,
                    None => return Ok(()),
                },
            };
            r.link().remove_link(ifname).await
        }
        Op::RemoveDefaultRoute { netns } => match s.rtnl_if_exists(netns)? {
            Some(r) => r.remove_default_route().await,
            None => Ok(()),
        },
        Op::RemoveFdb { netns, mac, vtep } => match s.rtnl_if_exists(netns)? {
            Some(r) => {
                r.remove_fdb(&vxlan0, mac.octets(), *vtep).await?;
                // And what br0 learned from the endpoint's frames, so no listing shows it.
                r.remove_learned_fdb(&vxlan0, mac.octets()).await
            }
            None => Ok(()),
        },
        Op::RemoveNeighbor { netns, ip } => match s.rtnl_if_exists(netns)? {
            Some(r) => r.remove_neighbor(&vxlan0, *ip).await,
            None => Ok(()),
        },
        Op::RemoveMasquerade { table } => nft::remove_table(s.host_ns, table),
        Op::EnsureGatewayBridge {
            bridge,
            address,
            mtu,
        } => {
            let r = &s.host;
            r.link().ensure_bridge(bridge).await?;
            r.set_mtu(bridge, *mtu).await?;
            r.set_only_address(bridge, *address).await?;
            r.link().set_up(bridge).await?;
            write_ip_forward()
        }
        Op::EnsureMasquerade(rule) => nft::ensure_masquerade(s.host_ns, rule),
        Op::CreateNetworkSandbox {
            netns,
            gateway,
            mtu,
        } => {
            Netns::ensure(netns)?;
            let r = s.rtnl(&At::Netns(netns.clone()))?;
            r.link().ensure_bridge(&br0).await?;
            r.set_mtu(&br0, *mtu).await?;
            r.set_only_address(&br0, *gateway).await?;
            r.link().set_up(&br0).await
        }
        Op::CreateVxlan { netns, vxlan } => {
            s.open_named(netns)?;
            let (ns, r) = &s.named[netns];
            if r.link().link_index(&vxlan0).await?.is_none() {
                // Created here so its UDP socket lives in the daemon's namespace, then moved.
                let staging = vxlan_staging_name(vxlan.vni);
                if let Some(found) = s.host.get_link(&staging).await? {
                    // One left by a crash between create and move is ours; anything else of
                    // that name is not, and must not be moved away.
                    if link_state(&found, &HashMap::new()).kind != LinkKind::Vxlan {
                        return Err(Error::Conflict {
                            what: format!("link {staging} in {}", s.host_ns.name()),
                            reason: "exists and is not a vxlan device staged by mesh",
                        });
                    }
                    s.host.link().remove_link(&staging).await?;
                }
                let params = VxlanParams {
                    vni: vxlan.vni.get(),
                    port: vxlan.port,
                    local: vxlan.local,
                    mtu: vxlan.mtu,
                    learning: false,
                    proxy: true,
                };
                s.host.ensure_vxlan(&staging, params).await?;
                s.host.move_link(&staging, ns, &vxlan0).await?;
            }
            r.set_mtu(&vxlan0, vxlan.mtu).await?;
            r.link().set_controller(&vxlan0, &br0).await?;
            r.link().set_up(&vxlan0).await
        }
        Op::AddNeighbor { netns, ip, mac } => {
            s.rtnl(&At::Netns(netns.clone()))?
                .replace_neighbor(&vxlan0, *ip, mac.octets())
                .await
        }
        Op::AddFdb { netns, mac, vtep } => {
            s.rtnl(&At::Netns(netns.clone()))?
                .replace_fdb(&vxlan0, mac.octets(), *vtep)
                .await
        }
        Op::CreateTaskSandbox { netns } => {
            Netns::ensure(netns)?;
            s.rtnl(&At::Netns(netns.clone()))?
                .link()
                .set_up(&ifname("lo"))
                .await
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
            s.open_named(task_netns)?;
            s.open_named(network_netns)?;
            let (task_ns, task) = &s.named[task_netns];
            let (network_ns, network) = &s.named[network_netns];
            s.host
                .link()
                .ensure_veth_pair(ifname, task_ns, port, network_ns)
                .await?;
            configure_task_end(task, ifname, *mac, *mtu, *addr).await?;
            network.set_mtu(port, *mtu).await?;
            network.link().set_controller(port, &br0).await?;
            network.link().set_up(port).await
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
            let gw0 = self::ifname(TASK_GATEWAY_IFNAME);
            s.open_named(task_netns)?;
            let (task_ns, task) = &s.named[task_netns];
            let host = &s.host;
            host.link()
                .ensure_veth_pair(&gw0, task_ns, port, s.host_ns)
                .await?;
            configure_task_end(task, &gw0, *mac, *mtu, *addr).await?;
            task.replace_default_route(*gateway, &gw0).await?;
            host.set_mtu(port, *mtu).await?;
            host.link().set_controller(port, bridge).await?;
            host.set_isolated(port, true).await?;
            host.link().set_up(port).await
        }
    }
}

/// The task end of a veth: MAC, MTU, exactly one address, up.
async fn configure_task_end(
    r: &Rtnl,
    name: &IfName,
    mac: Mac,
    mtu: u32,
    addr: Ipv4Cidr,
) -> Result<()> {
    r.set_mac(name, mac.octets()).await?;
    r.set_mtu(name, mtu).await?;
    r.set_only_address(name, addr).await?;
    r.link().set_up(name).await
}

fn read_ip_forward() -> Result<bool> {
    let value = std::fs::read_to_string(IP_FORWARD).map_err(|source| Error::Path {
        op: "read",
        path: IP_FORWARD.into(),
        source,
    })?;
    Ok(value.trim() == "1")
}

fn write_ip_forward() -> Result<()> {
    std::fs::write(IP_FORWARD, "1").map_err(|source| Error::Path {
        op: "write",
        path: IP_FORWARD.into(),
        source,
    })
}

fn link_name(link: &LinkMessage) -> Option<IfName> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => IfName::new(n.as_str()).ok(),
        _ => None,
    })
}

/// Reads one namespace. `entries`: also its FDB, neighbor and default-route state (not for the
/// daemon's namespace, whose tables are not ours and may be large).
async fn snapshot(r: &Rtnl, entries: bool) -> Result<NsSnapshot> {
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

fn link_state(m: &LinkMessage, names: &HashMap<u32, IfName>) -> LinkState {
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

#[cfg(test)]
pub(crate) mod tests {
    //! Need root. Every harness lives in namespaces named `mdo<pid>x<n>-...`, removed on drop
    //! (also on panic): the daemon's namespace is `...-host`, ours are `...-m-*`, foreign ones
    //! `...-f-*`.

    use super::*;
    use crate::link::in_netns;
    use crate::overlay::conformance::Harness;
    use crate::overlay::model::Prefix;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
            Rtnl::connect(host.name())?
                .set_mtu(&ifname("ul0"), 9000)
                .await?;
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
