//! The intent model: the routing-mesh state one node should have.
//!
//! [`NodeMesh`] says it all: the node's publication table, its route of the ingress subnet, its
//! ingress sandbox as a router, and the reply routing of each local task on the ingress
//! network. The sysctls each part needs are listed here, in one place, for the planner, both
//! implementations and what they observe.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::error::{Error, Result};
use crate::nft;
use crate::types::{IfName, Ipv4Cidr, Mac};

/// Suffix of the node's publication table: `<masquerade table>_ingress`.
pub const PUBLISH_TABLE_SUFFIX: &str = "_ingress";
/// Our table in a task's namespace that marks routed connections.
pub const REPLY_TABLE: &str = "mesh_reply";
/// Our table in an ingress sandbox that source-NATs routed UDP.
pub const SANDBOX_SNAT_TABLE: &str = "mesh_snat";
/// Priority of the policy rules that route marked replies (below `main`'s 32766).
pub const REPLY_RULE_PRIORITY: u32 = 20480;
/// Marks and routing tables of reply routing: this bit plus the low 24 bits of the sandbox
/// address, so a sandbox keeps its mark for as long as it keeps its address.
const REPLY_MARK_BASE: u32 = 0x0100_0000;

/// The mark (and routing table id) of replies to connections that came in through the
/// ingress sandbox at `sandbox`.
pub fn reply_mark(sandbox: Ipv4Addr) -> u32 {
    REPLY_MARK_BASE | (u32::from(sandbox) & 0x00ff_ffff)
}

/// Whether `table` is the routing table of some sandbox's replies (see [`reply_mark`]).
pub fn is_reply_table(table: u32) -> bool {
    table & 0xff00_0000 == REPLY_MARK_BASE
}

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as nftables and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port published on the node: connections to any of the node's addresses on
/// `published` go to `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Publication {
    pub protocol: Protocol,
    pub published: u16,
    pub target: SocketAddrV4,
}

/// A sysctl the routing mesh sets, with the one value it wants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sysctl {
    /// `net.ipv4.ip_forward = 1`.
    IpForward,
    /// `net.ipv4.conf.<all or the interface>.rp_filter = 0`: loose source validation.
    RpFilter(Option<IfName>),
    /// `net.ipv4.tcp_fwmark_accept = 1`: an accepted socket carries its SYN's mark.
    TcpFwmarkAccept,
    /// `net.ipv4.conf.<bridge>.route_localnet = 1`: loopback sources may be routed out.
    RouteLocalnet(IfName),
}

impl Sysctl {
    /// Its file under `/proc/sys`.
    pub fn path(&self) -> String {
        let conf = |iface: &str, key: &str| format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
        match self {
            Sysctl::IpForward => "/proc/sys/net/ipv4/ip_forward".into(),
            Sysctl::RpFilter(None) => conf("all", "rp_filter"),
            Sysctl::RpFilter(Some(i)) => conf(i.as_str(), "rp_filter"),
            Sysctl::TcpFwmarkAccept => "/proc/sys/net/ipv4/tcp_fwmark_accept".into(),
            Sysctl::RouteLocalnet(i) => conf(i.as_str(), "route_localnet"),
        }
    }

    /// The value the routing mesh wants.
    pub fn wanted(&self) -> &'static str {
        match self {
            Sysctl::IpForward | Sysctl::TcpFwmarkAccept | Sysctl::RouteLocalnet(_) => "1",
            Sysctl::RpFilter(_) => "0",
        }
    }

    /// The interface it belongs to: it exists only while that interface does.
    pub fn link(&self) -> Option<&IfName> {
        match self {
            Sysctl::RpFilter(Some(i)) | Sysctl::RouteLocalnet(i) => Some(i),
            _ => None,
        }
    }
}

impl fmt::Display for Sysctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
        write!(f, "{key}={}", self.wanted())
    }
}

/// The node's ingress sandbox (a task sandbox with no process) as a router between the
/// gateway bridge and the ingress overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressSandbox {
    pub netns: String,
    /// Its interface on the ingress overlay (`eth0`).
    pub overlay: IfName,
    /// Its interface on the gateway bridge (`gw0`).
    pub gateway: IfName,
}

impl IngressSandbox {
    /// Forwarding on and no strict source validation (clients are routed in by the gateway
    /// bridge and answered the same way), in this order.
    pub fn sysctls(&self) -> Vec<Sysctl> {
        vec![
            Sysctl::IpForward,
            Sysctl::RpFilter(None),
            Sysctl::RpFilter(Some(self.overlay.clone())),
            Sysctl::RpFilter(Some(self.gateway.clone())),
        ]
    }
}

/// The node's route of the ingress subnet, via the ingress sandbox's gateway-bridge address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressRoute {
    pub subnet: Ipv4Cidr,
    pub via: Ipv4Addr,
}

/// Reply routing in one local task on the ingress network: connections entering by `iface`
/// from one of `sandboxes` (address and MAC on the ingress network) are answered through the
/// sandbox they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyRouting {
    pub iface: IfName,
    pub sandboxes: BTreeSet<(Ipv4Addr, Mac)>,
}

