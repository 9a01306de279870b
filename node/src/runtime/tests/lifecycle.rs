//! Start, output, restart policy, stop and watch.

use std::time::Duration;

use super::*;

#[test]
fn runtime_task_runs_in_its_netns_with_its_own_resolv_conf_and_hosts() {
    let f = Fixture::new();
    let ns = task_netns("rt-files", None);
    let host_hosts = std::fs::read("/etc/hosts").unwrap();
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();

    let mut spec = sh(
        "files",
        "readlink /proc/self/ns/net; cat /etc/resolv.conf /etc/hosts; \
         echo \"env=$MESH_TASK_NAME home=$HOME\"; echo to-stderr >&2; exec sleep 1000",
    );
    spec.netns = Some(netns_path(&ns));
    spec.resolv_conf = Some("nameserver 127.0.0.11\noptions ndots:0\n".into());
    spec.hosts = Some("127.0.0.1 localhost\n10.9.9.9 files-task\n".into());
    spec.env = vec![("MESH_TASK_NAME".into(), "web.1".into())];
    f.start(spec);
    let state = f.wait_running("files");

    let out = f.wait_output(
        "files",
        &[
            &format!("stdout {}", netns_link(&ns)),
            "stdout nameserver 127.0.0.11",
            "stdout 10.9.9.9 files-task",
            "stdout env=web.1 home=/root",
            "stderr to-stderr",
        ],
    );
    // Records are `<time> <stream> <text>`.
    for line in out.lines() {
        assert!(
            shim::output::parse_record(line.as_bytes()).is_some(),
            "{line}"
        );
    }

    // The host's files and mount table are untouched; the task has its own mount namespace.
    assert_eq!(std::fs::read("/etc/hosts").unwrap(), host_hosts);
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(f.root.path().to_str().unwrap()));
    let pid = state.pid.unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    assert!(state.started_at_ms.is_some());

    f.stop("files");
    let state = f.tasks().state("files").unwrap();
    assert!(state.done && state.state == TaskPhase::Exited, "{state:?}");
}

#[test]
fn runtime_restart_any_restarts_after_clean_exits_up_to_max_attempts() {
    let f = Fixture::new();
    let mut spec = sh("any", "echo run");
    spec.restart = RestartPolicy {
        condition: RestartCondition::Any,
        delay: Duration::from_millis(50),
        max_attempts: 3,
        ..RestartPolicy::default()
    };
    f.start(spec);
    let state = f.wait_done("any");
    assert_eq!(state.state, TaskPhase::Exited, "{state:?}");
    assert_eq!((state.restarts, state.exit_code), (3, Some(0)));
    assert_eq!(f.output("any").matches("stdout run").count(), 4);
    // The shim exits once it will not restart.
    wait_for("the shim to exit", PATIENCE, || Ok(f.shim("any").is_none())).unwrap();
}

#[test]
fn runtime_restart_any_without_limit_keeps_restarting_until_stopped() {
    let f = Fixture::new();
    let mut spec = sh("forever", "exit 0");
    spec.restart = RestartPolicy {
        condition: RestartCondition::Any,
        delay: Duration::from_millis(20),
        max_attempts: 0,
        ..RestartPolicy::default()
    };
    f.start(spec);
    f.wait_state("forever", "3 restarts", |s| s.restarts >= 3);
    f.stop("forever");
    let state = f.tasks().state("forever").unwrap();
    assert!(state.done, "{state:?}");
    assert!(state.message.starts_with("stopped"), "{state:?}");
    assert!(f.shim("forever").is_none());
}

#[test]
fn runtime_restart_on_failure_restarts_only_failures() {
    let f = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    // Fails twice (status 7), then succeeds: two restarts, then final.
    let mut spec = sh(
        "onfail",
        "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; \
         echo attempt $n; [ $n -ge 3 ] && exit 0; exit 7",
    );
    spec.workdir = Some(work.path().to_owned());
    spec.restart = RestartPolicy {
        condition: RestartCondition::OnFailure,
        delay: Duration::from_millis(20),
        max_attempts: 0,
        ..RestartPolicy::default()
    };
    f.start(spec);
    let state = f.wait_done("onfail");
    assert_eq!(state.state, TaskPhase::Exited, "{state:?}");
    assert_eq!((state.restarts, state.exit_code), (2, Some(0)));
    assert_eq!(
        std::fs::read_to_string(work.path().join("count")).unwrap(),
        "3\n"
    );
}

#[test]
fn runtime_restart_none_keeps_the_exit_code() {
    let f = Fixture::new();
    f.start(sh("none", "echo bye; exit 3"));
    let state = f.wait_done("none");
    assert_eq!(state.state, TaskPhase::Failed, "{state:?}");
    assert_eq!(
        (state.exit_code, state.signal, state.restarts),
        (Some(3), None, 0)
    );
    assert_eq!(state.message, "exited with status 3");
    assert!(state.finished_at_ms >= state.started_at_ms);
    f.wait_output("none", &["stdout bye"]);
    // Still listed, failed, once the shim is gone.
    wait_for("the shim to exit", PATIENCE, || {
        Ok(f.shim("none").is_none())
    })
    .unwrap();
    assert_eq!(f.tasks().list(), [("none".to_owned(), state)]);
}

