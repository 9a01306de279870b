//! Table tests of the planner: (desired, observed) -> the exact ops, in order.
//!
//! Observed states start from what a kernel converged to a base desired state shows
//! ([`Observed::converged`]) and are then changed by hand, so each row reads as "the kernel
//! differs like this".

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::ingress::model::{IngressRoute, IngressSandbox, Protocol, ReplyRouting, reply_mark};
use crate::ingress::observed::Snat;

const T1: &str = "mesh-t-tt1";
const SBOX: &str = "mesh-t-tsbox";

fn ifname(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn peer(s: &str) -> (Ipv4Addr, Mac) {
    (ip(s), Mac::from_ipv4(ip(s)))
}

fn web() -> Publication {
    Publication {
        protocol: Protocol::Tcp,
        published: 8080,
        target: SocketAddrV4::new(ip("10.255.0.100"), 80),
    }
}

/// A sandbox, the route via 172.30.0.2, one published port, and task T1 (eth1) replying
/// through sandboxes .2 and .3.
fn base() -> NodeMesh {
    let mut m = NodeMesh::new("mesh_ingress", ifname("mesh_gwbridge"));
    m.sandbox = Some(IngressSandbox {
        netns: SBOX.into(),
        overlay: ifname("eth0"),
        gateway: ifname("gw0"),
    });
    m.route = Some(IngressRoute {
        subnet: cidr("10.255.0.0/16"),
        via: ip("172.30.0.2"),
    });
    m.publications = Some(BTreeSet::from([web()]));
    m.replies.insert(
        T1.into(),
        ReplyRouting {
            iface: ifname("eth1"),
            sandboxes: BTreeSet::from([peer("10.255.0.2"), peer("10.255.0.3")]),
        },
    );
    m
}

fn sysctl(at: &str, s: Sysctl) -> Op {
    Op::SetSysctl {
        at: if at.is_empty() {
            At::Host
        } else {
            At::Netns(at.into())
        },
        sysctl: s,
    }
}

fn publish(pubs: &[Publication]) -> Op {
    Op::ReplacePublishTable {
        table: "mesh_ingress".into(),
        publications: pubs.to_vec(),
    }
}

fn flush(p: &Publication) -> Op {
    Op::FlushPublished {
        protocol: p.protocol,
        port: p.published,
    }
}

fn node_route(via: &str) -> Op {
    Op::ReplaceRoute {
        at: At::Host,
        table: MAIN_TABLE,
        dst: Some(cidr("10.255.0.0/16")),
        via: ip(via),
        dev: ifname("mesh_gwbridge"),
    }
}

fn reply_route(sandbox: &str) -> Op {
    Op::ReplaceRoute {
        at: At::Netns(T1.into()),
        table: reply_mark(ip(sandbox)),
        dst: None,
        via: ip(sandbox),
        dev: ifname("eth1"),
    }
}

fn rule(sandbox: &str) -> Op {
    Op::AddReplyRule {
        netns: T1.into(),
        mark: reply_mark(ip(sandbox)),
    }
}

fn reply_table_op(m: &NodeMesh) -> Op {
    let r = &m.replies[T1];
    Op::ReplaceReplyTable {
        netns: T1.into(),
        iface: r.iface.clone(),
        sandboxes: r.sandboxes.iter().copied().collect(),
    }
}

type Row = (&'static str, NodeMesh, Observed, Vec<Op>);

#[test]
fn planner_table() {
    let d = base();
    let converged = Observed::converged(&d);
    let with = |f: &dyn Fn(&mut Observed)| {
        let mut o = converged.clone();
        f(&mut o);
        o
    };
    let desired = |f: &dyn Fn(&mut NodeMesh)| {
        let mut m = base();
        f(&mut m);
        m
    };
    let other = Publication {
        published: 9090,
        ..web()
    };
    let mark3 = reply_mark(ip("10.255.0.3"));
    let rows: Vec<Row> = vec![
        ("converged", d.clone(), converged.clone(), vec![]),
        (
            "nothing there yet: everything, in building order",
            d.clone(),
            Observed::default(),
            vec![
                sysctl(SBOX, Sysctl::IpForward),
                sysctl(SBOX, Sysctl::RpFilter(None)),
                sysctl(SBOX, Sysctl::RpFilter(Some(ifname("eth0")))),
                sysctl(SBOX, Sysctl::RpFilter(Some(ifname("gw0")))),
                Op::ReplaceSnatTable {
                    netns: SBOX.into(),
                    from: ifname("gw0"),
                    to: ifname("eth0"),
                },
                node_route("172.30.0.2"),
                sysctl("", Sysctl::RouteLocalnet(ifname("mesh_gwbridge"))),
                publish(&[web()]),
                sysctl(T1, Sysctl::RpFilter(None)),
                sysctl(T1, Sysctl::RpFilter(Some(ifname("eth1")))),
                sysctl(T1, Sysctl::TcpFwmarkAccept),
                reply_table_op(&d),
                reply_route("10.255.0.2"),
                rule("10.255.0.2"),
                reply_route("10.255.0.3"),
                rule("10.255.0.3"),
            ],
        ),
        (
            "a port more: the publication table only",
            desired(&|m| {
                m.publications.as_mut().unwrap().insert(other);
            }),
            converged.clone(),
            vec![publish(&[web(), other])],
        ),
        (
            "nothing published: an empty table, route_localnet left alone, old flows flushed",
            desired(&|m| m.publications = Some(BTreeSet::new())),
            converged.clone(),
            vec![publish(&[]), flush(&web())],
        ),
        (
            "a port now goes elsewhere: its translated flows are flushed",
            desired(&|m| {
                let mut moved = web();
                moved.target.set_port(8081);
                m.publications = Some([moved].into_iter().collect());
            }),
            converged.clone(),
            vec![
                publish(&[Publication {
                    target: {
                        let mut t = web().target;
                        t.set_port(8081);
                        t
                    },
                    ..web()
                }]),
                flush(&web()),
            ],
        ),
        (
            "leaving: the table goes, and its flows",
            desired(&|m| m.publications = None),
            converged.clone(),
            vec![
                Op::RemovePublishTable {
                    table: "mesh_ingress".into(),
                },
                flush(&web()),
            ],
        ),
        (
            "leaving, table already gone",
            desired(&|m| m.publications = None),
            with(&|o| o.node.publications = Table::Absent),
            vec![],
        ),
        (
            "publication table changed by hand",
            d.clone(),
            with(&|o| o.node.publications = Table::Other),
            vec![publish(&[web()])],
        ),
        (
            "route_localnet off (the bridge was made again)",
            d.clone(),
            with(&|o| {
                o.node
                    .sysctls
                    .insert(Sysctl::RouteLocalnet(ifname("mesh_gwbridge")), "0".into());
            }),
            vec![sysctl("", Sysctl::RouteLocalnet(ifname("mesh_gwbridge")))],
        ),
        (
            "the sandbox's gateway address moved",
            desired(&|m| m.route.as_mut().unwrap().via = ip("172.30.0.7")),
            converged.clone(),
            vec![node_route("172.30.0.7")],
        ),
        (
            "a stale route out of the bridge",
            d.clone(),
            with(&|o| {
                o.node
                    .routes
                    .insert(cidr("10.254.0.0/16"), ip("172.30.0.2"));
            }),
            vec![Op::RemoveRoute {
                at: At::Host,
                table: MAIN_TABLE,
                dst: Some(cidr("10.254.0.0/16")),
            }],
        ),
        (
            "the sandbox's namespace was not there when observed",
            d.clone(),
            with(&|o| o.sandbox = None),
            vec![
                sysctl(SBOX, Sysctl::IpForward),
                sysctl(SBOX, Sysctl::RpFilter(None)),
                sysctl(SBOX, Sysctl::RpFilter(Some(ifname("eth0")))),
                sysctl(SBOX, Sysctl::RpFilter(Some(ifname("gw0")))),
                Op::ReplaceSnatTable {
                    netns: SBOX.into(),
                    from: ifname("gw0"),
                    to: ifname("eth0"),
                },
            ],
        ),
        (
            "the sandbox's nat swapped",
            d.clone(),
            with(&|o| {
                o.sandbox.as_mut().unwrap().snat = Table::Ours(Snat {
                    from: ifname("eth0"),
                    to: ifname("gw0"),
                });
            }),
            vec![Op::ReplaceSnatTable {
                netns: SBOX.into(),
                from: ifname("gw0"),
                to: ifname("eth0"),
            }],
        ),
        (
            "a sandbox joins: its route and rule, and the task's table",
            desired(&|m| {
                let r = m.replies.get_mut(T1).unwrap();
                r.sandboxes.insert(peer("10.255.0.4"));
            }),
            converged.clone(),
            vec![
                reply_table_op(&desired(&|m| {
                    let r = m.replies.get_mut(T1).unwrap();
                    r.sandboxes.insert(peer("10.255.0.4"));
                })),
                reply_route("10.255.0.4"),
                rule("10.255.0.4"),
            ],
        ),
        (
            "a sandbox leaves: its rule and route go",
            desired(&|m| {
                let r = m.replies.get_mut(T1).unwrap();
                r.sandboxes.remove(&peer("10.255.0.3"));
            }),
            converged.clone(),
            vec![
                reply_table_op(&desired(&|m| {
                    let r = m.replies.get_mut(T1).unwrap();
                    r.sandboxes.remove(&peer("10.255.0.3"));
                })),
                Op::RemoveReplyRule {
                    netns: T1.into(),
                    mark: mark3,
                },
                Op::RemoveRoute {
                    at: At::Netns(T1.into()),
                    table: mark3,
                    dst: None,
                },
            ],
        ),
        (
            "a rule looking up another table",
            d.clone(),
            with(&|o| {
                o.tasks.get_mut(T1).unwrap().rules.insert(mark3, 7);
            }),
            vec![
                Op::RemoveReplyRule {
                    netns: T1.into(),
                    mark: mark3,
                },
                rule("10.255.0.3"),
            ],
        ),
        (
            "a reply route left without its rule",
            d.clone(),
            with(&|o| {
                let t = o.tasks.get_mut(T1).unwrap();
                t.routes
                    .insert(0x0100_0009, (ip("10.255.0.9"), ifname("eth1")));
            }),
            vec![Op::RemoveRoute {
                at: At::Netns(T1.into()),
                table: 0x0100_0009,
                dst: None,
            }],
        ),
        (
            "a task that left the model is forgotten, not cleaned",
            desired(&|m| {
                m.replies.clear();
            }),
            converged.clone(),
            vec![],
        ),
    ];
    for (name, desired, observed, want) in rows {
        assert_eq!(plan(&desired, &observed).unwrap(), want, "{name}");
    }
}

#[test]
fn invalid_desired_states_are_refused_naming_the_input() {
    let mut twice = base();
    twice.publications.as_mut().unwrap().insert(Publication {
        target: SocketAddrV4::new(ip("10.255.0.101"), 81),
        ..web()
    });
    let mut same_mark = base();
    // 11.255.0.3 has the low 24 bits, so the mark, of 10.255.0.3.
    let replies = same_mark.replies.get_mut(T1).unwrap();
    replies.sandboxes.insert(peer("11.255.0.3"));
    let mut bad_table = base();
    bad_table.publish_table = "mesh ingress".into();
    let cases: BTreeMap<&str, (NodeMesh, &str)> = BTreeMap::from([
        ("twice", (twice, "published port tcp/8080")),
        ("same mark", (same_mark, "shares its mark")),
        ("bad table", (bad_table, "nftables table")),
    ]);
    for (name, (desired, needle)) in cases {
        let err = plan(&desired, &Observed::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
}

#[test]
fn a_converged_kernel_plans_nothing_for_any_base_variant() {
    for m in [
        base(),
        NodeMesh::new("mesh_ingress", ifname("br")),
        NodeMesh {
            publications: None,
            ..base()
        },
    ] {
        assert_eq!(plan(&m, &Observed::converged(&m)).unwrap(), vec![]);
    }
}
