//! Table tests of the planner: (desired, observed) -> the exact ops, in order.
//!
//! Observed states start from what a converged fake kernel shows for a base desired state and
//! are then changed by hand, so each row reads as "the kernel differs like this".

use std::net::Ipv4Addr;

use super::*;
use crate::overlay::fake::FakeDataplane;
use crate::overlay::ids::{Prefix, TaskId};
use crate::overlay::model::{LocalEndpoint, NetworkSpec, TaskSandbox};
use crate::overlay::observed::LinkState;
use crate::overlay::{Dataplane, reconcile};
use crate::types::Ipv4Cidr;

const P: &str = "mesh-t-";
const NET_A: &str = "mesh-t-n4100";
const TASK_1: &str = "mesh-t-tt1";

fn vni(n: u32) -> Vni {
    Vni::new(n).unwrap()
}

fn ifname(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mac_of(s: &str) -> Mac {
    Mac::from_ipv4(ip(s))
}

fn r1() -> RemoteEndpoint {
    RemoteEndpoint {
        vni: vni(4100),
        ip: ip("10.41.0.20"),
        mac: mac_of("10.41.0.20"),
        vtep: ip("192.168.50.2"),
    }
}

/// Network A (4100, not internal) with task `t1` (eth0 10.41.0.2, egress 172.30.0.2) and one
/// remote endpoint.
fn base() -> NodeDataplane {
    let mut d = NodeDataplane::new(Prefix::new(P).unwrap(), ip("192.168.50.1"));
    d.upsert_network(NetworkSpec {
        vni: vni(4100),
        gateway: cidr("10.41.0.1/24"),
        mtu: 1450,
        internal: false,
    });
    d.upsert_task(TaskSandbox {
        id: TaskId::new("t1").unwrap(),
        endpoints: vec![LocalEndpoint::new(
            vni(4100),
            ifname("eth0"),
            cidr("10.41.0.2/24"),
        )],
        egress: Some(cidr("172.30.0.2/16")),
    });
    d.upsert_remote(r1());
    d
}

/// What a kernel converged to `d` shows.
fn converged(d: &NodeDataplane) -> Observed {
    let fake = FakeDataplane::new();
    reconcile(&fake, d).unwrap();
    fake.observe(&d.scope()).unwrap()
}

fn attach_t1() -> Op {
    Op::AttachEndpoint {
        task_netns: TASK_1.into(),
        ifname: ifname("eth0"),
        addr: cidr("10.41.0.2/24"),
        mac: mac_of("10.41.0.2"),
        mtu: 1450,
        network_netns: NET_A.into(),
        port: ifname("vnt1"),
    }
}

fn gateway_t1() -> Op {
    Op::AttachGateway {
        task_netns: TASK_1.into(),
        addr: cidr("172.30.0.2/16"),
        mac: mac_of("172.30.0.2"),
        mtu: 1500,
        port: ifname("vgt1"),
        bridge: ifname("mesh_gwbridge"),
        gateway: ip("172.30.0.1"),
    }
}

fn create_vxlan_a(port: u16) -> Op {
    Op::CreateVxlan {
        netns: NET_A.into(),
        vxlan: VxlanSpec {
            vni: vni(4100),
            port,
            local: ip("192.168.50.1"),
            mtu: 1450,
        },
    }
}

fn add_r1() -> [Op; 2] {
    let r = r1();
    [
        Op::AddNeighbor {
            netns: NET_A.into(),
            ip: r.ip,
            mac: r.mac,
        },
        Op::AddFdb {
            netns: NET_A.into(),
            mac: r.mac,
            vtep: r.vtep,
        },
    ]
}

fn masquerade() -> Masquerade {
    Masquerade {
        table: "mesh".into(),
        source: cidr("172.30.0.0/16"),
        bridge: ifname("mesh_gwbridge"),
    }
}

fn link_mut<'a>(o: &'a mut Observed, at: &str, name: &str) -> &'a mut LinkState {
    let snap = if at == "a" {
        o.networks.get_mut(&vni(4100)).unwrap()
    } else {
        o.tasks.get_mut(at).unwrap()
    };
    snap.links.get_mut(&ifname(name)).unwrap()
}

struct Row {
    name: &'static str,
    desired: NodeDataplane,
    observed: Observed,
    want: Vec<Op>,
}

