//! `mesh exec`: commands run in the task's namespaces.

use super::*;

#[test]
fn runtime_exec_sees_the_task_files_addresses_and_environment() {
    let f = Fixture::new();
    let ns = task_netns("rt-exec", Some("10.77.0.2/24"));
    let mut spec = sh("exectarget", "cd /tmp && exec sleep 1000");
    spec.netns = Some(netns_path(&ns));
    spec.hosts = Some("10.77.0.2 exectarget\n".into());
    spec.env = vec![("MESH_TASK_NAME".into(), "exec.1".into())];
    f.start(spec);
    let state = f.wait_running("exectarget");
    let pid = f.tasks().exec_target("exectarget").unwrap();
    assert_eq!(Some(pid), state.pid);
    // The task is running before its shell has run `cd /tmp`: wait for it, with a deadline.
    wait_for("the task to reach /tmp", Duration::from_secs(5), || {
        Ok(std::fs::read_link(format!("/proc/{pid}/cwd")).ok() == Some("/tmp".into()))
    })
    .unwrap();

    let out = task_command(
        pid,
        &[
            "sh".into(),
            "-c".into(),
            "cat /etc/hosts; readlink /proc/self/ns/net; ip -4 -o addr show dev v0; \
             echo name=$MESH_TASK_NAME; pwd"
                .into(),
        ],
    )
    .unwrap()
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.77.0.2 exectarget\n"), "{text}");
    assert!(text.contains(&netns_link(&ns)), "{text}");
    assert!(text.contains("inet 10.77.0.2/24"), "{text}");
    assert!(text.contains("name=exec.1\n"), "{text}");
    assert!(text.ends_with("/tmp\n"), "{text}");

    // Through the CLI entry point: the caller's stdio and the exit status.
    let out = Command::new(helper_binary())
        .args(["exec", "--pid", &pid.to_string(), "--", "sh", "-c"])
        .arg("grep exectarget /etc/hosts; exit 7")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "10.77.0.2 exectarget\n"
    );

    // A pid that does not exist: one clear line, status 126.
    let out = Command::new(helper_binary())
        .args(["exec", "--pid", "999999999", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open net namespace of pid 999999999"), "{err}");
    f.stop("exectarget");
}
