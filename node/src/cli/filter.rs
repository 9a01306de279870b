//! `mesh service ps -f KEY=VALUE`, as Docker's: values of one key are alternatives, keys
//! must all match.

use std::collections::BTreeMap;

use anyhow::bail;
use mesh_proto::{TaskState, TaskView};

/// The keys `-f` takes.
const KEYS: &[&str] = &["desired-state", "id", "name", "node"];

#[derive(Debug, Default)]
pub struct TaskFilter {
    by_key: BTreeMap<String, Vec<String>>,
}

impl TaskFilter {
    pub fn parse(items: &[String]) -> anyhow::Result<TaskFilter> {
        let mut f = TaskFilter::default();
        for item in items {
            let Some((key, value)) = item.split_once('=') else {
                bail!("--filter: {item:?} is not KEY=VALUE");
            };
            if !KEYS.contains(&key) {
                bail!("--filter: unknown key {key:?} (known: {})", KEYS.join(", "));
            }
            if key == "desired-state" && !matches!(value, "running" | "shutdown" | "accepted") {
                bail!("--filter: desired-state={value:?}: not running, shutdown or accepted");
            }
            f.by_key
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
        Ok(f)
    }

    pub fn matches(&self, t: &TaskView) -> bool {
        let task = t.task.clone().unwrap_or_default();
        self.by_key.iter().all(|(key, values)| {
            values.iter().any(|v| match key.as_str() {
                "desired-state" => desired_state_is(task.desired_state(), v),
                "id" => task.id.starts_with(v.as_str()),
                "name" => task.name.starts_with(v.as_str()),
                "node" => {
                    t.node_hostname == *v || (!v.is_empty() && task.node_id.starts_with(v.as_str()))
                }
                _ => false,
            })
        })
    }
}

/// Docker's three desired states: `running`; `shutdown`, any end state a task is told to
/// reach; `accepted`, a task not yet told to run.
fn desired_state_is(s: TaskState, value: &str) -> bool {
    match value {
        "running" => s == TaskState::Running,
        "shutdown" => (s as i32) > (TaskState::Running as i32),
        "accepted" => (s as i32) < (TaskState::Running as i32),
        _ => false,
    }
}
