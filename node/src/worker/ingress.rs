//! The worker's part of the routing mesh: this node's [`NodeMesh`] (the ingress sandbox as a
//! router, the node's published ports, reply routing in tasks on the ingress network),
//! derived from the assignments, the endpoint table and the sandboxes. See
//! [`mesh_dataplane::ingress`] for the packet path.
//!
//! What was last applied is kept ([`Applied`]): a restarted agent observes the kernel once and
//! then only writes what changes; a failure makes the next sync observe again. A sandbox or a
//! task namespace that does not exist (yet) is left out until it does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use mesh_common::NetworkId;
use mesh_dataplane::Kernel;
use mesh_dataplane::ingress::{
    self, Applied, IngressRoute, IngressSandbox, NodeMesh, Op, Protocol, Publication, ReplyRouting,
};
use mesh_dataplane::link::{IfName, Ipv4Cidr};
use mesh_dataplane::netns::At;
use mesh_dataplane::overlay::{Mac, TASK_GATEWAY_IFNAME};
use mesh_proto::{PortConfig, PortProtocol, Task, TaskState};
use tracing::{info, warn};

use super::assigned::{Assigned, host_ports};
use super::sandboxes::{INGRESS_SANDBOX, Sandboxes};

/// What the routing mesh is derived from.
pub struct MeshInputs<'a> {
    pub node_id: &'a str,
    /// Ports the cluster uses on this node (control, gossip): never published.
    pub reserved_ports: &'a [u16],
    pub assigned: &'a Assigned,
    pub sandboxes: &'a Sandboxes,
    pub kernel: &'a dyn Kernel,
}

/// The routing mesh as last applied.
#[derive(Default)]
pub struct MeshState {
    applied: Applied,
}

