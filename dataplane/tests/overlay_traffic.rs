//! Real traffic over the overlay between hosts that are network namespaces on one switch.
//! Needs root. Each test builds its own world (`mdt<pid>x<n>-...`) and removes it on drop.

#[path = "support/world.rs"]
mod world;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_dataplane::overlay::{Dataplane, ensure_remote, plan, reconcile, remove_remote};
use world::*;

const A: u32 = 4100;
const B: u32 = 4200;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Every host gets one task `t{i}` at 10.10.0.(10+i) on network A, and the others' endpoints.
fn one_network(n: usize) -> World {
    let mut w = World::new(n, 1500);
    let mtu = w.host(1).overlay_mtu();
    assert_eq!(mtu, 1450, "1500-byte underlay");
    for i in 1..=n {
        let h = w.host_mut(i);
        h.desired
            .upsert_network(network(A, "10.10.0.1/24", mtu, false));
        h.desired.upsert_task(task(
            &format!("t{i}"),
            &[(A, "eth0", &format!("10.10.0.{}/24", 10 + i))],
            Some(&format!("172.30.0.{}/16", 10 + i)),
        ));
    }
    for i in 1..=n {
        for j in (1..=n).filter(|j| *j != i) {
            let r = remote_of(A, &format!("10.10.0.{}/24", 10 + j), w.host(j));
            w.host_mut(i).desired.upsert_remote(r);
        }
    }
    for h in &w.hosts {
        reconcile(&h.dp, &h.desired).expect("reconcile");
    }
    w
}

fn assert_converged(h: &Host) {
    let observed = h.dp.observe(&h.desired.scope()).expect("observe");
    assert_eq!(plan(&h.desired, &observed).expect("plan"), vec![]);
}

#[test]
fn tasks_on_three_hosts_talk_over_the_overlay_and_nothing_floods() {
    let w = one_network(3);
    w.count_underlay(4789);
    for i in 1..=3 {
        echo_server(&w.host(i).task_ns(&format!("t{i}")), "0.0.0.0:7000");
    }
    for i in 1..=3 {
        let from = w.host(i).task_ns(&format!("t{i}"));
        for j in (1..=3).filter(|j| *j != i) {
            let to = addr(&format!("10.10.0.{}:7000", 10 + j));
            wait_until(&format!("t{i} echoes with t{j}"), 10, || {
                tcp_echo_works(&from, to)
            });
        }
    }
    let t1 = w.host(1).task_ns("t1");
    assert!(ping(&t1, "10.10.0.12"), "ping t1 -> t2");
    assert!(ping(&t1, "10.10.0.13"), "ping t1 -> t3");
    assert!(w.underlay_count("tunneled") > 0, "traffic went over VXLAN");

    // An address nobody announced: the ARP request dies at the VXLAN device.
    assert!(!ping(&t1, "10.10.0.99"));
    assert_eq!(
        w.underlay_count("tunneled_arp"),
        0,
        "no ARP crossed the underlay"
    );
    assert_eq!(
        w.underlay_count("tunneled_bcast"),
        0,
        "no broadcast crossed the underlay"
    );

    // What an operator sees in the network sandbox of h1.
    let sandbox = w.host(1).network_ns_name(A);
    let fdb = run_in_named(&sandbox, "bridge", &["fdb", "show", "dev", "vxlan0"]);
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    // (`link-netnsid 0` between dst and self: the device's socket is in the host namespace.)
    for (mac, dst) in [
        ("02:42:0a:0a:00:0c", "dst 192.168.77.2"),
        ("02:42:0a:0a:00:0d", "dst 192.168.77.3"),
    ] {
        assert!(
            fdb.lines()
                .any(|l| l.starts_with(mac) && l.contains(dst) && l.ends_with("self permanent")),
            "{mac} {dst} in {fdb}"
        );
    }
    assert!(!fdb.contains("00:00:00:00:00:00"), "no flood entry: {fdb}");
    let neigh = run_in_named(&sandbox, "ip", &["neigh", "show", "dev", "vxlan0"]);
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        neigh.contains("10.10.0.12 lladdr 02:42:0a:0a:00:0c PERMANENT"),
        "{neigh}"
    );
    let link = run_in_named(&sandbox, "ip", &["-d", "link", "show", "vxlan0"]);
    let link = String::from_utf8_lossy(&link.stdout);
    for want in [
        "vxlan id 4100",
        "local 192.168.77.1",
        "dstport 4789",
        "nolearning",
        "proxy",
        "mtu 1450",
        "master br0",
    ] {
        assert!(link.contains(want), "{want:?} in {link}");
    }
    // The VXLAN socket lives in the host's namespace, not in the sandbox.
    let sockets = run_in(&w.host(1).ns, "cat", &["/proc/net/udp"]);
    assert!(
        String::from_utf8_lossy(&sockets.stdout).contains(":12B5 "),
        "udp 4789 socket in the host namespace"
    );
    let sockets = run_in_named(&sandbox, "cat", &["/proc/net/udp"]);
    assert!(!String::from_utf8_lossy(&sockets.stdout).contains(":12B5 "));

    // Traffic taught the kernel nothing the planner would undo.
    for h in &w.hosts {
        assert_converged(h);
    }
}

