//! The overlay between hosts, proven by traffic: tasks on different hosts reach each other
//! (TCP and ping); networks are isolated from each other and an internal one has no egress;
//! the VXLAN FDB and neighbor entries follow the tasks (scale-down, removal, a host's death,
//! an agent restarted while a service was removed); a long TCP connection outlives agent
//! restarts at both ends. Real `mesh` daemons, one per host namespace; needs root.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mesh_tests::ops::CLI_BOUND;
use mesh_tests::services::{
    self, CONVERGE_BOUND, NetworkRow, TaskRow, check, cli_ok, create_network, create_service,
    ensure_or_dump, wait, wait_overlay_matches, wait_running,
};
use mesh_tests::traffic::{self, Listener, Stream};
use mesh_tests::{Host, Lab, Poll};

/// Deadline for the overlay to reflect a change (gossip and the agent's reconcile).
const SETTLE: Duration = Duration::from_secs(15);

/// The tasks of `service` by node hostname (one each: a global service).
fn by_node(tasks: Vec<TaskRow>) -> BTreeMap<String, TaskRow> {
    tasks.into_iter().map(|t| (t.node.clone(), t)).collect()
}

/// A network `ov` and a global `web` on it, running everywhere.
fn global_web(lab: &Lab) -> (NetworkRow, BTreeMap<String, TaskRow>) {
    let n1 = lab.host(1);
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "web", &["--mode", "global", "--network", "ov"]).unwrap();
    let web = wait_running(lab, n1, "web", lab.hosts().len(), SETTLE).unwrap();
    (net, by_node(web))
}

#[test]
fn tasks_on_three_hosts_reach_each_other_by_tcp_and_ping() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let (net, web) = global_web(&lab);
    assert_eq!(web.len(), 3, "one web task per node: {web:?}");

    // From each task to every other task: the task that answers is the one addressed, and
    // it sees the client's own overlay address (no translation on the way).
    for from in web.values() {
        let ns = from.netns(&lab).unwrap();
        let me = from.addr_on(&net.id).unwrap();
        for to in web.values().filter(|t| t.node != from.node) {
            let target = to.endpoint_on(&net.id).unwrap();
            // Retried: a task runs before every node has its record, and a first SYN sent
            // before then is lost.
            let report = wait(
                &lab,
                &format!("{} -> {} over TCP", from.name, to.name),
                SETTLE,
                || Ok(traffic::http_get(&ns, target).ok()),
            )
            .unwrap();
            assert_eq!(
                (report.task_id.as_str(), report.node.as_str()),
                (to.id.as_str(), to.node.as_str()),
                "{target} answered as another task: {report:?}"
            );
            let client: SocketAddr = report.client.parse().unwrap();
            assert_eq!(
                client.ip(),
                IpAddr::V4(me),
                "{} saw the client as {}",
                to.name,
                report.client
            );
            let ip = *target.ip();
            check(
                &lab,
                &format!("{} -> {} by ping", from.name, to.name),
                || traffic::ping(&ns, ip),
            )
            .unwrap();
        }
    }
}

#[test]
fn networks_are_isolated_and_an_internal_one_has_no_egress() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let n1 = lab.host(1);
    let front = create_network(n1, "front", &[]).unwrap();
    let back = create_network(n1, "back", &[]).unwrap();
    let private = create_network(n1, "private", &["--internal"]).unwrap();
    assert!(private.internal, "{private:?}");
    create_service(n1, "a", &["--network", "front"]).unwrap();
    create_service(n1, "b", &["--network", "back"]).unwrap();
    create_service(n1, "ab", &["--network", "front", "--network", "back"]).unwrap();
    create_service(n1, "i", &["--network", "private"]).unwrap();
    let one = |s: &str| wait_running(&lab, n1, s, 1, SETTLE).unwrap().remove(0);
    let (a, b, ab, i) = (one("a"), one("b"), one("ab"), one("i"));
    let ns = |t: &TaskRow| t.netns(&lab).unwrap();

    // The task on both networks reaches a task on each.
    for (to, net) in [(&a, &front), (&b, &back)] {
        let target = to.endpoint_on(&net.id).unwrap();
        // Retried: `b` runs before every node has its record, and a first SYN sent before
        // then is lost.
        let report = wait(
            &lab,
            &format!("ab -> {} on {}", to.name, net.name),
            SETTLE,
            || Ok(traffic::http_get(&ns(&ab), target).ok()),
        )
        .unwrap();
        assert_eq!(report.task_id, to.id, "{target} answered {report:?}");
    }

    // A task on one network reaches nothing of the other, by TCP or ping.
    for (from, to, net) in [(&a, &b, &back), (&b, &a, &front)] {
        let target = to.endpoint_on(&net.id).unwrap();
        let tcp = traffic::tcp_connect(&ns(from), target).unwrap();
        let pinged = traffic::ping(&ns(from), *target.ip()).unwrap();
        ensure_or_dump(
            &lab,
            tcp.is_err() && !pinged,
            &format!("{} not to reach {} on {}", from.name, to.name, net.name),
            || format!("tcp {tcp:?}, ping answered: {pinged}"),
        )
        .unwrap();
    }

    // Egress: a listener on node2's underlay address. A task on a normal network connects
    // (and is accepted); the task on the internal network cannot.
    let target = SocketAddrV4::new(lab.host(2).ip(), 0);
    let listener = Listener::bind(lab.host(2).netns(), target).unwrap();
    let out = traffic::tcp_connect(&ns(&a), listener.addr).unwrap();
    ensure_or_dump(&lab, out.is_ok(), "egress from a", || format!("{out:?}")).unwrap();
    wait(
        &lab,
        "the listener to accept a's connection",
        SETTLE,
        || Ok(!listener.accepted().is_empty()),
    )
    .unwrap();
    let accepted = listener.accepted().len();
    let out = traffic::tcp_connect(&ns(&i), listener.addr).unwrap();
    let pinged = traffic::ping(&ns(&i), lab.host(2).ip()).unwrap();
    ensure_or_dump(
        &lab,
        out.is_err() && !pinged && listener.accepted().len() == accepted,
        "no egress from the internal network",
        || {
            format!(
                "tcp {out:?}, ping answered: {pinged}, accepted {:?}",
                listener.accepted()
            )
        },
    )
    .unwrap();
}

