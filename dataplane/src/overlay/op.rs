//! The operations a plan is made of, and how each is described in logs and errors.
//!
//! Every op is idempotent: applying it twice is applying it once, and `Remove*` of something
//! absent is success. Where an op places a link it says so with [`At`].

use std::fmt;
use std::net::Ipv4Addr;

use crate::netns::At;
use crate::nft::Masquerade;
use crate::overlay::ids::Vni;
use crate::overlay::observed::VxlanConfig;
use crate::types::{IfName, Ipv4Cidr, Mac};

/// The VXLAN device of a network sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: Vni,
    /// UDP destination port (the data-path port).
    pub port: u16,
    /// This node's underlay address.
    pub local: Ipv4Addr,
    pub mtu: u32,
}

impl VxlanSpec {
    /// The observed configuration a device made from this spec has.
    pub fn config(&self) -> VxlanConfig {
        VxlanConfig {
            vni: self.vni,
            port: self.port,
            local: Some(self.local),
            learning: false,
            proxy: true,
        }
    }
}

/// One change to the kernel. Every op is idempotent: applying it twice is applying it once,
/// and `Remove*` of something absent is success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Deletes every link of the namespace (so veth peers elsewhere go at once), then its name.
    RemoveSandbox { netns: String },
    /// Deletes one link (a veth's peer goes with it).
    RemoveLink { at: At, ifname: IfName },
    /// Deletes the IPv4 default route of a task sandbox.
    RemoveDefaultRoute { netns: String },
    /// Deletes the FDB entry `mac -> vtep` of the sandbox's VXLAN device, and what `br0` has
    /// learned about `mac` on it.
    RemoveFdb {
        netns: String,
        mac: Mac,
        vtep: Ipv4Addr,
    },
    /// Deletes the neighbor entry of `ip` on the sandbox's VXLAN device.
    RemoveNeighbor { netns: String, ip: Ipv4Addr },
    /// Deletes our nftables table.
    RemoveMasquerade { table: String },
    /// In the daemon's namespace: the bridge with this address and MTU, up, and IPv4 forwarding
    /// on. Other addresses on it are removed.
    EnsureGatewayBridge {
        bridge: IfName,
        address: Ipv4Cidr,
        mtu: u32,
    },
    /// Replaces our nftables table by one holding this masquerade rule.
    EnsureMasquerade(Masquerade),
    /// The namespace, holding `br0` with exactly the gateway address, this MTU, up.
    CreateNetworkSandbox {
        netns: String,
        gateway: Ipv4Cidr,
        mtu: u32,
    },
    /// `vxlan0` in the sandbox (created in the daemon's namespace, so its socket lives there,
    /// then moved in), with this MTU, enslaved to `br0`, up. An existing `vxlan0` is kept and
    /// only its MTU, controller and state are set.
    CreateVxlan { netns: String, vxlan: VxlanSpec },
    /// Permanent `ip -> mac` on the sandbox's VXLAN device (replacing any other MAC).
    AddNeighbor {
        netns: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
    /// `mac -> vtep` in the sandbox's VXLAN device FDB (replacing any other destination).
    AddFdb {
        netns: String,
        mac: Mac,
        vtep: Ipv4Addr,
    },
    /// The namespace, with `lo` up.
    CreateTaskSandbox { netns: String },
    /// A veth from the task (`ifname`, with `mac`, exactly `addr`, `mtu`, up) to the network
    /// sandbox (`port`, `mtu`, enslaved to `br0`, up). Fixes either end in place if it exists.
    AttachEndpoint {
        task_netns: String,
        ifname: IfName,
        addr: Ipv4Cidr,
        mac: Mac,
        mtu: u32,
        network_netns: String,
        port: IfName,
    },
    /// A veth from the task (`gw0`, with `mac`, exactly `addr`, `mtu`, up, default route via
    /// `gateway`) to the daemon's namespace (`port`, `mtu`, an isolated port of `bridge`, up).
    AttachGateway {
        task_netns: String,
        addr: Ipv4Cidr,
        mac: Mac,
        mtu: u32,
        port: IfName,
        bridge: IfName,
        gateway: Ipv4Addr,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::RemoveSandbox { netns } => write!(f, "remove sandbox {netns}"),
            Op::RemoveLink { at, ifname } => write!(f, "remove link {ifname} in {at}"),
            Op::RemoveDefaultRoute { netns } => write!(f, "remove default route in {netns}"),
            Op::RemoveFdb { netns, mac, vtep } => {
                write!(f, "remove fdb {mac} dst {vtep} in {netns}")
            }
            Op::RemoveNeighbor { netns, ip } => write!(f, "remove neighbor {ip} in {netns}"),
            Op::RemoveMasquerade { table } => write!(f, "remove nftables table ip {table}"),
            Op::EnsureGatewayBridge {
                bridge,
                address,
                mtu,
            } => write!(f, "ensure gateway bridge {bridge} {address} mtu {mtu}"),
            Op::EnsureMasquerade(m) => write!(
                f,
                "ensure masquerade of {} except to {} in table ip {}",
                m.source, m.bridge, m.table
            ),
            Op::CreateNetworkSandbox {
                netns,
                gateway,
                mtu,
            } => write!(
                f,
                "create network sandbox {netns} gateway {gateway} mtu {mtu}"
            ),
            Op::CreateVxlan { netns, vxlan } => write!(
                f,
                "create vxlan vni {} port {} local {} mtu {} in {netns}",
                vxlan.vni, vxlan.port, vxlan.local, vxlan.mtu
            ),
            Op::AddNeighbor { netns, ip, mac } => write!(f, "add neighbor {ip} {mac} in {netns}"),
            Op::AddFdb { netns, mac, vtep } => write!(f, "add fdb {mac} dst {vtep} in {netns}"),
            Op::CreateTaskSandbox { netns } => write!(f, "create task sandbox {netns}"),
            Op::AttachEndpoint {
                task_netns,
                ifname,
                addr,
                network_netns,
                ..
            } => write!(f, "attach {task_netns} {ifname} {addr} to {network_netns}"),
            Op::AttachGateway {
                task_netns,
                addr,
                bridge,
                ..
            } => write!(f, "attach {task_netns} gw0 {addr} to {bridge}"),
        }
    }
}
