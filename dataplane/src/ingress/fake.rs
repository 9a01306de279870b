//! The routing mesh in memory (feature `fake`), on the shared fake kernel ([`FakeNet`]).
//!
//! Each namespace's sysctls, routes, rules and tables of ours are that namespace's [`MeshNs`]
//! part, next to the overlay fake's links: so it refuses what Linux refuses (a sysctl or a
//! route on a link that does not exist, a gateway off the link's subnets, anything in a
//! namespace that does not exist) and forgets what Linux forgets (a route or a per-link sysctl
//! whose link was deleted, even if a link of that name was made again; everything of a
//! removed namespace). `ip_forward` is the overlay fake's, as it is one sysctl of the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::num::NonZeroI32;

use netlink_packet_core::ErrorMessage;

use crate::error::{Error, Result};
use crate::fake::{FakeNet, Parts};
use crate::ingress::RoutingMesh;
use crate::ingress::model::{
    Protocol, Publication, REPLY_TABLE, ReplyRouting, SANDBOX_SNAT_TABLE, Scope, Sysctl,
    is_reply_table, reply_sysctls,
};
use crate::ingress::observed::{
    Observed, ObservedNode, ObservedSandbox, ObservedTask, ReplyTable, Snat, Table, reply_table,
};
use crate::ingress::plan::Op;
use crate::netlink::MAIN_TABLE;
use crate::netns::At;
use crate::overlay::fake::FakeNs;
use crate::types::{IfName, Ipv4Cidr};

/// One of our tables in a fake namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeTable {
    Publish(BTreeSet<Publication>),
    Snat(Snat),
    Reply(ReplyTable),
    /// Something we did not write (a test's drift).
    Other,
}

/// A route, with the serial number of its device (it goes with that very link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRoute {
    pub via: Ipv4Addr,
    pub dev: IfName,
    serial: u64,
}

/// What the routing-mesh fake keeps in one namespace.
#[derive(Clone, Debug, Default)]
pub struct MeshNs {
    /// Sysctls written, with the serial number of the link of a per-link one.
    sysctls: BTreeMap<Sysctl, (String, Option<u64>)>,
    /// Our tables by name.
    pub tables: BTreeMap<String, FakeTable>,
    /// Routes by (table, destination).
    pub routes: BTreeMap<(u32, Option<Ipv4Cidr>), FakeRoute>,
    /// Policy rules at the reply priority: fwmark -> table.
    pub rules: BTreeMap<u32, u32>,
    /// Published ports whose translated flows were flushed, in order.
    pub flushed: Vec<(Protocol, u16)>,
}

/// The serial number of the link `name` of a namespace, if it exists.
fn serial(parts: &Parts, name: &IfName) -> Option<u64> {
    parts.get::<FakeNs>()?.link_serial(name)
}

fn mesh(parts: &Parts) -> MeshNs {
    parts.get::<MeshNs>().cloned().unwrap_or_default()
}

/// The value of `sysctl` in a namespace; `None` if its link does not exist.
fn read_sysctl(parts: &Parts, sysctl: &Sysctl) -> Option<String> {
    if *sysctl == Sysctl::IpForward {
        let on = parts.get::<FakeNs>().is_some_and(|n| n.snapshot.ip_forward);
        return Some(if on { "1" } else { "0" }.to_owned());
    }
    let link_serial = match sysctl.link() {
        Some(link) => Some(serial(parts, link)?),
        None => None,
    };
    match mesh(parts).sysctls.get(sysctl) {
        Some((value, s)) if *s == link_serial => Some(value.clone()),
        _ => Some("0".to_owned()),
    }
}

fn read_sysctls(parts: &Parts, sysctls: &[Sysctl]) -> BTreeMap<Sysctl, String> {
    sysctls
        .iter()
        .filter_map(|s| Some((s.clone(), read_sysctl(parts, s)?)))
        .collect()
}

/// The table `name` as observed, `pick` saying which kind it must be.
fn table<T>(parts: &Parts, name: &str, pick: fn(&FakeTable) -> Option<T>) -> Table<T> {
    match mesh(parts).tables.get(name) {
        None => Table::Absent,
        Some(t) => pick(t).map_or(Table::Other, Table::Ours),
    }
}

