//! What an operator reaches for, proven on real daemons in host namespaces: placement
//! constraints on node labels and roles (and the pending reason when nothing fits),
//! `--replicas-max-per-node`, and health checks that decide whether a task receives traffic,
//! seen in every node's load balancer and in DNS. Needs root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mesh_tests::ops::{CLI_BOUND, mentions, refused};
use mesh_tests::services::{
    self, TaskRow, cli_ok, create_network, create_service, ensure_or_dump, wait, wait_lb,
    wait_running,
};
use mesh_tests::traffic::{self, WHOAMI_PORT};
use mesh_tests::{Lab, Poll};

/// Deadline for the cluster to reflect a change.
const SETTLE: Duration = Duration::from_secs(15);

fn label(lab: &Lab, node: &str, change: &[&str]) {
    let mut argv = vec!["node", "update"];
    argv.extend_from_slice(change);
    argv.push(node);
    cli_ok(lab.host(1), &argv, CLI_BOUND).unwrap();
}

/// The tasks of `service` meant to run, with their state and error, as `service ps` says.
fn wanted(lab: &Lab, service: &str) -> Vec<TaskRow> {
    services::tasks(lab.host(1), service)
        .unwrap()
        .into_iter()
        .filter(|t| t.desired_state == "running")
        .collect()
}

/// Waits until `service` has `running` tasks running, all on `on`, and `pending` pending
/// whose error is `why`.
fn wait_placed(lab: &Lab, service: &str, running: usize, on: &[&str], pending: usize, why: &str) {
    wait(
        lab,
        &format!("{service}: {running} running on {on:?}, {pending} pending ({why})"),
        SETTLE,
        || {
            let tasks = wanted(lab, service);
            let up: Vec<&TaskRow> = tasks.iter().filter(|t| t.is_running()).collect();
            let waiting: Vec<&TaskRow> = tasks.iter().filter(|t| t.state == "pending").collect();
            let ok = up.len() == running
                && up.iter().all(|t| on.contains(&t.node.as_str()))
                && waiting.len() == pending
                && waiting.iter().all(|t| t.raw["error"] == why);
            Ok(if ok {
                Poll::Ready(())
            } else {
                Poll::Pending(format!(
                    "{}; errors {:?}",
                    services::task_summary(&tasks),
                    waiting
                        .iter()
                        .map(|t| t.raw["error"].clone())
                        .collect::<Vec<_>>()
                ))
            })
        },
    )
    .unwrap();
}

