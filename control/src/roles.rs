//! The role reconciler: makes raft membership follow the nodes' desired roles. Voters whose
//! node was demoted (or removed) leave the voter set, then the node's role is recorded as
//! worker so that its agent renews into a worker certificate. Promotions are driven by the
//! promoted node itself (`Raft.JoinRaft`), since it must run raft before it can vote.

use std::collections::BTreeSet;

use mesh_common::time::now_ms;
use mesh_proto::{NodeRole, StoreOp, Transaction};
use tracing::{debug, info};

use crate::component::Component;
use crate::error::ControlError;
use crate::objects::desired_role;
use crate::store::{Store, StoreState, txn};

/// The role reconciler as a leader component.
pub struct RoleReconciler {
    store: Store,
}

impl RoleReconciler {
    pub fn new(store: Store) -> RoleReconciler {
        RoleReconciler { store }
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.store
            .status()
            .voters
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Managers that are to be workers and no longer vote: recorded as workers.
fn plan_demoted(s: &StoreState, voters: &BTreeSet<u64>) -> Vec<StoreOp> {
    s.nodes
        .values()
        .filter(|n| n.role() == NodeRole::Manager && desired_role(n) == NodeRole::Worker)
        .filter(|n| !voters.contains(&n.raft_id))
        .map(|n| {
            let mut n = n.clone();
            n.set_role(NodeRole::Worker);
            n.updated_at_ms = now_ms();
            txn::put_if_unchanged(n)
        })
        .collect()
}

impl Component for RoleReconciler {
    fn name(&self) -> &'static str {
        "role reconciler"
    }

    async fn reconcile(&mut self) -> Result<(), ControlError> {
        let voters = self.voters();
        let leaving: Vec<u64> = self.store.read(|s| {
            voters
                .iter()
                .copied()
                .filter(
                    |raft_id| match s.nodes.values().find(|n| n.raft_id == *raft_id) {
                        Some(n) => desired_role(n) == NodeRole::Worker,
                        None => s.cluster.is_some(),
                    },
                )
                .collect()
        });
        for raft_id in leaving {
            if voters.len() <= 1 {
                break;
            }
            info!(raft_id, "removing demoted manager from the raft voters");
            self.store.remove_voter(raft_id).await?;
        }
        let voters = self.voters();
        if self.store.read(|s| plan_demoted(s, &voters).is_empty()) {
            return Ok(());
        }
        self.store
            .update(|s| {
                Ok::<_, ControlError>(Transaction {
                    ops: plan_demoted(s, &voters),
                })
            })
            .await?;
        debug!("roles reconciled");
        Ok(())
    }
}
