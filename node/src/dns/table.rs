//! The name table the embedded DNS server answers from: per overlay network, the services and
//! tasks this node learned from gossiped endpoint records.
//!
//! Pure: no I/O and no locks. [`NameTable::resolve`] turns (networks of the asking task, query
//! name, query type) into an [`Answer`]; the server turns that into a DNS message.
//!
//! # Names on a network
//! For each service: its name and aliases (the VIP in `vip` mode, every task IP in `dnsrr`
//! mode), `tasks.<name>` and `tasks.<alias>` (every task IP), and for each task its name
//! (`web.1`) and id (its IP). Names are case-insensitive. When one name means several things
//! on a network (an alias shared by two services, say), the answer is the union of their
//! addresses.
//!
//! # Scoping
//! A task sees only the networks it is attached to, in the order given: the first network on
//! which the name exists answers. A name of the cluster that the task may not see is NXDOMAIN
//! (not forwarded: the name is ours, the task may just not see it). Only a name unknown to the
//! cluster is [`Answer::Forward`]: the server asks the upstream resolvers.
//!
//! The networks this node holds are those its own tasks use (gossip is scoped by network), so
//! they do not tell every name of the cluster. The managers do: [`NameTable::set_cluster`]
//! takes the names and aliases of every service and the ids of every node, and with them the
//! table knows a cluster name on any network:
//! - `S` and `tasks.S` for a service name or alias `S`;
//! - `S.N` where `N` is a slot number or a node id: a task name (`web.3`, or `web.<node id>`
//!   for a global service), whether that task exists right now or not;
//! - a name with the shape of the ids the managers hand out (25 characters of lower-case
//!   base32): a task's id. Ids are not sent to every node (there can be 10,000 tasks); no
//!   upstream resolver holds a single-label name of that shape either.
//!
//! Each mutation rebuilds the lookup index of the one network it touched, so lookups are one
//! hash probe per network and updates cost O(size of that network).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use hickory_server::proto::rr::RecordType;
use rand::seq::SliceRandom;

/// How a service's name resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointMode {
    /// To one virtual IP, balanced by the kernel.
    Vip(Ipv4Addr),
    /// To the IPs of all its tasks, shuffled (DNS round robin).
    Dnsrr,
}

/// A service as seen on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The service id.
    pub id: String,
    /// The service name.
    pub name: String,
    /// Further names of the service on this network.
    pub aliases: Vec<String>,
    /// What the name resolves to.
    pub mode: EndpointMode,
}

/// A task's endpoint on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEntry {
    /// The task id.
    pub id: String,
    /// The task name, like `web.1`.
    pub name: String,
    /// Its address on the network.
    pub ip: Ipv4Addr,
}

/// A service with its tasks, for [`NameTable::set_network`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The service.
    pub info: ServiceInfo,
    /// Its tasks on the network.
    pub tasks: Vec<TaskEntry>,
}

/// What the table says about a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A mesh name with these addresses (A records), already in answer order. Never
    /// empty.
    Addrs(Vec<Ipv4Addr>),
    /// A mesh name with no record of the asked type (AAAA, MX...), or a service with no task
    /// right now: NOERROR with no answer.
    NoData,
    /// A name of the cluster that the asking task may not see (it is on networks the task
    /// is not on, or it names no task right now).
    NxDomain,
    /// Not a name of the cluster: ask the upstream resolvers.
    Forward,
}

/// The length of the ids the managers hand out (`mesh_common::ids::random_id`).
const ID_LEN: usize = 25;

/// The services and tasks of every network this node knows, indexed for lookups.
#[derive(Debug, Default)]
pub struct NameTable {
    networks: HashMap<String, Network>,
    /// Lower-case, without leading or trailing dots.
    search_domains: Vec<String>,
    /// Lower-case names and aliases of every service of the cluster.
    cluster_services: HashSet<String>,
    /// Lower-case ids of every node of the cluster.
    cluster_nodes: HashSet<String>,
}

#[derive(Debug, Default)]
struct Network {
    /// By service id. A service may have tasks before its info is known (then it is reachable
    /// only by task name and id).
    services: BTreeMap<String, Service>,
    /// Task id -> service id.
    task_service: HashMap<String, String>,
    /// Lower-case name -> addresses (deduplicated, possibly empty).
    index: HashMap<String, Vec<Ipv4Addr>>,
}

