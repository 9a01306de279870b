//! The task reaper: deletes tasks that are done, which frees their addresses.

use mesh_common::task::{is_terminal, observed_state};
use mesh_proto::{StoreOp, TaskState, Transaction};

use crate::component::Component;
use crate::error::ControlError;
use crate::store::txn::Batch;
use crate::store::{Store, StoreState, txn};

/// Deletes tasks that are done: meant to stop and stopped (or never handed to a node: not
/// placed, or not yet addressed), and tasks of nodes that were removed from the cluster.
pub fn plan_reap(state: &StoreState) -> Vec<StoreOp> {
    state
        .tasks
        .values()
        .filter(|t| {
            let node_gone = !t.node_id.is_empty() && !state.nodes.contains_key(&t.node_id);
            let observed = observed_state(t);
            let stopped = t.desired_state() == TaskState::Shutdown
                && (is_terminal(observed) || t.node_id.is_empty() || observed == TaskState::New);
            node_gone || stopped
        })
        .map(txn::delete_if_unchanged)
        .collect()
}

/// The reaper as a leader component.
pub struct TaskReaper {
    store: Store,
    /// Most objects deleted at once.
    batch: Batch,
}

impl TaskReaper {
    pub fn new(store: Store, batch: Batch) -> TaskReaper {
        TaskReaper { store, batch }
    }
}

impl Component for TaskReaper {
    fn name(&self) -> &'static str {
        "task reaper"
    }

    async fn reconcile(&mut self) -> Result<(), ControlError> {
        self.store
            .update(|s| {
                let mut ops = plan_reap(s);
                self.batch.limit(&mut ops);
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        Ok(())
    }
}
