//! The orchestrators: make the tasks in the store match the services.
//!
//! - [`replicated`]: one running task per slot `1..=replicas`; tasks in slots above that are
//!   shut down; tasks of nodes down past the grace period are replaced elsewhere; tasks of
//!   services that are gone are shut down.
//! - [`global`]: one task on every node, its node chosen at creation.
//! - [`update`]: rolling updates, shared by both: which old tasks to replace now.
//! - [`reaper`]: finished tasks that were meant to stop, and tasks of removed nodes, are
//!   deleted, which frees their addresses.
//!
//! Orchestrators create tasks with their networks named but not addressed: the allocator
//! (`crate::allocator::Allocator`) addresses them and the scheduler places them. Everything
//! here is a pure plan over the store state; each component commits its plan with
//! preconditions on the versions it read.

pub mod global;
pub mod reaper;
pub mod replicated;
pub mod update;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mesh_common::Liveness;
use mesh_proto::{NetworkAttachment, NodeStatus, Service, StoreOp, Task, TaskState, TaskStatus};

use crate::allocator::{ingress_network, publishes_ingress};
use crate::objects::service_networks;
use crate::store::{StoreState, txn};

pub use reaper::{TaskReaper, plan_reap};

/// What a plan needs besides the state.
pub struct Context<'a> {
    pub now_ms: i64,
    /// Fresh, unique task ids.
    pub new_id: &'a mut dyn FnMut() -> String,
    /// Nodes down for longer than the grace period: their replicated tasks
    /// are replaced elsewhere.
    pub node_failed: &'a dyn Fn(&str) -> bool,
    /// What a service may ask for (an automatic rollback is checked like a user's change).
    pub limits: &'a crate::config::LimitsConfig,
}

/// Whether task `t` must leave its node: the node is drained (`mesh node update
/// --availability drain`), or no longer satisfies the task's placement constraints (a label
/// removed, a role changed). Its replicated tasks are placed elsewhere.
pub(crate) fn must_leave(state: &StoreState, t: &Task) -> bool {
    state.nodes.get(&t.node_id).is_some_and(|n| {
        crate::objects::availability(n) == mesh_proto::NodeAvailability::Drain
            || !crate::placement::Rules::of(task_placement(t)).fits(n)
    })
}

/// The write that moves the update of `service` on (see [`update::next_step`]), if any;
/// true when the service's tasks wait for the next pass: after a rollback to the previous
/// spec (they are planned against it), or when the update has just paused (no further
/// batch goes).
pub(crate) fn update_op(
    state: &StoreState,
    service: &Service,
    live: &[&Task],
    ctx: &Context<'_>,
) -> (Option<StoreOp>, bool) {
    use mesh_proto::{UpdateState, UpdateStatus};
    let paused = |message: String| {
        let mut next = service.clone();
        next.update_status = Some(UpdateStatus {
            state: UpdateState::Paused as i32,
            message,
            started_at_ms: service
                .update_status
                .as_ref()
                .map_or(0, |u| u.started_at_ms),
            completed_at_ms: ctx.now_ms,
        });
        (Some(txn::put_if_unchanged(next)), true)
    };
    match update::next_step(service, live, ctx.now_ms) {
        update::Step::Stay => (None, false),
        update::Step::Status(status) => {
            let hold = matches!(
                status.state(),
                UpdateState::Paused | UpdateState::RollbackPaused
            );
            let mut next = service.clone();
            next.update_status = Some(status);
            (Some(txn::put_if_unchanged(next)), hold)
        }
        update::Step::Rollback(why) => {
            let Some(previous) = service.previous_spec.clone() else {
                return paused(format!("{why}; no previous spec to roll back to: paused"));
            };
            match crate::controlapi::services::respec(
                state, service, previous, true, ctx.limits, ctx.now_ms,
            ) {
                Ok(mut next) => {
                    if let Some(u) = next.update_status.as_mut() {
                        u.message = why;
                    }
                    tracing::warn!(service = %service.id, "{}", next.update_status.as_ref().map_or("", |u| u.message.as_str()));
                    (Some(txn::put_if_unchanged(next)), true)
                }
                Err(e) => paused(format!("{why}; the rollback was refused ({e}): paused")),
            }
        }
    }
}

