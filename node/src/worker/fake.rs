//! In-memory stand-ins for what the worker is given (feature `test-util`): a task runtime
//! whose tasks run as soon as they start, DNS servers that only record where they would
//! serve, a gossip plane the test feeds, and a status sink that keeps what it was sent. With
//! `mesh_dataplane::kernel::fake::FakeKernel` a worker runs entirely in memory, without root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mesh_proto::TaskStatusUpdate;
use tokio::sync::{broadcast, mpsc};

use super::env::{RecordSource, Records, Resolvers, Runtime, StatusSink};
use crate::dns::SharedTable;
use crate::runtime::{TaskPhase, TaskSpec, TaskState};
use mesh_gossip::{Record, RecordEvent, RecordEventKind, Version};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A hook called with a task's id just before the fake runtime stops it.
pub type StopHook = Box<dyn Fn(&str) + Send + Sync>;

/// Tasks that run the moment they start. Share one between a worker and the next one to
/// model an agent restart (the tasks keep running; the new worker adopts them).
#[derive(Default)]
pub struct FakeRuntime {
    tasks: Mutex<BTreeMap<String, (TaskSpec, TaskState)>>,
    events: Mutex<Option<broadcast::Sender<(String, TaskState)>>>,
    stopped: Mutex<Vec<String>>,
    started: Mutex<Vec<String>>,
    on_stop: Mutex<Option<StopHook>>,
}

