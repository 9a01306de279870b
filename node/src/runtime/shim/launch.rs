//! Building the task process: a new mount namespace with the task's own `/etc/resolv.conf` and
//! `/etc/hosts`, the task's network namespace, its own process group, and a parent-death
//! signal tying it to the shim.
//!
//! Everything the child needs is prepared before `fork` (C strings, an open namespace file):
//! the `pre_exec` hook runs between `fork` and `exec`, where only async-signal-safe calls are
//! allowed, so it makes raw syscalls on prepared data and never allocates.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use mesh_dataplane::netns::Netns;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::runtime::spec::{DEFAULT_PATH, TaskSpec};
use crate::runtime::state::{TaskDir, write_atomic};

/// A file of the task dir bind-mounted over a host path in the task's mount namespace.
#[derive(Debug, Clone)]
pub struct BindMount {
    source: CString,
    target: CString,
}

/// What every run of the task shares: the bind mounts (files written once by the shim).
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    mounts: Vec<BindMount>,
    /// Why a file was not mounted (the host has no such path), for the shim's log.
    pub skipped: Vec<String>,
}

/// Writes the task's `resolv.conf` and `hosts` into its dir and plans their bind mounts.
pub fn prepare(spec: &TaskSpec, dir: &TaskDir) -> Result<Prepared, String> {
    let mut prepared = Prepared::default();
    let files = [
        (
            spec.resolv_conf.as_deref(),
            dir.resolv_conf(),
            "/etc/resolv.conf",
        ),
        (spec.hosts.as_deref(), dir.hosts(), "/etc/hosts"),
    ];
    for (content, source, target) in files {
        let Some(content) = content else { continue };
        write_atomic(&source, content.as_bytes()).map_err(|e| format!("{e:#}"))?;
        // A bind mount needs an existing target; a dangling symlink (resolv.conf pointing
        // into a resolver that is not running) is skipped rather than failing the task.
        if std::fs::metadata(target).is_err() {
            prepared.skipped.push(format!(
                "{target} does not exist on this host: not replaced"
            ));
            continue;
        }
        prepared.mounts.push(BindMount {
            source: c_path(&source)?,
            target: c_path(Path::new(target))?,
        });
    }
    Ok(prepared)
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("path {} contains NUL", path.display()))
}

/// The command of one run. `netns` was opened by the caller (once per run, so a namespace
/// recreated at the same path is picked up by the next run).
pub fn command(spec: &TaskSpec, prepared: &Prepared, netns: Option<&Netns>) -> io::Result<Command> {
    in_task(spec, prepared, netns, &spec.argv)
}

/// A health check of the task: `/bin/sh -c CMD` where the task runs (same namespaces,
/// environment, directory and files), in its own process group.
pub fn check_command(
    spec: &TaskSpec,
    prepared: &Prepared,
    netns: Option<&Netns>,
    check: &str,
) -> io::Result<Command> {
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), check.to_owned()];
    in_task(spec, prepared, netns, &argv)
}

fn in_task(
    spec: &TaskSpec,
    prepared: &Prepared,
    netns: Option<&Netns>,
    argv: &[String],
) -> io::Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.workdir.as_deref().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a stop or a cleanup reaches the task's children too.
        .process_group(0);

    let shim = nix::unistd::getpid();
    let mounts = prepared.mounts.clone();
    // SAFETY: the hook runs in the forked child before exec. It only makes syscalls (prctl,
    // getppid, unshare, mount) on data prepared before the fork (`mounts` holds C strings;
    // nix passes `&CStr` through without copying), iterates a Vec without growing it, and
    // builds `io::Error`s from raw errnos, which does not allocate.
    unsafe {
        cmd.pre_exec(move || enter_task_mounts(shim, &mounts));
    }
    if let Some(ns) = netns {
        ns.enter_on_exec(&mut cmd)
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
    }
    Ok(cmd)
}

/// The child side: tie the task to the shim, then give it a private mount namespace with the
/// task's files. Async-signal-safe (see [`command`]).
fn enter_task_mounts(shim: Pid, mounts: &[BindMount]) -> io::Result<()> {
    // If the shim dies, the task dies with it: an unsupervised task could be neither stopped
    // nor re-adopted. The check after the prctl closes the race with a shim that died first.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
    if nix::unistd::getppid() != shim {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    // Slave, recursively: the host's later mounts still reach the task, nothing the task
    // mounts (our bind mounts included) reaches the host.
    nix::mount::mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&CStr>,
    )
    .map_err(io::Error::from)?;
    for m in mounts {
        nix::mount::mount(
            Some(m.source.as_c_str()),
            m.target.as_c_str(),
            None::<&CStr>,
            MsFlags::MS_BIND,
            None::<&CStr>,
        )
        .map_err(io::Error::from)?;
    }
    Ok(())
}
