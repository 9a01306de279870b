//! The orchestrators' plans, with the allocator after them, over an in-memory store state.
use mesh_proto::{
    Network, NetworkAttachmentConfig, NetworkSpec, Node, ServiceMode, ServiceSpec, TaskSpec,
    TaskStatus, store_op::Op,
};

use std::collections::BTreeSet;

use super::*;

fn status(state: TaskState, message: &str, now_ms: i64) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        message: message.to_string(),
        timestamp_ms: now_ms,
        ..Default::default()
    }
}
use crate::allocator::tasks::{is_allocated, plan_node_attachments, plan_task_addresses};
use crate::store::{StoreState, txn};

fn state() -> StoreState {
    let mut s = StoreState::default();
    s.networks.insert(
        "net1".into(),
        Network {
            id: "net1".into(),
            version: 1,
            spec: Some(NetworkSpec {
                name: "appnet".into(),
                ..Default::default()
            }),
            subnet: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            vni: 4096,
            ..Default::default()
        },
    );
    for (id, host) in [("n1", "h1"), ("n2", "h2")] {
        s.nodes.insert(
            id.into(),
            Node {
                id: id.into(),
                hostname: host.into(),
                version: 1,
                ..Default::default()
            },
        );
    }
    s
}

fn service(id: &str, mode: ServiceMode, replicas: u64) -> Service {
    let mut spec = ServiceSpec {
        name: id.into(),
        replicas,
        task: Some(TaskSpec {
            command: vec!["true".into()],
            ..Default::default()
        }),
        networks: vec![NetworkAttachmentConfig {
            target: "net1".into(),
            aliases: vec![],
        }],
        ..Default::default()
    };
    spec.set_mode(mode);
    Service {
        id: id.into(),
        version: 2,
        spec: Some(spec),
        ..Default::default()
    }
}

/// Task ids unique across every plan of a test.
fn fresh_id() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    format!(
        "t{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn run(s: &StoreState) -> Vec<StoreOp> {
    plan_with(s, 1, &|_| false)
}

/// Applies `ops` at `index`, then what the allocator plans after them (at `index + 1`), as
/// the leader's components do one after the other.
fn apply(s: &mut StoreState, ops: Vec<StoreOp>, index: u64) {
    let r = s.apply(txn::of(ops), index);
    assert_eq!(r.conflict, "");
    let allocated = plan_task_addresses(s, 1);
    let r = s.apply(txn::of(allocated), index + 1);
    assert_eq!(r.conflict, "");
}

fn live(s: &StoreState, service: &str) -> Vec<(u64, String)> {
    s.tasks
        .values()
        .filter(|t| t.service_id == service && t.desired_state() == TaskState::Running)
        .map(|t| (t.slot, t.networks[0].addr.clone()))
        .collect()
}

#[test]
fn replicated_service_gets_one_task_per_slot_with_distinct_addresses() {
    let mut s = state();
    s.services
        .insert("web".into(), service("web", ServiceMode::Replicated, 3));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    let mut got = live(&s, "web");
    got.sort();
    assert_eq!(
        got,
        [
            (1, "10.20.0.2/24".to_string()),
            (2, "10.20.0.3/24".into()),
            (3, "10.20.0.4/24".into())
        ]
    );
    assert!(s.tasks.values().all(
        |t| t.name.starts_with("web.") && t.networks[0].mac.starts_with("02:42:0a:14:00:")
    ));
    assert!(run(&s).is_empty(), "a converged service must plan nothing");
}

