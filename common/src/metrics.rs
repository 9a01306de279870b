//! The daemon's Prometheus metrics: every family it exports, in one registry ([`Metrics`]),
//! and the handles each part of the daemon is given to keep its own families current:
//! [`RaftMetrics`] (the raft store), [`ApiMetrics`] (the control API), [`GossipMetrics`]
//! (membership), [`WorkerMetrics`] (the worker and its dataplane) and [`DnsMetrics`] (the
//! tasks' DNS servers).
//!
//! A handle is cheap to clone: its metrics are shared atomics, and updating one is a few
//! atomic operations, never a wait on the daemon. A scrape only reads those atomics (under
//! the families' own short locks), so it never waits on the daemon either.
//!
//! Labels are low-cardinality by construction: fixed sets of names, except the service name
//! of [`WorkerMetrics::set_lb_backends`], which the cluster bounds (`max_services`) and this
//! module caps at [`MAX_SERVICE_SERIES`].
//!
//! A part built outside a daemon (a test, the in-process cluster) takes `Default` handles:
//! registered nowhere, they are never read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_proto::TaskState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Most services [`WorkerMetrics::set_lb_backends`] reports; more are left out (and
/// counted in `mesh_lb_services_dropped`), so a runaway cluster cannot grow a scrape
/// without bound. Far above the default `max_services` (1000).
pub const MAX_SERVICE_SERIES: usize = 4096;

/// Every family the daemon exports, registered under the `mesh_` prefix, and the handles
/// that update them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub raft: RaftMetrics,
    pub api: ApiMetrics,
    pub gossip: GossipMetrics,
    pub worker: WorkerMetrics,
    pub dns: DnsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding every family, each at zero.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("mesh"),
            raft: RaftMetrics::default(),
            api: ApiMetrics::default(),
            gossip: GossipMetrics::default(),
            worker: WorkerMetrics::default(),
            dns: DnsMetrics::default(),
        };
        m.raft.register(m.registry.sub_registry_with_prefix("raft"));
        m.api.register(m.registry.sub_registry_with_prefix("api"));
        m.gossip
            .register(m.registry.sub_registry_with_prefix("gossip"));
        m.worker.register(&mut m.registry);
        m.dns.register(m.registry.sub_registry_with_prefix("dns"));
        m
    }

    /// Every family in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// A u64 as a gauge holds it (saturating: a raft index never gets near).
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn count_value(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The raft store of a manager. Workers export these at zero.
#[derive(Clone, Debug)]
pub struct RaftMetrics {
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    apply_latency: Histogram,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            // 0.5 ms .. 4 s
            apply_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

/// What the raft store reports of itself each time its state changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftSample {
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub leader: bool,
}

impl RaftMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "term",
            "Current raft term of this manager",
            self.term.clone(),
        );
        r.register(
            "commit_index",
            "Last raft log index this manager knows committed",
            self.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "Last raft log index applied to this manager's state",
            self.applied_index.clone(),
        );
        r.register(
            "is_leader",
            "1 if this manager is the raft leader, else 0",
            self.is_leader.clone(),
        );
        r.register(
            "leader_changes",
            "Times the raft leader this manager knows changed",
            self.leader_changes.clone(),
        );
        r.register_with_unit(
            "apply_latency",
            "Time from proposing a local write to its being applied here",
            Unit::Seconds,
            self.apply_latency.clone(),
        );
    }

    /// The store's state as it is now.
    pub fn set(&self, s: RaftSample) {
        self.term.set(gauge_value(s.term));
        self.commit_index.set(gauge_value(s.commit_index));
        self.applied_index.set(gauge_value(s.applied_index));
        self.is_leader.set(i64::from(s.leader));
    }

    /// The leader this manager knows changed (to another one, or to none).
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// A local write was applied `took` after it was proposed.
    pub fn write_applied(&self, took: Duration) {
        self.apply_latency.observe(took.as_secs_f64());
    }

    /// The store stopped (shutdown, demotion): this node leads nothing any more.
    pub fn stopped(&self) {
        self.is_leader.set(0);
    }

    /// What [`RaftMetrics::set`] last set.
    pub fn sample(&self) -> RaftSample {
        let v = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        RaftSample {
            term: v(&self.term),
            commit_index: v(&self.commit_index),
            applied_index: v(&self.applied_index),
            leader: self.is_leader.get() == 1,
        }
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.get()
    }
}