#[test]
fn runtime_restart_delay_is_honoured() {
    let f = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(300);
    let mut spec = sh("delay", "date +%s%N >> starts; exit 1");
    spec.workdir = Some(work.path().to_owned());
    spec.restart = RestartPolicy {
        condition: RestartCondition::Any,
        delay,
        max_attempts: 2,
        ..RestartPolicy::default()
    };
    f.start(spec);
    let state = f.wait_done("delay");
    assert_eq!((state.state, state.restarts), (TaskPhase::Failed, 2));
    let starts: Vec<u128> = std::fs::read_to_string(work.path().join("starts"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 3);
    for pair in starts.windows(2) {
        let gap = Duration::from_nanos((pair[1] - pair[0]) as u64);
        // At least the delay; at most the delay plus a generous bound for process starts.
        assert!(gap >= delay, "gap {gap:?} < {delay:?}");
        assert!(
            gap < delay + mesh_lab::wait::scaled(Duration::from_secs(5)),
            "{gap:?}"
        );
    }
}

#[test]
fn runtime_failure_to_start_is_a_failed_state() {
    let f = Fixture::new();
    f.start(TaskSpec {
        restart: RestartPolicy {
            condition: RestartCondition::None,
            ..RestartPolicy::default()
        },
        ..TaskSpec::new("nobin", vec!["/nonexistent/program".into()])
    });
    let state = f.wait_done("nobin");
    assert_eq!(state.state, TaskPhase::Failed);
    assert!(
        state
            .message
            .contains("cannot start \"/nonexistent/program\""),
        "{state:?}"
    );

    let mut spec = sh("nons", "true");
    spec.netns = Some("/run/netns/no-such-namespace-here".into());
    f.start(spec);
    let state = f.wait_done("nons");
    assert_eq!(state.state, TaskPhase::Failed);
    assert!(
        state.message.contains("no-such-namespace-here"),
        "{state:?}"
    );
}

#[test]
fn runtime_start_with_a_bad_shim_binary_is_an_error() {
    let f = Fixture::new();
    let tasks = TaskRuntime::new(f.root.path().join("tasks"), "/nonexistent/mesh".into());
    let err = f.rt.block_on(tasks.start(sh("x", "true"))).unwrap_err();
    assert!(matches!(err, RuntimeError::ShimStart { .. }), "{err}");
    // A binary that is not a shim: the launcher's complaint is reported.
    let tasks = TaskRuntime::new(f.root.path().join("tasks"), "/bin/false".into());
    let err = f.rt.block_on(tasks.start(sh("y", "true"))).unwrap_err();
    assert!(
        err.to_string().contains("start the shim of task y"),
        "{err}"
    );
}

#[test]
fn runtime_stop_is_graceful_with_sigterm() {
    let f = Fixture::new();
    let mut spec = sh("graceful", "exec sleep 1000");
    spec.stop_grace = Duration::from_secs(30);
    f.start(spec);
    let running = f.wait_running("graceful");
    let shim = f.shim("graceful").unwrap();

    let begun = std::time::Instant::now();
    f.stop("graceful");
    // Well before the 30 s grace: sleep dies of the SIGTERM itself.
    assert!(
        begun.elapsed() < Duration::from_secs(20),
        "{:?}",
        begun.elapsed()
    );
    assert!(!shim.is_alive());
    let state = f.tasks().state("graceful").unwrap();
    assert_eq!(state.state, TaskPhase::Exited, "{state:?}");
    assert_eq!(state.signal, Some(15));
    assert_eq!(state.message, "stopped: killed by signal 15 (SIGTERM)");
    assert!(state.stopped, "a stop is recorded as one: {state:?}");
    assert!(state.done);
    let task = ProcIdentity {
        pid: running.pid.unwrap(),
        start_time: running.pid_start_time.unwrap(),
    };
    assert!(!task.is_alive());
    assert_eq!(f.tasks().exec_target("graceful"), None);
    // Stopping again, or a task that never existed, is success.
    f.stop("graceful");
    f.stop("never-existed");
}

#[test]
fn runtime_stop_kills_after_the_grace_period_when_sigterm_is_ignored() {
    let f = Fixture::new();
    let mut spec = sh(
        "stubborn",
        "trap '' TERM; echo trapped; while :; do sleep 0.05; done",
    );
    let grace = Duration::from_millis(500);
    spec.stop_grace = grace;
    f.start(spec);
    let running = f.wait_running("stubborn");
    f.wait_output("stubborn", &["stdout trapped"]);

    let begun = std::time::Instant::now();
    f.stop("stubborn");
    let took = begun.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace period"
    );
    let state = f.tasks().state("stubborn").unwrap();
    assert_eq!(
        (state.state, state.signal),
        (TaskPhase::Exited, Some(9)),
        "{state:?}"
    );
    assert_eq!(
        state.message,
        "stopped: killed after the 500ms grace period"
    );
    assert!(state.done);
    // The whole process group went: no `sleep` child is left behind.
    let group = running.pid.unwrap();
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_owned();
                    let mut fields = rest.split_whitespace();
                    let state = fields.next()?.to_owned();
                    let pgid: i32 = fields.nth(1)?.parse().ok()?;
                    Some(pgid == group && state != "Z")
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(left.is_empty(), "processes left in group {group}: {left:?}");
}

