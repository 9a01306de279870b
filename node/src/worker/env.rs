//! What the worker is given: the task runtime, the tasks' DNS servers, the gossip plane that
//! carries endpoint records, and where task status goes. Each is a trait with the real
//! implementation here and a fake in [`super::fake`] (feature `test-util`), so the worker is
//! tested in memory. The kernel is [`mesh_dataplane::Kernel`].

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mesh_proto::TaskStatusUpdate;
use tokio::sync::{broadcast, mpsc};

use crate::dns::{DnsManager, SharedTable};
use crate::membership::Membership;
use crate::runtime::{self, TaskRuntime, TaskState};
use mesh_gossip::{Gossip, Record, RecordEvent};

/// The processes of this node's tasks.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// After an agent restart: the tasks whose supervisors still run, now followed again.
    async fn adopt(&self) -> Vec<String>;
    /// Every task's state changes, from now on.
    fn watch(&self) -> broadcast::Receiver<(String, TaskState)>;
    /// Every task known, with its state.
    fn list(&self) -> Vec<(String, TaskState)>;
    fn state(&self, task_id: &str) -> Option<TaskState>;
    /// Starts a task; its state then follows through [`Runtime::watch`].
    async fn start(&self, spec: runtime::TaskSpec) -> Result<(), String>;
    /// Stops a task (within its grace period) and forgets it.
    async fn remove(&self, task_id: &str) -> Result<(), String>;
    /// The pid `mesh exec` joins, while the task runs.
    fn exec_target(&self, task_id: &str) -> Option<i32>;
}

#[async_trait]
impl Runtime for TaskRuntime {
    async fn adopt(&self) -> Vec<String> {
        TaskRuntime::adopt(self).await
    }

    fn watch(&self) -> broadcast::Receiver<(String, TaskState)> {
        TaskRuntime::watch(self)
    }

    fn list(&self) -> Vec<(String, TaskState)> {
        TaskRuntime::list(self)
    }

    fn state(&self, task_id: &str) -> Option<TaskState> {
        TaskRuntime::state(self, task_id)
    }

    async fn start(&self, spec: runtime::TaskSpec) -> Result<(), String> {
        TaskRuntime::start(self, spec)
            .await
            .map_err(|e| e.to_string())
    }

    async fn remove(&self, task_id: &str) -> Result<(), String> {
        TaskRuntime::remove(self, task_id)
            .await
            .map_err(|e| e.to_string())
    }

    fn exec_target(&self, task_id: &str) -> Option<i32> {
        TaskRuntime::exec_target(self, task_id)
    }
}

/// The DNS servers of this node's tasks, answering from one table.
#[async_trait]
pub trait Resolvers: Send + Sync + 'static {
    /// The table every server answers from.
    fn table(&self) -> SharedTable;
    /// Serves `task_id` in the namespace at `netns`, scoped to `networks` (ids).
    async fn attach(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
    ) -> Result<(), String>;
    /// Stops serving `task_id`.
    async fn detach(&self, task_id: &str);
}

#[async_trait]
impl Resolvers for DnsManager {
    fn table(&self) -> SharedTable {
        DnsManager::table(self)
    }

    async fn attach(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
    ) -> Result<(), String> {
        DnsManager::attach(self, task_id, netns, networks)
            .await
            .map_err(|e| e.to_string())
    }

    async fn detach(&self, task_id: &str) {
        DnsManager::detach(self, task_id).await
    }
}

/// The gossip plane endpoint records ride on (scope = network id, key = task id).
pub trait Records: Clone + Send + 'static {
    fn subscribe(&self) -> mpsc::UnboundedReceiver<RecordEvent>;
    fn join_scope(&self, scope: &str) -> Result<(), String>;
    fn leave_scope(&self, scope: &str) -> Result<(), String>;
    fn upsert_local(&self, scope: &str, key: &str, value: Vec<u8>) -> Result<(), String>;
    fn delete_local(&self, scope: &str, key: &str) -> Result<(), String>;
    /// Every record of a scope this node holds (on joining it).
    fn records(&self, scope: &str) -> Vec<Record>;
    /// Whether the scope's records were exchanged in full with another member since this
    /// node joined it (or it had none).
    fn scope_synced(&self, scope: &str) -> bool;
}

impl Records for Gossip {
    fn subscribe(&self) -> mpsc::UnboundedReceiver<RecordEvent> {
        Gossip::subscribe(self)
    }

    fn join_scope(&self, scope: &str) -> Result<(), String> {
        Gossip::join_scope(self, scope).map_err(|e| e.to_string())
    }

    fn leave_scope(&self, scope: &str) -> Result<(), String> {
        Gossip::leave_scope(self, scope).map_err(|e| e.to_string())
    }

    fn upsert_local(&self, scope: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        Gossip::upsert_local(self, scope, key, value).map_err(|e| e.to_string())
    }

    fn delete_local(&self, scope: &str, key: &str) -> Result<(), String> {
        Gossip::delete_local(self, scope, key).map_err(|e| e.to_string())
    }

    fn records(&self, scope: &str) -> Vec<Record> {
        Gossip::records(self, scope)
    }

    fn scope_synced(&self, scope: &str) -> bool {
        Gossip::scope_synced(self, scope)
    }
}

/// Where the gossip plane comes from: it starts only once the node has the cluster's keys.
pub trait RecordSource: Send + 'static {
    type Plane: Records;
    fn plane(&self) -> Option<Self::Plane>;
}

impl RecordSource for Membership {
    type Plane = Gossip;

    fn plane(&self) -> Option<Gossip> {
        Membership::plane(self)
    }
}

/// Where task status reports go: the leader.
#[async_trait]
pub trait StatusSink: Send + Sync + 'static {
    async fn send(&self, updates: Vec<TaskStatusUpdate>) -> Result<(), String>;
}

/// The path of a task namespace as the kernel names it.
pub fn netns_path(name: &str) -> PathBuf {
    mesh_dataplane::netns::Netns::path_of(name)
}