/// Where a control API call was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRoute {
    /// Here, by the leader.
    Leader,
    /// Relayed to the leader.
    Forwarded,
}

impl ApiRoute {
    fn as_str(self) -> &'static str {
        match self {
            ApiRoute::Leader => "leader",
            ApiRoute::Forwarded => "forwarded",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    method: &'static str,
    route: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn api_histogram() -> Histogram {
    // 0.5 ms .. 16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The control API: how long each call takes, by method.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    latency: HistogramFamily<ApiLabels>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            latency: Family::new_with_constructor(api_histogram),
        }
    }
}

impl ApiMetrics {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "request_duration",
            "Time to answer a control API call, by method and by where it was answered",
            Unit::Seconds,
            self.latency.clone(),
        );
    }

    /// Times one call of `method` (a method of the control API, named as in its Rust
    /// service trait: a fixed set) until the returned guard is dropped.
    pub fn timer(&self, method: &'static str, route: ApiRoute) -> ApiTimer {
        let labels = ApiLabels {
            method,
            route: route.as_str(),
        };
        ApiTimer {
            histogram: self.latency.get_or_create_owned(&labels),
            start: Instant::now(),
        }
    }
}

/// Observes the time since it was made when it is dropped: every way out of a call counts.
pub struct ApiTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ApiTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The gossip plane (SWIM membership): members by state and packet counts.
#[derive(Clone, Debug, Default)]
pub struct GossipMetrics {
    members: Family<StateLabel, Gauge>,
    packets: Family<DirectionLabel, Counter>,
    auth_failures: Counter,
}

/// Members of the cluster as this node's gossip sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberCounts {
    /// Alive and not suspected, this node included.
    pub alive: usize,
    /// Suspected of being down, not yet declared down.
    pub suspect: usize,
    /// Listed in the cluster but down (or never seen).
    pub down: usize,
}

impl GossipMetrics {
    fn register(&self, r: &mut Registry) {
        self.set_members(MemberCounts::default());
        for direction in ["sent", "received"] {
            drop(self.packets.get_or_create(&DirectionLabel { direction }));
        }
        r.register(
            "members",
            "Nodes of the cluster by their state as this node's gossip sees them",
            self.members.clone(),
        );
        r.register(
            "packets",
            "Gossip datagrams and sync frames sent and received",
            self.packets.clone(),
        );
        r.register(
            "auth_failures",
            "Gossip packets refused because they did not authenticate (wrong key, tampered, truncated)",
            self.auth_failures.clone(),
        );
    }

    pub fn set_members(&self, c: MemberCounts) {
        for (state, n) in [("alive", c.alive), ("suspect", c.suspect), ("down", c.down)] {
            self.members
                .get_or_create(&StateLabel { state })
                .set(count_value(n));
        }
    }

    /// Adds packets sent and received since the last call.
    pub fn add_packets(&self, sent: u64, received: u64) {
        for (direction, n) in [("sent", sent), ("received", received)] {
            if n > 0 {
                self.packets
                    .get_or_create(&DirectionLabel { direction })
                    .inc_by(n);
            }
        }
    }

    /// Adds packets refused for authentication since the last call.
    pub fn add_auth_failures(&self, n: u64) {
        self.auth_failures.inc_by(n);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// Every task state, in the order of the proto.
const TASK_STATES: [TaskState; 10] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Complete,
    TaskState::Shutdown,
    TaskState::Failed,
    TaskState::Rejected,
    TaskState::Orphaned,
];

/// The worker: reconciles, the dataplane it programs, and this node's tasks.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    reconcile_duration: Histogram,
    reconcile_errors: Counter,
    lb_backends: Family<ServiceLabel, Gauge>,
    lb_services_dropped: Gauge,
    /// The services `lb_backends` has a series for (a family cannot list its own).
    lb_services: Arc<Mutex<Vec<String>>>,
    fdb_entries: Gauge,
    conntrack_flushes: Counter,
    tasks: Family<StateLabel, Gauge>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            // 1 ms .. 16 s
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            reconcile_errors: Counter::default(),
            lb_backends: Family::default(),
            lb_services_dropped: Gauge::default(),
            lb_services: Arc::default(),
            fdb_entries: Gauge::default(),
            conntrack_flushes: Counter::default(),
            tasks: Family::default(),
        }
    }
}

