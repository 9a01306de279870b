//! `mesh exec TASK -- CMD...`: run a command inside a running task, as `docker exec` does.
//!
//! The agent answers which pid runs the task ([`super::TaskRuntime::exec_target`]); this side
//! opens that process's network and mount namespaces and starts the command in them (fork,
//! `setns` in the child, exec), with the caller's stdin, stdout and stderr, the task's
//! environment and working directory. The caller waits and exits with the command's status
//! (128 + N when it was killed by signal N, as shells do).
//!
//! The command is a child, not an `exec` of the CLI itself: `setns` into a mount namespace is
//! refused to a multi-threaded process, and the CLI may have threads by then.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode, ExitStatus};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, Signal};

use super::error::{Result, RuntimeError};

/// `mesh exec TASK -- CMD...`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// Task id or name.
    pub task: String,
    /// Command and arguments to run in the task.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// A command that will run `argv` in the namespaces of the process `pid`, with that process's
/// environment and working directory. Stdio is left to the caller (inherited by default).
pub fn task_command(pid: i32, argv: &[String]) -> Result<Command> {
    let Some(program) = argv.first() else {
        return Err(RuntimeError::Exec {
            program: String::new(),
            pid,
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
        });
    };
    let open = |kind: &'static str| {
        File::open(format!("/proc/{pid}/ns/{kind}")).map_err(|source| RuntimeError::Namespace {
            op: "open",
            kind,
            pid,
            source,
        })
    };
    let net = open("net")?;
    let mnt = open("mnt")?;
    // The task's view of its working directory (a path in its mount namespace).
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .and_then(|p| CString::new(p.into_os_string().into_vec()).ok());

    let mut cmd = Command::new(program);
    cmd.args(&argv[1..]);
    if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
        cmd.env_clear().envs(parse_environ(&environ));
    }
    // SAFETY: runs in the forked (single-threaded) child before exec: two setns and a chdir
    // on descriptors and a C string prepared before the fork, and sigaction calls; nothing
    // allocates (errors are raw errnos).
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
            nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            // Entering a mount namespace moved us to its root; the task's own directory is
            // nicer but optional.
            if let Some(cwd) = &cwd {
                let _ = nix::unistd::chdir(cwd.as_c_str());
            }
            restore_default_signals();
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `argv` in the task whose process is `pid`, with the caller's stdio, and waits for it.
/// While it runs, this process ignores SIGINT and SIGQUIT (as `system(3)` does): a Ctrl-C
/// reaches the command (same process group), and the caller stays to report its status.
pub fn exec_in_task(pid: i32, argv: &[String]) -> Result<ExitStatus> {
    let mut cmd = task_command(pid, argv)?;
    let _ignore = IgnoreInterrupts::new();
    let program = argv[0].clone();
    let mut child = cmd.spawn().map_err(|source| RuntimeError::Exec {
        program: program.clone(),
        pid,
        source,
    })?;
    child.wait().map_err(|source| RuntimeError::Exec {
        program,
        pid,
        source,
    })
}

/// The exit code a shell would give for `status`: the status, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

/// `mesh exec` once the agent has answered the pid: runs the command and returns its exit
/// code, or prints one error line and returns 126 (the shell's "cannot execute").
pub fn run_exec(pid: i32, argv: &[String]) -> ExitCode {
    match exec_in_task(pid, argv) {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(126)
        }
    }
}

/// `KEY=VALUE\0...` of `/proc/PID/environ`.
fn parse_environ(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=')?;
            (eq > 0).then(|| {
                (
                    OsString::from_vec(entry[..eq].to_vec()),
                    OsString::from_vec(entry[eq + 1..].to_vec()),
                )
            })
        })
        .collect()
}

/// SIGINT and SIGQUIT back to their default action in the child (ignored dispositions
/// survive exec). Async-signal-safe.
fn restore_default_signals() {
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: installs the default disposition, no handler code; sigaction is
        // async-signal-safe.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
}

/// Ignores SIGINT and SIGQUIT until dropped, then restores what was there.
struct IgnoreInterrupts {
    previous: Vec<(Signal, SigHandler)>,
}

impl IgnoreInterrupts {
    fn new() -> IgnoreInterrupts {
        let mut previous = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            // SAFETY: SIG_IGN runs no handler code; the previous disposition is restored on
            // drop.
            if let Ok(old) = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) } {
                previous.push((sig, old));
            }
        }
        IgnoreInterrupts { previous }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: puts back the disposition that was installed before `new`.
            let _ = unsafe { nix::sys::signal::signal(sig, old) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_environ_parsing_keeps_values_with_equals() {
        let env = parse_environ(b"A=1\0B=x=y\0junk\0=nokey\0\0");
        assert_eq!(
            env,
            [
                (OsString::from("A"), OsString::from("1")),
                (OsString::from("B"), OsString::from("x=y"))
            ]
        );
    }

    #[test]
    fn runtime_exit_codes_follow_the_shell() {
        let status = |raw| ExitStatus::from_raw(raw);
        assert_eq!(exit_code(status(3 << 8)), ExitCode::from(3));
        assert_eq!(exit_code(status(9)), ExitCode::from(137));
    }
}
