//! The worker's part of the routing mesh: this node's [`NodeMesh`] (the ingress sandbox as a
//! router, the node's published ports, reply routing in tasks on the ingress network),
//! recomputed from the assignments and the records. See [`mesh_dataplane::ingress`] for the
//! packet path.
//!
//! What was last applied is kept ([`Applied`]): a restarted agent observes the kernel once and
//! then only writes what changes; a failure makes the next sync observe again. A sandbox or a
//! task namespace that does not exist (yet) is left out until it does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use mesh_dataplane::ingress::{
    self, Applied, IngressRoute, IngressSandbox, LinuxMesh, NodeMesh, Op, Protocol, Publication,
    ReplyRouting,
};
use mesh_dataplane::link::{IfName, Ipv4Cidr};
use mesh_dataplane::netns::{At, Netns};
use mesh_dataplane::overlay::{Mac, TASK_GATEWAY_IFNAME, TaskId};
use mesh_proto::{NetworkAttachment, PortConfig, PortProtocol, PublishMode, Task, TaskState};
use tracing::{info, warn};

use super::{INGRESS_SANDBOX, Worker, parse_mac};

/// The routing mesh as the worker last applied it, and the kernel it applies it to.
#[derive(Default)]
pub(super) struct IngressApplied {
    applied: Applied,
    /// Made on first use, on the daemon's namespace.
    mesh: Option<LinuxMesh>,
}

impl Worker {
    /// The node's nftables table of published ports.
    fn publish_table(&self) -> String {
        format!(
            "{}{}",
            self.desired.gateway.nft_table,
            ingress::PUBLISH_TABLE_SUFFIX
        )
    }

    /// Brings the routing mesh's kernel state to what the assignments and
    /// records say, writing only what differs from what was applied. The
    /// actor calls it when one of its inputs may have changed (a converge,
    /// or records of the ingress network); failures are retried with the
    /// next converge.
    pub(super) fn sync_ingress(&mut self) {
        let desired = self.desired_mesh();
        if let Err(e) = self.apply_mesh(&desired) {
            warn!(error = %e, "cannot program the routing mesh; retrying");
        }
    }