#[test]
fn two_overlay_networks_are_isolated() {
    let mut w = World::new(2, 1500);
    let mtu = w.host(1).overlay_mtu();
    for i in 1..=2 {
        let h = w.host_mut(i);
        h.desired
            .upsert_network(network(A, "10.10.0.1/24", mtu, false));
        h.desired
            .upsert_network(network(B, "10.20.0.1/24", mtu, false));
        h.desired.upsert_task(task(
            &format!("a{i}"),
            &[(A, "eth0", &format!("10.10.0.{}/24", 10 + i))],
            Some(&format!("172.30.0.{}/16", 10 + i)),
        ));
        h.desired.upsert_task(task(
            &format!("b{i}"),
            &[(B, "eth0", &format!("10.20.0.{}/24", 10 + i))],
            Some(&format!("172.30.0.{}/16", 20 + i)),
        ));
    }
    for (i, j) in [(1, 2), (2, 1)] {
        let ra = remote_of(A, &format!("10.10.0.{}/24", 10 + j), w.host(j));
        let rb = remote_of(B, &format!("10.20.0.{}/24", 10 + j), w.host(j));
        w.host_mut(i).desired.upsert_remote(ra);
        w.host_mut(i).desired.upsert_remote(rb);
    }
    for h in &w.hosts {
        reconcile(&h.dp, &h.desired).expect("reconcile");
    }
    for i in 1..=2 {
        echo_server(&w.host(i).task_ns(&format!("a{i}")), "0.0.0.0:7000");
        echo_server(&w.host(i).task_ns(&format!("b{i}")), "0.0.0.0:7000");
    }
    let a1 = w.host(1).task_ns("a1");
    let b1 = w.host(1).task_ns("b1");
    wait_until("a1 echoes with a2", 10, || {
        tcp_echo_works(&a1, addr("10.10.0.12:7000"))
    });
    wait_until("b1 echoes with b2", 10, || {
        tcp_echo_works(&b1, addr("10.20.0.12:7000"))
    });
    // No path from A to B: not to the other host's B task, not to this host's B task, not
    // even through the gateway bridge (its ports are isolated).
    for to in [
        "10.20.0.12:7000",
        "10.20.0.11:7000",
        "172.30.0.21:7000",
        "172.30.0.22:7000",
    ] {
        assert!(!tcp_echo_works(&a1, addr(to)), "a1 reached {to}");
        assert!(
            !ping(&a1, to.split(':').next().expect("ip")),
            "a1 pinged {to}"
        );
    }
    assert!(
        !tcp_echo_works(&b1, addr("10.10.0.12:7000")),
        "b1 reached a2"
    );
}

#[test]
fn internal_network_has_no_egress_while_others_are_masqueraded() {
    let mut w = World::new(2, 1500);
    let mtu = w.host(1).overlay_mtu();
    let h1 = w.host_mut(1);
    h1.desired
        .upsert_network(network(A, "10.10.0.1/24", mtu, false));
    h1.desired
        .upsert_network(network(B, "10.20.0.1/24", mtu, true));
    h1.desired.upsert_task(task(
        "out1",
        &[(A, "eth0", "10.10.0.11/24")],
        Some("172.30.0.11/16"),
    ));
    h1.desired
        .upsert_task(task("int1", &[(B, "eth0", "10.20.0.11/24")], None));
    reconcile(&h1.dp, &h1.desired).expect("reconcile");

    // A server outside the overlay: on the other host's underlay address.
    let server = echo_server(&w.host(2).ns, "192.168.77.2:0");
    let seen_from = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out1 = w.host(1).task_ns("out1");
    wait_until("out1 reaches the other host's underlay address", 10, || {
        let Ok(mut conn) = connect(&out1, server, Duration::from_secs(1)) else {
            return false;
        };
        *seen_from.lock().unwrap() = conn.local_addr().ok();
        echo(&mut conn, b"egress").is_ok_and(|b| b == b"egress")
    });
    assert_eq!(
        seen_from
            .lock()
            .unwrap()
            .expect("local address")
            .ip()
            .to_string(),
        "172.30.0.11",
        "the task sends from its gateway address"
    );
    let table = run_in(&w.host(1).ns, "nft", &["list", "table", "ip", "mesh"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("masquerade"),
        "masquerade rule in the host's table"
    );
    // The far end sees the host's underlay address: masqueraded.
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = w
        .host(2)
        .ns
        .run(|| std::net::TcpListener::bind("192.168.77.2:0"))
        .expect("enter")
        .expect("bind");
    let probe_addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((_, peer)) = listener.accept() {
            let _ = tx.send(peer);
        }
    });
    let _conn = connect(&out1, probe_addr, Duration::from_secs(2)).expect("connect probe");
    let peer = rx.recv_timeout(Duration::from_secs(5)).expect("accepted");
    assert_eq!(
        peer.ip().to_string(),
        "192.168.77.1",
        "source masqueraded to h1's underlay"
    );

    // The internal-only task has no route out at all.
    let int1 = w.host(1).task_ns("int1");
    let err = connect(&int1, server, Duration::from_secs(1)).expect_err("internal task got out");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
    let routes = run_in(&int1, "ip", &["route", "show", "default"]);
    assert!(routes.stdout.is_empty(), "no default route: {routes:?}");
    assert!(!ping(&int1, "192.168.77.2"));
    assert!(ping(&out1, "192.168.77.2"));
}

