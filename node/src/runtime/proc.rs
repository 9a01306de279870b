//! Process identity that survives pid reuse, and signalling or waiting for a process that is
//! not our child.
//!
//! A pid alone names whichever process holds it now. A [`ProcIdentity`] adds the process's
//! start time (field 22 of `/proc/PID/stat`, clock ticks after boot), which a later process
//! with the same pid cannot share. A zombie counts as dead: this machine's init does not
//! always reap orphans, and a dead shim can stay a zombie for good.
//!
//! Signals go through a pidfd ([`PidFd`]): it is opened, *then* the identity is checked, so the
//! signal cannot reach a process that took the pid in between.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A process, by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcIdentity {
    pub pid: i32,
    pub start_time: u64,
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: u8,
    start_time: u64,
}

fn read_stat(pid: i32) -> io::Result<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

/// Parses `pid (comm) S ppid ... starttime ...`. `comm` may contain spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After `)`: field 3 (state) is the first; starttime is field 22, the 20th after it.
    let state = *fields.next()?.as_bytes().first()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

impl ProcIdentity {
    /// The identity of the live process `pid` now.
    pub fn of(pid: i32) -> io::Result<ProcIdentity> {
        let stat = read_stat(pid)?;
        Ok(ProcIdentity {
            pid,
            start_time: stat.start_time,
        })
    }

    /// The calling process.
    pub fn current() -> io::Result<ProcIdentity> {
        ProcIdentity::of(std::process::id() as i32)
    }

    /// Whether this very process still runs (not a zombie, not a newer process with its pid).
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Ok(stat) => stat.start_time == self.start_time && !matches!(stat.state, b'Z' | b'X'),
            Err(_) => false,
        }
    }

    /// `<pid> <start time>`, the content of a pid file.
    pub fn to_line(self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// Parses [`ProcIdentity::to_line`].
    pub fn parse_line(text: &str) -> Option<ProcIdentity> {
        let mut words = text.split_ascii_whitespace();
        let pid = words.next()?.parse().ok().filter(|p| *p > 0)?;
        let start_time = words.next()?.parse().ok()?;
        Some(ProcIdentity { pid, start_time })
    }

    /// A pidfd on this process, or `None` if it is gone.
    pub fn open(&self) -> io::Result<Option<PidFd>> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(err),
            };
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Checked after opening: if the identity matches now, the process existed before and
        // after the open, so the pidfd is on it (a pid names one live process at a time).
        Ok(self.is_alive().then_some(PidFd { fd }))
    }

    /// The command line of the process, split at NULs (empty if it is gone).
    pub fn cmdline(&self) -> Vec<String> {
        fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|bytes| {
                bytes
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A pidfd: a handle on one process that pid reuse cannot redirect.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
}

impl PidFd {
    /// Sends `signal`. A process that has exited meanwhile is not an error.
    pub fn send_signal(&self, signal: Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a null siginfo and zero flags reads no memory; the fd
        // is a pidfd we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// Waits until the process has exited (a zombie counts) or `timeout` passes; true if it
    /// exited. A pidfd polls readable once its process has exited.
    pub async fn wait_exit(&self, timeout: Duration) -> io::Result<bool> {
        let fd = self.fd.try_clone()?;
        // SAFETY: the AsyncFd owns this duplicate `OwnedFd`, which stays open and refers to
        // the same pidfd until the AsyncFd is dropped at the end of this function.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        match tokio::time::timeout(timeout, fd.readable()).await {
            Ok(Ok(_guard)) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_stat_parsing_copes_with_odd_command_names() {
        let line =
            "123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.start_time, 98765);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn runtime_identity_detects_exit_zombies_and_pid_reuse() {
        let me = ProcIdentity::current().unwrap();
        assert!(me.is_alive());
        assert_eq!(ProcIdentity::parse_line(&me.to_line()), Some(me));
        // Same pid, another start time: a different process.
        let reused = ProcIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
        assert!(reused.open().unwrap().is_none());

        // A zombie (exited, not yet reaped) is dead.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcIdentity::of(child.id() as i32).unwrap();
        mesh_lab::wait::wait_for("the child to exit", Duration::from_secs(10), || {
            Ok(!id.is_alive())
        })
        .unwrap();
        child.wait().unwrap();
        assert!(!id.is_alive());
        assert!(ProcIdentity::parse_line("0 5").is_none());
        assert!(ProcIdentity::parse_line("12").is_none());
    }

    #[tokio::test]
    async fn runtime_pidfd_signals_and_sees_the_exit() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let id = ProcIdentity::of(child.id().unwrap() as i32).unwrap();
        let pidfd = id.open().unwrap().unwrap();
        pidfd.send_signal(Signal::SIGTERM).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        assert!(pidfd.wait_exit(Duration::from_secs(10)).await.unwrap());
    }
}
