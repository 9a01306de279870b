//! The task runtime: runs each task as a plain process in its own network namespace and a
//! private mount namespace, under a per-task supervisor process (the *shim*) that survives
//! the agent, so the agent can be killed and restarted without disturbing running tasks.
//!
//! # Layout
//! - [`TaskRuntime`] (this file): the agent's side. Starts shims, stops them, lists and
//!   watches task states, and re-adopts running shims after an agent restart.
//! - [`shim`]: the `mesh task-shim` process: launcher and supervisor, restart policy, output
//!   capture ([`shim::output`]).
//! - [`spec`]: [`TaskSpec`], the launch spec written to `spec.json`.
//! - [`state`]: [`TaskState`] in `state.json`, and [`TaskDir`], the files of a task dir.
//! - [`exec`]: `mesh exec`: run a command in a task's namespaces.
//! - [`logs`]: reading a task's output back (backlog, tail, follow), for `mesh service logs`.
//! - [`proc`]: process identity (pid + start time) and pidfds, so pid reuse fools nothing.
//! - [`error`]: the error type, [`RuntimeError`], naming the task, path or pid.
//!
//! # A task dir (`<root>/<task id>/`)
//! | file | written by | what |
//! |---|---|---|
//! | `spec.json` | agent, before the shim starts | [`TaskSpec`] |
//! | `state.json` | shim, atomically on every change | [`TaskState`] |
//! | `shim.pid` | shim | `<pid> <start time>\n` of the supervisor |
//! | `shim.lock` | shim | `flock`ed by the live supervisor: one per task |
//! | `shim.log` | shim | the supervisor's own stderr |
//! | `output.log`, `output.log.1` | shim | the task's stdout/stderr ([`shim::output`]) |
//! | `resolv.conf`, `hosts` | shim | bind-mounted over `/etc/...` in the task's mount namespace |
//!
//! # Liveness and adoption
//! A shim is alive when `shim.pid` names a process whose start time matches (so a recycled
//! pid does not count), that is not a zombie, and whose command line is `... task-shim
//! --supervise ...`. A task whose shim is dead and whose last state is not final (`done`) is
//! reported `failed` with the message `supervisor died` (its process died with the shim: the
//! shim gives it a parent-death signal). [`TaskRuntime::adopt`] after an agent restart finds
//! the live shims; nothing has to be re-attached, since every fact is in the task dir.
//!
//! # Watching
//! [`TaskRuntime::watch`] polls the task dirs every `poll_interval` (default 100 ms) and
//! broadcasts each task whose observed state changed. Polling (rather than inotify) covers
//! both kinds of change in one loop: a shim writing `state.json`, and a shim dying without
//! writing anything, which no file event reports. A poll costs a `read` of `state.json` and
//! `shim.pid` and one of `/proc/PID/stat` per task. It is level-triggered: the latest
//! state per tick, so a run that starts and ends within one interval may be seen only by
//! its effect (`restarts` grew). Call `watch` before `list` to not miss a change between.

pub mod error;
pub mod exec;
pub mod logs;
pub mod proc;
pub mod shim;
pub mod spec;
pub mod state;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use error::{Result, RuntimeError};
pub use exec::{ExecArgs, exec_in_task, exit_code, run_exec, task_command};
pub use proc::ProcIdentity;
pub use shim::TaskShimArgs;
pub use spec::{HealthCheck, RestartCondition, RestartPolicy, TaskSpec, validate_task_id};
pub use state::{Health, HealthStatus, TaskDir, TaskPhase, TaskState};

/// How often [`TaskRuntime::watch`] looks at the task dirs, unless configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long `start` waits for the shim launcher to report.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `stop` waits beyond the task's grace period before killing the shim itself.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Capacity of the watch channel; a slower subscriber gets `Lagged` and should `list()`.
const WATCH_CAPACITY: usize = 1024;