#[derive(Debug, Default)]
struct Service {
    info: Option<ServiceInfo>,
    /// By task id.
    tasks: BTreeMap<String, TaskEntry>,
}

impl NameTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the search domains: a query `<name>.<domain>` for one of them is also answered as
    /// `<name>` (resolvers append them before giving up).
    pub fn set_search_domains(&mut self, domains: &[String]) {
        self.search_domains = domains
            .iter()
            .map(|d| d.trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
    }

    /// Sets what the managers say of the whole cluster: the names and aliases of every
    /// service, and the ids of every node (see the module doc). Replaces what was set before.
    pub fn set_cluster<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a str>,
        nodes: impl IntoIterator<Item = &'a str>,
    ) {
        self.cluster_services = services.into_iter().filter_map(normalize).collect();
        self.cluster_nodes = nodes.into_iter().filter_map(normalize).collect();
    }

    /// Replaces everything known about `network` by `services`.
    pub fn set_network(&mut self, network: &str, services: Vec<ServiceEntry>) {
        let mut net = Network::default();
        for entry in services {
            let service = net.services.entry(entry.info.id.clone()).or_default();
            for task in entry.tasks {
                net.task_service
                    .insert(task.id.clone(), entry.info.id.clone());
                service.tasks.insert(task.id.clone(), task);
            }
            service.info = Some(entry.info);
        }
        net.rebuild();
        self.networks.insert(network.to_owned(), net);
    }

    /// Forgets `network`.
    pub fn remove_network(&mut self, network: &str) {
        self.networks.remove(network);
    }

    /// Adds or changes a service on `network`, keeping its tasks.
    pub fn upsert_service(&mut self, network: &str, info: ServiceInfo) {
        let net = self.networks.entry(network.to_owned()).or_default();
        let id = info.id.clone();
        net.services.entry(id).or_default().info = Some(info);
        net.rebuild();
    }

    /// Removes a service and its tasks from `network`. Absent is fine.
    pub fn remove_service(&mut self, network: &str, service_id: &str) {
        let Some(net) = self.networks.get_mut(network) else {
            return;
        };
        if let Some(service) = net.services.remove(service_id) {
            for task_id in service.tasks.keys() {
                net.task_service.remove(task_id);
            }
        }
        self.tidy(network);
    }

    /// Adds or changes a task of `service_id` on `network`. A task that moved to another
    /// service (same id) leaves the old one.
    pub fn upsert_task(&mut self, network: &str, service_id: &str, task: TaskEntry) {
        let net = self.networks.entry(network.to_owned()).or_default();
        if let Some(old) = net.task_service.get(&task.id)
            && old != service_id
            && let Some(service) = net.services.get_mut(old)
        {
            service.tasks.remove(&task.id);
        }
        net.task_service
            .insert(task.id.clone(), service_id.to_owned());
        net.services
            .entry(service_id.to_owned())
            .or_default()
            .tasks
            .insert(task.id.clone(), task);
        net.rebuild();
    }

    /// Removes a task from `network`. Absent is fine.
    pub fn remove_task(&mut self, network: &str, task_id: &str) {
        let Some(net) = self.networks.get_mut(network) else {
            return;
        };
        if let Some(service_id) = net.task_service.remove(task_id)
            && let Some(service) = net.services.get_mut(&service_id)
        {
            service.tasks.remove(task_id);
            if service.info.is_none() && service.tasks.is_empty() {
                net.services.remove(&service_id);
            }
        }
        self.tidy(network);
    }

    /// Answers `qname` (any case, trailing dot or not) of type `qtype` for a task attached to
    /// `networks`. A and ANY queries get addresses; other types of a mesh name get
    /// [`Answer::NoData`] (there is no IPv6 on the overlay).
    pub fn resolve(&self, networks: &[String], qname: &str, qtype: RecordType) -> Answer {
        let Some(name) = normalize(qname) else {
            return Answer::Forward;
        };
        let candidates = self.candidates(&name);
        for candidate in &candidates {
            for network in networks {
                if let Some(addrs) = self
                    .networks
                    .get(network)
                    .and_then(|n| n.index.get(candidate.as_str()))
                {
                    return answer(addrs, qtype);
                }
            }
        }
        if candidates.iter().any(|c| self.is_cluster_name(c)) {
            Answer::NxDomain
        } else {
            Answer::Forward
        }
    }

    /// Whether the normalized `name` belongs to the cluster, on whatever network.
    fn is_cluster_name(&self, name: &str) -> bool {
        let on_a_network = self.networks.values().any(|n| n.index.contains_key(name));
        let service = |s: &str| self.cluster_services.contains(s);
        let task_name = || {
            name.split_once('.').is_some_and(|(head, tail)| {
                service(head) && (is_slot(tail) || self.cluster_nodes.contains(tail))
            })
        };
        on_a_network
            || service(name)
            || name.strip_prefix("tasks.").is_some_and(service)
            || task_name()
            || is_id_shaped(name)
    }

    /// `name`, then `name` without each search domain it ends with.
    fn candidates(&self, name: &str) -> Vec<String> {
        let mut out = vec![name.to_owned()];
        for domain in &self.search_domains {
            if let Some(head) = name.strip_suffix(domain.as_str())
                && let Some(head) = head.strip_suffix('.')
                && !head.is_empty()
            {
                out.push(head.to_owned());
            }
        }
        out
    }

    /// Rebuilds the index of `network`, dropping the network once it holds nothing.
    fn tidy(&mut self, network: &str) {
        if let Some(net) = self.networks.get_mut(network) {
            if net.services.is_empty() {
                self.networks.remove(network);
            } else {
                net.rebuild();
            }
        }
    }
}