#[test]
fn constraints_follow_node_labels_and_roles_and_what_cannot_be_placed_says_why() {
    let lab = mesh_tests::cluster(1, 2).unwrap();
    let n1 = lab.host(1);
    label(&lab, "node2", &["--label-add", "zone=a"]);
    create_service(
        n1,
        "edge",
        &["--replicas", "2", "--constraint", "node.labels.zone==a"],
    )
    .unwrap();
    wait_placed(&lab, "edge", 2, &["node2"], 0, "");
    create_service(
        n1,
        "mgr",
        &["--replicas", "2", "--constraint", "node.role==manager"],
    )
    .unwrap();
    wait_placed(&lab, "mgr", 2, &["node1"], 0, "");
    create_service(
        n1,
        "notmgr",
        &["--mode", "global", "--constraint", "node.role!=manager"],
    )
    .unwrap();
    wait_placed(&lab, "notmgr", 2, &["node2", "node3"], 0, "");

    // Nothing has zone=b: the task waits, saying which constraint no node meets.
    create_service(
        n1,
        "zb",
        &["--detach", "--constraint", "node.labels.zone==b"],
    )
    .unwrap();
    let no_b =
        "no suitable node (scheduling constraints not satisfied on 3 nodes: node.labels.zone==b)";
    wait_placed(&lab, "zb", 0, &[], 1, no_b);
    let table = cli_ok(n1, &["service", "ps", "zb"], CLI_BOUND).unwrap();
    assert!(table.contains(no_b), "service ps zb:\n{table}");
    // Labelled: it runs there.
    label(&lab, "node3", &["--label-add", "zone=b"]);
    wait_placed(&lab, "zb", 1, &["node3"], 0, "");
    // The label goes from node2: edge's tasks leave it and wait.
    label(&lab, "node2", &["--label-rm", "zone"]);
    let no_a =
        "no suitable node (scheduling constraints not satisfied on 3 nodes: node.labels.zone==a)";
    wait_placed(&lab, "edge", 0, &[], 2, no_a);
    // The constraint changes with `service update`: edge moves to zone b.
    cli_ok(
        n1,
        &[
            "service",
            "update",
            "--detach",
            "--constraint-rm",
            "node.labels.zone==a",
            "--constraint-add",
            "node.labels.zone==b",
            "edge",
        ],
        CLI_BOUND,
    )
    .unwrap();
    wait_placed(&lab, "edge", 2, &["node3"], 0, "");

    // At most one per node: three run, one waits.
    create_service(
        n1,
        "one",
        &[
            "--detach",
            "--replicas",
            "4",
            "--replicas-max-per-node",
            "1",
        ],
    )
    .unwrap();
    wait_placed(
        &lab,
        "one",
        3,
        &["node1", "node2", "node3"],
        1,
        "no suitable node (max replicas per node reached on 3 nodes)",
    );

    // Bad expressions are refused with one line naming them, and store nothing.
    let before = services::service_names(n1).unwrap();
    let whoami = services::whoami();
    for (flags, words) in [
        (
            vec!["--constraint", "node.labels.zone"],
            &["node.labels.zone", "=="][..],
        ),
        (
            vec!["--constraint", "node.platform.os==linux"],
            &["node.platform.os"],
        ),
        (vec!["--placement-pref", "spread=node.id"], &["node.id"]),
        (
            vec!["--mode", "global", "--replicas-max-per-node", "2"],
            &["global"],
        ),
    ] {
        let mut argv = vec!["service", "create", "--name", "bad"];
        argv.extend(flags.iter().copied());
        argv.push("--");
        argv.extend(whoami.iter().map(String::as_str));
        let refusal = refused(n1, &argv, CLI_BOUND).unwrap();
        assert!(mentions(&refusal.message, words), "{flags:?}: {refusal:?}");
        assert_eq!(services::service_names(n1).unwrap(), before, "{flags:?}");
    }
}

/// The DNS answer for `tasks.api` from a client task, as a set.
fn tasks_dns(ns: &mesh_dataplane::netns::Netns) -> BTreeSet<Ipv4Addr> {
    traffic::resolve(ns, "tasks.api")
        .map(|a| a.addrs.into_iter().collect())
        .unwrap_or_default()
}

