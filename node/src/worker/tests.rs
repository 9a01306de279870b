//! The worker in memory: a fake kernel, runtime, DNS and gossip plane, real assignments and
//! records. Each test drives the worker through its inputs and checks what it did to its
//! parts.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use hickory_server::proto::rr::RecordType;
use mesh_common::metrics::Metrics;
use mesh_dataplane::kernel::fake::FakeKernel;
use mesh_dataplane::link::Ipv4Cidr;
use mesh_dataplane::overlay::{Mac, Prefix, Vni};
use mesh_lab::wait::wait_for_async;
use mesh_proto::{
    Assignments, Network, NetworkAttachment, NetworkSpec, Task, TaskSpec, TaskState, TaskStatus,
};

use super::env::{Resolvers, Runtime};
use super::fake::{CollectingSink, FakeRecords, FakeResolvers, FakeRuntime};
use super::record::{EndpointRecord, ServiceEndpoint};
use super::{Parts, Session, WorkerConfig, WorkerHandle, spawn};
use crate::dns::Answer;

const NODE: &str = "node1";
const NET: &str = "net1";
const DRAIN: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(10);

fn prefix() -> Prefix {
    Prefix::new("wt-").unwrap()
}

/// One worker on fakes, and handles on each fake to watch and drive it.
struct Harness {
    kernel: FakeKernel,
    runtime: Arc<FakeRuntime>,
    dns: Arc<FakeResolvers>,
    records: FakeRecords,
    sink: Arc<CollectingSink>,
    handle: WorkerHandle,
    /// What the worker exports.
    metrics: Arc<Metrics>,
}

impl Harness {
    fn start() -> Harness {
        let kernel = FakeKernel::new()
            .with_underlay("192.0.2.1/24".parse::<Ipv4Cidr>().unwrap(), 1500)
            .unwrap();
        Harness::start_on(kernel, FakeRuntime::new(), FakeRecords::default())
    }

    /// A worker on `kernel` and `runtime` as another worker left them (an agent restart).
    fn start_on(kernel: FakeKernel, runtime: Arc<FakeRuntime>, records: FakeRecords) -> Harness {
        let dns = FakeResolvers::new();
        let sink = CollectingSink::new();
        let metrics = Arc::new(Metrics::new());
        let config = WorkerConfig {
            node_id: NODE.into(),
            hostname: "host1".into(),
            underlay_ip: Ipv4Addr::new(192, 0, 2, 1),
            netns_prefix: prefix().as_str().into(),
            tasks_dir: "/nonexistent".into(),
            shim_binary: "/usr/bin/mesh".into(),
            reconcile_interval: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(60),
            drain: DRAIN,
            lb_backend: None,
            reserved_ports: vec![2377, 7946],
            runtime: tokio::runtime::Handle::current(),
            metrics: metrics.worker.clone(),
            dns_metrics: metrics.dns.clone(),
        };
        let handle = spawn(
            config,
            Parts {
                kernel: kernel.clone(),
                runtime: runtime.clone(),
                dns: dns.clone(),
                records: records.clone(),
                sink: sink.clone(),
            },
        )
        .unwrap();
        Harness {
            kernel,
            runtime,
            dns,
            records,
            sink,
            handle,
            metrics,
        }
    }

    fn assign(&self, tasks: Vec<Task>) {
        self.handle.session(Session {
            assignments: Assignments {
                full: true,
                tasks,
                networks: vec![network()],
                ..Default::default()
            },
            data_port: 4789,
            ..Default::default()
        });
    }

    fn network_netns(&self) -> String {
        prefix().network_netns(Vni::new(4096).unwrap())
    }

    fn task_netns(&self, id: &str) -> String {
        prefix().task_netns(&mesh_dataplane::overlay::TaskId::new(id).unwrap())
    }

    /// The record this node publishes for `task`, decoded.
    fn published(&self, task: &str) -> Option<EndpointRecord> {
        let bytes = self
            .records
            .published()
            .get(&(NET.to_string(), task.to_string()))
            .cloned()?;
        EndpointRecord::decode(&bytes)
    }

