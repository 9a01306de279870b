//! Links and their addresses: lookup, veth pairs across namespaces, bridges and their ports,
//! state, MTU, MAC, moving a link to another namespace, deleting one.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::handle::{Netlink, ok_if};
use crate::error::{Result, errno_of};
use crate::netns::Netns;
use crate::types::{IfName, Ipv4Cidr};

impl Netlink {
    /// The link `name`, if there is one.
    pub async fn get_link(&self, name: &IfName) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.as_str()).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if matches!(errno_of(&e), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
            Err(source) => Err(self.err("get link", name, source)),
        }
    }

    /// The index of the link `name`, or `None` if there is none.
    pub async fn link_index(&self, name: &IfName) -> Result<Option<u32>> {
        Ok(self.get_link(name).await?.map(|m| m.header.index))
    }

    /// The index of the link `name`; [`Error::LinkNotFound`](crate::Error::LinkNotFound) if
    /// there is none.
    pub async fn require_index(&self, name: &IfName) -> Result<u32> {
        self.link_index(name)
            .await?
            .ok_or_else(|| self.not_found(name))
    }

    /// Whether the link `name` is administratively up.
    pub async fn is_up(&self, name: &IfName) -> Result<bool> {
        let msg = self
            .get_link(name)
            .await?
            .ok_or_else(|| self.not_found(name))?;
        Ok(msg.header.flags.contains(LinkFlags::Up))
    }

    /// Creates a veth pair whose end `a` is created directly in `a_ns` and end `b` in `b_ns`
    /// (no end ever appears in this handle's namespace unless it is one of the two). Success if
    /// a link of that name already exists (it is not checked to be this pair).
    pub async fn ensure_veth_pair(
        &self,
        a: &IfName,
        a_ns: &Netns,
        b: &IfName,
        b_ns: &Netns,
    ) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(b.as_str())
            .setns_by_fd(b_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(a.as_str(), b.as_str())
            .setns_by_fd(a_ns.as_raw_fd())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let result = self.handle.link().add(msg).execute().await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add veth", a, source))
    }

    /// [`Netlink::ensure_veth_pair`] for an end `a` whose name this handle's namespace may
    /// have too (a task's `eth0` beside the host's). Some kernels (Debian 12's 6.1) refuse to
    /// create a link directly in another namespace under a name the calling namespace holds,
    /// with the EEXIST that means "already made" otherwise; so `a` is created under a staging
    /// name derived from `b` (unique per pair) and renamed inside `a_ns` through `a_nl`, a
    /// handle in that namespace. Success if `a` already exists there; a staging link left by
    /// an interrupted call is renamed.
    pub async fn ensure_veth_pair_named(
        &self,
        a: &IfName,
        a_ns: &Netns,
        a_nl: &Netlink,
        b: &IfName,
        b_ns: &Netns,
    ) -> Result<()> {
        if a_nl.link_index(a).await?.is_some() {
            return Ok(());
        }
        let staging = staging_name(b);
        if a_nl.link_index(&staging).await?.is_none() {
            self.ensure_veth_pair(&staging, a_ns, b, b_ns).await?;
        }
        a_nl.rename_link(&staging, a).await
    }

    /// Renames the (down) link `from` to `to`.
    pub async fn rename_link(&self, from: &IfName, to: &IfName) -> Result<()> {
        let index = self.require_index(from).await?;
        let msg = LinkUnspec::new_with_index(index).name(to.as_str()).build();
        self.set_link(msg, "rename", from).await
    }

    /// Creates the bridge `name` (if absent) and returns its index.
    pub async fn ensure_bridge(&self, name: &IfName) -> Result<u32> {
        let result = self
            .handle
            .link()
            .add(LinkBridge::new(name.as_str()).build())
            .execute()
            .await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add bridge", name, source))?;
        self.require_index(name).await
    }

    /// Enslaves `port` to the bridge (or other controller) `controller`. Idempotent.
    pub async fn set_controller(&self, port: &IfName, controller: &IfName) -> Result<()> {
        let port_index = self.require_index(port).await?;
        let controller_index = self.require_index(controller).await?;
        let msg = LinkUnspec::new_with_index(port_index)
            .controller(controller_index)
            .build();
        self.set_link(msg, "set controller of", port).await
    }

    /// Sets `name` administratively up. Idempotent.
    pub async fn set_up(&self, name: &IfName) -> Result<()> {
        let index = self.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, "set up", name).await
    }

    /// Sets `name` administratively down. Idempotent.
    pub async fn set_down(&self, name: &IfName) -> Result<()> {
        let index = self.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.set_link(msg, "set down", name).await
    }

    /// Sets the MTU of `name`.
    pub async fn set_mtu(&self, name: &IfName, mtu: u32) -> Result<()> {
        let index = self.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(msg, "set mtu of", name).await
    }

    /// Sets the MAC address of `name` (veths accept it while up).
    pub async fn set_mac(&self, name: &IfName, mac: [u8; 6]) -> Result<()> {
        let index = self.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(msg, "set mac of", name).await
    }

    /// Makes the bridge port `name` isolated (it may talk only to non-isolated ports and the
    /// bridge itself), or not.
    pub async fn set_isolated(&self, name: &IfName, isolated: bool) -> Result<()> {
        let index = self.require_index(name).await?;
        let msg = LinkBridgePort::new(index).isolated(isolated).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|source| self.err("set isolated on", name, source))
    }

    /// Moves the link `name` into `to`, renamed `new_name` there.
    pub async fn move_link(&self, name: &IfName, to: &Netns, new_name: &IfName) -> Result<()> {
        let index = self.require_index(name).await?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(to.as_raw_fd())
            .name(new_name.as_str())
            .build();
        self.set_link(msg, "move link", name).await
    }

    /// Deletes the link `name`; absent is success. Deleting one end of a veth deletes both.
    pub async fn remove_link(&self, name: &IfName) -> Result<()> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        let result = self.handle.link().del(index).execute().await;
        ok_if(result, &[libc::ENODEV]).map_err(|source| self.err("delete link", name, source))
    }

    /// Adds `cidr` to `name` (success if it is already there).
    pub async fn ensure_address(&self, name: &IfName, cidr: Ipv4Cidr) -> Result<()> {
        let index = self.require_index(name).await?;
        let result = self
            .handle
            .address()
            .add(index, IpAddr::V4(cidr.addr()), cidr.prefix_len())
            .execute()
            .await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add address", name, source))
    }

    /// The IPv4 addresses on `name`.
    pub async fn addresses(&self, name: &IfName) -> Result<Vec<Ipv4Cidr>> {
        let index = self.require_index(name).await?;
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list addresses", name, source))?;
        let mut out = Vec::new();
        for msg in messages {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(addr)) = attr {
                    out.push(Ipv4Cidr::new(*addr, msg.header.prefix_len)?);
                }
            }
        }
        Ok(out)
    }

    /// Makes `cidr` the only IPv4 address of `name`.
    pub async fn set_only_address(&self, name: &IfName, cidr: Ipv4Cidr) -> Result<()> {
        self.ensure_address(name, cidr).await?;
        for other in self.addresses(name).await? {
            if other != cidr {
                self.remove_address(name, other).await?;
            }
        }
        Ok(())
    }

    /// Removes `cidr` from `name`; absent is success.
    pub async fn remove_address(&self, name: &IfName, cidr: Ipv4Cidr) -> Result<()> {
        let index = self.require_index(name).await?;
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

    async fn set_link(&self, msg: LinkMessage, op: &'static str, name: &IfName) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| self.err(op, name, source))
    }
}

/// `mst` and a hash of `peer`: a name nobody else uses, the same on every try for one pair.
fn staging_name(peer: &IfName) -> IfName {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable across calls and restarts.
    let mut h = std::hash::DefaultHasher::new();
    peer.as_str().hash(&mut h);
    IfName::new(format!("mst{:08x}", h.finish() as u32)).expect("11 characters make a link name")
}
