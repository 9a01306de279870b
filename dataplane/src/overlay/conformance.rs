//! The conformance suite: one set of cases that every [`Dataplane`] must pass, run against the
//! fake and against Linux (inside fresh namespaces).
//!
//! Each case takes a fresh [`Harness`] and says in its name what it proves. Use
//! [`overlay_conformance_tests!`](crate::overlay_conformance_tests) to get one `#[test]` per
//! case for a harness factory. The cases use only the [`Dataplane`] trait: stale and foreign
//! objects are made with [`Op`]s, and foreign namespaces are seen by observing another scope.

use std::any::Any;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::link::{IfName, Ipv4Cidr};
use crate::overlay::model::{
    GatewayConfig, LocalEndpoint, Mac, NetworkSpec, NodeDataplane, Prefix, RemoteEndpoint, Scope,
    TaskId, TaskSandbox, Vni,
};
use crate::overlay::observed::{FdbEntry, LinkKind, Observed};
use crate::overlay::plan::{At, Op, plan};
use crate::overlay::{Dataplane, GatewayAllocator, ensure_remote, reconcile, remove_remote};

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

/// One `#[test]` per conformance case, each with a fresh harness from `$factory()`.
#[macro_export]
macro_rules! overlay_conformance_tests {
    ($factory:path) => {
        $crate::overlay_conformance_tests!(@cases $factory;
            builds_network_and_task_sandboxes,
            replan_of_a_converged_node_is_empty,
            remotes_follow_the_desired_state,
            incremental_remote_updates_match_a_reconcile,
            remote_on_a_network_without_local_endpoints_is_not_programmed,
            stale_items_with_our_prefix_are_removed,
            foreign_namespaces_are_untouched,
            last_endpoint_leaving_removes_the_network_sandbox,
            drift_is_repaired_with_minimal_ops,
            restarted_agent_keeps_running_tasks,
            vxlan_with_a_wrong_config_is_recreated_with_its_entries
        );
    };
    (@cases $factory:path; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::overlay::conformance::$case($factory());
            }
        )*
    };
}

const A: u32 = 4100;
const B: u32 = 4200;

fn vni(n: u32) -> Vni {
    Vni::new(n).expect("valid vni")
}

fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid ifname")
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("valid cidr")
}

fn task_id(s: &str) -> TaskId {
    TaskId::new(s).expect("valid task id")
}

