//! Rolling updates: which tasks of a service still running an older spec to replace now.

use mesh_common::task::{is_terminal, is_up, observed_state};
use mesh_proto::{Service, Task, TaskState};

/// The tasks of a rolling update to replace now: none while an earlier batch is still
/// starting (not running, or not yet healthy) (or its old tasks still stopping), none until the update delay passed since the
/// last new task came up; then up to `parallelism` (0 = all) old tasks, lowest slot first.
pub fn next_batch<'t>(
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
    // A new task is up once running and, with a health check, healthy.
    let starting = live
        .iter()
        .filter(|t| t.spec_version == current && !is_up(t))
        .count();
    let stopping = all
        .iter()
        .filter(|t| t.desired_state() != TaskState::Running && !is_terminal(observed_state(t)))
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
