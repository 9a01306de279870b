//! Benchmark (not a test): TCP throughput task-to-task over the overlay against host-to-host
//! over the underlay, measured side by side in one run, rounds alternating.
//!
//! Two hosts (namespaces on a switch namespace) run the Linux dataplane with one overlay
//! network and one task each. For each underlay MTU, every round sends for a few seconds over
//! one single TCP connection, first overlay then underlay, and the receiver counts bytes.
//! Prints each round, the medians, and overlay/underlay.
//!
//! ```text
//! cargo run --release -p mesh-dataplane --example overlay_throughput -- [SECONDS] [ROUNDS] [MTU...]
//! ```
//! Defaults: 3 seconds, 5 rounds, underlay MTUs 1500 and 9000. Needs root.
//!
//! Both "hosts" share this machine's cores, and a veth delivers in the sender's softirq, so the
//! sending core also carries most of the receive path: every extra hop of the overlay (two veth
//! pairs, two bridges, encapsulation and decapsulation) is paid on one core. On two real
//! machines that work is split between them and the wire is usually the limit.

#[path = "../tests/support/world.rs"]
mod world;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use mesh_dataplane::netns::Netns;
use mesh_dataplane::overlay::reconcile;
use tokio::time::Instant;
use world::*;

const VNI: u32 = 4100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(3, |s| s.parse().expect("seconds"));
    let rounds: usize = args.get(1).map_or(5, |s| s.parse().expect("rounds"));
    let mtus: Vec<u32> = if args.len() > 2 {
        args[2..].iter().map(|s| s.parse().expect("mtu")).collect()
    } else {
        vec![1500, 9000]
    };
    println!("single TCP stream, {seconds} s per measure, {rounds} rounds alternating");
    for mtu in mtus {
        bench(mtu, seconds, rounds);
    }
}

fn bench(underlay_mtu: u32, seconds: u64, rounds: usize) {
    let mut w = World::new(2, underlay_mtu);
    let overlay_mtu = w.host(1).overlay_mtu();
    for i in 1..=2 {
        let h = w.host_mut(i);
        h.desired
            .upsert_network(network(VNI, "10.10.0.1/24", overlay_mtu, false));
        h.desired.upsert_task(task(
            &format!("t{i}"),
            &[(VNI, "eth0", &format!("10.10.0.{}/24", 10 + i))],
            Some(&format!("172.30.0.{}/16", 10 + i)),
        ));
    }
    let r1 = remote_of(VNI, "10.10.0.11/24", w.host(1));
    let r2 = remote_of(VNI, "10.10.0.12/24", w.host(2));
    w.host_mut(1).desired.upsert_remote(r2);
    w.host_mut(2).desired.upsert_remote(r1);
    for h in &w.hosts {
        reconcile(&h.dp, &h.desired).expect("reconcile");
    }
    let t1 = w.host(1).task_ns("t1");
    let t2 = w.host(2).task_ns("t2");
    let overlay_to: SocketAddr = "10.10.0.12:5201".parse().expect("addr");
    let underlay_to: SocketAddr = "192.168.77.2:5202".parse().expect("addr");
    wait_until("overlay path works", 10, || ping(&t1, "10.10.0.12"));

    println!("\nunderlay MTU {underlay_mtu}, overlay MTU {overlay_mtu}");
    let mut overlay = Vec::new();
    let mut underlay = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let o = measure(&t1, &t2, overlay_to, seconds);
        let u = measure(&w.host(1).ns, &w.host(2).ns, underlay_to, seconds);
        println!(
            "  round {round}: overlay {:6.2} Gbit/s   underlay {:6.2} Gbit/s   ratio {:.2}",
            o / 1e9,
            u / 1e9,
            o / u
        );
        overlay.push(o);
        underlay.push(u);
        ratios.push(o / u);
    }
    let (o, u) = (median(&mut overlay), median(&mut underlay));
    println!(
        "  median:  overlay {:6.2} Gbit/s   underlay {:6.2} Gbit/s   overlay/underlay {:.2} (median of round ratios {:.2})",
        o / 1e9,
        u / 1e9,
        o / u,
        median(&mut ratios)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Bits per second received over one TCP connection from `client` to `to` (a listener
/// opened in `server`), sending for `seconds`.
fn measure(client: &Netns, server: &Netns, to: SocketAddr, seconds: u64) -> f64 {
    let listener = server
        .run(|| TcpListener::bind(to))
        .expect("enter")
        .expect("bind");
    std::thread::scope(|s| {
        let receiver = s.spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 18];
            let mut bytes = 0u64;
            let mut start = None;
            loop {
                let n = conn.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                start.get_or_insert_with(Instant::now);
                bytes += n as u64;
            }
            let elapsed = start.expect("received something").elapsed();
            bytes as f64 * 8.0 / elapsed.as_secs_f64()
        });
        let mut conn = client
            .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .expect("enter")
            .expect("connect");
        let chunk = vec![0x5au8; 1 << 17];
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            conn.write_all(&chunk).expect("write");
        }
        drop(conn);
        receiver.join().expect("receiver")
    })
}
