//! The lab itself, exercised with the stand-in daemon (`mesh-standin`, same command-line
//! contract as `mesh`): real TCP between host namespaces, cut and heal, kill/restart/stop,
//! cleanup on drop and on panic, removal of a crashed run's leftovers. Needs root.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_tests::{
    ClusterOptions, Host, Lab, LabOptions, Netns, cleanup_lock, lab_root, link, standin_binary,
};

const PATIENCE: Duration = Duration::from_secs(10);

fn lab(hosts: usize) -> Lab {
    Lab::new(LabOptions {
        hosts,
        binary: Some(standin_binary()),
        ..LabOptions::default()
    })
    .expect("build the lab")
}

fn started(hosts: usize) -> Lab {
    let lab = lab(hosts);
    lab.start_all().unwrap();
    lab.wait_all_ready(PATIENCE).unwrap();
    lab
}

/// A TCP round trip from inside `from` to the daemon of `to`, which answers its hostname.
fn probe(from: &Host, to: &Host) -> Result<String> {
    let addr = SocketAddr::from((to.ip(), 2377));
    let reply = from.run(move || -> std::io::Result<String> {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
        conn.set_read_timeout(Some(Duration::from_millis(500)))?;
        conn.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line)?;
        Ok(line.trim().to_owned())
    })??;
    Ok(reply)
}

fn netns_of(prefix: &str) -> Vec<String> {
    let dash = format!("{prefix}-");
    Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&dash))
        .collect()
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn starts(host: &Host) -> Result<u64> {
    Ok(mesh_tests::info(host)?["starts"].as_u64().unwrap_or(0))
}

#[test]
fn hosts_reach_each_other_over_the_switch() {
    let lab = started(3);
    for a in lab.hosts() {
        for b in lab.hosts().iter().filter(|b| b.name() != a.name()) {
            let what = format!("{} to reach {}", a.name(), b.name());
            let reply = lab
                .wait_for(&what, PATIENCE, || probe(a, b).map(Some))
                .unwrap();
            assert_eq!(reply, b.name());
        }
    }
    // Through a command run on the host, with the lab's `mesh` on PATH.
    let out = lab
        .host(1)
        .exec("mesh", ["probe", &lab.host(3).control_addr()])
        .unwrap();
    assert_eq!(out.ok_stdout().unwrap().trim(), "node3");
    // No link of the lab appeared in the root namespace.
    let root = Netns::current().unwrap();
    let p1 = link::IfName::new("p1").unwrap();
    let in_root = link::in_netns(&root, async |nl| nl.link_index(&p1).await).unwrap();
    assert_eq!(in_root, None);
}

#[test]
fn cut_blocks_traffic_and_heal_restores_it() {
    let lab = started(2);
    let (a, b) = (lab.host(1), lab.host(2));
    lab.wait_for("node1 to reach node2", PATIENCE, || probe(a, b).map(Some))
        .unwrap();
    b.cut().unwrap();
    lab.wait_for("node2 to be cut off", PATIENCE, || Ok(probe(a, b).is_err()))
        .unwrap();
    assert!(
        probe(b, a).is_err(),
        "node2 still reaches node1 while cut off"
    );
    assert!(b.is_running(), "cutting a host must not stop its daemon");
    b.heal().unwrap();
    lab.wait_for("node2 to be reachable again", PATIENCE, || {
        probe(a, b).map(Some)
    })
    .unwrap();
    lab.wait_for("node2 to reach node1 again", PATIENCE, || {
        probe(b, a).map(Some)
    })
    .unwrap();
}

#[test]
fn kill_restart_and_stop_keep_the_state_dir() {
    let lab = started(1);
    let host = lab.host(1);
    assert_eq!(starts(host).unwrap(), 1);
    let pid = host.daemon_pid().unwrap();

    host.kill().unwrap();
    assert!(!host.is_running() && gone(pid));
    assert!(!host.cli(["info"]).unwrap().success());

    host.start().unwrap();
    lab.wait_ready(host, PATIENCE).unwrap();
    assert_eq!(starts(host).unwrap(), 2, "the state dir survives a kill");
    assert!(host.start().is_err(), "a second daemon on the same host");

    host.restart().unwrap();
    lab.wait_for("the third start", PATIENCE, || {
        Ok(starts(host).ok() == Some(3))
    })
    .unwrap();

    let status = host.stop(PATIENCE).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!host.is_running());
    assert!(
        host.log_tail(50).contains("node1 up (start 3)"),
        "{}",
        host.log_tail(50)
    );
}

#[test]
fn waiting_for_a_crashed_daemon_fails_at_once_with_diagnostics() {
    let lab = lab(1);
    let host = lab.host(1);
    host.write_config("crash = true\n").unwrap();
    host.start().unwrap();
    let started = Instant::now();
    let err = lab
        .wait_ready(host, Duration::from_secs(120))
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        err.starts_with(
            "gave up waiting for the daemon on node1 to answer; last observed: the daemon exited"
        ),
        "{err}"
    );
    for part in [
        "--- ip -d link",
        "eth0",
        "10.77.0.11/24",
        "--- bridge fdb",
        "--- nft list ruleset",
        "crashing as the config asks",
    ] {
        assert!(err.contains(part), "diagnostics lack {part:?}:\n{err}");
    }
}

