//! A cluster forms, agrees on its members everywhere, survives the restart of every daemon,
//! and `mesh init` refuses bad input without leaving a half-made cluster. Real `mesh`
//! daemons, one per host namespace; needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_tests::ops::{self, CLI_BOUND, mentions, refused, summary};
use mesh_tests::{Host, Lab, LabOptions, NodeRow, info, mesh_bin, nodes};

/// The view every node must have of a healthy cluster of `managers` + `workers`, whose ids
/// are `ids` (hostname -> id): all listed, all ready, one leader, managers reachable.
fn healthy(
    host: &Host,
    rows: &[NodeRow],
    ids: &BTreeMap<String, String>,
    managers: usize,
) -> Option<String> {
    let listed: BTreeMap<String, String> = rows
        .iter()
        .map(|r| (r.hostname.clone(), r.id.clone()))
        .collect();
    if rows.len() != ids.len() || &listed != ids {
        return Some(format!("lists {listed:?}, want {ids:?}"));
    }
    let wrong = |why: &str| Some(format!("{why}: {}", summary(rows)));
    if !rows.iter().all(NodeRow::is_up) {
        return wrong("not all ready");
    }
    if rows.iter().filter(|r| r.is_leader()).count() != 1 {
        return wrong("not exactly one leader");
    }
    if rows.iter().filter(|r| r.is_manager()).count() != managers {
        return wrong(&format!("not {managers} managers"));
    }
    for r in rows {
        let want = match (r.is_manager(), r.is_leader()) {
            (true, true) => "leader",
            (true, false) => "reachable",
            (false, _) => "",
        };
        if r.manager_status() != want {
            return wrong(&format!(
                "{} has manager status {:?}",
                r.hostname,
                r.manager_status()
            ));
        }
    }
    let selves: Vec<&str> = rows
        .iter()
        .filter(|r| r.is_self())
        .map(|r| r.hostname.as_str())
        .collect();
    if selves != [host.name()] {
        return Some(format!("rows marked self: {selves:?}"));
    }
    None
}

/// hostname -> node id, from each host's own `mesh info`.
fn own_ids(lab: &Lab) -> Result<BTreeMap<String, String>> {
    lab.hosts()
        .iter()
        .map(|h| Ok((h.name().to_owned(), ops::node_id(h)?)))
        .collect()
}

#[test]
fn three_managers_and_two_workers_agree_on_members_everywhere() {
    let lab = mesh_tests::cluster(3, 2).unwrap();
    let ids = own_ids(&lab).unwrap();
    let distinct: BTreeSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), 5, "five distinct, non-empty ids: {ids:?}");
    assert!(ids.values().all(|id| !id.is_empty()), "{ids:?}");

    let all: Vec<&Host> = lab.hosts().iter().collect();
    ops::wait_every_view(
        &lab,
        "every node to list the same 5 ready nodes",
        &all,
        Duration::from_secs(15),
        |h, rows| healthy(h, rows, &ids, 3),
    )
    .unwrap();
    for (host, rows) in ops::views(&all).unwrap() {
        for r in &rows {
            let want = if r.hostname.as_str() <= "node3" {
                "manager"
            } else {
                "worker"
            };
            assert_eq!(r.role, want, "{} lists {r:?}", host.name());
        }
        // The same cluster and leader, as each node's `info` reports them.
        let i = info(host).unwrap();
        assert_eq!(i["hostname"], host.name());
        assert_eq!(i["addr"], host.ip().to_string());
        assert_eq!(i["gossip"]["members"], 5, "{}: {i}", host.name());
    }
    let clusters: BTreeSet<String> = lab
        .hosts()
        .iter()
        .map(|h| info(h).unwrap()["cluster_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(clusters.len(), 1, "one cluster id: {clusters:?}");
}

/// Kills every daemon of a 3 + 2 cluster with SIGKILL and starts them again: all at once, or
/// (`managers_first`) the managers until they commit a write, then the workers. The cluster
/// must come back with the same ids, one leader, every node ready, and take writes.
fn kill_all_and_restart(managers_first: bool) {
    let lab = mesh_tests::cluster(3, 2).unwrap();
    let ids = own_ids(&lab).unwrap();
    let managers = ops::first(&lab, 3);
    ops::wait_leader(&lab, &managers, Duration::from_secs(10)).unwrap();

    for host in lab.hosts() {
        host.kill().unwrap();
    }
    let start = Instant::now();
    if managers_first {
        for host in &managers {
            host.start().unwrap();
        }
        for host in &managers {
            lab.wait_ready(host, Duration::from_secs(20)).unwrap();
        }
        // Managers first, until they commit a write and every one has applied it: a worker
        // whose session lands on a manager that has not yet applied its join is told `is not
        // a member` and wipes its membership (the product bug of the test above).
        ops::rotate_until_ok(&lab, managers[1], Duration::from_secs(15)).unwrap();
        let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(10)).unwrap();
        let index = ops::commit_index(leader).unwrap();
        for host in &managers {
            ops::wait_applied(&lab, host, index, Duration::from_secs(10)).unwrap();
        }
    }
    for host in lab.hosts().iter().filter(|h| !h.is_running()) {
        host.start().unwrap();
    }
    lab.wait_all_ready(Duration::from_secs(20)).unwrap();
    let all: Vec<&Host> = lab.hosts().iter().collect();
    ops::wait_every_view(
        &lab,
        "the same 5 nodes ready everywhere after restarting all",
        &all,
        Duration::from_secs(30),
        |h, rows| healthy(h, rows, &ids, 3),
    )
    .unwrap();
    eprintln!(
        "measured: all 5 daemons restarted -> every view healthy in {:?}",
        start.elapsed()
    );
    // No node joined again: each keeps its id.
    assert_eq!(own_ids(&lab).unwrap(), ids);
    let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(10)).unwrap();

    // Writes work, through a follower, and every manager reads the result; a worker lists
    // the same members.
    let follower = managers.iter().find(|h| h.name() != leader.name()).unwrap();
    let (token, _) = ops::rotate_until_ok(&lab, follower, Duration::from_secs(10)).unwrap();
    for host in &managers {
        assert_eq!(
            ops::join_token(host, "worker").unwrap(),
            token,
            "{}",
            host.name()
        );
    }
    let out = lab
        .host(5)
        .cli_with_timeout(["node", "ls", "-q"], CLI_BOUND)
        .unwrap()
        .ok_stdout()
        .unwrap();
    let listed: BTreeSet<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(listed, ids.values().cloned().collect());
}

