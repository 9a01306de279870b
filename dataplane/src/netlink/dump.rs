//! Whole-namespace dumps: every link, every IPv4 address, every neighbour entry of a family,
//! and what is derived from them.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourMessage;

use super::handle::Netlink;
use crate::error::Result;

impl Netlink {
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
                    LinkAttribute::Mtu(mtu) => Some(*mtu),
                    _ => None,
                })
            }))
    }
}
