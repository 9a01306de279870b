//! The conformance suite of the routing mesh: one set of cases that every [`RoutingMesh`]
//! must pass, run against [`FakeMesh`](crate::ingress::fake::FakeMesh) (on the same fake kernel
//! as the overlay fake) and against [`LinuxMesh`](crate::ingress::LinuxMesh) inside fresh
//! namespaces (the `ingress_conformance` integration test).
//!
//! Each case takes a fresh [`Harness`] and says in its name what it proves. The harness pairs
//! the routing mesh with an overlay [`Dataplane`] on the same kernel, which builds the gateway
//! bridge, the ingress sandbox and the tasks the mesh works in. Use
//! [`ingress_conformance_tests!`](crate::ingress_conformance_tests) to get one `#[test]` per
//! case for a harness factory. Drift is made with [`Op`]s behind the planner's back.

use std::any::Any;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::ingress::model::{
    IngressRoute, IngressSandbox, NodeMesh, Protocol, Publication, ReplyRouting, Sysctl, reply_mark,
};
use crate::ingress::observed::{Observed, Table};
use crate::ingress::plan::{Op, plan};
use crate::ingress::{Applied, RoutingMesh, reconcile};
use crate::netlink::MAIN_TABLE;
use crate::netns::At;
use crate::overlay::{
    Dataplane, GatewayAllocator, LocalEndpoint, NetworkSpec, NodeDataplane, Prefix, TaskId,
    TaskSandbox, Vni,
};
use crate::types::{IfName, Ipv4Cidr, Mac};

/// A routing mesh under test, the overlay on the same kernel, and their surroundings.
pub struct Harness<M, D> {
    pub mesh: M,
    pub overlay: D,
    /// Our namespace prefix, unique to this harness.
    pub prefix: Prefix,
    /// The daemon's underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Dropped after the rest: cleans up whatever the harness made.
    pub guard: Box<dyn Any>,
}

/// One `#[test]` per conformance case, each with a fresh harness from `$factory()`.
#[macro_export]
macro_rules! ingress_conformance_tests {
    ($factory:path) => {
        $crate::ingress_conformance_tests!(@cases $factory;
            builds_the_routing_mesh_of_a_node,
            a_converged_node_shows_what_the_agent_assumes,
            changing_publications_rewrites_the_publication_table_only,
            a_sandbox_joining_or_leaving_costs_its_rules_routes_and_reply_tables,
            the_applied_state_plans_without_observing_and_stays_converged,
            leaving_removes_the_publication_table_and_the_route,
            a_task_leaving_the_model_keeps_its_reply_routing,
            drift_is_repaired_with_minimal_ops,
            a_missing_namespace_refuses_changes_and_removals_there_succeed,
            routes_need_their_link_and_go_with_it
        );
    };
    (@cases $factory:path; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::ingress::conformance::$case($factory());
            }
        )*
    };
}

const INGRESS: u32 = 4096;
const APP: u32 = 4100;
const SANDBOX: &str = "ingress_sbox";
const TABLE: &str = "mesh_ingress";

fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid ifname")
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("valid cidr")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("valid address")
}

fn task_id(s: &str) -> TaskId {
    TaskId::new(s).expect("valid task id")
}

fn sandbox_peer(addr: &str) -> (Ipv4Addr, Mac) {
    (ip(addr), Mac::from_ipv4(ip(addr)))
}

/// The ingress network (4096, 10.255.0.0/16) and an app network (4100, 10.41.0.0/24); the
/// ingress sandbox at 10.255.0.2, task `t1aaaa` on the app network (eth0) and the ingress
/// network (eth1, 10.255.0.5), task `t2bbbb` on the ingress network only (eth0, 10.255.0.6).
fn overlay<M, D>(h: &Harness<M, D>) -> NodeDataplane {
    let mut node = NodeDataplane::new(h.prefix.clone(), h.underlay_ip);
    for (vni, gateway) in [(INGRESS, "10.255.0.1/16"), (APP, "10.41.0.1/24")] {
        node.upsert_network(NetworkSpec {
            vni: Vni::new(vni).expect("valid vni"),
            gateway: cidr(gateway),
            mtu: 1400,
            internal: false,
        });
    }
    let mut gw = GatewayAllocator::new(&node.gateway);
    for (id, endpoints) in [
        (SANDBOX, vec![(INGRESS, "eth0", "10.255.0.2/16")]),
        (
            "t1aaaa",
            vec![
                (APP, "eth0", "10.41.0.2/24"),
                (INGRESS, "eth1", "10.255.0.5/16"),
            ],
        ),
        ("t2bbbb", vec![(INGRESS, "eth0", "10.255.0.6/16")]),
    ] {
        let id = task_id(id);
        node.upsert_task(TaskSandbox {
            id: id.clone(),
            endpoints: endpoints
                .into_iter()
                .map(|(v, n, a)| {
                    LocalEndpoint::new(Vni::new(v).expect("valid vni"), ifname(n), cidr(a))
                })
                .collect(),
            egress: Some(gw.allocate(&id).expect("pool has room")),
        });
    }
    node
}