#[test]
fn drop_kills_processes_and_removes_namespaces_and_files() {
    let lab = started(2);
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    let helper = lab.host(2).spawn(sleep).unwrap();
    // A process the lab does not track, found by its namespace.
    let mut stray = lab
        .host(1)
        .command("sleep")
        .unwrap()
        .arg("600")
        .spawn()
        .unwrap();
    let (prefix, dir) = (lab.prefix().to_owned(), lab.dir().to_owned());
    let pids = [
        lab.host(1).daemon_pid().unwrap(),
        lab.host(2).daemon_pid().unwrap(),
        helper,
    ];
    assert_eq!(netns_of(&prefix).len(), 3);
    assert!(dir.join("node1/daemon.log").exists());

    drop(lab);
    assert_eq!(netns_of(&prefix), Vec::<String>::new());
    assert!(!dir.exists());
    assert!(pids.iter().all(|&pid| gone(pid)), "{pids:?}");
    assert_eq!(stray.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = started(1);
        *seen.lock().unwrap() = Some((
            lab.prefix().to_owned(),
            lab.dir().to_owned(),
            lab.host(1).daemon_pid().unwrap(),
        ));
        panic!("a test fails inside a lab");
    }));
    assert!(result.is_err());
    let (prefix, dir, pid) = seen.into_inner().unwrap().unwrap();
    assert_eq!(netns_of(&prefix), Vec::<String>::new());
    assert!(!dir.exists() && gone(pid));
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_by_the_next_lab() {
    // The owner of the leftovers: a pid that is certainly dead (a child already reaped).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let prefix = format!("mt{dead}x0");
    // Other test processes clean leftovers too: not while these are half-made.
    let lock = cleanup_lock(&lab_root()).unwrap();
    let ns = Netns::ensure(&format!("{prefix}-node1")).unwrap();
    Netns::ensure(&format!("{prefix}-sw")).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    ns.enter_on_exec(&mut cmd).unwrap();
    let mut survivor = cmd.spawn().unwrap();
    drop(ns);
    let dir = lab_root().join(&prefix);
    std::fs::create_dir_all(dir.join("node1/state")).unwrap();
    drop(lock);

    let _next = lab(1);
    assert_eq!(netns_of(&prefix), Vec::<String>::new());
    assert!(!dir.exists());
    assert_eq!(survivor.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn cluster_helper_forms_a_cluster_through_the_cli() {
    let opts = ClusterOptions {
        binary: standin_binary(),
        ..ClusterOptions::new(2, 1)
    };
    let lab = mesh_tests::cluster_with(opts).unwrap();
    let rows = mesh_tests::nodes(lab.host(1)).unwrap();
    let roles: Vec<_> = rows
        .iter()
        .map(|r| (r.hostname.as_str(), r.is_manager(), r.addr.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("node1", true, "10.77.0.11"),
            ("node2", true, "10.77.0.12"),
            ("node3", false, "10.77.0.13")
        ]
    );
}

#[test]
fn the_binaries_under_test_are_found() {
    let canonical = |p: std::path::PathBuf| {
        p.canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    if std::env::var_os("MESH_BIN").is_none() {
        assert_eq!(
            canonical(mesh_tests::mesh_bin!()),
            canonical(mesh_tests::mesh_binary())
        );
    }
    assert!(standin_binary().exists());
}

/// Pids of the stand-in's tasks (see `mesh-standin`): in a bind-mounted namespace, and in an
/// anonymous one.
fn task_pids(lab: &Lab, host: &Host) -> [u32; 2] {
    let path = host.state_dir().join("tasks");
    let text = lab
        .wait_for("the tasks to start", PATIENCE, || {
            Ok(std::fs::read_to_string(&path).ok())
        })
        .unwrap();
    let pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    [pids[0], pids[1]]
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_owned)
        .collect()
}

fn all_gone(pids: &[u32]) -> bool {
    // Orphans are reaped by init: let it catch up.
    mesh_tests::wait_for("the processes to be gone", PATIENCE, || {
        Ok(pids.iter().all(|&p| gone(p)))
    })
    .is_ok()
}

#[test]
fn teardown_kills_the_daemons_tasks_wherever_they_run() {
    let lab = lab(1);
    let host = lab.host(1);
    host.write_config("tasks = true\n").unwrap();
    host.start().unwrap();
    lab.wait_ready(host, PATIENCE).unwrap();
    let tasks = task_pids(&lab, host);
    let dir = lab.dir().to_owned();
    assert!(
        !mounts_under(&dir).is_empty(),
        "the task namespace is a bind mount in the state dir"
    );

    drop(lab);
    assert!(all_gone(&tasks), "{tasks:?}");
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert!(!dir.exists());
}

#[test]
fn tasks_left_by_a_killed_daemon_die_with_the_lab_if_their_namespace_is_mounted() {
    let lab = lab(1);
    let host = lab.host(1);
    host.write_config("tasks = true\n").unwrap();
    host.start().unwrap();
    lab.wait_ready(host, PATIENCE).unwrap();
    let [in_mounted, in_anonymous] = task_pids(&lab, host);

    // kill -9 of the agent leaves its tasks running, as on a real host.
    host.kill().unwrap();
    assert!(!gone(in_mounted) && !gone(in_anonymous));

    drop(lab);
    assert!(all_gone(&[in_mounted]));
    // The known gap: an orphan in an anonymous namespace is out of the lab's reach.
    if !gone(in_anonymous) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(in_anonymous as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