fn rows() -> Vec<Row> {
    let d = base();
    let c = converged(&d);
    let mut rows = Vec::new();
    let mut row = |name, desired: NodeDataplane, observed: Observed, want: Vec<Op>| {
        rows.push(Row {
            name,
            desired,
            observed,
            want,
        })
    };

    row(
        "nothing wanted, nothing there",
        NodeDataplane::new(Prefix::new(P).unwrap(), ip("192.168.50.1")),
        Observed::default(),
        vec![],
    );

    let [neigh, fdb] = add_r1();
    row(
        "from scratch: what is used comes before its users",
        d.clone(),
        Observed::default(),
        vec![
            Op::EnsureGatewayBridge {
                bridge: ifname("mesh_gwbridge"),
                address: cidr("172.30.0.1/16"),
                mtu: 1500,
            },
            Op::EnsureMasquerade(masquerade()),
            Op::CreateNetworkSandbox {
                netns: NET_A.into(),
                gateway: cidr("10.41.0.1/24"),
                mtu: 1450,
            },
            create_vxlan_a(4789),
            neigh,
            fdb,
            Op::CreateTaskSandbox {
                netns: TASK_1.into(),
            },
            attach_t1(),
            gateway_t1(),
        ],
    );

    row("converged: nothing to do", d.clone(), c.clone(), vec![]);

    let mut gone = d.clone();
    gone.remove_remote(r1().vni, r1().ip);
    row(
        "remote left: its fdb and neighbor entries go",
        gone,
        c.clone(),
        vec![
            Op::RemoveFdb {
                netns: NET_A.into(),
                mac: r1().mac,
                vtep: r1().vtep,
            },
            Op::RemoveNeighbor {
                netns: NET_A.into(),
                ip: r1().ip,
            },
        ],
    );

    let mut moved = d.clone();
    moved.upsert_remote(RemoteEndpoint {
        vtep: ip("192.168.50.3"),
        ..r1()
    });
    row(
        "remote moved to another node: only the fdb entry changes",
        moved,
        c.clone(),
        vec![
            Op::RemoveFdb {
                netns: NET_A.into(),
                mac: r1().mac,
                vtep: r1().vtep,
            },
            Op::AddFdb {
                netns: NET_A.into(),
                mac: r1().mac,
                vtep: ip("192.168.50.3"),
            },
        ],
    );

    let mut o = c.clone();
    o.networks
        .get_mut(&vni(4100))
        .unwrap()
        .neighbors
        .get_mut(&ifname("vxlan0"))
        .unwrap()
        .insert(r1().ip, mac_of("10.41.0.99"));
    let [neigh, _] = add_r1();
    row(
        "neighbor with a wrong mac is replaced",
        d.clone(),
        o,
        vec![neigh],
    );

    let mut o = c.clone();
    o.networks
        .get_mut(&vni(4100))
        .unwrap()
        .fdb
        .get_mut(&ifname("vxlan0"))
        .unwrap()
        .insert(FdbEntry {
            mac: Mac([0; 6]),
            vtep: ip("192.168.50.9"),
        });
    row(
        "an all-zeros flood entry is removed",
        d.clone(),
        o,
        vec![Op::RemoveFdb {
            netns: NET_A.into(),
            mac: Mac([0; 6]),
            vtep: ip("192.168.50.9"),
        }],
    );

    let mut no_task = d.clone();
    no_task.tasks.clear();
    row(
        "last task leaves: task, network sandbox, gateway bridge and masquerade go",
        no_task,
        c.clone(),
        vec![
            Op::RemoveSandbox {
                netns: TASK_1.into(),
            },
            Op::RemoveSandbox {
                netns: NET_A.into(),
            },
            Op::RemoveMasquerade {
                table: "mesh".into(),
            },
            Op::RemoveLink {
                at: At::Host,
                ifname: ifname("mesh_gwbridge"),
            },
        ],
    );

    let mut internal = d.clone();
    internal.networks.get_mut(&vni(4100)).unwrap().internal = true;
    internal.tasks.values_mut().for_each(|t| t.egress = None);
    row(
        "network turned internal: gateway link, default route and gateway bridge go",
        internal,
        c.clone(),
        vec![
            Op::RemoveLink {
                at: At::Netns(TASK_1.into()),
                ifname: ifname("gw0"),
            },
            Op::RemoveDefaultRoute {
                netns: TASK_1.into(),
            },
            Op::RemoveMasquerade {
                table: "mesh".into(),
            },
            Op::RemoveLink {
                at: At::Host,
                ifname: ifname("mesh_gwbridge"),
            },
        ],
    );

    let mut port = d.clone();
    port.data_port = 4790;
    let [neigh, fdb] = add_r1();
    row(
        "vxlan with another port is recreated and its entries added again",
        port,
        c.clone(),
        vec![
            Op::RemoveLink {
                at: At::Netns(NET_A.into()),
                ifname: ifname("vxlan0"),
            },
            create_vxlan_a(4790),
            neigh,
            fdb,
        ],
    );

    let mut o = c.clone();
    link_mut(&mut o, "a", "vxlan0").up = false;
    row(
        "vxlan down: repaired in place",
        d.clone(),
        o,
        vec![create_vxlan_a(4789)],
    );

    let mut o = c.clone();
    link_mut(&mut o, "a", "br0")
        .addrs
        .push(cidr("10.99.0.1/24"));
    row(
        "extra address on br0: repaired in place",
        d.clone(),
        o,
        vec![Op::CreateNetworkSandbox {
            netns: NET_A.into(),
            gateway: cidr("10.41.0.1/24"),
            mtu: 1450,
        }],
    );

    let mut o = c.clone();
    link_mut(&mut o, "t1", "eth0").mtu = 1500;
    row(
        "endpoint mtu drift: repaired in place",
        d.clone(),
        o,
        vec![attach_t1()],
    );

    let mut o = c.clone();
    o.tasks.get_mut("t1").unwrap().links.remove(&ifname("eth0"));
    row(
        "half a veth pair: the other half goes, the pair is made again",
        d.clone(),
        o,
        vec![
            Op::RemoveLink {
                at: At::Netns(NET_A.into()),
                ifname: ifname("vnt1"),
            },
            attach_t1(),
        ],
    );

    let mut o = c.clone();
    o.host
        .gateway_ports
        .get_mut(&ifname("vgt1"))
        .unwrap()
        .isolated = false;
    row(
        "gateway port not isolated: repaired in place",
        d.clone(),
        o,
        vec![gateway_t1()],
    );

    let mut o = c.clone();
    o.host.ip_forward = false;
    row(
        "forwarding off: the gateway bridge op turns it on",
        d.clone(),
        o,
        vec![Op::EnsureGatewayBridge {
            bridge: ifname("mesh_gwbridge"),
            address: cidr("172.30.0.1/16"),
            mtu: 1500,
        }],
    );

    let mut o = c.clone();
    o.host.staging_vxlans.insert(ifname("mvx4100"));
    o.strays.insert("mesh-t-old".into());
    row(
        "a vxlan stranded by a crash and a stray namespace are removed",
        d.clone(),
        o,
        vec![
            Op::RemoveSandbox {
                netns: "mesh-t-old".into(),
            },
            Op::RemoveLink {
                at: At::Host,
                ifname: ifname("mvx4100"),
            },
        ],
    );

    let mut other = d.clone();
    other.upsert_remote(RemoteEndpoint {
        vni: vni(4200),
        ip: ip("10.42.0.5"),
        mac: mac_of("10.42.0.5"),
        vtep: ip("192.168.50.2"),
    });
    other.upsert_remote(RemoteEndpoint {
        ip: ip("10.41.0.2"),
        mac: mac_of("10.41.0.2"),
        ..r1()
    });
    row(
        "remotes of networks without local endpoints, or holding a local address, are skipped",
        other,
        c.clone(),
        vec![],
    );

    rows
}

