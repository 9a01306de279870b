//! The global orchestrator: one task of every global service on every active node that
//! satisfies the service's constraints.

use std::collections::BTreeSet;

use mesh_proto::{NodeAvailability, ServiceMode, StoreOp};

use super::update::next_batch;
use super::{Context, TasksByService, must_leave, new_task, shut_down, staying, update_op};
use crate::objects::availability;
use crate::placement::Rules;
use crate::store::{StoreState, txn};

/// The ops that bring the tasks of global services in line with them: a task for each node
/// without one (its node chosen here), none for nodes that are gone.
pub fn plan(state: &StoreState, ctx: &mut Context<'_>) -> Vec<StoreOp> {
    let mut ops = Vec::new();
    let tasks = TasksByService::of(state);
    for service in state.services.values() {
        if service.spec.as_ref().map(|s| s.mode()) != Some(ServiceMode::Global) {
            continue;
        }
        let live = tasks
            .live
            .get(service.id.as_str())
            .cloned()
            .unwrap_or_default();
        let every = tasks
            .all
            .get(service.id.as_str())
            .cloned()
            .unwrap_or_default();
        let (update, hold) = update_op(state, service, &live, ctx);
        ops.extend(update);
        if hold {
            continue;
        }
        let mut leaving: BTreeSet<&str> = BTreeSet::new();
        for t in live
            .iter()
            .filter(|t| !state.nodes.contains_key(&t.node_id) || must_leave(state, t))
        {
            ops.push(shut_down(t, ctx.now_ms));
            leaving.insert(&t.id);
        }
        let stay = staying(&live, &leaving);
        for t in next_batch(service, &stay, &every, ctx.now_ms, ctx.node_failed) {
            ops.push(shut_down(t, ctx.now_ms));
            leaving.insert(&t.id);
        }
        let covered: BTreeSet<&str> = staying(&live, &leaving)
            .iter()
            .map(|t| t.node_id.as_str())
            .collect();
        // A paused or drained node gets no new task (a paused one keeps what it runs), nor
        // does one that fails the service's constraints.
        let rules = Rules::of(
            service
                .spec
                .as_ref()
                .and_then(|s| s.task.as_ref())
                .and_then(|t| t.placement.as_ref()),
        );
        for node in state
            .nodes
            .values()
            .filter(|n| !covered.contains(n.id.as_str()))
            .filter(|n| availability(n) == NodeAvailability::Active && rules.fits(n))
        {
            let task = new_task(state, service, 0, Some((&node.id, &node.hostname)), ctx);
            ops.push(txn::put_if_unchanged(task));
        }
    }
    ops
}
