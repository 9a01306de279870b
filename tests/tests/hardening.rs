//! No single ordinary command or restart breaks the cluster: requests that would (sizes past
//! the limits, the cluster's own ports, names that collide, subnets that cannot work) are
//! refused in one line and store nothing; a service that cannot be placed says why while the
//! others carry on; a task whose command cannot start shows the error and backs off; a node
//! whose task supervisors died with it (a reboot) brings every task back. Real `mesh`
//! daemons, one per host namespace; needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mesh_tests::ops::{CLI_BOUND, mentions, refused};
use mesh_tests::services::{
    self, CONVERGE_BOUND, TaskRow, cli_ok, create_network, create_service, wait, wait_running,
};
use mesh_tests::{Host, Poll};
use serde_json::Value;

/// Deadline for the cluster to reflect a change.
const SETTLE: Duration = Duration::from_secs(30);

/// What `ls --format json` of `what` (`service`, `network`) lists: names with versions, so
/// any stored change shows.
fn listing(host: &Host, what: &str) -> String {
    let out = cli_ok(host, &[what, "ls", "--format", "json"], CLI_BOUND).unwrap();
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {} v{}", r["id"], r["name"], r["version"]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn service_inspect(host: &Host, name: &str) -> Result<Value> {
    let out = cli_ok(host, &["service", "inspect", name], CLI_BOUND)?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v[0].clone())
}

#[test]
fn commands_that_would_break_the_cluster_are_refused_in_one_line_and_store_nothing() {
    let lab = mesh_tests::cluster(1, 0).unwrap();
    let n1 = lab.host(1);
    create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "web", &["--network", "ov"]).unwrap();
    let (services_before, networks_before) = (listing(n1, "service"), listing(n1, "network"));
    let whoami = services::whoami();
    let create = |extra: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = ["service", "create", "-d"].map(String::from).to_vec();
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push("--".into());
        argv.extend(whoami.iter().cloned());
        argv
    };
    let argv = |words: &[&str]| -> Vec<String> { words.iter().map(|s| s.to_string()).collect() };
    let underlay = format!("{}/24", n1.ip());
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        // Sizes: replicas past the cap, and a count that does not even fit.
        (
            argv(&["service", "scale", "web=4294967296"]),
            &["4294967296"],
        ),
        (argv(&["service", "scale", "web=100000"]), &["replicas"]),
        (
            create(&["--name", "big", "--replicas", "100000"]),
            &["replicas"],
        ),
        // The cluster's own ports: control, gossip, data path.
        (create(&["--name", "p1", "-p", "2377:80"]), &["2377"]),
        (create(&["--name", "p2", "-p", "7946:80/udp"]), &["7946"]),
        (create(&["--name", "p3", "-p", "7946:80"]), &["7946"]),
        (create(&["--name", "p4", "-p", "4789:80/udp"]), &["4789"]),
        // Names that DNS or the task names would confuse.
        (create(&["--name", "a.b"]), &["a.b"]),
        (create(&["--name", "WEB"]), &["WEB", "web"]),
        (create(&["--name", "tasks"]), &["tasks"]),
        (create(&["--name", "tasks.x"]), &["tasks.x"]),
        (create(&["--name", "web.1"]), &["web.1"]),
        (create(&["--name=-x"]), &["-x"]),
        // Subnets that cannot work as an overlay.
        (
            argv(&["network", "create", "--subnet", "224.0.0.0/24", "m1"]),
            &["224.0.0.0"],
        ),
        (
            argv(&["network", "create", "--subnet", "127.0.0.0/24", "m2"]),
            &["127.0.0.0"],
        ),
        (
            argv(&["network", "create", "--subnet", &underlay, "m3"]),
            &["10.77.0"],
        ),
        (
            argv(&["network", "create", "--subnet", "10.9.0.0/31", "m4"]),
            &["10.9.0.0/31"],
        ),
    ];
    for (argv, words) in cases {
        let shown = argv.join(" ");
        let refusal = refused(n1, &argv, CLI_BOUND)
            .unwrap_or_else(|e| panic!("`mesh {shown}` was not refused as it should be: {e:#}"));
        assert!(
            mentions(&refusal.message, words),
            "`mesh {shown}` was refused with {:?}, which names none of {words:?}",
            refusal.message
        );
        assert_eq!(listing(n1, "service"), services_before, "`mesh {shown}`");
        assert_eq!(listing(n1, "network"), networks_before, "`mesh {shown}`");
    }
    // Still a working cluster: a new service is created and runs.
    create_service(n1, "after", &["--network", "ov"]).unwrap();
}

