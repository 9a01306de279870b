//! The endpoint record a node gossips for each of its tasks on each overlay
//! network it is attached to (scope = network id, key = task id), and the
//! typed [`Endpoint`] it is parsed into once, where it enters the worker.
//! Other nodes program FDB and neighbor entries, load balancers, DNS and the
//! routing mesh from it. JSON on the wire: small, and readable when debugging.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mesh_common::{NodeId, ServiceId};
use mesh_dataplane::overlay::Mac;
use mesh_proto::{EndpointMode, NetworkAttachment, Task};
use serde::{Deserialize, Serialize};

/// Longest task name, service name or alias accepted from a record.
pub const MAX_NAME_LEN: usize = 255;
/// Most aliases one record may carry.
pub const MAX_ALIASES: usize = 64;

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
    /// Ports the service published through the routing mesh, as agents before the
    /// store-driven routing mesh wrote them: still read, ignored, and no longer written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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

/// One endpoint on one network, parsed and checked: a task's attachment, or a node's
/// ingress sandbox (no service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The record's key: the task id (or the sandbox's own key).
    pub key: String,
    pub task_name: String,
    pub node: NodeId,
    pub addr: Ipv4Net,
    pub mac: Mac,
    /// Underlay address of the node running it.
    pub vtep: Ipv4Addr,
    /// Its process runs: only then is it a backend and a DNS answer.
    pub running: bool,
    pub service: Option<ServiceEndpoint>,
}

/// What an endpoint of a service says about the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub id: ServiceId,
    pub name: String,
    pub aliases: Vec<String>,
    /// The service's VIP on this network (none in dnsrr mode).
    pub vip: Option<Ipv4Addr>,
    /// Names resolve to task addresses, not to a VIP.
    pub dnsrr: bool,
}

