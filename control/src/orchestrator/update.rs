//! Rolling updates: which tasks of a service still running an older spec to replace now
//! ([`next_batch`]), and how the update goes on ([`next_step`]): Docker's update status
//! (updating, paused, completed, and the same for a rollback), its failure action (pause,
//! continue, rollback) once more than `max_failure_ratio` of the tasks failed, and its
//! monitor period, during which a new task's failure still counts.

use std::time::Duration;

use mesh_common::task::{is_terminal, is_up, observed_state};
use mesh_proto::{
    Service, Task, TaskHealth, TaskState, UpdateFailureAction, UpdateState, UpdateStatus,
};

/// How long a new task's failure counts against its update when the spec says 0 (Docker's
/// default `--update-monitor`).
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// Whether the update of `service` is stopped (paused by a failure, or its rollback paused).
pub fn paused(service: &Service) -> bool {
    service
        .update_status
        .as_ref()
        .is_some_and(|u| matches!(u.state(), UpdateState::Paused | UpdateState::RollbackPaused))
}

/// Whether a task failed in a way that counts against an update: it ended in failure, its
/// supervisor had to restart it, or it is unhealthy.
fn failed(t: &Task) -> bool {
    t.status.as_ref().is_some_and(|s| {
        matches!(s.state(), TaskState::Failed | TaskState::Rejected)
            || s.restarts > 0
            || s.health() == TaskHealth::Unhealthy
    })
}

/// What an update does next, besides replacing tasks.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing changes.
    Stay,
    /// The update's status changes to this.
    Status(UpdateStatus),
    /// Too many tasks failed and the failure action is rollback: return to the previous spec
    /// (the message says why).
    Rollback(String),
}

/// The next step of the update of `service` (whose live tasks are `live`), at `now_ms`.
pub fn next_step(service: &Service, live: &[&Task], now_ms: i64) -> Step {
    let Some(status) = service.update_status.as_ref() else {
        return Step::Stay;
    };
    let rolling_back = match status.state() {
        UpdateState::Updating => false,
        UpdateState::RollbackStarted => true,
        _ => return Step::Stay,
    };
    let config = service
        .spec
        .as_ref()
        .and_then(|s| s.update)
        .unwrap_or_default();
    let current = service.spec_version;
    let new: Vec<&Task> = live
        .iter()
        .copied()
        .filter(|t| t.spec_version == current)
        .collect();
    let at = |state: UpdateState, message: String| {
        Step::Status(UpdateStatus {
            state: state as i32,
            message,
            started_at_ms: status.started_at_ms,
            completed_at_ms: now_ms,
        })
    };
    let failures: Vec<&Task> = new.iter().copied().filter(|t| failed(t)).collect();
    let allowed = f64::from(config.max_failure_ratio.max(0.0)) * live.len().max(1) as f64;
    if let Some(first) = failures.first()
        && failures.len() as f64 > allowed
    {
        let why = first
            .status
            .as_ref()
            .map(|s| {
                if s.err.is_empty() {
                    s.message.clone()
                } else {
                    s.err.clone()
                }
            })
            .unwrap_or_default();
        let cause = format!(
            "failure or early termination of task {} ({why})",
            first.name
        );
        return match (rolling_back, config.failure_action()) {
            (true, _) => at(
                UpdateState::RollbackPaused,
                format!("rollback paused due to {cause}"),
            ),
            (false, UpdateFailureAction::Pause) => {
                at(UpdateState::Paused, format!("update paused due to {cause}"))
            }
            (false, UpdateFailureAction::Rollback) => {
                Step::Rollback(format!("update rolled back due to {cause}"))
            }
            (false, UpdateFailureAction::Continue) => Step::Stay,
        };
    }
    // Done once every live task runs the current spec and is up, and the monitor period
    // passed since the last came up.
    if new.len() != live.len() || !new.iter().all(|t| is_up(t)) {
        return Step::Stay;
    }
    let monitor = match config.monitor_ms {
        0 => DEFAULT_MONITOR.as_millis() as i64,
        ms => i64::try_from(ms).unwrap_or(i64::MAX),
    };
    let last_up = new
        .iter()
        .filter_map(|t| t.status.as_ref().map(|s| s.timestamp_ms))
        .max()
        .unwrap_or(0);
    if now_ms < last_up.saturating_add(monitor) {
        return Step::Stay;
    }
    if rolling_back {
        at(UpdateState::RollbackCompleted, "rollback completed".into())
    } else {
        at(UpdateState::Completed, "update completed".into())
    }
}

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
    if paused(service) {
        return Vec::new();
    }
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
