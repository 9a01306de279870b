//! Named network namespaces, compatible with iproute2: `/run/netns/NAME` is a bind mount of a
//! namespace file, so `ip netns list` and `ip netns exec` see ours and we see theirs.
//!
//! # Entering a namespace
//! `setns(2)` moves only the calling *thread*. Calling it on a tokio worker leaves that worker
//! in the namespace for every later task it runs, and a netlink socket belongs to the namespace
//! it was created in. So all work inside a namespace happens on a fresh OS thread that enters
//! the namespace and then exits: [`Netns::run`] for blocking code, [`Netns::run_async`] for
//! async code (a current-thread runtime on that thread). Child processes enter the namespace
//! between `fork` and `exec` ([`Netns::enter_on_exec`]) from a file opened beforehand.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `f_type` of a namespace file (`NSFS_MAGIC` in linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Serializes the mount-table changes of [`Netns::ensure`] within this process (iproute2 has the
/// same unlocked sequence across processes; a lost race only stacks an extra bind mount).
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Where something lives: the daemon's own namespace, or a named one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum At {
    /// The daemon's own (underlay) namespace.
    Host,
    /// A named namespace.
    Netns(String),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Host => f.write_str("the daemon's namespace"),
            At::Netns(name) => f.write_str(name),
        }
    }
}

