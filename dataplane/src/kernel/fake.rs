//! The kernel in memory (feature `fake`): the overlay, load-balancer and routing-mesh fakes on
//! one shared [`FakeNet`], so they see the same namespaces and links (the load balancer of a
//! namespace the overlay has not made fails as on Linux; a removed sandbox takes its load
//! balancer and reply routing along), and accessors to inspect what the agent did.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::error::Result;
use crate::fake::FakeNet;
use crate::ingress::fake::FakeMesh;
use crate::ingress::{Publication, ReplyRouting, RoutingMesh};
use crate::kernel::Kernel;
use crate::lb::fake::FakeLb;
use crate::lb::{LbTable, LoadBalancer};
use crate::netns::At;
use crate::overlay::fake::FakeDataplane;
use crate::overlay::{Dataplane, FdbEntry, VXLAN_IFNAME};
use crate::types::{IfName, Ipv4Cidr, Mac};

/// One node's kernel in memory; clones share it.
#[derive(Clone, Debug)]
pub struct FakeKernel {
    net: FakeNet,
    overlay: FakeDataplane,
    lb: FakeLb,
    mesh: FakeMesh,
}

impl Default for FakeKernel {
    fn default() -> FakeKernel {
        FakeKernel::new()
    }
}

impl FakeKernel {
    /// A kernel with only the daemon's namespace (and its loopback).
    pub fn new() -> FakeKernel {
        let net = FakeNet::new();
        FakeKernel {
            overlay: FakeDataplane::on(net.clone()),
            lb: FakeLb::on(net.clone()),
            mesh: FakeMesh::on(net.clone()),
            net,
        }
    }

    /// The same kernel with an underlay interface `ul0` holding `addr`, of MTU `mtu` (what
    /// [`Kernel::overlay_mtu`] reads).
    pub fn with_underlay(self, addr: Ipv4Cidr, mtu: u32) -> Result<FakeKernel> {
        let ul0 = IfName::new("ul0").expect("constant interface names are valid");
        self.overlay.add_host_link(ul0, addr, mtu)?;
        Ok(self)
    }

    /// The shared in-memory kernel, to inspect or to change behind the agent's back.
    pub fn net(&self) -> &FakeNet {
        &self.net
    }

    /// The overlay fake, with its own inspectors ([`FakeDataplane::snapshot`],
    /// [`FakeDataplane::applied`]).
    pub fn overlay_fake(&self) -> &FakeDataplane {
        &self.overlay
    }

    /// The load-balancer fake ([`FakeLb::add_flow`] puts traffic into conntrack).
    pub fn lb_fake(&self) -> &FakeLb {
        &self.lb
    }

    /// The routing-mesh fake.
    pub fn mesh_fake(&self) -> &FakeMesh {
        &self.mesh
    }

    /// The names of the named namespaces, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        self.net.lock().names()
    }

    /// The services of the load balancer of `netns`, if the namespace exists.
    pub fn lb_table(&self, netns: &str) -> Option<LbTable> {
        self.lb.table(netns)
    }

    /// The conntrack flushes asked of the load balancer of `netns`, in order (the backends of
    /// each); empty if the namespace does not exist.
    pub fn conntrack_flushes(&self, netns: &str) -> Vec<BTreeSet<Ipv4Addr>> {
        self.lb.state(netns).map(|s| s.flushes).unwrap_or_default()
    }

    /// The FDB entries of the VXLAN device of the network sandbox `netns`.
    pub fn fdb(&self, netns: &str) -> BTreeSet<FdbEntry> {
        self.overlay
            .snapshot(&At::Netns(netns.to_owned()))
            .map(|s| s.fdb_of(VXLAN_IFNAME))
            .unwrap_or_default()
    }

    /// The neighbor entries of the VXLAN device of the network sandbox `netns`.
    pub fn neighbors(&self, netns: &str) -> BTreeMap<Ipv4Addr, Mac> {
        self.overlay
            .snapshot(&At::Netns(netns.to_owned()))
            .map(|s| s.neighbors_of(VXLAN_IFNAME))
            .unwrap_or_default()
    }

    /// The ports the node's publication table `table` holds, if it exists.
    pub fn published(&self, table: &str) -> Option<BTreeSet<Publication>> {
        self.mesh.published(table)
    }

    /// The reply routing of the task namespace `netns`, if it has a consistent one.
    pub fn reply_routing(&self, netns: &str) -> Option<ReplyRouting> {
        self.mesh.reply_routing(netns)
    }
}

impl Kernel for FakeKernel {
    fn overlay(&self) -> &dyn Dataplane {
        &self.overlay
    }

    fn overlay_mtu(&self, underlay_ip: Ipv4Addr, wanted: Option<u32>) -> Result<u32> {
        self.overlay.overlay_mtu(underlay_ip, wanted)
    }

    fn lb(&self) -> &dyn LoadBalancer {
        &self.lb
    }

