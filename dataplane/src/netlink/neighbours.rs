//! FDB entries of VXLAN devices and permanent neighbour (ARP) entries.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};

use super::handle::{Netlink, ok_if};
use crate::error::Result;
use crate::types::IfName;

impl Netlink {
    /// Sets the FDB entry `mac -> vtep` of the VXLAN device `dev` (`bridge fdb replace MAC dev
    /// DEV dst VTEP self permanent`).
    pub async fn replace_fdb(&self, dev: &IfName, mac: [u8; 6], vtep: Ipv4Addr) -> Result<()> {
        let index = self.require_index(dev).await?;
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
        let Some(index) = self.link_index(dev).await? else {
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
        let Some(index) = self.link_index(dev).await? else {
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
        let index = self.require_index(dev).await?;
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
        let Some(index) = self.link_index(dev).await? else {
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
}
