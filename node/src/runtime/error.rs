//! Errors of the task runtime: every variant names the task, the path or the pid it was about.
//!
//! Messages are lower-case with no trailing period and do not repeat their `source`, so
//! `anyhow`'s `{:#}` prints each cause once.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result of the task runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What can go wrong when starting, supervising, stopping or entering a task.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A task id that cannot be a directory name under the runtime root.
    #[error("invalid task id {id:?}: {reason}")]
    InvalidTaskId { id: String, reason: &'static str },

    /// A launch spec the shim cannot run (empty argv, NUL bytes, ...).
    #[error("invalid spec of task {id}: {reason}")]
    InvalidSpec { id: String, reason: String },

    /// A file or directory operation failed.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A JSON file of a task dir could not be read or written.
    #[error("{op} {}", path.display())]
    Json {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The shim of a task could not be started, or reported that it failed to start.
    #[error("start the shim of task {id} ({}): {reason}", binary.display())]
    ShimStart {
        id: String,
        binary: PathBuf,
        reason: String,
    },

    /// The shim did not exit after being asked to stop, even after SIGKILL.
    #[error("the shim of task {id} (pid {pid}) is still alive {waited:?} after the stop request")]
    StopTimeout {
        id: String,
        pid: i32,
        waited: Duration,
    },

    /// A signal could not be sent.
    #[error("send {signal} to {what} (pid {pid})")]
    Signal {
        what: &'static str,
        pid: i32,
        signal: &'static str,
        #[source]
        source: io::Error,
    },

    /// A namespace of a task process could not be opened or entered.
    #[error("{op} {kind} namespace of pid {pid}")]
    Namespace {
        op: &'static str,
        kind: &'static str,
        pid: i32,
        #[source]
        source: io::Error,
    },

    /// A command could not be run inside a task.
    #[error("run {program:?} in the task of pid {pid}")]
    Exec {
        program: String,
        pid: i32,
        #[source]
        source: io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RuntimeError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
