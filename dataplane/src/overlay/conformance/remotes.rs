//! Cases about the FDB and neighbor entries of remote endpoints.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::fixtures::{
    A, B, Harness, assert_converged, cidr, fdb_of, ifname, node, observe, remote, vni,
};
use crate::overlay::model::{NetworkSpec, RemoteEndpoint};
use crate::overlay::observed::FdbEntry;
use crate::overlay::op::Op;
use crate::overlay::{Dataplane, ensure_remote, reconcile, remove_remote};

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