/// The routes of a namespace whose device is still the link they were made on.
fn live_routes(parts: &Parts) -> impl Iterator<Item = ((u32, Option<Ipv4Cidr>), FakeRoute)> {
    mesh(parts)
        .routes
        .into_iter()
        .filter(|(_, r)| serial(parts, &r.dev) == Some(r.serial))
}

/// The fake routing mesh: a view of the namespaces of a [`FakeNet`].
#[derive(Clone, Debug, Default)]
pub struct FakeMesh {
    net: FakeNet,
}

impl FakeMesh {
    /// A routing mesh on a kernel of its own.
    pub fn new() -> FakeMesh {
        FakeMesh::default()
    }

    /// A routing mesh on the shared kernel `net` (where the overlay fake makes the links).
    pub fn on(net: FakeNet) -> FakeMesh {
        FakeMesh { net }
    }

    /// The kernel it works on.
    pub fn net(&self) -> &FakeNet {
        &self.net
    }

    /// What the namespace `at` holds of the routing mesh, if it exists.
    pub fn state(&self, at: &At) -> Option<MeshNs> {
        self.net.lock().get(at).map(mesh)
    }

    /// The ports the publication table `table` of the daemon's namespace holds, if it exists.
    pub fn published(&self, table: &str) -> Option<BTreeSet<Publication>> {
        let w = self.net.lock();
        match self::table(w.get(&At::Host)?, table, |t| match t {
            FakeTable::Publish(p) => Some(p.clone()),
            _ => None,
        }) {
            Table::Ours(p) => Some(p),
            _ => None,
        }
    }

    /// The reply routing the task namespace `netns` holds, in the model's terms: its reply
    /// table, and for each sandbox in it a rule and a route via that sandbox's address. `None`
    /// if there is none, or if those disagree.
    pub fn reply_routing(&self, netns: &str) -> Option<ReplyRouting> {
        let w = self.net.lock();
        let parts = w.get(&At::Netns(netns.to_owned()))?;
        let state = mesh(parts);
        let Some(FakeTable::Reply(reply)) = state.tables.get(REPLY_TABLE) else {
            return None;
        };
        let routes: BTreeMap<u32, FakeRoute> = live_routes(parts)
            .filter(|((t, dst), _)| is_reply_table(*t) && dst.is_none())
            .map(|((t, _), r)| (t, r))
            .collect();
        let mut sandboxes = BTreeSet::new();
        for (mac, mark) in &reply.marks {
            let route = routes.get(mark)?;
            if state.rules.get(mark) != Some(mark) || route.dev != reply.iface {
                return None;
            }
            sandboxes.insert((route.via, *mac));
        }
        Some(ReplyRouting {
            iface: reply.iface.clone(),
            sandboxes,
        })
    }
}