#[test]
fn only_healthy_tasks_receive_traffic_and_an_unhealthy_one_leaves_every_lb_and_dns() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let n1 = lab.host(1);
    // One flag file per task: the check passes while its own exists.
    let flags = tempfile::Builder::new()
        .prefix(&format!("{}-health-", lab.prefix()))
        .tempdir()
        .unwrap();
    let flag = |task: &str| flags.path().join(task);
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "probe", &["--mode", "global", "--network", "ov"]).unwrap();
    let check = format!("test -f {}/$MESH_TASK_NAME", flags.path().display());
    create_service(
        n1,
        "api",
        &[
            "--detach",
            "--replicas",
            "2",
            "--network",
            "ov",
            "--health-cmd",
            &check,
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
            // Failures before the first pass do not count: a task waits for its flag.
            "--health-start-period",
            "60s",
            "--restart-delay",
            "0s",
        ],
    )
    .unwrap();
    let probes = wait_running(&lab, n1, "probe", 3, SETTLE).unwrap();
    let api = wait_running(&lab, n1, "api", 2, SETTLE).unwrap();
    let vip = services::vip(n1, "api", &net.id).unwrap();
    let ip = |name: &str| {
        api.iter()
            .find(|t| t.name == name)
            .and_then(|t| t.addr_on(&net.id))
            .unwrap()
    };
    let client = probes[0].netns(&lab).unwrap();

    // Running, no check passed: no backend anywhere, no name.
    wait_lb(&lab, &probes, vip, &BTreeSet::new(), SETTLE).unwrap();
    let shown = cli_ok(n1, &["service", "ps", "api"], CLI_BOUND).unwrap();
    assert!(
        shown.matches("running (starting)").count() == 2,
        "service ps api:\n{shown}"
    );
    assert!(tasks_dns(&client).is_empty());

    // api.1 healthy: every load balancer and DNS has it, and only it.
    std::fs::write(flag("api.1"), b"").unwrap();
    let only_1 = BTreeSet::from([ip("api.1")]);
    wait_lb(&lab, &probes, vip, &only_1, SETTLE).unwrap();
    let burst = traffic::http_burst(&client, SocketAddrV4::new(vip, WHOAMI_PORT), 30).unwrap();
    let answered: BTreeSet<String> = burst.by_task().into_keys().collect();
    let api1 = api.iter().find(|t| t.name == "api.1").unwrap().id.clone();
    assert_eq!(
        answered,
        BTreeSet::from([api1]),
        "{}",
        burst.summary(Instant::now())
    );
    assert_eq!(tasks_dns(&client), only_1);

    std::fs::write(flag("api.2"), b"").unwrap();
    let both = BTreeSet::from([ip("api.1"), ip("api.2")]);
    wait_lb(&lab, &probes, vip, &both, SETTLE).unwrap();
    let shown = cli_ok(n1, &["service", "ps", "api"], CLI_BOUND).unwrap();
    assert_eq!(shown.matches("running (healthy)").count(), 2, "{shown}");

    // api.1 turns unhealthy: it leaves every load balancer and DNS within two failed checks
    // and gossip, and is restarted by its restart policy.
    std::fs::remove_file(flag("api.1")).unwrap();
    let turned = Instant::now();
    let only_2 = BTreeSet::from([ip("api.2")]);
    wait_lb(&lab, &probes, vip, &only_2, Duration::from_secs(5)).unwrap();
    let left = turned.elapsed();
    wait(&lab, "tasks.api to name api.2 only", SETTLE, || {
        let got = tasks_dns(&client);
        Ok(if got == only_2 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{got:?}"))
        })
    })
    .unwrap();
    eprintln!("api.1 left every load balancer {left:?} after its check began failing");
    wait(
        &lab,
        "api.1 restarted after turning unhealthy",
        SETTLE,
        || {
            let t = wanted(&lab, "api");
            let a1 = t.iter().find(|t| t.name == "api.1");
            Ok(a1.is_some_and(|t| t.raw["restarts"].as_u64().unwrap_or(0) >= 1))
        },
    )
    .unwrap();
    // Healthy again: back in every load balancer.
    std::fs::write(flag("api.1"), b"").unwrap();
    wait_lb(&lab, &probes, vip, &both, SETTLE).unwrap();
    let ok = traffic::http_burst(&client, SocketAddrV4::new(vip, WHOAMI_PORT), 30).unwrap();
    ensure_or_dump(
        &lab,
        ok.failures().is_empty() && ok.by_task().len() == 2,
        "both replicas answer once healthy again",
        || ok.summary(Instant::now()),
    )
    .unwrap();
}

