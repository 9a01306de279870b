//! Benchmark of the routing mesh, side by side in one run, from a client namespace on the
//! underlay (not a cluster node) of a 3-node lab with the product's default timings:
//!
//! - **mesh**: a published port on a node that runs no task (node DNAT, ingress sandbox,
//!   load balancer, VXLAN to the task's node, reply routed back the same way);
//! - **direct**: a host-mode port on the task's node (one DNAT to the task, no overlay).
//!
//! The one task (`mesh whoami`) serves both. Measured: new connections per second (one
//! `GET /` each), and upload throughput (1 MB request bodies on one kept-alive connection).
//! Prints each figure and the mesh/direct ratios.
//!
//! `cargo bench -p mesh-tests --bench ingress` (root needed). Knobs: `MESH_BENCH_CONNS`
//! (default 1000), `MESH_BENCH_UPLOADS` (default 200).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_tests::bench::env_usize;
use mesh_tests::{ClusterOptions, DEFAULT_CONFIG, Netns, cluster_with};
use serde_json::Value;

const BODY: usize = 1_000_000;

/// Reads one HTTP response (head and `Content-Length` body) from `s`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("response without content-length")?;
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(());
        }
    }
}

/// New connections per second: `count` sequential `GET /`, one connection each.
fn conn_rate(ns: &Netns, to: SocketAddr, count: usize) -> Result<f64> {
    ns.run(|| -> Result<f64> {
        let mut buf = Vec::new();
        let start = Instant::now();
        for _ in 0..count {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
            read_response(&mut s, &mut buf)?;
        }
        Ok(count as f64 / start.elapsed().as_secs_f64())
    })?
}

/// Upload throughput in MB/s: `count` POSTs of [`BODY`] bytes on one connection.
fn upload_rate(ns: &Netns, to: SocketAddr, count: usize) -> Result<f64> {
    ns.run(|| -> Result<f64> {
        let body = vec![b'x'; BODY];
        let head = format!("POST / HTTP/1.1\r\nHost: b\r\nContent-Length: {BODY}\r\n\r\n");
        let mut buf = Vec::new();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_nodelay(true)?;
        let start = Instant::now();
        for _ in 0..count {
            s.write_all(head.as_bytes())?;
            s.write_all(&body)?;
            read_response(&mut s, &mut buf)?;
        }
        Ok((count * BODY) as f64 / 1e6 / start.elapsed().as_secs_f64())
    })?
}

fn main() -> Result<()> {
    let conns = env_usize("MESH_BENCH_CONNS", 1000);
    let uploads = env_usize("MESH_BENCH_UPLOADS", 200);
    let mut opts = ClusterOptions::new(1, 2);
    opts.daemon_config = DEFAULT_CONFIG.to_string();
    let lab = cluster_with(opts)?;
    let (client, _) = lab.add_client(1)?;
    let manager = lab.host(1);
    manager
        .cli([
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "1",
            "--publish",
            "published=8080,target=80",
            "--publish",
            "published=9090,target=80,mode=host",
            "--",
            "mesh",
            "whoami",
            "--port",
            "80",
        ])?
        .ok_stdout()?;
    let ps = manager
        .cli(["service", "ps", "web", "--format", "json"])?
        .ok_stdout()?;
    let rows: Vec<Value> = serde_json::from_str(&ps)?;
    let task_node = rows
        .iter()
        .find(|r| r["state"] == "running")
        .and_then(|r| r["node"].as_str())
        .context("a running web task")?
        .to_string();
    let entry = lab
        .hosts()
        .iter()
        .find(|h| h.name() != task_node)
        .context("a node without the task")?;
    let task_host = lab.host_named(&task_node).context("task node")?;
    let mesh = SocketAddr::from((entry.ip(), 8080));
    let direct = SocketAddr::from((task_host.ip(), 9090));
    lab.wait_for("both paths to answer", Duration::from_secs(30), || {
        Ok(conn_rate(&client, mesh, 1).is_ok() && conn_rate(&client, direct, 1).is_ok())
    })?;
    // Warm both paths (ARP, conntrack, page cache of the binary).
    conn_rate(&client, mesh, 50)?;
    conn_rate(&client, direct, 50)?;

    println!(
        "routing mesh via {} (no task) vs host-mode port on {} (the task), client on the underlay",
        entry.name(),
        task_node
    );
    let direct_cps = conn_rate(&client, direct, conns)?;
    let mesh_cps = conn_rate(&client, mesh, conns)?;
    println!(
        "connections/s  direct {direct_cps:>9.0}  mesh {mesh_cps:>9.0}  mesh/direct {:.2}  ({conns} GETs each)",
        mesh_cps / direct_cps
    );
    let direct_mbs = upload_rate(&client, direct, uploads)?;
    let mesh_mbs = upload_rate(&client, mesh, uploads)?;
    println!(
        "upload MB/s    direct {direct_mbs:>9.1}  mesh {mesh_mbs:>9.1}  mesh/direct {:.2}  ({uploads} x 1 MB)",
        mesh_mbs / direct_mbs
    );
    Ok(())
}
