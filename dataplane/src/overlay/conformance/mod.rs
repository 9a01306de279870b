//! The conformance suite: one set of cases that every [`Dataplane`](crate::overlay::Dataplane)
//! must pass, run against the
//! fake and against Linux (inside fresh namespaces).
//!
//! Each case takes a fresh [`Harness`] and says in its name what it proves. Use
//! [`overlay_conformance_tests!`](crate::overlay_conformance_tests) to get one `#[test]` per
//! case for a harness factory. The cases use only the
//! [`Dataplane`](crate::overlay::Dataplane) trait: stale and foreign
//! objects are made with [`Op`](crate::overlay::Op)s, and foreign namespaces are seen by
//! observing another scope.
//!
//! # Layout
//! - `fixtures`: the [`Harness`], the node the cases build and the checks they repeat.
//! - `build`: building a node, and leaving alone what is right or not ours.
//! - `remotes`: the FDB and neighbor entries of remote endpoints.
//! - `repair`: removing what is stale and repairing drift.

mod build;
mod fixtures;
mod remotes;
mod repair;

pub use build::{
    builds_network_and_task_sandboxes, foreign_namespaces_are_untouched,
    replan_of_a_converged_node_is_empty, restarted_agent_keeps_running_tasks,
};
pub use fixtures::Harness;
pub use remotes::{
    incremental_remote_updates_match_a_reconcile,
    remote_on_a_network_without_local_endpoints_is_not_programmed,
    remotes_follow_the_desired_state, vxlan_with_a_wrong_config_is_recreated_with_its_entries,
};
pub use repair::{
    drift_is_repaired_with_minimal_ops, last_endpoint_leaving_removes_the_network_sandbox,
    stale_items_with_our_prefix_are_removed,
};

/// One `#[test]` per conformance case, each with a fresh harness from `$factory()`.
#[macro_export]
macro_rules! overlay_conformance_tests {
    ($factory:path) => {
        $crate::overlay_conformance_tests!(@cases $factory;
            builds_network_and_task_sandboxes,
            replan_of_a_converged_node_is_empty,
            remotes_follow_the_desired_state,
            incremental_remote_updates_match_a_reconcile,
            remote_on_a_network_without_local_endpoints_is_not_programmed,
            stale_items_with_our_prefix_are_removed,
            foreign_namespaces_are_untouched,
            last_endpoint_leaving_removes_the_network_sandbox,
            drift_is_repaired_with_minimal_ops,
            restarted_agent_keeps_running_tasks,
            vxlan_with_a_wrong_config_is_recreated_with_its_entries
        );
    };
    (@cases $factory:path; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::overlay::conformance::$case($factory());
            }
        )*
    };
}
