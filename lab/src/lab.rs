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
//! thread (see the `process` module).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mesh_dataplane::link::IfName;
use mesh_dataplane::netns::Netns;

use crate::cleanup::{lab_root, remove_lab, remove_stale_labs, unique_prefix};
use crate::diag::{self, LOG_TAIL_LINES};
use crate::host::{Host, Shared};
use crate::process::Spawner;
use crate::switch::{MAX_HOSTS, plug, set_up_switch};
use crate::wait::{IntoPoll, Poll, wait_for_with};

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
        set_up_switch(&shared.switch).context("set up the switch")?;
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

    /// Forms a cluster of the first `members` hosts with the CLI: `init` on node1, then `join`
    /// on node2..node`members`, the first `managers` (node1 included) as managers and the rest
    /// as workers. Hosts after `members` are left alone.
    pub fn form_cluster(&self, managers: usize, members: usize) -> Result<()> {
        ensure!(
            (1..=members).contains(&managers) && members <= self.hosts.len(),
            "cannot form a cluster of {members} with {managers} managers on {} hosts",
            self.hosts.len()
        );
        let first = self.host(1);
        first
            .cli(["init", "--advertise-addr", &first.ip().to_string()])?
            .ok_stdout()
            .context("mesh init on node1")?;
        let token = |role: &str| -> Result<String> {
            let out = first.cli(["join-token", role, "-q"])?.ok_stdout()?;
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
        for host in &self.hosts[1..members] {
            let token = if host.number() <= managers {
                &manager_token
            } else {
                &worker_token
            };
            host.cli([
                "join",
                "--token",
                token,
                "--advertise-addr",
                &host.ip().to_string(),
                &first.control_addr(),
            ])?
            .ok_stdout()
            .with_context(|| format!("mesh join on {}", host.name()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Lab>();
        send_sync::<Host>();
    }
}
