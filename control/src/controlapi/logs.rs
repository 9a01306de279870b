//! `mesh service logs`: the manager asks each node that runs a task of the service for the
//! task's output (`Logs.TaskLogs` on the node's control port) and relays what comes back,
//! labelled with the task and node. When following, tasks that are scheduled later are
//! picked up as the store changes.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use mesh_proto::logs_client::LogsClient;
use mesh_proto::{
    Node, NodeStatus, ServiceLogsMessage, ServiceLogsRequest, Task, TaskLogsRequest, TaskState,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use mesh_common::auth::Caller;

use super::context::ApiContext;
use super::resolve::resolve_service;
use crate::error::{ControlError, Result};
use crate::objects::control_addr;
use crate::store::StoreState;

/// The stream a `ServiceLogs` call answers with.
pub type ServiceLogsStream =
    Pin<Box<dyn Stream<Item = std::result::Result<ServiceLogsMessage, Status>> + Send>>;

/// How long a node may take to answer for the output already written (without follow).
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(5);

/// What a logs request is about.
#[derive(Clone, Debug)]
enum Target {
    Service(String),
    Task(String),
}

impl Target {
    /// Finds the service or task `reference` names: a service first (as `service ps`
    /// does), then a task by id, by name (the newest task of that name), or id prefix.
    fn resolve(s: &StoreState, reference: &str) -> Result<Target> {
        match resolve_service(s, reference) {
            Ok(svc) => return Ok(Target::Service(svc.id.clone())),
            Err(ControlError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if s.tasks.contains_key(reference) {
            return Ok(Target::Task(reference.to_string()));
        }
        if let Some(t) = s
            .tasks
            .values()
            .filter(|t| t.name == reference)
            .max_by_key(|t| t.created_at_ms)
        {
            return Ok(Target::Task(t.id.clone()));
        }
        let prefixed: Vec<&String> = s
            .tasks
            .keys()
            .filter(|id| id.starts_with(reference))
            .collect();
        match prefixed.as_slice() {
            [id] => Ok(Target::Task((*id).clone())),
            [] => Err(ControlError::NotFound(format!(
                "no service or task {reference:?}"
            ))),
            _ => Err(ControlError::InvalidArgument(format!(
                "task id prefix {reference:?} is ambiguous; use more of the id"
            ))),
        }
    }

    /// The tasks this target covers that have output on their node (they were started
    /// there: a task not yet started, or rejected, has none), with their nodes.
    fn tasks(&self, s: &StoreState) -> Vec<(Task, Option<Node>)> {
        s.tasks
            .values()
            .filter(|t| match self {
                Target::Service(id) => t.service_id == *id,
                Target::Task(id) => t.id == *id,
            })
            .filter(|t| !t.node_id.is_empty() && was_started(t))
            .map(|t| (t.clone(), s.nodes.get(&t.node_id).cloned()))
            .collect()
    }
}

/// `mesh service logs`, on the leader.
pub struct LogsApi {
    ctx: Arc<ApiContext>,
}

impl LogsApi {
    pub fn new(ctx: Arc<ApiContext>) -> LogsApi {
        LogsApi { ctx }
    }

    pub fn service_logs(
        &self,
        _caller: &Caller,
        req: ServiceLogsRequest,
    ) -> Result<ServiceLogsStream> {
        let target = self.ctx.store.read(|s| Target::resolve(s, &req.target))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Relay(self.ctx.clone()).relay_logs(target, req, tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// One `service logs` call being relayed.
#[derive(Clone)]
struct Relay(Arc<ApiContext>);

impl Relay {
    /// Starts one reader per task of `target` (and, when following, per task scheduled
    /// later) and ends when they all have (or, following, when the caller goes away).
    async fn relay_logs(
        self,
        target: Target,
        mut req: ServiceLogsRequest,
        tx: mpsc::Sender<std::result::Result<ServiceLogsMessage, Status>>,
    ) {
        let mut changes = self.0.store.subscribe();
        let mut started = HashSet::new();
        let mut readers = JoinSet::new();
        loop {
            // Readers that ended (their task was removed) are reaped as the follow goes on.
            while readers.try_join_next().is_some() {}
            for (task, node) in self.0.store.read(|s| target.tasks(s)) {
                if started.insert(task.id.clone()) {
                    readers.spawn(self.clone().task_logs(task, node, req.clone(), tx.clone()));
                }
            }
            if !req.follow {
                break;
            }
            // `--tail` limits the past of the tasks there were; a task that starts while
            // following is shown from its first line.
            req.tail = None;
            tokio::select! {
                () = tx.closed() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
        while readers.join_next().await.is_some() {}
    }

    /// Relays the output of one task; a failure is sent as the task's `error`.
    async fn task_logs(
        self,
        task: Task,
        node: Option<Node>,
        req: ServiceLogsRequest,
        tx: mpsc::Sender<std::result::Result<ServiceLogsMessage, Status>>,
    ) {
        let label = ServiceLogsMessage {
            task_id: task.id.clone(),
            task_name: task.name.clone(),
            node_id: task.node_id.clone(),
            node_hostname: node
                .as_ref()
                .map(|n| n.hostname.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        let relayed = async {
            let node = node.ok_or_else(|| "its node is no longer in the cluster".to_string())?;
            if self.0.liveness.status(&node.id) == NodeStatus::Down {
                return Err(format!("node {} is down", node.hostname));
            }
            let addr = control_addr(&node);
            let channel = self
                .0
                .channels
                .node_channel(&addr, node.role())
                .map_err(|e| format!("cannot reach node {} at {addr}: {e}", node.hostname))?;
            let mut call = tonic::Request::new(TaskLogsRequest {
                task_id: task.id.clone(),
                follow: req.follow,
                tail: req.tail,
            });
            if !req.follow {
                call.set_timeout(BACKLOG_TIMEOUT);
            }
            let mut stream = LogsClient::new(channel)
                .task_logs(call)
                .await
                .map_err(|s| node_failed(&node, &addr, &s))?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(batch)) => {
                        let msg = ServiceLogsMessage {
                            records: batch.records,
                            ..label.clone()
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(node_failed(&node, &addr, &s)),
                }
            }
        }
        .await;
        if let Err(error) = relayed {
            let _ = tx.send(Ok(ServiceLogsMessage { error, ..label })).await;
        }
    }
}

/// Whether the node reported the task started (so its task dir exists, or existed).
fn was_started(t: &Task) -> bool {
    let state = t.status.as_ref().map(|s| s.state()).unwrap_or_default();
    matches!(
        state,
        TaskState::Starting
            | TaskState::Running
            | TaskState::Complete
            | TaskState::Shutdown
            | TaskState::Failed
    )
}

fn node_failed(node: &Node, addr: &str, status: &Status) -> String {
    if status.code() == tonic::Code::NotFound {
        return format!(
            "node {} has no output of it: {}",
            node.hostname,
            status.message()
        );
    }
    format!(
        "node {} at {addr} did not answer: {}",
        node.hostname,
        status.message()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::{Service, ServiceSpec, TaskStatus};

    fn state() -> StoreState {
        let mut s = StoreState::default();
        let svc = |id: &str, name: &str| Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.services.insert("s1".into(), svc("s1", "api"));
        s.services.insert("s2".into(), svc("s2", "web"));
        let task = |id: &str, svc: &str, name: &str, node: &str, at: i64| Task {
            id: id.into(),
            service_id: svc.into(),
            name: name.into(),
            node_id: node.into(),
            created_at_ms: at,
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        for t in [
            task("aaa1", "s1", "api.1", "n1", 1),
            task("aaa2", "s1", "api.1", "n2", 2),
            task("bbb1", "s1", "api.2", "", 3),
            task("ccc1", "s2", "web.1", "n1", 4),
            task("aaa3", "s1", "api.3", "n1", 5),
        ] {
            s.tasks.insert(t.id.clone(), t);
        }
        // Assigned but not started yet: no output to read.
        s.tasks.get_mut("aaa3").unwrap().status = None;
        s
    }

    fn ids(s: &StoreState, t: &Target) -> Vec<String> {
        t.tasks(s).into_iter().map(|(t, _)| t.id).collect()
    }

    #[test]
    fn logs_target_is_a_service_or_one_task() {
        let s = state();
        let api = Target::resolve(&s, "api").unwrap();
        // Unscheduled tasks have no output yet.
        assert_eq!(ids(&s, &api), ["aaa1", "aaa2"]);
        // A task name names the newest task of that slot.
        assert_eq!(ids(&s, &Target::resolve(&s, "api.1").unwrap()), ["aaa2"]);
        assert_eq!(ids(&s, &Target::resolve(&s, "aaa1").unwrap()), ["aaa1"]);
        assert_eq!(ids(&s, &Target::resolve(&s, "cc").unwrap()), ["ccc1"]);
        let err = Target::resolve(&s, "aaa").unwrap_err().to_string();
        assert!(err.contains("ambiguous"), "{err}");
        let err = Target::resolve(&s, "nope").unwrap_err();
        assert!(matches!(err, ControlError::NotFound(_)), "{err}");
        assert!(Target::resolve(&s, "").is_err());
    }
}
