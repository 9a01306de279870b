//! The nftables load balancer with real traffic: a client namespace and backend namespaces on
//! a bridge (see `lb_support`). Needs root and `nft`, `conntrack`.

mod lb_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb_support::*;
use mesh_dataplane::lb::{
    self, Backend, IpvsLb, LbChange, LbService, LbTable, LoadBalancer, NftLb, plan, reconcile,
};
use mesh_dataplane::netns::{Netns, TempNetns};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

fn vip_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, TCP_PORT)
}

fn vip_udp() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, UDP_PORT)
}

fn table_of(services: impl IntoIterator<Item = LbService>) -> LbTable {
    services.into_iter().collect()
}

/// Asserts every backend got some of `n` answers and none more than half, and nothing failed.
fn assert_balanced(what: &str, counts: &BTreeMap<String, usize>, names: &[&str], n: usize) {
    let total: usize = counts.values().sum();
    assert_eq!(total, n, "{what}: {counts:?}");
    for name in names {
        let got = counts.get(*name).copied().unwrap_or(0);
        assert!(got > 0, "{what}: {name} got nothing: {counts:?}");
        assert!(
            got <= n / 2,
            "{what}: {name} got more than half: {counts:?}"
        );
    }
    assert_eq!(
        counts.len(),
        names.len(),
        "{what}: unexpected answers {counts:?}"
    );
}

