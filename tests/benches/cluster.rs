//! Benchmark of the cluster foundation with the product's *default* timings (not the tests'
//! fast ones), on a lab of 3 managers and 2 workers:
//!
//! - raft commit latency of control-API writes (`GetJoinToken{rotate: true}`: one raft write,
//!   then a consistent read), sent sequentially over the leader's unix socket and over a
//!   follower's (which forwards to the leader over 2377 mTLS), by an in-process tonic client;
//!   and a consistent read (`ListNodes`) for comparison;
//! - time from `kill -9` of a daemon to `down` in `node ls` on every other node, over kills of
//!   workers and of manager followers, restarting and waiting for everything ready between;
//! - time from `kill -9` of the leader to the first write committed through a surviving
//!   manager (the failover an operator sees).
//!
//! `cargo bench -p mesh-tests --bench cluster` (root needed). Knobs: `MESH_BENCH_WRITES`
//! (default 200), `MESH_BENCH_KILLS` (default 20, half workers, half managers),
//! `MESH_BENCH_LEADER_KILLS` (default 5), `MESH_BENCH_VERBOSE` (print each distinct error seen
//! while waiting for a write after a leader kill).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mesh_proto::{GetJoinTokenRequest, ListNodesRequest, NodeRole, NodeStatus};
use mesh_tests::bench::{Row, env_usize, print_table};
use mesh_tests::ops;
use mesh_tests::wait::{wait_for_async, wait_for_async_every};
use mesh_tests::{ClusterOptions, DEFAULT_CONFIG, Host, Lab, Poll, grpc, mesh_bin};

/// `n` sequential join-token rotations over `host`'s socket, after a few unmeasured ones.
async fn writes(host: &Host, n: usize) -> Result<Vec<Duration>> {
    let mut c = grpc::control(host).await?;
    let req = GetJoinTokenRequest {
        role: NodeRole::Worker as i32,
        rotate: true,
    };
    for _ in 0..10 {
        c.get_join_token(req).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        c.get_join_token(req)
            .await
            .context("rotate the join token")?;
        out.push(start.elapsed());
    }
    Ok(out)
}

/// `n` sequential consistent reads (`ListNodes`) over `host`'s socket.
async fn reads(host: &Host, n: usize) -> Result<Vec<Duration>> {
    let mut c = grpc::control(host).await?;
    for _ in 0..10 {
        c.list_nodes(ListNodesRequest {}).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        c.list_nodes(ListNodesRequest {})
            .await
            .context("list nodes")?;
        out.push(start.elapsed());
    }
    Ok(out)
}

/// The status `observer` gives every node, by hostname.
async fn statuses(observer: &Host) -> Result<Vec<(String, NodeStatus)>> {
    let mut c = grpc::control(observer).await?;
    let nodes = c.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
    Ok(nodes
        .iter()
        .map(|n| (n.hostname.clone(), n.status()))
        .collect())
}

/// Polls every observer (every 10 ms) until each lists `victim` down; returns the time since
/// `since` at which the last one did.
async fn wait_down_everywhere(
    observers: &[&Host],
    victim: &str,
    since: Instant,
    deadline: Duration,
) -> Result<Duration> {
    let mut seen: Vec<Option<Duration>> = vec![None; observers.len()];
    let what = format!("{victim} down on every other node");
    wait_for_async_every(&what, deadline, Duration::from_millis(10), async || {
        for (i, o) in observers.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            // An observer whose leader is being replaced cannot list for a moment: retry.
            if let Ok(list) = statuses(o).await
                && list
                    .iter()
                    .any(|(h, s)| h == victim && *s == NodeStatus::Down)
            {
                seen[i] = Some(since.elapsed());
            }
        }
        Ok(if seen.iter().all(Option::is_some) {
            Poll::Ready(seen.iter().flatten().max().copied().unwrap_or_default())
        } else {
            Poll::Pending(format!("seen down after {seen:?}"))
        })
    })
    .await
}

/// Retries a join-token rotation through `via` in turn (each call bounded, 20 ms apart) until
/// one commits; returns the time since `since`.
async fn write_until_ok(via: &[&Host], since: Instant, deadline: Duration) -> Result<Duration> {
    let verbose = std::env::var_os("MESH_BENCH_VERBOSE").is_some();
    let mut last = String::new();
    let mut i = 0;
    let what = "a write to commit through a surviving manager";
    wait_for_async_every(what, deadline, Duration::from_millis(20), async || {
        let host = via[i % via.len()];
        i += 1;
        let attempt = async {
            let mut c = grpc::control(host).await?;
            let mut req = tonic::Request::new(GetJoinTokenRequest {
                role: NodeRole::Worker as i32,
                rotate: true,
            });
            req.set_timeout(Duration::from_secs(2));
            c.get_join_token(req).await?;
            anyhow::Ok(())
        };
        let seen = match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(())) => return Ok(Poll::Ready(since.elapsed())),
            Ok(Err(e)) => format!("{}: {e:#}", host.name()),
            Err(_) => format!("{}: no answer within 3 s", host.name()),
        };
        if verbose && seen != last {
            eprintln!("  {:>8.3}s {seen}", since.elapsed().as_secs_f64());
        }
        last.clone_from(&seen);
        Ok(Poll::Pending(seen))
    })
    .await
}

