//! The supervisor loop of one task (the long-lived shim process).
//!
//! # Concurrency
//! One current-thread tokio runtime. The loop owns the child and the state; two pump tasks per
//! run copy the child's stdout and stderr into the shared [`OutputLog`] (a mutex, held for one
//! record). A stop request (SIGTERM or SIGINT) is a `select!` branch everywhere the loop
//! waits: while the process runs, and during the restart delay.
//!
//! # Runs
//! Each run: record `starting`, open the task's network namespace, spawn the process, record
//! `running` (pid and its start time), wait for it, SIGKILL what is left of its process
//! group, drain its output (bounded wait), record `exited` (status 0) or `failed`. Then the
//! restart policy decides: restart after the delay, or record the state as final (`done`) and
//! exit. A stop records `exited` with the message `stopped...` as final. A task with a health
//! check is checked while it runs ([`health`]); once unhealthy, the run is stopped (SIGTERM,
//! grace period, SIGKILL) and recorded `failed` with the message `unhealthy: ...`, and the
//! restart policy decides as for any failure.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitCode, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_dataplane::netns::Netns;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};

use super::health;
use super::launch::{self, Prepared};
use super::output::{OutputLog, Stream, pump};
use super::{record_final, send_ready, take_lock, write_pid_file};
use crate::runtime::proc::ProcIdentity;
use crate::runtime::spec::{QUICK_RUN, TaskSpec};
use crate::runtime::state::{TaskDir, TaskPhase, TaskState, now_ms};

/// How long the output of a finished run may take to drain (grandchildren that escaped the
/// process group can hold the pipes open for ever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// `mesh task-shim --supervise <dir>`.
pub fn main(path: &Path) -> ExitCode {
    let dir = TaskDir::new(path);
    let fail = |message: String| {
        tracing::error!(task_dir = %path.display(), "{message}");
        send_ready(&format!("error {}", message.replace('\n', " ")));
        ExitCode::FAILURE
    };
    let spec = match dir.read_spec().and_then(|s| s.validate().map(|()| s)) {
        Ok(spec) => spec,
        Err(e) => return fail(format!("{e:#}")),
    };
    let lock = match take_lock(&dir) {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => {
            send_ready(&format!("running {holder}"));
            return ExitCode::SUCCESS;
        }
        Err(message) => return fail(message),
    };
    let me = match ProcIdentity::current() {
        Ok(me) => me,
        Err(e) => return fail(format!("read own /proc entry: {e}")),
    };
    if let Err(message) = write_pid_file(&dir, me) {
        return fail(message);
    }
    let prepared = match launch::prepare(&spec, &dir) {
        Ok(p) => p,
        Err(message) => return fail(message),
    };
    for skipped in &prepared.skipped {
        tracing::warn!(task = %spec.id, "{skipped}");
    }
    let log = match OutputLog::open(&dir, spec.log_max_bytes) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(e) => return fail(format!("open {}: {e}", dir.output_log().display())),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("start a runtime: {e}")),
    };
    let code = runtime.block_on(async {
        // Handlers first: once `ready` is sent the agent may send SIGTERM at any time.
        let mut stop = match StopSignals::new() {
            Ok(s) => s,
            Err(e) => return fail(format!("install signal handlers: {e}")),
        };
        let mut supervisor = Supervisor {
            dir: dir.clone(),
            spec,
            prepared,
            log,
            state: TaskState::starting(0, "supervisor started"),
        };
        supervisor.record();
        send_ready(&format!("ready {}", me.pid));
        tracing::info!(task = %supervisor.spec.id, shim_pid = me.pid, "supervising");
        supervisor.run(&mut stop).await;
        ExitCode::SUCCESS
    });
    // Gone before the lock is released: a new shim never sees our pid file as its own.
    let _ = std::fs::remove_file(dir.shim_pid());
    drop(lock);
    code
}

/// SIGTERM or SIGINT: stop the task and exit.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Cancel-safe (both `recv`s are).
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What ended the wait on a running process.
enum Waited {
    Exited(io::Result<ExitStatus>),
    /// A stop request.
    Stop,
    /// Its health check says unhealthy.
    Unhealthy,
}

/// How one run ended.
enum RunEnd {
    /// On its own (or it could not start); `success` is status 0.
    Exited { success: bool },
    /// Stopped on request.
    Stopped,
}

struct Supervisor {
    dir: TaskDir,
    spec: TaskSpec,
    prepared: Prepared,
    log: Arc<Mutex<OutputLog>>,
    state: TaskState,
}

impl Supervisor {
    async fn run(&mut self, stop: &mut StopSignals) {
        let mut restarts = 0;
        // Runs in a row that ended within QUICK_RUN: each makes the next wait longer.
        let mut quick = 0;
        loop {
            let started = tokio::time::Instant::now();
            let end = self.run_once(restarts, stop).await;
            quick = if started.elapsed() < QUICK_RUN {
                quick + 1
            } else {
                1
            };
            let restart = matches!(end, RunEnd::Exited { success }
                if self.spec.restart.should_restart(success, restarts));
            let delay = self.spec.restart.delay_after(quick);
            if !restart || !self.wait_restart_delay(delay, stop).await {
                break;
            }
            restarts += 1;
        }
        record_final(&self.dir, self.state.clone());
        tracing::info!(task = %self.spec.id, last = %self.state.message, "supervisor exiting");
    }