fn nft_in(ns: &Netns, args: &[&str]) -> String {
    let mut cmd = Command::new("nft");
    cmd.args(args);
    ns.enter_on_exec(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tcp_and_udp_to_the_vip_are_spread_over_all_backends() {
    let w = LbWorld::new(3);
    let lb = NftLb::new();
    // A table that is not ours must survive everything we do.
    nft_in(&w.client, &["add", "table", "ip", "foreign"]);
    let desired = table_of([LbService::new(VIP, w.ips())]);
    let applied = reconcile(&lb, w.client.name(), &desired).unwrap();
    assert_eq!(
        applied,
        vec![LbChange::Upsert(LbService::new(VIP, w.ips()))]
    );

    let tcp = w.tcp_spread(vip_tcp(), 300);
    assert_balanced("300 tcp connections", &tcp, &["b1", "b2", "b3"], 300);
    let udp = w.udp_spread(vip_udp(), 90);
    assert_balanced("90 udp flows", &udp, &["b1", "b2", "b3"], 90);
    eprintln!("tcp {tcp:?} udp {udp:?}");

    // An established flow through the VIP keeps conntrack's 5-day timeout (IPVS would give it
    // 900 s).
    let _held = w.in_client(|| {
        let mut conn = std::net::TcpStream::connect(SocketAddrV4::new(VIP, IDLE_PORT)).unwrap();
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(&mut conn, &mut buf).unwrap();
        conn
    });
    let mut cmd = Command::new("conntrack");
    cmd.args(["-L", "-p", "tcp", "--dport", &IDLE_PORT.to_string()]);
    w.client.enter_on_exec(&mut cmd).unwrap();
    let listing = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let timeout: u64 = listing
        .split_whitespace()
        .nth(2)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no conntrack entry: {listing:?}"));
    assert!(listing.contains("ESTABLISHED"), "{listing}");
    assert!(
        timeout > 400_000,
        "established timeout {timeout} s: {listing}"
    );

    // Converged: observation reads back exactly the desired table, and nothing is planned.
    assert_eq!(lb.observe(w.client.name()).unwrap(), desired);
    assert_eq!(
        plan(&desired, &lb.observe(w.client.name()).unwrap()),
        vec![]
    );
    assert_eq!(reconcile(&lb, w.client.name(), &desired).unwrap(), vec![]);

    lb.clear(w.client.name()).unwrap();
    assert_eq!(lb.observe(w.client.name()).unwrap(), LbTable::new());
    assert!(nft_in(&w.client, &["list", "tables"]).contains("table ip foreign"));
}

#[test]
fn removing_a_backend_is_atomic_and_the_removed_one_gets_nothing() {
    let w = LbWorld::new(3);
    let lb = NftLb::new();
    let all = LbService::new(VIP, w.ips());
    let two = LbService::new(VIP, w.ips().into_iter().take(2));
    lb.apply(w.client.name(), &[LbChange::Upsert(all.clone())])
        .unwrap();

    // A client loop of short connections runs during ten 3 -> 2 -> 3 flips.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = std::thread::scope(|s| {
        let looper = s.spawn(|| {
            w.in_client(|| {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = tcp_ask(vip_tcp()) {
                        failures.push(e.to_string());
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        });
        let wait_progress = |n: u64| {
            let target = done.load(Ordering::Relaxed) + n;
            wait_for(
                "the client loop made progress",
                Duration::from_secs(20),
                || (done.load(Ordering::Relaxed) >= target).then_some(()),
            )
        };
        wait_progress(20);
        for _ in 0..10 {
            lb.apply(w.client.name(), &[LbChange::Upsert(two.clone())])
                .unwrap();
            wait_progress(10);
            lb.apply(w.client.name(), &[LbChange::Upsert(all.clone())])
                .unwrap();
            wait_progress(10);
        }
        lb.apply(w.client.name(), &[LbChange::Upsert(two.clone())])
            .unwrap();
        wait_progress(20);
        stop.store(true, Ordering::Relaxed);
        looper.join().unwrap()
    });
    eprintln!(
        "{} connections during 21 changes, {} failed",
        done.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failures during the change: {failures:?}"
    );

    let b3 = w.backend("b3");
    let before = b3.tcp_served.load(Ordering::Relaxed);
    let counts = w.tcp_spread(vip_tcp(), 100);
    assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&50), "{counts:?}");
    assert_eq!(
        b3.tcp_served.load(Ordering::Relaxed),
        before,
        "b3 was removed"
    );
    assert_eq!(lb.observe(w.client.name()).unwrap(), table_of([two]));
}

#[test]
fn udp_flow_leaves_a_removed_backend_once_conntrack_is_flushed() {
    let w = LbWorld::new(3);
    let lb = NftLb::new();
    lb.apply(
        w.client.name(),
        &[LbChange::Upsert(LbService::new(VIP, w.ips()))],
    )
    .unwrap();
    // One UDP "flow": the same socket (same source port) keeps asking.
    let sock: UdpSocket = w.in_client(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(vip_udp()).unwrap();
        s
    });
    let first = udp_ask(Some(&sock), vip_udp()).unwrap();
    let pinned = w.backend(&first);
    for _ in 0..5 {
        assert_eq!(
            udp_ask(Some(&sock), vip_udp()).unwrap(),
            first,
            "a flow sticks"
        );
    }

    let rest: BTreeSet<Ipv4Addr> = w.ips().into_iter().filter(|ip| *ip != pinned.ip).collect();
    lb.apply(
        w.client.name(),
        &[LbChange::Upsert(LbService::new(VIP, rest.iter().copied()))],
    )
    .unwrap();
    // The stale conntrack entry keeps the flow on the removed backend (moby#8795)...
    assert_eq!(udp_ask(Some(&sock), vip_udp()).unwrap(), first);
    // ...until it is flushed: then the flow is balanced again, to a live backend.
    lb.flush_conntrack(w.client.name(), &[pinned.ip].into())
        .unwrap();
    let served_before = pinned.udp_served.load(Ordering::Relaxed);
    for _ in 0..5 {
        let now = udp_ask(Some(&sock), vip_udp()).unwrap();
        assert_ne!(now, first, "the flow left the removed backend");
    }
    assert_eq!(pinned.udp_served.load(Ordering::Relaxed), served_before);
    // Flushing again finds nothing and is fine.
    lb.flush_conntrack(w.client.name(), &[pinned.ip].into())
        .unwrap();
}

#[test]
fn zero_backends_refuse_connections_fast() {
    let w = LbWorld::new(1);
    let lb = NftLb::new();
    lb.apply(
        w.client.name(),
        &[LbChange::Upsert(LbService::new(VIP, []))],
    )
    .unwrap();
    assert_eq!(
        lb.observe(w.client.name()).unwrap(),
        table_of([LbService::new(VIP, [])])
    );
    let (tcp, tcp_took, udp) = w.in_client(|| {
        let start = Instant::now();
        let tcp = tcp_ask(vip_tcp());
        let took = start.elapsed();
        let start = Instant::now();
        let udp = udp_ask(None, vip_udp());
        (tcp, took, (udp, start.elapsed()))
    });
    let tcp = tcp.unwrap_err();
    assert_eq!(tcp.kind(), std::io::ErrorKind::ConnectionRefused, "{tcp}");
    assert!(
        tcp_took < Duration::from_millis(500),
        "refused in {tcp_took:?}"
    );
    // The datagram is refused by the local filter chain: `send` fails with EPERM at once.
    let (udp, udp_took) = udp;
    let udp = udp.unwrap_err();
    assert_eq!(udp.kind(), std::io::ErrorKind::PermissionDenied, "{udp}");
    assert!(
        udp_took < Duration::from_millis(400),
        "refused in {udp_took:?}"
    );

    // A backend comes back: served again. Then the service goes away entirely.
    lb.apply(
        w.client.name(),
        &[LbChange::Upsert(LbService::new(VIP, w.ips()))],
    )
    .unwrap();
    assert_eq!(w.in_client(|| tcp_ask(vip_tcp())).unwrap(), "b1");
    lb.apply(w.client.name(), &[LbChange::Remove(VIP)]).unwrap();
    lb.apply(w.client.name(), &[LbChange::Remove(VIP)]).unwrap();
    assert_eq!(lb.observe(w.client.name()).unwrap(), LbTable::new());
    let listing = nft_in(&w.client, &["list", "table", "ip", lb::TABLE]);
    assert!(!listing.contains("10_77_0_100"), "{listing}");
}