#[test]
fn planner_table() {
    for row in rows() {
        let got = plan(&row.desired, &row.observed)
            .unwrap_or_else(|e| panic!("{}: plan failed: {e}", row.name));
        assert_eq!(got, row.want, "{}", row.name);
    }
}

#[test]
fn invalid_desired_states_are_refused_naming_the_input() {
    type Change = Box<dyn Fn(&mut NodeDataplane)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "endpoint on an unknown network",
            Box::new(|d| d.networks.clear()),
            "invalid overlay spec task t1 endpoint eth0 on vni 4100: unknown network",
        ),
        (
            "egress missing",
            Box::new(|d| d.tasks.values_mut().for_each(|t| t.egress = None)),
            "invalid overlay spec task t1: is on a non-internal network but has no gateway address",
        ),
        (
            "address outside the subnet",
            Box::new(|d| {
                d.tasks
                    .values_mut()
                    .for_each(|t| t.endpoints[0].addr = cidr("10.99.0.2/24"))
            }),
            "invalid overlay spec task t1 endpoint eth0 on vni 4100: address 10.99.0.2/24 not in subnet 10.41.0.1/24",
        ),
        (
            "reserved interface name",
            Box::new(|d| {
                d.tasks
                    .values_mut()
                    .for_each(|t| t.endpoints[0].ifname = ifname("gw0"))
            }),
            "invalid overlay spec task t1 endpoint gw0 on vni 4100: interface name is reserved",
        ),
        (
            "two tasks with one short id",
            Box::new(|d| {
                for (id, gw) in [
                    ("abcdefghijklmn1", "172.30.0.50/16"),
                    ("abcdefghijklmn2", "172.30.0.51/16"),
                ] {
                    d.upsert_task(TaskSandbox {
                        id: TaskId::new(id).unwrap(),
                        endpoints: vec![],
                        egress: Some(gw.parse().unwrap()),
                    });
                }
            }),
            "invalid overlay spec task abcdefghijklmn2: shares its short id abcdefghijkl with task abcdefghijklmn1",
        ),
        (
            "bad nftables table",
            Box::new(|d| d.gateway.nft_table = "x y".into()),
            "invalid overlay spec nftables table \"x y\": must be 1 to 64 letters, digits or '_'",
        ),
    ];
    for (name, change, want) in cases {
        let mut d = base();
        change(&mut d);
        let err = plan(&d, &Observed::default()).unwrap_err();
        assert_eq!(err.to_string(), want, "{name}");
    }
}