/// Network A (4100, 10.41.0.0/24) and B (4200, 10.42.0.0/24, internal); tasks `t1aaaa` on A,
/// `t2bbbb` on A and B, `t3cccc` only on B (no egress).
fn node<D>(h: &Harness<D>) -> NodeDataplane {
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

fn remote(v: u32, ip: [u8; 4], vtep: [u8; 4]) -> RemoteEndpoint {
    let ip = Ipv4Addr::from(ip);
    RemoteEndpoint {
        vni: vni(v),
        ip,
        mac: Mac::from_ipv4(ip),
        vtep: Ipv4Addr::from(vtep),
    }
}

fn observe<D: Dataplane>(h: &Harness<D>, desired: &NodeDataplane) -> Observed {
    h.dp.observe(&desired.scope()).expect("observe")
}

fn replan<D: Dataplane>(h: &Harness<D>, desired: &NodeDataplane) -> Vec<Op> {
    plan(desired, &observe(h, desired)).expect("plan")
}

fn assert_converged<D: Dataplane>(h: &Harness<D>, desired: &NodeDataplane) {
    let left = replan(h, desired);
    assert!(left.is_empty(), "not converged, still to do: {left:#?}");
}

fn fdb_of(o: &Observed, v: u32) -> BTreeSet<FdbEntry> {
    o.networks[&vni(v)].fdb_of("vxlan0")
}

/// Whether a namespace named `{prefix}t{short}` exists, seen by observing `prefix`'s scope.
fn task_namespace_exists<D: Dataplane>(h: &Harness<D>, prefix: &str, short: &str) -> bool {
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

pub fn builds_network_and_task_sandboxes<D: Dataplane>(h: Harness<D>) {
    let desired = node(&h);
    reconcile(&h.dp, &desired).expect("reconcile");
    let o = observe(&h, &desired);

    assert_eq!(
        o.networks.keys().copied().collect::<Vec<_>>(),
        vec![vni(A), vni(B)]
    );
    for (v, gateway, ports) in [
        (A, "10.41.0.1/24", ["vnt1aaaa", "vnt2bbbb"]),
        (B, "10.42.0.1/24", ["vnt2bbbb", "vnt3cccc"]),
    ] {
        let net = &o.networks[&vni(v)];
        let br = net.link("br0").expect("br0");
        assert_eq!(
            (br.kind, br.mtu, br.up, br.addrs.clone()),
            (LinkKind::Bridge, 1400, true, vec![cidr(gateway)])
        );
        let vx = net.link("vxlan0").expect("vxlan0");
        let config = vx.vxlan.expect("vxlan config");
        assert_eq!(
            (
                config.vni,
                config.port,
                config.local,
                config.learning,
                config.proxy
            ),
            (vni(v), 4789, Some(h.underlay_ip), false, true)
        );
        assert_eq!(
            (vx.mtu, vx.up, vx.controller.clone()),
            (1400, true, Some(ifname("br0")))
        );
        for port in ports {
            let p = net.link(port).unwrap_or_else(|| panic!("port {port}"));
            assert_eq!(
                (p.kind, p.mtu, p.up, p.controller.clone()),
                (LinkKind::Veth, 1400, true, Some(ifname("br0")))
            );
        }
        // No FDB entry at all: in particular no all-zeros flood entry.
        assert!(net.fdb_of("vxlan0").is_empty());
    }

    let t1 = &o.tasks["t1aaaa"];
    assert!(t1.link("lo").expect("lo").up);
    let eth0 = t1.link("eth0").expect("eth0");
    assert_eq!(
        (eth0.kind, eth0.mtu, eth0.up, eth0.mac, eth0.addrs.clone()),
        (
            LinkKind::Veth,
            1400,
            true,
            Some("02:42:0a:29:00:02".parse().expect("mac")),
            vec![cidr("10.41.0.2/24")]
        )
    );
    let gw0 = t1.link("gw0").expect("gw0");
    assert_eq!(
        (gw0.mtu, gw0.addrs.clone()),
        (1500, vec![cidr("172.30.0.2/16")])
    );
    assert_eq!(t1.default_gateway, Some(Ipv4Addr::new(172, 30, 0, 1)));
    let t2 = &o.tasks["t2bbbb"];
    assert_eq!(
        t2.link("eth1").expect("eth1").addrs,
        vec![cidr("10.42.0.3/24")]
    );
    assert!(t2.link("gw0").is_some());
    let t3 = &o.tasks["t3cccc"];
    assert!(
        t3.link("gw0").is_none(),
        "internal-only task has no gateway link"
    );
    assert_eq!(
        t3.default_gateway, None,
        "internal-only task has no default route"
    );

    let host = &o.host;
    let bridge = host.gateway_bridge.as_ref().expect("gateway bridge");
    assert_eq!(
        (bridge.up, bridge.addrs.clone()),
        (true, vec![cidr("172.30.0.1/16")])
    );
    assert_eq!(
        host.gateway_ports
            .keys()
            .map(|n| n.as_str())
            .collect::<Vec<_>>(),
        ["vgt1aaaa", "vgt2bbbb"]
    );
    assert!(host.gateway_ports.values().all(|p| p.isolated && p.up));
    assert!(host.ip_forward);
    let masquerade = host.masquerade.as_ref().expect("masquerade rule");
    assert_eq!(masquerade.source, cidr("172.30.0.0/16"));
    assert!(host.staging_vxlans.is_empty());
    assert_converged(&h, &desired);
}

pub fn replan_of_a_converged_node_is_empty<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    desired.upsert_remote(remote(A, [10, 41, 0, 20], [10, 250, 0, 2]));
    let first = reconcile(&h.dp, &desired).expect("reconcile");
    assert!(!first.is_empty());
    let before = observe(&h, &desired);
    assert_eq!(reconcile(&h.dp, &desired).expect("reconcile"), vec![]);
    assert_eq!(reconcile(&h.dp, &desired).expect("reconcile"), vec![]);
    assert_eq!(
        observe(&h, &desired),
        before,
        "an empty plan changes nothing"
    );
}

pub fn remotes_follow_the_desired_state<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    let r1 = remote(A, [10, 41, 0, 20], [10, 250, 0, 2]);
    let r2 = remote(A, [10, 41, 0, 21], [10, 250, 0, 3]);
    let r3 = remote(B, [10, 42, 0, 20], [10, 250, 0, 2]);
    for r in [r1, r2, r3] {
        desired.upsert_remote(r);
    }
    reconcile(&h.dp, &desired).expect("reconcile");
    let o = observe(&h, &desired);
    assert_eq!(
        fdb_of(&o, A),
        BTreeSet::from([
            FdbEntry {
                mac: r1.mac,
                vtep: r1.vtep
            },
            FdbEntry {
                mac: r2.mac,
                vtep: r2.vtep
            }
        ])
    );
    let neighbors = o.networks[&vni(A)].neighbors_of("vxlan0");
    assert_eq!(neighbors.get(&r1.ip), Some(&r1.mac));
    assert_eq!(neighbors.get(&r2.ip), Some(&r2.mac));
    assert_eq!(
        o.networks[&vni(B)].neighbors_of("vxlan0").get(&r3.ip),
        Some(&r3.mac)
    );

    desired.remove_remote(r1.vni, r1.ip);
    let ops = reconcile(&h.dp, &desired).expect("reconcile");
    let netns = desired.prefix.network_netns(vni(A));
    assert_eq!(
        ops,
        vec![
            Op::RemoveFdb {
                netns: netns.clone(),
                mac: r1.mac,
                vtep: r1.vtep
            },
            Op::RemoveNeighbor { netns, ip: r1.ip },
        ]
    );
    let o = observe(&h, &desired);
    assert_eq!(fdb_of(&o, A).len(), 1);
    assert!(
        !o.networks[&vni(A)]
            .neighbors_of("vxlan0")
            .contains_key(&r1.ip)
    );
    assert_converged(&h, &desired);
}