fn task_ns<M, D>(h: &Harness<M, D>, id: &str) -> String {
    h.prefix.task_netns(&task_id(id))
}

/// The routing mesh of [`overlay`]'s node: two published ports (one ingress, one host mode),
/// the ingress sandbox, and reply routing in both tasks through two sandboxes (this node's and
/// another's).
fn mesh<M, D>(h: &Harness<M, D>, node: &NodeDataplane) -> NodeMesh {
    let egress = |id: &str| node.tasks[&task_id(id)].egress.expect("egress").addr();
    let mut m = NodeMesh::new(TABLE, node.gateway.bridge.clone());
    m.sandbox = Some(IngressSandbox {
        netns: task_ns(h, SANDBOX),
        overlay: ifname("eth0"),
        gateway: ifname("gw0"),
    });
    m.route = Some(IngressRoute {
        subnet: cidr("10.255.0.0/16"),
        via: egress(SANDBOX),
    });
    m.publications = Some(BTreeSet::from([
        Publication {
            protocol: Protocol::Tcp,
            published: 8080,
            target: SocketAddrV4::new(ip("10.255.0.100"), 80),
        },
        Publication {
            protocol: Protocol::Udp,
            published: 5353,
            target: SocketAddrV4::new(egress("t1aaaa"), 53),
        },
    ]));
    let sandboxes = BTreeSet::from([sandbox_peer("10.255.0.2"), sandbox_peer("10.255.0.3")]);
    for (id, iface) in [("t1aaaa", "eth1"), ("t2bbbb", "eth0")] {
        m.replies.insert(
            task_ns(h, id),
            ReplyRouting {
                iface: ifname(iface),
                sandboxes: sandboxes.clone(),
            },
        );
    }
    m
}

/// Builds the overlay and returns the node's desired routing mesh (not applied).
fn setup<M, D: Dataplane>(h: &Harness<M, D>) -> NodeMesh {
    let node = overlay(h);
    crate::overlay::reconcile(&h.overlay, &node).expect("build the overlay");
    mesh(h, &node)
}

fn observe<M: RoutingMesh, D>(h: &Harness<M, D>, desired: &NodeMesh) -> Observed {
    h.mesh.observe(&desired.scope()).expect("observe")
}

fn assert_converged<M: RoutingMesh, D>(h: &Harness<M, D>, desired: &NodeMesh) {
    let left = plan(desired, &observe(h, desired)).expect("plan");
    assert!(left.is_empty(), "not converged, still to do: {left:#?}");
}

fn set(at: &At, sysctl: Sysctl) -> Op {
    Op::SetSysctl {
        at: at.clone(),
        sysctl,
    }
}

