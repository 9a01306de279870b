//! The replicated orchestrator: one running task per slot of every replicated service, and
//! no live task of a service that is gone.

use std::collections::BTreeSet;

use mesh_proto::{ServiceMode, StoreOp, Task};

use super::update::next_batch;
use super::{Context, TasksByService, must_leave, new_task, shut_down, staying, update_op};
use crate::store::{StoreState, txn};

/// The ops that bring the tasks of replicated services in line with them; live tasks whose
/// service is gone are shut down too (whatever their service's mode was).
pub fn plan(state: &StoreState, ctx: &mut Context<'_>) -> Vec<StoreOp> {
    let mut ops = Vec::new();
    let tasks = TasksByService::of(state);
    for service in state.services.values() {
        let spec = service.spec.clone().unwrap_or_default();
        if spec.mode() != ServiceMode::Replicated {
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
        // Tasks of nodes down past the grace period, drained, or no longer satisfying the
        // task's constraints are replaced; the old ones keep their address until their node
        // stops them (or is removed).
        for t in live.iter().filter(|t| {
            !t.node_id.is_empty() && ((ctx.node_failed)(&t.node_id) || must_leave(state, t))
        }) {
            ops.push(shut_down(t, ctx.now_ms));
            leaving.insert(&t.id);
        }
        for t in live.iter().filter(|t| t.slot > spec.replicas) {
            if leaving.insert(&t.id) {
                ops.push(shut_down(t, ctx.now_ms));
            }
        }
        let stay = staying(&live, &leaving);
        for t in next_batch(service, &stay, &every, ctx.now_ms, ctx.node_failed) {
            ops.push(shut_down(t, ctx.now_ms));
            leaving.insert(&t.id);
        }
        let slots: BTreeSet<u64> = staying(&live, &leaving).iter().map(|t| t.slot).collect();
        for slot in (1..=spec.replicas).filter(|s| !slots.contains(s)) {
            ops.push(txn::put_if_unchanged(new_task(
                state, service, slot, None, ctx,
            )));
        }
    }
    // Live tasks of services that are gone.
    let orphans = tasks
        .live
        .iter()
        .filter(|(id, _)| !state.services.contains_key(**id))
        .flat_map(|(_, ts)| ts.iter().copied());
    let mut orphans: Vec<&Task> = orphans.collect();
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    ops.extend(orphans.into_iter().map(|t| shut_down(t, ctx.now_ms)));
    ops
}