/// `service inspect api`'s update status: (state, message).
fn update_status(lab: &Lab) -> (String, String) {
    let out = cli_ok(lab.host(1), &["service", "inspect", "api"], CLI_BOUND).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let u = &v[0]["update_status"];
    (
        u["state"].as_str().unwrap_or_default().to_owned(),
        u["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Waits until every probe's load balancer sends api's VIP to its running tasks, and 20
/// requests through it all succeed.
fn api_serves(lab: &Lab, probes: &[TaskRow], net_id: &str, vip: Ipv4Addr) {
    let api = wait_running(lab, lab.host(1), "api", 2, SETTLE).unwrap();
    let backends: BTreeSet<Ipv4Addr> = api.iter().filter_map(|t| t.addr_on(net_id)).collect();
    wait_lb(lab, probes, vip, &backends, SETTLE).unwrap();
    let ns = probes[0].netns(lab).unwrap();
    let burst = traffic::http_burst(&ns, SocketAddrV4::new(vip, WHOAMI_PORT), 20).unwrap();
    ensure_or_dump(
        lab,
        burst.failures().is_empty(),
        "api to answer through its VIP",
        || burst.summary(Instant::now()),
    )
    .unwrap();
}

#[test]
fn a_failing_update_rolls_back_or_pauses_and_rollback_returns_to_the_previous_spec() {
    let lab = mesh_tests::cluster(1, 1).unwrap();
    let n1 = lab.host(1);
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "probe", &["--mode", "global", "--network", "ov"]).unwrap();
    create_service(
        n1,
        "api",
        &[
            "--replicas",
            "2",
            "--network",
            "ov",
            "--update-monitor",
            "1s",
        ],
    )
    .unwrap();
    let probes = wait_running(&lab, n1, "probe", 2, SETTLE).unwrap();
    let vip = services::vip(n1, "api", &net.id).unwrap();
    api_serves(&lab, &probes, &net.id, vip);
    let bound = Duration::from_secs(60);

    // A command that fails at once, with rollback as the failure action: the update rolls
    // back by itself and the command says so, failing.
    let out = n1
        .cli_with_timeout(
            [
                "service",
                "update",
                "--update-failure-action",
                "rollback",
                "api",
                "--",
                "sh",
                "-c",
                "exit 3",
            ],
            bound,
        )
        .unwrap();
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("update rolled back due to failure or early termination of task api.")
            && out.stderr.contains("exited with status 3"),
        "{out}"
    );
    wait(&lab, "the rollback to complete", SETTLE, || {
        let (state, message) = update_status(&lab);
        Ok(if state == "rollback_completed" {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{state}: {message}"))
        })
    })
    .unwrap();
    api_serves(&lab, &probes, &net.id, vip);

    // The default action pauses: the command fails naming the task, one old task still
    // serves, the rest of the update waits.
    let out = n1
        .cli_with_timeout(
            ["service", "update", "api", "--", "sh", "-c", "exit 4"],
            bound,
        )
        .unwrap();
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("update paused due to failure"), "{out}");
    let (state, _) = update_status(&lab);
    assert_eq!(state, "paused");
    let old_running = services::running(n1, "api")
        .unwrap()
        .into_iter()
        .filter(|t| t.raw["restarts"] == 0)
        .count();
    assert!(old_running >= 1, "the paused update left an old task");

    // `service rollback` returns to the spec before: both tasks serve again.
    cli_ok(n1, &["service", "rollback", "api"], bound).unwrap();
    assert_eq!(update_status(&lab).0, "rollback_completed");
    api_serves(&lab, &probes, &net.id, vip);
    let inspect = cli_ok(n1, &["service", "inspect", "api"], CLI_BOUND).unwrap();
    assert!(inspect.contains("whoami"), "{inspect}");
    // Nothing to roll back to twice in a row is still a spec: rollback swaps back.
    let refusal = refused(
        n1,
        ["service", "update", "--rollback", "--replicas", "3", "api"],
        CLI_BOUND,
    )
    .unwrap();
    assert!(mentions(&refusal.message, &["--rollback"]), "{refusal:?}");
}