#[test]
fn scale_down_shuts_down_the_highest_slots_and_reaper_deletes_them_once_stopped() {
    let mut s = state();
    s.services
        .insert("web".into(), service("web", ServiceMode::Replicated, 3));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    for t in s.tasks.values_mut() {
        t.node_id = "n1".into();
    }
    s.services
        .get_mut("web")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .replicas = 1;
    let ops = run(&s);
    assert_eq!(ops.len(), 2);
    apply(&mut s, ops, 11);
    assert_eq!(live(&s, "web").len(), 1);
    assert_eq!(live(&s, "web")[0].0, 1);
    assert!(
        plan_reap(&s).is_empty(),
        "tasks still running on their node must not be deleted"
    );
    for t in s
        .tasks
        .values_mut()
        .filter(|t| t.desired_state() == TaskState::Shutdown)
    {
        t.status.as_mut().unwrap().set_state(TaskState::Shutdown);
    }
    let reap = plan_reap(&s);
    assert_eq!(reap.len(), 2);
    assert!(
        reap.iter()
            .all(|op| matches!(op.op, Some(Op::DeleteTask(_))))
    );
}

#[test]
fn removed_service_tasks_are_shut_down_and_addresses_reused_only_after_deletion() {
    let mut s = state();
    s.services
        .insert("web".into(), service("web", ServiceMode::Replicated, 1));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    s.services.remove("web");
    s.services
        .insert("api".into(), service("api", ServiceMode::Replicated, 1));
    let ops = run(&s);
    apply(&mut s, ops, 11);
    assert!(live(&s, "web").is_empty());
    assert_eq!(
        live(&s, "api"),
        [(1, "10.20.0.3/24".to_string())],
        "the stopping task still holds .2"
    );
}

