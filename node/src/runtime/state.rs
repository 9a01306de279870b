//! What a task is doing, as the shim records it in `<task dir>/state.json`, and the layout of a
//! task dir.
//!
//! Every write is atomic (a temporary file renamed over the old one), so a reader sees the old
//! or the new state, never a torn one, even if the writer is killed mid-write.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Result, RuntimeError};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskPhase {
    /// The shim is about to start (or restart) the process.
    Starting,
    /// The process runs.
    Running,
    /// The process exited with status 0, or was stopped on request.
    Exited,
    /// The process exited non-zero or by a signal, could not be started, or its shim died.
    Failed,
}

/// The message of a task whose supervisor died.
pub const SUPERVISOR_DIED: &str = "supervisor died";

/// The observed state of a task: the content of `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub state: TaskPhase,
    /// Pid of the task process: the running one, or the last one after an exit.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Start time of that process (clock ticks after boot, field 22 of `/proc/PID/stat`): with
    /// the pid, an identity that pid reuse cannot fake.
    #[serde(default)]
    pub pid_start_time: Option<u64>,
    /// Exit status of the last run, if it exited normally.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal that ended the last run, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// How many times the process was started again after the first start.
    #[serde(default)]
    pub restarts: u32,
    /// When the current (or last) run started, ms since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// When the last run ended, ms since the Unix epoch (none while running).
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// What happened, for people (`exited with status 3`, `supervisor died`, ...).
    #[serde(default)]
    pub message: String,
    /// No further change will come: the shim has exited or is exiting without restarting the
    /// process. A state that is not `done` whose shim is dead means the shim died.
    #[serde(default)]
    pub done: bool,
    /// The supervisor was told to stop the task (SIGTERM or SIGINT to the shim): the end is
    /// not the task's doing. The agent stops a task only to remove it, so a task still wanted
    /// that ended this way was stopped from outside (the host shutting down) and starts again.
    #[serde(default)]
    pub stopped: bool,
    /// The health of the current run, for a task with a health check (none before its
    /// process runs).
    #[serde(default)]
    pub health: Option<Health>,
}

/// Docker's health states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No check passed yet, and not yet enough failures to say unhealthy.
    Starting,
    Healthy,
    Unhealthy,
}

/// What the health checks of the current run found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Failures in a row that counted.
    pub failing_streak: u32,
    /// The output (or why it failed) of the last failed check, cut to
    /// [`MAX_HEALTH_OUTPUT`] bytes; empty after a success.
    #[serde(default)]
    pub last_failure: String,
}

/// Most bytes of a failed check's output kept in the state.
pub const MAX_HEALTH_OUTPUT: usize = 256;

impl TaskState {
    /// Whether the task may receive traffic: its process runs and, if it has a health check,
    /// the check says healthy.
    pub fn serving(&self) -> bool {
        self.state == TaskPhase::Running
            && self
                .health
                .as_ref()
                .is_none_or(|h| h.status == HealthStatus::Healthy)
    }
}

impl TaskState {
    /// A task whose shim is being started.
    pub fn starting(restarts: u32, message: impl Into<String>) -> TaskState {
        TaskState {
            state: TaskPhase::Starting,
            pid: None,
            pid_start_time: None,
            exit_code: None,
            signal: None,
            restarts,
            started_at_ms: None,
            finished_at_ms: None,
            message: message.into(),
            done: false,
            stopped: false,
            health: None,
        }
    }

    /// Whether the state can still change.
    pub fn is_final(&self) -> bool {
        self.done
    }

    /// Whether the task ended because its supervisor died (with the host, a container
    /// restart, a kill), not by anything the task did.
    pub fn supervisor_died(&self) -> bool {
        self.done && self.message.starts_with(SUPERVISOR_DIED)
    }

    /// Whether the task ended by nothing it did: its supervisor died, or was told to stop.
    pub fn ended_from_outside(&self) -> bool {
        self.supervisor_died() || (self.done && self.stopped)
    }

