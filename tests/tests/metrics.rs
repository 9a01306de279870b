//! `mesh daemon --metrics-addr`: every daemon serves its metrics inside its own host, and a
//! scrape from there parses and tells the truth about raft, gossip, the load balancers and
//! the tasks; a port of the cluster's own or a taken address stops the daemon in one line.
//! Real `mesh` daemons, one per host namespace; needs root.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_tests::metrics::{METRICS_ADDR, Scrape, http_get, scrape, with_metrics};
use mesh_tests::services::{create_network, create_service, wait, wait_running};
use mesh_tests::{ClusterOptions, FAST_CONFIG, Host, Lab, LabOptions, Poll};

/// Deadline for the cluster (and so its metrics) to reflect a change.
const SETTLE: Duration = Duration::from_secs(20);

/// Every host's scrape, by host name.
fn scrapes(lab: &Lab) -> anyhow::Result<BTreeMap<String, Scrape>> {
    lab.hosts()
        .iter()
        .map(|h| Ok((h.name().to_owned(), scrape(h)?)))
        .collect()
}

#[test]
fn every_node_serves_metrics_that_follow_raft_gossip_and_services() {
    let lab = mesh_tests::cluster_with(ClusterOptions {
        daemon_config: with_metrics(FAST_CONFIG),
        ..ClusterOptions::new(2, 1)
    })
    .unwrap();
    let (n1, worker) = (lab.host(1), lab.host(3));

    // Every family is there, on managers and workers alike (those with labels from what
    // the node holds, mesh_lb_backends{service}, once it holds some).
    let first = scrape(worker).unwrap();
    for family in [
        "mesh_raft_term",
        "mesh_raft_is_leader",
        "mesh_raft_commit_index",
        "mesh_raft_applied_index",
        "mesh_raft_leader_changes_total",
        "mesh_gossip_members",
        "mesh_gossip_packets_total",
        "mesh_gossip_auth_failures_total",
        "mesh_worker_reconcile_duration_seconds",
        "mesh_worker_reconcile_errors_total",
        "mesh_overlay_fdb_entries",
        "mesh_conntrack_flushes_total",
        "mesh_tasks",
        "mesh_dns_queries_total",
    ] {
        assert!(
            first.has_family(family),
            "{family} missing from {}:\n{}",
            worker.name(),
            first.text
        );
    }
    let (status, _) = http_get(worker, METRICS_ADDR.parse().unwrap(), "/").unwrap();
    assert_eq!(status, 404, "only /metrics answers");

    // Raft: both managers in a term, exactly one of them leading; gossip: everyone alive.
    wait(
        &lab,
        "a term on both managers, one leader, 3 alive members everywhere",
        SETTLE,
        || {
            let all = scrapes(&lab)?;
            let managers = [&all["node1"], &all["node2"]];
            let terms: Vec<Option<f64>> = managers
                .iter()
                .map(|s| s.value("mesh_raft_term", &[]))
                .collect();
            let leaders: Vec<Option<f64>> = managers
                .iter()
                .map(|s| s.value("mesh_raft_is_leader", &[]))
                .collect();
            let alive: Vec<Option<f64>> = all
                .values()
                .map(|s| s.value("mesh_gossip_members", &[("state", "alive")]))
                .collect();
            let ok = terms.iter().all(|t| *t >= Some(1.0))
                && leaders.iter().filter(|l| **l == Some(1.0)).count() == 1
                && leaders.iter().all(|l| l.is_some())
                && alive.iter().all(|a| *a == Some(3.0));
            Ok(if ok {
                Poll::Ready(())
            } else {
                Poll::Pending(format!(
                    "terms {terms:?}, is_leader {leaders:?}, alive {alive:?}"
                ))
            })
        },
    )
    .unwrap();
    let worker_raft = scrape(worker).unwrap();
    assert_eq!(worker_raft.value("mesh_raft_is_leader", &[]), Some(0.0));
    assert_eq!(
        worker_raft.value("mesh_tasks", &[("state", "running")]),
        Some(0.0)
    );

    // A service of two replicas: the nodes running them count them, and their load
    // balancers hold both.
    create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "web", &["--replicas", "2", "--network", "ov"]).unwrap();
    let tasks = wait_running(&lab, n1, "web", 2, SETTLE).unwrap();
    let mut hosting: Vec<&str> = tasks.iter().map(|t| t.node.as_str()).collect();
    hosting.sort_unstable();
    hosting.dedup();
    wait(
        &lab,
        "2 running tasks and 2 web backends in the metrics of the nodes running web",
        SETTLE,
        || {
            let all = scrapes(&lab)?;
            let running: f64 = all
                .values()
                .filter_map(|s| s.value("mesh_tasks", &[("state", "running")]))
                .sum();
            let backends: Vec<(&str, Option<f64>)> = hosting
                .iter()
                .map(|h| (*h, all[*h].value("mesh_lb_backends", &[("service", "web")])))
                .collect();
            let fdb: Vec<Option<f64>> = hosting
                .iter()
                .map(|h| all[*h].value("mesh_overlay_fdb_entries", &[]))
                .collect();
            let ok = running == 2.0
                && backends.iter().all(|(_, b)| *b == Some(2.0))
                && fdb.iter().all(|f| *f >= Some(1.0));
            Ok(if ok {
                Poll::Ready(())
            } else {
                Poll::Pending(format!(
                    "running {running}, web backends {backends:?}, fdb entries {fdb:?}"
                ))
            })
        },
    )
    .unwrap();
    // The writes went through raft on the leader, each timed from proposal to apply.
    let all = scrapes(&lab).unwrap();
    let shown: Vec<&str> = all[hosting[0]]
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .collect();
    println!("scrape of {}:\n{}", hosting[0], shown.join("\n"));
    let leader = all
        .values()
        .find(|s| s.value("mesh_raft_is_leader", &[]) == Some(1.0))
        .expect("a leader");
    assert!(leader.value("mesh_raft_apply_latency_seconds", &[]) >= Some(1.0));
    assert!(
        leader.value(
            "mesh_api_request_duration_seconds",
            &[("method", "create_service")]
        ) >= Some(1.0),
        "{}",
        leader.text
    );
}

