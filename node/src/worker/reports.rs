//! Task status reports to the leader: queued per task, sent in one call, only when they say
//! something new (a report the leader already has is not sent again).

use std::collections::BTreeMap;

use mesh_common::time::now_ms;
use mesh_proto::{TaskHealth, TaskState, TaskStatus, TaskStatusUpdate};
use tracing::debug;

use super::env::StatusSink;
use crate::runtime::{self, HealthStatus, TaskPhase};

/// What a supervisor appends to the last run's outcome while it waits to restart.
const RESTARTING_IN: &str = "; restarting in";

/// A status of `state` now.
pub fn status(state: TaskState, message: impl Into<String>) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        message: message.into(),
        timestamp_ms: now_ms(),
        ..Default::default()
    }
}

/// The status the leader should see for a runtime state.
pub fn status_of(st: &runtime::TaskState) -> TaskStatus {
    let mut s = match (st.state, st.done) {
        (TaskPhase::Starting, _) => status(TaskState::Starting, "starting"),
        (TaskPhase::Running, _) => status(TaskState::Running, "running"),
        (TaskPhase::Exited, true) if st.message.starts_with("stopped") => {
            status(TaskState::Shutdown, st.message.clone())
        }
        (TaskPhase::Exited, true) => status(TaskState::Complete, st.message.clone()),
        (TaskPhase::Failed, true) => {
            let mut s = status(TaskState::Failed, "failed");
            s.err = st.message.clone();
            s
        }
        (_, false) => {
            let mut s = status(TaskState::Starting, format!("restarting ({})", st.message));
            // While it waits to restart, why the last run ended is the task's error.
            if let Some((last, _)) = st.message.split_once(RESTARTING_IN)
                && st.state == TaskPhase::Failed
            {
                s.err = last.to_string();
            }
            s
        }
    };
    if st.state == TaskPhase::Running {
        s.set_health(match st.health.as_ref().map(|h| h.status) {
            None => TaskHealth::None,
            Some(HealthStatus::Starting) => TaskHealth::Starting,
            Some(HealthStatus::Healthy) => TaskHealth::Healthy,
            Some(HealthStatus::Unhealthy) => TaskHealth::Unhealthy,
        });
        if let Some(h) = st.health.as_ref().filter(|h| !h.last_failure.is_empty()) {
            s.err = format!("health check: {}", h.last_failure);
        }
    }
    s.exit_code = st.exit_code.unwrap_or(0);
    s.restarts = st.restarts;
    s
}

/// The same report, timestamps aside.
fn same_status(a: &TaskStatus, b: &TaskStatus) -> bool {
    a.state == b.state
        && a.message == b.message
        && a.err == b.err
        && a.exit_code == b.exit_code
        && a.restarts == b.restarts
        && a.health == b.health
}

/// Reports waiting to be sent, and the last one sent of each task.
#[derive(Default)]
pub struct Reports {
    pending: BTreeMap<String, TaskStatus>,
    reported: BTreeMap<String, TaskStatus>,
}

impl Reports {
    /// Queues `s` for `task_id` unless it is what was last queued or sent.
    pub fn queue(&mut self, task_id: &str, s: TaskStatus) {
        if self
            .pending
            .get(task_id)
            .or(self.reported.get(task_id))
            .is_some_and(|cur| same_status(cur, &s))
        {
            return;
        }
        self.pending.insert(task_id.to_string(), s);
    }

    /// Forgets tasks the leader no longer assigns.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.pending.retain(|id, _| keep(id));
        self.reported.retain(|id, _| keep(id));
    }

    /// Sends what is queued; on failure it stays queued for the next call.
    pub async fn flush(&mut self, sink: &dyn StatusSink) {
        if self.pending.is_empty() {
            return;
        }
        let updates: Vec<TaskStatusUpdate> = self
            .pending
            .iter()
            .map(|(id, s)| TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(s.clone()),
            })
            .collect();
        match sink.send(updates).await {
            Ok(()) => {
                let sent = std::mem::take(&mut self.pending);
                self.reported.extend(sent);
            }
            Err(e) => {
                debug!(error = %e, pending = self.pending.len(), "task status not reported yet")
            }
        }
    }

    /// The last status queued or sent for `task_id`.
    pub fn last(&self, task_id: &str) -> Option<&TaskStatus> {
        self.pending.get(task_id).or(self.reported.get(task_id))
    }
}
