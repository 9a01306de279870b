//! The endpoint record a node gossips for each of its tasks on each overlay
//! network it is attached to (scope = network id, key = task id). Other
//! nodes program FDB and neighbor entries from it; later, load balancers and
//! DNS read it too. JSON: small, and readable when debugging.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub task_id: String,
    pub task_name: String,
    pub service_id: String,
    pub service_name: String,
    pub node_id: String,
    /// Address on the network, CIDR (`10.0.1.5/24`).
    pub addr: String,
    pub mac: String,
    /// Underlay address of the node running the task.
    pub vtep: Ipv4Addr,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The service's VIP on this network, CIDR; empty in dnsrr mode.
    #[serde(default)]
    pub vip: String,
    /// The service resolves to its task addresses (no VIP).
    #[serde(default)]
    pub dnsrr: bool,
    /// The task's process runs: only then is it a load-balancing backend
    /// and a DNS answer (the overlay entries exist from the start).
    #[serde(default)]
    pub running: bool,
    /// Ports the service publishes through the routing mesh (records on
    /// the ingress network only): every node forwards them to the VIP.
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
}

/// A port published through the routing mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub udp: bool,
    pub published: u16,
    pub target: u16,
}

impl EndpointRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an endpoint record always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Option<EndpointRecord> {
        serde_json::from_slice(bytes).ok()
    }

    /// The address without its prefix length.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.addr.split('/').next()?.parse().ok()
    }

    /// The VIP without its prefix length.
    pub fn vip_ip(&self) -> Option<Ipv4Addr> {
        self.vip.split('/').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let r = EndpointRecord {
            task_id: "t".into(),
            task_name: "web.1".into(),
            service_id: "s".into(),
            service_name: "web".into(),
            node_id: "n".into(),
            addr: "10.0.1.5/24".into(),
            mac: "02:42:0a:00:01:05".into(),
            vtep: Ipv4Addr::new(192, 0, 2, 1),
            aliases: vec![],
            vip: "10.0.1.2/24".into(),
            dnsrr: false,
            running: true,
            ports: vec![PublishedPort {
                udp: false,
                published: 8080,
                target: 80,
            }],
        };
        assert_eq!(EndpointRecord::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.ip(), Some(Ipv4Addr::new(10, 0, 1, 5)));
        assert_eq!(r.vip_ip(), Some(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(EndpointRecord::decode(b"{nope"), None);
    }
}
