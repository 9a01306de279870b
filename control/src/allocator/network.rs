//! Subnets, gateways and VNIs of a new network.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mesh_proto::{ClusterSpec, Network, NetworkSpec};

use super::{AllocError, invalid};

/// First VNI handed out (lower ones are left to hand-made VXLANs).
pub const FIRST_VNI: u32 = 4096;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Parses a CIDR whose host bits are clear.
pub fn parse_subnet(flag: &str, text: &str) -> Result<Ipv4Net, AllocError> {
    let net: Ipv4Net = text.parse().map_err(|_| {
        invalid(format!(
            "{flag}: {text:?} is not an IPv4 CIDR (like 10.20.0.0/24)"
        ))
    })?;
    if net.addr() != net.network() {
        return Err(invalid(format!(
            "{flag}: {text} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

/// What a network is given when it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAlloc {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vni: u32,
}

/// Subnets of existing networks, with their names (for error messages).
fn subnets_in_use(networks: &[&Network]) -> Vec<(Ipv4Net, String)> {
    networks
        .iter()
        .filter_map(|n| {
            n.subnet.parse::<Ipv4Net>().ok().map(|s| {
                (
                    s,
                    n.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                )
            })
        })
        .collect()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Addressing and VNI for a new network.
pub fn allocate_network(
    spec: &NetworkSpec,
    existing: &[&Network],
    cluster: &ClusterSpec,
    avoid: &[(Ipv4Net, String)],
) -> Result<NetworkAlloc, AllocError> {
    allocate_network_as("--subnet", spec, existing, cluster, avoid)
}

/// Ranges no overlay network can work on, whatever the cluster: they are not unicast on a
/// link, or they are the gateway bridge every node has.
pub fn unusable_subnets() -> Vec<(Ipv4Net, String)> {
    [
        ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
        ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        (
            mesh_common::GATEWAY_BRIDGE_SUBNET,
            "the nodes' gateway bridge (mesh_gwbridge, 172.30.0.0/16)",
        ),
    ]
    .into_iter()
    .map(|(net, what)| {
        (
            net.parse().expect("constant subnets parse"),
            what.to_string(),
        )
    })
    .collect()
}

/// [`allocate_network`], with errors about the subnet naming `subnet_flag` (the flag the
/// user gave it with: `--subnet`, or `--ingress-subnet` at init).
pub fn allocate_network_as(
    subnet_flag: &str,
    spec: &NetworkSpec,
    existing: &[&Network],
    cluster: &ClusterSpec,
    avoid: &[(Ipv4Net, String)],
) -> Result<NetworkAlloc, AllocError> {
    let used = subnets_in_use(existing);
    let mut taken: Vec<(Ipv4Net, String)> = unusable_subnets();
    taken.extend(avoid.iter().cloned());
    let subnet = if spec.subnet.is_empty() {
        if !spec.gateway.is_empty() {
            return Err(invalid(format!("--gateway: needs {subnet_flag}")));
        }
        if !spec.ip_range.is_empty() {
            return Err(invalid(format!("--ip-range: needs {subnet_flag}")));
        }
        let mut busy = used.clone();
        busy.extend(taken.iter().cloned());
        subnet_from_pools(&busy, cluster)?
    } else {
        let subnet = parse_subnet(subnet_flag, &spec.subnet)?;
        if subnet.prefix_len() > 29 {
            return Err(invalid(format!(
                "{subnet_flag}: {subnet} is too small (at most /29)"
            )));
        }
        if let Some((other, name)) = used.iter().find(|(u, _)| overlaps(u, &subnet)) {
            return Err(invalid(format!(
                "{subnet_flag}: {subnet} overlaps network {name} ({other})"
            )));
        }
        if let Some((_, what)) = taken.iter().find(|(u, _)| overlaps(u, &subnet)) {
            return Err(invalid(format!(
                "{subnet_flag}: {subnet} cannot be an overlay subnet: it overlaps {what}"
            )));
        }
        subnet
    };
    let gateway = if spec.gateway.is_empty() {
        first_host(&subnet)
    } else {
        let gw: Ipv4Addr = spec.gateway.parse().map_err(|_| {
            invalid(format!(
                "--gateway: {:?} is not an IPv4 address",
                spec.gateway
            ))
        })?;
        if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
            return Err(invalid(format!(
                "--gateway: {gw} is not a host address of subnet {subnet}"
            )));
        }
        gw
    };
    if !spec.ip_range.is_empty() {
        let range = parse_subnet("--ip-range", &spec.ip_range)?;
        if !subnet.contains(&range) {
            return Err(invalid(format!(
                "--ip-range: {range} is not within subnet {subnet}"
            )));
        }
    }
    let vnis: BTreeSet<u32> = existing.iter().map(|n| n.vni).collect();
    let vni = (FIRST_VNI..=MAX_VNI)
        .find(|v| !vnis.contains(v))
        .ok_or_else(|| AllocError::Exhausted("no VXLAN network identifier left".into()))?;
    Ok(NetworkAlloc {
        subnet,
        gateway,
        vni,
    })
}

/// What no new network of the cluster in `state` may overlap besides other networks and
/// [`unusable_subnets`]: the underlay addresses of its nodes and the ranges recorded at init
/// (the first host's routes and resolvers).
pub fn reserved_subnets(state: &crate::store::StoreState) -> Vec<(Ipv4Net, String)> {
    let mut out: Vec<(Ipv4Net, String)> = state
        .nodes
        .values()
        .filter_map(|n| {
            let ip: Ipv4Addr = n.addr.parse().ok()?;
            Some((
                Ipv4Net::from(ip),
                format!("the address of node {} ({ip})", n.hostname),
            ))
        })
        .collect();
    let recorded = state
        .cluster
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .map(|s| s.reserved_subnets.clone())
        .unwrap_or_default();
    for r in recorded {
        let mut parts = r.splitn(2, ' ');
        let Some(net) = parts.next().and_then(|n| n.parse::<Ipv4Net>().ok()) else {
            continue;
        };
        let why = parts.next().unwrap_or("reserved");
        out.push((net, format!("a {why} of the host mesh init ran on ({net})")));
    }
    out
}

/// The subnet's first host address (the default gateway).
pub fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

fn subnet_from_pools(
    used: &[(Ipv4Net, String)],
    cluster: &ClusterSpec,
) -> Result<Ipv4Net, AllocError> {
    let mask = u8::try_from(cluster.default_addr_pool_mask_length).unwrap_or(24);
    let pools: Vec<Ipv4Net> = cluster
        .default_addr_pool
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    for pool in &pools {
        if let Some(free) = first_free(pool, mask, used) {
            return Ok(free);
        }
    }
    let list = pools
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(AllocError::Exhausted(format!(
        "the default address pool is exhausted: every /{mask} of {list} is in use (give --subnet, or init the cluster with a larger --default-addr-pool)"
    )))
}

/// The lowest `/mask` of `pool` that overlaps nothing in `used`. A candidate that overlaps
/// used ranges is passed over together with those ranges, so the search takes at most one step
/// per used range, however many subnets the pool holds (a /1 holds 2^28 /29s).
fn first_free(pool: &Ipv4Net, mask: u8, used: &[(Ipv4Net, String)]) -> Option<Ipv4Net> {
    if mask < pool.prefix_len() || mask > 32 {
        return None;
    }
    let size = 1u64 << (32 - mask);
    let end = u64::from(u32::from(pool.broadcast())) + 1;
    let mut at = u64::from(u32::from(pool.network()));
    while at < end {
        let start = u32::try_from(at).expect("below the pool's end, so within IPv4");
        let candidate = Ipv4Net::new(Ipv4Addr::from(start), mask).expect("mask is at most 32");
        let past_overlaps = used
            .iter()
            .filter(|(u, _)| overlaps(u, &candidate))
            .map(|(u, _)| u64::from(u32::from(u.broadcast())) + 1)
            .max();
        match past_overlaps {
            None => return Some(candidate),
            // Every range that overlaps the candidate ends at or after its start: the next
            // aligned candidate after the furthest end is at least one subnet on.
            Some(past) => at = past.max(at + size).div_ceil(size) * size,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::test_network as net;

    fn cluster(pools: &[&str], mask: u32) -> ClusterSpec {
        ClusterSpec {
            default_addr_pool: pools.iter().map(|p| p.to_string()).collect(),
            default_addr_pool_mask_length: mask,
            ..Default::default()
        }
    }

    fn spec(subnet: &str, gateway: &str, ip_range: &str) -> NetworkSpec {
        NetworkSpec {
            name: "n".into(),
            subnet: subnet.into(),
            gateway: gateway.into(),
            ip_range: ip_range.into(),
            ..Default::default()
        }
    }

    #[test]
    fn network_allocation_table() {
        let existing_a = net("a", "10.0.0.0/24", 4096);
        let existing_b = net("b", "10.0.2.0/23", 4097);
        let existing = [&existing_a, &existing_b];
        let pool = cluster(&["10.0.0.0/8"], 24);
        let ok = |subnet: &str, gw: &str, vni| {
            Ok(NetworkAlloc {
                subnet: subnet.parse().unwrap(),
                gateway: gw.parse().unwrap(),
                vni,
            })
        };
        let cases: Vec<(NetworkSpec, Result<NetworkAlloc, &str>)> = vec![
            (spec("", "", ""), ok("10.0.1.0/24", "10.0.1.1", 4098)),
            (
                spec("10.20.0.0/24", "", ""),
                ok("10.20.0.0/24", "10.20.0.1", 4098),
            ),
            (
                spec("10.20.0.0/24", "10.20.0.254", "10.20.0.128/25"),
                ok("10.20.0.0/24", "10.20.0.254", 4098),
            ),
            (
                spec("10.0.3.0/24", "", ""),
                Err("--subnet: 10.0.3.0/24 overlaps network b (10.0.2.0/23)"),
            ),
            (
                spec("10.0.0.0/16", "", ""),
                Err("--subnet: 10.0.0.0/16 overlaps network a (10.0.0.0/24)"),
            ),
            (
                spec("10.20.0.5/24", "", ""),
                Err("--subnet: 10.20.0.5/24 has host bits set; did you mean 10.20.0.0/24?"),
            ),
            (
                spec("banana", "", ""),
                Err("--subnet: \"banana\" is not an IPv4 CIDR (like 10.20.0.0/24)"),
            ),
            (
                spec("10.20.0.0/24", "10.30.0.1", ""),
                Err("--gateway: 10.30.0.1 is not a host address of subnet 10.20.0.0/24"),
            ),
            (
                spec("10.20.0.0/24", "10.20.0.255", ""),
                Err("--gateway: 10.20.0.255 is not a host address of subnet 10.20.0.0/24"),
            ),
            (
                spec("10.20.0.0/24", "", "10.21.0.0/25"),
                Err("--ip-range: 10.21.0.0/25 is not within subnet 10.20.0.0/24"),
            ),
            (spec("", "10.0.9.1", ""), Err("--gateway: needs --subnet")),
            (
                spec("10.20.0.0/30", "", ""),
                Err("--subnet: 10.20.0.0/30 is too small (at most /29)"),
            ),
        ];
        for (spec, want) in cases {
            let got = allocate_network(&spec, &existing, &pool, &[]);
            match want {
                Ok(w) => assert_eq!(got, Ok(w), "{spec:?}"),
                Err(msg) => assert_eq!(got.unwrap_err().to_string(), msg, "{spec:?}"),
            }
        }
    }

    #[test]
    fn subnets_that_cannot_work_are_refused_and_pools_go_around_them() {
        let pool = cluster(&["10.0.0.0/8"], 24);
        let node: Vec<(Ipv4Net, String)> = vec![(
            "10.0.0.5/32".parse().unwrap(),
            "the address of node n1 (10.0.0.5)".into(),
        )];
        for (subnet, why) in [
            ("224.1.0.0/24", "multicast"),
            ("127.0.0.0/24", "loopback"),
            ("169.254.1.0/24", "link-local"),
            ("240.0.0.0/24", "reserved"),
            ("0.0.0.0/24", "this network"),
            ("172.30.4.0/24", "gateway bridge"),
            ("10.0.0.0/29", "the address of node n1"),
        ] {
            let err = allocate_network(&spec(subnet, "", ""), &[], &pool, &node)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("--subnet: {subnet} cannot be an overlay subnet"))
                    && err.contains(why),
                "{subnet}: {err}"
            );
        }
        let got = allocate_network(&spec("", "", ""), &[], &pool, &node).unwrap();
        assert_eq!(
            got.subnet.to_string(),
            "10.0.1.0/24",
            "the node's /24 is skipped"
        );
    }

    #[test]
    fn pool_exhaustion_is_a_clear_error() {
        let pool = cluster(&["10.50.0.0/23"], 24);
        let a = net("a", "10.50.0.0/24", 4096);
        let b = net("b", "10.50.1.0/24", 4097);
        let err = allocate_network(&spec("", "", ""), &[&a, &b], &pool, &[]).unwrap_err();
        assert!(matches!(err, AllocError::Exhausted(_)));
        assert!(err.to_string().contains("exhausted"), "{err}");
        let got = allocate_network(&spec("", "", ""), &[&a], &pool, &[]).unwrap();
        assert_eq!(got.subnet.to_string(), "10.50.1.0/24");
    }

    #[test]
    fn huge_pools_are_searched_by_skipping_used_ranges() {
        // A /3 of which every /29 is unusable (multicast and reserved): 2^26 candidates.
        let pool = cluster(&["224.0.0.0/3", "10.0.0.0/8"], 29);
        let started = std::time::Instant::now();
        let got = allocate_network(&spec("", "", ""), &[], &pool, &[]).unwrap();
        assert_eq!(got.subnet, "10.0.0.0/29".parse::<Ipv4Net>().unwrap());
        // A /1 whose first /8 (0.0.0.0/8, unusable) and a /9 given to a node are in use.
        let pool = cluster(&["0.0.0.0/1"], 29);
        let avoid = [("1.0.0.0/9".parse().unwrap(), "a node".to_string())];
        let got = allocate_network(&spec("", "", ""), &[], &pool, &avoid).unwrap();
        assert_eq!(got.subnet, "1.128.0.0/29".parse::<Ipv4Net>().unwrap());
        let only_used = cluster(&["224.0.0.0/3"], 29);
        assert!(matches!(
            allocate_network(&spec("", "", ""), &[], &only_used, &[]),
            Err(AllocError::Exhausted(_))
        ));
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(1),
            "three allocations took {elapsed:?}"
        );
        // Unaligned used ranges: the next candidate is aligned after them.
        let pool = cluster(&["10.0.0.0/16"], 24);
        let a = net("a", "10.0.0.0/25", 4096);
        let b = net("b", "10.0.0.128/26", 4097);
        let c = net("c", "10.0.1.8/29", 4098);
        let got = allocate_network(&spec("", "", ""), &[&a, &b, &c], &pool, &[]).unwrap();
        assert_eq!(got.subnet, "10.0.2.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn vnis_start_at_4096_and_fill_holes() {
        let pool = cluster(&["10.0.0.0/8"], 24);
        let a = net("a", "10.0.0.0/24", 4096);
        let c = net("c", "10.0.2.0/24", 4098);
        assert_eq!(
            allocate_network(&spec("", "", ""), &[], &pool, &[])
                .unwrap()
                .vni,
            FIRST_VNI
        );
        assert_eq!(
            allocate_network(&spec("", "", ""), &[&a, &c], &pool, &[])
                .unwrap()
                .vni,
            4097
        );
    }
}