#[test]
fn removed_remote_is_unreachable_and_unlisted() {
    let mut w = one_network(2);
    echo_server(&w.host(2).task_ns("t2"), "0.0.0.0:7000");
    let t1 = w.host(1).task_ns("t1");
    let t2 = addr("10.10.0.12:7000");
    wait_until("t1 echoes with t2", 10, || tcp_echo_works(&t1, t2));

    let h1 = w.host_mut(1);
    remove_remote(
        &h1.dp,
        &mut h1.desired,
        vni(A),
        "10.10.0.12".parse().unwrap(),
    )
    .expect("remove remote");
    assert!(!tcp_echo_works(&t1, t2), "t2 still reachable");
    assert!(!ping(&t1, "10.10.0.12"));
    let sandbox = w.host(1).network_ns_name(A);
    let fdb = run_in_named(&sandbox, "bridge", &["fdb", "show", "dev", "vxlan0"]);
    // Only the VXLAN entries (those with a `dst`) are mesh's: br0 may still learn the MAC from
    // in-flight packets h2 sends, which is harmless since vxlan0 no longer knows where to send.
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    let programmed: Vec<&str> = fdb.lines().filter(|l| l.contains(" dst ")).collect();
    assert!(
        !programmed.iter().any(|l| l.contains("02:42:0a:0a:00:0c")),
        "{fdb}"
    );
    let neigh = run_in_named(&sandbox, "ip", &["neigh", "show", "dev", "vxlan0"]);
    assert!(!String::from_utf8_lossy(&neigh.stdout).contains("10.10.0.12"));
    assert_converged(w.host(1));

    // Announced again: reachable again.
    let r = remote_of(A, "10.10.0.12/24", w.host(2));
    let h1 = w.host_mut(1);
    ensure_remote(&h1.dp, &mut h1.desired, r).expect("ensure remote");
    wait_until("t1 echoes with t2 again", 10, || tcp_echo_works(&t1, t2));
    assert_converged(w.host(1));
}

#[test]
fn established_connections_survive_reconciles_and_new_tasks() {
    let mut w = one_network(2);
    echo_server(&w.host(2).task_ns("t2"), "0.0.0.0:7000");
    let t1 = w.host(1).task_ns("t1");
    let to = addr("10.10.0.12:7000");
    wait_until("t1 echoes with t2", 10, || tcp_echo_works(&t1, to));
    let mut conn = connect(&t1, to, Duration::from_secs(2)).expect("connect");
    assert_eq!(echo(&mut conn, b"before").expect("echo"), b"before");

    // A new task on h1 and its announcement on h2; then a restarted agent's reconcile.
    let mtu = w.host(1).overlay_mtu();
    let h1 = w.host_mut(1);
    h1.desired
        .upsert_network(network(A, "10.10.0.1/24", mtu, false));
    h1.desired.upsert_task(task(
        "t3",
        &[(A, "eth0", "10.10.0.13/24")],
        Some("172.30.0.13/16"),
    ));
    let ops = reconcile(&h1.dp, &h1.desired).expect("reconcile");
    assert!(
        ops.iter().all(|op| !format!("{op}").contains("-tt1")),
        "t1 untouched: {ops:#?}"
    );
    let r = remote_of(A, "10.10.0.13/24", w.host(1));
    let h2 = w.host_mut(2);
    ensure_remote(&h2.dp, &mut h2.desired, r).expect("ensure remote");
    for h in &w.hosts {
        assert_eq!(reconcile(&h.dp, &h.desired).expect("reconcile"), vec![]);
    }
    assert_eq!(echo(&mut conn, b"after").expect("echo"), b"after");
    echo_server(&w.host(1).task_ns("t3"), "0.0.0.0:7000");
    let t2 = w.host(2).task_ns("t2");
    wait_until("t2 echoes with the new t3", 10, || {
        tcp_echo_works(&t2, addr("10.10.0.13:7000"))
    });
    // Two tasks of one network on one host talk through the sandbox bridge alone.
    wait_until("t1 echoes with t3 on the same host", 10, || {
        tcp_echo_works(&t1, addr("10.10.0.13:7000"))
    });
}