/// An open handle on a network namespace. The namespace stays alive while the handle is open,
/// even if its name is removed.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// The path of the named namespace `name` (whether or not it exists).
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// Opens the namespace `name`, creating it if absent. Idempotent.
    pub fn ensure(name: &str) -> Result<Netns> {
        Netns::ensure_in(Path::new(NETNS_RUN_DIR), name)
    }

    /// Creates the namespace `name`; fails if it exists.
    pub fn create(name: &str) -> Result<Netns> {
        Netns::create_in(Path::new(NETNS_RUN_DIR), name)
    }

    /// Opens the existing namespace `name`. `NotFound` if absent; `EINVAL` if the file exists
    /// but no namespace is mounted on it.
    pub fn open(name: &str) -> Result<Netns> {
        Netns::open_in(Path::new(NETNS_RUN_DIR), name)
    }

    /// Removes the name `name`. The namespace itself goes away once no process, open handle or
    /// mount holds it. Absent is success.
    pub fn remove(name: &str) -> Result<()> {
        Netns::remove_in(Path::new(NETNS_RUN_DIR), name)
    }

    /// Names of all named namespaces, sorted.
    pub fn list() -> Result<Vec<String>> {
        Netns::list_in(Path::new(NETNS_RUN_DIR))
    }

    // The `_in` variants keep namespaces in another directory, as iproute2 does in
    // /run/netns: a daemon that keeps its namespaces under its own state directory does not
    // collide with another daemon on the same machine (the lab runs several per machine).

    /// [`Netns::ensure`] in directory `dir` instead of `/run/netns`.
    pub fn ensure_in(dir: &Path, name: &str) -> Result<Netns> {
        check_name(name)?;
        match Netns::open_in(dir, name) {
            Ok(ns) => return Ok(ns),
            Err(Error::Netns { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            // A file left by a crash between creating the file and mounting the namespace.
            Err(Error::Netns { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                Netns::remove_in(dir, name)?;
            }
            Err(e) => return Err(e),
        }
        Netns::create_in(dir, name)
    }

    /// [`Netns::create`] in directory `dir`.
    pub fn create_in(dir: &Path, name: &str) -> Result<Netns> {
        check_name(name)?;
        let path = dir.join(name);
        let _guard = MOUNT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        prepare_dir(dir)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|source| Error::Netns {
                op: "create",
                name: name.to_owned(),
                source,
            })?;

        // A fresh thread unshares its network namespace and bind-mounts it on the file; the
        // thread then exits, so no other code ever runs in the wrong namespace.
        let mounted = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("netns-create-{name}"))
                .spawn_scoped(s, || -> nix::Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                })
                .map(|h| h.join())
        });
        let failure = match mounted {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(errno))) => Some(Error::Netns {
                op: "create",
                name: name.to_owned(),
                source: errno.into(),
            }),
            Ok(Err(_panic)) => Some(Error::NetnsThread {
                name: name.to_owned(),
                reason: "panicked while creating the namespace".to_owned(),
            }),
            Err(e) => Some(Error::NetnsThread {
                name: name.to_owned(),
                reason: e.to_string(),
            }),
        };
        if let Some(e) = failure {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Netns::open_in(dir, name)
    }

    /// [`Netns::open`] in directory `dir`.
    pub fn open_in(dir: &Path, name: &str) -> Result<Netns> {
        check_name(name)?;
        let file = open_nsfs(&dir.join(name)).map_err(|source| Error::Netns {
            op: "open",
            name: name.to_owned(),
            source,
        })?;
        Ok(Netns {
            name: name.to_owned(),
            file,
        })
    }

    /// [`Netns::remove`] in directory `dir`.
    pub fn remove_in(dir: &Path, name: &str) -> Result<()> {
        check_name(name)?;
        let path = dir.join(name);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-created name); ENOENT: already gone.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => {
                return Err(Error::Netns {
                    op: "unmount",
                    name: name.to_owned(),
                    source: errno.into(),
                });
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Netns {
                op: "remove",
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// [`Netns::list`] of directory `dir`.
    pub fn list_in(dir: &Path) -> Result<Vec<String>> {
        let entries = match fs::read_dir(dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Path {
                    op: "list",
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Path {
                op: "list",
                path: dir.to_owned(),
                source,
            })?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The namespace of the calling thread (named `current` in messages).
    pub fn current() -> Result<Netns> {
        Netns::open_path("current", Path::new("/proc/thread-self/ns/net"))
    }

    /// Opens a namespace file anywhere (`/proc/PID/ns/net`, a bind mount...), naming it `name`
    /// in messages.
    pub fn open_path(name: &str, path: &Path) -> Result<Netns> {
        let file = open_nsfs(path).map_err(|source| Error::Netns {
            op: "open",
            name: name.to_owned(),
            source,
        })?;
        Ok(Netns {
            name: name.to_owned(),
            file,
        })
    }

    /// Whether a namespace named `name` exists.
    pub fn exists(name: &str) -> bool {
        Netns::open(name).is_ok()
    }

    /// The name this handle was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        let file = self.file.try_clone().map_err(|source| Error::Netns {
            op: "duplicate handle of",
            name: self.name.clone(),
            source,
        })?;
        Ok(Netns {
            name: self.name.clone(),
            file,
        })
    }

    /// Identity of the namespace: (device, inode) of its nsfs file. Two handles are the same
    /// namespace exactly when their ids are equal.
    pub fn id(&self) -> Result<(u64, u64)> {
        let meta = self.file.metadata().map_err(|source| Error::Netns {
            op: "stat",
            name: self.name.clone(),
            source,
        })?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Pids of the processes whose (main thread's) network namespace is this one, excluding the
    /// calling process.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let id = self.id()?;
        let me = std::process::id() as i32;
        let proc = fs::read_dir("/proc").map_err(|source| Error::Path {
            op: "list",
            path: "/proc".into(),
            source,
        })?;
        let mut pids = Vec::new();
        for entry in proc.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            // Processes come and go while we look; zombies have no namespace: skip errors.
            if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net"))
                && (meta.dev(), meta.ino()) == id
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its result.
    /// Sockets `f` creates belong to this namespace. A panic in `f` is resumed in the caller.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let spawned = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || -> Result<T> {
                    self.enter_current_thread()?;
                    Ok(f())
                })
                .map(|h| h.join())
        });
        match spawned {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => Err(Error::NetnsThread {
                name: self.name.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Runs the async closure `f` to completion on a current-thread tokio runtime, on a new OS
    /// thread that has entered this namespace. The future need not be `Send`.
    pub fn run_async<T, F>(&self, f: F) -> Result<T>
    where
        F: AsyncFnOnce() -> T + Send,
        T: Send,
    {
        self.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Netns {
                    op: "start a runtime in",
                    name: self.name.clone(),
                    source,
                })?;
            Ok(runtime.block_on(f()))
        })?
    }

    /// Makes `cmd` enter this namespace between `fork` and `exec`. The namespace file is
    /// duplicated now (close-on-exec), so the child enters it even if `self` is dropped before
    /// the spawn.
    pub fn enter_on_exec(&self, cmd: &mut Command) -> Result<()> {
        let fd = self.try_clone()?.file;
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe work is allowed: it makes one `setns` syscall on an fd opened
        // before the fork and builds an `io::Error` from a raw errno (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Ok(())
    }

    /// Moves the calling thread into this namespace. Only for threads that exit afterwards (see
    /// the module doc): prefer [`Netns::run`].
    fn enter_current_thread(&self) -> Result<()> {
        nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Netns {
            op: "enter",
            name: self.name.clone(),
            source: errno.into(),
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A namespace with a unique name, removed when dropped (also while unwinding from a panic):
/// for tests. The name is `md<pid>x<n>-<tag>`: unique per process and, by the pid, per run, so
/// a crashed run's leftovers are recognisable (the lab's stale-leftover cleaner removes names
/// `m<letters><pid>x<n>-*` whose pid is dead). Processes still inside keep the namespace
/// itself alive until they exit; only the name goes.
#[derive(Debug)]
pub struct TempNetns {
    ns: Netns,
}

impl TempNetns {
    /// Creates a fresh namespace `md<pid>x<n>-<tag>`.
    pub fn new(tag: &str) -> Result<TempNetns> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "md{}x{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Ok(TempNetns {
            ns: Netns::create(&name)?,
        })
    }
}

