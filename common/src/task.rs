//! Task-state predicates shared by the orchestrator and the agent.

use mesh_proto::{Task, TaskState};

/// The state's name as people read it (`running`), in tables and metric labels.
pub fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::New => "new",
        TaskState::Pending => "pending",
        TaskState::Assigned => "assigned",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Complete => "complete",
        TaskState::Shutdown => "shutdown",
        TaskState::Failed => "failed",
        TaskState::Rejected => "rejected",
        TaskState::Orphaned => "orphaned",
    }
}

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

/// A health check's settings with Docker's defaults for those left at 0: interval and
/// timeout 30 s, 3 retries, no start period. As (interval, timeout, retries, start period).
pub fn health_settings(
    h: &mesh_proto::HealthConfig,
) -> (
    std::time::Duration,
    std::time::Duration,
    u32,
    std::time::Duration,
) {
    use std::time::Duration;
    let or = |ms: u64, default: Duration| {
        if ms == 0 {
            default
        } else {
            Duration::from_millis(ms)
        }
    };
    (
        or(h.interval_ms, Duration::from_secs(30)),
        or(h.timeout_ms, Duration::from_secs(30)),
        if h.retries == 0 { 3 } else { h.retries },
        Duration::from_millis(h.start_period_ms),
    )
}

/// Whether a task is up for a rolling update: running and, with a health check, healthy.
pub fn is_up(task: &Task) -> bool {
    task.status.as_ref().is_some_and(|s| {
        s.state() == TaskState::Running
            && matches!(
                s.health(),
                mesh_proto::TaskHealth::None | mesh_proto::TaskHealth::Healthy
            )
    })
}

/// Longest health command, in bytes.
pub const MAX_HEALTH_CMD_BYTES: usize = 4096;
/// Most failures in a row a health check may be given before the task is unhealthy.
pub const MAX_HEALTH_RETRIES: u32 = 100;

/// Why a health check with these settings cannot run, if it cannot: an empty, overlong or
/// NUL-holding command, retries outside 1 to 100, an interval or timeout outside 100 ms to
/// 24 h, a start period over 24 h.
pub fn health_problem(
    cmd: &str,
    interval: std::time::Duration,
    timeout: std::time::Duration,
    retries: u32,
    start_period: std::time::Duration,
) -> Option<String> {
    use std::time::Duration;
    let max = Duration::from_secs(24 * 3600);
    let period = |flag: &str, d: Duration, min: Duration| {
        (d < min || d > max).then(|| {
            format!(
                "{flag}: {} ms is outside {} ms to 24h",
                d.as_millis(),
                min.as_millis()
            )
        })
    };
    if cmd.trim().is_empty() {
        Some("--health-cmd: the command is empty".into())
    } else if cmd.len() > MAX_HEALTH_CMD_BYTES {
        Some(format!(
            "--health-cmd: longer than {MAX_HEALTH_CMD_BYTES} bytes"
        ))
    } else if cmd.contains('\0') {
        Some("--health-cmd: contains NUL".into())
    } else if retries == 0 || retries > MAX_HEALTH_RETRIES {
        Some(format!(
            "--health-retries: {retries} is outside 1 to {MAX_HEALTH_RETRIES}"
        ))
    } else {
        let short = Duration::from_millis(100);
        period("--health-interval", interval, short)
            .or_else(|| period("--health-timeout", timeout, short))
            .or_else(|| period("--health-start-period", start_period, Duration::ZERO))
    }
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

    #[test]
    fn health_settings_default_as_docker_and_are_bounded() {
        use std::time::Duration;
        let h = mesh_proto::HealthConfig {
            cmd: "true".into(),
            ..Default::default()
        };
        let (interval, timeout, retries, start) = health_settings(&h);
        assert_eq!(
            (interval, timeout, retries, start),
            (
                Duration::from_secs(30),
                Duration::from_secs(30),
                3,
                Duration::ZERO
            )
        );
        assert_eq!(
            health_problem("true", interval, timeout, retries, start),
            None
        );
        let ms = Duration::from_millis;
        for (cmd, interval, timeout, retries, start, flag) in [
            (" ", ms(1000), ms(1000), 3, ms(0), "--health-cmd"),
            ("a\0b", ms(1000), ms(1000), 3, ms(0), "--health-cmd"),
            ("true", ms(10), ms(1000), 3, ms(0), "--health-interval"),
            (
                "true",
                ms(1000),
                ms(90_000_000),
                3,
                ms(0),
                "--health-timeout",
            ),
            ("true", ms(1000), ms(1000), 101, ms(0), "--health-retries"),
            (
                "true",
                ms(1000),
                ms(1000),
                3,
                ms(90_000_000),
                "--health-start-period",
            ),
        ] {
            let why = health_problem(cmd, interval, timeout, retries, start).expect(flag);
            assert!(why.starts_with(flag), "{why}");
        }
        let long = "x".repeat(MAX_HEALTH_CMD_BYTES + 1);
        assert!(health_problem(&long, ms(1000), ms(1000), 3, ms(0)).is_some());
    }
}
