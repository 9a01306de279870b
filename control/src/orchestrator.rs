//! The orchestrator: makes the tasks in the store match the services.
//!
//! - Replicated services get one running task per slot `1..=replicas`;
//!   tasks in slots above that are shut down.
//! - Global services get one task on every node, assigned to it directly.
//! - Tasks whose service is gone are shut down.
//! - Finished tasks that were meant to stop, and tasks of nodes that were
//!   removed, are deleted (the reaper), which frees their addresses.
//!
//! Everything here is a pure plan over the store state; the leader's loop
//! commits it with preconditions on the versions it read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_proto::{
    NetworkAttachment, NetworkAttachmentConfig, Service, ServiceMode, StoreOp, Task, TaskState,
    TaskStatus,
};

use crate::allocator::{self, AllocError};
use crate::store::{StoreState, txn};

/// What a plan needs besides the state.
pub struct Context<'a> {
    pub now_ms: i64,
    /// Fresh, unique task ids.
    pub new_id: &'a mut dyn FnMut() -> String,
    /// Nodes down for longer than the grace period: their replicated tasks
    /// are replaced elsewhere.
    pub node_failed: &'a dyn Fn(&str) -> bool,
}

/// True for a state a task does not leave any more.
pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Complete
            | TaskState::Shutdown
            | TaskState::Failed
            | TaskState::Rejected
            | TaskState::Orphaned
    )
}

fn status(state: TaskState, message: &str, now_ms: i64) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        message: message.to_string(),
        timestamp_ms: now_ms,
        ..Default::default()
    }
}

/// `task` with desired state shutdown.
pub fn shut_down(task: &Task, now_ms: i64) -> StoreOp {
    let mut t = task.clone();
    t.set_desired_state(TaskState::Shutdown);
    t.updated_at_ms = now_ms;
    txn::put_if_unchanged(t)
}

/// Addresses in use, per network, computed on first need and kept up to
/// date as the plan hands out more.
struct Addresses<'s> {
    state: &'s StoreState,
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl Addresses<'_> {
    fn allocate(&mut self, network_id: &str) -> Result<String, AllocError> {
        let network =
            self.state.networks.get(network_id).ok_or_else(|| {
                AllocError::Invalid(format!("network {network_id} does not exist"))
            })?;
        let used = self
            .used
            .entry(network_id.to_string())
            .or_insert_with(|| allocator::addresses_in_use(self.state, network_id));
        allocator::allocate_address(network, used)
    }
}

fn new_task(
    service: &Service,
    slot: u64,
    node: Option<(&str, &str)>,
    addrs: &mut Addresses<'_>,
    ctx: &mut Context<'_>,
) -> Result<Task, AllocError> {
    let spec = service.spec.clone().unwrap_or_default();
    let mut networks = Vec::new();
    // A service publishing through the routing mesh has its tasks on the
    // ingress network too, behind its ingress VIP.
    let mut targets: Vec<(String, Vec<String>)> = spec
        .networks
        .iter()
        .map(|a| (a.target.clone(), a.aliases.clone()))
        .collect();
    if allocator::publishes_ingress(&service.ports)
        && let Some(ingress) = allocator::ingress_network(addrs.state)
    {
        targets.push((ingress.id.clone(), Vec::new()));
    }
    for (target, aliases) in &targets {
        let attach = NetworkAttachmentConfig {
            target: target.clone(),
            aliases: aliases.clone(),
        };
        let addr = addrs.allocate(&attach.target)?;
        let vip = service
            .vips
            .iter()
            .find(|v| v.network_id == attach.target)
            .map(|v| v.addr.clone());
        networks.push(NetworkAttachment {
            network_id: attach.target.clone(),
            mac: allocator::mac_for(&addr),
            addr,
            aliases: attach.aliases.clone(),
            vip: vip.unwrap_or_default(),
        });
    }
    let (node_id, name, state, message) = match node {
        Some((id, hostname)) => (
            id.to_string(),
            format!("{}.{hostname}", spec.name),
            TaskState::Assigned,
            "assigned",
        ),
        None => (
            String::new(),
            format!("{}.{slot}", spec.name),
            TaskState::New,
            "created",
        ),
    };
    let mut task = Task {
        id: (ctx.new_id)(),
        service_id: service.id.clone(),
        service_name: spec.name.clone(),
        slot,
        node_id,
        spec: spec.task.clone(),
        spec_version: service.spec_version,
        networks,
        status: Some(status(state, message, ctx.now_ms)),
        created_at_ms: ctx.now_ms,
        updated_at_ms: ctx.now_ms,
        name,
        ports: service.ports.clone(),
        ..Default::default()
    };
    task.set_desired_state(TaskState::Running);
    task.set_endpoint_mode(spec.endpoint.as_ref().map(|e| e.mode()).unwrap_or_default());
    // Written with version 0, so the put means "must not exist yet".
    Ok(task)
}

