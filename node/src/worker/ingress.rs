//! The worker's part of the routing mesh: the ingress sandbox as a router,
//! the node's published ports, and reply routing in tasks on the ingress
//! network. See [`mesh_dataplane::ingress`] for the packet path.
//!
//! Everything here is recomputed from the assignments and the records and
//! compared with what was last applied, so a restarted agent (which starts
//! with nothing applied) rewrites it all once and then only follows changes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use mesh_dataplane::ingress::{self, Protocol, Publication};
use mesh_dataplane::link::{IfName, Ipv4Cidr};
use mesh_dataplane::netns::Netns;
use mesh_dataplane::overlay::{Mac, TASK_GATEWAY_IFNAME, TaskId};
use mesh_dataplane::netlink::{MAIN_TABLE, Netlink};
use mesh_proto::{PortConfig, PortProtocol, PublishMode, Task, TaskState};
use tracing::{info, warn};

use super::{INGRESS_SANDBOX, Worker, parse_mac};

/// What the worker last applied for the routing mesh.
#[derive(Default)]
pub(super) struct IngressApplied {
    /// The node's route to the ingress subnet: (subnet, via the sandbox's gateway address).
    route: Option<(Ipv4Cidr, Ipv4Addr)>,
    /// Whether the sandbox was made a router.
    router: bool,
    /// The node's publication table, as last written.
    publications: Option<Vec<Publication>>,
    /// Per local task on the ingress network: the sandboxes its replies may go back to.
    replies: BTreeMap<String, Vec<(Ipv4Addr, Mac)>>,
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
        self.sync_ingress_sandbox();
        let pubs = self.wanted_publications();
        if self.ingress_applied.publications.as_ref() != Some(&pubs) {
            let table = self.publish_table();
            let bridge = &self.desired.gateway.bridge;
            match ingress::apply_publications(self.dp.host(), &table, &pubs, bridge) {
                Ok(()) => {
                    info!(ports = ?pubs, "published ports updated");
                    self.ingress_applied.publications = Some(pubs);
                }
                Err(e) => warn!(error = %e, "cannot program published ports; retrying"),
            }
        }
        self.sync_reply_routing();
    }

    /// Forwarding on in the ingress sandbox and the node's route to the
    /// ingress subnet through it.
    fn sync_ingress_sandbox(&mut self) {
        let Some(a) = self.ingress.clone() else {
            return;
        };
        let sandbox_id = TaskId::new(INGRESS_SANDBOX).expect("valid task id");
        let Some(egress) = self.desired.tasks.get(&sandbox_id).and_then(|s| s.egress) else {
            return;
        };
        let Ok(ns) = Netns::open(&self.desired.prefix.task_netns(&sandbox_id)) else {
            return;
        };
        if !self.ingress_applied.router {
            let overlay = IfName::new("eth0").expect("short interface name");
            let gateway = IfName::new(TASK_GATEWAY_IFNAME).expect("short interface name");
            let routed = ingress::ensure_router(&ns, &[overlay.clone(), gateway.clone()])
                .and_then(|()| ingress::ensure_udp_snat(&ns, &gateway, &overlay));
            match routed {
                Ok(()) => self.ingress_applied.router = true,
                Err(e) => warn!(error = %e, "cannot make the ingress sandbox a router"),
            }
        }
        let Some(subnet) = self
            .networks
            .get(&a.network_id)
            .and_then(|n| n.subnet.parse::<Ipv4Cidr>().ok())
        else {
            return;
        };
        let want = (subnet, egress.addr());
        if self.ingress_applied.route == Some(want) {
            return;
        }
        let bridge = self.desired.gateway.bridge.clone();
        let host = self.dp.host();
        let name = host.name().to_owned();
        let result = host.run_async(async move || {
            let r = Netlink::connect(name)?;
            r.replace_route(MAIN_TABLE, Some(subnet), egress.addr(), &bridge)
                .await
        });
        match result.and_then(|r| r) {
            Ok(()) => {
                info!(%subnet, via = %egress.addr(), "ingress subnet routed to the ingress sandbox");
                self.ingress_applied.route = Some(want);
            }
            Err(e) => warn!(error = %e, "cannot route the ingress subnet; retrying"),
        }
    }

    /// Every port this node publishes: the routing mesh's ports (to the
    /// service VIP on the ingress network, whichever node runs the tasks)
    /// and the host-mode ports of its own running tasks (to the task).
    fn wanted_publications(&self) -> Vec<Publication> {
        let mut out = Vec::new();
        if let Some(a) = &self.ingress
            && self.ingress_applied.route.is_some()
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
        out
    }

    /// Reply routing in every local task attached to the ingress network.
    fn sync_reply_routing(&mut self) {
        let Some(a) = self.ingress.clone() else {
            return;
        };
        let mut sandboxes: Vec<(Ipv4Addr, Mac)> = self
            .endpoints
            .sandboxes(&a.network_id)
            .into_iter()
            .filter_map(|(ip, mac)| Some((ip, parse_mac(&mac)?)))
            .collect();
        sandboxes.sort();
        let mut local: BTreeMap<String, IfName> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.node_id != self.cfg.node_id || t.desired_state() != TaskState::Running {
                continue;
            }
            if let Some(i) = t.networks.iter().position(|n| n.network_id == a.network_id) {
                local.insert(
                    t.id.clone(),
                    IfName::new(format!("eth{i}")).expect("short interface name"),
                );
            }
        }
        self.ingress_applied
            .replies
            .retain(|id, _| local.contains_key(id));
        for (id, iface) in local {
            if self.ingress_applied.replies.get(&id) == Some(&sandboxes) {
                continue;
            }
            let Ok(tid) = TaskId::new(id.clone()) else {
                continue;
            };
            let Ok(ns) = Netns::open(&self.desired.prefix.task_netns(&tid)) else {
                continue;
            };
            match ingress::ensure_reply_routing(&ns, &iface, &sandboxes) {
                Ok(()) => {
                    self.ingress_applied.replies.insert(id, sandboxes.clone());
                }
                Err(e) => warn!(task = %id, error = %e, "cannot program reply routing; retrying"),
            }
        }
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
        let table = self.publish_table();
        if let Err(e) = mesh_dataplane::nft::remove_table(self.dp.host(), &table) {
            warn!(error = %e, "cannot remove the published ports");
        }
        if let Some((subnet, _)) = self.ingress_applied.route.take() {
            let host = self.dp.host();
            let name = host.name().to_owned();
            let result = host.run_async(async move || {
                Netlink::connect(name)?
                    .remove_route(MAIN_TABLE, Some(subnet))
                    .await
            });
            if let Err(e) = result.and_then(|r| r) {
                warn!(error = %e, "cannot remove the ingress route");
            }
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