pub fn builds_the_routing_mesh_of_a_node<M: RoutingMesh, D: Dataplane>(h: Harness<M, D>) {
    let desired = setup(&h);
    reconcile(&h.mesh, &desired).expect("reconcile");
    let o = observe(&h, &desired);

    assert_eq!(
        o.node.publications,
        Table::Ours(desired.publications.clone().expect("published"))
    );
    let route = desired.route.expect("route");
    assert_eq!(
        o.node.routes.into_iter().collect::<Vec<_>>(),
        vec![(route.subnet, route.via)]
    );
    let localnet = Sysctl::RouteLocalnet(desired.bridge.clone());
    assert_eq!(o.node.sysctls.get(&localnet).map(String::as_str), Some("1"));

    let sandbox = o.sandbox.expect("sandbox observed");
    for s in desired.sandbox.as_ref().expect("sandbox").sysctls() {
        assert_eq!(
            sandbox.sysctls.get(&s).map(String::as_str),
            Some(s.wanted()),
            "{s}"
        );
    }
    let Table::Ours(snat) = sandbox.snat else {
        panic!("no snat table: {:?}", sandbox.snat)
    };
    assert_eq!((snat.from.as_str(), snat.to.as_str()), ("gw0", "eth0"));

    for (id, iface) in [("t1aaaa", "eth1"), ("t2bbbb", "eth0")] {
        let t = &o.tasks[&task_ns(&h, id)];
        let Table::Ours(reply) = &t.reply else {
            panic!("{id}: no reply table: {:?}", t.reply)
        };
        assert_eq!(reply.iface.as_str(), iface);
        for addr in ["10.255.0.2", "10.255.0.3"] {
            let (peer, mac) = sandbox_peer(addr);
            let mark = reply_mark(peer);
            assert_eq!(reply.marks.get(&mac), Some(&mark), "{id} {addr}");
            assert_eq!(t.rules.get(&mark), Some(&mark), "{id} {addr}");
            assert_eq!(
                t.routes.get(&mark),
                Some(&(peer, ifname(iface))),
                "{id} {addr}"
            );
        }
        assert_eq!((t.rules.len(), t.routes.len()), (2, 2), "{id}");
        assert_eq!(
            t.sysctls.get(&Sysctl::TcpFwmarkAccept).map(String::as_str),
            Some("1")
        );
    }
    assert_converged(&h, &desired);
}

pub fn a_converged_node_shows_what_the_agent_assumes<M: RoutingMesh, D: Dataplane>(
    h: Harness<M, D>,
) {
    let desired = setup(&h);
    assert!(!reconcile(&h.mesh, &desired).expect("reconcile").is_empty());
    assert_eq!(observe(&h, &desired), Observed::converged(&desired));
    assert_eq!(reconcile(&h.mesh, &desired).expect("again"), vec![]);
}

pub fn changing_publications_rewrites_the_publication_table_only<M: RoutingMesh, D: Dataplane>(
    h: Harness<M, D>,
) {
    let mut desired = setup(&h);
    reconcile(&h.mesh, &desired).expect("reconcile");
    let pubs = desired.publications.as_mut().expect("published");
    pubs.insert(Publication {
        protocol: Protocol::Tcp,
        published: 9090,
        target: SocketAddrV4::new(ip("10.255.0.101"), 90),
    });
    let want: Vec<Publication> = pubs.iter().copied().collect();
    let ops = reconcile(&h.mesh, &desired).expect("reconcile");
    assert_eq!(
        ops,
        vec![Op::ReplacePublishTable {
            table: TABLE.into(),
            publications: want.clone()
        }]
    );
    // Nothing published: an empty table stays, so that is observable too, and the flows
    // every port translated are flushed.
    desired.publications = Some(BTreeSet::new());
    let ops = reconcile(&h.mesh, &desired).expect("reconcile");
    let mut flushed: Vec<Op> = want
        .iter()
        .map(|p| Op::FlushPublished {
            protocol: p.protocol,
            port: p.published,
        })
        .collect();
    flushed.insert(
        0,
        Op::ReplacePublishTable {
            table: TABLE.into(),
            publications: vec![],
        },
    );
    assert_eq!(ops, flushed);
    assert_eq!(
        observe(&h, &desired).node.publications,
        Table::Ours(BTreeSet::new())
    );
    assert_converged(&h, &desired);
}

pub fn a_sandbox_joining_or_leaving_costs_its_rules_routes_and_reply_tables<
    M: RoutingMesh,
    D: Dataplane,
>(
    h: Harness<M, D>,
) {
    let mut desired = setup(&h);
    reconcile(&h.mesh, &desired).expect("reconcile");
    let (joined, left) = (sandbox_peer("10.255.0.4"), sandbox_peer("10.255.0.3"));
    for r in desired.replies.values_mut() {
        r.sandboxes.insert(joined);
        r.sandboxes.remove(&left);
    }
    let ops = reconcile(&h.mesh, &desired).expect("reconcile");
    let mut want = Vec::new();
    for (netns, r) in &desired.replies {
        want.push(Op::ReplaceReplyTable {
            netns: netns.clone(),
            iface: r.iface.clone(),
            sandboxes: r.sandboxes.iter().copied().collect(),
        });
        want.push(Op::RemoveReplyRule {
            netns: netns.clone(),
            mark: reply_mark(left.0),
        });
        want.push(Op::RemoveRoute {
            at: At::Netns(netns.clone()),
            table: reply_mark(left.0),
            dst: None,
        });
        want.push(Op::ReplaceRoute {
            at: At::Netns(netns.clone()),
            table: reply_mark(joined.0),
            dst: None,
            via: joined.0,
            dev: r.iface.clone(),
        });
        want.push(Op::AddReplyRule {
            netns: netns.clone(),
            mark: reply_mark(joined.0),
        });
    }
    assert_eq!(ops, want);
    assert_converged(&h, &desired);
}

