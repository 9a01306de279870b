//! Services, proven by requests: a VIP balances over replicas on several hosts and DNS names
//! them (`api`, `tasks.api`, dnsrr); the load balancer of every node follows scaling with no
//! failed request; a dead host's replica stops being used within seconds and is replaced; a
//! rolling update fails no request; services on different networks neither resolve nor reach
//! each other; bad input is refused with one line and stores nothing. Real `mesh` daemons,
//! one per host namespace; needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mesh_tests::ops::{CLI_BOUND, mentions, refused};
use mesh_tests::services::{
    self, CONVERGE_BOUND, NetworkRow, TaskRow, check, cli_ok, create_network, create_service,
    ensure_or_dump, wait, wait_lb, wait_running,
};
use mesh_tests::traffic::{self, RequestLoop, WHOAMI_PORT};
use mesh_tests::{FAST_NODE_DOWN_GRACE, Lab, Poll};

/// Deadline for the cluster to reflect a change.
const SETTLE: Duration = Duration::from_secs(15);

/// A network `ov`, a global `probe` on it (a client task with a load balancer on every
/// node) and `api` with `replicas` on it. Returns the network, the probes by node, and api's
/// VIP.
fn probe_and_api(lab: &Lab, replicas: usize) -> (NetworkRow, BTreeMap<String, TaskRow>, Ipv4Addr) {
    let n1 = lab.host(1);
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "probe", &["--mode", "global", "--network", "ov"]).unwrap();
    let r = replicas.to_string();
    create_service(n1, "api", &["--replicas", &r, "--network", "ov"]).unwrap();
    let probes = wait_running(lab, n1, "probe", lab.hosts().len(), SETTLE).unwrap();
    let vip = services::vip(n1, "api", &net.id).unwrap();
    let probes = probes.into_iter().map(|t| (t.node.clone(), t)).collect();
    (net, probes, vip)
}

/// The overlay addresses of `tasks` on `net`.
fn ips(tasks: &[TaskRow], net: &NetworkRow) -> BTreeSet<Ipv4Addr> {
    tasks.iter().filter_map(|t| t.addr_on(&net.id)).collect()
}

fn vip_addr(vip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(vip, WHOAMI_PORT)
}

#[test]
fn vip_balances_over_replicas_on_three_hosts_and_dns_names_them() {
    let lab = mesh_tests::cluster(3, 1).unwrap();
    let (net, probes, vip) = probe_and_api(&lab, 3);
    let n1 = lab.host(1);
    let api = wait_running(&lab, n1, "api", 3, SETTLE).unwrap();
    let api_nodes: BTreeSet<&str> = api.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(api_nodes.len(), 3, "replicas not spread: {api:?}");
    let client = probes
        .values()
        .find(|p| !api_nodes.contains(p.node.as_str()))
        .expect("a node without a replica");
    let ns = client.netns(&lab).unwrap();
    let backends = ips(&api, &net);
    wait_lb(&lab, std::slice::from_ref(client), vip, &backends, SETTLE).unwrap();

    let outcomes = traffic::http_burst(&ns, vip_addr(vip), 300).unwrap();
    let counts = outcomes.by_task();
    let ids: BTreeSet<String> = api.iter().map(|t| t.id.clone()).collect();
    let answered: BTreeSet<String> = counts.keys().cloned().collect();
    ensure_or_dump(
        &lab,
        outcomes.failures().is_empty() && answered == ids && counts.values().all(|&n| n <= 150),
        "300 requests to the VIP spread over the 3 replicas",
        || format!("replicas {ids:?}: {}", outcomes.summary(Instant::now())),
    )
    .unwrap();
    // The replicas saw the client's own address.
    let me = client.addr_on(&net.id).unwrap().to_string();
    for o in &outcomes.0 {
        let r = o.result.as_ref().unwrap();
        assert!(r.client.starts_with(&format!("{me}:")), "{r:?}");
    }

    // DNS from the client task: the name is the VIP, tasks.<name> the replicas.
    let answer = traffic::resolve(&ns, "api").unwrap();
    assert_eq!(answer.addrs, [vip], "api resolved to {answer:?}");
    let answer = traffic::resolve(&ns, "tasks.api").unwrap();
    let got: BTreeSet<Ipv4Addr> = answer.addrs.iter().copied().collect();
    assert_eq!(
        (answer.addrs.len(), got),
        (3, backends.clone()),
        "tasks.api resolved to {answer:?}"
    );

    // A dnsrr service: its name resolves to its tasks' addresses, no VIP.
    create_service(
        n1,
        "rr",
        &[
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "ov",
        ],
    )
    .unwrap();
    let rr = wait_running(&lab, n1, "rr", 2, SETTLE).unwrap();
    let want = ips(&rr, &net);
    wait(
        &lab,
        "rr to resolve to its 2 task addresses",
        SETTLE,
        || {
            let a = traffic::resolve(&ns, "rr")?;
            let got: BTreeSet<Ipv4Addr> = a.addrs.iter().copied().collect();
            Ok(if a.addrs.len() == 2 && got == want {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{a:?}, want {want:?}"))
            })
        },
    )
    .unwrap();
    // And each answers.
    for ip in &want {
        let r = traffic::http_get(&ns, SocketAddrV4::new(*ip, WHOAMI_PORT)).unwrap();
        assert!(rr.iter().any(|t| t.id == r.task_id), "{ip}: {r:?}");
    }
}