    /// The value of the sample `name` (with `label`, if given) in a scrape of the worker's
    /// metrics; a histogram gives its count.
    fn scraped(&self, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let text = self.metrics.encode();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("the exposition parses");
        scrape
            .samples
            .into_iter()
            .filter(|s| s.metric == name)
            .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name}: unexpected {other:?}"),
            })
    }

    fn last_state(&self, task: &str) -> Option<TaskState> {
        self.sink
            .sent()
            .iter()
            .rev()
            .find(|u| u.task_id == task)
            .and_then(|u| u.status.as_ref())
            .map(|s| s.state())
    }
}

fn network() -> Network {
    Network {
        id: NET.into(),
        version: 1,
        spec: Some(NetworkSpec {
            name: "appnet".into(),
            ..Default::default()
        }),
        subnet: "10.20.0.0/24".into(),
        gateway: "10.20.0.1".into(),
        vni: 4096,
        ..Default::default()
    }
}

/// Task `id` of service `web` at `10.20.0.<host>`, behind VIP 10.20.0.2.
fn task(id: &str, host: u8, desired: TaskState) -> Task {
    let mut t = Task {
        id: id.into(),
        service_id: "svc1".into(),
        service_name: "web".into(),
        name: format!("web.{host}"),
        node_id: NODE.into(),
        spec: Some(TaskSpec {
            command: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        }),
        networks: vec![NetworkAttachment {
            network_id: NET.into(),
            addr: format!("10.20.0.{host}/24"),
            mac: Mac::from_ipv4(Ipv4Addr::new(10, 20, 0, host)).to_string(),
            aliases: vec![],
            vip: "10.20.0.2/24".into(),
        }],
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    t.set_desired_state(desired);
    t
}

/// The record another node gossips for its task at `10.20.0.<host>`.
fn remote_record(id: &str, host: u8, node: &str, running: bool) -> Vec<u8> {
    let ip = Ipv4Addr::new(10, 20, 0, host);
    super::record::Endpoint {
        key: id.into(),
        task_name: format!("web.{host}"),
        node: node.into(),
        addr: ipnet::Ipv4Net::new(ip, 24).unwrap(),
        mac: Mac::from_ipv4(ip),
        vtep: Ipv4Addr::new(192, 0, 2, 2),
        running,
        service: Some(ServiceEndpoint {
            id: "svc1".into(),
            name: "web".into(),
            aliases: vec!["www".into()],
            vip: Some(Ipv4Addr::new(10, 20, 0, 2)),
            dnsrr: false,
        }),
    }
    .to_record()
    .encode()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    wait_for_async(what, PATIENCE, async || Ok(check())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assigned_task_gets_its_sandbox_dns_load_balancer_and_record_before_it_runs()
-> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the task to run", || h.runtime.spec("t1")).await?;
    let spec = h.runtime.spec("t1").unwrap();
    assert_eq!(spec.argv, ["sleep", "1000"]);
    assert!(
        spec.env
            .contains(&("MESH_TASK_NAME".into(), "web.3".into())),
        "{:?}",
        spec.env
    );
    let namespaces = h.kernel.namespaces();
    assert!(namespaces.contains(&h.task_netns("t1")), "{namespaces:?}");
    assert!(namespaces.contains(&h.network_netns()), "{namespaces:?}");
    assert_eq!(h.dns.attached().get("t1"), Some(&vec![NET.to_string()]));
    let lb = h
        .kernel
        .lb_table(&h.task_netns("t1"))
        .expect("a load balancer");
    assert!(
        lb.get(ip("10.20.0.2")).is_some(),
        "the service's own VIP: {lb:?}"
    );
    let rec = until("the task's running record", || {
        h.published("t1").filter(|r| r.running)
    })
    .await?;
    assert_eq!(
        (rec.addr.as_str(), rec.vip.as_str()),
        ("10.20.0.3/24", "10.20.0.2/24")
    );
    until("running reported", || {
        (h.last_state("t1") == Some(TaskState::Running)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_record_becomes_overlay_load_balancer_and_dns_intent() -> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the task to run", || h.runtime.spec("t1")).await?;
    h.records
        .remote_upsert(NET, "node2", "t9", remote_record("t9", 9, "node2", true));
    let lb_ns = h.task_netns("t1");
    let backends = until("the remote backend in the task's load balancer", || {
        let lb = h.kernel.lb_table(&lb_ns)?;
        let svc = lb.get(ip("10.20.0.2"))?;
        svc.backends
            .contains(&ip("10.20.0.9"))
            .then(|| svc.backends.clone())
    })
    .await?;
    assert!(backends.contains(&ip("10.20.0.3")), "{backends:?}");
    let net_ns = h.network_netns();
    let neighbors = h.kernel.neighbors(&net_ns);
    assert_eq!(
        neighbors.get(&ip("10.20.0.9")),
        Some(&Mac::from_ipv4(ip("10.20.0.9")))
    );
    assert!(
        h.kernel
            .fdb(&net_ns)
            .iter()
            .any(|f| f.mac == Mac::from_ipv4(ip("10.20.0.9")) && f.vtep == ip("192.0.2.2")),
        "{:?}",
        h.kernel.fdb(&net_ns)
    );
    let table = h.dns.table();
    let nets = [NET.to_string()];
    assert_eq!(
        table.resolve(&nets, "web", RecordType::A),
        Answer::Addrs(vec![ip("10.20.0.2")])
    );
    assert_eq!(
        table.resolve(&nets, "www", RecordType::A),
        Answer::Addrs(vec![ip("10.20.0.2")]),
        "aliases resolve too"
    );
    // The owner withdraws it: gone from the load balancer at once, from the overlay after
    // the drain.
    h.records.remote_remove(NET, "node2", "t9");
    until("the backend gone", || {
        let lb = h.kernel.lb_table(&lb_ns)?;
        (!lb.get(ip("10.20.0.2"))?.backends.contains(&ip("10.20.0.9"))).then_some(())
    })
    .await?;
    until("the neighbor gone after the drain", || {
        (!h.kernel.neighbors(&net_ns).contains_key(&ip("10.20.0.9"))).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_leaving_is_withdrawn_everywhere_before_it_is_stopped() -> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the running record", || {
        h.published("t1").filter(|r| r.running)
    })
    .await?;
    // At the moment the runtime is asked to stop the task, its record must be gone and its
    // sandbox still there (connections that reached it during the drain are answered).
    let seen_at_stop: Arc<Mutex<Option<(bool, bool)>>> = Arc::default();
    let task_ns = h.task_netns("t1");
    {
        let records = h.records.clone();
        let kernel = h.kernel.clone();
        let seen = seen_at_stop.clone();
        let task_ns = task_ns.clone();
        h.runtime.on_stop(Box::new(move |id| {
            let published = records
                .published()
                .contains_key(&(NET.to_string(), id.to_string()));
            let sandbox = kernel.namespaces().contains(&task_ns);
            *seen.lock().unwrap() = Some((published, sandbox));
        }));
    }
    let started = tokio::time::Instant::now();
    h.assign(vec![task("t1", 3, TaskState::Shutdown)]);
    until("the task stopped", || {
        h.runtime
            .stopped()
            .contains(&"t1".to_string())
            .then_some(())
    })
    .await?;
    assert_eq!(
        *seen_at_stop.lock().unwrap(),
        Some((false, true)),
        "(record still published, sandbox still there) when the task was stopped"
    );
    assert!(
        started.elapsed() >= DRAIN,
        "stopped {:?} after the withdrawal, before the {DRAIN:?} drain ended",
        started.elapsed()
    );
    until("shutdown reported", || {
        (h.last_state("t1") == Some(TaskState::Shutdown)).then_some(())
    })
    .await?;
    until("the sandbox gone once the task stopped", || {
        (!h.kernel.namespaces().contains(&task_ns)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_record_is_refused_and_changes_nothing() -> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the task to run", || h.runtime.spec("t1")).await?;
    let mut bad = EndpointRecord::decode(&remote_record("t8", 8, "node2", true)).unwrap();
    bad.mac = "not-a-mac".into();
    h.records.remote_upsert(NET, "node2", "t8", bad.encode());
    h.records
        .remote_upsert(NET, "node2", "t9", b"{\"garbage\": true}".to_vec());
    // A good record after them shows the worker went past both.
    h.records
        .remote_upsert(NET, "node2", "t7", remote_record("t7", 7, "node2", true));
    let lb_ns = h.task_netns("t1");
    let backends = until("the good record programmed", || {
        let svc = h.kernel.lb_table(&lb_ns)?.get(ip("10.20.0.2"))?.clone();
        svc.backends
            .contains(&ip("10.20.0.7"))
            .then_some(svc.backends)
    })
    .await?;
    assert!(!backends.contains(&ip("10.20.0.8")), "{backends:?}");
    assert!(
        !h.kernel
            .neighbors(&h.network_netns())
            .contains_key(&ip("10.20.0.8"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_adopts_running_tasks_without_restarting_them() -> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the running record", || {
        h.published("t1").filter(|r| r.running)
    })
    .await?;
    h.handle.stop(false).await;
    // The next agent: same kernel, same task processes; its load balancer state is new.
    let again = Harness::start_on(h.kernel.clone(), h.runtime.clone(), h.records.clone());
    again.assign(vec![task("t1", 3, TaskState::Running)]);
    until("running reported by the new worker", || {
        (again.last_state("t1") == Some(TaskState::Running)).then_some(())
    })
    .await?;
    assert!(h.runtime.stopped().is_empty(), "the task was stopped");
    assert_eq!(again.dns.attached().get("t1"), Some(&vec![NET.to_string()]));
    assert!(h.kernel.namespaces().contains(&h.task_netns("t1")));
    Ok(())
}

/// The session's list of the cluster's services reaches DNS, so a service on a network this
/// node holds no task of is the cluster's name (NXDOMAIN), not an upstream's.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_service_names_of_the_session_reach_dns() -> Result<()> {
    let h = Harness::start();
    let nets = [NET.to_string()];
    let hidden = || h.dns.table().resolve(&nets, "tasks.hidden", RecordType::A);
    assert_eq!(hidden(), Answer::Forward);
    h.handle.session(Session {
        assignments: Assignments {
            full: true,
            ..Default::default()
        },
        peers: vec![mesh_proto::Peer {
            node_id: "node7".into(),
            ..Default::default()
        }],
        service_names: vec!["hidden".into()],
        ..Default::default()
    });
    until("the names in dns", || {
        (hidden() == Answer::NxDomain).then_some(())
    })
    .await?;
    let table = h.dns.table();
    assert_eq!(
        table.resolve(&nets, "hidden.node7", RecordType::A),
        Answer::NxDomain
    );
    // a later session without it: the name is no longer the cluster's
    h.handle.session(Session {
        assignments: Assignments::default(),
        ..Default::default()
    });
    until("the name gone from dns", || {
        (hidden() == Answer::Forward).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_touched_before_the_full_assignment_set() -> Result<()> {
    let h = Harness::start();
    h.handle.session(Session {
        assignments: Assignments {
            full: false,
            tasks: vec![task("t1", 3, TaskState::Running)],
            networks: vec![network()],
            ..Default::default()
        },
        data_port: 4789,
        ..Default::default()
    });
    let quiet = mesh_lab::wait::watch(Duration::from_millis(500), || {
        Ok(h.runtime.spec("t1").map(|_| "started"))
    });
    assert_eq!(quiet?, None, "a delta before the full set started a task");
    Ok(())
}

/// A wanted task whose run ended as `end` leaves it is started again.
async fn started_again_after(end: impl FnOnce(&mut crate::runtime::TaskState)) -> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the task to run", || h.runtime.spec("t1")).await?;
    let mut ended = h.runtime.list().remove(0).1;
    end(&mut ended);
    h.runtime.set_state("t1", ended);
    until("the task started again", || {
        (h.runtime.started().iter().filter(|id| *id == "t1").count() == 2).then_some(())
    })
    .await?;
    until("running reported again", || {
        (h.last_state("t1") == Some(TaskState::Running)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_supervisor_died_is_started_again() -> Result<()> {
    // What the runtime reports after a host crash: the supervisor is gone with its process.
    started_again_after(|st| {
        st.state = crate::runtime::TaskPhase::Failed;
        st.message = crate::runtime::state::SUPERVISOR_DIED.into();
        st.done = true;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_stopped_by_the_host_shutting_down_is_started_again() -> Result<()> {
    // What the runtime reports after a clean reboot: the host's shutdown told the supervisor
    // to stop, and it recorded the stop.
    started_again_after(|st| {
        st.state = crate::runtime::TaskPhase::Exited;
        st.message = "stopped: exited with status 0".into();
        st.exit_code = Some(0);
        st.done = true;
        st.stopped = true;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_keeps_its_load_balancers_and_remotes_until_its_endpoints_are_synced()
-> Result<()> {
    let h = Harness::start();
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("the task to run", || h.runtime.spec("t1")).await?;
    h.records
        .remote_upsert(NET, "node2", "t9", remote_record("t9", 9, "node2", true));
    let lb_ns = h.task_netns("t1");
    let has_remote = |kernel: &FakeKernel| {
        kernel
            .lb_table(&lb_ns)
            .and_then(|t| {
                t.get(ip("10.20.0.2"))
                    .map(|s| s.backends.contains(&ip("10.20.0.9")))
            })
            .unwrap_or(false)
    };
    until("the remote backend", || has_remote(&h.kernel).then_some(())).await?;
    h.handle.stop(false).await;
    // The agent comes back with an empty gossip table whose exchange has not happened yet.
    let records = FakeRecords::default();
    records.hold_sync(NET, true);
    let again = Harness::start_on(h.kernel.clone(), h.runtime.clone(), records.clone());
    again.assign(vec![task("t1", 3, TaskState::Running)]);
    until("running reported by the new worker", || {
        (again.last_state("t1") == Some(TaskState::Running)).then_some(())
    })
    .await?;
    // Nor does the way to it: its neighbor and FDB entries in the network sandbox.
    let net_ns = h.network_netns();
    let has_entries = |kernel: &FakeKernel| {
        kernel.neighbors(&net_ns).contains_key(&ip("10.20.0.9")) && !kernel.fdb(&net_ns).is_empty()
    };
    assert!(
        has_entries(&again.kernel),
        "the remote's entries before the restart"
    );
    let kept = mesh_lab::wait::watch(Duration::from_millis(600), || {
        Ok(if !has_remote(&again.kernel) {
            Some("the backend dropped before the exchange")
        } else if !has_entries(&again.kernel) {
            Some("the remote's neighbor or FDB entry dropped before the exchange")
        } else {
            None
        })
    })?;
    assert_eq!(
        kept, None,
        "something went before the endpoint table was complete"
    );
    // The exchange completes and says node2's task is gone: now it goes, entries and all.
    records.hold_sync(NET, false);
    until(
        "the stale backend and its entries dropped once synced",
        || (!has_remote(&again.kernel) && !has_entries(&again.kernel)).then_some(()),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_with_a_health_check_serves_only_while_healthy() -> Result<()> {
    use crate::runtime::{Health, HealthStatus};
    let h = Harness::start();
    let mut t = task("t1", 3, TaskState::Running);
    t.spec.as_mut().unwrap().health = Some(mesh_proto::HealthConfig {
        cmd: "true".into(),
        interval_ms: 500,
        ..Default::default()
    });
    h.assign(vec![t]);
    until("the task to run", || h.runtime.spec("t1")).await?;
    let check = h
        .runtime
        .spec("t1")
        .unwrap()
        .health
        .expect("a health check");
    assert_eq!(
        (check.interval, check.timeout, check.retries),
        (Duration::from_millis(500), Duration::from_secs(30), 3),
        "Docker's defaults for what is not given"
    );
    let health = |status| {
        let mut st = h.runtime.list().remove(0).1;
        st.health = Some(Health {
            status,
            failing_streak: 0,
            last_failure: String::new(),
        });
        h.runtime.set_state("t1", st);
    };
    let reported = |want: mesh_proto::TaskHealth| {
        h.sink
            .sent()
            .iter()
            .rev()
            .find(|u| u.task_id == "t1")
            .and_then(|u| u.status.as_ref())
            .is_some_and(|s| s.health() == want)
            .then_some(())
    };
    // Running, but no check passed yet: in no load balancer.
    health(HealthStatus::Starting);
    until("health starting reported", || {
        reported(mesh_proto::TaskHealth::Starting)
    })
    .await?;
    let rec = h.published("t1").expect("a record");
    assert!(
        !rec.running,
        "a task not yet healthy serves nothing: {rec:?}"
    );
    health(HealthStatus::Healthy);
    until("the record says serving", || {
        h.published("t1").filter(|r| r.running)
    })
    .await?;
    until("healthy reported", || {
        reported(mesh_proto::TaskHealth::Healthy)
    })
    .await?;
    health(HealthStatus::Unhealthy);
    until("the record withdrawn from service", || {
        h.published("t1").filter(|r| !r.running)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_tasks_backends_overlay_and_flushes() -> Result<()> {
    let h = Harness::start();
    assert_eq!(
        h.scraped("mesh_tasks", Some(("state", "running"))),
        Some(0.0)
    );
    h.assign(vec![task("t1", 3, TaskState::Running)]);
    until("one task running in the metrics", || {
        (h.scraped("mesh_tasks", Some(("state", "running"))) == Some(1.0)).then_some(())
    })
    .await?;
    until("its own backend in the metrics", || {
        (h.scraped("mesh_lb_backends", Some(("service", "web"))) == Some(1.0)).then_some(())
    })
    .await?;
    assert!(h.scraped("mesh_worker_reconcile_duration_seconds", None) >= Some(1.0));
    assert_eq!(
        h.scraped("mesh_worker_reconcile_errors_total", None),
        Some(0.0)
    );

    // Another node's task joins the service: one more backend, one remote endpoint.
    h.records
        .remote_upsert(NET, "node2", "t9", remote_record("t9", 9, "node2", true));
    until(
        "the remote backend and its FDB entry in the metrics",
        || {
            let backends = h.scraped("mesh_lb_backends", Some(("service", "web")));
            let fdb = h.scraped("mesh_overlay_fdb_entries", None);
            (backends == Some(2.0) && fdb >= Some(1.0)).then_some(())
        },
    )
    .await?;
    assert_eq!(h.scraped("mesh_conntrack_flushes_total", None), Some(0.0));

    // It leaves: its backend goes at once, its conntrack entries after the drain.
    h.records.remote_remove(NET, "node2", "t9");
    until("the remote backend gone and its flows flushed", || {
        let backends = h.scraped("mesh_lb_backends", Some(("service", "web")));
        let flushes = h.scraped("mesh_conntrack_flushes_total", None);
        (backends == Some(1.0) && flushes >= Some(1.0)).then_some(())
    })
    .await?;

    // The service is removed from this node: its series goes.
    h.assign(vec![]);
    until("no task and no backend series left", || {
        let running = h.scraped("mesh_tasks", Some(("state", "running")));
        let backends = h.scraped("mesh_lb_backends", Some(("service", "web")));
        (running == Some(0.0) && backends.is_none()).then_some(())
    })
    .await?;

    // A stopped worker (the node left) holds nothing.
    h.assign(vec![task("t2", 4, TaskState::Running)]);
    until("the new task running in the metrics", || {
        (h.scraped("mesh_tasks", Some(("state", "running"))) == Some(1.0)).then_some(())
    })
    .await?;
    h.handle.stop(true).await;
    assert_eq!(
        h.scraped("mesh_tasks", Some(("state", "running"))),
        Some(0.0)
    );
    assert_eq!(
        h.scraped("mesh_lb_backends", Some(("service", "web"))),
        None
    );
    assert_eq!(h.scraped("mesh_overlay_fdb_entries", None), Some(0.0));
    Ok(())
}