/// The tasks of a rolling update to replace now: none while an earlier
/// batch is still starting (or its old tasks still stopping), none until
/// the update delay passed since the last new task came up; then up to
/// `parallelism` (0 = all) old tasks, lowest slot first.
fn next_batch<'t>(
    service: &Service,
    live: &[&'t Task],
    all: &[&Task],
    now_ms: i64,
    node_failed: &dyn Fn(&str) -> bool,
) -> Vec<&'t Task> {
    let current = service.spec_version;
    let mut old: Vec<&Task> = live
        .iter()
        .copied()
        .filter(|t| t.spec_version < current)
        .collect();
    if old.is_empty() {
        return old;
    }
    let observed = |t: &Task| {
        t.status
            .as_ref()
            .map(|s| s.state())
            .unwrap_or(TaskState::New)
    };
    let starting = live
        .iter()
        .filter(|t| t.spec_version == current && observed(t) != TaskState::Running)
        .count();
    let stopping = all
        .iter()
        .filter(|t| t.desired_state() != TaskState::Running && !is_terminal(observed(t)))
        // Tasks of a dead node never confirm they stopped: do not wait for them.
        .filter(|t| !t.node_id.is_empty() && !node_failed(&t.node_id))
        .count();
    if starting + stopping > 0 {
        return Vec::new();
    }
    let update = service
        .spec
        .as_ref()
        .and_then(|s| s.update)
        .unwrap_or_default();
    let last_up = live
        .iter()
        .filter(|t| t.spec_version == current)
        .filter_map(|t| t.status.as_ref().map(|s| s.timestamp_ms))
        .max();
    if last_up.is_some_and(|at| now_ms < at + update.delay_ms as i64) {
        return Vec::new();
    }
    old.sort_by_key(|t| (t.slot, t.node_id.clone()));
    let batch = if update.parallelism == 0 {
        old.len()
    } else {
        update.parallelism as usize
    };
    old.truncate(batch);
    old
}

/// The ops that bring tasks in line with services.
pub fn plan(state: &StoreState, ctx: &mut Context<'_>) -> Result<Vec<StoreOp>, AllocError> {
    let mut ops = Vec::new();
    let mut addrs = Addresses {
        state,
        used: BTreeMap::new(),
    };
    let mut live: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    let mut all: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        all.entry(t.service_id.as_str()).or_default().push(t);
        if t.desired_state() == TaskState::Running {
            live.entry(t.service_id.as_str()).or_default().push(t);
        }
    }
    for service in state.services.values() {
        let spec = service.spec.clone().unwrap_or_default();
        let tasks = live.remove(service.id.as_str()).unwrap_or_default();
        let every = all.get(service.id.as_str()).cloned().unwrap_or_default();
        let mut leaving: BTreeSet<&str> = BTreeSet::new();
        match spec.mode() {
            ServiceMode::Replicated => {
                // Tasks of nodes down past the grace period are replaced; the
                // old ones keep their address until the node is back (and
                // stops them) or is removed.
                for t in tasks
                    .iter()
                    .filter(|t| !t.node_id.is_empty() && (ctx.node_failed)(&t.node_id))
                {
                    ops.push(shut_down(t, ctx.now_ms));
                    leaving.insert(&t.id);
                }
                for t in tasks.iter().filter(|t| t.slot > spec.replicas) {
                    if leaving.insert(&t.id) {
                        ops.push(shut_down(t, ctx.now_ms));
                    }
                }
                let staying: Vec<&Task> = tasks
                    .iter()
                    .copied()
                    .filter(|t| !leaving.contains(t.id.as_str()))
                    .collect();
                for t in next_batch(service, &staying, &every, ctx.now_ms, ctx.node_failed) {
                    ops.push(shut_down(t, ctx.now_ms));
                    leaving.insert(&t.id);
                }
                let slots: BTreeSet<u64> = tasks
                    .iter()
                    .filter(|t| !leaving.contains(t.id.as_str()))
                    .map(|t| t.slot)
                    .collect();
                for slot in (1..=spec.replicas).filter(|s| !slots.contains(s)) {
                    ops.push(txn::put_if_unchanged(new_task(
                        service, slot, None, &mut addrs, ctx,
                    )?));
                }
            }
            ServiceMode::Global => {
                for t in tasks
                    .iter()
                    .filter(|t| !state.nodes.contains_key(&t.node_id))
                {
                    ops.push(shut_down(t, ctx.now_ms));
                    leaving.insert(&t.id);
                }
                let staying: Vec<&Task> = tasks
                    .iter()
                    .copied()
                    .filter(|t| !leaving.contains(t.id.as_str()))
                    .collect();
                for t in next_batch(service, &staying, &every, ctx.now_ms, ctx.node_failed) {
                    ops.push(shut_down(t, ctx.now_ms));
                    leaving.insert(&t.id);
                }
                let covered: BTreeSet<&str> = tasks
                    .iter()
                    .filter(|t| !leaving.contains(t.id.as_str()))
                    .map(|t| t.node_id.as_str())
                    .collect();
                for node in state
                    .nodes
                    .values()
                    .filter(|n| !covered.contains(n.id.as_str()))
                {
                    let task = new_task(
                        service,
                        0,
                        Some((&node.id, &node.hostname)),
                        &mut addrs,
                        ctx,
                    )?;
                    ops.push(txn::put_if_unchanged(task));
                }
            }
        }
    }
    // Whatever is left belongs to services that are gone.
    for t in live.into_values().flatten() {
        ops.push(shut_down(t, ctx.now_ms));
    }
    Ok(ops)
}