    /// Syncs the kernel to `desired` and logs what changed on the node.
    fn apply_mesh(&mut self, desired: &NodeMesh) -> mesh_dataplane::Result<()> {
        let state = &mut self.ingress_applied;
        let mesh = match &mut state.mesh {
            Some(mesh) => mesh,
            None => state
                .mesh
                .insert(LinuxMesh::new(self.dp.host().try_clone()?)),
        };
        for op in state.applied.sync(mesh, desired)? {
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
        Ok(())
    }

    /// The routing mesh this node should have now.
    fn desired_mesh(&self) -> NodeMesh {
        let mut m = NodeMesh::new(self.publish_table(), self.desired.gateway.bridge.clone());
        if let Some(a) = &self.ingress {
            let sandbox_id = TaskId::new(INGRESS_SANDBOX).expect("valid task id");
            let netns = self.desired.prefix.task_netns(&sandbox_id);
            if let Some(egress) = self.desired.tasks.get(&sandbox_id).and_then(|s| s.egress)
                && Netns::exists(&netns)
            {
                m.sandbox = Some(IngressSandbox {
                    netns,
                    overlay: IfName::new("eth0").expect("short interface name"),
                    gateway: IfName::new(TASK_GATEWAY_IFNAME).expect("short interface name"),
                });
                m.route = self
                    .networks
                    .get(&a.network_id)
                    .and_then(|n| n.subnet.parse::<Ipv4Cidr>().ok())
                    .map(|subnet| IngressRoute {
                        subnet,
                        via: egress.addr(),
                    });
            }
            m.replies = self.wanted_replies(a);
        }
        m.publications = Some(self.wanted_publications(m.route.is_some()));
        m
    }

    /// Every port this node publishes: the routing mesh's ports (to the
    /// service VIP on the ingress network, whichever node runs the tasks)
    /// once the ingress subnet is `routed`, and the host-mode ports of its
    /// own running tasks (to the task).
    fn wanted_publications(&self, routed: bool) -> BTreeSet<Publication> {
        let mut out = Vec::new();
        if let Some(a) = &self.ingress
            && routed
        {
            for ((udp, published), (vip, target)) in self.endpoints.publications(&a.network_id) {
                out.push(Publication {
                    protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                    published,
                    target: SocketAddrV4::new(vip, target),
                });
            }
        }
        for t in self.tasks.values() {
            if t.node_id != self.cfg.node_id || t.desired_state() != TaskState::Running {
                continue;
            }
            if t.status
                .as_ref()
                .is_some_and(|s| s.state() == TaskState::Rejected)
            {
                continue;
            }
            let Some(egress) = TaskId::new(t.id.clone())
                .ok()
                .and_then(|id| self.desired.tasks.get(&id))
                .and_then(|s| s.egress)
            else {
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
        out.sort();
        out.dedup_by_key(|p| (p.protocol, p.published));
        out.into_iter().collect()
    }

    /// Reply routing in every local task attached to the ingress network
    /// whose namespace exists, through every ingress sandbox of the cluster.
    fn wanted_replies(&self, a: &NetworkAttachment) -> BTreeMap<String, ReplyRouting> {
        let sandboxes: BTreeSet<(Ipv4Addr, Mac)> = self
            .endpoints
            .sandboxes(&a.network_id)
            .into_iter()
            .filter_map(|(ip, mac)| Some((ip, parse_mac(&mac)?)))
            .collect();
        let mut out = BTreeMap::new();
        for t in self.tasks.values() {
            if t.node_id != self.cfg.node_id || t.desired_state() != TaskState::Running {
                continue;
            }
            let Some(i) = t.networks.iter().position(|n| n.network_id == a.network_id) else {
                continue;
            };
            let Ok(tid) = TaskId::new(t.id.clone()) else {
                continue;
            };
            let netns = self.desired.prefix.task_netns(&tid);
            if !Netns::exists(&netns) {
                continue;
            }
            out.insert(
                netns,
                ReplyRouting {
                    iface: IfName::new(format!("eth{i}")).expect("short interface name"),
                    sandboxes: sandboxes.clone(),
                },
            );
        }
        out
    }

    /// Why `t` cannot start on this node, if one of its host-mode ports is
    /// taken: published by another task here or the routing mesh, or bound
    /// by a process of the node.
    pub(super) fn host_port_conflict(&self, t: &Task) -> Option<String> {
        let ports: Vec<&PortConfig> = host_ports(t).collect();
        if ports.is_empty() {
            return None;
        }
        let routed = self
            .ingress
            .as_ref()
            .map(|a| self.endpoints.publications(&a.network_id))
            .unwrap_or_default();
        let ours: Vec<(Protocol, u32)> = self
            .tasks
            .values()
            .filter(|o| o.id != t.id && o.node_id == self.cfg.node_id)
            .filter(|o| o.desired_state() == TaskState::Running)
            .flat_map(|o| host_ports(o).map(|p| (protocol_of(p), p.published_port)))
            .collect();
        for p in ports {
            let proto = protocol_of(p);
            let port = u16::try_from(p.published_port).ok()?;
            let mesh_owned = ours.contains(&(proto, p.published_port))
                || routed.contains_key(&(proto == Protocol::Udp, port));
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

    /// Leaving the cluster: the published ports and the route go.
    pub(super) fn tear_down_ingress(&mut self) {
        let mut gone = NodeMesh::new(self.publish_table(), self.desired.gateway.bridge.clone());
        gone.publications = None;
        if let Err(e) = self.apply_mesh(&gone) {
            warn!(error = %e, "cannot remove the published ports and the ingress route");
        }
        self.ingress_applied = IngressApplied::default();
    }
}

/// The host-mode ports a task publishes.
fn host_ports(t: &Task) -> impl Iterator<Item = &PortConfig> {
    t.ports
        .iter()
        .filter(|p| p.publish_mode() == PublishMode::Host)
}

fn protocol_of(p: &PortConfig) -> Protocol {
    match p.protocol() {
        PortProtocol::Udp => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}