impl std::ops::Deref for TempNetns {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        if let Err(e) = Netns::remove(self.ns.name()) {
            tracing::warn!(netns = self.ns.name(), error = %e, "cannot remove temporary namespace");
        }
    }
}

/// A name usable as a file under `/run/netns`.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else if name == "." || name == ".." {
        "not a file name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidNetnsName {
        name: name.to_owned(),
        reason,
    })
}

/// Opens `path` and checks that it is a namespace file (EINVAL if not).
fn open_nsfs(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    let stat = nix::sys::statfs::fstatfs(&file).map_err(io::Error::from)?;
    if stat.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

/// Creates `dir` (`/run/netns`) as a shared mount point, as iproute2 does, so namespace mounts
/// made in it propagate to mount namespaces created later (and `ip netns` finds them).
fn prepare_dir(dir: &Path) -> Result<()> {
    let path_err = |op, source| Error::Path {
        op,
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| path_err("create", e))?;
    let make_shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then retry.
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| path_err("bind-mount", e.into()))?;
            make_shared().map_err(|e| path_err("make shared", e.into()))
        }
        Err(e) => Err(path_err("make shared", e.into())),
    }
}

#[cfg(test)]
mod tests {
    //! These tests need root (CAP_SYS_ADMIN) and create namespaces named `md<pid>x<n>-...` / `mdn<pid>x<n>-...`.

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique name for tests that manage the namespace by name themselves.
    fn unique(tag: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "mdn{}x{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Removes the name when dropped, also on panic.
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Netns::remove(&self.0);
        }
    }

    #[test]
    fn ensure_creates_once_and_is_listed() {
        let name = unique("a");
        let _guard = Guard(name.clone());
        let first = Netns::ensure(&name).unwrap();
        let second = Netns::ensure(&name).unwrap();
        assert_eq!(first.id().unwrap(), second.id().unwrap());
        assert!(Netns::list().unwrap().contains(&name));
        assert_ne!(first.id().unwrap(), Netns::current().unwrap().id().unwrap());
        assert!(matches!(
            Netns::create(&name),
            Err(Error::Netns { op: "create", .. })
        ));
    }

    #[test]
    fn remove_is_idempotent() {
        let name = unique("b");
        let _guard = Guard(name.clone());
        Netns::ensure(&name).unwrap();
        Netns::remove(&name).unwrap();
        Netns::remove(&name).unwrap();
        assert!(!Netns::exists(&name));
        assert!(!Netns::path_of(&name).exists());
    }

    #[test]
    fn temp_netns_is_removed_on_drop_and_on_panic() {
        let ns = TempNetns::new("t").unwrap();
        let name = ns.name().to_owned();
        assert!(Netns::exists(&name));
        drop(ns);
        assert!(!Netns::exists(&name));

        let name = std::sync::Mutex::new(String::new());
        let result = std::panic::catch_unwind(|| {
            let ns = TempNetns::new("p").unwrap();
            *name.lock().unwrap() = ns.name().to_owned();
            panic!("failing test");
        });
        assert!(result.is_err());
        assert!(!Netns::exists(&name.into_inner().unwrap()));
    }

    #[test]
    fn run_enters_only_the_worker_thread() {
        let ns = TempNetns::new("c").unwrap();
        let outside = Netns::current().unwrap().id().unwrap();
        let inside = ns.run(|| Netns::current().unwrap().id().unwrap()).unwrap();
        assert_eq!(inside, ns.id().unwrap());
        assert_eq!(Netns::current().unwrap().id().unwrap(), outside);
        let inside_async = ns
            .run_async(async || Netns::current().unwrap().id().unwrap())
            .unwrap();
        assert_eq!(inside_async, ns.id().unwrap());
    }

    #[test]
    fn child_process_runs_inside_and_is_found_by_pids() {
        let ns = TempNetns::new("d").unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        ns.enter_on_exec(&mut cmd).unwrap();
        let mut child = cmd.spawn().unwrap();
        let pids = ns.pids().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(pids, vec![child.id() as i32]);
    }

    #[test]
    fn iproute2_sees_ours_and_we_see_its() {
        let ours = unique("e");
        let theirs = unique("f");
        let _guards = (Guard(ours.clone()), Guard(theirs.clone()));
        let ns = Netns::ensure(&ours).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &ours, "readlink", "/proc/self/ns/net"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("net:[{}]", ns.id().unwrap().1)
        );

        let status = Command::new("ip")
            .args(["netns", "add", &theirs])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(Netns::list().unwrap().contains(&theirs));
        Netns::open(&theirs).unwrap();
        Netns::remove(&theirs).unwrap();
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&listed.stdout).contains(&theirs));
    }

    #[test]
    fn namespaces_can_live_in_another_directory() {
        let dir = std::env::temp_dir().join(unique("dir"));
        let ns = Netns::ensure_in(&dir, "task1").unwrap();
        assert_eq!(Netns::list_in(&dir).unwrap(), ["task1"]);
        assert_eq!(
            Netns::open_in(&dir, "task1").unwrap().id().unwrap(),
            ns.id().unwrap()
        );
        assert!(
            !Netns::exists("task1")
                || Netns::open("task1").unwrap().id().unwrap() != ns.id().unwrap()
        );
        Netns::remove_in(&dir, "task1").unwrap();
        Netns::remove_in(&dir, "task1").unwrap();
        assert!(Netns::list_in(&dir).unwrap().is_empty());
        // The directory was made a (shared) mount point of its own.
        nix::mount::umount2(&dir, MntFlags::MNT_DETACH).unwrap();
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "a/b", "..", &"x".repeat(256)] {
            assert!(
                matches!(Netns::ensure(bad), Err(Error::InvalidNetnsName { .. })),
                "{bad:?}"
            );
        }
    }
}