/// The placement a task was made with.
pub(crate) fn task_placement(t: &Task) -> Option<&mesh_proto::Placement> {
    t.spec.as_ref().and_then(|s| s.placement.as_ref())
}

/// The ops that bring the tasks of every service in line with it (both orchestrators).
pub fn plan(state: &StoreState, ctx: &mut Context<'_>) -> Vec<StoreOp> {
    let mut ops = replicated::plan(state, ctx);
    ops.extend(global::plan(state, ctx));
    ops
}

/// `task` with desired state shutdown.
pub fn shut_down(task: &Task, now_ms: i64) -> StoreOp {
    let mut t = task.clone();
    t.set_desired_state(TaskState::Shutdown);
    t.updated_at_ms = now_ms;
    txn::put_if_unchanged(t)
}

/// The live tasks (desired running) of every service, and all its tasks, by service id.
pub(crate) struct TasksByService<'s> {
    pub live: HashMap<&'s str, Vec<&'s Task>>,
    pub all: HashMap<&'s str, Vec<&'s Task>>,
}

impl<'s> TasksByService<'s> {
    pub fn of(state: &'s StoreState) -> TasksByService<'s> {
        let mut live: HashMap<&str, Vec<&Task>> = HashMap::new();
        let mut all: HashMap<&str, Vec<&Task>> = HashMap::new();
        for t in state.tasks.values() {
            all.entry(t.service_id.as_str()).or_default().push(t);
            if t.desired_state() == TaskState::Running {
                live.entry(t.service_id.as_str()).or_default().push(t);
            }
        }
        TasksByService { live, all }
    }
}

/// Ids of `tasks` in `leaving` left out.
pub(crate) fn staying<'t>(tasks: &[&'t Task], leaving: &BTreeSet<&str>) -> Vec<&'t Task> {
    tasks
        .iter()
        .copied()
        .filter(|t| !leaving.contains(t.id.as_str()))
        .collect()
}

/// A new task of `service`: in slot `slot` (replicated) or on `node` (global: `(id,
/// hostname)`), attached to the service's networks (and the ingress network when it
/// publishes through the routing mesh) with no address yet: the allocator gives them.
pub(crate) fn new_task(
    state: &StoreState,
    service: &Service,
    slot: u64,
    node: Option<(&str, &str)>,
    ctx: &mut Context<'_>,
) -> Task {
    let spec = service.spec.clone().unwrap_or_default();
    let mut targets: Vec<(String, Vec<String>)> = service_networks(service)
        .iter()
        .map(|a| (a.target.clone(), a.aliases.clone()))
        .collect();
    if publishes_ingress(&service.ports)
        && let Some(ingress) = ingress_network(state)
    {
        targets.push((ingress.id.clone(), Vec::new()));
    }
    let networks = targets
        .into_iter()
        .map(|(network_id, aliases)| NetworkAttachment {
            vip: service
                .vips
                .iter()
                .find(|v| v.network_id == network_id)
                .map(|v| v.addr.clone())
                .unwrap_or_default(),
            network_id,
            aliases,
            ..Default::default()
        })
        .collect();
    let (node_id, name) = match node {
        Some((id, hostname)) => (id.to_string(), format!("{}.{hostname}", spec.name)),
        None => (String::new(), format!("{}.{slot}", spec.name)),
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
        status: Some(TaskStatus {
            state: TaskState::New as i32,
            message: "created".into(),
            timestamp_ms: ctx.now_ms,
            ..Default::default()
        }),
        created_at_ms: ctx.now_ms,
        updated_at_ms: ctx.now_ms,
        name,
        ports: service.ports.clone(),
        ..Default::default()
    };
    task.set_desired_state(TaskState::Running);
    task.set_endpoint_mode(spec.endpoint.as_ref().map(|e| e.mode()).unwrap_or_default());
    // Written with version 0, so the put means "must not exist yet".
    task
}