/// Gives every node without one an address on the ingress network (for
/// its ingress sandbox).
pub fn plan_node_attachments(state: &StoreState) -> Result<Vec<StoreOp>, AllocError> {
    let Some(ingress) = allocator::ingress_network(state) else {
        return Ok(Vec::new());
    };
    let mut used = allocator::addresses_in_use(state, &ingress.id);
    let mut ops = Vec::new();
    for node in state.nodes.values().filter(|n| {
        n.ingress
            .as_ref()
            .is_none_or(|a| a.network_id != ingress.id)
    }) {
        let addr = allocator::allocate_address(ingress, &mut used)?;
        let mut n = node.clone();
        n.ingress = Some(NetworkAttachment {
            network_id: ingress.id.clone(),
            mac: allocator::mac_for(&addr),
            addr,
            ..Default::default()
        });
        ops.push(txn::put_if_unchanged(n));
    }
    Ok(ops)
}

/// Deletes tasks that are done: meant to stop and stopped (or never
/// placed), and tasks of nodes that were removed from the cluster.
pub fn plan_reap(state: &StoreState) -> Vec<StoreOp> {
    state
        .tasks
        .values()
        .filter(|t| {
            let node_gone = !t.node_id.is_empty() && !state.nodes.contains_key(&t.node_id);
            let observed = t
                .status
                .as_ref()
                .map(|s| s.state())
                .unwrap_or(TaskState::New);
            let stopped = t.desired_state() == TaskState::Shutdown
                && (is_terminal(observed) || t.node_id.is_empty());
            node_gone || stopped
        })
        .map(txn::delete_if_unchanged)
        .collect()
}

#[cfg(test)]
mod tests {
    use mesh_proto::{
        Network, NetworkAttachmentConfig, NetworkSpec, Node, ServiceSpec, TaskSpec, store_op::Op,
    };

    use super::*;

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
        let mut new_id = fresh_id;
        plan(
            s,
            &mut Context {
                now_ms: 1,
                new_id: &mut new_id,
                node_failed: &|_| false,
            },
        )
        .unwrap()
    }

    fn apply(s: &mut StoreState, ops: Vec<StoreOp>, index: u64) {
        let r = s.apply(txn::of(ops), index);
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
    fn exhausted_network_is_an_error_not_a_partial_plan() {
        let mut s = state();
        s.networks.get_mut("net1").unwrap().subnet = "10.20.0.0/29".into();
        s.services
            .insert("web".into(), service("web", ServiceMode::Replicated, 10));
        let mut new_id = fresh_id;
        let err = plan(
            &s,
            &mut Context {
                now_ms: 1,
                new_id: &mut new_id,
                node_failed: &|_| false,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
    }

    fn plan_with(s: &StoreState, now_ms: i64, failed: &dyn Fn(&str) -> bool) -> Vec<StoreOp> {
        let mut new_id = fresh_id;
        plan(
            s,
            &mut Context {
                now_ms,
                new_id: &mut new_id,
                node_failed: failed,
            },
        )
        .unwrap()
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
}
