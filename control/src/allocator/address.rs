//! Addresses on a network: what is in use (tasks, VIPs, ingress sandboxes) and the next
//! free one, and the MAC derived from an address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mesh_proto::Network;

use super::{AllocError, invalid};
use crate::store::StoreState;

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

/// Addresses in use, per network, computed on first need and kept up to date as a plan
/// hands out more.
pub struct Addresses<'s> {
    state: &'s StoreState,
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl<'s> Addresses<'s> {
    pub fn new(state: &'s StoreState) -> Addresses<'s> {
        Addresses {
            state,
            used: BTreeMap::new(),
        }
    }

    /// The next free address of `network_id`, as CIDR text.
    pub fn allocate(&mut self, network_id: &str) -> Result<String, AllocError> {
        let network =
            self.state.networks.get(network_id).ok_or_else(|| {
                AllocError::NotFound(format!("network {network_id} does not exist"))
            })?;
        let used = self
            .used
            .entry(network_id.to_string())
            .or_insert_with(|| addresses_in_use(self.state, network_id));
        allocate_address(network, used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::test_network as net;

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
