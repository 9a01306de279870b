//! The allocator component: gives every new task its addresses (one per network it is
//! attached to) and every node its address on the ingress network (for its ingress sandbox).
//!
//! A task is created by an orchestrator in state `New` with its attachments named but not
//! addressed. The allocator addresses it and moves it on: to `Pending` (for the scheduler)
//! or, when an orchestrator already chose its node (global services), to `Assigned`. Tasks
//! are allocated one by one: a task whose network has no free address stays `New` with the
//! reason in its status, and the others carry on. Nothing reaches an agent before it is
//! allocated.

use mesh_common::task::observed_state;
use mesh_common::time::now_ms;
use mesh_proto::{NetworkAttachment, StoreOp, Task, TaskState, TaskStatus, Transaction};

use super::AllocError;
use super::address::{Addresses, addresses_in_use, allocate_address, ingress_network, mac_for};
use crate::component::Component;
use crate::error::ControlError;
use crate::store::txn::Batch;
use crate::store::{Store, StoreState, txn};

/// Prefix of the status message of a task waiting for an address.
pub const WAITING_FOR_ADDRESS: &str = "waiting for an address";

/// True once every attachment of `t` has an address.
pub fn is_allocated(t: &Task) -> bool {
    t.networks.iter().all(|a| !a.addr.is_empty())
}

/// Gives every node without one an address on the ingress network.
pub fn plan_node_attachments(state: &StoreState) -> Result<Vec<StoreOp>, AllocError> {
    let Some(ingress) = ingress_network(state) else {
        return Ok(Vec::new());
    };
    let mut used = addresses_in_use(state, &ingress.id);
    let mut ops = Vec::new();
    for node in state.nodes.values().filter(|n| {
        n.ingress
            .as_ref()
            .is_none_or(|a| a.network_id != ingress.id)
    }) {
        let addr = allocate_address(ingress, &mut used)?;
        let mut n = node.clone();
        n.ingress = Some(NetworkAttachment {
            network_id: ingress.id.clone(),
            mac: mac_for(&addr),
            addr,
            ..Default::default()
        });
        ops.push(txn::put_if_unchanged(n));
    }
    Ok(ops)
}

fn status(state: TaskState, message: String, now_ms: i64) -> Option<TaskStatus> {
    Some(TaskStatus {
        state: state as i32,
        message,
        timestamp_ms: now_ms,
        ..Default::default()
    })
}

/// Addresses every new task that is still wanted; a task that cannot be addressed keeps its
/// state and says why (written once, not at every pass).
pub fn plan_task_addresses(state: &StoreState, now_ms: i64) -> Vec<StoreOp> {
    let mut addrs = Addresses::new(state);
    let mut ops = Vec::new();
    let new = state
        .tasks
        .values()
        .filter(|t| t.desired_state() == TaskState::Running && observed_state(t) == TaskState::New);
    for task in new {
        let mut t = task.clone();
        let mut failed = None;
        for a in t.networks.iter_mut().filter(|a| a.addr.is_empty()) {
            match addrs.allocate(&a.network_id) {
                Ok(addr) => {
                    a.mac = mac_for(&addr);
                    a.addr = addr;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        t.updated_at_ms = now_ms;
        match failed {
            None if t.node_id.is_empty() => {
                t.status = status(TaskState::Pending, "allocated".into(), now_ms);
            }
            None => t.status = status(TaskState::Assigned, "assigned".into(), now_ms),
            Some(e) => {
                let why = e.to_string();
                if task.status.as_ref().is_some_and(|s| s.err == why) {
                    continue;
                }
                // Addresses handed to this task in this pass stay reserved until the next
                // pass, which starts from the store again: nothing is held for it meanwhile.
                t.networks = task.networks.clone();
                t.status = status(TaskState::New, WAITING_FOR_ADDRESS.into(), now_ms);
                if let Some(s) = t.status.as_mut() {
                    s.err = why;
                }
            }
        }
        ops.push(txn::put_if_unchanged(t));
    }
    ops
}

/// The allocator as a leader component.
pub struct Allocator {
    store: Store,
    /// Most objects written at once.
    batch: Batch,
}

impl Allocator {
    pub fn new(store: Store, batch: Batch) -> Allocator {
        Allocator { store, batch }
    }
}

impl Component for Allocator {
    fn name(&self) -> &'static str {
        "allocator"
    }

    async fn reconcile(&mut self) -> Result<(), ControlError> {
        self.store
            .update(|s| {
                let mut ops = plan_node_attachments(s).map_err(ControlError::from)?;
                ops.extend(plan_task_addresses(s, now_ms()));
                self.batch.limit(&mut ops);
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        Ok(())
    }
}
