//! Benchmark of how fast every node's load balancer and DNS follow a service, with the
//! product's *default* timings (not the tests' fast ones), on a lab of 3 managers and 2
//! workers. A global service `probe` puts one task on every node, attached to the network
//! `appnet` of the service `api`; the probes are where the figures are observed:
//!
//! - **scale-up**: from `mesh service scale api=10` being issued (from 1 replica) until every
//!   probe's load balancer sends api's VIP to exactly the 10 running replicas and the probe's
//!   resolver (127.0.0.11) answers `tasks.api` with exactly their 10 addresses. The sample is
//!   the slowest probe. Then back to 1 replica (measured the same way, for information: the
//!   load balancers and DNS holding only the replica kept), settled before the next sample;
//! - **node death**: with api at 10 replicas over the 5 nodes, from `kill -9` of a node's
//!   daemon (then its cable cut, so its tasks, which outlive the daemon, are unreachable too)
//!   until no surviving probe's load balancer holds an address of that node's api tasks
//!   (DNS alike, for information; a death after which DNS still names one of them 10 s
//!   after the load balancers were right is left out of that row). The victims are
//!   node2..node5 in turn, workers first, never the raft leader (one node at a time: the
//!   managers keep their quorum). Between samples the node is reconnected and restarted, and
//!   the cluster is waited for: every node ready, a probe on each, 10 api replicas, every
//!   load balancer and DNS holding all of them.
//!
//! Each probe is watched by its own thread, which reads the load balancer (as the agent's
//! backend reads it) and asks the resolver, then sleeps `MESH_BENCH_POLL_MS`; a probe's time
//! is that of the first reading from which it stayed right (resolution: the poll interval
//! plus one reading, a few ms). Percentiles are by nearest rank.
//!
//! `cargo bench -p mesh-tests --bench services` (root needed). Knobs: `MESH_BENCH_SCALES`
//! (scale-up samples, default 10), `MESH_BENCH_KILLS` (node deaths, default 6),
//! `MESH_BENCH_POLL_MS` (sleep between two readings of a probe, default 15).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mesh_node::config::DaemonConfig;
use mesh_tests::bench::{self, Row, env_usize, print_table};
use mesh_tests::services::{
    self, CONVERGE_BOUND, NetworkRow, TaskRow, cli_ok, create_network, create_service,
};
use mesh_tests::{ClusterOptions, DEFAULT_CONFIG, Host, Lab, Poll, cluster_with, ops, traffic};

/// Replicas of api when scaled up, and during the node deaths.
const HIGH: usize = 10;
/// Replicas of api between two scale-ups.
const LOW: usize = 1;
/// Deadline for anything the benchmark waits for (far above what it measures).
const SETTLE: Duration = Duration::from_secs(60);
/// p99 goals.
const SCALE_GOAL: Duration = Duration::from_secs(2);
const DEATH_GOAL: Duration = Duration::from_secs(3);

fn ms(d: Duration) -> String {
    bench::ms(d, 0)
}

/// The backends of api's VIP in a probe's load balancer (`None`: the reading failed).
type Lb = Option<BTreeSet<Ipv4Addr>>;
/// The A records of `tasks.api` from a probe's resolver, sorted (`None`: no answer).
type Dns = Option<Vec<Ipv4Addr>>;

/// What one probe showed, each change with the instant it was read.
#[derive(Default)]
struct History {
    lb: Vec<(Instant, Lb)>,
    dns: Vec<(Instant, Dns)>,
}

impl History {
    fn last_lb(&self) -> Option<&Lb> {
        self.lb.last().map(|(_, v)| v)
    }

    fn last_dns(&self) -> Option<&Dns> {
        self.dns.last().map(|(_, v)| v)
    }
}

/// The instant from which `readings` stayed `right`: the reading after the last wrong one
/// (the first reading if none was wrong); `None` if the last reading is wrong.
fn right_from<T>(readings: &[(Instant, T)], right: impl Fn(&T) -> bool) -> Option<Instant> {
    match readings.iter().rposition(|(_, v)| !right(v)) {
        None => readings.first().map(|(at, _)| *at),
        Some(i) => readings.get(i + 1).map(|(at, _)| *at),
    }
}

/// One thread per probe, reading its load balancer and resolver in a loop.
struct Watch {
    stop: Arc<AtomicBool>,
    probes: Vec<(String, Arc<Mutex<History>>, JoinHandle<()>)>,
}