/// Scales `api` to each of `steps` in turn with a request loop running from a probe, each
/// step waited for until every probe's load balancer holds exactly the running replicas;
/// returns the outcomes, when each step began, and the last replica set.
fn scale_with_requests(
    lab: &Lab,
    steps: &[usize],
) -> (traffic::Outcomes, Vec<Instant>, Vec<TaskRow>, Instant) {
    let (net, probes, vip) = probe_and_api(lab, 3);
    let n1 = lab.host(1);
    let probes: Vec<TaskRow> = probes.into_values().collect();
    let api = wait_running(lab, n1, "api", 3, SETTLE).unwrap();
    wait_lb(lab, &probes, vip, &ips(&api, &net), SETTLE).unwrap();

    let requests = RequestLoop::start(probes[0].netns(lab).unwrap(), vip_addr(vip));
    let start = Instant::now();
    wait(lab, "20 requests before scaling", SETTLE, || {
        Ok(requests.outcomes().len() >= 20)
    })
    .unwrap();
    let mut began = Vec::new();
    let mut api = api;
    for n in steps {
        began.push(Instant::now());
        cli_ok(
            n1,
            &["service", "scale", &format!("api={n}")],
            CONVERGE_BOUND,
        )
        .unwrap();
        api = wait_running(lab, n1, "api", *n, SETTLE).unwrap();
        wait_lb(lab, &probes, vip, &ips(&api, &net), SETTLE).unwrap();
        // Every replica of this step has answered before the next step begins.
        let ready = Instant::now();
        wait(
            lab,
            &format!("requests to reach all {n} replicas"),
            SETTLE,
            || {
                let seen = requests.outcomes().since(ready).by_task();
                Ok(api.iter().all(|t| seen.contains_key(&t.id)))
            },
        )
        .unwrap();
    }
    // A few more requests once the last step is done.
    let settled = Instant::now();
    wait(lab, "20 requests after scaling", SETTLE, || {
        Ok(requests.outcomes().since(settled).len() >= 20)
    })
    .unwrap();
    began.push(settled);
    (requests.stop().unwrap(), began, api, start)
}