#[test]
fn a_service_that_cannot_be_placed_shows_why_and_the_others_carry_on() {
    let lab = mesh_tests::cluster(1, 2).unwrap();
    let n1 = lab.host(1);
    // A /29 holds 6 addresses; the gateway and the VIP take two.
    create_network(n1, "small", &["--subnet", "10.90.0.0/29"]).unwrap();
    cli_ok(
        n1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "big",
            "--replicas",
            "8",
            "--network",
            "small",
            "--",
            "mesh",
            "whoami",
            "--port",
            "80",
        ],
        CLI_BOUND,
    )
    .unwrap();
    let why = wait(&lab, "big to say why it is short of tasks", SETTLE, || {
        let problems = service_inspect(n1, "big")?["problems"].to_string();
        Ok(if mentions(&problems, &["address"]) {
            Poll::Ready(problems)
        } else {
            Poll::Pending(problems)
        })
    })
    .unwrap();
    // Four tasks fit and run; each of the other four names the shortage in `service ps`.
    wait(
        &lab,
        "big to run what fits and the rest to say why",
        SETTLE,
        || {
            let tasks = services::tasks(n1, "big")?;
            let running = tasks.iter().filter(|t| t.is_running()).count();
            let short = tasks
                .iter()
                .filter(|t| mentions(t.raw["error"].as_str().unwrap_or_default(), &["address"]))
                .count();
            Ok(if running == 4 && short == 4 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} ({why})", services::task_summary(&tasks)))
            })
        },
    )
    .unwrap();

    // The rest of the cluster carries on: a service on another network converges.
    create_network(n1, "roomy", &[]).unwrap();
    create_service(n1, "other", &["--replicas", "3", "--network", "roomy"]).unwrap();
    wait_running(&lab, n1, "other", 3, CONVERGE_BOUND).unwrap();
}

#[test]
fn a_command_that_cannot_start_shows_its_error_and_restarts_back_off() {
    let lab = mesh_tests::cluster(1, 0).unwrap();
    let n1 = lab.host(1);
    let created = Instant::now();
    cli_ok(
        n1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "broken",
            "--restart-delay",
            "200ms",
            "--",
            "/nonexistent/mesh-test-command",
        ],
        CLI_BOUND,
    )
    .unwrap();
    let task = |n1: &Host| -> Result<TaskRow> {
        services::tasks(n1, "broken")?
            .into_iter()
            .next()
            .context("broken has no task")
    };
    let error = wait(&lab, "the start failure in service ps", SETTLE, || {
        let t = task(n1)?;
        let error = t.raw["error"].as_str().unwrap_or_default().to_owned();
        Ok(if mentions(&error, &["nonexistent", "no such file"]) {
            Poll::Ready(error)
        } else {
            Poll::Pending(t.raw.to_string())
        })
    })
    .unwrap();
    // The failure is in the task's output too.
    let out = n1
        .cli_with_timeout(["service", "logs", "broken"], CLI_BOUND)
        .unwrap();
    let logs = format!("{}{}", out.stdout, out.stderr);
    assert!(
        mentions(&logs, &["nonexistent"]),
        "service logs broken: {logs:?}"
    );
    // Without --detach, the progress says why the service does not converge.
    let waited = n1.cli_with_timeout(
        [
            "service",
            "create",
            "--name",
            "broken2",
            "--",
            "/nonexistent/mesh-test-command",
        ],
        Duration::from_secs(8),
    );
    // Killed at the deadline, the error carries what the CLI printed after its argv.
    let progress = match waited {
        Ok(out) => out.stderr,
        Err(e) => {
            let text = format!("{e:#}");
            text.split_once("--- stderr:")
                .map(|(_, printed)| printed.to_owned())
                .unwrap_or_default()
        }
    };
    assert!(
        mentions(&progress, &["nonexistent"]),
        "the progress of a service whose tasks cannot start names no reason: {progress}"
    );
    eprintln!("progress without --detach: {}", progress.trim());
    // Six restarts at a fixed 200 ms would take about 1.2 s plus the failed starts; doubling
    // from 200 ms they cannot come before 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.2 s.
    wait(&lab, "six restarts", Duration::from_secs(60), || {
        let t = task(n1)?;
        let restarts = t.raw["restarts"].as_u64().unwrap_or(0);
        Ok((restarts >= 6).then_some(()))
    })
    .unwrap();
    let took = created.elapsed();
    assert!(
        took >= Duration::from_millis(6000),
        "six restarts within {took:?}: no backoff ({error})"
    );
}

