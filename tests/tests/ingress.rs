//! The routing mesh, by what crosses the network: a client namespace on the underlay (not a
//! cluster node) reaches published ports on every node, including nodes that run no task,
//! and the tasks see the client's own address. Real `mesh` daemons; needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_tests::services::network;
use mesh_tests::{Host, Lab, Netns, cluster};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// What a whoami reply says: `task` and `client` lines.
#[derive(Debug)]
struct Reply {
    task: String,
    client: String,
}

fn parse_reply(text: &str) -> Result<Reply> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
            .with_context(|| format!("no {name} line in reply {text:?}"))
    };
    Ok(Reply {
        task: field("task")?,
        client: field("client")?,
    })
}

/// One HTTP GET on a new connection from inside `ns`.
fn http_get(ns: &Netns, to: SocketAddr) -> Result<Reply> {
    ns.run(|| -> Result<Reply> {
        let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: mesh\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        parse_reply(&body)
    })?
    .with_context(|| format!("GET http://{to}/"))
}

/// One UDP datagram and its reply, from inside `ns`. The socket is connected, so a reply
/// from any other address than `to` is dropped, as DNS clients do.
fn udp_ask(ns: &Netns, to: SocketAddr) -> Result<Reply> {
    ns.run(|| -> Result<Reply> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.connect(to)?;
        s.send(b"who?")?;
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf)?;
        parse_reply(&String::from_utf8_lossy(&buf[..n]))
    })?
    .with_context(|| format!("udp {to}"))
}

/// Whether a TCP connect from `ns` to `to` is refused (nothing listens, no rule sends it on).
fn refused(ns: &Netns, to: SocketAddr) -> Result<bool> {
    Ok(
        ns.run(|| match TcpStream::connect_timeout(&to, IO_TIMEOUT) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_) => false,
        })?,
    )
}

