//! One host of a lab ([`Host`]): a network namespace plugged into the switch, a directory, and
//! at most one daemon at a time, which it starts, kills, restarts and stops; the CLI and any
//! command run inside it. `Shared` is what every host of a lab (and the lab) holds.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mesh_dataplane::link::{self, IfName};
use mesh_dataplane::netns::Netns;
use nix::sys::signal::Signal;

use crate::diag;
use crate::process::{
    CmdOutput, Spawner, argv_of, detach, kill_tree, run_with_timeout, send_signal,
};
use crate::switch::host_ip;
use crate::wait::{scaled, wait_for};

/// TCP port of the control plane (`mesh init`/`join` use it).
pub const CONTROL_PORT: u16 = 2377;
/// Longest unix socket path the kernel takes (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What all hosts of a lab share; the lab holds it too.
pub(crate) struct Shared {
    pub(crate) prefix: String,
    pub(crate) dir: PathBuf,
    pub(crate) binary: Option<PathBuf>,
    pub(crate) switch: Netns,
    pub(crate) detached: bool,
    pub(crate) command_timeout: Duration,
    pub(crate) spawner: Spawner,
    /// Set once diagnostics were printed for a failure, so a panic does not print them twice.
    pub(crate) dumped: AtomicBool,
}

impl Shared {
    pub(crate) fn binary(&self) -> Result<&Path> {
        self.binary
            .as_deref()
            .context("this lab was built without a mesh binary (LabOptions::binary)")
    }

    pub(crate) fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
}

/// One host of a lab: a network namespace with `eth0` on the switch, a directory, and at
/// most one daemon at a time.
pub struct Host {
    pub(crate) name: String,
    /// 1-based position in the lab.
    pub(crate) number: usize,
    pub(crate) ip: Ipv4Addr,
    pub(crate) netns: Netns,
    /// Its veth end in the switch namespace.
    pub(crate) port: IfName,
    dir: PathBuf,
    shared: Arc<Shared>,
    daemon: Mutex<Option<Child>>,
    /// Background processes started with [`Host::spawn`].
    helpers: Mutex<Vec<Child>>,
}