#[test]
fn fdb_and_neighbors_follow_scale_down_removal_and_a_host_death() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let n1 = lab.host(1);
    let hosts: Vec<&Host> = lab.hosts().iter().collect();
    // `anchor` keeps the network's namespace on every host, so an entry that should go
    // cannot vanish with the namespace instead.
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "anchor", &["--mode", "global", "--network", "ov"]).unwrap();
    create_service(n1, "web", &["--replicas", "6", "--network", "ov"]).unwrap();
    wait_running(&lab, n1, "web", 6, SETTLE).unwrap();
    wait_overlay_matches(&lab, n1, &net, &["anchor", "web"], &hosts, SETTLE).unwrap();
    // Every host sees the other hosts' tasks: not a vacuous match.
    for host in &hosts {
        let seen = services::observe_overlay(&lab, host, &net).unwrap();
        assert!(seen.fdb.len() >= 4, "{}: {seen:?}", host.name());
    }

    let before = services::running(n1, "web").unwrap();
    cli_ok(n1, &["service", "scale", "web=2"], CONVERGE_BOUND).unwrap();
    let after = wait_running(&lab, n1, "web", 2, SETTLE).unwrap();
    wait_overlay_matches(&lab, n1, &net, &["anchor", "web"], &hosts, SETTLE).unwrap();
    // The entries of the tasks scaled away are gone everywhere (the exact match above
    // implies it; this names them).
    let gone: Vec<&TaskRow> = before
        .iter()
        .filter(|t| after.iter().all(|a| a.id != t.id))
        .collect();
    assert!(gone.len() >= 3, "{before:?} -> {after:?}");
    for host in &hosts {
        let seen = services::observe_overlay(&lab, host, &net).unwrap();
        for t in &gone {
            let mac = t.mac_on(&net.id).unwrap();
            assert!(
                !seen.fdb.contains_key(&mac) && !seen.neighbors.values().any(|m| *m == mac),
                "{}: {} ({mac}) scaled away but still in {seen:?}",
                host.name(),
                t.name
            );
        }
    }

    cli_ok(n1, &["service", "rm", "web"], CLI_BOUND).unwrap();
    wait(&lab, "web to have no task left", SETTLE, || {
        Ok(services::tasks(n1, "web").map_or(true, |t| t.iter().all(|t| t.state != "running")))
    })
    .unwrap();
    wait_overlay_matches(&lab, n1, &net, &["anchor"], &hosts, SETTLE).unwrap();

    // node3 dies (off the switch, daemon killed): the others drop what pointed at it.
    let dead = lab.host(3);
    let dead_anchor = services::running(n1, "anchor")
        .unwrap()
        .into_iter()
        .find(|t| t.node == dead.name())
        .unwrap();
    let dead_ip = dead_anchor.addr_on(&net.id).unwrap();
    dead.cut().unwrap();
    dead.kill().unwrap();
    let live = [lab.host(1), lab.host(2)];
    wait(
        &lab,
        "no entry pointing at node3 on node1 and node2",
        SETTLE,
        || {
            for host in live {
                let seen = services::observe_overlay(&lab, host, &net)?;
                let stale = seen.fdb.values().any(|d| *d == dead.ip())
                    || seen.neighbors.contains_key(&dead_ip);
                // The other live host's anchor stays.
                let other = live.iter().find(|h| h.name() != host.name()).unwrap();
                let kept = seen.fdb.values().any(|d| *d == other.ip());
                if stale || !kept {
                    return Ok(Poll::Pending(format!("{}: {seen:?}", host.name())));
                }
            }
            Ok(Poll::Ready(()))
        },
    )
    .unwrap();
}

