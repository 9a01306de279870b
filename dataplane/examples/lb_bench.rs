//! Load-balancer benchmark, side by side in one run (needs root):
//! - connection rate and throughput from a client namespace through a VIP (nftables backend,
//!   3 backends) versus straight to one backend's IP, rounds interleaved;
//! - time to apply one backend change in a namespace with 10 services versus one with 1,000
//!   services, each of 10 backends (the O(change) claim: the ratio should be near 1).
//!
//! `cargo run --release -p mesh-dataplane --example lb_bench [-- --conns N --secs S]`

#[path = "../tests/lb_support/mod.rs"]
mod lb_support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use lb_support::*;
use mesh_dataplane::lb::{LbChange, LbService, LbTable, LoadBalancer, NftLb, reconcile};
use mesh_dataplane::netns::TempNetns;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connections per second: `n` sequential connect + read-the-name + close.
fn conn_rate(w: &LbWorld, to: SocketAddrV4, n: usize) -> f64 {
    w.in_client(|| {
        let start = Instant::now();
        for _ in 0..n {
            tcp_ask(to).expect("connection");
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

/// Gbit/s read from the bulk server over one connection for `secs`.
fn throughput(w: &LbWorld, to: SocketAddrV4, secs: f64) -> f64 {
    w.in_client(|| {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2))
            .expect("bulk connection");
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            bytes += conn.read(&mut buf).expect("read") as u64;
        }
        bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
    })
}

fn services(n: usize) -> LbTable {
    (0..n)
        .map(|i| {
            let (hi, lo) = ((i / 250) as u8, (i % 250 + 1) as u8);
            LbService::new(
                Ipv4Addr::new(10, 200, hi, lo),
                (0..10u8).map(move |b| Ipv4Addr::new(10, 201 + b, hi, lo)),
            )
        })
        .collect()
}

/// Median milliseconds to apply a one-backend change to one service among `n`.
fn change_time(n: usize, changes: usize) -> (f64, f64) {
    let ns = TempNetns::new("lbbench").expect("namespace");
    let lb = NftLb::new();
    let table = services(n);
    let start = Instant::now();
    reconcile(&lb, ns.name(), &table).expect("program services");
    let setup = start.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for k in 0..changes {
        let mut s = table.services.values().nth((k * 7) % n).unwrap().clone();
        let drop = *s.backends.iter().nth(k % 10).unwrap();
        s.backends.remove(&drop);
        let start = Instant::now();
        lb.apply(ns.name(), &[LbChange::Upsert(s)]).expect("apply");
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    (median(times), setup)
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let conns = arg("--conns", 2000.0) as usize;
    let secs = arg("--secs", 2.0);
    let w = LbWorld::new(3);
    NftLb::new()
        .apply(
            w.client.name(),
            &[LbChange::Upsert(LbService::new(VIP, w.ips()))],
        )
        .expect("program the VIP");
    let direct_ip = w.ips()[0];

    let (mut vip_rate, mut direct_rate, mut vip_tp, mut direct_tp) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        vip_rate.push(conn_rate(&w, SocketAddrV4::new(VIP, TCP_PORT), conns));
        direct_rate.push(conn_rate(&w, SocketAddrV4::new(direct_ip, TCP_PORT), conns));
        vip_tp.push(throughput(&w, SocketAddrV4::new(VIP, BULK_PORT), secs));
        direct_tp.push(throughput(
            &w,
            SocketAddrV4::new(direct_ip, BULK_PORT),
            secs,
        ));
    }
    let (vr, dr, vt, dt) = (
        median(vip_rate.clone()),
        median(direct_rate.clone()),
        median(vip_tp.clone()),
        median(direct_tp.clone()),
    );
    println!("nftables VIP vs direct, median of {ROUNDS} interleaved rounds:");
    println!(
        "  connection rate ({conns} sequential): via VIP {vr:.0}/s, direct {dr:.0}/s, ratio {:.2}  (rounds {vip_rate:.0?} vs {direct_rate:.0?})",
        vr / dr
    );
    println!(
        "  throughput (one connection, {secs} s): via VIP {vt:.2} Gbit/s, direct {dt:.2} Gbit/s, ratio {:.2}  (rounds {vip_tp:.2?} vs {direct_tp:.2?})",
        vt / dt
    );

    let (small, small_setup) = change_time(10, 15);
    let (large, large_setup) = change_time(1000, 15);
    println!("one backend change (median of 15), services of 10 backends:");
    println!(
        "  10 services: {small:.2} ms   1,000 services: {large:.2} ms   ratio {:.2}",
        large / small
    );
    println!(
        "  (initial programming: 10 services {small_setup:.2} s, 1,000 services {large_setup:.2} s)"
    );
}
