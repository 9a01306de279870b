//! A service's VIPs (one per network it is on, the ingress network too when it publishes
//! through the routing mesh) and its published ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_proto::{NetworkAttachmentConfig, PortConfig, PortProtocol, PublishMode, VirtualIp};

use super::AllocError;
use super::address::{addresses_in_use, allocate_address, ingress_network, publishes_ingress};
use crate::store::StoreState;

/// Ports handed out when a service publishes one without a number.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// `tcp` or `udp`.
pub fn protocol_name(p: PortProtocol) -> &'static str {
    if p == PortProtocol::Udp { "udp" } else { "tcp" }
}

fn service_name(v: &mesh_proto::Service) -> &str {
    v.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

/// Ports the cluster itself uses on nodes, with what uses them: every node's control and
/// gossip ports and the VXLAN data path. None of them may be published: a published port
/// DNATs traffic to a node's address, and would capture the cluster's own traffic.
pub fn reserved_ports(s: &StoreState) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for n in s.nodes.values() {
        out.entry(n.control_port)
            .or_insert_with(|| format!("the control port of node {}", n.hostname));
        out.entry(n.gossip_port)
            .or_insert_with(|| format!("the gossip port of node {}", n.hostname));
    }
    if let Some(spec) = s.cluster.as_ref().and_then(|c| c.spec.as_ref()) {
        out.entry(spec.data_path_port)
            .or_insert_with(|| "the VXLAN data path".to_string());
    }
    out.remove(&0);
    out
}

/// Published ports of a service as allocated: ingress ports without a number get one from
/// [`DYNAMIC_PORTS`]; a number another service already publishes through the routing mesh,
/// or one the cluster uses itself ([`reserved_ports`]), is refused. `service_id` is the
/// service being updated (its own ports do not conflict).
pub fn allocate_ports(
    s: &StoreState,
    ports: &[PortConfig],
    service_id: Option<&str>,
) -> Result<Vec<PortConfig>, AllocError> {
    let taken: BTreeMap<(u32, i32), &str> = s
        .services
        .values()
        .filter(|v| Some(v.id.as_str()) != service_id)
        .flat_map(|v| {
            v.ports
                .iter()
                .filter(|p| p.publish_mode() == PublishMode::Ingress)
                .map(move |p| ((p.published_port, p.protocol), service_name(v)))
        })
        .collect();
    let reserved = reserved_ports(s);
    let mut mine: BTreeSet<(u32, i32)> = BTreeSet::new();
    let mut out = Vec::new();
    for p in ports {
        let mut p = *p;
        if let Some(what) = reserved.get(&p.published_port) {
            return Err(AllocError::Conflict(format!(
                "port {}/{} cannot be published: it is {what}",
                p.published_port,
                protocol_name(p.protocol())
            )));
        }
        if p.publish_mode() == PublishMode::Ingress {
            if p.published_port == 0 {
                p.published_port = DYNAMIC_PORTS
                    .clone()
                    .find(|n| {
                        !taken.contains_key(&(*n, p.protocol))
                            && !mine.contains(&(*n, p.protocol))
                            && !reserved.contains_key(n)
                    })
                    .ok_or_else(|| {
                        AllocError::Exhausted("no published port left in 30000-32767".into())
                    })?;
            } else if let Some(other) = taken.get(&(p.published_port, p.protocol)) {
                return Err(AllocError::Conflict(format!(
                    "port {}/{} is already published by service {other}",
                    p.published_port,
                    protocol_name(p.protocol())
                )));
            }
            mine.insert((p.published_port, p.protocol));
        }
        out.push(p);
    }
    Ok(out)
}

/// VIPs of a service on `networks` (resolved to ids) and, when `ports` publish through the
/// routing mesh, on the ingress network: kept for networks it already had (`current`),
/// allocated for new ones. None in dnsrr mode.
pub fn allocate_vips(
    s: &StoreState,
    networks: &[NetworkAttachmentConfig],
    dnsrr: bool,
    ports: &[PortConfig],
    current: &[VirtualIp],
) -> Result<Vec<VirtualIp>, AllocError> {
    if dnsrr {
        return Ok(Vec::new());
    }
    let mut targets: Vec<&str> = networks.iter().map(|a| a.target.as_str()).collect();
    if publishes_ingress(ports) {
        let ingress = ingress_network(s).ok_or_else(|| {
            AllocError::NotFound("this cluster has no ingress network to publish ports on".into())
        })?;
        targets.push(&ingress.id);
    }
    let mut out = Vec::new();
    for target in targets {
        if let Some(v) = current.iter().find(|v| v.network_id == target) {
            out.push(v.clone());
            continue;
        }
        let network = s
            .networks
            .get(target)
            .ok_or_else(|| AllocError::NotFound(format!("network {target} not found")))?;
        let mut used: BTreeSet<Ipv4Addr> = addresses_in_use(s, &network.id);
        out.push(VirtualIp {
            network_id: network.id.clone(),
            addr: allocate_address(network, &mut used)?,
        });
    }
    Ok(out)
}