    /// Records that a restart is pending and waits the policy's delay; false if a stop
    /// request came first (the state then says so).
    async fn wait_restart_delay(&mut self, delay: Duration, stop: &mut StopSignals) -> bool {
        let last = std::mem::take(&mut self.state.message);
        self.state.message = format!(
            "{last}; restarting in {}",
            humantime::format_duration(delay)
        );
        self.record();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.recv() => {
                self.state.message = format!("stopped; last run {last}");
                self.state.stopped = true;
                false
            }
        }
    }

    /// One start of the process, to its end.
    async fn run_once(&mut self, restarts: u32, stop: &mut StopSignals) -> RunEnd {
        let message = if restarts == 0 {
            "starting"
        } else {
            "restarting"
        };
        self.state = TaskState::starting(restarts, message);
        self.record();

        let netns = match &self.spec.netns {
            Some(path) => match Netns::open_path(&path.display().to_string(), path) {
                Ok(ns) => Some(ns),
                Err(e) => return self.start_failed(format!("{e:#}")),
            },
            None => None,
        };
        let mut child = match launch::command(&self.spec, &self.prepared, netns.as_ref())
            .and_then(|cmd| tokio::process::Command::from(cmd).spawn())
        {
            Ok(child) => child,
            Err(e) => {
                let program = &self.spec.argv[0];
                return self.start_failed(format!("cannot start {program:?}: {e}"));
            }
        };
        drop(netns);
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        self.state.state = TaskPhase::Running;
        self.state.pid = pid;
        self.state.pid_start_time = pid
            .and_then(|p| ProcIdentity::of(p).ok())
            .map(|id| id.start_time);
        self.state.started_at_ms = Some(now_ms());
        self.state.message = "running".to_owned();
        self.state.health = self.spec.health.as_ref().map(|_| health::initial());
        self.record();
        let started = tokio::time::Instant::now();

        let pumps = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(pump(out, Stream::Stdout, self.log.clone()))),
            child
                .stderr
                .take()
                .map(|err| tokio::spawn(pump(err, Stream::Stderr, self.log.clone()))),
        ];

        let waited = tokio::select! {
            status = child.wait() => Waited::Exited(status),
            _ = stop.recv() => Waited::Stop,
            () = health::watch(&self.spec, &self.prepared, &self.dir, &mut self.state, started) => {
                Waited::Unhealthy
            }
        };
        let (status, stopped) = match waited {
            Waited::Exited(status) => (status, None),
            Waited::Stop => {
                let (status, killed) = self.stop_child(&mut child, pid).await;
                (status, Some(killed))
            }
            Waited::Unhealthy => {
                let (status, _) = self.stop_child(&mut child, pid).await;
                self.state.finished_at_ms = Some(now_ms());
                self.state.exit_code = status.as_ref().ok().and_then(|s| s.code());
                self.state.signal = status.as_ref().ok().and_then(|s| s.signal());
                self.state.state = TaskPhase::Failed;
                let why = self
                    .state
                    .health
                    .as_ref()
                    .map(|h| h.last_failure.clone())
                    .unwrap_or_default();
                self.state.message = format!("unhealthy: {why}");
                self.record();
                if let Some(pid) = pid {
                    let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                return RunEnd::Exited { success: false };
            }
        };
        if let Some(pid) = pid {
            // Whatever the task left behind in its group (the group outlives its leader).
            let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let drain = futures::future::join_all(pumps.into_iter().flatten());
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;

        self.state.finished_at_ms = Some(now_ms());
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                self.state.state = TaskPhase::Failed;
                self.state.message = format!("cannot wait for the process: {e}");
                self.record();
                return RunEnd::Exited { success: false };
            }
        };
        self.state.exit_code = status.code();
        self.state.signal = status.signal();
        let how = describe(status);
        match stopped {
            Some(killed) => {
                self.state.state = TaskPhase::Exited;
                self.state.stopped = true;
                self.state.message = if killed {
                    format!(
                        "stopped: killed after the {} grace period",
                        humantime::format_duration(self.spec.stop_grace)
                    )
                } else {
                    format!("stopped: {how}")
                };
                RunEnd::Stopped
            }
            None => {
                let success = status.success();
                self.state.state = if success {
                    TaskPhase::Exited
                } else {
                    TaskPhase::Failed
                };
                self.state.message = how;
                self.record();
                RunEnd::Exited { success }
            }
        }
    }

    /// SIGTERM to the task process, then SIGKILL to its group after the grace period. The
    /// bool says whether SIGKILL was needed.
    async fn stop_child(
        &self,
        child: &mut Child,
        pid: Option<i32>,
    ) -> (io::Result<ExitStatus>, bool) {
        if let Some(pid) = pid {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(self.spec.stop_grace, child.wait()).await {
            Ok(status) => (status, false),
            Err(_elapsed) => {
                if let Some(pid) = pid {
                    let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.start_kill();
                (child.wait().await, true)
            }
        }
    }

    fn start_failed(&mut self, message: String) -> RunEnd {
        tracing::warn!(task = %self.spec.id, "{message}");
        // In the task's own output too, so `mesh service logs` says why it is not running.
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_record(Stream::Stderr, format!("mesh: {message}").as_bytes());
        self.state.state = TaskPhase::Failed;
        self.state.message = message;
        self.state.finished_at_ms = Some(now_ms());
        self.record();
        RunEnd::Exited { success: false }
    }

    /// Writes the current state. A failure is logged: the task keeps running unrecorded rather
    /// than being stopped because a disk is full.
    fn record(&self) {
        if let Err(e) = self.dir.write_state(&self.state) {
            tracing::error!(task = %self.spec.id, error = %format!("{e:#}"), "cannot record the task state");
        }
    }
}

/// `exited with status 3`, `killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}
