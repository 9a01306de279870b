//! What the endpoint records of a network say about its services: the DNS
//! entries and the load-balanced VIPs. Pure, so the rules are tested in
//! tables; the worker applies the results.

use std::collections::{BTreeMap, BTreeSet};

use mesh_dataplane::lb::{LbService, LbTable};

use super::record::EndpointRecord;
use crate::dns::{EndpointMode, ServiceEntry, ServiceInfo, TaskEntry};

/// Every endpoint record this node knows (its own and gossiped), per
/// network, keyed by (owner node, task id).
#[derive(Default, Debug)]
pub struct Endpoints {
    by_network: BTreeMap<String, BTreeMap<(String, String), EndpointRecord>>,
}

impl Endpoints {
    /// Records `r`; true if anything changed.
    pub fn upsert(&mut self, network: &str, owner: &str, r: EndpointRecord) -> bool {
        let slot = self.by_network.entry(network.to_string()).or_default();
        let key = (owner.to_string(), r.task_id.clone());
        if slot.get(&key) == Some(&r) {
            return false;
        }
        slot.insert(key, r);
        true
    }

    /// Forgets one record; true if it was known.
    pub fn remove(&mut self, network: &str, owner: &str, task_id: &str) -> bool {
        let Some(slot) = self.by_network.get_mut(network) else {
            return false;
        };
        let gone = slot
            .remove(&(owner.to_string(), task_id.to_string()))
            .is_some();
        if slot.is_empty() {
            self.by_network.remove(network);
        }
        gone
    }

    pub fn remove_network(&mut self, network: &str) {
        self.by_network.remove(network);
    }

    /// Records of tasks (not of ingress sandboxes, which have no service).
    fn records(&self, network: &str) -> impl Iterator<Item = &EndpointRecord> {
        self.all(network).filter(|r| !r.service_id.is_empty())
    }

