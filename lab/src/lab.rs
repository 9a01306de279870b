//! A lab: N hosts on one switch, each host a network namespace running its own `mesh` daemon.
//!
//! ```text
//!   <prefix>-sw   (switch namespace)           <prefix>-node1 (host namespace)
//!   br0 ── p1 ══════════ veth ═══════════════  eth0 10.77.0.11/24, lo
//!       ── p2 ══════════ veth ═══════════════  eth0 10.77.0.12/24 in <prefix>-node2
//!       ...
//! ```
//! Every link is created directly inside its namespace (nothing in the root namespace), and
//! names are unique per lab (prefix `mt<pid>x<n>`), so labs run in parallel without colliding.
//! Files live in the lab directory (`/tmp/mesh-lab/<prefix>` by default):
//! `bin/mesh` (a link to the binary) and per host `nodeN/{daemon.toml, daemon.log,
//! daemon.pid, mesh.sock, state/}`.
//!
//! Dropping the lab (also while unwinding from a panic) kills its processes, removes its
//! namespaces and its directory; a *detached* lab (`mesh sandbox up`) leaves everything up.
//! A lab handle may be used from any thread: daemons are spawned by the lab's own spawner
//! thread (see [`crate::process`]).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mesh_dataplane::link::{self, IfName, Ipv4Cidr};
use mesh_dataplane::netns::Netns;
use nix::sys::signal::Signal;

use crate::cleanup::{lab_root, remove_lab, remove_stale_labs, unique_prefix};
use crate::diag::{self, LOG_TAIL_LINES};
use crate::process::{
    CmdOutput, Spawner, argv_of, detach, kill_tree, run_with_timeout, send_signal,
};
use crate::wait::{IntoPoll, Poll, wait_for_with};

/// TCP port of the control plane (`mesh init`/`join` use it).
pub const CONTROL_PORT: u16 = 2377;
/// Prefix length of the hosts' underlay subnet 10.77.0.0/24.
pub const SUBNET_PREFIX_LEN: u8 = 24;
/// The most hosts a lab holds (10.77.0.11 to 10.77.0.250).
pub const MAX_HOSTS: usize = 240;
/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";
/// Each host's interface to the switch.
const HOST_IFNAME: &str = "eth0";
/// Longest unix socket path the kernel takes (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Connects `ns` to the switch's bridge: `eth0` in `ns` with `ip`/24, its peer `port` in the
/// switch namespace; `lo` up in `ns`.
fn plug(switch: &Netns, ns: &Netns, port: &IfName, ip: Ipv4Addr) -> Result<()> {
    let bridge = IfName::new(BRIDGE)?;
    let eth0 = IfName::new(HOST_IFNAME)?;
    let lo = IfName::new("lo")?;
    link::in_netns(switch, async |nl| {
        nl.ensure_veth_pair(&eth0, ns, port, switch).await?;
        nl.set_controller(port, &bridge).await?;
        nl.set_up(port).await
    })?;
    let cidr = Ipv4Cidr::new(ip, SUBNET_PREFIX_LEN)?;
    link::in_netns(ns, async |nl| {
        nl.set_up(&lo).await?;
        nl.ensure_address(&eth0, cidr).await?;
        nl.set_up(&eth0).await
    })?;
    Ok(())
}

/// The underlay address of host `n` (1-based): node1 is 10.77.0.11.
pub fn host_ip(n: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_HOSTS).contains(&n),
        "host number {n} outside 1..={MAX_HOSTS}"
    );
    Ipv4Addr::new(10, 77, 0, 10 + n as u8)
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of hosts, named `node1`..`nodeN`.
    pub hosts: usize,
    /// Prefix of every name; `None` picks a unique `mt<pid>x<n>`.
    pub prefix: Option<String>,
    /// The lab's directory; `None` is `<lab root>/<prefix>` (lab root: `MESH_LAB_DIR` or
    /// `/tmp/mesh-lab`).
    pub dir: Option<PathBuf>,
    /// The `mesh` binary, for daemons and CLI commands.
    pub binary: Option<PathBuf>,
    /// Contents of every host's daemon config file (TOML), written at creation.
    pub daemon_config: String,
    /// Daemons start their own session and survive this process; dropping the lab removes
    /// nothing (`mesh sandbox`).
    pub detached: bool,
    /// Time allowed to one CLI or exec command before it is killed.
    pub command_timeout: Duration,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            hosts: 3,
            prefix: None,
            dir: None,
            binary: None,
            daemon_config: String::new(),
            detached: false,
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// What all hosts of a lab share.
struct Shared {
    prefix: String,
    dir: PathBuf,
    binary: Option<PathBuf>,
    switch: Netns,
    detached: bool,
    command_timeout: Duration,
    spawner: Spawner,
    /// Set once diagnostics were printed for a failure, so a panic does not print them twice.
    dumped: AtomicBool,
}