pub fn incremental_remote_updates_match_a_reconcile<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    reconcile(&h.dp, &desired).expect("reconcile");
    let r = remote(A, [10, 41, 0, 30], [10, 250, 0, 2]);
    ensure_remote(&h.dp, &mut desired, r).expect("ensure");
    assert_converged(&h, &desired);
    assert!(fdb_of(&observe(&h, &desired), A).contains(&FdbEntry {
        mac: r.mac,
        vtep: r.vtep
    }));

    // The endpoint's address moves to a task on another node: same IP, new VTEP.
    let moved = RemoteEndpoint {
        vtep: Ipv4Addr::new(10, 250, 0, 9),
        ..r
    };
    ensure_remote(&h.dp, &mut desired, moved).expect("ensure moved");
    assert_converged(&h, &desired);
    assert_eq!(
        fdb_of(&observe(&h, &desired), A),
        BTreeSet::from([FdbEntry {
            mac: moved.mac,
            vtep: moved.vtep
        }])
    );

    // Repeating an event is harmless.
    ensure_remote(&h.dp, &mut desired, moved).expect("ensure again");
    remove_remote(&h.dp, &mut desired, moved.vni, moved.ip).expect("remove");
    remove_remote(&h.dp, &mut desired, moved.vni, moved.ip).expect("remove again");
    assert_converged(&h, &desired);
    let o = observe(&h, &desired);
    assert!(fdb_of(&o, A).is_empty());
    assert!(o.networks[&vni(A)].neighbors_of("vxlan0").is_empty());

    // A record whose MAC clashes with another endpoint's is refused, and nothing changes.
    let first = remote(A, [10, 41, 0, 40], [10, 250, 0, 2]);
    ensure_remote(&h.dp, &mut desired, first).expect("ensure");
    let clash = RemoteEndpoint {
        ip: Ipv4Addr::new(10, 41, 0, 41),
        ..first
    };
    assert!(ensure_remote(&h.dp, &mut desired, clash).is_err());
    assert!(!desired.remotes.contains_key(&(clash.vni, clash.ip)));
    assert_converged(&h, &desired);
}

pub fn remote_on_a_network_without_local_endpoints_is_not_programmed<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    desired.upsert_network(NetworkSpec {
        vni: vni(4300),
        gateway: cidr("10.43.0.1/24"),
        mtu: 1400,
        internal: false,
    });
    reconcile(&h.dp, &desired).expect("reconcile");
    ensure_remote(
        &h.dp,
        &mut desired,
        remote(4300, [10, 43, 0, 5], [10, 250, 0, 2]),
    )
    .expect("ensure");
    // And a record for a network this node has never heard of.
    ensure_remote(
        &h.dp,
        &mut desired,
        remote(4400, [10, 44, 0, 5], [10, 250, 0, 2]),
    )
    .expect("ensure");
    let o = observe(&h, &desired);
    assert!(!o.networks.contains_key(&vni(4300)));
    assert!(!o.networks.contains_key(&vni(4400)));
    assert_converged(&h, &desired);
}

