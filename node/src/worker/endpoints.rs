//! Every endpoint this node knows, its own and gossiped, as one typed table. Everything
//! derived from endpoints comes from here: the overlay's remote endpoints, load-balancer
//! backends, DNS entries, the routing mesh's published ports and the ingress sandboxes that
//! replies go back through. Pure, so the rules are tested in tables; the worker applies the
//! results.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_common::{NetworkId, NodeId};
use mesh_dataplane::lb::{LbService, LbTable};

use super::record::Endpoint;
use mesh_gossip::{RecordEvent, RecordEventKind};

use crate::dns::{EndpointMode, ServiceEntry, ServiceInfo, SharedTable, TaskEntry};

/// Key of an endpoint within its network: (owner node, record key).
pub type EndpointKey = (NodeId, String);

/// What an upsert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upserted {
    Unchanged,
    New,
    /// It replaced this endpoint.
    Replaced(Endpoint),
}

/// Every endpoint this node knows, per network.
#[derive(Default, Debug)]
pub struct EndpointTable {
    by_network: BTreeMap<NetworkId, BTreeMap<EndpointKey, Endpoint>>,
}

impl EndpointTable {
    /// Records `e` as owned by `owner` on `network`.
    pub fn upsert(&mut self, network: &NetworkId, owner: &NodeId, e: Endpoint) -> Upserted {
        let slot = self.by_network.entry(network.clone()).or_default();
        match slot.insert((owner.clone(), e.key.clone()), e.clone()) {
            None => Upserted::New,
            Some(old) if old == e => Upserted::Unchanged,
            Some(old) => Upserted::Replaced(old),
        }
    }

    /// Forgets one endpoint; returns it if it was known.
    pub fn remove(&mut self, network: &NetworkId, owner: &NodeId, key: &str) -> Option<Endpoint> {
        let slot = self.by_network.get_mut(network)?;
        let gone = slot.remove(&(owner.clone(), key.to_string()));
        if slot.is_empty() {
            self.by_network.remove(network);
        }
        gone
    }

    /// Forgets every endpoint of `network`; returns them.
    pub fn remove_network(&mut self, network: &NetworkId) -> Vec<Endpoint> {
        self.by_network
            .remove(network)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }

    /// The endpoint owned by `owner` under `key` on `network`.
    pub fn get(&self, network: &NetworkId, owner: &NodeId, key: &str) -> Option<&Endpoint> {
        self.by_network
            .get(network)?
            .get(&(owner.clone(), key.to_string()))
    }

    /// Whether any endpoint on `network` other than `except` holds `ip`.
    pub fn holds(&self, network: &NetworkId, ip: Ipv4Addr) -> bool {
        self.all(network).any(|e| e.ip() == ip)
    }