impl Shared {
    fn binary(&self) -> Result<&Path> {
        self.binary
            .as_deref()
            .context("this lab was built without a mesh binary (LabOptions::binary)")
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
}

/// A running lab. See the module doc.
pub struct Lab {
    shared: Arc<Shared>,
    hosts: Vec<Host>,
}

impl Lab {
    /// Removes leftovers of crashed runs, then builds the switch and the hosts. On failure
    /// everything built so far is removed.
    pub fn new(opts: LabOptions) -> Result<Lab> {
        ensure!(
            (1..=MAX_HOSTS).contains(&opts.hosts),
            "a lab has 1 to {MAX_HOSTS} hosts, not {}",
            opts.hosts
        );
        let root = lab_root();
        // Not fatal: a leftover that cannot be removed does not stop this lab.
        if let Err(e) = remove_stale_labs(&root) {
            eprintln!("warning: removing leftovers of crashed labs: {e:#}");
        }
        let prefix = opts.prefix.clone().unwrap_or_else(unique_prefix);
        ensure!(
            !prefix.is_empty() && !prefix.contains(['/', '\0']),
            "invalid lab prefix {prefix:?}"
        );
        let dir = opts.dir.clone().unwrap_or_else(|| root.join(&prefix));
        let dash = format!("{prefix}-");
        if let Some(taken) = Netns::list()?.into_iter().find(|n| n.starts_with(&dash)) {
            bail!("lab {prefix} already exists (network namespace {taken})");
        }
        Lab::build(opts, prefix.clone(), dir.clone()).map_err(|e| {
            match remove_lab(&prefix, Some(&dir)) {
                Ok(()) => e,
                Err(cleanup) => e.context(format!("(cleanup also failed: {cleanup:#})")),
            }
        })
    }

    fn build(opts: LabOptions, prefix: String, dir: PathBuf) -> Result<Lab> {
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolve {}", dir.display()))?;
        let switch = Netns::ensure(&format!("{prefix}-sw"))?;
        let binary = match &opts.binary {
            Some(b) => Some(
                b.canonicalize()
                    .with_context(|| format!("mesh binary {}", b.display()))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            spawner: Spawner::new(&prefix)?,
            prefix,
            dir,
            binary,
            switch,
            detached: opts.detached,
            command_timeout: opts.command_timeout,
            dumped: AtomicBool::new(false),
        });
        if let Some(binary) = &shared.binary {
            let bin_dir = shared.bin_dir();
            fs::create_dir_all(&bin_dir)
                .with_context(|| format!("create {}", bin_dir.display()))?;
            let _ = fs::remove_file(bin_dir.join("mesh"));
            std::os::unix::fs::symlink(binary, bin_dir.join("mesh"))
                .with_context(|| format!("link {}/mesh", bin_dir.display()))?;
        }

        let mut hosts = Vec::with_capacity(opts.hosts);
        for n in 1..=opts.hosts {
            hosts.push(Host::create(&shared, n, &opts.daemon_config)?);
        }
        let bridge = IfName::new(BRIDGE)?;
        let lo = IfName::new("lo")?;
        link::in_netns(&shared.switch, async |nl| {
            nl.set_up(&lo).await?;
            nl.ensure_bridge(&bridge).await?;
            nl.set_up(&bridge).await
        })
        .context("set up the switch")?;
        for host in &hosts {
            plug(&shared.switch, &host.netns, &host.port, host.ip)
                .with_context(|| format!("plug {} into the switch", host.name))?;
        }
        Ok(Lab { shared, hosts })
    }

