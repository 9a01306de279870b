//! Benchmark of the cost of one change as the number of services grows, with the product's
//! *default* timings, on a lab of 1 manager and 2 workers. For each N (`MESH_BENCH_SERVICES`,
//! default `1,10,60`) a fresh lab gets one /16 overlay network `appnet`, a global service
//! `probe` (one task per node, where the figures are read), `api` at 2 replicas and N
//! services `s0..` of 2 replicas each, all on `appnet`. It prints, for each N:
//!
//! - **all running**: from the first `service create` until `service ls` shows every replica
//!   of every service running;
//! - **every LB up to date**: from the first `service create` until every probe's load
//!   balancer holds every VIP of the network with its service's number of backends;
//! - **scale 2 -> 6** and **6 -> 2** of `api` (`MESH_BENCH_SCALES` samples each, default 5):
//!   from the command until every probe's load balancer sends api's VIP to exactly the
//!   running replicas (median and p99);
//! - each daemon's resident memory and CPU time at the end.
//!
//! The ratio of the one-change latencies at the largest N and at the smallest is printed
//! last: the cost of one change should not depend on how many services there are.
//!
//! `cargo bench -p mesh-tests --bench scale` (root needed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_tests::bench::{self, Row, env_usize, percentile, print_table};
use mesh_tests::services::{self, CONVERGE_BOUND, TaskRow, cli_ok, create_network};
use mesh_tests::{ClusterOptions, DEFAULT_CONFIG, Lab, Poll, cluster_with};
use serde_json::Value;

/// Deadline for anything the benchmark waits for (far above what it measures).
const SETTLE: Duration = Duration::from_secs(600);
const LOW: usize = 2;
const HIGH: usize = 6;

fn ms(d: Duration) -> String {
    bench::ms(d, 0)
}

/// (running, desired) replicas of every service, from `service ls`.
fn replicas(lab: &Lab) -> Result<BTreeMap<String, (u64, u64)>> {
    let out = cli_ok(
        lab.host(1),
        &["service", "ls", "--format", "json"],
        CONVERGE_BOUND,
    )?;
    let rows: Vec<Value> = serde_json::from_str(&out).context("service ls json")?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                (r["running"].as_u64()?, r["desired"].as_u64()?),
            ))
        })
        .collect())
}

/// Every VIP of `appnet` with its service's number of replicas.
struct Expected {
    by_vip: BTreeMap<Ipv4Addr, usize>,
}

/// Whether the load balancer of every probe holds, for each expected VIP, that many backends.
fn lbs_hold(lab: &Lab, probes: &[TaskRow], want: &Expected) -> Result<Poll<()>> {
    for p in probes {
        let table = services::lb_table(&p.netns(lab)?)?;
        for (vip, n) in &want.by_vip {
            let have = table.get(*vip).map_or(0, |s| s.backends.len());
            if have != *n {
                return Ok(Poll::Pending(format!(
                    "{}: {vip} has {have} backends, want {n}",
                    p.node
                )));
            }
        }
    }
    Ok(Poll::Ready(()))
}

/// Resident memory (MiB) and CPU time (s) of process `pid`.
fn usage(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((rss_kb / 1024.0, ticks / hz))
}

struct Figures {
    n: usize,
    running: Duration,
    lbs: Duration,
    up: Vec<Duration>,
    down: Vec<Duration>,
    usage: String,
}

/// Scales api to `n`; the time until every probe's load balancer holds exactly the running
/// replicas.
fn scale(lab: &Lab, probes: &[TaskRow], vip: Ipv4Addr, net_id: &str, n: usize) -> Result<Duration> {
    let n1 = lab.host(1);
    let t0 = Instant::now();
    cli_ok(
        n1,
        &["service", "scale", "-d", &format!("api={n}")],
        CONVERGE_BOUND,
    )?;
    let mut done = None;
    services::wait(
        lab,
        &format!("every probe to hold api's {n}"),
        SETTLE,
        || {
            for p in probes {
                let have = services::lb_table(&p.netns(lab)?)?
                    .get(vip)
                    .map(|s| s.backends.clone())
                    .unwrap_or_default();
                if have.len() != n {
                    return Ok(Poll::Pending(format!("{}: {have:?}", p.node)));
                }
            }
            let at = Instant::now();
            // The backends are the running replicas (checked after the time is taken).
            let api = services::running(n1, "api")?;
            let want: std::collections::BTreeSet<Ipv4Addr> =
                api.iter().filter_map(|t| t.addr_on(net_id)).collect();
            for p in probes {
                let have = services::lb_table(&p.netns(lab)?)?
                    .get(vip)
                    .map(|s| s.backends.clone())
                    .unwrap_or_default();
                if have != want {
                    return Ok(Poll::Pending(format!("{}: {have:?} want {want:?}", p.node)));
                }
            }
            done.get_or_insert(at);
            Ok(Poll::Ready(()))
        },
    )?;
    Ok(done.context("no time")?.duration_since(t0))
}