impl WorkerMetrics {
    fn register(&self, r: &mut Registry) {
        self.set_tasks(std::iter::empty());
        let worker = r.sub_registry_with_prefix("worker");
        worker.register_with_unit(
            "reconcile_duration",
            "Time one reconcile of this node (tasks, overlay, load balancers) takes",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        worker.register(
            "reconcile_errors",
            "Reconciles that left part of the node's overlay to retry",
            self.reconcile_errors.clone(),
        );
        let lb = r.sub_registry_with_prefix("lb");
        lb.register(
            "backends",
            "Running tasks the load balancers of this node send a service's VIP to",
            self.lb_backends.clone(),
        );
        lb.register(
            "services_dropped",
            "Services left out of mesh_lb_backends because there are too many",
            self.lb_services_dropped.clone(),
        );
        r.sub_registry_with_prefix("overlay").register(
            "fdb_entries",
            "Remote endpoints this node programs on its overlays (one VXLAN FDB entry and one neighbor entry each)",
            self.fdb_entries.clone(),
        );
        r.sub_registry_with_prefix("conntrack").register(
            "flushes",
            "Conntrack flushes of load-balancer backends that left, once their drain ended",
            self.conntrack_flushes.clone(),
        );
        r.register(
            "tasks",
            "Tasks assigned to this node, by state",
            self.tasks.clone(),
        );
    }

    /// One reconcile took `took`; `failed` if part of it is left to retry.
    pub fn reconciled(&self, took: Duration, failed: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        if failed {
            self.reconcile_errors.inc();
        }
    }

    /// The backends of every service the node's load balancers hold, by service name;
    /// services not named lose their series. At most [`MAX_SERVICE_SERIES`] are kept.
    pub fn set_lb_backends(&self, per_service: &BTreeMap<String, usize>) {
        let mut known = self
            .lb_services
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let kept: Vec<(&String, &usize)> = per_service.iter().take(MAX_SERVICE_SERIES).collect();
        for gone in known.iter().filter(|s| {
            kept.binary_search_by(|(name, _)| name.as_str().cmp(s.as_str()))
                .is_err()
        }) {
            self.lb_backends.remove(&ServiceLabel {
                service: gone.clone(),
            });
        }
        for (service, n) in &kept {
            self.lb_backends
                .get_or_create(&ServiceLabel {
                    service: (*service).clone(),
                })
                .set(count_value(**n));
        }
        *known = kept.iter().map(|(s, _)| (*s).clone()).collect();
        self.lb_services_dropped
            .set(count_value(per_service.len() - kept.len()));
    }

    /// The worker stopped (the node left the cluster, or the daemon stops): it holds
    /// nothing any more. Counters and histograms keep their totals.
    pub fn stopped(&self) {
        self.set_tasks(std::iter::empty());
        self.set_lb_backends(&BTreeMap::new());
        self.set_fdb_entries(0);
    }

    pub fn set_fdb_entries(&self, n: usize) {
        self.fdb_entries.set(count_value(n));
    }

    /// `n` conntrack flushes were done.
    pub fn conntrack_flushed(&self, n: u64) {
        self.conntrack_flushes.inc_by(n);
    }

    /// The states of this node's tasks: every state gets a series, zero when no task is in it.
    pub fn set_tasks(&self, states: impl IntoIterator<Item = TaskState>) {
        let mut counts = [0usize; TASK_STATES.len()];
        for s in states {
            if let Some(i) = TASK_STATES.iter().position(|t| *t == s) {
                counts[i] += 1;
            }
        }
        for (s, n) in TASK_STATES.iter().zip(counts) {
            self.tasks
                .get_or_create(&StateLabel {
                    state: crate::task::state_name(*s),
                })
                .set(count_value(n));
        }
    }
}

/// How the DNS server of a task answered a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsResult {
    /// Answered from the cluster's names (with addresses, or none of the type asked).
    NoError,
    /// A cluster name that does not exist on the task's networks.
    NxDomain,
    /// Relayed to an upstream resolver, which answered.
    Forwarded,
    /// No answer could be given (no upstream answered, or the reply could not be sent).
    ServFail,
    /// Refused as malformed or unsupported (FORMERR, NOTIMP).
    Malformed,
}