#[test]
fn load_balancers_follow_scaling_and_no_request_fails_during_scale_down() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let (outcomes, began, last, start) = scale_with_requests(&lab, &[6, 1]);
    let [_up, down, settled] = began[..] else {
        unreachable!()
    };
    let during = outcomes.since(down);
    let tail = outcomes.since(settled);
    let last = &last[0];
    ensure_or_dump(
        &lab,
        during.failures().is_empty()
            && tail.by_task().keys().collect::<Vec<_>>() == [&last.id]
            && outcomes.by_task().len() >= 6,
        "every request from the scale-down 6 -> 1 on to succeed, 6 replicas answering before",
        || {
            format!(
                "scale-down began at {:?}; all: {}; from the scale-down: {}; after it: {:?} \
                 (last replica {})",
                down - start,
                outcomes.summary(start),
                during.summary(start),
                tail.by_task(),
                last.id
            )
        },
    )
    .unwrap();
}

#[test]
fn load_balancers_follow_scale_up_with_no_failed_request() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let (outcomes, began, _, start) = scale_with_requests(&lab, &[6]);
    ensure_or_dump(
        &lab,
        outcomes.failures().is_empty() && outcomes.since(began[1]).by_task().len() == 6,
        "every request through the scale-up 3 -> 6 to succeed, 6 replicas answering after",
        || {
            format!(
                "scale-up began at {:?}: {}",
                began[0] - start,
                outcomes.summary(start)
            )
        },
    )
    .unwrap();
}

#[test]
fn a_dead_hosts_replica_is_dropped_within_5s_and_replaced() {
    let lab = mesh_tests::cluster(3, 1).unwrap();
    let (net, probes, vip) = probe_and_api(&lab, 3);
    let n1 = lab.host(1);
    let api = wait_running(&lab, n1, "api", 3, SETTLE).unwrap();
    // The victim runs a replica and is not node1 (the client's and the CLI's node); the
    // worker if it can be, so that the managers keep all their votes.
    let victim = ["node4", "node3", "node2"]
        .into_iter()
        .find(|n| api.iter().any(|t| t.node == *n))
        .map(|n| lab.host_named(n).unwrap())
        .expect("a replica outside node1");
    let client = &probes["node1"];
    let live_probes: Vec<TaskRow> = probes
        .values()
        .filter(|p| p.node != victim.name())
        .cloned()
        .collect();
    wait_lb(&lab, &live_probes, vip, &ips(&api, &net), SETTLE).unwrap();

    let requests = RequestLoop::start(client.netns(&lab).unwrap(), vip_addr(vip));
    let origin = Instant::now();
    wait(&lab, "20 requests before the death", SETTLE, || {
        Ok(requests.outcomes().len() >= 20)
    })
    .unwrap();
    let died = Instant::now();
    victim.cut().unwrap();
    victim.kill().unwrap();
    let recovered = died + Duration::from_secs(5);

    // Replaced elsewhere after the grace period.
    let replaced = wait(
        &lab,
        "3 running replicas of api, none on the dead host",
        FAST_NODE_DOWN_GRACE + SETTLE,
        || {
            let all = services::running(n1, "api")?;
            Ok(
                if all.len() == 3 && all.iter().all(|t| t.node != victim.name()) {
                    Poll::Ready(all)
                } else {
                    Poll::Pending(services::task_summary(&all))
                },
            )
        },
    )
    .unwrap();
    // Every live node balances over exactly the live replicas, and no overlay entry points
    // at the dead host.
    wait_lb(&lab, &live_probes, vip, &ips(&replaced, &net), SETTLE).unwrap();
    wait(
        &lab,
        "no FDB entry pointing at the dead host",
        SETTLE,
        || {
            for host in lab.hosts().iter().filter(|h| h.name() != victim.name()) {
                let fdb = services::fdb(&lab, host, net.vni)?;
                if fdb.values().any(|d| *d == victim.ip()) {
                    return Ok(Poll::Pending(format!("{}: {fdb:?}", host.name())));
                }
            }
            Ok(Poll::Ready(()))
        },
    )
    .unwrap();
    // Enough requests after the 5 s mark to see a stale backend (1 in 3 would fail).
    let enough = recovered.max(Instant::now());
    wait(&lab, "30 requests after the replacement", SETTLE, || {
        Ok(requests.outcomes().since(enough).len() >= 30)
    })
    .unwrap();
    let outcomes = requests.stop().unwrap();
    let after = outcomes.since(recovered);
    let new_ids: BTreeSet<String> = replaced.iter().map(|t| t.id.clone()).collect();
    ensure_or_dump(
        &lab,
        after.failures().is_empty()
            && outcomes
                .since(enough)
                .by_task()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == new_ids,
        "requests to succeed from 5 s after the host died, over the replaced replicas",
        || {
            format!(
                "host died at {:?}; replicas now {new_ids:?}; all: {}; from +5s: {}",
                died - origin,
                outcomes.summary(origin),
                after.summary(origin)
            )
        },
    )
    .unwrap();
}

