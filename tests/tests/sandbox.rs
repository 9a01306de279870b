//! Sandbox mode (`mesh sandbox up|status|exec|down`) with the stand-in daemon, in a private
//! directory and prefix so it never touches a real sandbox. Needs root.

use std::ffi::OsString;

use mesh_tests::sandbox::{self, SandboxLocation, SandboxOptions};
use mesh_tests::{Netns, lab_root, parse_nodes, standin_binary, unique_prefix};
use nix::unistd::{Pid, getsid};

/// Takes the sandbox down when the test ends, also on panic.
struct Down(SandboxLocation);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = sandbox::down(&self.0);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A process that is gone or a zombie (the detached daemons are still our children).
fn dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn sandbox_up_status_exec_down() {
    let prefix = unique_prefix();
    let loc = SandboxLocation {
        dir: lab_root().join(&prefix),
        prefix: prefix.clone(),
    };
    let _down = Down(loc.clone());
    let opts = SandboxOptions {
        location: loc.clone(),
        // The stand-in has no networks or services.
        demo_service: false,
        ..SandboxOptions::new(4, standin_binary())
    };

    let mut out = Vec::new();
    sandbox::up(&opts, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("mesh sandbox exec node1 -- mesh node ls"),
        "{out}"
    );
    let again = sandbox::up(&opts, &mut Vec::new()).unwrap_err();
    assert!(again.to_string().contains("already up"), "{again:#}");

    let status = sandbox::status(&loc).unwrap();
    let roles: Vec<_> = status
        .iter()
        .map(|s| (s.node.name.as_str(), s.node.role.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("node1", "manager"),
            ("node2", "manager"),
            ("node3", "manager"),
            ("node4", "worker")
        ]
    );
    let pids: Vec<u32> = status
        .iter()
        .map(|s| s.pid.expect("daemon running"))
        .collect();
    for &pid in &pids {
        let pid = Pid::from_raw(pid as i32);
        assert_eq!(
            getsid(Some(pid)).unwrap(),
            pid,
            "a detached daemon leads its own session"
        );
    }

    // `exec` runs inside the node, with MESH_HOST set and the sandbox's `mesh` on PATH.
    let listing = loc.dir.join("nodes.json");
    let cmd = format!("mesh node ls --format json > {}", listing.display());
    assert!(
        sandbox::exec(&loc, "node1", &argv(&["sh", "-c", &cmd]))
            .unwrap()
            .success()
    );
    let rows = parse_nodes(&std::fs::read_to_string(&listing).unwrap()).unwrap();
    assert_eq!(rows.len(), 4);
    let addr = loc.dir.join("addr");
    let cmd = format!("ip -4 -o addr show eth0 > {}", addr.display());
    assert!(
        sandbox::exec(&loc, "2", &argv(&["sh", "-c", &cmd]))
            .unwrap()
            .success()
    );
    assert!(
        std::fs::read_to_string(&addr)
            .unwrap()
            .contains("10.77.0.12/24")
    );
    assert!(
        !sandbox::exec(&loc, "node1", &argv(&["false"]))
            .unwrap()
            .success()
    );
    assert!(sandbox::exec(&loc, "node9", &argv(&["true"])).is_err());

    sandbox::down(&loc).unwrap();
    let dash = format!("{prefix}-");
    assert!(!Netns::list().unwrap().iter().any(|n| n.starts_with(&dash)));
    assert!(!loc.dir.exists());
    assert!(pids.iter().all(|&pid| dead(pid)), "{pids:?}");
    sandbox::down(&loc).unwrap();
    assert!(sandbox::status(&loc).is_err());
}