#[test]
fn every_daemon_killed_and_restarted_at_once_brings_the_same_cluster_back() {
    kill_all_and_restart(false);
}

#[test]
fn every_daemon_killed_then_managers_and_workers_restarted_bring_the_same_cluster_back() {
    kill_all_and_restart(true);
}

/// A host with a daemon that is in no cluster.
fn lone_host() -> Lab {
    let lab = Lab::new(LabOptions {
        hosts: 1,
        binary: Some(mesh_bin!()),
        daemon_config: mesh_tests::FAST_CONFIG.to_owned(),
        ..LabOptions::default()
    })
    .unwrap();
    lab.start_all().unwrap();
    lab.wait_all_ready(Duration::from_secs(20)).unwrap();
    lab
}

#[test]
fn init_refuses_bad_input_in_one_line_and_stays_out_of_a_cluster() {
    let lab = lone_host();
    let host = lab.host(1);
    let ip = host.ip().to_string();
    // (arguments after `init`, words the message must contain)
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--advertise-addr", "node1.example"],
            vec!["--advertise-addr", "node1.example", "not an IP"],
        ),
        (
            vec!["--advertise-addr", "10.77.0.99"],
            vec![
                "--advertise-addr",
                "10.77.0.99",
                "not an address of this host",
            ],
        ),
        (
            vec!["--advertise-addr", "0.0.0.0"],
            vec!["--advertise-addr", "0.0.0.0"],
        ),
        (
            vec![
                "--advertise-addr",
                &ip,
                "--default-addr-pool",
                "10.0.0.0/33",
            ],
            vec!["--default-addr-pool", "10.0.0.0/33"],
        ),
        (
            vec!["--advertise-addr", &ip, "--default-addr-pool", "pool"],
            vec!["--default-addr-pool", "pool"],
        ),
        (
            vec![
                "--advertise-addr",
                &ip,
                "--default-addr-pool",
                "10.1.2.3/16",
            ],
            vec!["--default-addr-pool", "host bits"],
        ),
        (
            vec![
                "--advertise-addr",
                &ip,
                "--default-addr-pool",
                "10.0.0.0/8",
                "--default-addr-pool",
                "10.1.0.0/16",
            ],
            vec!["--default-addr-pool", "overlaps"],
        ),
        (
            vec![
                "--advertise-addr",
                &ip,
                "--default-addr-pool-mask-length",
                "31",
            ],
            vec!["--default-addr-pool-mask-length", "31"],
        ),
        (
            vec!["--advertise-addr", &ip, "--data-path-port", "80"],
            vec!["--data-path-port", "80"],
        ),
        (
            vec!["--advertise-addr", &ip, "--data-path-port", "7946"],
            vec!["--data-path-port", "7946"],
        ),
        (
            vec!["--advertise-addr", &ip, "--listen-addr", "nowhere"],
            vec!["--listen-addr", "nowhere"],
        ),
        (
            vec!["--advertise-addr", &ip, "--cert-expiry", "10m"],
            vec!["--cert-expiry"],
        ),
    ];
    for (args, words) in &cases {
        let argv: Vec<&str> = std::iter::once("init")
            .chain(args.iter().copied())
            .collect();
        let r = refused(host, &argv, CLI_BOUND).unwrap_or_else(|e| panic!("mesh {argv:?}: {e:#}"));
        for w in words {
            assert!(
                mentions(&r.message, &[w]),
                "mesh {argv:?}: message {:?} does not mention {w:?}",
                r.message
            );
        }
        assert_eq!(
            ops::node_id(host).unwrap(),
            "",
            "after mesh {argv:?}, the node is in a cluster"
        );
        assert!(
            !host.state_dir().join("node.json").exists(),
            "after mesh {argv:?}, the state dir holds a membership"
        );
    }
    // A node in no cluster says so for cluster commands.
    let r = refused(host, ["node", "ls"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["not part of a cluster"]), "{r:?}");

    // Then a good init works.
    let id = ops::init(host).unwrap();
    assert!(!id.is_empty());
    let rows = nodes(host).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].is_up() && rows[0].is_leader() && rows[0].is_manager(),
        "{rows:?}"
    );
    assert_eq!(rows[0].id, id);
    // And a second init is refused: it is already in a cluster.
    let r = refused(host, ["init", "--advertise-addr", &ip], CLI_BOUND).unwrap();
    assert!(
        mentions(&r.message, &["already part of a cluster"]),
        "{r:?}"
    );
    assert_eq!(ops::node_id(host).unwrap(), id);
}