impl RoutingMesh for FakeMesh {
    fn observe(&self, scope: &Scope) -> Result<Observed> {
        let w = self.net.lock();
        let host = w
            .get(&At::Host)
            .expect("the daemon's namespace always exists");
        let bridge_serial = serial(host, &scope.bridge);
        let node = ObservedNode {
            publications: table(host, &scope.publish_table, |t| match t {
                FakeTable::Publish(p) => Some(p.clone()),
                _ => None,
            }),
            routes: live_routes(host)
                .filter(|((t, _), r)| *t == MAIN_TABLE && Some(r.serial) == bridge_serial)
                .filter_map(|((_, dst), r)| Some((dst?, r.via)))
                .collect(),
            sysctls: read_sysctls(host, &scope.host_sysctls),
        };
        let sandbox = scope.sandbox.as_ref().and_then(|s| {
            let parts = w.get(&At::Netns(s.netns.clone()))?;
            Some(ObservedSandbox {
                sysctls: read_sysctls(parts, &s.sysctls()),
                snat: table(parts, SANDBOX_SNAT_TABLE, |t| match t {
                    FakeTable::Snat(s) => Some(s.clone()),
                    _ => None,
                }),
            })
        });
        let mut tasks = BTreeMap::new();
        for (netns, iface) in &scope.tasks {
            let Some(parts) = w.get(&At::Netns(netns.clone())) else {
                continue;
            };
            let task = ObservedTask {
                sysctls: read_sysctls(parts, &reply_sysctls(iface)),
                reply: table(parts, REPLY_TABLE, |t| match t {
                    FakeTable::Reply(r) => Some(r.clone()),
                    _ => None,
                }),
                rules: mesh(parts).rules,
                routes: live_routes(parts)
                    .filter(|((t, dst), _)| is_reply_table(*t) && dst.is_none())
                    .map(|((t, _), r)| (t, (r.via, r.dev)))
                    .collect(),
            };
            tasks.insert(netns.clone(), task);
        }
        Ok(Observed {
            node,
            sandbox,
            tasks,
        })
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        let mut w = self.net.lock();
        for op in ops {
            let at = match op {
                Op::SetSysctl { at, .. }
                | Op::ReplaceRoute { at, .. }
                | Op::RemoveRoute { at, .. } => at.clone(),
                Op::ReplacePublishTable { .. }
                | Op::RemovePublishTable { .. }
                | Op::FlushPublished { .. } => At::Host,
                Op::ReplaceSnatTable { netns, .. }
                | Op::ReplaceReplyTable { netns, .. }
                | Op::AddReplyRule { netns, .. }
                | Op::RemoveReplyRule { netns, .. } => At::Netns(netns.clone()),
            };
            let removal = matches!(op, Op::RemoveRoute { .. } | Op::RemoveReplyRule { .. });
            if removal && w.get(&at).is_none() {
                continue;
            }
            let applied = w.require(&at).and_then(|parts| apply_one(parts, &at, op));
            applied.map_err(|source| Error::Apply {
                op: op.to_string(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }
}

/// A refusal of `op` on `dev` as the kernel words it.
fn refused(op: &'static str, dev: &IfName, errno: i32) -> Error {
    let mut msg = ErrorMessage::default();
    msg.code = NonZeroI32::new(-errno);
    Error::Netlink {
        op,
        ifname: dev.to_string(),
        source: rtnetlink::Error::NetlinkError(msg),
    }
}

fn apply_one(parts: &mut Parts, at: &At, op: &Op) -> Result<()> {
    let link_missing = |dev: &IfName| Error::LinkNotFound {
        ifname: dev.to_string(),
        netns: at.to_string(),
    };
    match op {
        Op::SetSysctl { sysctl, .. } => {
            if *sysctl == Sysctl::IpForward {
                parts.get_mut::<FakeNs>().snapshot.ip_forward = true;
                return Ok(());
            }
            let link_serial = match sysctl.link() {
                Some(link) => Some(serial(parts, link).ok_or_else(|| Error::Path {
                    op: "write",
                    path: sysctl.path().into(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                })?),
                None => None,
            };
            parts
                .get_mut::<MeshNs>()
                .sysctls
                .insert(sysctl.clone(), (sysctl.wanted().to_owned(), link_serial));
        }
        Op::ReplaceRoute {
            table,
            dst,
            via,
            dev,
            ..
        } => {
            let link = parts.get::<FakeNs>().and_then(|n| n.link(dev));
            let on_link = link.ok_or_else(|| link_missing(dev))?;
            if !on_link.addrs.iter().any(|a| a.contains(*via)) {
                return Err(refused("replace route via", dev, libc::ENETUNREACH));
            }
            let serial = serial(parts, dev).ok_or_else(|| link_missing(dev))?;
            parts.get_mut::<MeshNs>().routes.insert(
                (*table, *dst),
                FakeRoute {
                    via: *via,
                    dev: dev.clone(),
                    serial,
                },
            );
        }
        Op::RemoveRoute { table, dst, .. } => {
            parts.get_mut::<MeshNs>().routes.remove(&(*table, *dst));
        }
        Op::ReplacePublishTable {
            table,
            publications,
        } => {
            crate::nft::check_table_name(table)?;
            parts.get_mut::<MeshNs>().tables.insert(
                table.clone(),
                FakeTable::Publish(publications.iter().copied().collect()),
            );
        }
        Op::RemovePublishTable { table } => {
            parts.get_mut::<MeshNs>().tables.remove(table);
        }
        Op::FlushPublished { protocol, port } => {
            parts.get_mut::<MeshNs>().flushed.push((*protocol, *port));
        }
        Op::ReplaceSnatTable { from, to, .. } => {
            let snat = Snat {
                from: from.clone(),
                to: to.clone(),
            };
            parts
                .get_mut::<MeshNs>()
                .tables
                .insert(SANDBOX_SNAT_TABLE.to_owned(), FakeTable::Snat(snat));
        }
        Op::ReplaceReplyTable {
            iface, sandboxes, ..
        } => {
            let reply = reply_table(iface.clone(), &sandboxes.iter().copied().collect());
            parts
                .get_mut::<MeshNs>()
                .tables
                .insert(REPLY_TABLE.to_owned(), FakeTable::Reply(reply));
        }
        Op::AddReplyRule { mark, .. } => {
            parts.get_mut::<MeshNs>().rules.insert(*mark, *mark);
        }
        Op::RemoveReplyRule { mark, .. } => {
            parts.get_mut::<MeshNs>().rules.remove(mark);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::conformance::Harness;
    use crate::overlay::fake::FakeDataplane;
    use crate::overlay::{Dataplane, Prefix};

    fn fake_harness() -> Harness<FakeMesh, FakeDataplane> {
        let net = FakeNet::new();
        Harness {
            mesh: FakeMesh::on(net.clone()),
            overlay: FakeDataplane::on(net),
            prefix: Prefix::new("mesh-fake-").expect("valid"),
            underlay_ip: Ipv4Addr::new(10, 250, 0, 1),
            guard: Box::new(()),
        }
    }

    crate::ingress_conformance_tests!(fake_harness);

    #[test]
    fn reply_routing_reads_back_in_the_models_terms_and_goes_with_the_namespace() {
        let net = FakeNet::new();
        let (mesh, overlay) = (FakeMesh::on(net.clone()), FakeDataplane::on(net));
        let netns = "mesh-fake-tt1";
        overlay
            .apply(&[
                crate::overlay::Op::CreateNetworkSandbox {
                    netns: "mesh-fake-n1".into(),
                    gateway: "10.255.0.1/16".parse().unwrap(),
                    mtu: 1400,
                },
                crate::overlay::Op::CreateTaskSandbox {
                    netns: netns.into(),
                },
                crate::overlay::Op::AttachEndpoint {
                    task_netns: netns.into(),
                    ifname: IfName::new("eth1").unwrap(),
                    addr: "10.255.0.5/16".parse().unwrap(),
                    mac: crate::types::Mac::from_ipv4(Ipv4Addr::new(10, 255, 0, 5)),
                    mtu: 1400,
                    network_netns: "mesh-fake-n1".into(),
                    port: IfName::new("vnt1").unwrap(),
                },
            ])
            .unwrap();
        let want = ReplyRouting {
            iface: IfName::new("eth1").unwrap(),
            sandboxes: [Ipv4Addr::new(10, 255, 0, 2)]
                .into_iter()
                .map(|ip| (ip, crate::types::Mac::from_ipv4(ip)))
                .collect(),
        };
        let mut desired = crate::ingress::NodeMesh::new("mesh_ingress", IfName::new("br").unwrap());
        desired.replies.insert(netns.into(), want.clone());
        crate::ingress::reconcile(&mesh, &desired).unwrap();
        assert_eq!(mesh.reply_routing(netns), Some(want));
        assert_eq!(mesh.published("mesh_ingress"), Some(BTreeSet::new()));
        overlay
            .apply(&[crate::overlay::Op::RemoveSandbox {
                netns: netns.into(),
            }])
            .unwrap();
        assert_eq!(mesh.reply_routing(netns), None);
        assert!(mesh.state(&At::Netns(netns.into())).is_none());
    }
}