impl FakeRuntime {
    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    fn sender(&self) -> broadcast::Sender<(String, TaskState)> {
        lock(&self.events)
            .get_or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    fn running() -> TaskState {
        TaskState {
            state: TaskPhase::Running,
            pid: Some(1),
            pid_start_time: None,
            exit_code: None,
            signal: None,
            restarts: 0,
            started_at_ms: None,
            finished_at_ms: None,
            message: "running".into(),
            done: false,
            stopped: false,
            health: None,
        }
    }

    /// Sets a task's state as its supervisor would (an exit, a crash), and tells the worker.
    pub fn set_state(&self, task_id: &str, state: TaskState) {
        if let Some(t) = lock(&self.tasks).get_mut(task_id) {
            t.1 = state.clone();
        }
        let _ = self.sender().send((task_id.to_string(), state));
    }

    /// The launch spec of a running task.
    pub fn spec(&self, task_id: &str) -> Option<TaskSpec> {
        lock(&self.tasks).get(task_id).map(|(s, _)| s.clone())
    }

    /// Ids of the tasks it runs.
    pub fn running_ids(&self) -> BTreeSet<String> {
        lock(&self.tasks).keys().cloned().collect()
    }

    /// Ids of the tasks started so far (again after a restart), in order.
    pub fn started(&self) -> Vec<String> {
        lock(&self.started).clone()
    }

    /// Ids of the tasks stopped so far, in order.
    pub fn stopped(&self) -> Vec<String> {
        lock(&self.stopped).clone()
    }

    /// Calls `hook` with each task's id just before the task is stopped.
    pub fn on_stop(&self, hook: StopHook) {
        *lock(&self.on_stop) = Some(hook);
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn adopt(&self) -> Vec<String> {
        self.running_ids().into_iter().collect()
    }

    fn watch(&self) -> broadcast::Receiver<(String, TaskState)> {
        self.sender().subscribe()
    }

    fn list(&self) -> Vec<(String, TaskState)> {
        lock(&self.tasks)
            .iter()
            .map(|(id, (_, st))| (id.clone(), st.clone()))
            .collect()
    }

    fn state(&self, task_id: &str) -> Option<TaskState> {
        lock(&self.tasks).get(task_id).map(|(_, st)| st.clone())
    }

    async fn start(&self, spec: TaskSpec) -> Result<(), String> {
        let id = spec.id.clone();
        lock(&self.tasks).insert(id.clone(), (spec, Self::running()));
        lock(&self.started).push(id.clone());
        let _ = self.sender().send((id, Self::running()));
        Ok(())
    }

    async fn remove(&self, task_id: &str) -> Result<(), String> {
        if let Some(hook) = lock(&self.on_stop).as_ref() {
            hook(task_id);
        }
        lock(&self.tasks).remove(task_id);
        lock(&self.stopped).push(task_id.to_string());
        Ok(())
    }

    fn exec_target(&self, task_id: &str) -> Option<i32> {
        self.state(task_id).and_then(|st| st.pid)
    }
}

/// DNS servers that record where they would serve; the table is the real one.
#[derive(Default)]
pub struct FakeResolvers {
    table: SharedTable,
    attached: Mutex<BTreeMap<String, Vec<String>>>,
}

impl FakeResolvers {
    pub fn new() -> Arc<FakeResolvers> {
        Arc::new(FakeResolvers::default())
    }

    /// Tasks served, with the networks each is scoped to.
    pub fn attached(&self) -> BTreeMap<String, Vec<String>> {
        lock(&self.attached).clone()
    }
}

#[async_trait]
impl Resolvers for FakeResolvers {
    fn table(&self) -> SharedTable {
        self.table.clone()
    }

    async fn attach(
        &self,
        task_id: &str,
        _netns: &Path,
        networks: Vec<String>,
    ) -> Result<(), String> {
        lock(&self.attached).insert(task_id.to_string(), networks);
        Ok(())
    }

    async fn detach(&self, task_id: &str) {
        lock(&self.attached).remove(task_id);
    }
}

#[derive(Default)]
struct Bus {
    joined: BTreeSet<String>,
    /// What this node published: (scope, key) -> value.
    local: BTreeMap<(String, String), Vec<u8>>,
    /// What other nodes published: (scope, owner, key) -> value.
    remote: BTreeMap<(String, String, String), Vec<u8>>,
    subscribers: Vec<mpsc::UnboundedSender<RecordEvent>>,
    /// Scopes whose exchange the test holds back (see [`FakeRecords::hold_sync`]).
    unsynced: BTreeSet<String>,
}

/// A gossip plane the test drives: it sees what the worker publishes and hands it records of
/// other nodes.
#[derive(Clone, Default)]
pub struct FakeRecords {
    bus: Arc<Mutex<Bus>>,
}

impl FakeRecords {
    fn emit(bus: &mut Bus, ev: RecordEvent) {
        bus.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
    }

    /// A record of node `owner` appears (or changes) in `scope`.
    pub fn remote_upsert(&self, scope: &str, owner: &str, key: &str, value: Vec<u8>) {
        let mut bus = lock(&self.bus);
        bus.remote.insert(
            (scope.to_string(), owner.to_string(), key.to_string()),
            value.clone(),
        );
        if bus.joined.contains(scope) {
            Self::emit(
                &mut bus,
                RecordEvent {
                    scope: scope.to_string(),
                    key: key.to_string(),
                    owner: owner.to_string(),
                    kind: RecordEventKind::Upsert(value),
                },
            );
        }
    }

    /// A record of node `owner` is withdrawn.
    pub fn remote_remove(&self, scope: &str, owner: &str, key: &str) {
        let mut bus = lock(&self.bus);
        let had = bus
            .remote
            .remove(&(scope.to_string(), owner.to_string(), key.to_string()))
            .is_some();
        if had && bus.joined.contains(scope) {
            Self::emit(
                &mut bus,
                RecordEvent {
                    scope: scope.to_string(),
                    key: key.to_string(),
                    owner: owner.to_string(),
                    kind: RecordEventKind::Removed,
                },
            );
        }
    }

    /// Holds back the full exchange of `scope` (`true`) or lets it complete (`false`).
    pub fn hold_sync(&self, scope: &str, held: bool) {
        let mut bus = lock(&self.bus);
        if held {
            bus.unsynced.insert(scope.to_string());
        } else {
            bus.unsynced.remove(scope);
        }
    }

    /// What this node publishes now: (scope, key) -> value.
    pub fn published(&self) -> BTreeMap<(String, String), Vec<u8>> {
        lock(&self.bus).local.clone()
    }

    /// Scopes joined.
    pub fn joined(&self) -> BTreeSet<String> {
        lock(&self.bus).joined.clone()
    }
}

impl Records for FakeRecords {
    fn subscribe(&self) -> mpsc::UnboundedReceiver<RecordEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.bus).subscribers.push(tx);
        rx
    }

    fn join_scope(&self, scope: &str) -> Result<(), String> {
        lock(&self.bus).joined.insert(scope.to_string());
        Ok(())
    }

