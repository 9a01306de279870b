//! The shim: one small supervisor process per task, which outlives the agent.
//!
//! # Processes
//! The agent runs `<mesh> task-shim <task dir>` (the *launcher*) and waits for it. The
//! launcher re-executes its own binary as `<mesh> task-shim --supervise <task dir>` (the
//! *supervisor*) in a new session (`setsid`), with stdin on `/dev/null`, stderr appended to
//! `shim.log` and stdout on a pipe, and waits for the supervisor's one readiness line on that
//! pipe. Then the launcher exits, so the supervisor is nobody's child: it is reparented to
//! init (or the nearest subreaper), it does not die with the agent, and the agent has no
//! child to reap. This is containerd-shim's `start` pattern.
//!
//! # Readiness line (supervisor stdout, then stdout goes to `shim.log`)
//! - `ready <pid>`: the supervisor holds the task's lock, wrote `shim.pid` and the first
//!   state, and handles SIGTERM: the agent may now stop it at any time.
//! - `running <pid>`: another supervisor already holds the lock (start is idempotent).
//! - `error <message>`: it could not start (bad spec, unwritable dir...).
//!
//! # Supervision
//! See the `supervisor` module: runs the process per the restart policy, records every change in
//! `state.json`, copies its output into `output.log`, and on SIGTERM (or SIGINT) stops it
//! (SIGTERM, grace period, SIGKILL), records the final state and exits.

mod health;
mod launch;
pub mod output;
mod supervisor;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use nix::fcntl::{Flock, FlockArg};

use super::proc::ProcIdentity;
use super::state::{TaskDir, TaskState, write_atomic};

/// The subcommand name the `mesh` binary must give the shim (the launcher re-executes the
/// binary with it).
pub const SUBCOMMAND: &str = "task-shim";

/// The flag that selects the supervisor; hidden from people.
pub const SUPERVISE_FLAG: &str = "--supervise";

/// `mesh task-shim [--supervise] <task dir>` (hidden from `mesh --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct TaskShimArgs {
    /// Run the supervisor in the foreground (the launcher starts it this way).
    #[arg(long)]
    pub supervise: bool,
    /// The task dir holding spec.json.
    pub task_dir: PathBuf,
}

/// Entry point of `mesh task-shim`. Call it on the main thread, before building any tokio
/// runtime (the supervisor builds its own current-thread runtime): a task's parent-death
/// signal is tied to the *thread* that forked it, which must live as long as the shim.
/// Logging set up beforehand goes to `shim.log`.
pub fn run(args: TaskShimArgs) -> ExitCode {
    if args.supervise {
        supervisor::main(&args.task_dir)
    } else {
        match launch_supervisor(&args.task_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The launcher: starts the detached supervisor and waits for its readiness line.
fn launch_supervisor(dir: &Path) -> Result<(), String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("task dir {}: {e}", dir.display()))?;
    let task_dir = TaskDir::new(&dir);
    task_dir.read_spec().map_err(|e| format!("{e:#}"))?;
    let shim_log = open_shim_log(&task_dir)?;
    let argv0 = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mesh"));
    // /proc/self/exe is this very binary even if the file was replaced (an upgrade), so the
    // supervisor speaks the same readiness protocol as this launcher.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(&argv0)
        .arg(SUBCOMMAND)
        .arg(SUPERVISE_FLAG)
        .arg(&dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log);
    // SAFETY: runs in the forked child before exec; setsid is a single async-signal-safe
    // syscall and the error conversion does not allocate.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn the supervisor ({}): {e}", argv0.display()))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let line = line.trim_end();
    match line.split_once(' ') {
        Some(("ready" | "running", _pid)) => Ok(()),
        Some(("error", message)) => {
            let _ = child.wait();
            Err(message.to_owned())
        }
        _ => {
            let status = child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            let read = read.err().map(|e| format!(", {e}")).unwrap_or_default();
            Err(format!(
                "the supervisor ended before it was ready ({status}{read}); see {}",
                task_dir.shim_log().display()
            ))
        }
    }
}

fn open_shim_log(dir: &TaskDir) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.shim_log())
        .map_err(|e| format!("open {}: {e}", dir.shim_log().display()))
}

/// The supervisor's hold on its task dir: the lock, released when the process exits.
struct ShimLock {
    _lock: Flock<File>,
}

/// Takes the task's lock, or says which supervisor holds it.
fn take_lock(dir: &TaskDir) -> Result<Result<ShimLock, String>, String> {
    let path = dir.shim_lock();
    // Opened close-on-exec (Rust's default), so task processes do not inherit the lock.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Ok(ShimLock { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(dir.shim_pid())
                .ok()
                .and_then(|t| ProcIdentity::parse_line(&t))
                .map(|id| id.pid.to_string())
                .unwrap_or_else(|| "?".to_owned());
            Ok(Err(holder))
        }
        Err((_, errno)) => Err(format!("lock {}: {errno}", path.display())),
    }
}

/// Writes the readiness line on stdout, then points stdout at stderr (`shim.log`): the
/// launcher has exited by then, and a write to its pipe would fail.
fn send_ready(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    let _ = nix::unistd::dup2_stdout(std::io::stderr());
}

/// Records `state` as final (the supervisor is about to exit).
fn record_final(dir: &TaskDir, mut state: TaskState) {
    state.done = true;
    if let Err(e) = dir.write_state(&state) {
        tracing::error!(error = %format!("{e:#}"), "cannot record the final state");
    }
}

/// Writes `shim.pid`.
fn write_pid_file(dir: &TaskDir, me: ProcIdentity) -> Result<(), String> {
    write_atomic(&dir.shim_pid(), me.to_line().as_bytes()).map_err(|e| format!("{e:#}"))
}
