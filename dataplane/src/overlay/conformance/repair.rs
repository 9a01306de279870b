//! Cases about removing what is stale and repairing drift.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::fixtures::{
    A, B, Harness, assert_converged, cidr, fdb_of, ifname, node, observe, remote, replan, task_id,
    vni,
};
use crate::netns::At;
use crate::overlay::Dataplane;
use crate::overlay::observed::FdbEntry;
use crate::overlay::op::{Op, VxlanSpec};
use crate::overlay::reconcile;
use crate::types::Mac;

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
            vxlan: VxlanSpec {
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