pub fn the_applied_state_plans_without_observing_and_stays_converged<
    M: RoutingMesh,
    D: Dataplane,
>(
    h: Harness<M, D>,
) {
    let first = setup(&h);
    let mut applied = Applied::new();
    applied.sync(&h.mesh, &first).expect("first sync");
    assert_converged(&h, &first);
    let mut second = first.clone();
    second.publications = Some(BTreeSet::new());
    for r in second.replies.values_mut() {
        r.sandboxes.insert(sandbox_peer("10.255.0.9"));
    }
    let fresh = plan(&second, &observe(&h, &second)).expect("plan");
    assert_eq!(applied.sync(&h.mesh, &second).expect("sync"), fresh);
    assert_converged(&h, &second);
    assert_eq!(applied.sync(&h.mesh, &second).expect("again"), vec![]);
    // Back, with a task less: it is only forgotten.
    let mut third = first.clone();
    third.replies.remove(&task_ns(&h, "t2bbbb"));
    applied.sync(&h.mesh, &third).expect("sync");
    assert_converged(&h, &third);
    applied.forget();
    assert_eq!(
        applied.sync(&h.mesh, &third).expect("observes again"),
        vec![]
    );
}

pub fn leaving_removes_the_publication_table_and_the_route<M: RoutingMesh, D: Dataplane>(
    h: Harness<M, D>,
) {
    let desired = setup(&h);
    reconcile(&h.mesh, &desired).expect("reconcile");
    let mut gone = NodeMesh::new(TABLE, desired.bridge.clone());
    gone.publications = None;
    let ops = reconcile(&h.mesh, &gone).expect("leave");
    let mut want = vec![
        Op::RemoveRoute {
            at: At::Host,
            table: MAIN_TABLE,
            dst: Some(cidr("10.255.0.0/16")),
        },
        Op::RemovePublishTable {
            table: TABLE.into(),
        },
    ];
    want.extend(
        desired
            .publications
            .iter()
            .flatten()
            .map(|p| Op::FlushPublished {
                protocol: p.protocol,
                port: p.published,
            }),
    );
    assert_eq!(ops, want);
    let o = observe(&h, &gone);
    assert_eq!(
        (o.node.publications, o.node.routes.len()),
        (Table::Absent, 0)
    );
    assert_eq!(reconcile(&h.mesh, &gone).expect("again"), vec![]);
}

pub fn a_task_leaving_the_model_keeps_its_reply_routing<M: RoutingMesh, D: Dataplane>(
    h: Harness<M, D>,
) {
    let full = setup(&h);
    reconcile(&h.mesh, &full).expect("reconcile");
    let mut less = full.clone();
    let t2 = task_ns(&h, "t2bbbb");
    less.replies.remove(&t2);
    less.sandbox = None;
    assert_eq!(reconcile(&h.mesh, &less).expect("reconcile"), vec![]);
    // Its namespace still answers routed connections the way it did (it is draining).
    assert_eq!(
        observe(&h, &full).tasks[&t2],
        Observed::converged(&full).tasks[&t2]
    );
}

