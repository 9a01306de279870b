//! The agent dies, tasks live on and are re-adopted; dead shims are not mistaken for live ones.

use std::process::Stdio;

use super::*;

#[test]
fn runtime_task_survives_the_runtime_being_dropped_and_is_adopted() {
    let mut f = Fixture::new();
    let ns = task_netns("rt-adopt", Some("10.78.0.2/24"));
    let mut spec = whoami("adopted", 8080);
    spec.netns = Some(netns_path(&ns));
    f.start(spec);
    let before = f.wait_running("adopted");
    let mut conn = connect_in(&ns, 8080);
    let first = http_get(&mut conn, "/").unwrap();
    assert!(first.contains("task: adopted.name\n"), "{first}");
    // The task's own addresses (not the host's), loopback left out.
    assert!(first.contains("addresses: 10.78.0.2\n"), "{first}");

    f.restart_agent();
    let adopted = f.rt.block_on(f.tasks().adopt());
    assert_eq!(adopted, ["adopted"]);
    let after = f.tasks().state("adopted").unwrap();
    assert_eq!(after, before);
    assert_eq!(f.tasks().exec_target("adopted"), before.pid);

    // The connection opened before the "agent restart" still works, and the server sees the
    // same client.
    let second = http_get(&mut conn, "/").unwrap();
    let client = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("client: "))
            .map(str::to_owned)
    };
    assert_eq!(client(&second), client(&first));
    f.stop("adopted");
}

#[test]
fn runtime_task_survives_an_agent_killed_with_sigkill_and_is_adopted() {
    let f = Fixture::new();
    let ns = task_netns("rt-kill9", None);
    let mut spec = whoami("survivor", 8081);
    spec.netns = Some(netns_path(&ns));
    let spec_file = f.root.path().join("survivor.json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();

    // The "agent": another process that starts the task with its own TaskRuntime and stays.
    let mut agent = Command::new(helper_binary())
        .arg("start")
        .arg("--root")
        .arg(f.tasks().root())
        .arg("--spec")
        .arg(&spec_file)
        .arg("--hold")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(agent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let before = f.wait_running("survivor");
    let mut conn = connect_in(&ns, 8081);
    let mut stream = connect_in(&ns, 8081);
    stream
        .get_mut()
        .write_all(b"GET /stream?interval_ms=20 HTTP/1.1\r\n\r\n")
        .unwrap();
    let first = http_get(&mut conn, "/").unwrap();

    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();

    let tasks = TaskRuntime::new(f.tasks().root().to_owned(), helper_binary());
    assert_eq!(f.rt.block_on(tasks.adopt()), ["survivor"]);
    let after = tasks.state("survivor").unwrap();
    assert_eq!((after.state, after.pid), (TaskPhase::Running, before.pid));
    let second = http_get(&mut conn, "/").unwrap();
    assert_eq!(
        first.lines().find(|l| l.starts_with("client: ")),
        second.lines().find(|l| l.starts_with("client: "))
    );
    // The long-lived stream keeps flowing.
    let mut lines = Vec::new();
    while lines.len() < 12 {
        let mut l = String::new();
        assert!(stream.read_line(&mut l).unwrap() > 0, "stream closed");
        lines.push(l);
    }
    assert!(
        lines.last().unwrap().contains("task=survivor.name"),
        "{lines:?}"
    );
    f.rt.block_on(tasks.stop("survivor")).unwrap();
}

#[test]
fn runtime_killed_shim_takes_its_task_down_and_reads_failed() {
    let f = Fixture::new();
    f.start(sh("orphan", "exec sleep 1000"));
    let running = f.wait_running("orphan");
    let shim = f.shim("orphan").unwrap();
    shim.open()
        .unwrap()
        .unwrap()
        .send_signal(Signal::SIGKILL)
        .unwrap();
    let state = f.wait_state("orphan", "failed", |s| s.state == TaskPhase::Failed);
    assert_eq!(state.message, "supervisor died");
    assert!(state.done);
    // The task process had the shim as parent-death signal source.
    let task = ProcIdentity {
        pid: running.pid.unwrap(),
        start_time: running.pid_start_time.unwrap(),
    };
    wait_for("the task to die with its shim", PATIENCE, || {
        Ok(!task.is_alive())
    })
    .unwrap();
    assert_eq!(f.tasks().exec_target("orphan"), None);
    assert!(f.rt.block_on(f.tasks().adopt()).is_empty());
    // A new start replaces it.
    f.start(sh("orphan", "exec sleep 1000"));
    let again = f.wait_running("orphan");
    assert_eq!(again.restarts, 0);
    assert_ne!(again.pid, running.pid);
}

#[test]
fn runtime_dead_or_reused_shim_pid_is_failed_not_running() {
    let f = Fixture::new();
    let root = f.tasks().root().to_owned();
    let mut running = TaskState::starting(0, "running");
    running.state = TaskPhase::Running;
    running.pid = Some(1);
    let mut finished = running.clone();
    finished.state = TaskPhase::Exited;
    finished.done = true;

    // A process that is alive but is no shim (this test) and one that has exited.
    let me = ProcIdentity::current().unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let exited = ProcIdentity::of(child.id() as i32).unwrap();
    child.wait().unwrap();
    let cases = [
        // (task, shim.pid content, recorded state, what must be seen)
        ("dead", exited.to_line(), &running, TaskPhase::Failed),
        (
            "reused",
            ProcIdentity {
                start_time: me.start_time + 1,
                ..me
            }
            .to_line(),
            &running,
            TaskPhase::Failed,
        ),
        ("notashim", me.to_line(), &running, TaskPhase::Failed),
        ("garbage", "x y\n".to_owned(), &running, TaskPhase::Failed),
        ("finished", exited.to_line(), &finished, TaskPhase::Exited),
    ];
    for (id, pid_line, state, _) in &cases {
        let dir = TaskDir::new(root.join(id));
        std::fs::create_dir_all(dir.path()).unwrap();
        state::write_json_atomic(&dir.spec(), &sh(id, "true")).unwrap();
        std::fs::write(dir.shim_pid(), pid_line).unwrap();
        dir.write_state(state).unwrap();
    }
    let listed = f.tasks().list();
    assert_eq!(listed.len(), cases.len());
    for (id, _, _, want) in &cases {
        let seen = f.tasks().state(id).unwrap();
        assert_eq!(seen.state, *want, "{id}: {seen:?}");
        assert!(seen.done, "{id}");
        if *want == TaskPhase::Failed {
            assert_eq!(seen.message, "supervisor died", "{id}");
        }
        assert_eq!(f.tasks().exec_target(id), None, "{id}");
    }
    assert!(f.rt.block_on(f.tasks().adopt()).is_empty());
    // Stopping a task whose shim is dead touches no process and succeeds.
    f.stop("notashim");
    assert!(me.is_alive());
}