#[test]
fn a_rolling_update_fails_no_request() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let (net, probes, vip) = probe_and_api(&lab, 4);
    let n1 = lab.host(1);
    let probes: Vec<TaskRow> = probes.into_values().collect();
    let old = wait_running(&lab, n1, "api", 4, SETTLE).unwrap();
    wait_lb(&lab, &probes, vip, &ips(&old, &net), SETTLE).unwrap();

    let requests = RequestLoop::start(probes[0].netns(&lab).unwrap(), vip_addr(vip));
    let start = Instant::now();
    wait(&lab, "20 requests before the update", SETTLE, || {
        Ok(requests.outcomes().len() >= 20)
    })
    .unwrap();
    cli_ok(
        n1,
        &["service", "update", "api", "--env-add", "VERSION=2"],
        CONVERGE_BOUND,
    )
    .unwrap();
    let new = wait(&lab, "4 updated replicas", SETTLE, || {
        let all = services::running(n1, "api")?;
        let old_ids: BTreeSet<&str> = old.iter().map(|t| t.id.as_str()).collect();
        Ok(
            if all.len() == 4 && all.iter().all(|t| !old_ids.contains(t.id.as_str())) {
                Poll::Ready(all)
            } else {
                Poll::Pending(services::task_summary(&all))
            },
        )
    })
    .unwrap();
    wait_lb(&lab, &probes, vip, &ips(&new, &net), SETTLE).unwrap();
    let settled = Instant::now();
    wait(&lab, "20 requests after the update", SETTLE, || {
        Ok(requests.outcomes().since(settled).len() >= 20)
    })
    .unwrap();
    let outcomes = requests.stop().unwrap();
    let new_ids: BTreeSet<String> = new.iter().map(|t| t.id.clone()).collect();
    let tail = outcomes.since(settled);
    ensure_or_dump(
        &lab,
        outcomes.failures().is_empty() && tail.by_task().keys().all(|id| new_ids.contains(id)),
        "every request through the rolling update to succeed",
        || format!("{}; after: {:?}", outcomes.summary(start), tail.by_task()),
    )
    .unwrap();
}