/// `mesh service ps NAME` as (task name -> node hostname) of running tasks.
fn running_tasks(host: &Host, service: &str) -> Result<BTreeMap<String, String>> {
    let out = host
        .cli(["service", "ps", service, "--format", "json"])?
        .ok_stdout()?;
    let rows: Vec<Value> = serde_json::from_str(&out).context("service ps json")?;
    Ok(rows
        .iter()
        .filter(|r| r["state"] == "running" && r["desired_state"] != "shutdown")
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// `mesh service create --name NAME FLAGS -- mesh whoami --port PORT`, waiting for its tasks.
fn whoami(host: &Host, name: &str, flags: &[&str], port: &str) -> Result<()> {
    let mut argv = vec!["service", "create", "--name", name];
    argv.extend_from_slice(flags);
    argv.extend_from_slice(&["--", "mesh", "whoami", "--port", port]);
    host.cli(argv)?.ok_stdout()?;
    Ok(())
}

/// The node's publication table, as `nft` lists it.
fn publish_table(host: &Host) -> Result<String> {
    Ok(host
        .exec("nft", ["list", "table", "ip", "mesh_ingress"])?
        .stdout)
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// `count` GETs to `to`; the replicas that answered, or the first failure.
fn replicas_behind(
    client: &Netns,
    client_ip: Ipv4Addr,
    to: SocketAddr,
    count: usize,
) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for i in 0..count {
        let r = http_get(client, to).with_context(|| format!("request {i} of {count}"))?;
        if !r.client.starts_with(&format!("{client_ip}:")) {
            bail!(
                "{to}: the task saw client {} instead of {client_ip}",
                r.client
            );
        }
        *seen.entry(r.task).or_insert(0) += 1;
    }
    Ok(seen)
}

fn wait_answers(lab: &Lab, client: &Netns, to: SocketAddr) -> Result<()> {
    lab.wait_for(&format!("{to} to answer"), DEADLINE, || {
        Ok(http_get(client, to).is_ok())
    })
}

#[test]
fn published_port_answers_on_every_node_and_loopback_with_the_client_address() -> Result<()> {
    let lab = cluster(1, 2)?;
    let (client, client_ip) = lab.add_client(1)?;
    let manager = lab.host(1);
    // A table of someone else's on every node: the routing mesh must never touch it.
    for h in lab.hosts() {
        h.exec("nft", ["add", "table", "ip", "foreign"])?
            .ok_stdout()?;
        let chain = "{ type filter hook input priority 10; policy accept; }";
        h.exec("nft", ["add", "chain", "ip", "foreign", "input", chain])?
            .ok_stdout()?;
        h.exec("nft", ["add", "rule", "ip", "foreign", "input", "counter"])?
            .ok_stdout()?;
    }
    manager.cli(["network", "create", "appnet"])?.ok_stdout()?;
    whoami(
        manager,
        "web",
        &[
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--publish",
            "published=8080,target=80",
        ],
        "80",
    )?;
    whoami(
        manager,
        "dns",
        &[
            "--replicas",
            "1",
            "--network",
            "appnet",
            "--publish",
            "published=5353,target=53,protocol=udp",
        ],
        "53",
    )?;
    let web = running_tasks(manager, "web")?;
    assert_eq!(web.len(), 2, "{web:?}");
    let busy: BTreeSet<&String> = web.values().collect();
    let idle: Vec<&Host> = lab
        .hosts()
        .iter()
        .filter(|h| !busy.contains(&h.name().to_string()))
        .collect();
    assert_eq!(idle.len(), 1, "one node runs no web task: {web:?}");

    for h in lab.hosts() {
        wait_answers(&lab, &client, addr(h.ip(), 8080))?;
    }
    for h in lab.hosts() {
        let seen = replicas_behind(&client, client_ip, addr(h.ip(), 8080), 200)
            .with_context(|| lab.diagnostics())?;
        let names: BTreeSet<&String> = seen.keys().collect();
        let want: BTreeSet<&String> = web.keys().collect();
        assert_eq!(
            names,
            want,
            "{} (no task: {}) reached {seen:?}",
            h.name(),
            idle[0].name()
        );
    }

    // UDP, from every node, answered from the address asked. The task sees the entry
    // node's ingress sandbox (on the ingress subnet) as the client.
    let ingress: ipnet::Ipv4Net = network(manager, "ingress")?.subnet.parse()?;
    for h in lab.hosts() {
        let to = addr(h.ip(), 5353);
        let r = lab.wait_for(&format!("udp {to} to answer"), DEADLINE, || {
            Ok(udp_ask(&client, to).ok())
        })?;
        let client_ip: Ipv4Addr = r.client.split(':').next().unwrap_or_default().parse()?;
        assert!(
            ingress.contains(&client_ip),
            "{to}: {r:?} not from {ingress}"
        );
        assert!(r.task.starts_with("dns."), "{r:?}");
    }

    // On every node itself, the published ports answer on 127.0.0.1 and on its own address
    // (TCP and UDP), also where no task runs.
    for h in lab.hosts() {
        for ip in [Ipv4Addr::LOCALHOST, h.ip()] {
            let to = addr(ip, 8080);
            let r = lab.wait_for(&format!("{to} on {}", h.name()), DEADLINE, || {
                Ok(http_get(h.netns(), to).ok())
            })?;
            assert!(web.contains_key(&r.task), "{} {to}: {r:?}", h.name());
            let to = addr(ip, 5353);
            let r = lab.wait_for(&format!("udp {to} on {}", h.name()), DEADLINE, || {
                Ok(udp_ask(h.netns(), to).ok())
            })?;
            assert!(r.task.starts_with("dns."), "{} {to}: {r:?}", h.name());
        }
    }

    // Removing the service removes its port on every node; the other table is untouched.
    manager.cli(["service", "rm", "web"])?.ok_stdout()?;
    for h in lab.hosts() {
        let to = addr(h.ip(), 8080);
        lab.wait_for(&format!("{to} to refuse connections"), DEADLINE, || {
            refused(&client, to)
        })?;
        let table = publish_table(h)?;
        assert!(!table.contains("dport 8080"), "{}: {table}", h.name());
        assert!(table.contains("udp dport 5353"), "{}: {table}", h.name());
        let foreign = h
            .exec("nft", ["list", "table", "ip", "foreign"])?
            .ok_stdout()?;
        assert!(foreign.contains("counter"), "{}: {foreign}", h.name());
    }
    Ok(())
}

#[test]
fn host_mode_answers_only_where_a_task_runs_and_the_mesh_outlives_a_dead_node() -> Result<()> {
    let lab = cluster(1, 2)?;
    let (client, client_ip) = lab.add_client(1)?;
    let manager = lab.host(1);
    manager.cli(["network", "create", "appnet"])?.ok_stdout()?;
    whoami(
        manager,
        "edge",
        &[
            "--replicas",
            "1",
            "--publish",
            "published=9090,target=80,mode=host",
        ],
        "80",
    )?;
    whoami(
        manager,
        "web",
        &["--replicas", "3", "--network", "appnet", "-p", "8080:80"],
        "80",
    )?;
    let edge = running_tasks(manager, "edge")?;
    let edge_node = edge
        .values()
        .next()
        .context("edge has a running task")?
        .clone();
    for h in lab.hosts() {
        let to = addr(h.ip(), 9090);
        if h.name() == edge_node {
            let r = lab.wait_for(&format!("{to} to answer"), DEADLINE, || {
                Ok(http_get(&client, to).ok())
            })?;
            assert!(r.client.starts_with(&format!("{client_ip}:")), "{r:?}");
        } else {
            assert!(
                refused(&client, to)?,
                "{to} answers without an edge task there"
            );
        }
    }

    // Kill a worker that runs a web task: the other nodes keep answering on 8080.
    let web = running_tasks(manager, "web")?;
    let victim = lab
        .hosts()
        .iter()
        .skip(1)
        .find(|h| web.values().any(|n| n == h.name()))
        .context("a worker runs a web task")?;
    for h in lab.hosts() {
        wait_answers(&lab, &client, addr(h.ip(), 8080))?;
    }
    // The node dies: its daemon and, with its link, its tasks (which outlive a daemon alone).
    victim.kill()?;
    victim.cut()?;
    for h in lab.hosts().iter().filter(|h| h.name() != victim.name()) {
        let to = addr(h.ip(), 8080);
        lab.wait_for(
            &format!("{to} to answer 20 in a row without {}", victim.name()),
            DEADLINE,
            || Ok(replicas_behind(&client, client_ip, to, 20).is_ok()),
        )?;
    }
    Ok(())
}

#[test]
fn a_restarted_agent_drops_the_ports_of_a_service_removed_while_it_was_down() -> Result<()> {
    let lab = cluster(1, 1)?;
    let (client, client_ip) = lab.add_client(1)?;
    let (manager, worker) = (lab.host(1), lab.host(2));
    whoami(manager, "web", &["--replicas", "1", "-p", "8080:80"], "80")?;
    whoami(manager, "api", &["--replicas", "1", "-p", "8081:80"], "80")?;
    for port in [8080, 8081] {
        wait_answers(&lab, &client, addr(worker.ip(), port))?;
    }
    worker.kill()?;
    manager.cli(["service", "rm", "web"])?.ok_stdout()?;
    worker.restart()?;
    let to = addr(worker.ip(), 8080);
    lab.wait_for(&format!("{to} to refuse connections"), DEADLINE, || {
        refused(&client, to)
    })?;
    lab.wait_for("the restarted node's table to drop 8080", DEADLINE, || {
        Ok(!publish_table(worker)?.contains("dport 8080"))
    })?;
    let r = lab.wait_for("8081 to answer after the restart", DEADLINE, || {
        Ok(http_get(&client, addr(worker.ip(), 8081)).ok())
    })?;
    assert!(r.client.starts_with(&format!("{client_ip}:")), "{r:?}");
    Ok(())
}

#[test]
fn a_host_mode_task_whose_port_is_taken_on_its_node_is_rejected_with_the_reason() -> Result<()> {
    let lab = cluster(1, 1)?;
    let (manager, worker) = (lab.host(1), lab.host(2));
    // A process of node2 (not mesh) already listens on 9191.
    let _listener = worker.run(|| std::net::TcpListener::bind("0.0.0.0:9191"))??;
    whoami(
        manager,
        "edge",
        &[
            "--mode",
            "global",
            "-d",
            "--publish",
            "published=9191,target=80,mode=host",
        ],
        "80",
    )?;
    let why = lab.wait_for("edge's task on node2 to be rejected", DEADLINE, || {
        let out = manager
            .cli(["service", "ps", "edge", "--format", "json"])?
            .ok_stdout()?;
        let rows: Vec<Value> = serde_json::from_str(&out)?;
        Ok(rows
            .iter()
            .find(|r| r["node"] == worker.name() && r["state"] == "rejected")
            .map(|r| r["error"].as_str().unwrap_or_default().to_string()))
    })?;
    assert_eq!(why, "host port 9191/tcp is already in use on this node");
    // node1 has the port free: its task runs there.
    lab.wait_for("edge to run on node1", DEADLINE, || {
        Ok(running_tasks(manager, "edge")?
            .values()
            .any(|n| n == manager.name()))
    })?;
    Ok(())
}

#[test]
fn a_task_cannot_reach_its_nodes_loopback_through_the_gateway_bridge() -> Result<()> {
    let lab = cluster(1, 0)?;
    let node = lab.host(1);
    // A published port, so the node's gateway bridge has route_localnet.
    whoami(
        node,
        "web",
        &["--publish", "published=8080,target=80"],
        "80",
    )?;
    let task = mesh_tests::services::tasks(node, "web")?
        .into_iter()
        .find(|t| t.is_running())
        .context("a running web task")?;
    let ns = task.netns(&lab)?;
    // A service of the node listening on loopback only.
    let _private = node.run(|| std::net::TcpListener::bind("127.0.0.53:7777"))??;
    let gateway = node
        .exec("ip", ["-n", ns.name(), "route", "show", "default"])?
        .ok_stdout()?
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .context("the task's default gateway")?
        .to_owned();
    // The task (root in its namespace) routes 127.0.0.53 to its gateway, as an attacker would.
    // Its own loopback no longer claims 127.0.0.0/8, and its gateway may carry loopback.
    let n = ns.name();
    for cmd in [
        format!("netns exec {n} sysctl -qw net.ipv4.conf.gw0.route_localnet=1"),
        format!("-n {n} route del local 127.0.0.0/8 dev lo table local"),
        format!("-n {n} route add 127.0.0.53/32 via {gateway} dev gw0"),
    ] {
        node.exec("ip", cmd.split_whitespace())?.ok_stdout()?;
    }
    // The routing mesh answers on the node's loopback, so route_localnet is on...
    wait_answers(&lab, node.netns(), addr(Ipv4Addr::LOCALHOST, 8080))?;
    // ...and yet the node's loopback service is out of the task's reach.
    let to = addr(Ipv4Addr::new(127, 0, 0, 53), 7777);
    let reached = ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))?;
    assert!(
        reached.is_err(),
        "a task reached {to} on its node: {reached:?}\n{}",
        lab.diagnostics()
    );
    Ok(())
}