#[test]
fn runtime_start_is_idempotent_and_remove_deletes_the_dir() {
    let f = Fixture::new();
    let spec = sh("idem", "exec sleep 1000");
    // Two concurrent starts and a later one: one shim, one process.
    f.rt.block_on(async {
        let (a, b) = tokio::join!(f.tasks().start(spec.clone()), f.tasks().start(spec.clone()));
        a.unwrap();
        b.unwrap();
    });
    let first = f.wait_running("idem");
    let shim = f.shim("idem").unwrap();
    f.start(spec);
    assert_eq!(f.shim("idem"), Some(shim));
    assert_eq!(f.tasks().state("idem").unwrap().pid, first.pid);
    assert_eq!(f.tasks().exec_target("idem"), first.pid);

    f.rt.block_on(f.tasks().remove("idem")).unwrap();
    assert!(!f.dir("idem").path().exists());
    assert!(!shim.is_alive());
    assert_eq!(f.tasks().state("idem"), None);
    assert!(f.tasks().list().is_empty());
    f.rt.block_on(f.tasks().remove("idem")).unwrap();
    assert!(matches!(
        f.rt.block_on(f.tasks().remove("../etc")),
        Err(RuntimeError::InvalidTaskId { .. })
    ));
}

#[test]
fn runtime_watch_reports_changes_up_to_the_final_state() {
    let f = Fixture::new();
    let mut events = {
        let _guard = f.rt.enter();
        f.tasks().watch()
    };
    f.start(sh("watched", "sleep 0.5; exit 4"));
    let seen = f.rt.block_on(async {
        let mut seen = Vec::new();
        loop {
            let (id, state) = tokio::time::timeout(PATIENCE, events.recv())
                .await
                .expect("an event")
                .unwrap();
            assert_eq!(id, "watched");
            let done = state.done;
            seen.push(state);
            if done {
                return seen;
            }
        }
    });
    assert!(
        seen.iter().any(|s| s.state == TaskPhase::Running),
        "{seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!((last.state, last.exit_code), (TaskPhase::Failed, Some(4)));
    // Consecutive events differ: no repeats of an unchanged state.
    assert!(seen.windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn runtime_health_check_runs_in_the_task_namespaces_and_an_unhealthy_run_is_restarted() {
    let f = Fixture::new();
    let ns = task_netns("rt-health", None);
    let flag = f.root.path().join("healthy");
    let mut spec = sh("health", "exec sleep 1000");
    spec.netns = Some(netns_path(&ns));
    spec.hosts = Some("127.0.0.1 localhost\n10.9.9.9 health-task\n".into());
    spec.restart = RestartPolicy {
        condition: RestartCondition::Any,
        // Long enough to see the failed run's state before the next starts.
        delay: Duration::from_secs(2),
        ..RestartPolicy::default()
    };
    // Passes only in the task's network and mount namespaces, while the flag exists.
    spec.health = Some(HealthCheck {
        cmd: format!(
            "test \"$(readlink /proc/self/ns/net)\" = '{}' && grep -q health-task /etc/hosts \
             && test -f {} || {{ echo not healthy; exit 1; }}",
            netns_link(&ns),
            flag.display()
        ),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
        retries: 2,
        start_period: Duration::ZERO,
    });
    f.start(spec);
    let s = f.wait_state("health", "running, health starting", |s| {
        s.state == TaskPhase::Running && s.health.is_some()
    });
    assert!(!s.serving(), "no traffic before a check passed: {s:?}");

    std::fs::write(&flag, b"").unwrap();
    let s = f.wait_state("health", "healthy", |s| {
        s.health
            .as_ref()
            .is_some_and(|h| h.status == HealthStatus::Healthy)
    });
    assert!(s.serving());

    std::fs::remove_file(&flag).unwrap();
    let s = f.wait_state("health", "stopped as unhealthy", |s| {
        s.message.starts_with("unhealthy: not healthy")
    });
    assert_eq!(s.state, TaskPhase::Failed, "{s:?}");
    assert!(!s.serving());

    std::fs::write(&flag, b"").unwrap();
    let s = f.wait_state("health", "restarted and healthy again", |s| {
        s.restarts == 1 && s.serving()
    });
    assert_eq!(s.health.unwrap().failing_streak, 0);
    f.stop("health");
}