#[test]
fn services_on_different_networks_neither_resolve_nor_reach_each_other() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let n1 = lab.host(1);
    let red = create_network(n1, "red", &[]).unwrap();
    let blue = create_network(n1, "blue", &[]).unwrap();
    create_service(n1, "a", &["--replicas", "2", "--network", "red"]).unwrap();
    create_service(n1, "b", &["--replicas", "2", "--network", "blue"]).unwrap();
    let a = wait_running(&lab, n1, "a", 2, SETTLE).unwrap();
    let b = wait_running(&lab, n1, "b", 2, SETTLE).unwrap();
    let side = |name: &str, net: &NetworkRow, tasks: &[TaskRow]| {
        let vip = services::vip(n1, name, &net.id).unwrap();
        (name.to_owned(), vip, ips(tasks, net))
    };
    let (sa, sb) = (side("a", &red, &a), side("b", &blue, &b));

    for (from, own, other) in [(&a[0], &sa, &sb), (&b[0], &sb, &sa)] {
        let ns = from.netns(&lab).unwrap();
        // Its own service: resolved and reached (the checks below can succeed).
        let answer = traffic::resolve(&ns, &own.0).unwrap();
        assert_eq!(
            answer.addrs,
            [own.1],
            "{} resolved {own:?} to {answer:?}",
            from.name
        );
        let r = traffic::http_get(&ns, vip_addr(own.1)).unwrap();
        assert_eq!(r.service, own.0, "{r:?}");
        // The other one: neither its name, nor its tasks' names, nor its addresses. The
        // names are the cluster's, whether or not this node holds the other network: NXDOMAIN
        // from the task's resolver, never asked upstream.
        for name in [
            other.0.clone(),
            format!("tasks.{}", other.0),
            format!("{}.1", other.0),
        ] {
            let answer = traffic::resolve(&ns, &name);
            ensure_or_dump(
                &lab,
                answer
                    .as_ref()
                    .is_ok_and(|a| a.rcode == 3 && a.addrs.is_empty()),
                &format!("{} to get NXDOMAIN for {name}", from.name),
                || format!("{answer:?}"),
            )
            .unwrap();
        }
        for ip in std::iter::once(other.1).chain(other.2.iter().copied()) {
            let tcp = traffic::tcp_connect(&ns, SocketAddrV4::new(ip, WHOAMI_PORT)).unwrap();
            ensure_or_dump(
                &lab,
                tcp.is_err(),
                &format!("{} not to reach {ip} of {}", from.name, other.0),
                || format!("connected: {tcp:?}"),
            )
            .unwrap();
        }
    }
}

/// What `mesh service ls --format json` stores per service: id, name, version, spec
/// version and replicas (not the running count, which moves by itself).
fn service_list(lab: &Lab) -> Vec<String> {
    let out = cli_ok(
        lab.host(1),
        &["service", "ls", "--format", "json"],
        CLI_BOUND,
    )
    .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {} v{} spec{} x{}",
                s["id"], s["name"], s["version"], s["spec_version"], s["replicas"]
            )
        })
        .collect()
}

#[test]
fn bad_service_requests_are_refused_with_one_line_and_store_nothing() {
    let lab = mesh_tests::cluster(1, 0).unwrap();
    let n1 = lab.host(1);
    create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "api", &["--network", "ov"]).unwrap();
    let before = service_list(&lab);
    let whoami = services::whoami();
    let create = |extra: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = ["service", "create"].map(String::from).to_vec();
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push("--".into());
        argv.extend(whoami.iter().cloned());
        argv
    };
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            create(&["--name", "web", "--network", "nosuchnet"]),
            &["nosuchnet"],
        ),
        (create(&["--name", "api", "--network", "ov"]), &["api"]),
        (
            create(&[
                "--name",
                "rr",
                "--endpoint-mode",
                "dnsrr",
                "-p",
                "8080:80",
                "--network",
                "ov",
            ]),
            &["dnsrr"],
        ),
        (
            ["service", "scale", "api=-1"].map(String::from).to_vec(),
            &["-1"],
        ),
    ];
    for (argv, words) in cases {
        let refusal = refused(n1, &argv, CLI_BOUND).unwrap();
        assert!(
            mentions(&refusal.message, words),
            "`mesh {}` was refused with {:?}, which names none of {words:?}",
            argv.join(" "),
            refusal.message
        );
        assert_eq!(
            service_list(&lab),
            before,
            "`mesh {}` changed the services",
            argv.join(" ")
        );
    }
}