pub fn stale_items_with_our_prefix_are_removed<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    let r = remote(A, [10, 41, 0, 20], [10, 250, 0, 2]);
    desired.upsert_remote(r);
    reconcile(&h.dp, &desired).expect("reconcile");

    let p = &desired.prefix;
    let net_a = p.network_netns(vni(A));
    let t1 = p.task_netns(&task_id("t1aaaa"));
    let stale_task = p.task_netns(&task_id("gone99"));
    let stale_net = p.network_netns(vni(4999));
    let stray = format!("{}x", p.as_str());
    let stale_mac = Mac::from_ipv4(Ipv4Addr::new(10, 41, 0, 99));
    h.dp.apply(&[
        Op::CreateTaskSandbox {
            netns: stale_task.clone(),
        },
        Op::CreateNetworkSandbox {
            netns: stale_net.clone(),
            gateway: cidr("10.49.0.1/24"),
            mtu: 1400,
        },
        Op::CreateVxlan {
            netns: stale_net.clone(),
            vxlan: crate::overlay::VxlanSpec {
                vni: vni(4999),
                port: 4789,
                local: h.underlay_ip,
                mtu: 1400,
            },
        },
        // The stale task is attached to a live network and to the gateway bridge.
        Op::AttachEndpoint {
            task_netns: stale_task.clone(),
            ifname: ifname("eth0"),
            addr: cidr("10.41.0.99/24"),
            mac: stale_mac,
            mtu: 1400,
            network_netns: net_a.clone(),
            port: ifname("vngone99"),
        },
        Op::AttachGateway {
            task_netns: stale_task.clone(),
            addr: cidr("172.30.0.99/16"),
            mac: Mac::from_ipv4(Ipv4Addr::new(172, 30, 0, 99)),
            mtu: 1500,
            port: ifname("vggone99"),
            bridge: desired.gateway.bridge.clone(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
        },
        Op::CreateTaskSandbox {
            netns: stray.clone(),
        },
        Op::AddFdb {
            netns: net_a.clone(),
            mac: stale_mac,
            vtep: Ipv4Addr::new(10, 250, 0, 7),
        },
        Op::AddNeighbor {
            netns: net_a.clone(),
            ip: Ipv4Addr::new(10, 41, 0, 99),
            mac: stale_mac,
        },
        // An extra link in a live task, wired into network A.
        Op::AttachEndpoint {
            task_netns: t1.clone(),
            ifname: ifname("eth7"),
            addr: cidr("10.41.0.77/24"),
            mac: Mac::from_ipv4(Ipv4Addr::new(10, 41, 0, 77)),
            mtu: 1400,
            network_netns: net_a.clone(),
            port: ifname("vnextra"),
        },
    ])
    .expect("inject stale items");

    let ops = reconcile(&h.dp, &desired).expect("reconcile");
    // Only stale things are named: removals, nothing created, nothing of t2/t3 or B touched.
    assert!(
        ops.iter().all(|op| matches!(
            op,
            Op::RemoveSandbox { .. }
                | Op::RemoveLink { .. }
                | Op::RemoveFdb { .. }
                | Op::RemoveNeighbor { .. }
        )),
        "{ops:#?}"
    );
    assert!(
        ops.contains(&Op::RemoveSandbox {
            netns: stale_task.clone()
        }) && ops.contains(&Op::RemoveSandbox {
            netns: stale_net.clone()
        }) && ops.contains(&Op::RemoveSandbox {
            netns: stray.clone()
        }),
        "{ops:#?}"
    );
    let o = observe(&h, &desired);
    assert!(!o.tasks.contains_key("gone99"));
    assert!(!o.networks.contains_key(&vni(4999)));
    assert!(o.strays.is_empty());
    assert_eq!(
        fdb_of(&o, A),
        BTreeSet::from([FdbEntry {
            mac: r.mac,
            vtep: r.vtep
        }])
    );
    assert!(
        !o.networks[&vni(A)]
            .neighbors_of("vxlan0")
            .contains_key(&Ipv4Addr::new(10, 41, 0, 99))
    );
    assert!(o.tasks["t1aaaa"].link("eth7").is_none());
    assert!(o.networks[&vni(A)].link("vnextra").is_none());
    assert!(o.networks[&vni(A)].link("vngone99").is_none());
    assert!(!o.host.gateway_ports.contains_key(&ifname("vggone99")));
    assert_converged(&h, &desired);
}

