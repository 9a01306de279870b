//! The intent model: what one node's overlay data path should look like.
//!
//! [`NodeDataplane`] is the whole desired state of a node: the networks it knows, the task
//! sandboxes it runs, the endpoints other nodes gossiped, and its own settings (underlay
//! address, data-path port, gateway bridge). It is plain data, built by the agent and read by the
//! pure planner. The kernel names it implies are derived in [`crate::overlay::ids`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::overlay::ids::{Prefix, TaskId, Vni};
use crate::types::{IfName, Ipv4Cidr, Mac};

/// The bridge inside every network sandbox; it holds the subnet's gateway address.
pub const BRIDGE_IFNAME: &str = "br0";
/// The VXLAN device inside every network sandbox, enslaved to [`BRIDGE_IFNAME`].
pub const VXLAN_IFNAME: &str = "vxlan0";
/// The task-side interface of the veth to the node's gateway bridge.
pub const TASK_GATEWAY_IFNAME: &str = "gw0";
/// The VXLAN UDP port when none is configured (IANA's, as Docker Swarm).
pub const DEFAULT_DATA_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds to a frame: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// One overlay network as this node needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub vni: Vni,
    /// The gateway address with the subnet's prefix length (`10.0.1.1/24`): on `br0` of the
    /// network's sandbox on every node.
    pub gateway: Ipv4Cidr,
    /// MTU of the bridge, the VXLAN device and every endpoint veth (see
    /// [`crate::overlay::overlay_mtu`]).
    pub mtu: u32,
    /// No egress: tasks only on internal networks get no gateway link and no default route.
    pub internal: bool,
}

/// One endpoint of a local task on an overlay network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub vni: Vni,
    /// The name inside the task (`eth0`, `eth1`...).
    pub ifname: IfName,
    /// The endpoint's address with the subnet's prefix length.
    pub addr: Ipv4Cidr,
    pub mac: Mac,
}

impl LocalEndpoint {
    /// An endpoint whose MAC is derived from its address ([`Mac::from_ipv4`]).
    pub fn new(vni: Vni, ifname: IfName, addr: Ipv4Cidr) -> LocalEndpoint {
        LocalEndpoint {
            vni,
            ifname,
            addr,
            mac: Mac::from_ipv4(addr.addr()),
        }
    }
}

/// The network sandbox of one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSandbox {
    pub id: TaskId,
    pub endpoints: Vec<LocalEndpoint>,
    /// The task's address on the gateway bridge (from [`crate::overlay::GatewayAllocator`]):
    /// required exactly when one of its networks is not internal.
    pub egress: Option<Ipv4Cidr>,
}

/// An endpoint of a network on another node, as gossiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteEndpoint {
    pub vni: Vni,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// The underlay address of the node holding it.
    pub vtep: Ipv4Addr,
}

/// The per-node bridge in the daemon's namespace that gives tasks egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    pub bridge: IfName,
    /// The bridge's address with the subnet's prefix length (`172.30.0.1/16`).
    pub address: Ipv4Cidr,
    /// MTU of the bridge and of the tasks' gateway veths (no VXLAN on this path).
    pub mtu: u32,
    /// The nftables table (family `ip`) that holds the masquerade rule; only ours.
    pub nft_table: String,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            bridge: IfName::new("mesh_gwbridge").expect("valid"),
            address: Ipv4Cidr::new(Ipv4Addr::new(172, 30, 0, 1), 16).expect("valid"),
            mtu: 1500,
            nft_table: "mesh".into(),
        }
    }
}

impl GatewayConfig {
    /// The subnet of the gateway bridge, as network address and prefix.
    pub fn subnet(&self) -> Ipv4Cidr {
        self.address.network()
    }
}

/// What [`crate::overlay::Dataplane::observe`] looks at: our namespaces, our gateway bridge and
/// our nftables table. Nothing else of the machine is read or touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub prefix: Prefix,
    pub gateway_bridge: IfName,
    pub nft_table: String,
}