impl MeshState {
    /// Brings the kernel to `desired`, writing only what differs from what was applied, and
    /// logs what changed on the node. Failures are retried at the next sync.
    pub fn sync(&mut self, kernel: &dyn Kernel, desired: &NodeMesh) {
        match self.applied.sync(kernel.routing_mesh(), desired) {
            Ok(ops) => {
                for op in ops {
                    match op {
                        Op::ReplacePublishTable { publications, .. } => {
                            info!(ports = ?publications, "published ports updated");
                        }
                        Op::ReplaceRoute {
                            at: At::Host,
                            dst: Some(subnet),
                            via,
                            ..
                        } => info!(%subnet, %via, "ingress subnet routed to the ingress sandbox"),
                        _ => {}
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot program the routing mesh; retrying"),
        }
    }

    /// Leaving the cluster: the published ports and the route go.
    pub fn tear_down(&mut self, kernel: &dyn Kernel, sandboxes: &Sandboxes) {
        let mut gone = empty_mesh(sandboxes);
        gone.publications = None;
        self.sync(kernel, &gone);
        self.applied = Applied::default();
    }
}

/// The node's nftables table of published ports.
fn publish_table(sandboxes: &Sandboxes) -> String {
    format!(
        "{}{}",
        sandboxes.desired.gateway.nft_table,
        ingress::PUBLISH_TABLE_SUFFIX
    )
}

fn empty_mesh(sandboxes: &Sandboxes) -> NodeMesh {
    NodeMesh::new(
        publish_table(sandboxes),
        sandboxes.desired.gateway.bridge.clone(),
    )
}

/// The routing mesh this node should have now.
pub fn desired_mesh(i: &MeshInputs<'_>) -> NodeMesh {
    let mut m = empty_mesh(i.sandboxes);
    if let Some(a) = &i.assigned.ingress {
        let netns = i.sandboxes.netns(INGRESS_SANDBOX);
        if let (Some(egress), Some(netns)) = (i.sandboxes.egress(INGRESS_SANDBOX), netns)
            && i.kernel.netns_exists(&netns)
        {
            m.sandbox = Some(IngressSandbox {
                netns,
                overlay: IfName::new("eth0").expect("short interface name"),
                gateway: IfName::new(TASK_GATEWAY_IFNAME).expect("short interface name"),
            });
            m.route = i
                .assigned
                .networks
                .get(&a.network_id)
                .and_then(|n| n.subnet.parse::<Ipv4Cidr>().ok())
                .map(|subnet| IngressRoute {
                    subnet,
                    via: egress.addr(),
                });
        }
        m.replies = wanted_replies(i, &NetworkId::new(a.network_id.clone()));
    }
    m.publications = Some(wanted_publications(i, m.route.is_some()));
    m
}

/// Every port this node publishes: the routing mesh's ports (to the service VIP on the
/// ingress network, whichever node runs the tasks) once the ingress subnet is `routed`, and
/// the host-mode ports of its own running tasks (to the task).
fn wanted_publications(i: &MeshInputs<'_>, routed: bool) -> BTreeSet<Publication> {
    let mut out = Vec::new();
    if routed {
        out.extend(routed_publications(i.assigned));
    }
    for t in i.assigned.running_here(i.node_id) {
        if t.status
            .as_ref()
            .is_some_and(|s| s.state() == TaskState::Rejected)
        {
            continue;
        }
        let Some(egress) = i.sandboxes.egress(&t.id) else {
            continue;
        };
        for p in host_ports(t) {
            let (Ok(published), Ok(target)) = (
                u16::try_from(p.published_port),
                u16::try_from(p.target_port),
            ) else {
                continue;
            };
            out.push(Publication {
                protocol: protocol_of(p),
                published,
                target: SocketAddrV4::new(egress.addr(), target),
            });
        }
    }
    // The cluster's own ports are refused when a service is created; this keeps any that
    // slipped through (an older manager, a node joining with a published port) from ever
    // capturing the cluster's traffic.
    out.retain(|p| {
        let reserved =
            i.reserved_ports.contains(&p.published) || p.published == i.assigned.data_port;
        if reserved {
            warn!(
                port = p.published,
                "not publishing a port the cluster uses itself"
            );
        }
        !reserved
    });
    out.sort();
    out.dedup_by_key(|p| (p.protocol, p.published));
    out.into_iter().collect()
}

/// Reply routing in every local task attached to the ingress network whose namespace
/// exists, through every ingress sandbox of the cluster.
fn wanted_replies(i: &MeshInputs<'_>, ingress: &NetworkId) -> BTreeMap<String, ReplyRouting> {
    let sandboxes: BTreeSet<(Ipv4Addr, Mac)> = i
        .assigned
        .ingress_sandboxes(ingress.as_str())
        .into_iter()
        .map(|(addr, mac, _, _)| (addr.addr(), mac))
        .collect();
    let mut out = BTreeMap::new();
    for t in i.assigned.running_here(i.node_id) {
        let Some(idx) = t
            .networks
            .iter()
            .position(|n| n.network_id == ingress.as_str())
        else {
            continue;
        };
        let Some(netns) = i.sandboxes.netns(&t.id) else {
            continue;
        };
        if !i.kernel.netns_exists(&netns) {
            continue;
        }
        out.insert(
            netns,
            ReplyRouting {
                iface: IfName::new(format!("eth{idx}")).expect("short interface name"),
                sandboxes: sandboxes.clone(),
            },
        );
    }
    out
}

/// Why `t` cannot start on this node, if one of its host-mode ports is taken: published by
/// another task here or the routing mesh, or bound by a process of the node.
pub fn host_port_conflict(i: &MeshInputs<'_>, t: &Task) -> Option<String> {
    let ports: Vec<&PortConfig> = host_ports(t).collect();
    if ports.is_empty() {
        return None;
    }
    let routed: BTreeSet<(Protocol, u16)> = routed_publications(i.assigned)
        .map(|p| (p.protocol, p.published))
        .collect();
    let ours: Vec<(Protocol, u32)> = i
        .assigned
        .running_here(i.node_id)
        .filter(|o| o.id != t.id)
        .flat_map(|o| host_ports(o).map(|p| (protocol_of(p), p.published_port)))
        .collect();
    for p in ports {
        let proto = protocol_of(p);
        let port = u16::try_from(p.published_port).ok()?;
        let mesh_owned =
            ours.contains(&(proto, p.published_port)) || routed.contains(&(proto, port));
        let bound = match proto {
            Protocol::Tcp => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_err(),
            Protocol::Udp => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_err(),
        };
        if mesh_owned || bound {
            return Some(format!(
                "host port {port}/{} is already in use on this node",
                proto.as_str()
            ));
        }
    }
    None
}

/// The ports published through the routing mesh, as the store says (to the service's VIP on
/// the ingress network): unusable entries are left out.
fn routed_publications(assigned: &Assigned) -> impl Iterator<Item = Publication> + '_ {
    assigned.routed.iter().filter_map(|r| {
        let vip = r.vip.parse::<ipnet::Ipv4Net>().ok()?.addr();
        Some(Publication {
            protocol: if r.protocol() == PortProtocol::Udp {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            published: u16::try_from(r.published).ok()?,
            target: SocketAddrV4::new(vip, u16::try_from(r.target).ok()?),
        })
    })
}

fn protocol_of(p: &PortConfig) -> Protocol {
    match p.protocol() {
        PortProtocol::Udp => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}