#[test]
fn global_service_runs_once_per_node_and_follows_node_changes() {
    let mut s = state();
    s.services
        .insert("agent".into(), service("agent", ServiceMode::Global, 0));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    let nodes: BTreeSet<String> = s.tasks.values().map(|t| t.node_id.clone()).collect();
    assert_eq!(nodes, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
    assert!(s.tasks.values().any(|t| t.name == "agent.h1"));
    s.nodes.insert(
        "n3".into(),
        Node {
            id: "n3".into(),
            hostname: "h3".into(),
            ..Default::default()
        },
    );
    assert_eq!(run(&s).len(), 1, "a new node gets its task");
    s.nodes.remove("n1");
    let ops = run(&s);
    assert_eq!(ops.len(), 2, "a task for n3, and n1's task shut down");
    assert_eq!(
        plan_reap(&s).len(),
        1,
        "the task of a removed node is deleted"
    );
}

#[test]
fn exhausted_network_leaves_the_tasks_it_cannot_address_waiting_with_the_reason() {
    let mut s = state();
    s.networks.get_mut("net1").unwrap().subnet = "10.20.0.0/29".into();
    s.services
        .insert("web".into(), service("web", ServiceMode::Replicated, 10));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    let (addressed, waiting): (Vec<&mesh_proto::Task>, Vec<&mesh_proto::Task>) =
        s.tasks.values().partition(|t| is_allocated(t));
    assert_eq!(addressed.len(), 5, "a /29 has 5 free host addresses");
    assert_eq!(waiting.len(), 5);
    for t in waiting {
        let st = t.status.as_ref().unwrap();
        assert_eq!(st.state(), TaskState::New);
        assert!(st.err.contains("no free address"), "{st:?}");
    }
    assert!(
        plan_task_addresses(&s, 2).is_empty(),
        "a waiting task's reason is written once, not at every pass"
    );
}

fn plan_with(s: &StoreState, now_ms: i64, failed: &dyn Fn(&str) -> bool) -> Vec<StoreOp> {
    let mut new_id = fresh_id;
    plan(
        s,
        &mut Context {
            now_ms,
            new_id: &mut new_id,
            node_failed: failed,
            limits: &crate::config::LimitsConfig::default(),
        },
    )
}

/// Marks every live task placed on `node` and running since `at`.
fn run_all(s: &mut StoreState, node: &str, at: i64) {
    for t in s
        .tasks
        .values_mut()
        .filter(|t| t.desired_state() == TaskState::Running)
    {
        t.node_id = node.into();
        t.status = Some(status(TaskState::Running, "running", at));
    }
}

fn stop_stopping(s: &mut StoreState) {
    for t in s
        .tasks
        .values_mut()
        .filter(|t| t.desired_state() == TaskState::Shutdown)
    {
        t.status = Some(status(TaskState::Shutdown, "stopped", 0));
    }
}

#[test]
fn rolling_update_replaces_one_batch_at_a_time_after_the_delay() {
    let mut s = state();
    let mut svc = service("web", ServiceMode::Replicated, 3);
    svc.spec.as_mut().unwrap().update = Some(mesh_proto::UpdateConfig {
        parallelism: 1,
        delay_ms: 1000,
        ..Default::default()
    });
    svc.spec_version = 1;
    s.services.insert("web".into(), svc);
    let ops = run(&s);
    apply(&mut s, ops, 10);
    run_all(&mut s, "n1", 0);
    s.services.get_mut("web").unwrap().spec_version = 2;
    // First batch: one old task shut down and its slot refilled.
    let ops = plan_with(&s, 5000, &|_| false);
    assert_eq!(ops.len(), 2, "one shutdown, one new task");
    apply(&mut s, ops, 11);
    let v2 = |s: &StoreState| {
        s.tasks
            .values()
            .filter(|t| t.spec_version == 2 && t.desired_state() == TaskState::Running)
            .count()
    };
    assert_eq!(v2(&s), 1);
    // Nothing more while the new task has not come up or the old one is stopping.
    assert!(plan_with(&s, 6000, &|_| false).is_empty());
    stop_stopping(&mut s);
    assert!(
        plan_with(&s, 6000, &|_| false).is_empty(),
        "the new task is not running yet"
    );
    run_all(&mut s, "n1", 6000);
    assert!(
        plan_with(&s, 6500, &|_| false).is_empty(),
        "the update delay has not passed"
    );
    let ops = plan_with(&s, 7000, &|_| false);
    assert_eq!(ops.len(), 2);
    apply(&mut s, ops, 12);
    assert_eq!(v2(&s), 2);
}

#[test]
fn tasks_of_a_failed_node_are_replaced_but_keep_their_address() {
    let mut s = state();
    s.services
        .insert("web".into(), service("web", ServiceMode::Replicated, 2));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    let ids: Vec<String> = s.tasks.keys().cloned().collect();
    s.tasks.get_mut(&ids[0]).unwrap().node_id = "n1".into();
    s.tasks.get_mut(&ids[1]).unwrap().node_id = "n2".into();
    assert!(
        plan_with(&s, 1, &|_| false).is_empty(),
        "no failure, nothing to do"
    );
    let ops = plan_with(&s, 1, &|n| n == "n2");
    assert_eq!(ops.len(), 2, "shut the lost task down and replace it");
    apply(&mut s, ops, 11);
    let live = live(&s, "web");
    assert_eq!(live.len(), 2);
    assert!(
        live.iter()
            .all(|(_, addr)| addr != &s.tasks[&ids[1]].networks[0].addr),
        "the old address is still held"
    );
    assert!(
        plan_reap(&s).is_empty(),
        "the old task stays until its node is back or removed"
    );
}

#[test]
fn publishing_services_get_ingress_attachments_and_nodes_get_ingress_addresses() {
    let mut s = state();
    s.networks.insert(
        "ing".into(),
        Network {
            id: "ing".into(),
            version: 1,
            spec: Some(NetworkSpec {
                name: "ingress".into(),
                ingress: true,
                ..Default::default()
            }),
            subnet: "10.255.0.0/24".into(),
            gateway: "10.255.0.1".into(),
            vni: 4097,
            ..Default::default()
        },
    );
    let ops = plan_node_attachments(&s).unwrap();
    assert_eq!(ops.len(), 2, "one address per node");
    apply(&mut s, ops, 5);
    let node_addrs: BTreeSet<String> = s
        .nodes
        .values()
        .map(|n| n.ingress.as_ref().unwrap().addr.clone())
        .collect();
    assert_eq!(
        node_addrs,
        BTreeSet::from(["10.255.0.2/24".to_string(), "10.255.0.3/24".to_string()])
    );
    assert!(plan_node_attachments(&s).unwrap().is_empty());
    let mut web = service("web", ServiceMode::Replicated, 1);
    web.ports = vec![mesh_proto::PortConfig {
        target_port: 80,
        published_port: 8080,
        ..Default::default()
    }];
    web.vips = vec![mesh_proto::VirtualIp {
        network_id: "ing".into(),
        addr: "10.255.0.4/24".into(),
    }];
    s.services.insert("web".into(), web);
    let ops = run(&s);
    apply(&mut s, ops, 6);
    let t = s.tasks.values().next().unwrap();
    let ing = t
        .networks
        .iter()
        .find(|a| a.network_id == "ing")
        .expect("an ingress attachment");
    assert_eq!(
        ing.addr, "10.255.0.5/24",
        "node and VIP addresses are taken"
    );
    assert_eq!(ing.vip, "10.255.0.4/24");
    assert_eq!(t.ports.len(), 1);
}

fn set_availability(s: &mut StoreState, node: &str, a: mesh_proto::NodeAvailability) {
    s.nodes
        .get_mut(node)
        .unwrap()
        .spec
        .get_or_insert_default()
        .set_availability(a);
}

#[test]
fn a_drained_node_runs_nothing_and_a_paused_one_takes_nothing_new() {
    use mesh_proto::NodeAvailability::{Drain, Pause};
    let mut s = state();
    s.services
        .insert("web".into(), service("web", ServiceMode::Replicated, 2));
    s.services
        .insert("agent".into(), service("agent", ServiceMode::Global, 0));
    let ops = run(&s);
    apply(&mut s, ops, 10);
    let web: Vec<String> = s
        .tasks
        .values()
        .filter(|t| t.service_id == "web")
        .map(|t| t.id.clone())
        .collect();
    s.tasks.get_mut(&web[0]).unwrap().node_id = "n1".into();
    s.tasks.get_mut(&web[1]).unwrap().node_id = "n2".into();
    assert!(run(&s).is_empty(), "settled");

    // Paused: what n2 runs stays.
    set_availability(&mut s, "n2", Pause);
    assert!(run(&s).is_empty(), "a paused node keeps its tasks");
    // Drained: n2's web task and its agent task are shut down, web's replaced.
    set_availability(&mut s, "n2", Drain);
    let ops = run(&s);
    apply(&mut s, ops, 11);
    let on_n2: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| t.node_id == "n2" && t.desired_state() == TaskState::Running)
        .collect();
    assert!(on_n2.is_empty(), "still desired on n2: {on_n2:?}");
    assert_eq!(live(&s, "web").len(), 2, "web's replica replaced");
    assert!(
        run(&s).is_empty(),
        "and no new global task for the drained node"
    );
    // The scheduler never places on it (nor on a paused node).
    let placed = crate::scheduler::plan(&s, &|_| true, 1);
    assert!(!placed.is_empty(), "web's new replica is placed");
    assert_eq!(s.apply(txn::of(placed), 12).conflict, "");
    let on_n2 = s
        .tasks
        .values()
        .filter(|t| t.node_id == "n2" && t.desired_state() == TaskState::Running)
        .count();
    assert_eq!(on_n2, 0, "placed on the drained node");
}