/// The whole desired overlay state of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDataplane {
    pub prefix: Prefix,
    /// This node's address on the underlay: the VXLAN devices' `local`.
    pub underlay_ip: Ipv4Addr,
    /// The VXLAN UDP port ([`DEFAULT_DATA_PORT`] unless configured at cluster init).
    pub data_port: u16,
    pub gateway: GatewayConfig,
    pub networks: BTreeMap<Vni, NetworkSpec>,
    pub tasks: BTreeMap<TaskId, TaskSandbox>,
    /// Endpoints on other nodes, one per (network, address).
    pub remotes: BTreeMap<(Vni, Ipv4Addr), RemoteEndpoint>,
}

impl NodeDataplane {
    /// An empty node with the default port and gateway bridge.
    pub fn new(prefix: Prefix, underlay_ip: Ipv4Addr) -> NodeDataplane {
        NodeDataplane {
            prefix,
            underlay_ip,
            data_port: DEFAULT_DATA_PORT,
            gateway: GatewayConfig::default(),
            networks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            remotes: BTreeMap::new(),
        }
    }

    /// What the dataplane must observe for this state.
    pub fn scope(&self) -> Scope {
        Scope {
            prefix: self.prefix.clone(),
            gateway_bridge: self.gateway.bridge.clone(),
            nft_table: self.gateway.nft_table.clone(),
        }
    }

    /// Adds or replaces a network.
    pub fn upsert_network(&mut self, spec: NetworkSpec) {
        self.networks.insert(spec.vni, spec);
    }

    /// Adds or replaces a task.
    pub fn upsert_task(&mut self, task: TaskSandbox) {
        self.tasks.insert(task.id.clone(), task);
    }

    /// Adds or replaces the remote endpoint at its (network, address); returns the one replaced.
    pub fn upsert_remote(&mut self, remote: RemoteEndpoint) -> Option<RemoteEndpoint> {
        self.remotes.insert((remote.vni, remote.ip), remote)
    }

    /// Forgets the remote endpoint at (network, address); returns it.
    pub fn remove_remote(&mut self, vni: Vni, ip: Ipv4Addr) -> Option<RemoteEndpoint> {
        self.remotes.remove(&(vni, ip))
    }

    /// Whether this node needs a sandbox for `vni`: it has a local endpoint on it.
    pub fn has_local_endpoints(&self, vni: Vni) -> bool {
        self.tasks
            .values()
            .any(|t| t.endpoints.iter().any(|e| e.vni == vni))
    }

    /// Whether `task` gets a gateway link: it is on no network at all (the gateway bridge is
    /// then its only way in and out, as for host-mode ports), or one of its networks is not
    /// internal.
    pub fn needs_egress(&self, task: &TaskSandbox) -> bool {
        task.endpoints.is_empty()
            || task.endpoints.iter().any(|e| {
                self.networks
                    .get(&e.vni)
                    .is_some_and(|network| !network.internal)
            })
    }

    /// Whether `remote` is programmed in the kernel: its network has a local sandbox and the
    /// address is not one of our own endpoints (a local endpoint wins over a stale record).
    pub fn is_programmed(&self, remote: &RemoteEndpoint) -> bool {
        self.has_local_endpoints(remote.vni)
            && !self.tasks.values().any(|t| {
                t.endpoints
                    .iter()
                    .any(|e| e.vni == remote.vni && e.addr.addr() == remote.ip)
            })
    }