#[test]
fn no_stale_overlay_entry_survives_an_agent_restart() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let n1 = lab.host(1);
    let hosts: Vec<&Host> = lab.hosts().iter().collect();
    let net = create_network(n1, "ov", &[]).unwrap();
    create_service(n1, "anchor", &["--mode", "global", "--network", "ov"]).unwrap();
    create_service(n1, "web", &["--replicas", "3", "--network", "ov"]).unwrap();
    let web = wait_running(&lab, n1, "web", 3, SETTLE).unwrap();
    wait_overlay_matches(&lab, n1, &net, &["anchor", "web"], &hosts, SETTLE).unwrap();

    // node3's agent dies (its tasks keep running) and web is removed meanwhile: node3 holds
    // entries of web tasks that no longer exist, and maybe a web task of its own.
    let n3 = lab.host(3);
    n3.kill().unwrap();
    cli_ok(n1, &["service", "rm", "web"], CLI_BOUND).unwrap();
    wait(
        &lab,
        "web's tasks on node1 and node2 to stop",
        SETTLE,
        || {
            let left = services::tasks(n1, "web").unwrap_or_default();
            Ok(left
                .iter()
                .all(|t| t.node == n3.name() || t.state != "running"))
        },
    )
    .unwrap();

    // Nothing cleaned node3 up while its agent was down: the restart has work to do.
    let stale = services::observe_overlay(&lab, n3, &net).unwrap();
    let remote_web: Vec<&TaskRow> = web.iter().filter(|t| t.node != n3.name()).collect();
    assert!(
        remote_web
            .iter()
            .any(|t| stale.fdb.contains_key(&t.mac_on(&net.id).unwrap())),
        "node3 lost the entries of {remote_web:?} without its agent: {stale:?}"
    );

    n3.start().unwrap();
    lab.wait_ready(n3, Duration::from_secs(20)).unwrap();
    wait_overlay_matches(&lab, n1, &net, &["anchor"], &hosts, SETTLE).unwrap();
    // And node3's own web task, if it had one, is gone with its namespace.
    for t in web.iter().filter(|t| t.node == n3.name()) {
        let name = t.netns_name(&lab);
        wait(&lab, &format!("{name} to be removed"), SETTLE, || {
            Ok(!mesh_tests::Netns::exists(&name))
        })
        .unwrap();
    }
}

#[test]
fn a_long_connection_survives_agent_restarts_at_both_ends() {
    let lab = mesh_tests::cluster(3, 0).unwrap();
    let (net, web) = global_web(&lab);
    // Client: node2's task; server: node3's. Neither is the CLI's node1.
    let (client, server) = (&web["node2"], &web["node3"]);
    let ns = client.netns(&lab).unwrap();
    let interval = Duration::from_millis(200);
    let to = server.endpoint_on(&net.id).unwrap();
    // Retried: the server runs before every node has its record, and a first SYN sent before
    // then is lost.
    let stream = wait(&lab, "the stream to open", SETTLE, || {
        Ok(Stream::open(&ns, to, interval).ok())
    })
    .unwrap();
    let start = Instant::now();
    // Lines flow before anything happens.
    wait(&lab, "the stream to deliver 5 lines", SETTLE, || {
        Ok(stream.lines().len() >= 5)
    })
    .unwrap();

    for end in [lab.host(2), lab.host(3)] {
        end.kill().unwrap();
        end.start().unwrap();
        lab.wait_ready(end, Duration::from_secs(20)).unwrap();
        // The restarted agent adopts its tasks and reconciles; the stream keeps flowing for a
        // while after it answers again.
        let back = Instant::now();
        wait(
            &lab,
            &format!("10 stream lines after {}'s agent restarted", end.name()),
            SETTLE * 2,
            || {
                if let Some(why) = stream.ended() {
                    return Ok(Poll::Fail(format!("the stream ended: {why}")));
                }
                let n = stream.lines().iter().filter(|(t, _)| *t >= back).count();
                Ok(if n >= 10 {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("{n} lines"))
                })
            },
        )
        .unwrap();
    }
    let gap = stream.longest_gap_since(start);
    let lines = stream.lines();
    ensure_or_dump(
        &lab,
        // A restart that outlasts failure detection makes the other nodes withdraw the
        // node's endpoints until it is back: the connection stalls (TCP retransmits), but it
        // must survive, with every line delivered in order.
        stream.ended().is_none() && gap < Duration::from_secs(10),
        "one unbroken stream",
        || {
            format!(
                "ended: {:?}, longest gap {gap:?}, {} lines, last {:?}",
                stream.ended(),
                lines.len(),
                lines.last()
            )
        },
    )
    .unwrap();
    // The lines are numbered by the server: none lost, one connection throughout.
    let numbers: Vec<u64> = lines
        .iter()
        .filter_map(|(_, l)| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "stream lines out of sequence: {numbers:?}"
    );
}