    /// Endpoints of `network` owned by other nodes than `me`: what the overlay programs.
    pub fn remotes<'a>(
        &'a self,
        network: &NetworkId,
        me: &'a NodeId,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.by_network
            .get(network)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((owner, _), _)| owner != me)
            .map(|(_, e)| e)
    }

    /// Endpoints of tasks (not of ingress sandboxes, which have no service).
    fn tasks(&self, network: &NetworkId) -> impl Iterator<Item = &Endpoint> {
        self.all(network).filter(|e| e.service.is_some())
    }

    fn all(&self, network: &NetworkId) -> impl Iterator<Item = &Endpoint> {
        self.by_network
            .get(network)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// The services of `network` as DNS sees them (running tasks only).
    pub fn dns_entries(&self, network: &NetworkId) -> Vec<ServiceEntry> {
        let mut services: BTreeMap<&str, ServiceEntry> = BTreeMap::new();
        for e in self.tasks(network) {
            let Some(s) = &e.service else { continue };
            let mode = match (s.dnsrr, s.vip) {
                (false, Some(vip)) => EndpointMode::Vip(vip),
                _ => EndpointMode::Dnsrr,
            };
            let entry = services
                .entry(s.id.as_str())
                .or_insert_with(|| ServiceEntry {
                    info: ServiceInfo {
                        id: s.id.to_string(),
                        name: s.name.clone(),
                        aliases: Vec::new(),
                        mode,
                    },
                    tasks: Vec::new(),
                });
            for a in &s.aliases {
                if !entry.info.aliases.contains(a) {
                    entry.info.aliases.push(a.clone());
                }
            }
            if e.running {
                entry.tasks.push(TaskEntry {
                    id: e.key.clone(),
                    name: e.task_name.clone(),
                    ip: e.ip(),
                });
            }
        }
        services.into_values().collect()
    }

    /// The VIPs of `network` and their backends (running tasks only). A VIP with no running
    /// task stays, with no backend: connections to it are refused at once instead of hanging.
    pub fn lb_services(&self, network: &NetworkId) -> Vec<LbService> {
        let mut vips: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for e in self.tasks(network) {
            let Some(s) = e.service.as_ref().filter(|s| !s.dnsrr) else {
                continue;
            };
            let Some(vip) = s.vip else { continue };
            let backends = vips.entry(vip).or_default();
            if e.running {
                backends.insert(e.ip());
            }
        }
        vips.into_iter()
            .map(|(vip, backends)| LbService { vip, backends })
            .collect()
    }

    /// How many running tasks back each VIP service (`dnsrr` services have no load
    /// balancer), by service name, over every network this node knows: what its load
    /// balancers send the service's VIPs to. A task on several networks counts once.
    pub fn backends_per_service(&self) -> BTreeMap<String, usize> {
        let mut tasks: BTreeMap<&str, BTreeSet<(&NodeId, &str)>> = BTreeMap::new();
        for slot in self.by_network.values() {
            for ((owner, key), e) in slot {
                let Some(s) = e.service.as_ref().filter(|s| !s.dnsrr && s.vip.is_some()) else {
                    continue;
                };
                let backends = tasks.entry(s.name.as_str()).or_default();
                if e.running {
                    backends.insert((owner, key.as_str()));
                }
            }
        }
        tasks
            .into_iter()
            .map(|(name, backends)| (name.to_string(), backends.len()))
            .collect()
    }

    /// What the load balancer of a sandbox on `networks` must hold.
    pub fn lb_table<'a>(&self, networks: impl IntoIterator<Item = &'a NetworkId>) -> LbTable {
        let mut table = LbTable::default();
        for n in networks {
            for svc in self.lb_services(n) {
                table.upsert(svc);
            }
        }
        table
    }
}

/// What a gossip event did to the table.
#[derive(Debug)]
pub enum RecordChange {
    Upserted {
        network: NetworkId,
        endpoint: Endpoint,
        previous: Upserted,
    },
    Removed {
        network: NetworkId,
        endpoint: Endpoint,
    },
}

impl RecordChange {
    pub fn network(&self) -> &NetworkId {
        match self {
            RecordChange::Upserted { network, .. } | RecordChange::Removed { network, .. } => {
                network
            }
        }
    }
}

impl EndpointTable {
    /// Applies a gossip event of another node: the record is parsed and checked first (an
    /// unusable one changes nothing and says why). `None`: the removal of an endpoint that
    /// was not known.
    pub fn apply_event(&mut self, ev: &RecordEvent) -> Result<Option<RecordChange>, String> {
        let network = NetworkId::parse(&ev.scope).map_err(|e| e.to_string())?;
        let owner = NodeId::parse(&ev.owner).map_err(|e| e.to_string())?;
        Ok(match &ev.kind {
            RecordEventKind::Upsert(value) => {
                let endpoint = Endpoint::decode(&ev.key, value)?;
                // Records without a service are ingress sandboxes of older agents: the
                // sandboxes come from the store's node list now.
                if endpoint.service.is_none() {
                    return Ok(None);
                }
                let previous = self.upsert(&network, &owner, endpoint.clone());
                Some(RecordChange::Upserted {
                    network,
                    endpoint,
                    previous,
                })
            }
            RecordEventKind::Removed => self
                .remove(&network, &owner, &ev.key)
                .map(|endpoint| RecordChange::Removed { network, endpoint }),
        })
    }