/// `network inspect ov --verbose`'s per-node reports, by hostname.
fn verbose(lab: &Lab) -> std::collections::BTreeMap<String, serde_json::Value> {
    let out = cli_ok(
        lab.host(1),
        &["network", "inspect", "--verbose", "ov"],
        CLI_BOUND,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_owned(), n.clone()))
        .collect()
}

#[test]
fn network_inspect_verbose_shows_each_nodes_kernel_against_what_it_wants() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let n1 = lab.host(1);
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "probe", &["--mode", "global", "--network", "ov"]).unwrap();
    create_service(n1, "api", &["--replicas", "2", "--network", "ov"]).unwrap();
    let probes = wait_running(&lab, n1, "probe", 3, SETTLE).unwrap();
    let api = wait_running(&lab, n1, "api", 2, SETTLE).unwrap();
    let vip = services::vip(n1, "api", &net.id).unwrap();
    let backends: BTreeSet<Ipv4Addr> = api.iter().filter_map(|t| t.addr_on(&net.id)).collect();
    wait_lb(&lab, &probes, vip, &backends, SETTLE).unwrap();
    let tasks: Vec<&TaskRow> = probes.iter().chain(api.iter()).collect();

    // Every node: the other two as peers, an FDB and neighbor entry per task elsewhere, the
    // VIP's backends in its load balancer, nothing different.
    let nodes = wait(
        &lab,
        "every node's kernel to match what it wants",
        SETTLE,
        || {
            let nodes = verbose(&lab);
            Ok(
                if nodes.values().all(|n| n["differences"] == 0) && nodes.len() == 3 {
                    Poll::Ready(nodes)
                } else {
                    Poll::Pending(format!("{nodes:?}"))
                },
            )
        },
    )
    .unwrap();
    for host in lab.hosts() {
        let n = &nodes[host.name()];
        let others: BTreeSet<String> = lab
            .hosts()
            .iter()
            .filter(|h| h.name() != host.name())
            .map(|h| h.ip().to_string())
            .collect();
        let peers: BTreeSet<String> = n["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(peers, others, "{}: {n}", host.name());
        let elsewhere = tasks.iter().filter(|t| t.node != host.name()).count();
        assert_eq!(n["fdb"].as_array().unwrap().len(), elsewhere, "{n}");
        assert_eq!(n["neighbors"].as_array().unwrap().len(), elsewhere, "{n}");
        let lb: BTreeSet<String> = n["lb"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["vip"] == vip.to_string())
            .map(|e| e["backend"].as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = backends.iter().map(|b| b.to_string()).collect();
        assert_eq!(lb, want, "{}: {n}", host.name());
    }

    // An FDB entry removed behind the agent's back shows as missing on that node (the agent
    // puts it back at its next reconcile: remove it again until the report catches it).
    let node2 = lab.host(2);
    let victim = tasks.iter().find(|t| t.node != "node2").unwrap();
    let mac = victim.mac_on(&net.id).unwrap();
    let vtep = lab
        .hosts()
        .iter()
        .find(|h| h.name() == victim.node)
        .unwrap()
        .ip()
        .to_string();
    let ns = services::network_netns_name(&lab, node2, net.vni);
    let mut caught = None;
    for _ in 0..5 {
        services::run_in(
            &ns,
            &["bridge", "fdb", "del", &mac, "dev", "vxlan0", "dst", &vtep],
        )
        .unwrap();
        let n = verbose(&lab).remove("node2").unwrap();
        let missing = n["fdb"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == mac.as_str() && e["state"] == "missing");
        if missing {
            caught = Some(n);
            break;
        }
    }
    let n = caught.expect("the removed entry reported missing");
    assert!(n["differences"].as_u64().unwrap() >= 1, "{n}");
    // And the agent repairs it.
    wait(
        &lab,
        "node2's FDB repaired",
        Duration::from_secs(15),
        || Ok(verbose(&lab)["node2"]["differences"] == 0),
    )
    .unwrap();
}
