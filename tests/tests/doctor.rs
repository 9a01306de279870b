//! `mesh doctor` as an operator runs it: on this machine with no daemon, and inside a lab
//! host whose daemon is a manager holding mesh's ports. Root needed (the lab's namespaces;
//! nftables). What the checks find depends on the machine; that they all run, each on its line,
//! and end in status 0 (no problem) or 1 (a problem), does not.

use std::collections::BTreeMap;
use std::process::Command;

use mesh_tests::mesh_bin;
use serde_json::Value;

/// Every check `mesh doctor` runs as root, in order (forward-policy lines, one per chain that
/// drops, are matched by their start).
const CHECKS: &[&str] = &[
    "daemon",
    "vxlan",
    "nftables",
    "conntrack",
    "ipvs",
    "wireguard",
    "tun",
    "port 2377/tcp",
    "port 7946/tcp",
    "port 7946/udp",
    "port 4789/udp",
    "ip_forward",
    "rp_filter",
    "forward policy",
    "mtu",
    "subnets",
    "certificate",
    "clock",
];

/// The checks of a text report: (status, check name, detail), in order, and the count line.
fn parse_report(text: &str) -> (Vec<(String, String)>, String) {
    let mut lines: Vec<&str> = text.lines().collect();
    let summary = lines.pop().expect("a summary line").to_string();
    let mut checks = Vec::new();
    for line in lines {
        if line.trim_start().starts_with("fix: ") {
            assert!(!checks.is_empty(), "a fix before any check:\n{text}");
            continue;
        }
        let (status, rest) = line.split_once("  ").expect("status, then the check");
        assert!(
            ["ok", "warn", "problem"].contains(&status.trim()),
            "{line:?} does not start with ok, warn or problem:\n{text}"
        );
        let name = CHECKS
            .iter()
            .find(|c| rest.trim_start().starts_with(*c))
            .unwrap_or_else(|| panic!("{line:?}: not a known check:\n{text}"));
        checks.push((status.trim().to_string(), name.to_string()));
    }
    (checks, summary)
}

fn assert_one_line_per_check(text: &str, code: Option<i32>) -> BTreeMap<String, String> {
    let (checks, summary) = parse_report(text);
    let names: Vec<&str> = checks.iter().map(|(_, n)| n.as_str()).collect();
    let mut want: Vec<&str> = CHECKS.to_vec();
    // forward policy: one line per chain that drops, or one saying none does
    let forward = names.iter().filter(|n| **n == "forward policy").count();
    assert!(forward >= 1, "no forward-policy line:\n{text}");
    let at = want.iter().position(|c| *c == "forward policy").unwrap();
    for _ in 1..forward {
        want.insert(at, "forward policy");
    }
    assert_eq!(names, want, "the checks, in order:\n{text}");
    let problems = checks.iter().filter(|(s, _)| s == "problem").count();
    assert!(
        summary.starts_with(&format!("{} checks: ", checks.len()))
            && summary.ends_with(&format!(", {problems} problem")),
        "summary {summary:?}:\n{text}"
    );
    assert_eq!(
        code,
        Some(if problems > 0 { 1 } else { 0 }),
        "exit status:\n{text}"
    );
    checks
        .into_iter()
        .map(|(status, name)| (name, status))
        .collect()
}

#[test]
fn doctor_on_this_machine_prints_a_line_per_check_and_exits_0_or_1() {
    let dir = tempfile::tempdir().unwrap();
    // A daemon socket that does not exist, and an empty state dir: the checks of this
    // machine, whatever daemon it may run.
    let socket = format!("unix://{}", dir.path().join("mesh.sock").display());
    let run = |format: &str| {
        Command::new(mesh_bin!())
            .args(["--host", &socket, "doctor", "--state-dir"])
            .arg(dir.path())
            .args(["--format", format])
            .output()
            .expect("run mesh doctor")
    };
    let out = run("table");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks = assert_one_line_per_check(&text, out.status.code());
    assert_eq!(checks["daemon"], "ok", "{text}");
    assert_eq!(checks["certificate"], "ok", "no certificate: {text}");

    // the same checks as JSON
    let out = run("json");
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(
        docs.len(),
        text.lines()
            .filter(|l| !l.trim_start().starts_with("fix:"))
            .count()
            - 1
    );
    for d in &docs {
        assert!(
            ["ok", "warn", "problem"].contains(&d["status"].as_str().unwrap()),
            "{d}"
        );
        assert!(d["detail"].as_str().is_some_and(|s| !s.is_empty()), "{d}");
        assert_eq!(d["fix"].is_null(), d["status"] == "ok", "{d}");
    }

    // bad input: one line, non-zero, nothing checked
    let out = run("{{.Nope}}");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: --format: no field \"Nope\""),
        "{err}"
    );
}

#[test]
fn doctor_on_a_manager_finds_its_daemon_and_calls_the_busy_ports_its_own() {
    let lab = mesh_tests::cluster(1, 0).unwrap();
    let host = lab.host(1);
    let state_dir = host.state_dir();
    let out = host
        .cli(
            ["doctor", "--state-dir"]
                .iter()
                .map(std::ffi::OsStr::new)
                .chain([state_dir.as_os_str()]),
        )
        .unwrap();
    let checks = assert_one_line_per_check(&out.stdout, out.status.code());
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| {
                l.split_once("  ")
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(name))
            })
            .unwrap_or_else(|| panic!("no {name} line:\n{}", out.stdout))
            .to_string()
    };
    assert!(line("daemon").contains("(manager)"), "{}", out.stdout);
    // the manager listens on 2377: busy, and ours
    assert_eq!(checks["port 2377/tcp"], "ok", "{}", out.stdout);
    assert!(
        line("port 2377/tcp").contains("taken to be the mesh daemon's"),
        "{}",
        out.stdout
    );
    // its certificate, fresh from `mesh init`
    assert_eq!(checks["certificate"], "ok", "{}", out.stdout);
    // In a cluster the clock is compared with the leader's (here, the same clock).
    assert_eq!(checks["clock"], "ok", "{}", out.stdout);
    assert!(
        line("clock").contains("from the leader's"),
        "{}",
        out.stdout
    );
    assert!(
        line("certificate").contains("valid until"),
        "{}",
        out.stdout
    );
}