pub fn foreign_namespaces_are_untouched<D: Dataplane>(h: Harness<D>) {
    let desired = node(&h);
    reconcile(&h.dp, &desired).expect("reconcile");
    // Another daemon's prefix, and one that starts like ours but is longer.
    let longer = format!("{}other-", h.prefix.as_str());
    let theirs = Prefix::new(h.foreign.clone()).expect("valid prefix");
    let longer_prefix = Prefix::new(longer.clone()).expect("valid prefix");
    let t1 = task_id("t1aaaa");
    let ops: Vec<Op> = [
        theirs.task_netns(&t1),
        theirs.network_netns(vni(A)),
        longer_prefix.task_netns(&t1),
    ]
    .into_iter()
    .map(|netns| Op::CreateTaskSandbox { netns })
    .collect();
    h.dp.apply(&ops).expect("create foreign namespaces");

    // Everything of ours goes; theirs stays.
    let mut empty = NodeDataplane::new(h.prefix.clone(), h.underlay_ip);
    empty.gateway = desired.gateway.clone();
    reconcile(&h.dp, &empty).expect("reconcile to empty");
    let o = observe(&h, &empty);
    assert!(o.networks.is_empty() && o.tasks.is_empty() && o.strays.is_empty());
    assert!(o.host.gateway_bridge.is_none() && o.host.masquerade.is_none());
    assert!(task_namespace_exists(&h, &h.foreign, t1.short()));
    assert!(task_namespace_exists(&h, &longer, t1.short()));
    let theirs = Scope {
        prefix: theirs,
        ..empty.scope()
    };
    assert!(
        h.dp.observe(&theirs)
            .expect("observe")
            .networks
            .contains_key(&vni(A))
    );

    let cleanup: Vec<Op> = ops
        .into_iter()
        .map(|op| match op {
            Op::CreateTaskSandbox { netns } => Op::RemoveSandbox { netns },
            other => other,
        })
        .collect();
    h.dp.apply(&cleanup).expect("remove foreign namespaces");
}

pub fn last_endpoint_leaving_removes_the_network_sandbox<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    reconcile(&h.dp, &desired).expect("reconcile");

    // t2 leaves: A keeps t1, B keeps t3.
    desired.tasks.remove(&task_id("t2bbbb"));
    let ops = reconcile(&h.dp, &desired).expect("reconcile");
    assert_eq!(
        ops,
        vec![Op::RemoveSandbox {
            netns: desired.prefix.task_netns(&task_id("t2bbbb"))
        }],
        "removing a task removes its sandbox and nothing else"
    );
    let o = observe(&h, &desired);
    assert!(o.networks.contains_key(&vni(A)) && o.networks.contains_key(&vni(B)));
    assert!(o.networks[&vni(A)].link("vnt2bbbb").is_none());
    assert!(!o.host.gateway_ports.contains_key(&ifname("vgt2bbbb")));

    // t1, the last endpoint on A and the last task with egress, leaves.
    desired.tasks.remove(&task_id("t1aaaa"));
    reconcile(&h.dp, &desired).expect("reconcile");
    let o = observe(&h, &desired);
    assert!(!o.networks.contains_key(&vni(A)));
    assert!(o.networks.contains_key(&vni(B)));
    assert!(o.host.gateway_bridge.is_none(), "no task needs egress");
    assert!(o.host.masquerade.is_none());
    assert_converged(&h, &desired);
}