pub fn drift_is_repaired_with_minimal_ops<M: RoutingMesh, D: Dataplane>(h: Harness<M, D>) {
    let desired = setup(&h);
    reconcile(&h.mesh, &desired).expect("reconcile");
    let sandbox = desired.sandbox.clone().expect("sandbox");
    let t1 = task_ns(&h, "t1aaaa");
    let mark = reply_mark(ip("10.255.0.3"));
    // Someone swaps the NAT's interfaces, rewrites the published ports and deletes one
    // sandbox's rule and route in a task.
    h.mesh
        .apply(&[
            Op::ReplaceSnatTable {
                netns: sandbox.netns.clone(),
                from: sandbox.overlay.clone(),
                to: sandbox.gateway.clone(),
            },
            Op::ReplacePublishTable {
                table: TABLE.into(),
                publications: vec![],
            },
            Op::RemoveReplyRule {
                netns: t1.clone(),
                mark,
            },
            Op::RemoveRoute {
                at: At::Netns(t1.clone()),
                table: mark,
                dst: None,
            },
        ])
        .expect("drift");
    let ops = plan(&desired, &observe(&h, &desired)).expect("plan");
    assert_eq!(
        ops,
        vec![
            Op::ReplaceSnatTable {
                netns: sandbox.netns.clone(),
                from: sandbox.gateway.clone(),
                to: sandbox.overlay.clone(),
            },
            Op::ReplacePublishTable {
                table: TABLE.into(),
                publications: desired.publications.iter().flatten().copied().collect(),
            },
            Op::ReplaceRoute {
                at: At::Netns(t1.clone()),
                table: mark,
                dst: None,
                via: ip("10.255.0.3"),
                dev: ifname("eth1"),
            },
            Op::AddReplyRule { netns: t1, mark },
        ]
    );
    h.mesh.apply(&ops).expect("repair");
    assert_converged(&h, &desired);
}

pub fn a_missing_namespace_refuses_changes_and_removals_there_succeed<
    M: RoutingMesh,
    D: Dataplane,
>(
    h: Harness<M, D>,
) {
    let mut desired = setup(&h);
    let missing = h.prefix.task_netns(&task_id("gone99"));
    let at = At::Netns(missing.clone());
    for op in [
        set(&at, Sysctl::TcpFwmarkAccept),
        Op::AddReplyRule {
            netns: missing.clone(),
            mark: 0x0100_0001,
        },
    ] {
        let err = h.mesh.apply(std::slice::from_ref(&op)).unwrap_err();
        let cause = std::error::Error::source(&err).expect("a cause");
        assert!(cause.to_string().contains(&missing), "{op}: {cause}");
    }
    h.mesh
        .apply(&[
            Op::RemoveReplyRule {
                netns: missing.clone(),
                mark: 0x0100_0001,
            },
            Op::RemoveRoute {
                at,
                table: 0x0100_0001,
                dst: None,
            },
        ])
        .expect("removals in an absent namespace");
    // Observing leaves out what does not exist.
    desired.replies.insert(
        missing.clone(),
        ReplyRouting {
            iface: ifname("eth0"),
            sandboxes: BTreeSet::new(),
        },
    );
    desired.sandbox.as_mut().expect("sandbox").netns = h.prefix.task_netns(&task_id("gone98"));
    let o = observe(&h, &desired);
    assert!(o.sandbox.is_none() && !o.tasks.contains_key(&missing));
    assert_eq!(o.tasks.len(), 2);
}

pub fn routes_need_their_link_and_go_with_it<M: RoutingMesh, D: Dataplane>(h: Harness<M, D>) {
    let node = overlay(&h);
    crate::overlay::reconcile(&h.overlay, &node).expect("build the overlay");
    let desired = mesh(&h, &node);
    let bridge = desired.bridge.clone();
    for (dev, via) in [
        (ifname("nope0"), ip("172.30.0.9")),
        (bridge.clone(), ip("10.9.9.9")),
    ] {
        let op = Op::ReplaceRoute {
            at: At::Host,
            table: MAIN_TABLE,
            dst: Some(cidr("10.255.0.0/16")),
            via,
            dev,
        };
        let err = h.mesh.apply(std::slice::from_ref(&op)).unwrap_err();
        assert_eq!(err.to_string(), format!("apply {op}"));
    }
    reconcile(&h.mesh, &desired).expect("reconcile");
    // The bridge is deleted and made again: its route and route_localnet went with it.
    h.overlay
        .apply(&[crate::overlay::Op::RemoveLink {
            at: At::Host,
            ifname: bridge.clone(),
        }])
        .expect("delete the bridge");
    let o = observe(&h, &desired);
    assert!(o.node.routes.is_empty(), "{:?}", o.node.routes);
    assert!(o.node.sysctls.is_empty(), "{:?}", o.node.sysctls);
    crate::overlay::reconcile(&h.overlay, &node).expect("repair the overlay");
    assert_eq!(
        plan(&desired, &observe(&h, &desired)).expect("plan"),
        vec![
            Op::ReplaceRoute {
                at: At::Host,
                table: MAIN_TABLE,
                dst: Some(cidr("10.255.0.0/16")),
                via: desired.route.expect("route").via,
                dev: bridge.clone(),
            },
            set(&At::Host, Sysctl::RouteLocalnet(bridge)),
        ]
    );
}