/// The daemon of `host` exits non-zero by itself; the last line of its log.
fn refuses_to_start(lab: &Lab, host: &Host) -> String {
    let status = lab
        .wait_for("the daemon to refuse to start", SETTLE, || {
            host.daemon_exit_status()
        })
        .unwrap();
    assert!(!status.success(), "{}: exited with {status}", host.name());
    host.log_tail(1).trim_end().to_owned()
}

#[test]
fn a_cluster_port_or_a_taken_address_stops_the_daemon_in_one_line() {
    let lab = Lab::new(LabOptions {
        hosts: 1,
        binary: Some(mesh_tests::mesh_binary()),
        daemon_config: FAST_CONFIG.to_owned(),
        ..LabOptions::default()
    })
    .unwrap();
    let host = lab.host(1);
    for (addr, what) in [("127.0.0.1:7946", "gossip"), ("0.0.0.0:2377", "control")] {
        host.start_with(&["--metrics-addr", addr]).unwrap();
        let line = refuses_to_start(&lab, host);
        assert!(
            line.ends_with(&format!(
                "error: --metrics-addr: port {} of {addr} is the cluster's {what} port",
                &addr[addr.len() - 4..]
            )),
            "{line:?}"
        );
    }
    // Something else of the host already listens there.
    let taken = host
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    host.start_with(&["--metrics-addr", &addr]).unwrap();
    let line = refuses_to_start(&lab, host);
    assert!(
        line.contains(&format!("error: --metrics-addr: cannot listen on {addr}: ")),
        "{line:?}"
    );
    // Not an address at all: refused before anything starts.
    host.start_with(&["--metrics-addr", "localhost"]).unwrap();
    let line = refuses_to_start(&lab, host);
    assert!(
        line.ends_with("error: --metrics-addr: \"localhost\" is not an IP:PORT address (such as 127.0.0.1:9323)"),
        "{line:?}"
    );
    // And served where it is free.
    host.start_with(&["--metrics-addr", METRICS_ADDR]).unwrap();
    lab.wait_ready(host, SETTLE).unwrap();
    let s = scrape(host).unwrap();
    assert_eq!(
        s.value("mesh_gossip_members", &[("state", "alive")]),
        Some(0.0),
        "a node in no cluster gossips with nobody"
    );
}