impl DnsResult {
    const ALL: [DnsResult; 5] = [
        DnsResult::NoError,
        DnsResult::NxDomain,
        DnsResult::Forwarded,
        DnsResult::ServFail,
        DnsResult::Malformed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DnsResult::NoError => "noerror",
            DnsResult::NxDomain => "nxdomain",
            DnsResult::Forwarded => "forwarded",
            DnsResult::ServFail => "servfail",
            DnsResult::Malformed => "malformed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn dns_histogram() -> Histogram {
    // 0.1 ms .. 3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The DNS servers of this node's tasks.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    queries: Family<ResultLabel, Counter>,
    latency: HistogramFamily<ResultLabel>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            queries: Family::default(),
            latency: Family::new_with_constructor(dns_histogram),
        }
    }
}

impl DnsMetrics {
    fn register(&self, r: &mut Registry) {
        for result in DnsResult::ALL {
            drop(self.queries.get_or_create(&ResultLabel {
                result: result.as_str(),
            }));
        }
        r.register(
            "queries",
            "Queries the tasks' DNS servers answered, by result",
            self.queries.clone(),
        );
        r.register_with_unit(
            "query_duration",
            "Time to answer a task's DNS query, by result",
            Unit::Seconds,
            self.latency.clone(),
        );
    }

    /// A query was answered with `result` after `took`.
    pub fn answered(&self, result: DnsResult, took: Duration) {
        let labels = ResultLabel {
            result: result.as_str(),
        };
        self.queries.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Sample, Scrape, Value};

    fn scrape(m: &Metrics) -> Scrape {
        let text = m.encode();
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
    }

    fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        scrape
            .samples
            .iter()
            .filter(|s: &&Sample| s.metric == name)
            .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .and_then(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    #[test]
    fn exposition_parses_and_holds_every_family() {
        let m = Metrics::new();
        m.raft.set(RaftSample {
            term: 3,
            commit_index: 17,
            applied_index: 16,
            leader: true,
        });
        m.raft.leader_changed();
        m.raft.write_applied(Duration::from_millis(3));
        {
            let _t = m.api.timer("create_service", ApiRoute::Leader);
        }
        m.gossip.set_members(MemberCounts {
            alive: 3,
            suspect: 1,
            down: 1,
        });
        m.gossip.add_packets(10, 12);
        m.gossip.add_auth_failures(2);
        m.worker.reconciled(Duration::from_millis(20), true);
        m.worker
            .set_lb_backends(&BTreeMap::from([("web".to_string(), 2)]));
        m.worker.set_fdb_entries(4);
        m.worker.conntrack_flushed(1);
        m.worker
            .set_tasks([TaskState::Running, TaskState::Running, TaskState::Starting]);
        m.dns
            .answered(DnsResult::NxDomain, Duration::from_micros(300));

        let s = scrape(&m);
        let families: std::collections::BTreeSet<&str> =
            s.docs.keys().map(String::as_str).collect();
        for family in [
            "mesh_raft_term",
            "mesh_raft_commit_index",
            "mesh_raft_applied_index",
            "mesh_raft_is_leader",
            "mesh_raft_leader_changes_total",
            "mesh_raft_apply_latency_seconds",
            "mesh_api_request_duration_seconds",
            "mesh_gossip_members",
            "mesh_gossip_packets_total",
            "mesh_gossip_auth_failures_total",
            "mesh_worker_reconcile_duration_seconds",
            "mesh_worker_reconcile_errors_total",
            "mesh_lb_backends",
            "mesh_lb_services_dropped",
            "mesh_overlay_fdb_entries",
            "mesh_conntrack_flushes_total",
            "mesh_tasks",
            "mesh_dns_queries_total",
            "mesh_dns_query_duration_seconds",
        ] {
            assert!(families.contains(family), "{family} missing: {families:?}");
        }
        assert_eq!(value(&s, "mesh_raft_term", None), Some(3.0));
        assert_eq!(value(&s, "mesh_raft_commit_index", None), Some(17.0));
        assert_eq!(value(&s, "mesh_raft_is_leader", None), Some(1.0));
        assert_eq!(value(&s, "mesh_raft_leader_changes_total", None), Some(1.0));
        let members = |state| value(&s, "mesh_gossip_members", Some(("state", state)));
        assert_eq!(
            (members("alive"), members("suspect"), members("down")),
            (Some(3.0), Some(1.0), Some(1.0))
        );
        let packets = |d| value(&s, "mesh_gossip_packets_total", Some(("direction", d)));
        assert_eq!(
            (packets("sent"), packets("received")),
            (Some(10.0), Some(12.0))
        );
        assert_eq!(
            value(&s, "mesh_gossip_auth_failures_total", None),
            Some(2.0)
        );
        assert_eq!(
            value(&s, "mesh_lb_backends", Some(("service", "web"))),
            Some(2.0)
        );
        assert_eq!(value(&s, "mesh_overlay_fdb_entries", None), Some(4.0));
        let tasks = |state| value(&s, "mesh_tasks", Some(("state", state)));
        assert_eq!(
            (tasks("running"), tasks("starting"), tasks("failed")),
            (Some(2.0), Some(1.0), Some(0.0))
        );
        assert_eq!(
            value(&s, "mesh_dns_queries_total", Some(("result", "nxdomain"))),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "mesh_dns_queries_total", Some(("result", "forwarded"))),
            Some(0.0)
        );
        let histogram = |name: &str, label: Option<(&str, &str)>| {
            s.samples
                .iter()
                .filter(|x| x.metric == name)
                .find(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
                .map(|x| match &x.value {
                    Value::Histogram(buckets) => {
                        buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                    }
                    other => panic!("{name} is not a histogram: {other:?}"),
                })
        };
        assert_eq!(
            histogram(
                "mesh_api_request_duration_seconds",
                Some(("method", "create_service"))
            ),
            Some(1.0)
        );
        assert_eq!(
            histogram("mesh_raft_apply_latency_seconds", None),
            Some(1.0)
        );
        assert_eq!(
            histogram("mesh_worker_reconcile_duration_seconds", None),
            Some(1.0)
        );
    }

    #[test]
    fn a_service_gone_from_the_load_balancers_loses_its_series() {
        let m = Metrics::new();
        m.worker.set_lb_backends(&BTreeMap::from([
            ("api".to_string(), 1),
            ("web".to_string(), 3),
        ]));
        m.worker
            .set_lb_backends(&BTreeMap::from([("web".to_string(), 2)]));
        let s = scrape(&m);
        assert_eq!(
            value(&s, "mesh_lb_backends", Some(("service", "web"))),
            Some(2.0)
        );
        assert_eq!(
            value(&s, "mesh_lb_backends", Some(("service", "api"))),
            None
        );
    }

    #[test]
    fn lb_series_are_capped() {
        let m = Metrics::new();
        let many: BTreeMap<String, usize> = (0..MAX_SERVICE_SERIES + 5)
            .map(|i| (format!("s{i:05}"), 1))
            .collect();
        m.worker.set_lb_backends(&many);
        let s = scrape(&m);
        let series = s
            .samples
            .iter()
            .filter(|x| x.metric == "mesh_lb_backends")
            .count();
        assert_eq!(series, MAX_SERVICE_SERIES);
        assert_eq!(value(&s, "mesh_lb_services_dropped", None), Some(5.0));
    }
}