impl Network {
    fn rebuild(&mut self) {
        let mut index: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        let mut add = |name: &str, addrs: &[Ipv4Addr]| {
            let Some(name) = normalize(name) else { return };
            let slot = index.entry(name).or_default();
            for addr in addrs {
                if !slot.contains(addr) {
                    slot.push(*addr);
                }
            }
        };
        for service in self.services.values() {
            let task_ips: Vec<Ipv4Addr> = service.tasks.values().map(|t| t.ip).collect();
            for task in service.tasks.values() {
                add(&task.name, &[task.ip]);
                add(&task.id, &[task.ip]);
            }
            let Some(info) = &service.info else { continue };
            let service_addrs = match info.mode {
                EndpointMode::Vip(vip) => vec![vip],
                EndpointMode::Dnsrr => task_ips.clone(),
            };
            for name in std::iter::once(&info.name).chain(&info.aliases) {
                add(name, &service_addrs);
                add(&format!("tasks.{name}"), &task_ips);
            }
        }
        self.index = index;
    }
}

/// Lower-case, without the trailing dot; `None` for the root or an empty name.
fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// A replica's slot number, as task names carry it.
fn is_slot(label: &str) -> bool {
    !label.is_empty() && label.len() <= 20 && label.bytes().all(|b| b.is_ascii_digit())
}

