//! Cases about building a node and leaving alone what is right or not ours.

use std::net::Ipv4Addr;

use super::fixtures::{
    A, B, Harness, assert_converged, cidr, ifname, node, observe, remote, task_id,
    task_namespace_exists, vni,
};
use crate::overlay::ids::{Prefix, TaskId};
use crate::overlay::model::{NodeDataplane, Scope};
use crate::overlay::observed::LinkKind;
use crate::overlay::op::Op;
use crate::overlay::plan::plan;
use crate::overlay::{Dataplane, GatewayAllocator, reconcile};

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