    fn all(&self, network: &str) -> impl Iterator<Item = &EndpointRecord> {
        self.by_network
            .get(network)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Addresses and MACs of the ingress sandboxes on `network`: where
    /// routed connections may enter a task from.
    pub fn sandboxes(&self, network: &str) -> Vec<(std::net::Ipv4Addr, String)> {
        self.all(network)
            .filter(|r| r.service_id.is_empty())
            .filter_map(|r| Some((r.ip()?, r.mac.clone())))
            .collect()
    }

    /// What the routing mesh publishes, from the records on the ingress
    /// network: (protocol is udp, published port) -> (VIP, target port).
    pub fn publications(&self, network: &str) -> BTreeMap<(bool, u16), (std::net::Ipv4Addr, u16)> {
        let mut out = BTreeMap::new();
        for r in self.records(network).filter(|r| r.running) {
            let Some(vip) = r.vip_ip() else { continue };
            for p in &r.ports {
                out.insert((p.udp, p.published), (vip, p.target));
            }
        }
        out
    }

    /// The services of `network` as DNS sees them (running tasks only).
    pub fn dns_entries(&self, network: &str) -> Vec<ServiceEntry> {
        let mut services: BTreeMap<&str, ServiceEntry> = BTreeMap::new();
        for r in self.records(network) {
            let mode = match (r.dnsrr, r.vip_ip()) {
                (false, Some(vip)) => EndpointMode::Vip(vip),
                _ => EndpointMode::Dnsrr,
            };
            let entry = services
                .entry(&r.service_id)
                .or_insert_with(|| ServiceEntry {
                    info: ServiceInfo {
                        id: r.service_id.clone(),
                        name: r.service_name.clone(),
                        aliases: Vec::new(),
                        mode,
                    },
                    tasks: Vec::new(),
                });
            for a in &r.aliases {
                if !entry.info.aliases.contains(a) {
                    entry.info.aliases.push(a.clone());
                }
            }
            if let (true, Some(ip)) = (r.running, r.ip()) {
                entry.tasks.push(TaskEntry {
                    id: r.task_id.clone(),
                    name: r.task_name.clone(),
                    ip,
                });
            }
        }
        services.into_values().collect()
    }

    /// The VIPs of `network` and their backends (running tasks only). A VIP
    /// with no running task stays, with no backend: connections to it are
    /// refused at once instead of hanging.
    pub fn lb_services(&self, network: &str) -> Vec<LbService> {
        let mut vips: BTreeMap<std::net::Ipv4Addr, BTreeSet<std::net::Ipv4Addr>> = BTreeMap::new();
        for r in self.records(network).filter(|r| !r.dnsrr) {
            let Some(vip) = r.vip_ip() else { continue };
            let backends = vips.entry(vip).or_default();
            if let (true, Some(ip)) = (r.running, r.ip()) {
                backends.insert(ip);
            }
        }
        vips.into_iter()
            .map(|(vip, backends)| LbService { vip, backends })
            .collect()
    }

    /// What the load balancer of a task on `networks` must hold.
    pub fn lb_table(&self, networks: &[String]) -> LbTable {
        let mut table = LbTable::default();
        for n in networks {
            for svc in self.lb_services(n) {
                table.upsert(svc);
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn rec(task: &str, service: &str, ip: &str, vip: &str, running: bool) -> EndpointRecord {
        EndpointRecord {
            task_id: task.into(),
            task_name: format!("{service}.{task}"),
            service_id: format!("id-{service}"),
            service_name: service.into(),
            node_id: "n".into(),
            addr: format!("{ip}/24"),
            mac: String::new(),
            vtep: Ipv4Addr::new(192, 0, 2, 1),
            aliases: vec![],
            vip: if vip.is_empty() {
                String::new()
            } else {
                format!("{vip}/24")
            },
            dnsrr: vip.is_empty(),
            running,
            ports: vec![],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn backends_are_the_running_tasks_of_each_vip() {
        let mut e = Endpoints::default();
        assert!(e.upsert("net", "n1", rec("t1", "api", "10.0.0.3", "10.0.0.2", true)));
        assert!(
            !e.upsert("net", "n1", rec("t1", "api", "10.0.0.3", "10.0.0.2", true)),
            "no change"
        );
        e.upsert("net", "n2", rec("t2", "api", "10.0.0.4", "10.0.0.2", true));
        e.upsert("net", "n2", rec("t3", "api", "10.0.0.5", "10.0.0.2", false));
        e.upsert("net", "n2", rec("t4", "db", "10.0.0.7", "", true));
        let lb = e.lb_services("net");
        assert_eq!(lb.len(), 1, "dnsrr services get no VIP");
        assert_eq!(lb[0].vip, ip("10.0.0.2"));
        assert_eq!(
            lb[0].backends,
            BTreeSet::from([ip("10.0.0.3"), ip("10.0.0.4")])
        );
        assert!(e.remove("net", "n1", "t1"));
        assert!(e.remove("net", "n2", "t2"));
        let lb = e.lb_services("net");
        assert!(
            lb[0].backends.is_empty(),
            "the VIP stays, refusing, while no task runs"
        );
    }

    #[test]
    fn dns_entries_group_tasks_by_service_with_their_mode() {
        let mut e = Endpoints::default();
        e.upsert("net", "n1", rec("t1", "api", "10.0.0.3", "10.0.0.2", true));
        let mut aliased = rec("t2", "api", "10.0.0.4", "10.0.0.2", true);
        aliased.aliases = vec!["backend".into()];
        e.upsert("net", "n2", aliased);
        e.upsert("net", "n2", rec("t4", "db", "10.0.0.7", "", true));
        e.upsert("other", "n2", rec("t9", "x", "10.9.0.7", "10.9.0.2", true));
        let dns = e.dns_entries("net");
        assert_eq!(dns.len(), 2);
        let api = dns.iter().find(|s| s.info.name == "api").unwrap();
        assert_eq!(api.info.mode, EndpointMode::Vip(ip("10.0.0.2")));
        assert_eq!(api.info.aliases, ["backend"]);
        assert_eq!(api.tasks.len(), 2);
        let db = dns.iter().find(|s| s.info.name == "db").unwrap();
        assert_eq!(db.info.mode, EndpointMode::Dnsrr);
        let table = e.lb_table(&["net".into(), "other".into()]);
        assert_eq!(
            table.len(),
            2,
            "a task on two networks balances both networks' VIPs"
        );
    }
}