pub fn drift_is_repaired_with_minimal_ops<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    let r = remote(A, [10, 41, 0, 20], [10, 250, 0, 2]);
    desired.upsert_remote(r);
    reconcile(&h.dp, &desired).expect("reconcile");
    let p = &desired.prefix;
    let net_a = p.network_netns(vni(A));
    let t1 = p.task_netns(&task_id("t1aaaa"));
    let t3 = p.task_netns(&task_id("t3cccc"));
    // Someone deletes entries, a route and a link behind our back.
    h.dp.apply(&[
        Op::RemoveFdb {
            netns: net_a.clone(),
            mac: r.mac,
            vtep: r.vtep,
        },
        Op::RemoveNeighbor {
            netns: net_a.clone(),
            ip: r.ip,
        },
        Op::RemoveDefaultRoute { netns: t1.clone() },
        Op::RemoveLink {
            at: At::Netns(t3.clone()),
            ifname: ifname("eth0"),
        },
    ])
    .expect("drift");
    let t1_sandbox = &desired.tasks[&task_id("t1aaaa")];
    let ops = replan(&h, &desired);
    assert_eq!(
        ops,
        vec![
            Op::AddNeighbor {
                netns: net_a.clone(),
                ip: r.ip,
                mac: r.mac
            },
            Op::AddFdb {
                netns: net_a,
                mac: r.mac,
                vtep: r.vtep
            },
            Op::AttachGateway {
                task_netns: t1,
                addr: t1_sandbox.egress.expect("egress"),
                mac: Mac::from_ipv4(t1_sandbox.egress.expect("egress").addr()),
                mtu: 1500,
                port: ifname("vgt1aaaa"),
                bridge: desired.gateway.bridge.clone(),
                gateway: desired.gateway.address.addr(),
            },
            Op::AttachEndpoint {
                task_netns: t3,
                ifname: ifname("eth0"),
                addr: cidr("10.42.0.4/24"),
                mac: Mac::from_ipv4(Ipv4Addr::new(10, 42, 0, 4)),
                mtu: 1400,
                network_netns: p.network_netns(vni(B)),
                port: ifname("vnt3cccc"),
            },
        ]
    );
    h.dp.apply(&ops).expect("repair");
    assert_converged(&h, &desired);
    // An MTU change of one network is repaired in place, without recreating anything.
    desired.networks.get_mut(&vni(B)).expect("B").mtu = 1300;
    let ops = reconcile(&h.dp, &desired).expect("reconcile");
    assert!(
        ops.iter().all(|op| matches!(
            op,
            Op::CreateNetworkSandbox { .. } | Op::CreateVxlan { .. } | Op::AttachEndpoint { .. }
        )),
        "{ops:#?}"
    );
    assert_eq!(desired.remove_remote(r.vni, r.ip), Some(r));
    reconcile(&h.dp, &desired).expect("reconcile");
    let o = observe(&h, &desired);
    assert_eq!(
        o.networks[&vni(B)].link("vxlan0").expect("vxlan0").mtu,
        1300
    );
    assert_eq!(o.tasks["t2bbbb"].link("eth1").expect("eth1").mtu, 1300);
    assert_converged(&h, &desired);
}

pub fn restarted_agent_keeps_running_tasks<D: Dataplane>(h: Harness<D>) {
    let before = node(&h);
    reconcile(&h.dp, &before).expect("reconcile");

    // A new agent knows the tasks but not which gateway addresses they had: it adopts them
    // from the kernel before allocating anything.
    let mut after = node(&h);
    let observed = observe(&h, &after);
    let mut gw = GatewayAllocator::new(&after.gateway);
    let ids: Vec<TaskId> = after.tasks.keys().cloned().collect();
    gw.adopt(&observed, &ids);
    let other = gw.allocate(&task_id("other1")).expect("allocate");
    assert_eq!(
        other,
        cidr("172.30.0.4/16"),
        "adopted addresses are not handed out again"
    );
    for task in after.tasks.values_mut() {
        if task.egress.is_some() {
            task.egress = Some(gw.allocate(&task.id).expect("allocate"));
        }
    }
    assert_eq!(after, before);
    assert_eq!(plan(&after, &observed).expect("plan"), vec![]);
}

pub fn vxlan_with_a_wrong_config_is_recreated_with_its_entries<D: Dataplane>(h: Harness<D>) {
    let mut desired = node(&h);
    let r = remote(A, [10, 41, 0, 20], [10, 250, 0, 2]);
    desired.upsert_remote(r);
    reconcile(&h.dp, &desired).expect("reconcile");

    desired.data_port = 4790;
    let ops = reconcile(&h.dp, &desired).expect("reconcile");
    let net_a = desired.prefix.network_netns(vni(A));
    assert_eq!(
        ops.iter()
            .filter(|op| matches!(op, Op::RemoveLink { ifname, .. } if ifname.as_str() == "vxlan0"))
            .count(),
        2
    );
    assert!(ops.contains(&Op::AddFdb {
        netns: net_a,
        mac: r.mac,
        vtep: r.vtep
    }));
    let o = observe(&h, &desired);
    for v in [A, B] {
        let vx = o.networks[&vni(v)].link("vxlan0").expect("vxlan0");
        assert_eq!(vx.vxlan.expect("config").port, 4790);
        assert_eq!(vx.controller, Some(ifname("br0")));
    }
    assert_eq!(fdb_of(&o, A).len(), 1);
    // The endpoints were not recreated.
    assert!(!ops.iter().any(|op| matches!(op, Op::AttachEndpoint { .. })));
    assert_converged(&h, &desired);
}
