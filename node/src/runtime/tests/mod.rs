//! Tests of the task runtime with real processes: shims, namespaces, signals.
//!
//! They need root (namespaces, mounts) and the `runtime_cli` example, which `cargo test`
//! builds: it is the shim binary here, since a unit-test binary cannot answer `task-shim`
//! (see `node/examples/runtime_cli.rs`). Waits poll a condition up to a deadline (scaled by
//! `MESH_TEST_PATIENCE`), never a fixed sleep.

mod adoption;
mod exec;
mod lifecycle;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_dataplane::netns::{Netns, TempNetns};
use mesh_lab::wait::{Poll, wait_for};
use nix::sys::signal::Signal;

use super::*;

/// Deadline of every wait (scaled by `MESH_TEST_PATIENCE`).
const PATIENCE: Duration = Duration::from_secs(20);

/// The `runtime_cli` example next to this test binary (`target/<profile>/examples/`).
fn helper_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps");
    let helper = profile_dir.join("examples").join("runtime_cli");
    assert!(
        helper.exists(),
        "{} is missing: run `cargo test -p mesh-node` (which builds examples) or \
         `cargo build -p mesh-node --example runtime_cli`",
        helper.display()
    );
    helper
}

/// A runtime on a temporary root with its own tokio runtime. On drop, every shim still alive
/// under the root is killed (their tasks die with them), also when a test fails.
struct Fixture {
    tasks: Option<TaskRuntime>,
    rt: tokio::runtime::Runtime,
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut fixture = Fixture {
            tasks: None,
            rt,
            root,
        };
        fixture.restart_agent();
        fixture
    }

    fn tasks(&self) -> &TaskRuntime {
        self.tasks.as_ref().expect("a runtime")
    }

    /// Drops the runtime object and makes a new one on the same root, as a restarted agent.
    fn restart_agent(&mut self) {
        self.tasks = None;
        self.tasks = Some(TaskRuntime::with_poll_interval(
            self.root.path().join("tasks"),
            helper_binary(),
            Duration::from_millis(20),
        ));
    }

    fn start(&self, spec: TaskSpec) {
        let id = spec.id.clone();
        self.rt
            .block_on(self.tasks().start(spec))
            .unwrap_or_else(|e| panic!("start {id}: {e:#}"));
    }

    fn stop(&self, id: &str) {
        self.rt
            .block_on(self.tasks().stop(id))
            .unwrap_or_else(|e| panic!("stop {id}: {e:#}"));
    }

    fn dir(&self, id: &str) -> TaskDir {
        self.tasks().task_dir(id).unwrap()
    }

    /// Waits until the observed state of `id` satisfies `want`.
    fn wait_state(&self, id: &str, what: &str, want: impl Fn(&TaskState) -> bool) -> TaskState {
        wait_for(&format!("task {id}: {what}"), PATIENCE, || {
            Ok(match self.tasks().state(id) {
                Some(s) if want(&s) => Poll::Ready(s),
                Some(s) if s.done && !want(&s) => Poll::Fail(format!("final state {s:?}")),
                seen => Poll::Pending(format!("{seen:?}")),
            })
        })
        .unwrap_or_else(|e| {
            panic!("{e:#}\nshim.log: {}", self.shim_log(id));
        })
    }

    fn wait_running(&self, id: &str) -> TaskState {
        self.wait_state(id, "running", |s| s.state == TaskPhase::Running)
    }

    fn wait_done(&self, id: &str) -> TaskState {
        wait_for(&format!("task {id} to finish"), PATIENCE, || {
            Ok(self.tasks().state(id).filter(|s| s.done))
        })
        .unwrap_or_else(|e| panic!("{e:#}\nshim.log: {}", self.shim_log(id)))
    }

    /// The task's output so far.
    fn output(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir(id).output_log()).unwrap_or_default()
    }

    /// Waits until the task's output contains every one of `needles`.
    fn wait_output(&self, id: &str, needles: &[&str]) -> String {
        wait_for(
            &format!("output of {id} to contain {needles:?}"),
            PATIENCE,
            || {
                let out = self.output(id);
                Ok(if needles.iter().all(|n| out.contains(n)) {
                    Poll::Ready(out)
                } else {
                    Poll::Pending(out)
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn shim_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir(id).shim_log()).unwrap_or_default()
    }

    /// The live shim of `id`.
    fn shim(&self, id: &str) -> Option<ProcIdentity> {
        self.tasks.as_ref()?.inner.live_shim(&self.dir(id))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.tasks = None;
        for id in task_ids(&self.root.path().join("tasks")) {
            let dir = TaskDir::new(self.root.path().join("tasks").join(&id));
            // Only real shims: some tests write the pid of a live non-shim (this process).
            if let Some(Ok(Some(pidfd))) = live_shim(&dir).map(|s| s.open()) {
                let _ = pidfd.send_signal(Signal::SIGKILL);
            }
        }
    }
}

/// `sh -c script`, no restart, 5 s grace.
fn sh(id: &str, script: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(id, vec!["sh".into(), "-c".into(), script.into()]);
    spec.restart = RestartPolicy {
        condition: RestartCondition::None,
        delay: Duration::ZERO,
        max_attempts: 0,
        ..RestartPolicy::default()
    };
    spec.stop_grace = Duration::from_secs(5);
    spec
}

/// A whoami server on `port` as the task's command.
fn whoami(id: &str, port: u16) -> TaskSpec {
    let mut spec = TaskSpec::new(
        id,
        vec![
            helper_binary().display().to_string(),
            "whoami".into(),
            "--port".into(),
            port.to_string(),
        ],
    );
    spec.env = vec![
        ("MESH_TASK_NAME".into(), format!("{id}.name")),
        ("MESH_TASK_ID".into(), id.into()),
    ];
    spec.stop_grace = Duration::from_secs(5);
    spec
}

/// A namespace with loopback up and, if `addr` is given, a veth pair inside it whose end `v0`
/// has `addr` (a task sees a non-loopback address).
fn task_netns(tag: &str, addr: Option<&str>) -> TempNetns {
    let ns = TempNetns::new(tag).unwrap();
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .arg("-n")
            .arg(ns.name())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["link", "set", "lo", "up"]);
    if let Some(addr) = addr {
        ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ip(&["addr", "add", addr, "dev", "v0"]);
        ip(&["link", "set", "v0", "up"]);
        ip(&["link", "set", "v1", "up"]);
    }
    ns
}

/// The path a task spec uses for `ns`.
fn netns_path(ns: &Netns) -> PathBuf {
    Netns::path_of(ns.name())
}

/// The inode of a namespace, as `readlink /proc/PID/ns/net` shows it: `net:[N]`.
fn netns_link(ns: &Netns) -> String {
    format!("net:[{}]", ns.id().unwrap().1)
}

/// A TCP connection to `port` on loopback inside `ns`, made once the server listens. The
/// socket belongs to `ns` and is usable from any thread afterwards.
fn connect_in(ns: &Netns, port: u16) -> BufReader<TcpStream> {
    let stream = wait_for(&format!("a server on port {port}"), PATIENCE, || {
        Ok(ns.run(|| TcpStream::connect(("127.0.0.1", port)).ok())?)
    })
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    BufReader::new(stream)
}

/// One HTTP/1.1 keep-alive request on `conn`; the body of the answer.
fn http_get(conn: &mut BufReader<TcpStream>, path: &str) -> Result<String> {
    conn.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .context("send request")?;
    let mut len = None;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).context("read head")? == 0 {
            bail!("connection closed");
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = Some(v.trim().parse::<usize>()?);
        }
    }
    let mut body = vec![0; len.context("no content-length")?];
    conn.read_exact(&mut body)?;
    Ok(String::from_utf8(body)?)
}