/// Waits until every host lists every node ready.
async fn wait_all_ready(lab: &Lab, deadline: Duration) -> Result<()> {
    let total = lab.hosts().len();
    wait_for_async("every node ready on every host", deadline, async || {
        for h in lab.hosts() {
            let list = statuses(h).await?;
            if list.len() != total || !list.iter().all(|(_, s)| *s == NodeStatus::Ready) {
                return Ok(Poll::Pending(format!("{}: {list:?}", h.name())));
            }
        }
        Ok(Poll::Ready(()))
    })
    .await
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let n_writes = env_usize("MESH_BENCH_WRITES", 200);
    let n_kills = env_usize("MESH_BENCH_KILLS", 20).max(2);
    let opts = ClusterOptions {
        binary: mesh_bin!(),
        daemon_config: DEFAULT_CONFIG.to_owned(),
        converge_timeout: Duration::from_secs(60),
        ..ClusterOptions::new(3, 2)
    };
    eprintln!("building a lab of 3 managers + 2 workers with default timings...");
    let lab = mesh_tests::cluster_with(opts)?;
    let managers = ops::first(&lab, 3);
    let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(30))?;
    let follower = *managers
        .iter()
        .find(|h| h.name() != leader.name())
        .context("a follower")?;
    eprintln!("leader {}, follower {}", leader.name(), follower.name());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    rt.block_on(async {
        wait_all_ready(&lab, Duration::from_secs(60)).await?;
        rows.push(Row::new(
            format!("write via leader socket ({})", leader.name()),
            writes(leader, n_writes).await?,
        ));
        rows.push(Row::new(
            format!("write via follower socket ({}, forwarded)", follower.name()),
            writes(follower, n_writes).await?,
        ));
        rows.push(Row::new(
            format!("consistent read (node ls) via leader ({})", leader.name()),
            reads(leader, n_writes).await?,
        ));
        rows.push(Row::new(
            format!(
                "consistent read (node ls) via follower ({})",
                follower.name()
            ),
            reads(follower, n_writes).await?,
        ));
        anyhow::Ok(())
    })?;
    print_table(&rows, 2);

    // Kills: alternate a worker and a manager follower (never the leader: a leader kill makes
    // every `node ls` wait for an election, which is not what this measures).
    let manager_victims: Vec<&Host> = managers
        .iter()
        .copied()
        .filter(|h| h.name() != leader.name())
        .collect();
    let worker_victims = [lab.host(4), lab.host(5)];
    let (mut worker_downs, mut manager_downs) = (Vec::new(), Vec::new());
    for i in 0..n_kills {
        let victim = if i % 2 == 0 {
            worker_victims[(i / 2) % 2]
        } else {
            manager_victims[(i / 2) % 2]
        };
        let observers: Vec<&Host> = lab
            .hosts()
            .iter()
            .filter(|h| h.name() != victim.name())
            .collect();
        victim.kill()?;
        let killed = Instant::now();
        let took = rt.block_on(wait_down_everywhere(
            &observers,
            victim.name(),
            killed,
            Duration::from_secs(30),
        ))?;
        eprintln!(
            "kill {:>2}: {} down on all {} others after {:?}",
            i + 1,
            victim.name(),
            observers.len(),
            took
        );
        if i % 2 == 0 {
            worker_downs.push(took)
        } else {
            manager_downs.push(took)
        }
        victim.start()?;
        lab.wait_ready(victim, Duration::from_secs(30))?;
        rt.block_on(wait_all_ready(&lab, Duration::from_secs(60)))?;
    }
    let all: Vec<Duration> = worker_downs.iter().chain(&manager_downs).copied().collect();
    rows.push(Row::new(
        "kill -9 -> down on all others: workers",
        worker_downs,
    ));
    rows.push(Row::new(
        "kill -9 -> down on all others: manager followers",
        manager_downs,
    ));
    rows.push(Row::new("kill -9 -> down on all others: all", all));

    // Leader kills: the time until a write commits again, through the surviving managers.
    let mut failovers = Vec::new();
    for i in 0..env_usize("MESH_BENCH_LEADER_KILLS", 5) {
        let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(30))?;
        let survivors: Vec<&Host> = managers
            .iter()
            .copied()
            .filter(|h| h.name() != leader.name())
            .collect();
        leader.kill()?;
        let killed = Instant::now();
        let took = rt.block_on(write_until_ok(&survivors, killed, Duration::from_secs(30)))?;
        eprintln!(
            "leader kill {:>2}: {} killed, a write committed after {:?}",
            i + 1,
            leader.name(),
            took
        );
        failovers.push(took);
        leader.start()?;
        lab.wait_ready(leader, Duration::from_secs(30))?;
        rt.block_on(wait_all_ready(&lab, Duration::from_secs(60)))?;
    }
    if !failovers.is_empty() {
        rows.push(Row::new(
            "kill -9 leader -> write committed via a survivor",
            failovers,
        ));
    }
    print_table(&rows, 2);
    println!(
        "\ndefault timings: raft heartbeat 150 ms, election 750-1500 ms; gossip probe 500 ms (rtt 200 ms), suspect->down 1000 ms"
    );
    Ok(())
}
