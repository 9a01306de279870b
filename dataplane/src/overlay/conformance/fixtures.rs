//! What the cases share: the node they build, remote endpoints, and the checks they repeat.

use std::any::Any;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::overlay::ids::{Prefix, TaskId, Vni};
use crate::overlay::model::{
    GatewayConfig, LocalEndpoint, NetworkSpec, NodeDataplane, RemoteEndpoint, Scope, TaskSandbox,
};
use crate::overlay::observed::{FdbEntry, Observed};
use crate::overlay::op::Op;
use crate::overlay::plan::plan;
use crate::overlay::{Dataplane, GatewayAllocator};
use crate::types::{IfName, Ipv4Cidr, Mac};

/// A dataplane under test and its surroundings.
pub struct Harness<D> {
    pub dp: D,
    /// Our prefix, unique to this harness.
    pub prefix: Prefix,
    /// A prefix (ending in `-`) for namespaces that are not ours, unique to this harness.
    pub foreign: String,
    /// The daemon's underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Dropped after `dp`: cleans up whatever the harness made.
    pub guard: Box<dyn Any>,
}

pub(super) const A: u32 = 4100;
pub(super) const B: u32 = 4200;

pub(super) fn vni(n: u32) -> Vni {
    Vni::new(n).expect("valid vni")
}

pub(super) fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid ifname")
}

pub(super) fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("valid cidr")
}

pub(super) fn task_id(s: &str) -> TaskId {
    TaskId::new(s).expect("valid task id")
}

/// Network A (4100, 10.41.0.0/24) and B (4200, 10.42.0.0/24, internal); tasks `t1aaaa` on A,
/// `t2bbbb` on A and B, `t3cccc` only on B (no egress).
pub(super) fn node<D>(h: &Harness<D>) -> NodeDataplane {
    let mut node = NodeDataplane::new(h.prefix.clone(), h.underlay_ip);
    node.gateway = GatewayConfig::default();
    node.upsert_network(NetworkSpec {
        vni: vni(A),
        gateway: cidr("10.41.0.1/24"),
        mtu: 1400,
        internal: false,
    });
    node.upsert_network(NetworkSpec {
        vni: vni(B),
        gateway: cidr("10.42.0.1/24"),
        mtu: 1400,
        internal: true,
    });
    let mut gw = GatewayAllocator::new(&node.gateway);
    for (id, endpoints) in [
        ("t1aaaa", vec![(A, "eth0", "10.41.0.2/24")]),
        (
            "t2bbbb",
            vec![(A, "eth0", "10.41.0.3/24"), (B, "eth1", "10.42.0.3/24")],
        ),
        ("t3cccc", vec![(B, "eth0", "10.42.0.4/24")]),
    ] {
        let id = task_id(id);
        let mut task = TaskSandbox {
            id: id.clone(),
            endpoints: endpoints
                .into_iter()
                .map(|(v, n, a)| LocalEndpoint::new(vni(v), ifname(n), cidr(a)))
                .collect(),
            egress: None,
        };
        if node.needs_egress(&task) {
            task.egress = Some(gw.allocate(&id).expect("pool has room"));
        }
        node.upsert_task(task);
    }
    node
}

pub(super) fn remote(v: u32, ip: [u8; 4], vtep: [u8; 4]) -> RemoteEndpoint {
    let ip = Ipv4Addr::from(ip);
    RemoteEndpoint {
        vni: vni(v),
        ip,
        mac: Mac::from_ipv4(ip),
        vtep: Ipv4Addr::from(vtep),
    }
}

pub(super) fn observe<D: Dataplane>(h: &Harness<D>, desired: &NodeDataplane) -> Observed {
    h.dp.observe(&desired.scope()).expect("observe")
}

pub(super) fn replan<D: Dataplane>(h: &Harness<D>, desired: &NodeDataplane) -> Vec<Op> {
    plan(desired, &observe(h, desired)).expect("plan")
}

pub(super) fn assert_converged<D: Dataplane>(h: &Harness<D>, desired: &NodeDataplane) {
    let left = replan(h, desired);
    assert!(left.is_empty(), "not converged, still to do: {left:#?}");
}

pub(super) fn fdb_of(o: &Observed, v: u32) -> BTreeSet<FdbEntry> {
    o.networks[&vni(v)].fdb_of("vxlan0")
}

/// Whether a namespace named `{prefix}t{short}` exists, seen by observing `prefix`'s scope.
pub(super) fn task_namespace_exists<D: Dataplane>(
    h: &Harness<D>,
    prefix: &str,
    short: &str,
) -> bool {
    let scope = Scope {
        prefix: Prefix::new(prefix).expect("valid prefix"),
        gateway_bridge: GatewayConfig::default().bridge,
        nft_table: GatewayConfig::default().nft_table,
    };
    h.dp.observe(&scope)
        .expect("observe")
        .tasks
        .contains_key(short)
}