/// The shape of the ids the managers hand out: 25 characters of lower-case base32.
fn is_id_shaped(name: &str) -> bool {
    name.len() == ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

fn answer(addrs: &[Ipv4Addr], qtype: RecordType) -> Answer {
    match qtype {
        RecordType::A | RecordType::ANY if !addrs.is_empty() => {
            let mut addrs = addrs.to_vec();
            addrs.shuffle(&mut rand::rng());
            Answer::Addrs(addrs)
        }
        _ => Answer::NoData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn task(id: &str, name: &str, last: u8) -> TaskEntry {
        TaskEntry {
            id: id.into(),
            name: name.into(),
            ip: ip(last),
        }
    }

    fn service(id: &str, name: &str, aliases: &[&str], mode: EndpointMode) -> ServiceInfo {
        ServiceInfo {
            id: id.into(),
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            mode,
        }
    }

    /// `frontend`: web (vip .100, alias `www`, tasks .2 .3), db (dnsrr, tasks .4 .5 .6).
    /// `backend`: db again (dnsrr, task .7), secret (vip .200, task .8).
    fn table() -> NameTable {
        let mut t = NameTable::new();
        t.set_network(
            "frontend",
            vec![
                ServiceEntry {
                    info: service("s-web", "web", &["www"], EndpointMode::Vip(ip(100))),
                    tasks: vec![task("t-web1", "web.1", 2), task("t-web2", "web.2", 3)],
                },
                ServiceEntry {
                    info: service("s-db", "db", &[], EndpointMode::Dnsrr),
                    tasks: vec![
                        task("t-db1", "db.1", 4),
                        task("t-db2", "db.2", 5),
                        task("t-db3", "db.3", 6),
                    ],
                },
            ],
        );
        t.set_network(
            "backend",
            vec![
                ServiceEntry {
                    info: service("s-db", "db", &[], EndpointMode::Dnsrr),
                    tasks: vec![task("t-db9", "db.9", 7)],
                },
                ServiceEntry {
                    info: service("s-secret", "secret", &[], EndpointMode::Vip(ip(200))),
                    tasks: vec![task("t-secret1", "secret.1", 8)],
                },
            ],
        );
        t
    }

    fn nets(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// The answer with addresses sorted, so shuffled answers compare.
    fn sorted(answer: Answer) -> Answer {
        match answer {
            Answer::Addrs(mut a) => {
                a.sort();
                Answer::Addrs(a)
            }
            other => other,
        }
    }

    fn addrs(lasts: &[u8]) -> Answer {
        Answer::Addrs(lasts.iter().map(|l| ip(*l)).collect())
    }

    #[test]
    fn resolution_table() {
        use RecordType::{A, AAAA, ANY, MX, TXT};
        let t = table();
        let cases: &[(&[&str], &str, RecordType, Answer)] = &[
            // service name and alias -> VIP in vip mode
            (&["frontend"], "web", A, addrs(&[100])),
            (&["frontend"], "www", A, addrs(&[100])),
            // dnsrr -> every task
            (&["frontend"], "db", A, addrs(&[4, 5, 6])),
            // tasks.<service> and tasks.<alias> -> every task, whatever the mode
            (&["frontend"], "tasks.web", A, addrs(&[2, 3])),
            (&["frontend"], "tasks.www", A, addrs(&[2, 3])),
            (&["frontend"], "tasks.db", A, addrs(&[4, 5, 6])),
            // task name and task id
            (&["frontend"], "web.1", A, addrs(&[2])),
            (&["frontend"], "t-web2", A, addrs(&[3])),
            // case and trailing dot do not matter
            (&["frontend"], "WeB.", A, addrs(&[100])),
            (&["frontend"], "TASKS.Web.", A, addrs(&[2, 3])),
            // ANY gets the addresses; AAAA and other types of a known name: empty NOERROR
            (&["frontend"], "web", ANY, addrs(&[100])),
            (&["frontend"], "web", AAAA, Answer::NoData),
            (&["frontend"], "web.1", MX, Answer::NoData),
            (&["frontend"], "tasks.db", TXT, Answer::NoData),
            // isolation: a name only on a network the task is not on
            (&["frontend"], "secret", A, Answer::NxDomain),
            (&["frontend"], "secret.1", A, Answer::NxDomain),
            (&["frontend"], "tasks.secret", AAAA, Answer::NxDomain),
            (&[], "web", A, Answer::NxDomain),
            // ...and visible from that network
            (&["backend"], "secret", A, addrs(&[200])),
            // the same service on two networks: the task's first network answers
            (&["backend", "frontend"], "db", A, addrs(&[7])),
            (&["frontend", "backend"], "db", A, addrs(&[4, 5, 6])),
            (&["frontend", "backend"], "secret", A, addrs(&[200])),
            // a network the table does not know is simply empty
            (&["nowhere", "frontend"], "web", A, addrs(&[100])),
            // not ours: forward
            (&["frontend"], "example.com", A, Answer::Forward),
            (&["frontend"], "example.com.", AAAA, Answer::Forward),
            (&["frontend"], "tasks", A, Answer::Forward),
            (&["frontend"], "tasks.nothing", A, Answer::Forward),
            (&["frontend"], "web.example.com", A, Answer::Forward),
            (&["frontend"], ".", A, Answer::Forward),
            (&["frontend"], "", A, Answer::Forward),
        ];
        for (networks, qname, qtype, want) in cases {
            let got = sorted(t.resolve(&nets(networks), qname, *qtype));
            assert_eq!(&got, want, "{qname} {qtype} from {networks:?}");
        }
    }

    #[test]
    fn names_the_managers_list_are_ours_on_any_network() {
        use RecordType::{A, AAAA};
        let mut t = table();
        // `hidden` (alias `h`) runs only on networks this node holds no task of; node n2 runs
        // global tasks.
        t.set_cluster(
            ["web", "www", "db", "secret", "Hidden", "h"],
            ["node1", "N2"],
        );
        let front = nets(&["frontend"]);
        let cases: &[(&str, RecordType, Answer)] = &[
            ("hidden", A, Answer::NxDomain),
            ("h.", AAAA, Answer::NxDomain),
            ("tasks.hidden", A, Answer::NxDomain),
            ("TASKS.H", A, Answer::NxDomain),
            // task names: a slot, or a node id (global services), existing or not
            ("hidden.3", A, Answer::NxDomain),
            ("hidden.n2", A, Answer::NxDomain),
            ("web.99", A, Answer::NxDomain),
            // a task id, by its shape
            ("abcdefghijklmnopqrstuvw23", A, Answer::NxDomain),
            // visible names still answer
            ("web", A, addrs(&[100])),
            ("web.1", A, addrs(&[2])),
            // names that only start like ours are not
            ("hidden.example.com", A, Answer::Forward),
            ("hidden.3.example", A, Answer::Forward),
            ("hidden.n3", A, Answer::Forward),
            ("tasks.hidden.1", A, Answer::Forward),
            ("other", A, Answer::Forward),
            ("abcdefghijklmnopqrstuvw2", A, Answer::Forward),
            ("abcdefghijklmnopqrstuvw28", A, Answer::Forward),
        ];
        for (qname, qtype, want) in cases {
            let got = sorted(t.resolve(&front, qname, *qtype));
            assert_eq!(&got, want, "{qname} {qtype}");
        }
        // with a search domain
        t.set_search_domains(&["corp.example".to_string()]);
        assert_eq!(
            t.resolve(&front, "tasks.hidden.corp.example", A),
            Answer::NxDomain
        );
        // what the managers said last is what counts
        t.set_cluster(["web"], []);
        assert_eq!(t.resolve(&front, "hidden", A), Answer::Forward);
        assert_eq!(t.resolve(&front, "web.n2", A), Answer::Forward);
    }

    #[test]
    fn search_domain_suffix_is_answered_once() {
        let mut t = table();
        t.set_search_domains(&["Corp.Example.".to_string(), String::new()]);
        let front = nets(&["frontend"]);
        assert_eq!(
            t.resolve(&front, "web.corp.example", RecordType::A),
            addrs(&[100])
        );
        assert_eq!(
            sorted(t.resolve(&front, "TASKS.web.corp.example.", RecordType::A)),
            addrs(&[2, 3])
        );
        // one suffix, not two; and the bare domain is not a mesh name
        assert_eq!(
            t.resolve(&front, "web.corp.example.corp.example", RecordType::A),
            Answer::Forward
        );
        assert_eq!(
            t.resolve(&front, "corp.example", RecordType::A),
            Answer::Forward
        );
        assert_eq!(
            t.resolve(&front, "secret.corp.example", RecordType::A),
            Answer::NxDomain
        );
        // without search domains the suffixed name is not ours
        assert_eq!(
            table().resolve(&front, "web.corp.example", RecordType::A),
            Answer::Forward
        );
    }

    #[test]
    fn dnsrr_and_tasks_answers_are_shuffled() {
        let t = table();
        let front = nets(&["frontend"]);
        let first = t.resolve(&front, "db", RecordType::A);
        // 3 addresses: the chance of 50 identical orders in a row is 6^-49.
        let varied = (0..50).any(|_| t.resolve(&front, "db", RecordType::A) != first);
        assert!(varied, "dnsrr order never changed: {first:?}");
        let first = t.resolve(&front, "tasks.db", RecordType::A);
        let varied = (0..50).any(|_| t.resolve(&front, "tasks.db", RecordType::A) != first);
        assert!(varied, "tasks. order never changed: {first:?}");
    }

    #[test]
    fn incremental_updates_follow_scaling() {
        let mut t = NameTable::new();
        let net = nets(&["n1"]);
        t.upsert_service("n1", service("s", "api", &["API2"], EndpointMode::Dnsrr));
        // a service with no task yet is a known name with no address
        assert_eq!(t.resolve(&net, "api", RecordType::A), Answer::NoData);
        assert_eq!(t.resolve(&net, "tasks.api", RecordType::A), Answer::NoData);

        t.upsert_task("n1", "s", task("t1", "api.1", 11));
        t.upsert_task("n1", "s", task("t2", "api.2", 12));
        assert_eq!(
            sorted(t.resolve(&net, "api2", RecordType::A)),
            addrs(&[11, 12])
        );

        // a task that changes address
        t.upsert_task("n1", "s", task("t2", "api.2", 13));
        assert_eq!(
            sorted(t.resolve(&net, "api", RecordType::A)),
            addrs(&[11, 13])
        );

        t.remove_task("n1", "t1");
        assert_eq!(t.resolve(&net, "api", RecordType::A), addrs(&[13]));
        assert_eq!(t.resolve(&net, "api.1", RecordType::A), Answer::Forward);

        // switching to vip mode keeps the tasks
        t.upsert_service("n1", service("s", "api", &[], EndpointMode::Vip(ip(50))));
        assert_eq!(t.resolve(&net, "api", RecordType::A), addrs(&[50]));
        assert_eq!(t.resolve(&net, "tasks.api", RecordType::A), addrs(&[13]));
        assert_eq!(t.resolve(&net, "api2", RecordType::A), Answer::Forward);

        // removing what is not there is fine
        t.remove_task("n1", "nope");
        t.remove_task("nowhere", "t2");
        t.remove_service("nowhere", "s");

        t.remove_service("n1", "s");
        assert_eq!(t.resolve(&net, "api", RecordType::A), Answer::Forward);
        assert_eq!(t.resolve(&net, "api.2", RecordType::A), Answer::Forward);
        assert!(t.networks.is_empty(), "an empty network is dropped");
    }

    #[test]
    fn task_before_its_service_is_known_by_task_name_only() {
        let mut t = NameTable::new();
        let net = nets(&["n1"]);
        t.upsert_task("n1", "s", task("t1", "web.1", 21));
        assert_eq!(t.resolve(&net, "web.1", RecordType::A), addrs(&[21]));
        assert_eq!(t.resolve(&net, "web", RecordType::A), Answer::Forward);
        t.upsert_service("n1", service("s", "web", &[], EndpointMode::Dnsrr));
        assert_eq!(t.resolve(&net, "web", RecordType::A), addrs(&[21]));
        // the last task of a service without info takes the service with it
        let mut t = NameTable::new();
        t.upsert_task("n1", "s", task("t1", "web.1", 21));
        t.remove_task("n1", "t1");
        assert!(t.networks.is_empty());
    }

    #[test]
    fn task_moving_to_another_service_leaves_the_old_one() {
        let mut t = NameTable::new();
        let net = nets(&["n1"]);
        t.upsert_service("n1", service("a", "a", &[], EndpointMode::Dnsrr));
        t.upsert_service("n1", service("b", "b", &[], EndpointMode::Dnsrr));
        t.upsert_task("n1", "a", task("t1", "x.1", 31));
        t.upsert_task("n1", "b", task("t1", "x.1", 31));
        assert_eq!(t.resolve(&net, "a", RecordType::A), Answer::NoData);
        assert_eq!(t.resolve(&net, "b", RecordType::A), addrs(&[31]));
    }

    #[test]
    fn a_shared_alias_answers_the_union() {
        let mut t = NameTable::new();
        t.upsert_service("n1", service("a", "a", &["both"], EndpointMode::Vip(ip(1))));
        t.upsert_service("n1", service("b", "b", &["both"], EndpointMode::Vip(ip(2))));
        assert_eq!(
            sorted(t.resolve(&nets(&["n1"]), "both", RecordType::A)),
            addrs(&[1, 2])
        );
    }

    #[test]
    fn set_network_replaces_and_remove_network_forgets() {
        let mut t = table();
        let front = nets(&["frontend"]);
        t.set_network(
            "frontend",
            vec![ServiceEntry {
                info: service("s-new", "new", &[], EndpointMode::Vip(ip(9))),
                tasks: vec![],
            }],
        );
        assert_eq!(t.resolve(&front, "new", RecordType::A), addrs(&[9]));
        assert_eq!(t.resolve(&front, "web", RecordType::A), Answer::Forward);
        t.remove_network("frontend");
        assert_eq!(t.resolve(&front, "new", RecordType::A), Answer::Forward);
    }
}