#[test]
fn negative_replicas_at_creation_are_refused_with_one_line() {
    let lab = mesh_tests::cluster(1, 0).unwrap();
    let n1 = lab.host(1);
    let before = service_list(&lab);
    let mut argv = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "-1",
        "--",
    ];
    let whoami = services::whoami();
    argv.extend(whoami.iter().map(String::as_str));
    let refusal = refused(n1, &argv, CLI_BOUND).unwrap();
    assert!(mentions(&refusal.message, &["replicas"]), "{refusal:?}");
    assert_eq!(service_list(&lab), before);
    check(&lab, "no service web", || {
        Ok(!services::service_names(n1)?.contains(&"web".to_owned()))
    })
    .unwrap();
}

#[test]
fn draining_a_node_moves_its_tasks_elsewhere_and_no_request_fails() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let (net, probes, vip) = probe_and_api(&lab, 3);
    let n1 = lab.host(1);
    let api = wait_running(&lab, n1, "api", 3, SETTLE).unwrap();
    let all: Vec<TaskRow> = probes.values().cloned().collect();
    wait_lb(&lab, &all, vip, &ips(&api, &net), SETTLE).unwrap();
    let requests = RequestLoop::start(probes["node1"].netns(&lab).unwrap(), vip_addr(vip));
    wait(&lab, "20 requests before the drain", SETTLE, || {
        Ok(requests.outcomes().len() >= 20)
    })
    .unwrap();

    // `node ps node3` lists what node3 runs, and only that.
    let on_node3: Vec<serde_json::Value> = serde_json::from_str(
        &cli_ok(n1, &["node", "ps", "node3", "--format", "json"], CLI_BOUND).unwrap(),
    )
    .unwrap();
    let want = api.iter().filter(|t| t.node == "node3").count() + 1;
    assert!(
        on_node3.len() == want && on_node3.iter().all(|t| t["node"] == "node3"),
        "node ps node3, want its {want} tasks: {on_node3:?}"
    );

    let drained_at = Instant::now();
    cli_ok(
        n1,
        &["node", "update", "--availability", "drain", "node3"],
        CLI_BOUND,
    )
    .unwrap();
    // api's replicas run on node1 and node2 only, node3's probe (global) is gone, and the
    // other probes' load balancers hold exactly the running replicas.
    let api = wait(
        &lab,
        "api off node3, and node3's probe gone",
        SETTLE,
        || {
            let api = services::running(n1, "api")?;
            let probes = services::running(n1, "probe")?;
            let off = |t: &TaskRow| t.node != "node3";
            Ok(
                if api.len() == 3 && api.iter().all(off) && probes.iter().all(off) {
                    Poll::Ready(api)
                } else {
                    Poll::Pending(format!(
                        "api {}; probes {}",
                        services::task_summary(&api),
                        services::task_summary(&probes)
                    ))
                },
            )
        },
    )
    .unwrap();
    let live: Vec<TaskRow> = probes
        .values()
        .filter(|p| p.node != "node3")
        .cloned()
        .collect();
    wait_lb(&lab, &live, vip, &ips(&api, &net), SETTLE).unwrap();
    let settled = Instant::now();
    wait(&lab, "20 requests after the drain", SETTLE, || {
        Ok(requests.outcomes().since(settled).len() >= 20)
    })
    .unwrap();
    let outcomes = requests.stop().unwrap();
    let nodes = mesh_tests::nodes(n1).unwrap();
    let node3 = nodes.iter().find(|n| n.hostname == "node3").unwrap();
    ensure_or_dump(
        &lab,
        outcomes.since(drained_at).failures().is_empty(),
        "no request to fail during the drain",
        || outcomes.since(drained_at).summary(drained_at),
    )
    .unwrap();
    let shown = cli_ok(n1, &["node", "inspect", "node3"], CLI_BOUND).unwrap();
    assert!(shown.contains("\"availability\": \"drain\""), "{shown}");
    assert!(node3.is_up(), "a drained node is still up: {node3:?}");

    // Active again: the global service comes back to it.
    cli_ok(
        n1,
        &["node", "update", "--availability", "active", "node3"],
        CLI_BOUND,
    )
    .unwrap();
    wait_running(&lab, n1, "probe", 3, SETTLE).unwrap();
}
