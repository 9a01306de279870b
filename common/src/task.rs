//! Task-state predicates shared by the orchestrator and the agent.

use mesh_proto::{Task, TaskState};

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

/// The state last observed of `task` (`New` before anything was reported).
pub fn observed_state(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_the_ones_a_task_never_leaves() {
        for s in [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Starting,
            TaskState::Running,
        ] {
            assert!(!is_terminal(s), "{s:?}");
        }
        for s in [
            TaskState::Complete,
            TaskState::Shutdown,
            TaskState::Failed,
            TaskState::Rejected,
            TaskState::Orphaned,
        ] {
            assert!(is_terminal(s), "{s:?}");
        }
        assert_eq!(observed_state(&Task::default()), TaskState::New);
    }
}
