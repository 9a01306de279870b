//! Processes of the lab: short commands run to completion with a timeout, long-lived daemons
//! tied to the lab's lifetime, and detached daemons that outlive the command that started them.
//!
//! # Who kills a lab's processes
//! - Daemons of an attached lab get `PR_SET_PDEATHSIG(SIGKILL)`. The kernel sends that signal
//!   when the *thread* that forked the child exits, not the process. So they are spawned by
//!   one [`Spawner`] thread per lab, which lives as long as the lab: a lab can be driven from
//!   any thread, and its daemons still die when the test process dies (even by SIGKILL).
//! - Detached daemons (`mesh sandbox up`) start a new session (`setsid`) and get no death
//!   signal; `mesh sandbox down` finds and kills them by their network namespace.
//! - Whatever is left in a namespace (task processes, helpers) is killed by namespace
//!   membership when the lab is removed ([`kill_netns_processes`]).

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mesh_dataplane::netns::Netns;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::wait::{Poll, wait_for};

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub argv: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Its stdout if it exited with status 0, else an error carrying the status and stderr.
    pub fn ok_stdout(self) -> Result<String> {
        if self.success() {
            Ok(self.stdout)
        } else {
            Err(anyhow!("{self}"))
        }
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.argv.join(" "), self.status)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = text.trim_end();
            if !text.is_empty() {
                write!(f, "\n--- {name}:\n{text}")?;
            }
        }
        Ok(())
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn argv_of(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s: &OsStr| s.to_string_lossy().into_owned())
        .collect()
}

/// Runs `cmd` to completion with stdin closed, capturing its output; kills it after `timeout`.
pub(crate) fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<CmdOutput> {
    let argv = argv_of(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn `{}`", argv.join(" ")))?;
    // Drain both pipes while waiting, so a chatty command cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for child")? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().context("wait for killed child")?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = CmdOutput {
        argv,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        bail!("timed out after {timeout:?}, killed: {out}");
    }
    Ok(out)
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Makes the child get SIGKILL when the thread spawning it exits (see the module doc).
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; `prctl` and `getppid` are plain syscalls
    // (async-signal-safe), and the error is built from a raw errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died between fork and prctl: then nobody would kill us.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Makes the child the leader of a new session, so it survives the spawning command and its
/// terminal.
pub(crate) fn detach(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec; `setsid` is a plain syscall
    // (async-signal-safe) and the error conversion does not allocate.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// A thread that spawns a lab's long-lived processes and lives as long as the lab, so their
/// parent-death signal fires only when the lab (or the whole process) goes away.
pub(crate) struct Spawner {
    requests: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub(crate) fn new(name: &str) -> Result<Spawner> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-spawner"))
            .spawn(move || {
                // Ends when the lab drops its sender.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .context("start the spawner thread")?;
        Ok(Spawner {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Spawns `cmd` (with the parent-death signal set) from the spawner thread.
    pub(crate) fn spawn(&self, mut cmd: Command) -> Result<Child> {
        let argv = argv_of(&cmd).join(" ");
        die_with_parent(&mut cmd);
        let (tx, rx) = mpsc::channel();
        self.requests
            .as_ref()
            .context("spawner stopped")?
            .send((cmd, tx))
            .map_err(|_| anyhow!("spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow!("spawner thread is gone"))?
            .with_context(|| format!("spawn `{argv}`"))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `sig` to `pid`; a process that is already gone is success.
pub(crate) fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    match signal::kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("send {sig} to pid {pid}")),
    }
}

/// Whether a process with this pid exists (a zombie counts).
pub fn pid_alive(pid: u32) -> bool {
    !matches!(
        signal::kill(Pid::from_raw(pid as i32), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// SIGKILLs every process in `ns` (other than this one) until none is left, or fails after
/// `timeout` (scaled by the patience knob) naming the survivors.
pub(crate) fn kill_netns_processes(ns: &Netns, timeout: Duration) -> Result<()> {
    let what = format!(
        "the processes in network namespace {} to die of SIGKILL",
        ns.name()
    );
    wait_for(&what, timeout, || {
        let pids = ns.pids()?;
        for pid in &pids {
            send_signal(*pid as u32, Signal::SIGKILL)?;
        }
        Ok(if pids.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("survivors {pids:?}"))
        })
    })
}

/// Kills `pid` and all its descendants with SIGKILL. The root is stopped first so it cannot
/// start new children while the tree is collected. Does not reap (the caller waits for its
/// own child).
pub(crate) fn kill_tree(pid: u32) {
    let _ = send_signal(pid, Signal::SIGSTOP);
    let tree = descendants(pid);
    let _ = send_signal(pid, Signal::SIGKILL);
    for p in tree {
        let _ = send_signal(p, Signal::SIGKILL);
    }
}

/// The pids of all descendants of `root`, read from `/proc/*/stat`.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}
