//! `mesh version` against a real daemon in a host namespace: the client's section and the
//! daemon's; with no daemon, the client's section, one error line and exit status 1, as
//! `docker version` does. Needs root.

use std::time::Duration;

use mesh_tests::{FAST_CONFIG, Lab, LabOptions};

#[test]
fn version_shows_the_daemon_and_says_so_in_one_line_when_there_is_none() {
    let lab = Lab::new(LabOptions {
        hosts: 1,
        binary: Some(mesh_tests::mesh_binary()),
        daemon_config: FAST_CONFIG.to_owned(),
        ..LabOptions::default()
    })
    .unwrap();
    let host = lab.host(1);
    host.start().unwrap();
    lab.wait_ready(host, Duration::from_secs(20)).unwrap();
    let version = env!("CARGO_PKG_VERSION");

    let table = host.cli(["version"]).unwrap().ok_stdout().unwrap();
    let (client, server) = table
        .split_once("\n\nServer:\n")
        .unwrap_or_else(|| panic!("no Server section:\n{table}"));
    assert!(client.starts_with("Client:\n"), "{table}");
    for section in [client, server] {
        assert!(
            section.contains(&format!(" Version:      {version}\n")),
            "{table}"
        );
        assert!(section.contains(" API version:  1\n"), "{table}");
        assert!(section.contains(" Rust version: "), "{table}");
    }
    let answer = host
        .cli([
            "version",
            "--format",
            "{{.Server.Version}} {{.Server.ApiVersion}}",
        ])
        .unwrap()
        .ok_stdout()
        .unwrap();
    assert_eq!(answer, format!("{version} 1\n"));

    host.stop(Duration::from_secs(20)).unwrap();
    let out = host.cli(["version"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stdout.starts_with("Client:\n"), "{out}");
    assert!(!out.stdout.contains("Server"), "{out}");
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].starts_with(&format!(
            "error: cannot connect to the mesh daemon at {}",
            host.socket_path().display()
        )),
        "{out}"
    );
    // A bad template is refused before the daemon is looked for.
    let out = host
        .cli(["version", "--format", "{{.Client.Version"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}