    fn leave_scope(&self, scope: &str) -> Result<(), String> {
        let mut bus = lock(&self.bus);
        bus.joined.remove(scope);
        bus.local.retain(|(s, _), _| s != scope);
        Ok(())
    }

    fn upsert_local(&self, scope: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        let mut bus = lock(&self.bus);
        if !bus.joined.contains(scope) {
            return Err(format!("scope {scope} is not joined"));
        }
        bus.local
            .insert((scope.to_string(), key.to_string()), value);
        Ok(())
    }

    fn delete_local(&self, scope: &str, key: &str) -> Result<(), String> {
        lock(&self.bus)
            .local
            .remove(&(scope.to_string(), key.to_string()));
        Ok(())
    }

    fn scope_synced(&self, scope: &str) -> bool {
        !lock(&self.bus).unsynced.contains(scope)
    }

    fn records(&self, scope: &str) -> Vec<Record> {
        lock(&self.bus)
            .remote
            .iter()
            .filter(|((s, _, _), _)| s == scope)
            .map(|((scope, owner, key), value)| Record {
                scope: scope.clone(),
                key: key.clone(),
                owner: owner.clone(),
                version: Version {
                    incarnation: 1,
                    counter: 1,
                },
                value: value.clone(),
                deleted: false,
            })
            .collect()
    }
}

impl RecordSource for FakeRecords {
    type Plane = FakeRecords;

    fn plane(&self) -> Option<FakeRecords> {
        Some(self.clone())
    }
}

/// A status sink that keeps every report, in order.
#[derive(Default)]
pub struct CollectingSink {
    sent: Mutex<Vec<TaskStatusUpdate>>,
}

impl CollectingSink {
    pub fn new() -> Arc<CollectingSink> {
        Arc::new(CollectingSink::default())
    }

    /// Every report sent so far.
    pub fn sent(&self) -> Vec<TaskStatusUpdate> {
        lock(&self.sent).clone()
    }
}

#[async_trait]
impl StatusSink for CollectingSink {
    async fn send(&self, updates: Vec<TaskStatusUpdate>) -> Result<(), String> {
        lock(&self.sent).extend(updates);
        Ok(())
    }
}

/// One host's fakes: its kernel and task processes outlive a restart of its agent (as a real
/// host's do); its DNS servers belong to the agent and are new at each start.
#[derive(Clone)]
pub struct FakeHost {
    pub kernel: mesh_dataplane::kernel::fake::FakeKernel,
    pub runtime: Arc<FakeRuntime>,
    pub dns: Arc<FakeResolvers>,
}

/// Starts workers on fakes (for daemons run in one process), real gossip and real reports:
/// one [`FakeHost`] per node id, kept across agent restarts.
#[derive(Default)]
pub struct FakeWorkers {
    hosts: Mutex<BTreeMap<String, FakeHost>>,
}

impl FakeWorkers {
    pub fn new() -> Arc<FakeWorkers> {
        Arc::new(FakeWorkers::default())
    }

    /// The fakes of node `node_id`, once its worker started.
    pub fn host(&self, node_id: &str) -> Option<FakeHost> {
        lock(&self.hosts).get(node_id).cloned()
    }
}

impl super::WorkerEnv for FakeWorkers {
    fn start(
        &self,
        config: super::WorkerConfig,
        membership: crate::membership::Membership,
        reporter: super::Reporter,
    ) -> anyhow::Result<super::WorkerHandle> {
        use mesh_dataplane::kernel::fake::FakeKernel;
        use mesh_dataplane::link::Ipv4Cidr;
        let host = {
            let mut hosts = lock(&self.hosts);
            let host = match hosts.get(&config.node_id) {
                Some(h) => FakeHost {
                    dns: FakeResolvers::new(),
                    ..h.clone()
                },
                None => FakeHost {
                    kernel: FakeKernel::new()
                        .with_underlay(Ipv4Cidr::new(config.underlay_ip, 8)?, 1500)?,
                    runtime: FakeRuntime::new(),
                    dns: FakeResolvers::new(),
                },
            };
            hosts.insert(config.node_id.clone(), host.clone());
            host
        };
        super::spawn(
            config,
            super::Parts {
                kernel: host.kernel,
                runtime: host.runtime,
                dns: host.dns,
                records: membership,
                sink: Arc::new(reporter),
            },
        )
    }
}
