//! Waiting for a service to converge after create/scale/update, with a
//! line per task while it does (like Swarm's progress display). Not on a
//! terminal, only the outcome is printed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    GetServiceRequest, ListTasksRequest, TaskHealth, TaskState, TaskView, UpdateState,
};
use tonic::transport::Channel;

/// How long a service may take to converge before the CLI gives up.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

pub use mesh_common::task::state_name;

fn state_of(t: &TaskView) -> TaskState {
    t.task
        .as_ref()
        .and_then(|t| t.status.as_ref())
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

/// Waits until every wanted task of `service` runs the current spec (and is healthy, if it
/// has a health check) and no unwanted one is left running; fails at the first task that failed for good.
/// `update` is the spec version a rolling update this command started gave the service, and
/// whether that update is a rollback asked for: the wait then lasts until the update
/// completes (its monitor period passed), ends with an error when it pauses, and reports a
/// rollback its failure action started (waiting for the rollback, then failing).
pub async fn wait_converged(
    control: &mut ControlClient<Channel>,
    service: &str,
    update: Option<(u64, bool)>,
) -> anyhow::Result<()> {
    let mut rolled_back: Option<String> = None;
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:>12} {spinner} {msg}")
        .expect("static template is valid");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let overall = multi.add(
        ProgressBar::new_spinner()
            .with_style(style.clone())
            .with_prefix("overall"),
    );
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    let mut last: Option<String> = None;
    loop {
        let view = control
            .get_service(GetServiceRequest {
                service: service.to_string(),
            })
            .await?
            .into_inner();
        let svc = view.service.clone().unwrap_or_default();
        let name = svc
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let mut update_done = true;
        if let (Some((version, asked_rollback)), Some(status)) =
            (update, svc.update_status.as_ref())
        {
            update_done = matches!(
                status.state(),
                UpdateState::Completed | UpdateState::RollbackCompleted
            );
            let message = status.message.clone();
            match status.state() {
                UpdateState::Paused | UpdateState::RollbackPaused
                    if svc.spec_version >= version =>
                {
                    multi.clear().ok();
                    bail!(
                        "service {name}: {message} (see `mesh service ps {name}`; `mesh service rollback {name}` returns to the previous spec)"
                    );
                }
                UpdateState::RollbackStarted | UpdateState::RollbackCompleted
                    if !asked_rollback && svc.spec_version > version && rolled_back.is_none() =>
                {
                    eprintln!("rollback: {message}");
                    rolled_back = Some(message);
                }
                _ => {}
            }
        }
        let tasks = control
            .list_tasks(ListTasksRequest {
                service: svc.id.clone(),
                node: String::new(),
            })
            .await?
            .into_inner()
            .tasks;
        let wanted: Vec<&TaskView> = tasks
            .iter()
            .filter(|t| {
                t.task
                    .as_ref()
                    .is_some_and(|t| t.desired_state() == TaskState::Running)
            })
            .collect();
        let leaving = tasks
            .iter()
            .filter(|t| {
                t.task
                    .as_ref()
                    .is_some_and(|t| t.desired_state() != TaskState::Running)
            })
            .filter(|t| {
                !matches!(
                    state_of(t),
                    TaskState::Shutdown
                        | TaskState::Complete
                        | TaskState::Failed
                        | TaskState::Rejected
                        | TaskState::Orphaned
                )
            })
            .count();
        for t in &wanted {
            let task = t.task.as_ref().expect("filtered on task presence");
            let bar = bars.entry(task.id.clone()).or_insert_with(|| {
                multi.add(
                    ProgressBar::new_spinner()
                        .with_style(style.clone())
                        .with_prefix(task.name.clone()),
                )
            });
            let status = task.status.clone().unwrap_or_default();
            let node = if t.node_hostname.is_empty() {
                String::new()
            } else {
                format!(" on {}", t.node_hostname)
            };
            let why = if status.err.is_empty() || status.state() == TaskState::Running {
                String::new()
            } else {
                format!(": {}", status.err)
            };
            let health = match status.health() {
                TaskHealth::None => "",
                TaskHealth::Starting => " (health: starting)",
                TaskHealth::Healthy => " (healthy)",
                TaskHealth::Unhealthy => " (unhealthy)",
            };
            bar.set_message(format!(
                "{}{health}{node} {}{why}",
                state_name(status.state()),
                status.message
            ));
            bar.tick();
            if matches!(status.state(), TaskState::Failed | TaskState::Rejected) {
                multi.clear().ok();
                let why = if status.err.is_empty() {
                    status.message
                } else {
                    status.err
                };
                bail!("service {name}: task {} failed{node}: {why}", task.name);
            }
        }
        let current = wanted
            .iter()
            .filter(|t| {
                t.task
                    .as_ref()
                    .is_some_and(|t| t.spec_version == svc.spec_version)
            })
            // Up: running and, with a health check, healthy.
            .filter(|t| t.task.as_ref().is_some_and(mesh_common::task::is_up))
            .count() as u64;
        let summary = if view.problems.is_empty() && !update_done {
            format!(
                "{current}/{} tasks running; verifying the update (monitor period)",
                view.desired
            )
        } else if view.problems.is_empty() {
            format!("{current}/{} tasks running", view.desired)
        } else {
            format!(
                "{current}/{} tasks running; waiting: {}",
                view.desired,
                view.problems.join("; ")
            )
        };
        overall.set_message(summary.clone());
        overall.tick();
        // Without a terminal the bars are not drawn: say what changes, a line at a time.
        if multi.is_hidden() && last.as_deref() != Some(summary.as_str()) {
            eprintln!("{name}: {summary}");
            last = Some(summary);
        }
        if current == view.desired
            && wanted.len() as u64 == view.desired
            && leaving == 0
            && update_done
        {
            multi.clear().ok();
            if let Some(why) = rolled_back {
                bail!("service {name}: {why}; it runs its previous spec again");
            }
            println!(
                "{name}: converged, {current}/{} tasks running",
                view.desired
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            multi.clear().ok();
            let why = if view.problems.is_empty() {
                String::new()
            } else {
                format!("; {}", view.problems.join("; "))
            };
            bail!(
                "service {name} did not converge within {}s: {current}/{} tasks running{why} (see `mesh service ps {name}`)",
                CONVERGE_TIMEOUT.as_secs(),
                view.desired
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