    /// Writes the services of `networks` into the DNS table.
    pub fn sync_dns<'a>(
        &self,
        table: &SharedTable,
        networks: impl IntoIterator<Item = &'a NetworkId>,
    ) {
        for network in networks {
            let entries = self.dns_entries(network);
            table.update(|t| {
                if entries.is_empty() {
                    t.remove_network(network.as_str());
                } else {
                    t.set_network(network.as_str(), entries);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::record::ServiceEndpoint;
    use mesh_dataplane::overlay::Mac;

    fn rec(task: &str, service: &str, ip: &str, vip: &str, running: bool) -> Endpoint {
        let ip: Ipv4Addr = ip.parse().unwrap();
        Endpoint {
            key: task.into(),
            task_name: format!("{service}.{task}"),
            node: "n".into(),
            addr: ipnet::Ipv4Net::new(ip, 24).unwrap(),
            mac: Mac::from_ipv4(ip),
            vtep: Ipv4Addr::new(192, 0, 2, 1),
            running,
            service: Some(ServiceEndpoint {
                id: format!("id-{service}").into(),
                name: service.into(),
                aliases: vec![],
                vip: (!vip.is_empty()).then(|| vip.parse().unwrap()),
                dnsrr: vip.is_empty(),
            }),
        }
    }

    fn n(id: &str) -> NetworkId {
        id.into()
    }

    fn node(id: &str) -> NodeId {
        id.into()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn backends_per_service_count_running_tasks_once_across_networks() {
        let mut e = EndpointTable::default();
        for net in ["a", "b"] {
            e.upsert(
                &n(net),
                &node("n1"),
                rec("t1", "api", "10.0.0.3", "10.0.0.2", true),
            );
        }
        e.upsert(
            &n("a"),
            &node("n2"),
            rec("t2", "api", "10.0.0.4", "10.0.0.2", true),
        );
        e.upsert(
            &n("a"),
            &node("n2"),
            rec("t3", "web", "10.0.0.5", "10.0.0.6", false),
        );
        e.upsert(&n("a"), &node("n2"), rec("t4", "db", "10.0.0.7", "", true));
        assert_eq!(
            e.backends_per_service(),
            BTreeMap::from([("api".to_string(), 2), ("web".to_string(), 0)]),
            "a VIP with no running task has 0 backends; dnsrr has no load balancer"
        );
        e.remove_network(&n("a"));
        e.remove_network(&n("b"));
        assert!(e.backends_per_service().is_empty());
    }

    #[test]
    fn backends_are_the_running_tasks_of_each_vip() {
        let mut e = EndpointTable::default();
        assert_eq!(
            e.upsert(
                &n("net"),
                &node("n1"),
                rec("t1", "api", "10.0.0.3", "10.0.0.2", true)
            ),
            Upserted::New
        );
        assert_eq!(
            e.upsert(
                &n("net"),
                &node("n1"),
                rec("t1", "api", "10.0.0.3", "10.0.0.2", true)
            ),
            Upserted::Unchanged,
            "no change"
        );
        e.upsert(
            &n("net"),
            &node("n2"),
            rec("t2", "api", "10.0.0.4", "10.0.0.2", true),
        );
        e.upsert(
            &n("net"),
            &node("n2"),
            rec("t3", "api", "10.0.0.5", "10.0.0.2", false),
        );
        e.upsert(
            &n("net"),
            &node("n2"),
            rec("t4", "db", "10.0.0.7", "", true),
        );
        let lb = e.lb_services(&n("net"));
        assert_eq!(lb.len(), 1, "dnsrr services get no VIP");
        assert_eq!(lb[0].vip, ip("10.0.0.2"));
        assert_eq!(
            lb[0].backends,
            BTreeSet::from([ip("10.0.0.3"), ip("10.0.0.4")])
        );
        assert!(e.remove(&n("net"), &node("n1"), "t1").is_some());
        assert!(e.remove(&n("net"), &node("n2"), "t2").is_some());
        let lb = e.lb_services(&n("net"));
        assert!(
            lb[0].backends.is_empty(),
            "the VIP stays, refusing, while no task runs"
        );
    }

    #[test]
    fn dns_entries_group_tasks_by_service_with_their_mode() {
        let mut e = EndpointTable::default();
        e.upsert(
            &n("net"),
            &node("n1"),
            rec("t1", "api", "10.0.0.3", "10.0.0.2", true),
        );
        let mut aliased = rec("t2", "api", "10.0.0.4", "10.0.0.2", true);
        aliased.service.as_mut().unwrap().aliases = vec!["backend".into()];
        e.upsert(&n("net"), &node("n2"), aliased);
        e.upsert(
            &n("net"),
            &node("n2"),
            rec("t4", "db", "10.0.0.7", "", true),
        );
        e.upsert(
            &n("other"),
            &node("n2"),
            rec("t9", "x", "10.9.0.7", "10.9.0.2", true),
        );
        let dns = e.dns_entries(&n("net"));
        assert_eq!(dns.len(), 2);
        let api = dns.iter().find(|s| s.info.name == "api").unwrap();
        assert_eq!(api.info.mode, EndpointMode::Vip(ip("10.0.0.2")));
        assert_eq!(api.info.aliases, ["backend"]);
        assert_eq!(api.tasks.len(), 2);
        let db = dns.iter().find(|s| s.info.name == "db").unwrap();
        assert_eq!(db.info.mode, EndpointMode::Dnsrr);
        let table = e.lb_table(&[n("net"), n("other")]);
        assert_eq!(
            table.len(),
            2,
            "a task on two networks balances both networks' VIPs"
        );
    }
}