/// The agent's handle on its tasks. Everything it creates is under `root`.
#[derive(Debug)]
pub struct TaskRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    shim_binary: PathBuf,
    poll_interval: Duration,
    /// One lock per task id: start, stop and remove of one task do not interleave; different
    /// tasks proceed in parallel.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tasks whose shim `start` is launching: not yet alive, but not dead either.
    launching: Mutex<HashSet<String>>,
    events: broadcast::Sender<(String, TaskState)>,
    /// The polling task behind `watch`, aborted when the runtime is dropped.
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl TaskRuntime {
    /// A runtime keeping task dirs under `root` (created on first start) and starting shims as
    /// `<shim_binary> task-shim <task dir>` (the agent passes `std::env::current_exe()`).
    pub fn new(root: PathBuf, shim_binary: PathBuf) -> TaskRuntime {
        TaskRuntime::with_poll_interval(root, shim_binary, DEFAULT_POLL_INTERVAL)
    }

    /// [`TaskRuntime::new`] with another interval for [`TaskRuntime::watch`].
    pub fn with_poll_interval(
        root: PathBuf,
        shim_binary: PathBuf,
        poll_interval: Duration,
    ) -> TaskRuntime {
        // Shims run with `/` as their directory: relative paths would not survive that.
        let absolute = |p: PathBuf| {
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
            }
        };
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        TaskRuntime {
            inner: Arc::new(Inner {
                root: absolute(root),
                shim_binary: absolute(shim_binary),
                poll_interval,
                locks: Mutex::new(HashMap::new()),
                launching: Mutex::new(HashSet::new()),
                events,
                watcher: Mutex::new(None),
            }),
        }
    }

    /// The directory of all task dirs.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The dir of task `task_id` (whether or not it exists).
    pub fn task_dir(&self, task_id: &str) -> Result<TaskDir> {
        validate_task_id(task_id)?;
        Ok(self.inner.dir(task_id))
    }

    /// The task's output files, oldest first (see [`shim::output`] for the format). Files
    /// that do not exist (yet) are left out.
    pub fn log_files(&self, task_id: &str) -> Result<Vec<PathBuf>> {
        let dir = self.task_dir(task_id)?;
        Ok([dir.output_log_rotated(), dir.output_log()]
            .into_iter()
            .filter(|p| p.exists())
            .collect())
    }

    /// Starts the task's shim, which starts the process. Idempotent: a task whose shim is
    /// alive is left alone (its spec is not changed). A task whose shim is dead (finished,
    /// failed, or killed) is started afresh (restart count from 0, output appended).
    /// Returns once the shim is supervising; how the process fares is in its state.
    pub async fn start(&self, spec: TaskSpec) -> Result<()> {
        spec.validate()?;
        let lock = self.inner.lock_for(&spec.id);
        let _guard = lock.lock().await;
        let dir = self.inner.dir(&spec.id);
        if self.inner.live_shim(&dir).is_some() {
            return Ok(());
        }
        // Owner-only: the spec may carry secrets in its environment.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.path())
            .map_err(|e| RuntimeError::io("create task dir", dir.path(), e))?;
        state::write_json_atomic(&dir.spec(), &spec)?;
        match std::fs::remove_file(dir.state()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::io("remove old state", dir.state(), e));
            }
            _ => {}
        }
        let _launching = Launching::new(&self.inner, &spec.id);
        let launched = tokio::process::Command::new(&self.inner.shim_binary)
            .arg(shim::SUBCOMMAND)
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let failed = |reason: String| RuntimeError::ShimStart {
            id: spec.id.clone(),
            binary: self.inner.shim_binary.clone(),
            reason,
        };
        let output = match tokio::time::timeout(LAUNCH_TIMEOUT, launched).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no answer within {LAUNCH_TIMEOUT:?}"))),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .trim()
                .trim_start_matches("error: ")
                .replace('\n', " ");
            return Err(failed(if reason.is_empty() {
                output.status.to_string()
            } else {
                reason
            }));
        }
        tracing::debug!(task = %spec.id, "shim started");
        Ok(())
    }

    /// Stops the task: SIGTERM to its shim, which stops the process (SIGTERM, the grace
    /// period, SIGKILL), records the final state and exits. Returns when the shim is gone. A
    /// task that is absent or not running is success. If the shim itself does not exit in
    /// the grace period plus a margin, it is killed (and its task with it) and the state is
    /// recorded here.
    pub async fn stop(&self, task_id: &str) -> Result<()> {
        validate_task_id(task_id)?;
        let lock = self.inner.lock_for(task_id);
        let _guard = lock.lock().await;
        self.inner.stop_locked(task_id).await
    }

    /// Stops the task and deletes its dir. Absent is success.
    pub async fn remove(&self, task_id: &str) -> Result<()> {
        validate_task_id(task_id)?;
        let lock = self.inner.lock_for(task_id);
        let _guard = lock.lock().await;
        self.inner.stop_locked(task_id).await?;
        let dir = self.inner.dir(task_id);
        match std::fs::remove_dir_all(dir.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io("remove task dir", dir.path(), e)),
        }
        drop(_guard);
        self.inner.forget_lock(task_id, &lock);
        Ok(())
    }

    /// Every task under the root with its observed state, sorted by id.
    pub fn list(&self) -> Vec<(String, TaskState)> {
        self.inner.list()
    }

    /// The observed state of one task; `None` if there is no such task.
    pub fn state(&self, task_id: &str) -> Option<TaskState> {
        validate_task_id(task_id).ok()?;
        self.inner.observe(task_id)
    }

    /// A receiver of `(task id, state)` for every observed change (see the module doc). The
    /// first poll after the watcher starts reports every task. Must be called inside a tokio
    /// runtime.
    pub fn watch(&self) -> broadcast::Receiver<(String, TaskState)> {
        let rx = self.inner.events.subscribe();
        self.ensure_watcher();
        rx
    }

    /// The pid of the task's running process, for `mesh exec`: `None` unless the task is
    /// running under a live shim and that very process (pid and start time) still runs.
    pub fn exec_target(&self, task_id: &str) -> Option<i32> {
        let state = self.state(task_id)?;
        if state.state != TaskPhase::Running {
            return None;
        }
        let process = ProcIdentity {
            pid: state.pid?,
            start_time: state.pid_start_time?,
        };
        process.is_alive().then_some(process.pid)
    }

    /// At agent start: the ids of the tasks whose shim is alive (sorted), which keep running
    /// untouched, and starts the watcher (inside a tokio runtime) so their changes are
    /// reported. Tasks with dead shims stay listed as they were left (see [`TaskRuntime::list`]).
    pub async fn adopt(&self) -> Vec<String> {
        let root = self.inner.root.clone();
        let ids = tokio::task::spawn_blocking(move || task_ids(&root))
            .await
            .unwrap_or_default();
        let live: Vec<String> = ids
            .into_iter()
            .filter(|id| self.inner.live_shim(&self.inner.dir(id)).is_some())
            .collect();
        for id in &live {
            tracing::info!(task = %id, "adopted running task");
        }
        self.ensure_watcher();
        live
    }

    fn ensure_watcher(&self) {
        let mut watcher = self.inner.watcher.lock().unwrap_or_else(|p| p.into_inner());
        if watcher.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                *watcher = Some(handle.spawn(watch_loop(Arc::downgrade(&self.inner))));
            }
            Err(_) => tracing::warn!("task watcher not started: no tokio runtime"),
        }
    }
}