fn set_label(s: &mut StoreState, node: &str, key: &str, value: Option<&str>) {
    let labels = &mut s
        .nodes
        .get_mut(node)
        .unwrap()
        .spec
        .get_or_insert_default()
        .labels;
    match value {
        Some(v) => labels.insert(key.into(), v.into()),
        None => labels.remove(key),
    };
}

fn constrained(mut v: Service, constraint: &str) -> Service {
    let task = v.spec.as_mut().unwrap().task.as_mut().unwrap();
    task.placement = Some(mesh_proto::Placement {
        constraints: vec![constraint.into()],
        ..Default::default()
    });
    v
}

#[test]
fn constraints_choose_global_nodes_and_a_node_that_stops_satisfying_them_is_left() {
    let mut s = state();
    set_label(&mut s, "n1", "zone", Some("a"));
    s.services.insert(
        "agent".into(),
        constrained(
            service("agent", ServiceMode::Global, 0),
            "node.labels.zone==a",
        ),
    );
    s.services.insert(
        "web".into(),
        constrained(
            service("web", ServiceMode::Replicated, 1),
            "node.labels.zone==a",
        ),
    );
    let ops = run(&s);
    apply(&mut s, ops, 10);
    let agents: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| t.service_id == "agent")
        .collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].node_id, "n1", "only the node with zone=a");
    // The scheduler puts web on n1 too, n2 fails the constraint.
    let placed = crate::scheduler::plan(&s, &|_| true, 1);
    assert_eq!(s.apply(txn::of(placed), 12).conflict, "");
    let web: Vec<&Task> = s.tasks.values().filter(|t| t.service_id == "web").collect();
    assert_eq!(web[0].node_id, "n1");
    assert!(run(&s).is_empty(), "settled");

    // The label goes: n1 no longer satisfies either service; both tasks leave it, and web's
    // replacement has nowhere to go.
    set_label(&mut s, "n1", "zone", None);
    let ops = run(&s);
    apply(&mut s, ops, 13);
    let on_n1 = s
        .tasks
        .values()
        .filter(|t| t.node_id == "n1" && t.desired_state() == TaskState::Running)
        .count();
    assert_eq!(
        on_n1, 0,
        "tasks stay on a node that fails their constraints"
    );
    assert_eq!(live(&s, "web").len(), 1, "web's replica is replaced");
    let placed = crate::scheduler::plan(&s, &|_| true, 2);
    assert_eq!(s.apply(txn::of(placed), 14).conflict, "");
    let pending: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| t.service_id == "web" && t.desired_state() == TaskState::Running)
        .collect();
    let status = pending[0].status.as_ref().unwrap();
    assert_eq!(status.state(), TaskState::Pending);
    assert_eq!(
        status.err,
        "no suitable node (scheduling constraints not satisfied on 2 nodes: node.labels.zone==a)"
    );
    // The label on n2: the pending task is placed there, and a global task starts there.
    set_label(&mut s, "n2", "zone", Some("a"));
    let ops = run(&s);
    apply(&mut s, ops, 15);
    let placed = crate::scheduler::plan(&s, &|_| true, 3);
    assert_eq!(s.apply(txn::of(placed), 17).conflict, "");
    let running_on_n2: BTreeSet<&str> = s
        .tasks
        .values()
        .filter(|t| t.node_id == "n2" && t.desired_state() == TaskState::Running)
        .map(|t| t.service_id.as_str())
        .collect();
    assert_eq!(running_on_n2, BTreeSet::from(["agent", "web"]));
}