    /// All hosts, node1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `n`, 1-based (`lab.host(1)` is node1). Panics if there is no such host.
    pub fn host(&self, n: usize) -> &Host {
        match n.checked_sub(1).and_then(|i| self.hosts.get(i)) {
            Some(host) => host,
            None => panic!(
                "lab {} has hosts 1..={}, not {n}",
                self.shared.prefix,
                self.hosts.len()
            ),
        }
    }

    /// The host named `name` (`node2`).
    pub fn host_named(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The prefix of the lab's names.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The directory holding a `mesh` link to the binary (put on `PATH` by [`Host::exec`]).
    pub fn bin_dir(&self) -> PathBuf {
        self.shared.bin_dir()
    }

    /// The switch namespace.
    pub fn switch(&self) -> &Netns {
        &self.shared.switch
    }

    /// An outside client on the underlay: a namespace `<prefix>-client<n>` on the switch that
    /// runs no daemon, with address 10.77.0.(250 + n)/24 (`n` in 1..=4). It is removed with
    /// the lab, like the hosts.
    pub fn add_client(&self, n: u8) -> Result<(Netns, Ipv4Addr)> {
        anyhow::ensure!((1..=4).contains(&n), "client number {n} outside 1..=4");
        let ip = Ipv4Addr::new(10, 77, 0, 250 + n);
        let netns = Netns::create(&format!("{}-client{n}", self.shared.prefix))?;
        let port = IfName::new(format!("c{n}"))?;
        plug(&self.shared.switch, &netns, &port, ip).context("plug the client into the switch")?;
        Ok((netns, ip))
    }

    /// Starts the daemon on every host.
    pub fn start_all(&self) -> Result<()> {
        self.hosts.iter().try_for_each(Host::start)
    }

    /// Waits until the daemon of `host` answers the CLI (`mesh info`); fails at once if it
    /// exits.
    pub fn wait_ready(&self, host: &Host, deadline: Duration) -> Result<()> {
        self.wait_for(
            &format!("the daemon on {} to answer", host.name),
            deadline,
            || {
                if let Some(status) = host.daemon_exit_status()? {
                    return Ok(Poll::Fail(format!("the daemon exited ({status})")));
                }
                // A short timeout: a daemon that accepts but hangs must not eat the deadline.
                let out = host.cli_with_timeout(["info"], Duration::from_secs(5))?;
                Ok(if out.success() {
                    Poll::Ready(())
                } else {
                    Poll::Pending(out.to_string())
                })
            },
        )
    }

    /// [`Lab::wait_ready`] for every host.
    pub fn wait_all_ready(&self, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        for host in &self.hosts {
            self.wait_ready(host, deadline.saturating_sub(start.elapsed()))?;
        }
        Ok(())
    }

    /// Forms a cluster with the CLI: `init` on node1, then `join` on the others, the first
    /// `managers` hosts (node1 included) as managers and the rest as workers.
    pub fn form_cluster(&self, managers: usize) -> Result<()> {
        ensure!(
            (1..=self.hosts.len()).contains(&managers),
            "managers must be 1..={}, not {managers}",
            self.hosts.len()
        );
        let leader = self.host(1);
        leader
            .cli(["init", "--advertise-addr", &leader.ip.to_string()])?
            .ok_stdout()
            .context("mesh init on node1")?;
        let token = |role: &str| -> Result<String> {
            let out = leader.cli(["join-token", role, "-q"])?.ok_stdout()?;
            let token = out.trim().to_owned();
            ensure!(
                !token.is_empty(),
                "`mesh join-token {role} -q` printed nothing"
            );
            Ok(token)
        };
        let worker_token = token("worker")?;
        let manager_token = if managers > 1 {
            token("manager")?
        } else {
            String::new()
        };
        let remote = format!("{}:{CONTROL_PORT}", leader.ip);
        for host in &self.hosts[1..] {
            let token = if host.number <= managers {
                &manager_token
            } else {
                &worker_token
            };
            host.cli([
                "join",
                "--token",
                token,
                "--advertise-addr",
                &host.ip.to_string(),
                &remote,
            ])?
            .ok_stdout()
            .with_context(|| format!("mesh join on {}", host.name))?;
        }
        Ok(())
    }

    /// Polls `check` until ready (see [`crate::wait`]); on timeout the error carries the
    /// last observation and [`Lab::diagnostics`].
    pub fn wait_for<T, R: IntoPoll<T>>(
        &self,
        what: &str,
        deadline: Duration,
        check: impl FnMut() -> Result<R>,
    ) -> Result<T> {
        wait_for_with(what, deadline, check, || {
            self.shared.dumped.store(true, Ordering::Relaxed);
            self.diagnostics()
        })
    }

    /// Everything worth seeing when something went wrong: the kernel state of every
    /// namespace, the tail of every daemon log and `mesh node ls` where a daemon answers.
    pub fn diagnostics(&self) -> String {
        let shared = &self.shared;
        let mut out = format!(
            "===== diagnostics of lab {} ({})\n===== switch {}\n",
            shared.prefix,
            shared.dir.display(),
            shared.switch.name()
        );
        out.push_str("--- bridge link\n");
        out.push_str(&diag::run_in(&shared.switch, &["bridge", "link"]));
        out.push_str(&diag::netns_report(&shared.switch));
        for host in &self.hosts {
            out.push_str(&format!(
                "===== {} ({}, netns {}, daemon {})\n",
                host.name,
                host.ip,
                host.netns.name(),
                host.daemon_state()
            ));
            out.push_str(&diag::netns_report(&host.netns));
            let log = fs::read_to_string(host.log_path()).unwrap_or_default();
            out.push_str(&format!(
                "--- last {LOG_TAIL_LINES} lines of {}\n{}\n",
                host.log_path().display(),
                diag::tail(&log, LOG_TAIL_LINES).trim_end()
            ));
            if host.is_running() && shared.binary.is_some() {
                out.push_str("--- mesh node ls\n");
                match host.cli_with_timeout(["node", "ls"], Duration::from_secs(5)) {
                    Ok(o) => out.push_str(&format!("{o}\n")),
                    Err(e) => out.push_str(&format!("({e:#})\n")),
                }
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.shared.detached {
            return;
        }
        if std::thread::panicking() && !self.shared.dumped.load(Ordering::Relaxed) {
            eprintln!("{}", self.diagnostics());
        }
        for host in &self.hosts {
            host.kill_all();
        }
        let keep = std::env::var_os("MESH_LAB_KEEP").is_some();
        let dir = (!keep).then_some(self.shared.dir.as_path());
        if let Err(e) = remove_lab(&self.shared.prefix, dir) {
            eprintln!("lab {}: cleanup failed: {e:#}", self.shared.prefix);
        }
        if keep {
            eprintln!(
                "lab {}: files kept in {} (MESH_LAB_KEEP)",
                self.shared.prefix,
                self.shared.dir.display()
            );
        }
    }
}

/// One host of a lab: a network namespace with `eth0` on the switch, a directory, and at
/// most one daemon at a time.
pub struct Host {
    name: String,
    /// 1-based position in the lab.
    number: usize,
    ip: Ipv4Addr,
    netns: Netns,
    /// Its veth end in the switch namespace.
    port: IfName,
    dir: PathBuf,
    shared: Arc<Shared>,
    daemon: Mutex<Option<Child>>,
    /// Background processes started with [`Host::spawn`].
    helpers: Mutex<Vec<Child>>,
}

impl Host {
    fn create(shared: &Arc<Shared>, number: usize, daemon_config: &str) -> Result<Host> {
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
        let deadline = Instant::now() + crate::wait::scaled(timeout);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break Err(anyhow::anyhow!(
                    "the daemon on {} did not exit within {timeout:?} of SIGTERM: killed",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
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

    fn daemon_state(&self) -> String {
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
        run_with_timeout(cmd, crate::wait::scaled(timeout))
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
        run_with_timeout(cmd, crate::wait::scaled(self.shared.command_timeout))
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
    fn kill_all(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Lab>();
        send_sync::<Host>();
    }

    #[test]
    fn host_addresses_start_at_11() {
        assert_eq!(host_ip(1), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(host_ip(MAX_HOSTS), Ipv4Addr::new(10, 77, 0, 250));
    }
}