/// Every `shim.pid` under `dir`: the task supervisors of a node.
fn shim_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "shim.pid")
                && let Ok(text) = std::fs::read_to_string(&path)
                && let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok())
            {
                out.push(pid);
            }
        }
    }
    out
}

fn by_node(tasks: Vec<TaskRow>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in tasks {
        *out.entry(t.node).or_default() += 1;
    }
    out
}

/// node1 (manager) and node2 (worker) with a global `web` and a 4-replica `api` on one
/// network; node2 then goes down as a host does (its agent, every task supervisor and every
/// task), and stays down until `before_start` returns. The placement of api before.
fn reboot_node2(lab: &mesh_tests::Lab, before_start: impl FnOnce()) -> BTreeMap<String, usize> {
    let (n1, n2) = (lab.host(1), lab.host(2));
    create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "web", &["--mode", "global", "--network", "ov"]).unwrap();
    create_service(n1, "api", &["--replicas", "4", "--network", "ov"]).unwrap();
    // The placement to come back to, read once both services have settled.
    let web = wait_running(lab, n1, "web", 2, SETTLE).unwrap();
    let api = wait_running(lab, n1, "api", 4, SETTLE).unwrap();
    let api_before = by_node(api.clone());
    let on_n2 = web
        .into_iter()
        .chain(api)
        .filter(|t| t.node == n2.name())
        .map(|t| t.netns(lab))
        .collect::<Result<Vec<_>>>()
        .unwrap();
    assert!(on_n2.len() >= 2, "node2 runs web and api tasks");

    // The host goes down: its agent, every task supervisor and every task.
    n2.kill().unwrap();
    let shims = shim_pids(&n2.state_dir());
    assert!(!shims.is_empty(), "no shim.pid under {:?}", n2.state_dir());
    for pid in shims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for ns in &on_n2 {
        for pid in ns.pids().unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    before_start();
    n2.start().unwrap();
    api_before
}

/// Whether every running task of web and api on node2 has a live process in its namespace.
fn node2_tasks_alive(lab: &mesh_tests::Lab, tasks: &[TaskRow]) -> bool {
    tasks.iter().filter(|t| t.node == "node2").all(|t| {
        t.netns(lab)
            .is_ok_and(|ns| !ns.pids().unwrap_or_default().is_empty())
    })
}