impl Watch {
    fn start(lab: &Lab, probes: &[&TaskRow], vip: Ipv4Addr, poll: Duration) -> Result<Watch> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut watched = Vec::new();
        for p in probes {
            let ns = p.netns(lab)?;
            let history = Arc::new(Mutex::new(History::default()));
            let (stop2, history2) = (stop.clone(), history.clone());
            let handle = std::thread::Builder::new()
                .name(format!("watch-{}", p.node))
                .spawn(move || {
                    while !stop2.load(Ordering::Relaxed) {
                        let lb: Lb = services::lb_table(&ns)
                            .ok()
                            .map(|t| t.get(vip).map(|s| s.backends.clone()).unwrap_or_default());
                        let lb_at = Instant::now();
                        let dns: Dns = traffic::resolve(&ns, "tasks.api").ok().map(|a| {
                            let mut addrs = a.addrs;
                            addrs.sort();
                            addrs
                        });
                        let dns_at = Instant::now();
                        {
                            let mut h = history2.lock().unwrap();
                            if h.last_lb() != Some(&lb) {
                                h.lb.push((lb_at, lb));
                            }
                            if h.last_dns() != Some(&dns) {
                                h.dns.push((dns_at, dns));
                            }
                        }
                        std::thread::sleep(poll);
                    }
                })?;
            watched.push((p.node.clone(), history, handle));
        }
        let watch = Watch {
            stop,
            probes: watched,
        };
        // Every probe read once before anything is measured.
        mesh_tests::wait_for("a first reading of every probe", SETTLE, || {
            Ok(watch
                .probes
                .iter()
                .all(|(_, h, _)| !h.lock().unwrap().dns.is_empty()))
        })?;
        Ok(watch)
    }

    /// Whether the latest readings of every probe satisfy `right(lb, dns)`.
    fn all_now(&self, right: impl Fn(&Lb, &Dns) -> bool) -> bool {
        self.probes.iter().all(|(_, h, _)| {
            let h = h.lock().unwrap();
            matches!((h.last_lb(), h.last_dns()), (Some(lb), Some(dns)) if right(lb, dns))
        })
    }

    /// A summary of the latest readings, for messages.
    fn now(&self) -> String {
        self.probes
            .iter()
            .map(|(node, h, _)| {
                let h = h.lock().unwrap();
                format!("{node}: lb {:?} dns {:?}", h.last_lb(), h.last_dns())
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn stop(self) -> Result<Vec<(String, History)>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for (node, history, handle) in self.probes {
            handle
                .join()
                .map_err(|_| anyhow!("the watcher of {node} panicked"))?;
            let history = std::mem::take(&mut *history.lock().unwrap());
            out.push((node, history));
        }
        Ok(out)
    }
}

/// For each probe, since `t0`: when its load balancer became right, when its DNS did, and
/// when both were (the later of the two). Fails if a probe never did.
fn times(
    histories: &[(String, History)],
    t0: Instant,
    lb_right: impl Fn(&Lb) -> bool,
    dns_right: impl Fn(&Dns) -> bool,
) -> Result<Vec<(Duration, Duration)>> {
    histories
        .iter()
        .map(|(node, h)| {
            let lb = right_from(&h.lb, &lb_right).with_context(|| format!("{node}: lb"))?;
            let dns = right_from(&h.dns, &dns_right).with_context(|| format!("{node}: dns"))?;
            Ok((
                lb.saturating_duration_since(t0),
                dns.saturating_duration_since(t0),
            ))
        })
        .collect()
}

/// The slowest probe: (load balancer, DNS, both); and the fastest probe's both.
fn slowest(times: &[(Duration, Duration)]) -> (Duration, Duration, Duration, Duration) {
    let lb = times.iter().map(|t| t.0).max().unwrap_or_default();
    let dns = times.iter().map(|t| t.1).max().unwrap_or_default();
    let fastest = times.iter().map(|t| t.0.max(t.1)).min().unwrap_or_default();
    (lb, dns, lb.max(dns), fastest)
}

/// The overlay addresses of `tasks` on `net`.
fn addrs(tasks: &[TaskRow], net: &NetworkRow) -> BTreeSet<Ipv4Addr> {
    tasks.iter().filter_map(|t| t.addr_on(&net.id)).collect()
}

/// Whether a reading of DNS is exactly `want` (no duplicate, nothing else).
fn dns_is(dns: &Dns, want: &BTreeSet<Ipv4Addr>) -> bool {
    dns.as_ref()
        .is_some_and(|a| a.len() == want.len() && a.iter().all(|ip| want.contains(ip)))
}

fn lb_is(lb: &Lb, want: &BTreeSet<Ipv4Addr>) -> bool {
    lb.as_ref() == Some(want)
}

/// `node:count` of `tasks`, for messages.
fn spread(tasks: &[TaskRow]) -> String {
    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tasks {
        *by_node.entry(t.node.as_str()).or_default() += 1;
    }
    by_node
        .iter()
        .map(|(n, c)| format!("{n}:{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lab with api at `replicas`, as the benchmark needs it.
struct Bench<'a> {
    lab: &'a Lab,
    cli: &'a Host,
    net: NetworkRow,
    vip: Ipv4Addr,
    poll: Duration,
}

impl Bench<'_> {
    /// The running probes, one per node, by node.
    fn probes(&self) -> Result<BTreeMap<String, TaskRow>> {
        let probes =
            services::wait_running(self.lab, self.cli, "probe", self.lab.hosts().len(), SETTLE)?;
        Ok(probes.into_iter().map(|t| (t.node.clone(), t)).collect())
    }

    /// Waits until exactly `n` replicas of api run and every probe's load balancer and DNS
    /// hold exactly their addresses; returns them.
    fn settle(&self, n: usize) -> Result<Vec<TaskRow>> {
        let api = services::wait_running(self.lab, self.cli, "api", n, SETTLE)?;
        let want = addrs(&api, &self.net);
        let probes = self.probes()?;
        services::wait(
            self.lab,
            &format!("every probe's load balancer and DNS to hold the {n} replicas"),
            SETTLE,
            || {
                for p in probes.values() {
                    let ns = p.netns(self.lab)?;
                    let lb = services::lb_table(&ns)?
                        .get(self.vip)
                        .map(|s| s.backends.clone())
                        .unwrap_or_default();
                    let mut dns = traffic::resolve(&ns, "tasks.api")?.addrs;
                    dns.sort();
                    if lb != want || !dns_is(&Some(dns.clone()), &want) {
                        return Ok(Poll::Pending(format!(
                            "{}: lb {lb:?} dns {dns:?}, want {want:?}",
                            p.node
                        )));
                    }
                }
                Ok(Poll::Ready(()))
            },
        )?;
        Ok(api)
    }

    /// Scales api to `n` while watching every probe; returns (CLI returned, slowest load
    /// balancer, slowest DNS, slowest of both, fastest probe's both), each since the command
    /// was issued.
    fn scale(&self, n: usize) -> Result<[Duration; 5]> {
        let probes = self.probes()?;
        let watched: Vec<&TaskRow> = probes.values().collect();
        let watch = Watch::start(self.lab, &watched, self.vip, self.poll)?;
        let t0 = Instant::now();
        cli_ok(
            self.cli,
            &["service", "scale", &format!("api={n}")],
            CONVERGE_BOUND,
        )?;
        let cli = t0.elapsed();
        let want = services::wait(
            self.lab,
            &format!("every probe to show the {n} replicas of api"),
            SETTLE,
            || {
                // The probes agree on n backends first (cheap), then the CLI confirms them.
                let first = watch.probes[0]
                    .1
                    .lock()
                    .unwrap()
                    .last_lb()
                    .cloned()
                    .flatten();
                let Some(seen) = first.filter(|s| s.len() == n) else {
                    return Ok(Poll::Pending(watch.now()));
                };
                if !watch.all_now(|lb, dns| lb_is(lb, &seen) && dns_is(dns, &seen)) {
                    return Ok(Poll::Pending(watch.now()));
                }
                let api = services::running(self.cli, "api")?;
                let want = addrs(&api, &self.net);
                Ok(if api.len() == n && want == seen {
                    Poll::Ready(want)
                } else {
                    Poll::Pending(format!("running {want:?}; {}", watch.now()))
                })
            },
        )?;
        let histories = watch.stop()?;
        let t = times(
            &histories,
            t0,
            |lb| lb_is(lb, &want),
            |dns| dns_is(dns, &want),
        )?;
        let (lb, dns, both, fastest) = slowest(&t);
        Ok([cli, lb, dns, both, fastest])
    }

    /// Kills `victim` (daemon, then cable) with api at [`HIGH`] replicas; returns the time
    /// until no surviving probe's load balancer, and DNS, holds one of its api tasks. The DNS
    /// time is an `Err` saying why when an answer still named one 10 s after the load
    /// balancers were right, or when a query failed.
    fn death(
        &self,
        victim: &Host,
        api: &[TaskRow],
    ) -> Result<(Duration, std::result::Result<Duration, String>)> {
        let gone: BTreeSet<Ipv4Addr> = api
            .iter()
            .filter(|t| t.node == victim.name())
            .filter_map(|t| t.addr_on(&self.net.id))
            .collect();
        let probes = self.probes()?;
        let survivors: Vec<&TaskRow> = probes
            .values()
            .filter(|p| p.node != victim.name())
            .collect();
        let watch = Watch::start(self.lab, &survivors, self.vip, self.poll)?;
        let holds_none = |lb: &Lb| lb.as_ref().is_some_and(|s| s.is_disjoint(&gone));
        let resolves_none = |dns: &Dns| {
            dns.as_ref()
                .is_some_and(|a| a.iter().all(|ip| !gone.contains(ip)))
        };
        let t0 = Instant::now();
        victim.kill()?;
        victim.cut()?;
        let waited = services::wait(
            self.lab,
            &format!(
                "no surviving probe to send api to {}'s tasks {gone:?}",
                victim.name()
            ),
            SETTLE,
            || Ok(watch.all_now(|lb, _| holds_none(lb))),
        );
        // DNS is reported too: wait for it a little longer, but do not fail on it. Readings
        // after the wait ended are not judged (a watcher finishes the reading it is in).
        let mut settled = None;
        if waited.is_ok() {
            settled = mesh_tests::wait_for("DNS to drop them too", Duration::from_secs(10), || {
                Ok(watch.all_now(|_, dns| resolves_none(dns)))
            })
            .ok()
            .map(|()| Instant::now());
        }
        let histories = watch.stop()?;
        waited?;
        let mut lb = Duration::ZERO;
        let mut dns = Ok(Duration::ZERO);
        for (node, h) in &histories {
            let at = right_from(&h.lb, holds_none).with_context(|| format!("{node}: lb"))?;
            lb = lb.max(at.saturating_duration_since(t0));
            // A failed query (no answer within the client's timeout) is not an answer that
            // names a dead task: it is counted apart.
            let answers: Vec<(Instant, Dns)> = h
                .dns
                .iter()
                .filter(|(at, v)| v.is_some() && settled.is_none_or(|end| *at <= end))
                .cloned()
                .collect();
            let failed = h
                .dns
                .iter()
                .filter(|(at, v)| *at >= t0 && v.is_none())
                .count();
            dns = match (dns, right_from(&answers, resolves_none)) {
                (Ok(d), Some(at)) if failed == 0 => Ok(d.max(at.saturating_duration_since(t0))),
                (Ok(_), Some(_)) => Err(format!("{node}: {failed} DNS queries failed")),
                (Ok(_), None) => Err(format!(
                    "{node}: DNS still names one 10 s later: {:?}",
                    answers.last().map(|(_, v)| v)
                )),
                (err, _) => err,
            };
        }
        Ok((lb, dns))
    }

    /// Brings `victim` back: reconnected, restarted, ready everywhere, with its probe, and
    /// api at `replicas` with every load balancer and DNS holding all of them.
    fn revive(&self, victim: &Host, replicas: usize) -> Result<Vec<TaskRow>> {
        victim.heal()?;
        victim.restart()?;
        self.lab.wait_ready(victim, SETTLE)?;
        let total = self.lab.hosts().len();
        services::wait(self.lab, "every node ready in node ls", SETTLE, || {
            let rows = mesh_tests::nodes(self.cli)?;
            Ok(rows.len() == total && rows.iter().all(|r| r.is_up()))
        })?;
        self.settle(replicas)
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let n_scales = env_usize("MESH_BENCH_SCALES", 10);
    let n_kills = env_usize("MESH_BENCH_KILLS", 6);
    let poll = Duration::from_millis(env_usize("MESH_BENCH_POLL_MS", 15) as u64);
    let cfg: DaemonConfig = toml::from_str(DEFAULT_CONFIG)?;

    let mut opts = ClusterOptions::new(3, 2);
    opts.daemon_config = DEFAULT_CONFIG.to_string();
    opts.converge_timeout = SETTLE;
    eprintln!("building a lab of 3 managers + 2 workers with default timings...");
    let lab = cluster_with(opts)?;
    let n1 = lab.host(1);
    let net = create_network(n1, "appnet", &[])?;
    create_service(n1, "probe", &["--mode", "global", "--network", "appnet"])?;
    create_service(
        n1,
        "api",
        &["--replicas", &LOW.to_string(), "--network", "appnet"],
    )?;
    let vip = services::vip(n1, "api", &net.id)?;
    let bench = Bench {
        lab: &lab,
        cli: n1,
        net,
        vip,
        poll,
    };
    bench.settle(LOW)?;

    let mut rows = Vec::new();
    let (mut up_cli, mut up_lb, mut up_dns, mut up_both) = (vec![], vec![], vec![], vec![]);
    let (mut down_lb, mut down_dns) = (vec![], vec![]);
    for i in 0..n_scales {
        let [cli, lb, dns, both, fastest] = bench.scale(HIGH)?;
        eprintln!(
            "scale {:>2}: {LOW} -> {HIGH}: lb {} ms, dns {} ms (fastest probe {} ms), cli returned {} ms",
            i + 1,
            ms(lb),
            ms(dns),
            ms(fastest),
            ms(cli)
        );
        up_cli.push(cli);
        up_lb.push(lb);
        up_dns.push(dns);
        up_both.push(both);
        let [cli, lb, dns, _, fastest] = bench.scale(LOW)?;
        eprintln!(
            "          {HIGH} -> {LOW}: lb {} ms, dns {} ms (fastest probe {} ms), cli returned {} ms",
            ms(lb),
            ms(dns),
            ms(fastest),
            ms(cli)
        );
        down_lb.push(lb);
        down_dns.push(dns);
        bench.settle(LOW)?;
    }
    rows.push(
        Row::new(
            format!("scale {LOW} -> {HIGH}: every LB and DNS hold all {HIGH}"),
            up_both,
        )
        .with_goal(SCALE_GOAL),
    );
    rows.push(Row::new(
        format!("scale {LOW} -> {HIGH}: every LB holds all {HIGH}"),
        up_lb,
    ));
    rows.push(Row::new(
        format!("scale {LOW} -> {HIGH}: every DNS holds all {HIGH}"),
        up_dns,
    ));
    rows.push(Row::new(
        format!("scale {LOW} -> {HIGH}: the CLI returned"),
        up_cli,
    ));
    rows.push(Row::new(
        format!("scale {HIGH} -> {LOW}: every LB holds only the one kept"),
        down_lb,
    ));
    rows.push(Row::new(
        format!("scale {HIGH} -> {LOW}: every DNS holds only the one kept"),
        down_dns,
    ));
    if n_scales > 0 {
        print_table(&rows, 0);
    }

    // Node deaths, with api spread over every node.
    cli_ok(
        n1,
        &["service", "scale", &format!("api={HIGH}")],
        CONVERGE_BOUND,
    )?;
    let mut api = bench.settle(HIGH)?;
    eprintln!("api: {}", services::task_summary(&api));
    let managers = ops::first(&lab, 3);
    let order = ["node4", "node5", "node2", "node3"];
    let (mut death_lb, mut death_dns) = (vec![], vec![]);
    let mut next = 0;
    for i in 0..n_kills {
        let leader = ops::wait_leader(&lab, &managers, SETTLE)?;
        // The next node in turn that is not the leader and runs a replica.
        let Some(victim) = (0..order.len())
            .map(|k| order[(next + k) % order.len()])
            .find(|n| *n != leader.name() && api.iter().any(|t| t.node == *n))
        else {
            bail!("no victim: leader {}, api {}", leader.name(), spread(&api));
        };
        next = order.iter().position(|n| *n == victim).unwrap_or(0) + 1;
        let victim = lab.host_named(victim).context("victim")?;
        let had = api.iter().filter(|t| t.node == victim.name()).count();
        let (lb, dns) = bench.death(victim, &api)?;
        eprintln!(
            "kill {:>2}: {} ({had} of {HIGH} replicas): lb {} ms, dns {}",
            i + 1,
            victim.name(),
            ms(lb),
            dns.as_ref()
                .map_or_else(|why| why.clone(), |d| ms(*d) + " ms")
        );
        death_lb.push(lb);
        death_dns.extend(dns.ok());
        api = bench.revive(victim, HIGH)?;
        eprintln!("          back; api {}", spread(&api));
    }
    rows.push(
        Row::new("node death: no surviving LB holds its replicas", death_lb).with_goal(DEATH_GOAL),
    );
    rows.push(Row::new(
        "node death: no surviving DNS names its replicas",
        death_dns,
    ));
    print_table(&rows, 0);
    println!(
        "\n5 nodes (3 managers, 2 workers), default timings: gossip probe {} ms (rtt {} ms), \
         suspect->down {} ms, gossip interval {} ms; raft heartbeat {} ms, election {}-{} ms; \
         agent drain {} ms, reconcile {} ms; node-down grace {} ms. Probes read every {} ms.",
        cfg.gossip.probe_period_ms,
        cfg.gossip.probe_rtt_ms,
        cfg.gossip.suspect_to_down_ms,
        cfg.gossip.gossip_interval_ms,
        cfg.raft.heartbeat_ms,
        cfg.raft.election_timeout_min_ms,
        cfg.raft.election_timeout_max_ms,
        cfg.agent.drain_ms,
        cfg.agent.reconcile_ms,
        cfg.orchestrator.node_down_grace_ms,
        poll.as_millis()
    );
    Ok(())
}