    /// Checks what the planner relies on; the error names the offending input.
    pub fn validate(&self) -> Result<()> {
        let invalid = |item: String, reason: &str| {
            Err(Error::InvalidSpec {
                item,
                reason: reason.to_owned(),
            })
        };
        if self.data_port == 0 {
            return invalid("data path port 0".into(), "must not be 0");
        }
        if self.gateway.address.prefix_len() > 30 {
            return invalid(
                format!("gateway bridge address {}", self.gateway.address),
                "needs a prefix length of at most 30",
            );
        }
        for (vni, network) in &self.networks {
            if *vni != network.vni {
                return invalid(format!("network {vni}"), "keyed under another vni");
            }
            if network.mtu < 68 {
                return invalid(format!("network {vni} mtu {}", network.mtu), "below 68");
            }
        }
        let mut shorts: BTreeMap<&str, &TaskId> = BTreeMap::new();
        let mut local_ips: BTreeMap<(Vni, Ipv4Addr), &TaskId> = BTreeMap::new();
        let mut egress_ips: BTreeMap<Ipv4Addr, &TaskId> = BTreeMap::new();
        for (id, task) in &self.tasks {
            if *id != task.id {
                return invalid(format!("task {id}"), "keyed under another id");
            }
            if let Some(other) = shorts.insert(id.short(), id) {
                return invalid(
                    format!("task {id}"),
                    &format!("shares its short id {} with task {other}", id.short()),
                );
            }
            let mut ifnames = Vec::new();
            for ep in &task.endpoints {
                let item = || format!("task {id} endpoint {} on vni {}", ep.ifname, ep.vni);
                let Some(network) = self.networks.get(&ep.vni) else {
                    return invalid(item(), "unknown network");
                };
                if ep.ifname.as_str() == "lo" || ep.ifname.as_str() == TASK_GATEWAY_IFNAME {
                    return invalid(item(), "interface name is reserved");
                }
                if ifnames.contains(&&ep.ifname) {
                    return invalid(item(), "interface name used twice");
                }
                ifnames.push(&ep.ifname);
                if !network.gateway.contains(ep.addr.addr())
                    || ep.addr.prefix_len() != network.gateway.prefix_len()
                {
                    return invalid(
                        item(),
                        &format!("address {} not in subnet {}", ep.addr, network.gateway),
                    );
                }
                if ep.addr.addr() == network.gateway.addr() {
                    return invalid(item(), "address is the gateway's");
                }
                if let Some(other) = local_ips.insert((ep.vni, ep.addr.addr()), id) {
                    return invalid(item(), &format!("address also used by task {other}"));
                }
            }
            match (self.needs_egress(task), task.egress) {
                (true, None) => {
                    return invalid(
                        format!("task {id}"),
                        "is on a non-internal network but has no gateway address",
                    );
                }
                (false, Some(_)) => {
                    return invalid(
                        format!("task {id}"),
                        "has a gateway address but no non-internal network",
                    );
                }
                (true, Some(addr)) => {
                    if !self.gateway.address.contains(addr.addr())
                        || addr.prefix_len() != self.gateway.address.prefix_len()
                        || addr.addr() == self.gateway.address.addr()
                    {
                        return invalid(
                            format!("task {id} gateway address {addr}"),
                            &format!("not a host address of {}", self.gateway.address),
                        );
                    }
                    if let Some(other) = egress_ips.insert(addr.addr(), id) {
                        return invalid(
                            format!("task {id} gateway address {addr}"),
                            &format!("also used by task {other}"),
                        );
                    }
                }
                (false, None) => {}
            }
        }
        let mut macs: BTreeMap<(Vni, Mac), Ipv4Addr> = BTreeMap::new();
        for ((vni, ip), remote) in &self.remotes {
            let item = || format!("remote endpoint {ip} on vni {vni}");
            if (remote.vni, remote.ip) != (*vni, *ip) {
                return invalid(item(), "keyed under another address");
            }
            if !self.is_programmed(remote) {
                continue;
            }
            if let Some(network) = self.networks.get(vni)
                && remote.ip == network.gateway.addr()
            {
                return invalid(item(), "address is the gateway's");
            }
            if let Some(other) = macs.insert((*vni, remote.mac), *ip) {
                return invalid(item(), &format!("mac {} also used by {other}", remote.mac));
            }
        }
        Ok(())
    }
}
