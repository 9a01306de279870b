//! Managers and agents in one process over real tonic, rustls and gossip, with workers on
//! fakes (`mesh_tests::in_process`): scheduling, rescheduling after a node's death, endpoint
//! records becoming other agents' intent, and withdrawal before a task stops. No root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::proto::rr::RecordType;
use mesh_dataplane::overlay::{Mac, Prefix, TaskId, Vni};
use mesh_lab::wait::{wait_for_async, watch};
use mesh_node::dns::Answer;
use mesh_node::worker::Resolvers;
use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    CreateNetworkRequest, CreateServiceRequest, GetServiceRequest, ListServicesRequest,
    ListTasksRequest, NetworkAttachmentConfig, NetworkSpec, RemoveServiceRequest, ServiceMode,
    ServiceSpec, Task, TaskSpec, TaskState, UpdateServiceRequest,
};
use mesh_tests::in_process::Cluster;
use mesh_tests::metrics::Scrape;
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(30);

async fn network(control: &mut ControlClient<Channel>, name: &str) -> Result<(String, Vni)> {
    let n = control
        .create_network(CreateNetworkRequest {
            spec: Some(NetworkSpec {
                name: name.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .network
        .context("network view")?;
    Ok((n.id, Vni::new(n.vni)?))
}

async fn service(
    control: &mut ControlClient<Channel>,
    name: &str,
    mode: ServiceMode,
    replicas: u64,
    network: &str,
) -> Result<String> {
    let mut spec = ServiceSpec {
        name: name.into(),
        replicas,
        task: Some(TaskSpec {
            command: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        }),
        networks: vec![NetworkAttachmentConfig {
            target: network.into(),
            aliases: vec![],
        }],
        ..Default::default()
    };
    spec.set_mode(mode);
    let view = control
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await?
        .into_inner();
    Ok(view.service.context("service")?.id)
}

/// The tasks of `service` desired running and running.
async fn running(control: &mut ControlClient<Channel>, service: &str) -> Result<Vec<Task>> {
    let tasks = control
        .list_tasks(ListTasksRequest {
            service: service.into(),
            node: String::new(),
        })
        .await?
        .into_inner()
        .tasks;
    Ok(tasks
        .into_iter()
        .filter_map(|v| v.task)
        .filter(|t| t.desired_state() == TaskState::Running)
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.state() == TaskState::Running)
        })
        .collect())
}

async fn wait_running(c: &Cluster, service: &str, count: usize) -> Result<Vec<Task>> {
    wait_for_async(
        &format!("{count} running tasks of {service}"),
        PATIENCE,
        async || {
            let tasks = running(&mut c.control().await?, service).await?;
            Ok((tasks.len() == count).then_some(tasks))
        },
    )
    .await
}

/// The address of `t` on network `network`.
fn addr_on(t: &Task, network: &str) -> Ipv4Addr {
    let a = t
        .networks
        .iter()
        .find(|a| a.network_id == network)
        .expect("attached");
    a.addr.split('/').next().unwrap().parse().unwrap()
}

fn vip_on(t: &Task, network: &str) -> Ipv4Addr {
    let a = t
        .networks
        .iter()
        .find(|a| a.network_id == network)
        .expect("attached");
    a.vip.split('/').next().unwrap().parse().unwrap()
}

/// The namespace of task `t` on the node at index `i` (prefix `ip{i+1}-`).
fn task_netns(i: usize, t: &Task) -> String {
    Prefix::new(format!("ip{}-", i + 1))
        .unwrap()
        .task_netns(&TaskId::new(t.id.clone()).unwrap())
}

fn network_netns(i: usize, vni: Vni) -> String {
    Prefix::new(format!("ip{}-", i + 1))
        .unwrap()
        .network_netns(vni)
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduling_spreads_replicas_over_the_nodes() -> Result<()> {
    let c = Cluster::start(3, 1, |_| {}).await?;
    let mut control = c.control().await?;
    let (net, _) = network(&mut control, "appnet").await?;
    service(&mut control, "web", ServiceMode::Replicated, 6, &net).await?;
    let tasks = wait_running(&c, "web", 6).await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        *per_node.entry(t.node_id.clone()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");
    // And each agent runs what the store says it runs.
    for (i, n) in c.nodes.iter().enumerate() {
        let mine = tasks.iter().filter(|t| t.node_id == n.node_id).count();
        assert_eq!(c.host(i).runtime.running_ids().len(), mine, "{}", n.name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_tasks_are_replaced_after_the_grace_period_not_before() -> Result<()> {
    const GRACE: Duration = Duration::from_millis(2500);
    let mut c = Cluster::start(3, 1, |cfg| {
        cfg.orchestrator.node_down_grace_ms = GRACE.as_millis() as u64;
    })
    .await?;
    let mut control = c.control().await?;
    let (net, _) = network(&mut control, "appnet").await?;
    service(&mut control, "web", ServiceMode::Replicated, 3, &net).await?;
    let tasks = wait_running(&c, "web", 3).await?;
    let victim = c.node(2).node_id.clone();
    let lost: Vec<String> = tasks
        .iter()
        .filter(|t| t.node_id == victim)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(lost.len(), 1, "one replica per node");
    c.kill(2);
    let killed = tokio::time::Instant::now();
    // Within the grace period nothing is replaced (a blip moves nothing).
    let early = tokio::task::block_in_place(|| {
        watch(GRACE / 2, || {
            let rt = tokio::runtime::Handle::current();
            let tasks = rt.block_on(async {
                let mut control = c.control().await?;
                anyhow::Ok(
                    control
                        .list_tasks(ListTasksRequest {
                            service: "web".into(),
                            node: String::new(),
                        })
                        .await?
                        .into_inner()
                        .tasks,
                )
            })?;
            let moved = tasks
                .iter()
                .filter_map(|v| v.task.as_ref())
                .any(|t| lost.contains(&t.id) && t.desired_state() != TaskState::Running);
            Ok(moved.then_some("replaced within the grace period"))
        })
    })?;
    assert_eq!(early, None);
    let replaced = wait_for_async(
        "the lost replica replaced on a live node",
        PATIENCE,
        async || {
            let tasks = running(&mut c.control().await?, "web").await?;
            let live = tasks.iter().filter(|t| t.node_id != victim).count();
            Ok((live == 3).then_some(()))
        },
    )
    .await;
    replaced?;
    assert!(
        killed.elapsed() >= GRACE,
        "replaced {:?} after the kill, before the {GRACE:?} grace period",
        killed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_record_becomes_load_balancer_dns_and_overlay_intent_on_other_agents()
-> Result<()> {
    let c = Cluster::start(3, 1, |_| {}).await?;
    let mut control = c.control().await?;
    let (net, vni) = network(&mut control, "appnet").await?;
    service(&mut control, "api", ServiceMode::Replicated, 1, &net).await?;
    service(&mut control, "cli", ServiceMode::Global, 0, &net).await?;
    let api = wait_running(&c, "api", 1).await?.remove(0);
    let clients = wait_running(&c, "cli", 3).await?;
    let (api_ip, vip) = (addr_on(&api, &net), vip_on(&api, &net));
    let api_node = c.index_of(&api.node_id).context("api's node")?;
    for cli in &clients {
        let i = c.index_of(&cli.node_id).context("client's node")?;
        let host = c.host(i);
        let netns = task_netns(i, cli);
        wait_for_async(
            &format!(
                "api's VIP and backend in {}'s load balancer",
                c.node(i).name
            ),
            PATIENCE,
            async || {
                let lb = host.kernel.lb_table(&netns);
                Ok(lb
                    .as_ref()
                    .and_then(|t| t.get(vip))
                    .is_some_and(|s| s.backends.contains(&api_ip))
                    .then_some(()))
            },
        )
        .await?;
        let nets = [net.clone()];
        let table = host.dns.table();
        assert_eq!(
            table.resolve(&nets, "api", RecordType::A),
            Answer::Addrs(vec![vip]),
            "{}",
            c.node(i).name
        );
        assert_eq!(
            table.resolve(&nets, "tasks.api", RecordType::A),
            Answer::Addrs(vec![api_ip]),
            "{}",
            c.node(i).name
        );
        if i != api_node {
            let overlay = network_netns(i, vni);
            assert_eq!(
                host.kernel.neighbors(&overlay).get(&api_ip),
                Some(&Mac::from_ipv4(api_ip)),
                "{}",
                c.node(i).name
            );
            assert!(
                host.kernel
                    .fdb(&overlay)
                    .iter()
                    .any(|f| f.mac == Mac::from_ipv4(api_ip) && f.vtep == c.node(api_node).addr),
                "{}: {:?}",
                c.node(i).name,
                host.kernel.fdb(&overlay)
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_down_withdraws_the_endpoint_from_every_agent_before_the_task_stops() -> Result<()> {
    let c = Cluster::start(3, 1, |_| {}).await?;
    let mut control = c.control().await?;
    let (net, _) = network(&mut control, "appnet").await?;
    let api_id = service(&mut control, "api", ServiceMode::Replicated, 3, &net).await?;
    service(&mut control, "cli", ServiceMode::Global, 0, &net).await?;
    let api = wait_running(&c, "api", 3).await?;
    let clients = wait_running(&c, "cli", 3).await?;
    let vip = vip_on(&api[0], &net);
    let ips: BTreeMap<String, Ipv4Addr> = api
        .iter()
        .map(|t| (t.id.clone(), addr_on(t, &net)))
        .collect();
    // Every client's load balancer, to look at when a task is about to be stopped.
    let balancers: Vec<(String, mesh_dataplane::kernel::fake::FakeKernel, String)> = clients
        .iter()
        .map(|t| {
            let i = c.index_of(&t.node_id).expect("client's node");
            (c.node(i).name.clone(), c.host(i).kernel, task_netns(i, t))
        })
        .collect();
    for (name, kernel, netns) in &balancers {
        wait_for_async(&format!("all 3 backends at {name}"), PATIENCE, async || {
            let n = kernel
                .lb_table(netns)
                .and_then(|t| t.get(vip).map(|s| s.backends.len()));
            Ok((n == Some(3)).then_some(()))
        })
        .await?;
    }
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let checked: Arc<Mutex<usize>> = Arc::default();
    for i in 0..c.nodes.len() {
        let (ips, balancers) = (ips.clone(), balancers.clone());
        let (violations, checked) = (violations.clone(), checked.clone());
        c.host(i).runtime.on_stop(Box::new(move |task| {
            let Some(ip) = ips.get(task) else { return };
            *checked.lock().unwrap() += 1;
            for (name, kernel, netns) in &balancers {
                let still = kernel
                    .lb_table(netns)
                    .and_then(|t| t.get(vip).map(|s| s.backends.contains(ip)))
                    .unwrap_or(false);
                if still {
                    violations.lock().unwrap().push(format!(
                        "{task} ({ip}) still a backend at {name} when stopped"
                    ));
                }
            }
        }));
    }
    let current = control
        .get_service(GetServiceRequest {
            service: api_id.clone(),
        })
        .await?
        .into_inner()
        .service
        .context("service")?;
    let mut spec = current.spec.clone().context("spec")?;
    spec.replicas = 1;
    control
        .update_service(UpdateServiceRequest {
            service: api_id,
            spec: Some(spec),
            version: current.version,
            rollback: false,
        })
        .await?;
    wait_for_async("two api tasks stopped", PATIENCE, async || {
        Ok((*checked.lock().unwrap() == 2).then_some(()))
    })
    .await?;
    let v = violations.lock().unwrap().clone();
    assert!(v.is_empty(), "{v:#?}");
    wait_running(&c, "api", 1).await?;
    Ok(())
}

/// Every write the cluster makes is bounded (`[limits] max_write_bytes`, set low here), so a
/// large service is created and removed in batches; a request beyond the limits is refused in
/// one line and stores nothing; the cluster stays writable throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_service_is_written_in_bounded_batches_and_an_oversized_one_refused() -> Result<()>
{
    const REPLICAS: u64 = 600;
    let c = Cluster::start(3, 1, |cfg| {
        // About 120 tasks fit one write: the 600 need several, whatever the object batch.
        cfg.limits.max_write_bytes = 24 * 1024;
        cfg.limits.max_replicas = 1000;
    })
    .await?;
    let mut control = c.control().await?;
    let net = control
        .create_network(CreateNetworkRequest {
            spec: Some(NetworkSpec {
                name: "wide".into(),
                subnet: "10.77.0.0/22".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .network
        .context("network view")?
        .id;
    let services = async |control: &mut ControlClient<Channel>| -> Result<Vec<String>> {
        let list = control
            .list_services(ListServicesRequest {})
            .await?
            .into_inner();
        Ok(list
            .services
            .into_iter()
            .filter_map(|v| v.service.and_then(|s| s.spec).map(|s| s.name))
            .collect())
    };

    // Beyond the limits: one line naming the limit, nothing stored.
    let refused = service(&mut control, "huge", ServiceMode::Replicated, 100_000, &net)
        .await
        .expect_err("100000 replicas are refused");
    assert!(refused.to_string().contains("max_replicas"), "{refused:#}");
    let mut fat = ServiceSpec {
        name: "fat".into(),
        replicas: 1,
        task: Some(TaskSpec {
            command: vec!["sleep".into(), "1000".into()],
            env: vec![format!("BLOB={}", "x".repeat(64 * 1024))],
            ..Default::default()
        }),
        ..Default::default()
    };
    fat.set_mode(ServiceMode::Replicated);
    let refused = control
        .create_service(CreateServiceRequest { spec: Some(fat) })
        .await
        .expect_err("a 64 KiB spec is refused");
    assert!(refused.message().contains("max_spec_bytes"), "{refused}");
    assert_eq!(services(&mut control).await?, Vec::<String>::new());

    // Within them: 600 replicas placed and running, in writes of at most 24 KiB.
    let big = service(&mut control, "big", ServiceMode::Replicated, REPLICAS, &net).await?;
    wait_for_async(
        "600 running tasks of big",
        Duration::from_secs(120),
        async || {
            let tasks = running(&mut c.control().await?, &big).await?;
            Ok((tasks.len() == REPLICAS as usize).then_some(()))
        },
    )
    .await?;
    // The cluster still takes small writes, and removing the big service removes all of it.
    service(&mut control, "small", ServiceMode::Replicated, 1, &net).await?;
    control
        .remove_service(RemoveServiceRequest {
            service: "big".into(),
        })
        .await?;
    wait_for_async(
        "every task of big gone",
        Duration::from_secs(120),
        async || {
            let left = c
                .control()
                .await?
                .list_tasks(ListTasksRequest::default())
                .await?
                .into_inner()
                .tasks
                .iter()
                .filter(|v| v.task.as_ref().is_some_and(|t| t.service_id == big))
                .count();
            let fake = (0..3)
                .map(|i| c.host(i).runtime.running_ids().len())
                .sum::<usize>();
            Ok((left == 0 && fake == 1).then_some(()))
        },
    )
    .await?;
    wait_running(&c, "small", 1).await?;
    Ok(())
}

/// The value of `name` (with every label of `labels`) in a scrape of `text`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    Scrape::parse(text.to_owned())
        .expect("the exposition parses")
        .value(name, labels)
}

#[tokio::test(flavor = "multi_thread")]
async fn control_api_calls_are_timed_where_answered_and_where_forwarded() -> Result<()> {
    let c = Cluster::start(2, 2, |_| {}).await?;
    let leading = |n: &mesh_tests::in_process::Node| {
        sample(&n.metrics.encode(), "mesh_raft_is_leader", &[]) == Some(1.0)
    };
    let (leader, follower) = wait_for_async("one manager to lead", PATIENCE, async || {
        Ok(match (leading(&c.nodes[0]), leading(&c.nodes[1])) {
            (true, false) => Some((&c.nodes[0], &c.nodes[1])),
            (false, true) => Some((&c.nodes[1], &c.nodes[0])),
            _ => None,
        })
    })
    .await?;
    // Asked of the follower, which forwards it to the leader.
    let mut control = follower.control().await?;
    network(&mut control, "appnet").await?;
    let method = ("method", "create_network");
    let w = follower.metrics.encode();
    assert_eq!(
        sample(
            &w,
            "mesh_api_request_duration_seconds",
            &[method, ("route", "forwarded")]
        ),
        Some(1.0),
        "{w}"
    );
    let l = leader.metrics.encode();
    assert_eq!(
        sample(
            &l,
            "mesh_api_request_duration_seconds",
            &[method, ("route", "leader")]
        ),
        Some(1.0),
        "{l}"
    );
    // The leader's write went through raft, timed from proposal to apply.
    assert!(sample(&l, "mesh_raft_apply_latency_seconds", &[]) >= Some(1.0));
    assert_eq!(sample(&l, "mesh_raft_is_leader", &[]), Some(1.0));
    assert_eq!(sample(&w, "mesh_raft_is_leader", &[]), Some(0.0));
    // Both see both alive.
    for n in [leader, follower] {
        wait_for_async(
            &format!("{} to export 2 alive members", n.name),
            PATIENCE,
            async || {
                let text = n.metrics.encode();
                let alive = sample(&text, "mesh_gossip_members", &[("state", "alive")]);
                Ok((alive == Some(2.0)).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}