impl ReplyRouting {
    /// The sysctls reply routing needs in the task, in this order.
    pub fn sysctls(&self) -> Vec<Sysctl> {
        reply_sysctls(&self.iface)
    }

    /// Each sandbox's mark (also its routing table) and address.
    pub fn marks(&self) -> BTreeMap<u32, Ipv4Addr> {
        self.sandboxes
            .iter()
            .map(|(ip, _)| (reply_mark(*ip), *ip))
            .collect()
    }
}

/// The sysctls of reply routing entering by `iface`: loose source validation (the client is
/// not routed out of `iface` by the main table) and marks carried by accepted sockets.
pub fn reply_sysctls(iface: &IfName) -> Vec<Sysctl> {
    vec![
        Sysctl::RpFilter(None),
        Sysctl::RpFilter(Some(iface.clone())),
        Sysctl::TcpFwmarkAccept,
    ]
}

/// What [`RoutingMesh::observe`](crate::ingress::RoutingMesh::observe) reads: our
/// publication table, the routes out of the gateway bridge and the sysctls of the daemon's
/// namespace, the ingress sandbox, and the reply routing of the listed tasks. Nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub publish_table: String,
    pub bridge: IfName,
    /// The sysctls to read in the daemon's namespace.
    pub host_sysctls: Vec<Sysctl>,
    pub sandbox: Option<IngressSandbox>,
    /// Task namespaces and the interface of each on the ingress network.
    pub tasks: BTreeMap<String, IfName>,
}

/// The whole desired routing-mesh state of one node.
///
/// A sandbox or a task that leaves the model is forgotten, not cleaned: what the routing mesh
/// set in it lives in its namespace, which the overlay removes; until then a draining task
/// keeps answering the connections routed to it. The node's own objects (the publication
/// table and the routes out of the gateway bridge) follow the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMesh {
    /// Our table (family `ip`) of published ports in the daemon's namespace.
    pub publish_table: String,
    /// The gateway bridge: where every DNAT target is routed.
    pub bridge: IfName,
    /// The published ports; `None`: no publication table at all (the node left the cluster).
    /// An empty set keeps an empty table, so "nothing published" is observable too.
    pub publications: Option<BTreeSet<Publication>>,
    pub route: Option<IngressRoute>,
    pub sandbox: Option<IngressSandbox>,
    /// Reply routing by task namespace.
    pub replies: BTreeMap<String, ReplyRouting>,
}

impl NodeMesh {
    /// A node that publishes nothing (an empty table) and routes nothing.
    pub fn new(publish_table: impl Into<String>, bridge: IfName) -> NodeMesh {
        NodeMesh {
            publish_table: publish_table.into(),
            bridge,
            publications: Some(BTreeSet::new()),
            route: None,
            sandbox: None,
            replies: BTreeMap::new(),
        }
    }

    /// The sysctls the daemon's namespace needs: `route_localnet` on the bridge while
    /// something is published, so published ports answer on 127.0.0.1 too. It is never turned
    /// off again (the bridge takes it along when it goes).
    pub fn host_sysctls(&self) -> Vec<Sysctl> {
        match &self.publications {
            Some(p) if !p.is_empty() => vec![Sysctl::RouteLocalnet(self.bridge.clone())],
            _ => Vec::new(),
        }
    }

    /// What must be observed to plan this state.
    pub fn scope(&self) -> Scope {
        Scope {
            publish_table: self.publish_table.clone(),
            bridge: self.bridge.clone(),
            host_sysctls: self.host_sysctls(),
            sandbox: self.sandbox.clone(),
            tasks: self
                .replies
                .iter()
                .map(|(ns, r)| (ns.clone(), r.iface.clone()))
                .collect(),
        }
    }

    /// Checks what the planner and the kernel rely on; the error names the offending input.
    pub fn validate(&self) -> Result<()> {
        let invalid = |item: String, reason: &str| {
            Err(Error::InvalidSpec {
                item,
                reason: reason.to_owned(),
            })
        };
        nft::check_table_name(&self.publish_table)?;
        let mut ports = BTreeSet::new();
        for p in self.publications.iter().flatten() {
            if !ports.insert((p.protocol, p.published)) {
                return invalid(
                    format!("published port {}/{}", p.protocol.as_str(), p.published),
                    "published twice",
                );
            }
        }
        for (netns, reply) in &self.replies {
            let (mut marks, mut macs) = (BTreeSet::new(), BTreeSet::new());
            for (ip, mac) in &reply.sandboxes {
                let item = || format!("reply routing of {netns}: sandbox {ip} {mac}");
                if !marks.insert(reply_mark(*ip)) {
                    return invalid(item(), "shares its mark with another sandbox");
                }
                if !macs.insert(*mac) {
                    return invalid(item(), "shares its mac with another sandbox");
                }
            }
        }
        Ok(())
    }
}