#[test]
fn only_namespaces_with_our_exact_prefix_are_observed() {
    let scope = base().scope();
    let snap = NsSnapshot::default;
    let o = Observed::from_snapshots(
        &scope,
        &NsSnapshot::default(),
        None,
        [
            ("mesh-t-n4100".to_owned(), snap()),
            ("mesh-t-tt1".to_owned(), snap()),
            ("mesh-t-zz".to_owned(), snap()),
            ("mesh-t-other-n4100".to_owned(), snap()),
            ("mesh-u-n4100".to_owned(), snap()),
            ("docker-n4100".to_owned(), snap()),
        ],
    );
    assert_eq!(
        o.networks.keys().copied().collect::<Vec<_>>(),
        vec![vni(4100)]
    );
    assert_eq!(
        o.tasks.keys().cloned().collect::<Vec<_>>(),
        vec!["t1".to_owned()]
    );
    assert_eq!(
        o.strays.iter().cloned().collect::<Vec<_>>(),
        vec!["mesh-t-zz".to_owned()]
    );
}

#[test]
fn remote_change_table() {
    let d = base();
    let r = r1();
    let moved = RemoteEndpoint {
        vtep: ip("192.168.50.3"),
        ..r
    };
    let [neigh, fdb] = add_r1();
    let remove_fdb = Op::RemoveFdb {
        netns: NET_A.into(),
        mac: r.mac,
        vtep: r.vtep,
    };
    let remove_neigh = Op::RemoveNeighbor {
        netns: NET_A.into(),
        ip: r.ip,
    };
    let mut without = d.clone();
    without.remove_remote(r.vni, r.ip);
    let mut with_moved = d.clone();
    with_moved.upsert_remote(moved);
    let mut no_local = d.clone();
    no_local.tasks.clear();

    /// (name, desired after the change, old, new, ops)
    type RemoteRow<'a> = (
        &'a str,
        &'a NodeDataplane,
        Option<&'a RemoteEndpoint>,
        Option<&'a RemoteEndpoint>,
        Vec<Op>,
    );
    let rows: Vec<RemoteRow> = vec![
        ("added", &d, None, Some(&r), vec![neigh.clone(), fdb]),
        (
            "removed",
            &without,
            Some(&r),
            None,
            vec![remove_fdb.clone(), remove_neigh],
        ),
        (
            "moved to another vtep",
            &with_moved,
            Some(&r),
            Some(&moved),
            vec![
                remove_fdb,
                neigh,
                Op::AddFdb {
                    netns: NET_A.into(),
                    mac: r.mac,
                    vtep: moved.vtep,
                },
            ],
        ),
        (
            "no local endpoint on its network",
            &no_local,
            None,
            Some(&r),
            vec![],
        ),
    ];
    for (name, desired, old, new, want) in rows {
        assert_eq!(plan_remote_change(desired, old, new), want, "{name}");
    }
    // Whatever the incremental path does, a full plan afterwards agrees.
    let fake = FakeDataplane::new();
    let mut desired = d.clone();
    reconcile(&fake, &desired).unwrap();
    crate::overlay::ensure_remote(&fake, &mut desired, moved).unwrap();
    assert_eq!(
        plan(&desired, &fake.observe(&desired.scope()).unwrap()).unwrap(),
        vec![]
    );
}