/// `web` with 2 replicas running spec 1 on n1, then updated (by the API's own rule) to a
/// new command with `action` on failure.
fn updated_web(action: mesh_proto::UpdateFailureAction) -> StoreState {
    let mut s = state();
    let mut svc = service("web", ServiceMode::Replicated, 2);
    svc.spec_version = 1;
    s.services.insert("web".into(), svc.clone());
    let ops = run(&s);
    apply(&mut s, ops, 10);
    run_all(&mut s, "n1", 0);
    let mut spec = svc.spec.clone().unwrap();
    spec.task.as_mut().unwrap().command = vec!["false".into()];
    spec.update = Some(mesh_proto::UpdateConfig {
        parallelism: 1,
        failure_action: action as i32,
        monitor_ms: 1000,
        ..Default::default()
    });
    let next = crate::controlapi::services::respec(
        &s,
        &s.services["web"],
        spec,
        false,
        &crate::config::LimitsConfig::default(),
        100,
    )
    .unwrap();
    assert_eq!(next.spec_version, 2);
    assert_eq!(
        next.update_status.as_ref().unwrap().state(),
        mesh_proto::UpdateState::Updating
    );
    s.services.insert("web".into(), next);
    s
}

/// Runs the orchestrator at `now` and applies what it plans; the new tasks come up, and
/// those of spec 2 restart as a failing command does.
fn step(s: &mut StoreState, now: i64, index: u64) {
    let ops = plan_with(s, now, &|_| false);
    apply(s, ops, index);
    stop_stopping(s);
    for t in s
        .tasks
        .values_mut()
        .filter(|t| t.desired_state() == TaskState::Running)
        .filter(|t| {
            t.status
                .as_ref()
                .is_none_or(|st| st.state() != TaskState::Running)
        })
    {
        t.node_id = "n1".into();
        let mut st = status(TaskState::Running, "running", now);
        if t.spec_version == 2 {
            st.restarts = 1;
            st.err = "exited with status 1".into();
        }
        t.status = Some(st);
    }
}