#[test]
fn a_rebooted_node_brings_every_task_back() {
    let lab = mesh_tests::cluster(1, 1).unwrap();
    let n1 = lab.host(1);
    let api_before = reboot_node2(&lab, || {});

    // Every task is running again, on the same nodes, with a live process in its namespace.
    wait(&lab, "every task of node2 to run again", SETTLE, || {
        let web = services::running(n1, "web")?;
        let api = services::running(n1, "api")?;
        let web_nodes = by_node(web.clone());
        let api_nodes = by_node(api.clone());
        let both: Vec<TaskRow> = web.iter().chain(&api).cloned().collect();
        let alive = node2_tasks_alive(&lab, &both);
        let summary = format!("web {web_nodes:?} api {api_nodes:?} alive {alive}");
        Ok(
            if web_nodes.len() == 2 && api_nodes == api_before && alive {
                Poll::Ready(())
            } else {
                Poll::Pending(summary)
            },
        )
    })
    .unwrap();
    // None is left failed with running desired (one reported failed before its restart is
    // replaced, and its desired state follows in a moment).
    wait(&lab, "no task failed with desired running", SETTLE, || {
        let stuck: Vec<String> = services::tasks(n1, "web")?
            .into_iter()
            .chain(services::tasks(n1, "api")?)
            .filter(|t| t.desired_state == "running" && !t.is_running())
            .map(|t| format!("{} {}", t.name, t.state))
            .collect();
        Ok(if stuck.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(stuck.join(", "))
        })
    })
    .unwrap();
}

#[test]
fn a_node_down_past_its_grace_runs_its_global_tasks_again_when_back() {
    let lab = mesh_tests::cluster(1, 1).unwrap();
    let n1 = lab.host(1);
    // node2 stays down until it is seen down and api's replicas have moved to node1.
    reboot_node2(&lab, || {
        wait(
            &lab,
            "node2 down and api's 4 replicas on node1",
            SETTLE,
            || {
                let down = mesh_tests::nodes(n1)?
                    .iter()
                    .any(|n| n.hostname == "node2" && n.status == "down");
                let api = by_node(services::running(n1, "api")?);
                Ok(if down && api.get("node1") == Some(&4) {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("node2 down {down}, api {api:?}"))
                })
            },
        )
        .unwrap();
    });
    // Back: its task of the global service runs again, with a live process.
    wait(&lab, "web running on both nodes again", SETTLE, || {
        let web = services::running(n1, "web")?;
        let nodes = by_node(web.clone());
        let alive = node2_tasks_alive(&lab, &web);
        Ok(if nodes.len() == 2 && alive {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("web {nodes:?} alive {alive}"))
        })
    })
    .unwrap();
}

/// The daemon of `host` exits non-zero by itself; the last line of its log.
fn exits_with_error(lab: &mesh_tests::Lab, host: &Host) -> String {
    let status = lab
        .wait_for("the daemon to refuse to start", SETTLE, || {
            host.daemon_exit_status()
        })
        .unwrap();
    assert!(!status.success(), "{}: exited with {status}", host.name());
    host.log_tail(1)
}

#[test]
fn a_damaged_state_dir_stops_the_daemon_with_a_clear_error_and_repaired_it_comes_back() {
    let lab = mesh_tests::cluster(1, 1).unwrap();
    let (n1, n2) = (lab.host(1), lab.host(2));
    create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "web", &["--mode", "global", "--network", "ov"]).unwrap();
    // Each damage, on the node it matters to: what the error must name.
    let cases: [(&Host, &str, &[&str]); 4] = [
        (n2, "node.json", &["node.json"]),
        (n2, "certs/node.key", &["node.key", "node key"]),
        (n2, "certs/node.pem", &["node.pem", "node certificate"]),
        (n1, "raft/raft.redb", &["raft"]),
    ];
    for (host, file, words) in cases {
        host.kill().unwrap();
        let path = host.state_dir().join(file);
        let saved = std::fs::read(&path).unwrap();
        for (damage, content) in [("missing", None), ("garbage", Some(&b"\x00garbage{"[..]))] {
            match content {
                None => std::fs::remove_file(&path).unwrap(),
                Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            }
            host.start().unwrap();
            let line = exits_with_error(&lab, host);
            assert!(
                mentions(&line, words),
                "{file} {damage}: the daemon's last words name none of {words:?}: {line:?}"
            );
        }
        std::fs::write(&path, saved).unwrap();
        host.start().unwrap();
        lab.wait_ready(host, SETTLE).unwrap();
    }
    // Repaired, nothing was lost: the service runs on both nodes.
    wait_running(&lab, n1, "web", 2, CONVERGE_BOUND).unwrap();
}