    /// This state as seen once its shim is known to be dead: unchanged if it was final,
    /// else `failed` with the message `supervisor died`.
    pub fn with_dead_shim(mut self) -> TaskState {
        if !self.done {
            self.state = TaskPhase::Failed;
            self.message = SUPERVISOR_DIED.to_owned();
            self.finished_at_ms.get_or_insert_with(now_ms);
            self.done = true;
        }
        self
    }
}

/// Milliseconds since the Unix epoch (wall clock: these are timestamps for people and logs).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The files of one task dir (`<root>/<task id>/`).
#[derive(Debug, Clone)]
pub struct TaskDir {
    path: PathBuf,
}

impl TaskDir {
    pub fn new(path: impl Into<PathBuf>) -> TaskDir {
        TaskDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The launch spec, written by the agent before it starts the shim.
    pub fn spec(&self) -> PathBuf {
        self.path.join("spec.json")
    }

    /// The task state, written by the shim.
    pub fn state(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// `<pid> <start time>` of the running shim.
    pub fn shim_pid(&self) -> PathBuf {
        self.path.join("shim.pid")
    }

    /// Held (flock) by the running shim: at most one shim per task.
    pub fn shim_lock(&self) -> PathBuf {
        self.path.join("shim.lock")
    }

    /// The shim's own stderr (its errors; not the task's output).
    pub fn shim_log(&self) -> PathBuf {
        self.path.join("shim.log")
    }

    /// The task's stdout and stderr, one line per record.
    pub fn output_log(&self) -> PathBuf {
        self.path.join("output.log")
    }

    /// The previous output file, after a rotation.
    pub fn output_log_rotated(&self) -> PathBuf {
        self.path.join("output.log.1")
    }

    /// The task's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> PathBuf {
        self.path.join("resolv.conf")
    }

    /// The task's `/etc/hosts`.
    pub fn hosts(&self) -> PathBuf {
        self.path.join("hosts")
    }

    pub fn read_spec(&self) -> Result<super::TaskSpec> {
        read_json(&self.spec())
    }

    /// The recorded state; `None` if the shim has not written one yet.
    pub fn read_state(&self) -> Result<Option<TaskState>> {
        match read_json(&self.state()) {
            Ok(state) => Ok(Some(state)),
            Err(RuntimeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn write_state(&self, state: &TaskState) -> Result<()> {
        write_json_atomic(&self.state(), state)
    }
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| RuntimeError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| RuntimeError::Json {
        op: "parse",
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::Json {
        op: "serialize",
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    // The pid keeps two writers (agent and shim) from sharing a temporary file.
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(RuntimeError::io("write", tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        RuntimeError::io("rename into place", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_state_json_uses_the_documented_keys() {
        let mut state = TaskState::starting(2, "x");
        state.state = TaskPhase::Running;
        state.pid = Some(42);
        let json = serde_json::to_value(&state).unwrap();
        for key in [
            "state",
            "pid",
            "exit_code",
            "signal",
            "restarts",
            "started_at_ms",
            "finished_at_ms",
            "message",
            "done",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
        assert_eq!(json["state"], "running");
    }

    #[test]
    fn runtime_dead_shim_fails_only_unfinished_states() {
        let mut running = TaskState::starting(0, "");
        running.state = TaskPhase::Running;
        let seen = running.with_dead_shim();
        assert_eq!(seen.state, TaskPhase::Failed);
        assert_eq!(seen.message, "supervisor died");

        let mut exited = TaskState::starting(0, "");
        exited.state = TaskPhase::Exited;
        exited.done = true;
        assert_eq!(exited.clone().with_dead_shim(), exited);
    }

    #[test]
    fn runtime_state_write_is_atomic_and_missing_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        assert_eq!(dir.read_state().unwrap(), None);
        let state = TaskState::starting(1, "hello");
        dir.write_state(&state).unwrap();
        assert_eq!(dir.read_state().unwrap(), Some(state));
        // Only state.json is left: no temporary file.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