fn update_state(s: &StoreState) -> (mesh_proto::UpdateState, String) {
    let u = s.services["web"].update_status.clone().unwrap();
    (u.state(), u.message)
}

#[test]
fn a_failing_update_pauses_by_default_and_replaces_nothing_more() {
    let mut s = updated_web(mesh_proto::UpdateFailureAction::Pause);
    step(&mut s, 1000, 20);
    let (state, message) = update_state(&s);
    assert_eq!(state, mesh_proto::UpdateState::Updating, "{message}");
    step(&mut s, 2000, 22);
    let (state, message) = update_state(&s);
    assert_eq!(state, mesh_proto::UpdateState::Paused);
    assert!(
        message.starts_with("update paused due to failure or early termination of task web."),
        "{message}"
    );
    assert!(message.contains("exited with status 1"), "{message}");
    // Paused: the other old task stays.
    step(&mut s, 9000, 24);
    let old = s
        .tasks
        .values()
        .filter(|t| t.spec_version == 1 && t.desired_state() == TaskState::Running)
        .count();
    assert_eq!(old, 1, "a paused update replaces nothing more");
}

#[test]
fn a_failing_update_with_action_rollback_returns_to_the_previous_spec() {
    let mut s = updated_web(mesh_proto::UpdateFailureAction::Rollback);
    step(&mut s, 1000, 20);
    step(&mut s, 2000, 22);
    let web = &s.services["web"];
    let (state, message) = update_state(&s);
    assert_eq!(state, mesh_proto::UpdateState::RollbackStarted);
    assert!(
        message.starts_with("update rolled back due to"),
        "{message}"
    );
    assert_eq!(web.spec_version, 3);
    let command = |spec: &ServiceSpec| spec.task.as_ref().unwrap().command.clone();
    assert_eq!(
        command(web.spec.as_ref().unwrap()),
        ["true"],
        "the spec before"
    );
    assert_eq!(command(web.previous_spec.as_ref().unwrap()), ["false"]);
    // Every task is replaced by one of spec 3 (the old command), one at a time; then the
    // rollback completes once the monitor period passed.
    for (i, now) in (3000..30_000).step_by(1000).enumerate() {
        step(&mut s, now, 30 + 2 * i as u64);
    }
    let live: Vec<u64> = s
        .tasks
        .values()
        .filter(|t| t.desired_state() == TaskState::Running)
        .map(|t| t.spec_version)
        .collect();
    assert_eq!(live, [3, 3]);
    assert_eq!(
        update_state(&s).0,
        mesh_proto::UpdateState::RollbackCompleted
    );
}