/// 1000 services of 10 backends: `(vip, backends)` with VIPs 10.200.i.j.
fn many_services(n: usize) -> LbTable {
    (0..n)
        .map(|i| {
            let vip = Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8);
            let backends = (0..10)
                .map(move |b| Ipv4Addr::new(10, 201 + b, (i / 250) as u8, (i % 250 + 1) as u8));
            LbService::new(vip, backends)
        })
        .collect()
}

#[test]
fn updating_one_of_1000_services_touches_only_that_service() {
    let ns = TempNetns::new("lb1000").unwrap();
    let lb = NftLb::new();
    let mut desired = many_services(1000);
    let start = Instant::now();
    reconcile(&lb, ns.name(), &desired).unwrap();
    eprintln!(
        "1000 services x 10 backends programmed in {:?}",
        start.elapsed()
    );
    assert_eq!(lb.observe(ns.name()).unwrap(), desired);

    let victim = *desired.services.keys().nth(500).unwrap();
    let other = *desired.services.keys().nth(10).unwrap();
    let other_map = format!("be_{}", victim_suffix(other));
    let before = nft_in(
        &ns,
        &["-j", "-a", "list", "map", "ip", lb::TABLE, &other_map],
    );

    let mut changed = desired.get(victim).unwrap().clone();
    let dropped = *changed.backends.iter().next().unwrap();
    changed.backends.remove(&dropped);
    desired.upsert(changed.clone());
    let changes = plan(&desired, &lb.observe(ns.name()).unwrap());
    assert_eq!(changes, vec![LbChange::Upsert(changed.clone())]);

    // The transaction: the constant base statements plus the statements of this one service;
    // the same size as with 10 services, and naming no other VIP.
    let script = NftLb::script(&changes);
    let small = NftLb::script(&plan(&desired, &LbTable::new())[..1]);
    assert_eq!(script.lines().count(), small.lines().count(), "{script}");
    let suffix = victim_suffix(victim);
    for line in script.lines() {
        let names_a_service =
            line.contains("be_") || line.contains("svc_") || line.contains("10.200.");
        assert!(
            !names_a_service || line.contains(&suffix) || line.contains(&victim.to_string()),
            "{line}"
        );
    }
    eprintln!(
        "one-service transaction: {} statements",
        script.lines().count()
    );
    lb.apply(ns.name(), &changes).unwrap();

    let after = lb.observe(ns.name()).unwrap();
    assert_eq!(after, desired);
    // Another service's map is the very same object (same handle, same elements).
    assert_eq!(
        nft_in(
            &ns,
            &["-j", "-a", "list", "map", "ip", lb::TABLE, &other_map]
        ),
        before
    );
    lb.clear(ns.name()).unwrap();
}

fn victim_suffix(vip: Ipv4Addr) -> String {
    vip.to_string().replace('.', "_")
}

#[test]
fn backend_is_chosen_by_the_kernel_and_can_be_forced() {
    let detected = lb::detect();
    assert_eq!(
        detected == Backend::Ipvs,
        lb::ipvs::available(),
        "{detected}"
    );
    assert_eq!("nftables".parse::<Backend>().unwrap(), Backend::Nftables);
    assert_eq!("ipvs".parse::<Backend>().unwrap(), Backend::Ipvs);
    let _boxed = Backend::Nftables.load_balancer();
    if detected == Backend::Nftables {
        // Without IPVS, the IPVS backend fails with an error naming the namespace.
        let ns = TempNetns::new("noipvs").unwrap();
        let err = IpvsLb::default().observe(ns.name()).unwrap_err();
        let text = format!("{err}");
        assert!(text.contains(ns.name()) && text.contains("ipvs"), "{text}");
    }
}