impl Host {
    pub(crate) fn create(shared: &Arc<Shared>, number: usize, daemon_config: &str) -> Result<Host> {
        let name = format!("node{number}");
        let dir = shared.dir.join(&name);
        fs::create_dir_all(dir.join("state"))
            .with_context(|| format!("create {}", dir.display()))?;
        let host = Host {
            netns: Netns::ensure(&format!("{}-{name}", shared.prefix))?,
            port: IfName::new(format!("p{number}"))?,
            ip: host_ip(number),
            number,
            name,
            dir,
            shared: Arc::clone(shared),
            daemon: Mutex::new(None),
            helpers: Mutex::new(Vec::new()),
        };
        let socket = host.socket_path();
        ensure!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter lab directory",
            socket.display()
        );
        host.write_config(daemon_config)?;
        Ok(host)
    }

    /// `node1`, `node2`...: also the daemon's `--hostname`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 1-based position in the lab.
    pub fn number(&self) -> usize {
        self.number
    }

    /// Address of `eth0` (10.77.0.10 + number).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `ip:2377`, what `mesh join` is given.
    pub fn control_addr(&self) -> String {
        format!("{}:{CONTROL_PORT}", self.ip)
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The host's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's `--state-dir`, kept across restarts.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The daemon's `--socket`.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("mesh.sock")
    }

    /// `unix://<socket>`: the CLI's `--host` / `MESH_HOST`.
    pub fn mesh_host(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// The daemon's `--config`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("daemon.toml")
    }

    /// Where the daemon's stdout and stderr go (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Holds the pid of the running daemon.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }

    /// Replaces the daemon's config file (takes effect at the next start).
    pub fn write_config(&self, toml: &str) -> Result<()> {
        fs::write(self.config_path(), toml)
            .with_context(|| format!("write {}", self.config_path().display()))
    }

    /// The argv the daemon is started with.
    pub fn daemon_command(&self) -> Result<Command> {
        let mut cmd = Command::new(self.shared.binary()?);
        cmd.arg("daemon")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket_path())
            .arg("--config")
            .arg(self.config_path())
            .arg("--hostname")
            .arg(&self.name)
            // The daemon's own namespaces (overlay and task sandboxes) live under
            // the lab's prefix too, so the lab's cleanup finds them.
            .arg("--netns-prefix")
            .arg(format!("{}-{}-", self.shared.prefix, self.name));
        Ok(cmd)
    }

    /// Starts the daemon inside the host's namespace, with stdout and stderr appended to
    /// [`Host::log_path`]. Fails if it is already running.
    pub fn start(&self) -> Result<()> {
        self.start_with(&[])
    }

    /// [`Host::start`] with `extra` daemon flags (`--force-new-cluster`), for this start only.
    pub fn start_with(&self, extra: &[&str]) -> Result<()> {
        let mut daemon = self.lock_daemon();
        if let Some(child) = daemon.as_mut()
            && child.try_wait()?.is_none()
        {
            bail!(
                "the daemon on {} is already running (pid {})",
                self.name,
                child.id()
            );
        }
        fs::create_dir_all(self.state_dir())?;
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = self.daemon_command()?;
        cmd.args(extra);
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            log,
            "===== mesh-lab {}: {} (unix time {})",
            self.name,
            argv_of(&cmd).join(" "),
            since_epoch.as_secs()
        )?;
        cmd.current_dir(&self.dir)
            .env_remove("MESH_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.netns.enter_on_exec(&mut cmd)?;
        let child = if self.shared.detached {
            detach(&mut cmd);
            cmd.spawn()
                .with_context(|| format!("start the daemon on {}", self.name))?
        } else {
            self.shared
                .spawner
                .spawn(cmd)
                .with_context(|| format!("start the daemon on {}", self.name))?
        };
        fs::write(self.pid_path(), format!("{}\n", child.id()))?;
        *daemon = Some(child);
        Ok(())
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and reaps it. Not running is fine.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut child) = self.lock_daemon().take() {
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reap the daemon on {}", self.name))?;
        }
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }

    /// Kills the daemon and starts it again on the same state directory.
    pub fn restart(&self) -> Result<()> {
        self.kill()?;
        self.start()
    }

    /// Graceful stop: SIGTERM, then waits up to `timeout` for the daemon to exit. If it does
    /// not, it is killed and this fails.
    pub fn stop(&self, timeout: Duration) -> Result<ExitStatus> {
        let mut daemon = self.lock_daemon();
        let Some(child) = daemon.as_mut() else {
            bail!("no daemon was started on {}", self.name);
        };
        send_signal(child.id(), Signal::SIGTERM)?;
        let exited = wait_for(
            &format!("the daemon on {} to exit after SIGTERM", self.name),
            timeout,
            || Ok(child.try_wait()?),
        );
        let status = exited.map_err(|e| {
            let _ = child.kill();
            let _ = child.wait();
            e.context(format!(
                "the daemon on {} did not exit within {timeout:?} of SIGTERM: killed",
                self.name
            ))
        });
        daemon.take();
        let _ = fs::remove_file(self.pid_path());
        status
    }

    /// Whether the daemon is running.
    pub fn is_running(&self) -> bool {
        self.daemon_pid().is_some()
    }

    /// The daemon's pid while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        let mut daemon = self.lock_daemon();
        let child = daemon.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// How the daemon ended, if it was started and has exited on its own (a kill through
    /// [`Host::kill`] or [`Host::stop`] forgets the daemon).
    pub fn daemon_exit_status(&self) -> Result<Option<ExitStatus>> {
        match self.lock_daemon().as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    pub(crate) fn daemon_state(&self) -> String {
        let mut daemon = self.lock_daemon();
        match daemon.as_mut().map(|c| (c.id(), c.try_wait())) {
            None => "not running".to_owned(),
            Some((pid, Ok(None))) => format!("running, pid {pid}"),
            Some((pid, Ok(Some(status)))) => format!("pid {pid} exited: {status}"),
            Some((pid, Err(e))) => format!("pid {pid}: {e}"),
        }
    }

    /// Cuts the host off the switch: its port on the bridge goes down (so does the carrier of
    /// its `eth0`). The daemon keeps running.
    pub fn cut(&self) -> Result<()> {
        link::in_netns(&self.shared.switch, async |nl| {
            nl.set_down(&self.port).await
        })
        .with_context(|| format!("cut {} off the switch", self.name))
    }

    /// Undoes [`Host::cut`].
    pub fn heal(&self) -> Result<()> {
        link::in_netns(&self.shared.switch, async |nl| nl.set_up(&self.port).await)
            .with_context(|| format!("reconnect {} to the switch", self.name))
    }

    /// Runs `mesh --host unix://SOCK ARGS...` inside the host (`MESH_HOST` is set too), with
    /// the lab's command timeout.
    pub fn cli<I, S>(&self, args: I) -> Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cli_with_timeout(args, self.shared.command_timeout)
    }

    /// [`Host::cli`] with its own timeout.
    pub fn cli_with_timeout<I, S>(&self, args: I, timeout: Duration) -> Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(self.shared.binary()?);
        cmd.arg("--host").arg(self.mesh_host()).args(args);
        self.prepare(&mut cmd)?;
        run_with_timeout(cmd, scaled(timeout))
    }

    /// Runs `program ARGS...` inside the host with `MESH_HOST` set and the lab's `bin`
    /// directory (holding `mesh`) first on `PATH`, with the lab's command timeout.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        run_with_timeout(cmd, scaled(self.shared.command_timeout))
    }

    /// A command that will run inside the host, with the environment of [`Host::exec`].
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(program);
        self.prepare(&mut cmd)?;
        Ok(cmd)
    }

    /// Starts `cmd` in the background inside the host (a server for a test, say). It is
    /// killed with the lab, and when the process driving the lab dies.
    pub fn spawn(&self, mut cmd: Command) -> Result<u32> {
        self.netns.enter_on_exec(&mut cmd)?;
        let child = self.shared.spawner.spawn(cmd)?;
        let pid = child.id();
        self.helpers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Runs `f` on a thread inside the host's namespace: sockets it opens are the host's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        Ok(self.netns.run(f)?)
    }

    /// The last `lines` lines of the daemon log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        diag::tail(&log, lines).to_owned()
    }

    fn prepare(&self, cmd: &mut Command) -> Result<()> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.shared.bin_dir()).chain(std::env::split_paths(&path)),
        )?;
        cmd.env("MESH_HOST", self.mesh_host())
            .env("PATH", path)
            .current_dir(&self.dir);
        self.netns.enter_on_exec(cmd)?;
        Ok(())
    }

    /// Kills and reaps the daemon, the helpers and every descendant of theirs, wherever they
    /// are (a task in a namespace of its own is found this way). For teardown: errors are moot.
    pub(crate) fn kill_all(&self) {
        let daemon = self.lock_daemon().take();
        let helpers = std::mem::take(&mut *self.helpers.lock().unwrap_or_else(|p| p.into_inner()));
        for mut child in daemon.into_iter().chain(helpers) {
            kill_tree(child.id());
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.pid_path());
    }

    fn lock_daemon(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves a consistent Option: recover it.
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }
}