impl Endpoint {
    /// The endpoint's address without its prefix.
    pub fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }

    /// Parses and checks a record received as `key` (the record must name itself by it).
    pub fn from_record(key: &str, r: &EndpointRecord) -> Result<Endpoint, String> {
        if r.task_id != key {
            return Err(format!("record {key:?} names task {:?}", r.task_id));
        }
        let name = |what: &str, s: &str| {
            if s.len() > MAX_NAME_LEN {
                Err(format!("{what} is longer than {MAX_NAME_LEN} bytes"))
            } else {
                Ok(s.to_string())
            }
        };
        let addr: Ipv4Net = r
            .addr
            .parse()
            .map_err(|_| format!("address {:?} is not an IPv4 CIDR", r.addr))?;
        let mac: Mac = r
            .mac
            .parse()
            .ok()
            .filter(Mac::is_unicast)
            .ok_or_else(|| format!("MAC {:?} is not a unicast xx:xx:xx:xx:xx:xx", r.mac))?;
        let node = NodeId::parse(&r.node_id).map_err(|e| e.to_string())?;
        let service = if r.service_id.is_empty() {
            None
        } else {
            if r.aliases.len() > MAX_ALIASES {
                return Err(format!("more than {MAX_ALIASES} aliases"));
            }
            let vip = if r.vip.is_empty() {
                None
            } else {
                Some(
                    r.vip
                        .parse::<Ipv4Net>()
                        .map_err(|_| format!("VIP {:?} is not an IPv4 CIDR", r.vip))?
                        .addr(),
                )
            };
            Some(ServiceEndpoint {
                id: ServiceId::parse(&r.service_id).map_err(|e| e.to_string())?,
                name: name("service name", &r.service_name)?,
                aliases: r
                    .aliases
                    .iter()
                    .map(|a| name("alias", a))
                    .collect::<Result<_, _>>()?,
                vip,
                dnsrr: r.dnsrr,
            })
        };
        Ok(Endpoint {
            key: key.to_string(),
            task_name: name("task name", &r.task_name)?,
            node,
            addr,
            mac,
            vtep: r.vtep,
            running: r.running,
            service,
        })
    }

    /// Decodes and checks a record's bytes received as `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Endpoint, String> {
        let r =
            EndpointRecord::decode(bytes).ok_or_else(|| "not an endpoint record".to_string())?;
        Endpoint::from_record(key, &r)
    }

    /// The endpoint of task `t` on its attachment `a`, run by node `node` at `vtep`.
    pub fn of_task(
        t: &Task,
        a: &NetworkAttachment,
        node: &NodeId,
        vtep: Ipv4Addr,
        running: bool,
    ) -> Option<Endpoint> {
        let vip = if a.vip.is_empty() {
            None
        } else {
            Some(a.vip.parse::<Ipv4Net>().ok()?.addr())
        };
        Some(Endpoint {
            key: t.id.clone(),
            task_name: t.name.clone(),
            node: node.clone(),
            addr: a.addr.parse().ok()?,
            mac: a.mac.parse().ok()?,
            vtep,
            running,
            service: Some(ServiceEndpoint {
                id: ServiceId::new(t.service_id.clone()),
                name: t.service_name.clone(),
                aliases: a.aliases.clone(),
                vip,
                dnsrr: t.endpoint_mode() == EndpointMode::Dnsrr,
            }),
        })
    }

    /// The record that gossips this endpoint.
    pub fn to_record(&self) -> EndpointRecord {
        let service = self.service.as_ref();
        EndpointRecord {
            task_id: self.key.clone(),
            task_name: self.task_name.clone(),
            service_id: service.map(|s| s.id.to_string()).unwrap_or_default(),
            service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
            node_id: self.node.to_string(),
            addr: self.addr.to_string(),
            mac: self.mac.to_string(),
            vtep: self.vtep,
            aliases: service.map(|s| s.aliases.clone()).unwrap_or_default(),
            vip: service
                .and_then(|s| s.vip)
                .map(|vip| format!("{vip}/{}", self.addr.prefix_len()))
                .unwrap_or_default(),
            dnsrr: service.is_some_and(|s| s.dnsrr),
            running: self.running,
            ports: Vec::new(),
        }
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
            ports: vec![],
        };
        assert_eq!(EndpointRecord::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.ip(), Some(Ipv4Addr::new(10, 0, 1, 5)));
        assert_eq!(r.vip_ip(), Some(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(EndpointRecord::decode(b"{nope"), None);
        let e = Endpoint::from_record("t", &r).unwrap();
        assert_eq!(e.to_record(), r, "typed and back is the same record");
        let older = EndpointRecord {
            ports: vec![PublishedPort {
                udp: false,
                published: 8080,
                target: 80,
            }],
            ..r.clone()
        };
        assert_eq!(
            Endpoint::decode("t", &older.encode()).unwrap(),
            e,
            "an older agent's record still reads"
        );
        assert_eq!(
            e.service.as_ref().unwrap().vip,
            Some(Ipv4Addr::new(10, 0, 1, 2))
        );
    }

    #[test]
    fn hostile_records_are_refused_with_the_reason() {
        let good = EndpointRecord {
            task_id: "t".into(),
            task_name: "web.1".into(),
            service_id: "s".into(),
            service_name: "web".into(),
            node_id: "n".into(),
            addr: "10.0.1.5/24".into(),
            mac: "02:42:0a:00:01:05".into(),
            vtep: Ipv4Addr::new(192, 0, 2, 1),
            aliases: vec![],
            vip: String::new(),
            dnsrr: true,
            running: true,
            ports: vec![],
        };
        let bad = |f: &dyn Fn(&mut EndpointRecord)| {
            let mut r = good.clone();
            f(&mut r);
            Endpoint::from_record("t", &r).unwrap_err()
        };
        assert!(Endpoint::from_record("t", &good).is_ok());
        assert!(
            Endpoint::from_record("other", &good)
                .unwrap_err()
                .contains("names task")
        );
        assert!(bad(&|r| r.addr = "10.0.1.5".into()).contains("CIDR"));
        assert!(bad(&|r| r.mac = "02:42".into()).contains("MAC"));
        for mac in [
            "+2:42:0a:00:01:05",
            "02:42:0a:00:01:+5",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(bad(&|r| r.mac = mac.into()).contains("MAC"), "{mac}");
        }
        assert!(bad(&|r| r.node_id = String::new()).contains("node id"));
        assert!(bad(&|r| r.task_name = "x".repeat(300)).contains("longer"));
        assert!(bad(&|r| r.aliases = vec!["a".into(); 65]).contains("aliases"));
        assert!(bad(&|r| r.vip = "nope".into()).contains("VIP"));
    }
}
