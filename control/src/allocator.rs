//! Address and identifier allocation, as pure functions of the store state:
//! subnets (from the cluster's default pools when none is asked for),
//! gateways, VNIs (from 4096 up), task addresses and service VIPs.
//!
//! Nothing is kept beside the store: what is in use is read from the
//! objects themselves (networks' subnets and VNIs, tasks' attachments,
//! services' VIPs), so an allocation made by one leader is seen by the next
//! and two allocations can never hand out the same thing (the transaction
//! that stores them is conditional on the versions they were computed from).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mesh_proto::{ClusterSpec, Network, NetworkSpec};

use crate::store::StoreState;

/// First VNI handed out (lower ones are left to hand-made VXLANs).
pub const FIRST_VNI: u32 = 4096;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// An input is malformed or inconsistent; the message names the flag.
    #[error("{0}")]
    Invalid(String),
    /// A pool is used up.
    #[error("{0}")]
    Exhausted(String),
}

fn invalid(msg: impl Into<String>) -> AllocError {
    AllocError::Invalid(msg.into())
}

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
) -> Result<NetworkAlloc, AllocError> {
    let used = subnets_in_use(existing);
    let subnet = if spec.subnet.is_empty() {
        if !spec.gateway.is_empty() {
            return Err(invalid("--gateway: needs --subnet"));
        }
        if !spec.ip_range.is_empty() {
            return Err(invalid("--ip-range: needs --subnet"));
        }
        subnet_from_pools(&used, cluster)?
    } else {
        let subnet = parse_subnet("--subnet", &spec.subnet)?;
        if subnet.prefix_len() > 29 {
            return Err(invalid(format!(
                "--subnet: {subnet} is too small (at most /29)"
            )));
        }
        if let Some((other, name)) = used.iter().find(|(u, _)| overlaps(u, &subnet)) {
            return Err(invalid(format!(
                "--subnet: {subnet} overlaps network {name} ({other})"
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

fn first_host(net: &Ipv4Net) -> Ipv4Addr {
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
        let Ok(candidates) = pool.subnets(mask) else {
            continue;
        };
        if let Some(free) = candidates
            .into_iter()
            .find(|c| used.iter().all(|(u, _)| !overlaps(u, c)))
        {
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

/// Addresses of `network_id` held by tasks (any state), service VIPs and
/// nodes' ingress sandboxes.
pub fn addresses_in_use(state: &StoreState, network_id: &str) -> BTreeSet<Ipv4Addr> {
    let tasks = state
        .tasks
        .values()
        .flat_map(|t| t.networks.iter())
        .filter(|a| a.network_id == network_id)
        .map(|a| a.addr.as_str());
    let vips = state
        .services
        .values()
        .flat_map(|s| s.vips.iter())
        .filter(|v| v.network_id == network_id)
        .map(|v| v.addr.as_str());
    let nodes = state
        .nodes
        .values()
        .filter_map(|n| n.ingress.as_ref())
        .filter(|a| a.network_id == network_id)
        .map(|a| a.addr.as_str());
    tasks
        .chain(vips)
        .chain(nodes)
        .filter_map(|a| a.parse::<Ipv4Net>().ok().map(|n| n.addr()))
        .collect()
}

/// The lowest free address of `network` (inside its `--ip-range` if any),
/// as CIDR text with the subnet's prefix; `used` gains it.
pub fn allocate_address(
    network: &Network,
    used: &mut BTreeSet<Ipv4Addr>,
) -> Result<String, AllocError> {
    let subnet: Ipv4Net = network
        .subnet
        .parse()
        .map_err(|_| invalid(format!("network {} has no subnet", network.id)))?;
    let range = network
        .spec
        .as_ref()
        .filter(|s| !s.ip_range.is_empty())
        .and_then(|s| s.ip_range.parse::<Ipv4Net>().ok())
        .unwrap_or(subnet);
    let gateway: Option<Ipv4Addr> = network.gateway.parse().ok();
    let found = range.hosts().find(|ip| {
        *ip != subnet.network()
            && *ip != subnet.broadcast()
            && Some(*ip) != gateway
            && !used.contains(ip)
    });
    let name = network
        .spec
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or(&network.id);
    let ip = found.ok_or_else(|| {
        AllocError::Exhausted(format!(
            "network {name} has no free address left in {range}"
        ))
    })?;
    used.insert(ip);
    Ok(format!("{ip}/{}", subnet.prefix_len()))
}

/// The routing-mesh network, if the cluster has one.
pub fn ingress_network(state: &StoreState) -> Option<&Network> {
    state
        .networks
        .values()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
}

/// True when the ports include one published through the routing mesh.
pub fn publishes_ingress(ports: &[mesh_proto::PortConfig]) -> bool {
    ports
        .iter()
        .any(|p| p.publish_mode() == mesh_proto::PublishMode::Ingress)
}

/// The MAC of an overlay address: `02:42:` followed by the four IP bytes,
/// so it never needs to be looked up or stored.
pub fn mac_for(addr_cidr: &str) -> String {
    let ip = addr_cidr
        .parse::<Ipv4Net>()
        .map(|n| n.addr())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn net(name: &str, subnet: &str, vni: u32) -> Network {
        Network {
            id: format!("id-{name}"),
            spec: Some(NetworkSpec {
                name: name.into(),
                ..Default::default()
            }),
            subnet: subnet.into(),
            gateway: first_host(&subnet.parse().unwrap()).to_string(),
            vni,
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
            let got = allocate_network(&spec, &existing, &pool);
            match want {
                Ok(w) => assert_eq!(got, Ok(w), "{spec:?}"),
                Err(msg) => assert_eq!(got.unwrap_err().to_string(), msg, "{spec:?}"),
            }
        }
    }

    #[test]
    fn pool_exhaustion_is_a_clear_error() {
        let pool = cluster(&["10.50.0.0/23"], 24);
        let a = net("a", "10.50.0.0/24", 4096);
        let b = net("b", "10.50.1.0/24", 4097);
        let err = allocate_network(&spec("", "", ""), &[&a, &b], &pool).unwrap_err();
        assert!(matches!(err, AllocError::Exhausted(_)));
        assert!(err.to_string().contains("exhausted"), "{err}");
        let got = allocate_network(&spec("", "", ""), &[&a], &pool).unwrap();
        assert_eq!(got.subnet.to_string(), "10.50.1.0/24");
    }

    #[test]
    fn vnis_start_at_4096_and_fill_holes() {
        let pool = cluster(&["10.0.0.0/8"], 24);
        let a = net("a", "10.0.0.0/24", 4096);
        let c = net("c", "10.0.2.0/24", 4098);
        assert_eq!(
            allocate_network(&spec("", "", ""), &[], &pool).unwrap().vni,
            FIRST_VNI
        );
        assert_eq!(
            allocate_network(&spec("", "", ""), &[&a, &c], &pool)
                .unwrap()
                .vni,
            4097
        );
    }

    #[test]
    fn addresses_skip_network_gateway_broadcast_and_used() {
        let n = net("a", "10.9.0.0/29", 4096);
        let mut used = BTreeSet::new();
        let got: Vec<String> = (0..5)
            .map(|_| allocate_address(&n, &mut used).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "10.9.0.2/29",
                "10.9.0.3/29",
                "10.9.0.4/29",
                "10.9.0.5/29",
                "10.9.0.6/29"
            ]
        );
        let err = allocate_address(&n, &mut used).unwrap_err();
        assert!(matches!(err, AllocError::Exhausted(_)), "{err}");
    }

    #[test]
    fn addresses_come_from_the_ip_range() {
        let mut n = net("a", "10.9.0.0/24", 4096);
        n.spec.as_mut().unwrap().ip_range = "10.9.0.128/25".into();
        let mut used = BTreeSet::new();
        assert_eq!(allocate_address(&n, &mut used).unwrap(), "10.9.0.129/24");
    }

    #[test]
    fn mac_is_derived_from_the_address() {
        assert_eq!(mac_for("10.20.0.5/24"), "02:42:0a:14:00:05");
    }
}