fn run(n: usize, samples: usize) -> Result<Figures> {
    let mut opts = ClusterOptions::new(1, 2);
    opts.daemon_config = DEFAULT_CONFIG.to_string();
    opts.converge_timeout = SETTLE;
    let lab = cluster_with(opts)?;
    let n1 = lab.host(1);
    let net = create_network(n1, "appnet", &["--subnet", "10.20.0.0/16"])?;
    let command = services::whoami();
    let create = |name: &str, extra: &[&str]| -> Result<()> {
        let mut argv = vec![
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--network",
            "appnet",
        ];
        argv.extend_from_slice(extra);
        argv.push("--");
        argv.extend(command.iter().map(String::as_str));
        cli_ok(n1, &argv, CONVERGE_BOUND).map(drop)
    };
    let t0 = Instant::now();
    create("probe", &["--mode", "global"])?;
    create("api", &["--replicas", &LOW.to_string()])?;
    for i in 0..n {
        create(&format!("s{i}"), &["--replicas", "2"])?;
    }
    let created = t0.elapsed();
    services::wait(
        &lab,
        "every replica of every service running",
        SETTLE,
        || {
            let r = replicas(&lab)?;
            let short: Vec<String> = r
                .iter()
                .filter(|(_, (run, want))| run != want)
                .map(|(s, (run, want))| format!("{s} {run}/{want}"))
                .collect();
            Ok(if r.len() == n + 2 && short.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} services; short: {short:?}", r.len()))
            })
        },
    )?;
    let running = t0.elapsed();
    let mut by_vip = BTreeMap::new();
    let mut names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    names.push("api".into());
    for s in &names {
        by_vip.insert(services::vip(n1, s, &net.id)?, 2);
    }
    by_vip.insert(services::vip(n1, "probe", &net.id)?, lab.hosts().len());
    let want = Expected { by_vip };
    let probes = services::wait_running(&lab, n1, "probe", lab.hosts().len(), SETTLE)?;
    services::wait(
        &lab,
        "every probe's load balancer up to date",
        SETTLE,
        || lbs_hold(&lab, &probes, &want),
    )?;
    let lbs = t0.elapsed();
    eprintln!(
        "N={n}: created in {} ms, all running {} ms, every LB up to date {} ms",
        ms(created),
        ms(running),
        ms(lbs)
    );
    let vip = services::vip(n1, "api", &net.id)?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let u = scale(&lab, &probes, vip, &net.id, HIGH)?;
        let d = scale(&lab, &probes, vip, &net.id, LOW)?;
        eprintln!(
            "N={n} sample {}: {LOW} -> {HIGH} {} ms, {HIGH} -> {LOW} {} ms",
            i + 1,
            ms(u),
            ms(d)
        );
        up.push(u);
        down.push(d);
    }
    let usage = lab
        .hosts()
        .iter()
        .map(|h| match h.daemon_pid().and_then(usage) {
            Some((rss, cpu)) => format!("{} {rss:.0} MiB {cpu:.1} s", h.name()),
            None => format!("{} ?", h.name()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Figures {
        n,
        running,
        lbs,
        up,
        down,
        usage,
    })
}

fn main() -> Result<()> {
    let samples = env_usize("MESH_BENCH_SCALES", 5);
    let ns: Vec<usize> = std::env::var("MESH_BENCH_SERVICES")
        .unwrap_or_else(|_| "1,10,60".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .context("MESH_BENCH_SERVICES: a list of counts")
        })
        .collect::<Result<_>>()?;
    if ns.is_empty() || samples == 0 {
        bail!("nothing to measure");
    }
    let mut all = Vec::new();
    for n in ns {
        all.push(run(n, samples)?);
    }
    let mut rows = Vec::new();
    for f in &all {
        rows.push(Row::new(
            format!("N={}: scale api {LOW} -> {HIGH}, every LB", f.n),
            f.up.clone(),
        ));
        rows.push(Row::new(
            format!("N={}: scale api {HIGH} -> {LOW}, every LB", f.n),
            f.down.clone(),
        ));
    }
    print_table(&rows, 0);
    println!();
    println!(
        "{:<8} {:>14} {:>22}  daemons at the end (RSS, CPU time)",
        "services", "all running ms", "every LB up to date ms"
    );
    for f in &all {
        println!(
            "{:<8} {:>14} {:>22}  {}",
            f.n,
            ms(f.running),
            ms(f.lbs),
            f.usage
        );
    }
    if let (Some(first), Some(last)) = (all.first(), all.last()) {
        let median = |v: &[Duration]| {
            let mut v = v.to_vec();
            v.sort();
            percentile(&v, 50.0)
        };
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "\none change at N={} / at N={}: scale-up p50 {:.2}, scale-down p50 {:.2}",
            last.n,
            first.n,
            ratio(median(&last.up), median(&first.up)),
            ratio(median(&last.down), median(&first.down)),
        );
    }
    Ok(())
}
