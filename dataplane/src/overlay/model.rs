//! The intent model: what one node's overlay data path should look like.
//!
//! [`NodeDataplane`] is the whole desired state of a node: the networks it knows, the task
//! sandboxes it runs, the endpoints other nodes gossiped, and its own settings (underlay
//! address, data-path port, gateway bridge). It is plain data, built by the agent and read by the
//! pure planner. Kernel names (namespaces, links) are derived from it here, in one place, so the
//! planner, the Linux implementation and the fake agree on them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::link::{IfName, Ipv4Cidr};

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
/// A VXLAN device is created under this name followed by its VNI in the daemon's namespace,
/// then moved into its sandbox. One left behind by a crash is recognised and removed.
pub(crate) const VXLAN_STAGING_PREFIX: &str = "mvx";
/// Prefix of the sandbox-side veth of a task endpoint, followed by the task's short id.
const NETWORK_PORT_PREFIX: &str = "vn";
/// Prefix of the daemon-side veth of a task's gateway link, followed by the task's short id.
const GATEWAY_PORT_PREFIX: &str = "vg";

/// A VXLAN network identifier: 1 to 2^24 - 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI (24 bits).
    pub const MAX: u32 = (1 << 24) - 1;

    pub fn new(vni: u32) -> Result<Vni> {
        if vni == 0 || vni > Self::MAX {
            return Err(Error::InvalidSpec {
                item: format!("vni {vni}"),
                reason: "not in 1..=16777215".into(),
            });
        }
        Ok(Vni(vni))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC of an endpoint, derived from its IPv4 address as Docker does: `02:42:` (locally
    /// administered, unicast) followed by the four address bytes. Unique wherever the address is.
    pub fn from_ipv4(ip: Ipv4Addr) -> Mac {
        let [a, b, c, d] = ip.octets();
        Mac([0x02, 0x42, a, b, c, d])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mac> {
        let invalid = || Error::InvalidSpec {
            item: format!("mac {s:?}"),
            reason: "not six ':'-separated hex bytes".into(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Mac(out))
    }
}

impl TryFrom<&[u8]> for Mac {
    type Error = Error;
    fn try_from(bytes: &[u8]) -> Result<Mac> {
        let octets: [u8; 6] = bytes.try_into().map_err(|_| Error::InvalidSpec {
            item: format!("mac {bytes:02x?}"),
            reason: "not 6 bytes".into(),
        })?;
        Ok(Mac(octets))
    }
}

/// The id of a task: 1 to 64 characters among `[A-Za-z0-9_.]` (Swarm's are 25 lower-case
/// alphanumerics). Its first [`TaskId::SHORT_LEN`] characters name its kernel objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// Length of the short id used in namespace and link names (as `docker ps`).
    pub const SHORT_LEN: usize = 12;

    pub fn new(id: impl Into<String>) -> Result<TaskId> {
        let id = id.into();
        let reason = if id.is_empty() || id.len() > 64 {
            "must be 1 to 64 characters"
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            "may hold only letters, digits, '_' and '.'"
        } else {
            return Ok(TaskId(id));
        };
        Err(Error::InvalidSpec {
            item: format!("task id {id:?}"),
            reason: reason.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first [`TaskId::SHORT_LEN`] characters.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(Self::SHORT_LEN)]
    }

    /// The sandbox-side veth of this task's endpoint, inside a network sandbox.
    pub fn network_port(&self) -> IfName {
        port_name(NETWORK_PORT_PREFIX, self.short())
    }

    /// The daemon-side veth of this task's gateway link, on the gateway bridge.
    pub fn gateway_port(&self) -> IfName {
        port_name(GATEWAY_PORT_PREFIX, self.short())
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `prefix` + a short id: at most 2 + 12 bytes of checked characters, so always a valid name.
pub(crate) fn port_name(prefix: &str, short: &str) -> IfName {
    IfName::new(format!("{prefix}{short}")).expect("2-byte prefix + 12 checked chars is an ifname")
}

/// The network sandbox port name for a task whose short id is `short`.
pub(crate) fn network_port_of_short(short: &str) -> IfName {
    port_name(NETWORK_PORT_PREFIX, short)
}

/// The gateway port name for a task whose short id is `short`.
pub(crate) fn gateway_port_of_short(short: &str) -> IfName {
    port_name(GATEWAY_PORT_PREFIX, short)
}

/// The staging name of the VXLAN device of `vni` in the daemon's namespace.
pub(crate) fn vxlan_staging_name(vni: Vni) -> IfName {
    IfName::new(format!("{VXLAN_STAGING_PREFIX}{}", vni.get())).expect("3 + 8 digits is an ifname")
}

/// The prefix of every namespace one daemon owns, unique per daemon on a machine (namespace
/// names under `/run/netns` are machine-wide), e.g. `mesh-ab12cd-`.
///
/// A namespace is ours exactly when its name is the prefix followed by a rest that holds no
/// `-`: so with prefixes `mesh-a-` and `mesh-a-b-` neither daemon ever claims the other's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(String);

/// What a namespace name with our prefix stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedName {
    /// `{prefix}n{vni}`: the sandbox of an overlay network.
    Network(Vni),
    /// `{prefix}t{short task id}`: the sandbox of a task.
    Task(String),
    /// Ours by prefix but of no known shape (left by another version, or by hand).
    Stray,
}

impl Prefix {
    pub fn new(prefix: impl Into<String>) -> Result<Prefix> {
        let prefix = prefix.into();
        let reason = if prefix.len() < 2 || prefix.len() > 64 {
            "must be 2 to 64 characters"
        } else if !prefix.ends_with('-') {
            "must end with '-'"
        } else if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            "may hold only letters, digits, '-', '_' and '.'"
        } else {
            return Ok(Prefix(prefix));
        };
        Err(Error::InvalidSpec {
            item: format!("namespace prefix {prefix:?}"),
            reason: reason.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{prefix}n{vni}`.
    pub fn network_netns(&self, vni: Vni) -> String {
        format!("{}n{}", self.0, vni.get())
    }

    /// `{prefix}t{short id}`.
    pub fn task_netns(&self, id: &TaskId) -> String {
        self.task_netns_of_short(id.short())
    }

    pub(crate) fn task_netns_of_short(&self, short: &str) -> String {
        format!("{}t{}", self.0, short)
    }

    /// `None` if `name` is not ours, else what it stands for.
    pub fn parse(&self, name: &str) -> Option<OwnedName> {
        let rest = name.strip_prefix(self.0.as_str())?;
        if rest.is_empty() || rest.contains('-') {
            return None;
        }
        if let Some(digits) = rest.strip_prefix('n')
            && let Ok(n) = digits.parse::<u32>()
            && n.to_string() == digits
            && let Ok(vni) = Vni::new(n)
        {
            return Some(OwnedName::Network(vni));
        }
        if let Some(short) = rest.strip_prefix('t')
            && TaskId::new(short).is_ok()
            && short.len() <= TaskId::SHORT_LEN
        {
            return Some(OwnedName::Task(short.to_owned()));
        }
        Some(OwnedName::Stray)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
        network_of(self.address)
    }
}

/// The network address of `cidr` (`10.0.1.7/24` -> `10.0.1.0/24`).
pub fn network_of(cidr: Ipv4Cidr) -> Ipv4Cidr {
    Ipv4Cidr::new(
        Ipv4Addr::from(u32::from(cidr.addr()) & mask(cidr.prefix_len())),
        cidr.prefix_len(),
    )
    .expect("same prefix length")
}

/// Whether `addr` is inside `subnet`.
pub fn contains(subnet: Ipv4Cidr, addr: Ipv4Addr) -> bool {
    let m = mask(subnet.prefix_len());
    u32::from(addr) & m == u32::from(subnet.addr()) & m
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
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
                if !contains(network.gateway, ep.addr.addr())
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
                    if !contains(self.gateway.address, addr.addr())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_derived_from_the_address_and_round_trips() {
        let mac = Mac::from_ipv4(Ipv4Addr::new(10, 0, 1, 7));
        assert_eq!(mac.to_string(), "02:42:0a:00:01:07");
        assert_eq!("02:42:0a:00:01:07".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "02:42:0a:00:01",
            "02:42:0a:00:01:07:00",
            "2:42:0a:00:01:07",
            "zz:42:0a:00:01:07",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_derived_and_parsed_back() {
        let p = Prefix::new("mesh-ab12cd-").unwrap();
        let vni = Vni::new(4097).unwrap();
        let task = TaskId::new("abcdefghijklmnopqrstuvwxy").unwrap();
        assert_eq!(p.network_netns(vni), "mesh-ab12cd-n4097");
        assert_eq!(p.task_netns(&task), "mesh-ab12cd-tabcdefghijkl");
        assert_eq!(task.network_port().as_str(), "vnabcdefghijkl");
        assert_eq!(task.gateway_port().as_str(), "vgabcdefghijkl");
        assert_eq!(p.parse("mesh-ab12cd-n4097"), Some(OwnedName::Network(vni)));
        assert_eq!(
            p.parse("mesh-ab12cd-tabcdefghijkl"),
            Some(OwnedName::Task("abcdefghijkl".into()))
        );
        assert_eq!(p.parse("mesh-ab12cd-n04097"), Some(OwnedName::Stray));
        assert_eq!(p.parse("mesh-ab12cd-x"), Some(OwnedName::Stray));
        // Not ours: another prefix, or a longer prefix that merely starts like ours.
        assert_eq!(p.parse("mesh-ab12ce-n4097"), None);
        assert_eq!(p.parse("mesh-ab12cd-other-n4097"), None);
        assert_eq!(p.parse("mesh-ab12cd-"), None);
    }

    #[test]
    fn bad_inputs_are_refused_with_their_name() {
        assert!(Vni::new(0).is_err() && Vni::new(1 << 24).is_err());
        for bad in ["", "a-b", "a/b", &"x".repeat(65)] {
            let err = TaskId::new(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        for bad in ["mesh", "-", "mesh/x-", "mesh x-"] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subnet_arithmetic() {
        let c: Ipv4Cidr = "10.0.1.7/24".parse().unwrap();
        assert_eq!(network_of(c).to_string(), "10.0.1.0/24");
        assert!(contains(c, Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!contains(c, Ipv4Addr::new(10, 0, 2, 1)));
        assert!(contains(
            "0.0.0.0/0".parse().unwrap(),
            Ipv4Addr::new(1, 2, 3, 4)
        ));
    }
}