    fn routing_mesh(&self) -> &dyn RoutingMesh {
        &self.mesh
    }

    fn netns_exists(&self, name: &str) -> bool {
        self.net.lock().exists(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::{self, NodeMesh};
    use crate::lb::{LbChange, LbService};
    use crate::overlay::{
        self, GatewayAllocator, LocalEndpoint, NetworkSpec, NodeDataplane, Prefix, RemoteEndpoint,
        TaskId, TaskSandbox, Vni,
    };

    const UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

    /// One network (4100) and task `t1` on it, with egress.
    fn node() -> NodeDataplane {
        let mut d = NodeDataplane::new(Prefix::new("mesh-k-").unwrap(), UNDERLAY);
        let vni = Vni::new(4100).unwrap();
        d.upsert_network(NetworkSpec {
            vni,
            gateway: "10.41.0.1/24".parse().unwrap(),
            mtu: 1450,
            internal: false,
        });
        let id = TaskId::new("t1").unwrap();
        let egress = GatewayAllocator::new(&d.gateway).allocate(&id).unwrap();
        d.upsert_task(TaskSandbox {
            id,
            endpoints: vec![LocalEndpoint::new(
                vni,
                IfName::new("eth0").unwrap(),
                "10.41.0.2/24".parse().unwrap(),
            )],
            egress: Some(egress),
        });
        d
    }

    #[test]
    fn the_parts_share_one_kernel() {
        // Used the way the agent does: behind the trait object.
        let fake = FakeKernel::new()
            .with_underlay("10.250.0.1/24".parse().unwrap(), 1500)
            .unwrap();
        let k: Box<dyn Kernel + Send + Sync> = Box::new(fake.clone());
        assert_eq!(k.overlay_mtu(UNDERLAY, None).unwrap(), 1450);
        assert_eq!(k.overlay_mtu(UNDERLAY, Some(1400)).unwrap(), 1400);
        assert!(k.overlay_mtu(Ipv4Addr::new(10, 9, 9, 9), None).is_err());

        let mut desired = node();
        let t1 = desired.prefix.task_netns(&TaskId::new("t1").unwrap());
        let service = LbService::new(Ipv4Addr::new(10, 41, 0, 100), [Ipv4Addr::new(10, 41, 0, 2)]);
        // No sandbox yet: its load balancer fails as on Linux.
        let err = k
            .lb()
            .apply(&t1, &[LbChange::Upsert(service.clone())])
            .unwrap_err();
        assert!(err.is_missing_netns(), "{err}");
        assert!(!k.netns_exists(&t1));

        overlay::reconcile(k.overlay(), &desired).unwrap();
        assert!(k.netns_exists(&t1));
        k.lb()
            .apply(&t1, &[LbChange::Upsert(service.clone())])
            .unwrap();
        assert_eq!(fake.lb_table(&t1), Some([service].into_iter().collect()));
        let gone = [Ipv4Addr::new(10, 41, 0, 2)].into();
        k.lb().flush_conntrack(&t1, &gone).unwrap();
        assert_eq!(fake.conntrack_flushes(&t1), vec![gone]);

        let remote = RemoteEndpoint {
            vni: Vni::new(4100).unwrap(),
            ip: Ipv4Addr::new(10, 41, 0, 20),
            mac: Mac::from_ipv4(Ipv4Addr::new(10, 41, 0, 20)),
            vtep: Ipv4Addr::new(10, 250, 0, 2),
        };
        overlay::ensure_remote(k.overlay(), &mut desired, remote).unwrap();
        let net = desired.prefix.network_netns(remote.vni);
        assert_eq!(
            fake.fdb(&net),
            [FdbEntry {
                mac: remote.mac,
                vtep: remote.vtep
            }]
            .into()
        );
        assert_eq!(fake.neighbors(&net), [(remote.ip, remote.mac)].into());

        let mut mesh = NodeMesh::new("mesh_ingress", desired.gateway.bridge.clone());
        mesh.replies.insert(
            t1.clone(),
            ReplyRouting {
                iface: IfName::new("eth0").unwrap(),
                sandboxes: [(
                    Ipv4Addr::new(10, 41, 0, 9),
                    Mac::from_ipv4(Ipv4Addr::new(10, 41, 0, 9)),
                )]
                .into(),
            },
        );
        let mut applied = ingress::Applied::new();
        applied.sync(k.routing_mesh(), &mesh).unwrap();
        assert_eq!(fake.published("mesh_ingress"), Some(BTreeSet::new()));
        assert_eq!(fake.reply_routing(&t1), mesh.replies.get(&t1).cloned());

        // The task goes: its load balancer and reply routing go with its namespace.
        desired.tasks.clear();
        overlay::reconcile(k.overlay(), &desired).unwrap();
        assert!(!fake.namespaces().contains(&t1));
        assert_eq!((fake.lb_table(&t1), fake.reply_routing(&t1)), (None, None));
    }
}