/// Which nodes have been down for longer than the grace period, by this leader's SWIM view.
/// The clock starts when this leader first sees a node down, so a new leader waits a full
/// grace period again: never earlier than intended.
pub struct NodeFailures {
    self_id: String,
    liveness: Arc<dyn Liveness>,
    grace: Duration,
    down_since: HashMap<String, tokio::time::Instant>,
}

impl NodeFailures {
    pub fn new(self_id: String, liveness: Arc<dyn Liveness>, grace: Duration) -> NodeFailures {
        NodeFailures {
            self_id,
            liveness,
            grace,
            down_since: HashMap::new(),
        }
    }

    /// Nodes of `state` down past the grace period, as of now.
    pub fn failed(&mut self, state: &StoreState) -> BTreeSet<String> {
        let now = tokio::time::Instant::now();
        self.down_since.retain(|id, _| state.nodes.contains_key(id));
        let mut failed = BTreeSet::new();
        for id in state.nodes.keys() {
            if *id == self.self_id || self.liveness.status(id) != NodeStatus::Down {
                self.down_since.remove(id);
                continue;
            }
            let first = *self.down_since.entry(id.clone()).or_insert(now);
            if now.duration_since(first) >= self.grace {
                failed.insert(id.clone());
            }
        }
        failed
    }
}

/// An orchestrator as a leader component: the replicated one or the global one, told apart
/// by their plan ([`replicated::plan`], [`global::plan`]).
pub struct Orchestrator {
    name: &'static str,
    plan: fn(&StoreState, &mut Context<'_>) -> Vec<StoreOp>,
    store: crate::store::Store,
    failures: NodeFailures,
    /// Most objects written at once.
    batch: crate::store::txn::Batch,
    limits: crate::config::LimitsConfig,
}

/// Which orchestrator: they differ only by their plan.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Replicated,
    Global,
}

impl Orchestrator {
    pub fn new(
        kind: Kind,
        store: crate::store::Store,
        failures: NodeFailures,
        batch: crate::store::txn::Batch,
        limits: crate::config::LimitsConfig,
    ) -> Orchestrator {
        let (name, plan): (_, fn(&StoreState, &mut Context<'_>) -> Vec<StoreOp>) = match kind {
            Kind::Replicated => ("replicated orchestrator", replicated::plan),
            Kind::Global => ("global orchestrator", global::plan),
        };
        Orchestrator {
            name,
            plan,
            store,
            failures,
            batch,
            limits,
        }
    }
}

impl crate::component::Component for Orchestrator {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn reconcile(&mut self) -> Result<(), crate::error::ControlError> {
        reconcile_with(
            &self.store,
            &mut self.failures,
            self.batch,
            &self.limits,
            self.plan,
        )
        .await
    }
}

/// One pass of an orchestrator (replicated or global, told apart by `plan`): the nodes down
/// past the grace period, then `plan` over the store, written within `batch`.
pub(crate) async fn reconcile_with(
    store: &crate::store::Store,
    failures: &mut NodeFailures,
    batch: crate::store::txn::Batch,
    limits: &crate::config::LimitsConfig,
    plan: fn(&StoreState, &mut Context<'_>) -> Vec<StoreOp>,
) -> Result<(), crate::error::ControlError> {
    let failed = store.read(|s| failures.failed(s));
    let node_failed = |id: &str| failed.contains(id);
    let mut new_id = fresh_task_id;
    store
        .update(|s| {
            let mut ctx = Context {
                now_ms: mesh_common::time::now_ms(),
                new_id: &mut new_id,
                node_failed: &node_failed,
                limits,
            };
            let mut ops = plan(s, &mut ctx);
            batch.limit(&mut ops);
            Ok::<_, crate::error::ControlError>(mesh_proto::Transaction { ops })
        })
        .await?;
    Ok(())
}

/// A fresh task id (falls back to a time-based one if the system's generator fails).
pub(crate) fn fresh_task_id() -> String {
    mesh_common::ids::random_id().unwrap_or_else(|_| format!("t{}", mesh_common::time::now_ms()))
}