/// Whether `host` sees `hostname` down.
fn sees_down(host: &Host, hostname: &str) -> Result<bool> {
    Ok(mesh_tests::nodes(host)?
        .iter()
        .any(|n| n.hostname == hostname && n.is_down()))
}

/// Requests to `to` one after another until `done` says so, then `after` more: the failures,
/// each with how long it took (a reset or refusal is quick, a black hole is a timeout).
fn requests_until(
    client: &Netns,
    client_ip: Ipv4Addr,
    to: SocketAddr,
    deadline: Duration,
    after: usize,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<(usize, Vec<String>)> {
    let start = std::time::Instant::now();
    let (mut sent, mut failures, mut remaining) = (0, Vec::new(), None::<usize>);
    loop {
        let t = std::time::Instant::now();
        match http_get(client, to) {
            Ok(r) if r.client.starts_with(&format!("{client_ip}:")) => {}
            Ok(r) => failures.push(format!("request {sent}: the task saw {}", r.client)),
            Err(e) => failures.push(format!("request {sent} after {:?}: {e:#}", t.elapsed())),
        }
        sent += 1;
        match remaining.as_mut() {
            Some(0) => return Ok((sent, failures)),
            Some(n) => *n -= 1,
            None if done()? => remaining = Some(after),
            None => anyhow::ensure!(
                start.elapsed() < deadline,
                "not done within {deadline:?} ({sent} requests, failures {failures:?})"
            ),
        }
    }
}

#[test]
fn a_node_whose_agent_died_keeps_its_published_port_and_its_restart_refuses_nothing() -> Result<()>
{
    let lab = cluster(1, 2)?;
    let (client, client_ip) = lab.add_client(1)?;
    let manager = lab.host(1);
    whoami(manager, "web", &["--replicas", "1", "-p", "8080:80"], "80")?;
    // A worker with no task: every request it takes crosses to another node and back.
    eprintln!("web runs on {:?}", running_tasks(manager, "web")?);
    let web = running_tasks(manager, "web")?;
    let victim = lab
        .hosts()
        .iter()
        .skip(1)
        .find(|h| web.values().all(|n| n != h.name()))
        .context("a worker without the task")?;
    let to = addr(victim.ip(), 8080);
    wait_answers(&lab, &client, to)?;

    // The agent dies; its kernel state and its tasks stay. Its node's published port answers
    // while the others notice, take it for down, and replace its tasks.
    victim.kill()?;
    let (sent, failures) = requests_until(&client, client_ip, to, DEADLINE, 20, || {
        let web = running_tasks(manager, "web")?;
        Ok(sees_down(manager, victim.name())?
            && web.len() == 1
            && web.values().all(|n| n != victim.name()))
    })?;
    eprintln!("agent dead: {sent} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {sent} requests through the node whose agent died failed: {failures:?}",
        failures.len()
    );

    // The agent comes back while no manager is up (a whole-cluster restart, managers last):
    // its node keeps answering with what the kernel has until the agent learns the truth.
    manager.kill()?;
    victim.start()?;
    let (sent, failures) = requests_until(&client, client_ip, to, DEADLINE, 100, || {
        Ok(victim.cli(["info"])?.success())
    })?;
    eprintln!(
        "agent up, no manager: {sent} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests through the restarted node failed: {failures:?}",
        failures.len()
    );
    manager.start()?;
    let (sent, failures) = requests_until(&client, client_ip, to, DEADLINE, 100, || {
        // A manager that is still electing itself refuses reads: not yet.
        Ok(mesh_tests::nodes(manager).is_ok_and(|rows| {
            rows.iter()
                .any(|n| n.hostname == victim.name() && n.is_ready())
        }))
    })?;
    eprintln!("manager back: {sent} requests, {} failed", failures.len());
    if !failures.is_empty() {
        for h in lab.hosts() {
            eprintln!("--- {} daemon log\n{}", h.name(), h.log_tail(60));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests through the restarted node failed: {failures:?}",
        failures.len()
    );
    Ok(())
}