impl Drop for TaskRuntime {
    fn drop(&mut self) {
        if let Some(handle) = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            handle.abort();
        }
    }
}

/// Polls the task dirs and broadcasts changes until the runtime is dropped. Holds the runtime
/// only weakly, for one poll at a time.
async fn watch_loop(inner: Weak<Inner>) {
    let mut seen: HashMap<String, TaskState> = HashMap::new();
    let Some(interval) = inner.upgrade().map(|i| i.poll_interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // A few small file reads per task: off the async workers.
        let lister = inner.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || lister.list()).await else {
            continue;
        };
        let present: HashSet<&str> = now.iter().map(|(id, _)| id.as_str()).collect();
        seen.retain(|id, _| present.contains(id.as_str()));
        for (id, state) in now {
            if seen.get(&id) != Some(&state) {
                // No receiver is not an error: nobody watches yet.
                let _ = inner.events.send((id.clone(), state.clone()));
                seen.insert(id, state);
            }
        }
    }
}

/// Marks a task as launching while alive.
struct Launching<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> Launching<'a> {
    fn new(inner: &'a Inner, id: &str) -> Launching<'a> {
        inner
            .launching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
        Launching {
            inner,
            id: id.to_owned(),
        }
    }
}

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        self.inner
            .launching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Inner {
    fn dir(&self, task_id: &str) -> TaskDir {
        TaskDir::new(self.root.join(task_id))
    }

    fn lock_for(&self, task_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(task_id.to_owned())
            .or_default()
            .clone()
    }

    /// Drops the lock of a removed task unless someone else is waiting on it.
    fn forget_lock(&self, task_id: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and the caller's.
        if Arc::strong_count(lock) <= 2 {
            locks.remove(task_id);
        }
    }

    fn live_shim(&self, dir: &TaskDir) -> Option<ProcIdentity> {
        live_shim(dir)
    }

    fn list(&self) -> Vec<(String, TaskState)> {
        task_ids(&self.root)
            .into_iter()
            .filter_map(|id| self.observe(&id).map(|s| (id, s)))
            .collect()
    }

    /// The state of a task as the agent should see it: the recorded state, corrected by
    /// whether its shim is alive.
    fn observe(&self, task_id: &str) -> Option<TaskState> {
        let dir = self.dir(task_id);
        if !dir.spec().exists() {
            return None;
        }
        let launching = self
            .launching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(task_id);
        let alive = self.live_shim(&dir).is_some();
        // A state.json that cannot be read is treated as not written yet.
        let recorded = dir.read_state().ok().flatten();
        Some(match (recorded, alive) {
            (Some(state), true) => state,
            (None, true) => TaskState::starting(0, "supervisor started"),
            (_, false) if launching => TaskState::starting(0, "starting the supervisor"),
            (Some(state), false) => state.with_dead_shim(),
            (None, false) => TaskState {
                message: "supervisor died before recording a state".to_owned(),
                ..TaskState::starting(0, "").with_dead_shim()
            },
        })
    }

    async fn stop_locked(&self, task_id: &str) -> Result<()> {
        let dir = self.dir(task_id);
        let Some(shim) = self.live_shim(&dir) else {
            return Ok(());
        };
        let signal_err = |signal: &'static str| {
            move |source| RuntimeError::Signal {
                what: "task shim",
                pid: shim.pid,
                signal,
                source,
            }
        };
        let Some(pidfd) = shim.open().map_err(signal_err("SIGTERM"))? else {
            return Ok(());
        };
        let grace = dir
            .read_spec()
            .map(|s| s.stop_grace)
            .unwrap_or(Duration::from_secs(10));
        pidfd
            .send_signal(Signal::SIGTERM)
            .map_err(signal_err("SIGTERM"))?;
        let patience = grace + STOP_MARGIN;
        if pidfd
            .wait_exit(patience)
            .await
            .map_err(signal_err("SIGTERM"))?
        {
            return Ok(());
        }

        // The shim is stuck. Killing it kills the task process (parent-death signal); the
        // rest of the task's process group is killed here.
        tracing::warn!(task = %task_id, shim_pid = shim.pid, "shim did not stop: killing it");
        pidfd
            .send_signal(Signal::SIGKILL)
            .map_err(signal_err("SIGKILL"))?;
        let exited = pidfd
            .wait_exit(STOP_MARGIN)
            .await
            .map_err(signal_err("SIGKILL"))?;
        if !exited {
            return Err(RuntimeError::StopTimeout {
                id: task_id.to_owned(),
                pid: shim.pid,
                waited: patience + STOP_MARGIN,
            });
        }
        let mut state = dir
            .read_state()
            .ok()
            .flatten()
            .unwrap_or_else(|| TaskState::starting(0, ""));
        if let (Some(pid), Some(start_time)) = (state.pid, state.pid_start_time)
            && (ProcIdentity { pid, start_time }).is_alive()
        {
            let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !state.done {
            state.state = TaskPhase::Exited;
            state.message = "stopped: the supervisor did not exit and was killed".to_owned();
            state.finished_at_ms = Some(state::now_ms());
            state.done = true;
            state.stopped = true;
            dir.write_state(&state)?;
        }
        Ok(())
    }
}

/// The task's supervisor, if it is alive (see the module doc).
fn live_shim(dir: &TaskDir) -> Option<ProcIdentity> {
    let text = std::fs::read_to_string(dir.shim_pid()).ok()?;
    let shim = ProcIdentity::parse_line(&text)?;
    if !shim.is_alive() {
        return None;
    }
    let cmdline = shim.cmdline();
    let is_shim = cmdline.iter().any(|a| a == shim::SUBCOMMAND)
        && cmdline.iter().any(|a| a == shim::SUPERVISE_FLAG);
    is_shim.then_some(shim)
}

/// Names of the task dirs under `root`, sorted; valid ids only (temporary files are not).
fn task_ids(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| validate_task_id(id).is_ok())
        .collect();
    ids.sort();
    ids
}
