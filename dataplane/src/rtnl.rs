//! Route-netlink helpers beside [`crate::link`]: VXLAN devices, FDB and neighbor entries,
//! default routes, MTU and MAC, bridge-port isolation, moving a link to another namespace, and
//! whole-namespace dumps.
//!
//! Same rules as [`crate::link`]: a handle talks to the namespace its sockets were opened in;
//! `ensure_*`/`replace_*` are idempotent (replace semantics, EEXIST is success) and `remove_*`
//! takes an absent object, or an absent device, as success. Every other refusal is an
//! [`Error::Netlink`] naming the operation and the interface.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{LinkBridgePort, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::error::{Error, Result, errno_of};
use crate::link::{IfName, Ipv4Cidr, Netlink};
use crate::netns::Netns;

/// The main routing table's id.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A route-netlink handle with the helpers of this module, plus a [`Netlink`] for those of
/// [`crate::link`]; both bound to the namespace of the thread that connected them.
pub struct Rtnl {
    link: Netlink,
    handle: rtnetlink::Handle,
    netns: String,
}

/// The configuration of a VXLAN device to create.
#[derive(Clone, Copy, Debug)]
pub struct VxlanParams {
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub learning: bool,
    pub proxy: bool,
}

impl Rtnl {
    /// Opens the sockets in the calling thread's namespace, which messages call `netns`. Must be
    /// called inside a tokio runtime (the connections run as tasks on it).
    pub fn connect(netns: impl Into<String>) -> Result<Rtnl> {
        let netns = netns.into();
        let link = Netlink::connect(netns.clone())?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Rtnl {
            link,
            handle,
            netns,
        })
    }

    /// The helpers of [`crate::link`] on the same namespace.
    pub fn link(&self) -> &Netlink {
        &self.link
    }

    /// The name of the namespace, as given to [`Rtnl::connect`].
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Every link of the namespace.
    pub async fn dump_links(&self) -> Result<Vec<LinkMessage>> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list links", "*", source))
    }

    /// The link `name`, if there is one. (`link.rs` has the same lookup, private to it.)
    pub async fn get_link(&self, name: &IfName) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.as_str()).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if matches!(errno_of(&e), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
            Err(source) => Err(self.err("get link", name, source)),
        }
    }

    /// Every IPv4 address of the namespace.
    pub async fn dump_ipv4_addresses(&self) -> Result<Vec<AddressMessage>> {
        let all: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list addresses", "*", source))?;
        Ok(all
            .into_iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .collect())
    }

    /// Every neighbor entry of `family` ([`AddressFamily::Inet`] for ARP entries,
    /// [`AddressFamily::Bridge`] for FDB entries).
    pub async fn dump_neighbors(&self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list neighbors", "*", source))
    }

    /// The gateway of the IPv4 default route of the main table, if there is one.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list routes", "*", source))?;
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.kind == RouteType::Unicast
                    && route_table(r) == MAIN_TABLE
            })
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                    _ => None,
                })
            }))
    }

    /// Creates the VXLAN device `name` here (success if a link of that name exists; it is not
    /// checked to be this one).
    pub async fn ensure_vxlan(&self, name: &IfName, p: VxlanParams) -> Result<()> {
        let msg = LinkVxlan::new(name.as_str(), p.vni)
            .port(p.port)
            .local(p.local)
            .learning(p.learning)
            .proxy(p.proxy)
            .mtu(p.mtu)
            .build();
        let result = self.handle.link().add(msg).execute().await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add vxlan", name, source))
    }

    /// Moves the link `name` into `to`, renamed `new_name` there.
    pub async fn move_link(&self, name: &IfName, to: &Netns, new_name: &IfName) -> Result<()> {
        let index = self.link.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(to.as_raw_fd())
            .name(new_name.as_str())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| self.err("move link", name, source))
    }

    /// Sets the MTU of `name`.
    pub async fn set_mtu(&self, name: &IfName, mtu: u32) -> Result<()> {
        let index = self.link.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| self.err("set mtu of", name, source))
    }

    /// Sets the MAC address of `name` (veths accept it while up).
    pub async fn set_mac(&self, name: &IfName, mac: [u8; 6]) -> Result<()> {
        let index = self.link.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| self.err("set mac of", name, source))
    }

    /// Makes the bridge port `name` isolated (it may talk only to non-isolated ports and the
    /// bridge itself), or not.
    pub async fn set_isolated(&self, name: &IfName, isolated: bool) -> Result<()> {
        let index = self.link.require_index(name).await?;
        let msg = LinkBridgePort::new(index).isolated(isolated).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|source| self.err("set isolated on", name, source))
    }

    /// Makes `cidr` the only IPv4 address of `name`.
    pub async fn set_only_address(&self, name: &IfName, cidr: Ipv4Cidr) -> Result<()> {
        self.link.ensure_address(name, cidr).await?;
        for other in self.link.addresses(name).await? {
            if other != cidr {
                self.remove_address(name, other).await?;
            }
        }
        Ok(())
    }

    /// Removes `cidr` from `name`; absent is success.
    pub async fn remove_address(&self, name: &IfName, cidr: Ipv4Cidr) -> Result<()> {
        let index = self.link.require_index(name).await?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        msg.header.prefix_len = cidr.prefix_len();
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(cidr.addr())));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(cidr.addr())));
        let result = self.handle.address().del(msg).execute().await;
        ok_if(result, &[libc::EADDRNOTAVAIL, libc::ENOENT])
            .map_err(|source| self.err("delete address", name, source))
    }

    /// Sets the FDB entry `mac -> vtep` of the VXLAN device `dev` (`bridge fdb replace MAC dev
    /// DEV dst VTEP self permanent`).
    pub async fn replace_fdb(&self, dev: &IfName, mac: [u8; 6], vtep: Ipv4Addr) -> Result<()> {
        let index = self.link.require_index(dev).await?;
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(vtep))
            .replace()
            .execute()
            .await
            .map_err(|source| self.err("replace fdb entry on", dev, source))
    }

    /// Removes the FDB entry `mac -> vtep` of `dev` (only that destination); absent is success.
    pub async fn remove_fdb(&self, dev: &IfName, mac: [u8; 6], vtep: Ipv4Addr) -> Result<()> {
        let Some(index) = self.link.link_index(dev).await? else {
            return Ok(());
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                vtep,
            )));
        let result = self.handle.neighbours().del(msg).execute().await;
        ok_if(result, &[libc::ENOENT, libc::ENODEV])
            .map_err(|source| self.err("delete fdb entry on", dev, source))
    }

    /// Removes what the bridge `dev` is enslaved to has learned about `mac` on it (`bridge fdb
    /// del MAC dev DEV master`); absent is success.
    pub async fn remove_learned_fdb(&self, dev: &IfName, mac: [u8; 6]) -> Result<()> {
        let Some(index) = self.link.link_index(dev).await? else {
            return Ok(());
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let result = self.handle.neighbours().del(msg).execute().await;
        // EINVAL: `dev` is not a bridge port.
        ok_if(result, &[libc::ENOENT, libc::ENODEV, libc::EINVAL])
            .map_err(|source| self.err("delete learned fdb entry on", dev, source))
    }

    /// Sets the permanent neighbor entry `ip -> mac` on `dev` (`ip neigh replace IP lladdr MAC
    /// dev DEV nud permanent`).
    pub async fn replace_neighbor(&self, dev: &IfName, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let index = self.link.require_index(dev).await?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(|source| self.err("replace neighbor on", dev, source))
    }

    /// Removes the neighbor entry of `ip` on `dev`; absent is success.
    pub async fn remove_neighbor(&self, dev: &IfName, ip: Ipv4Addr) -> Result<()> {
        let Some(index) = self.link.link_index(dev).await? else {
            return Ok(());
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let result = self.handle.neighbours().del(msg).execute().await;
        ok_if(result, &[libc::ENOENT, libc::ENODEV])
            .map_err(|source| self.err("delete neighbor on", dev, source))
    }

    /// Sets the IPv4 default route of the main table to `via` out of `dev`.
    pub async fn replace_default_route(&self, via: Ipv4Addr, dev: &IfName) -> Result<()> {
        self.replace_route(MAIN_TABLE, None, via, dev).await
    }

    /// Removes the IPv4 default route of the main table, whoever added it; absent is success.
    pub async fn remove_default_route(&self) -> Result<()> {
        self.remove_route(MAIN_TABLE, None).await
    }

    /// Sets the route to `dst` (the default route if `None`) in routing table `table` to `via`
    /// out of `dev`, replacing any route to `dst` there.
    pub async fn replace_route(
        &self,
        table: u32,
        dst: Option<Ipv4Cidr>,
        via: Ipv4Addr,
        dev: &IfName,
    ) -> Result<()> {
        let index = self.link.require_index(dev).await?;
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().table_id(table);
        if let Some(dst) = dst {
            msg = msg.destination_prefix(dst.addr(), dst.prefix_len());
        }
        let msg = msg.gateway(via).output_interface(index).build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| self.err("replace route via", dev, source))
    }

    /// Removes the route to `dst` (the default route if `None`) of routing table `table`,
    /// whoever added it; absent is success.
    pub async fn remove_route(&self, table: u32, dst: Option<Ipv4Cidr>) -> Result<()> {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().table_id(table);
        if let Some(dst) = dst {
            msg = msg.destination_prefix(dst.addr(), dst.prefix_len());
        }
        let msg = msg
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .build();
        let result = self.handle.route().del(msg).execute().await;
        let what = dst.map_or_else(|| "default".to_string(), |d| d.to_string());
        ok_if(result, &[libc::ESRCH, libc::ENOENT])
            .map_err(|source| self.err("delete route", format!("{what} table {table}"), source))
    }

    /// The fwmarks of the IPv4 policy rules at `priority`.
    pub async fn fwmark_rules(&self, priority: u32) -> Result<BTreeSet<u32>> {
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list rules", "*", source))?;
        Ok(rules
            .iter()
            .filter(|r| {
                r.attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Priority(p) if *p == priority))
            })
            .filter_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RuleAttribute::FwMark(m) => Some(*m),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds the policy rule `fwmark <mark> lookup <table>` at `priority`; present is success.
    pub async fn add_fwmark_rule(&self, mark: u32, table: u32, priority: u32) -> Result<()> {
        let result = self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(mark)
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable)
            .execute()
            .await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add rule", mark, source))
    }

    /// Removes the policy rule for `mark` at `priority`; absent is success.
    pub async fn remove_fwmark_rule(&self, mark: u32, priority: u32) -> Result<()> {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::Priority(priority));
        let result = self.handle.rule().del(msg).execute().await;
        ok_if(result, &[libc::ENOENT]).map_err(|source| self.err("delete rule", mark, source))
    }

    /// The MTU of the link that holds the IPv4 address `addr`, if one does.
    pub async fn mtu_of_address(&self, addr: Ipv4Addr) -> Result<Option<u32>> {
        let addrs = self.dump_ipv4_addresses().await?;
        let Some(index) = addrs.iter().find_map(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == addr))
                .then_some(m.header.index)
        }) else {
            return Ok(None);
        };
        let links = self.dump_links().await?;
        Ok(links
            .iter()
            .filter(|l| l.header.index == index)
            .find_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    netlink_packet_route::link::LinkAttribute::Mtu(mtu) => Some(*mtu),
                    _ => None,
                })
            }))
    }

    fn err(&self, op: &'static str, ifname: impl ToString, source: rtnetlink::Error) -> Error {
        Error::Netlink {
            op,
            ifname: ifname.to_string(),
            source,
        }
    }
}

/// The table of a route: the attribute when present (tables above 255), else the header.
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// `Ok` if the request succeeded or failed with one of `errnos` (the idempotent outcome).
fn ok_if(result: Result<(), rtnetlink::Error>, errnos: &[i32]) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno_of(&e).is_some_and(|n| errnos.contains(&n)) => Ok(()),
        other => other,
    }
}
