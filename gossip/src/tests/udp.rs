//! The real driver: three nodes over udp and tcp on 127.0.0.1 with fast timings. Real time,
//! so every wait is a condition with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_lab::wait::wait_for_async;
use tokio::task::JoinHandle;

use crate::{Gossip, GossipConfig, Keyring, Liveness, Peer, RecordEvent, RecordEventKind};

const PATIENCE: Duration = Duration::from_secs(15);

fn fast() -> GossipConfig {
    GossipConfig {
        probe_period_ms: 200,
        probe_rtt_ms: 80,
        suspect_to_down_ms: 600,
        gossip_interval_ms: 50,
        rejoin_interval_ms: 300,
        anti_entropy_interval_ms: 400,
        sync_timeout_ms: 2000,
        ..GossipConfig::default()
    }
}

/// Polls `cond` until it holds; panics naming `what` once `PATIENCE` (scaled by
/// `MESH_TEST_PATIENCE`) runs out.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for_async(what, PATIENCE, async || Ok(cond()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("not within {PATIENCE:?}: {what}"))
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<RecordEvent>) -> RecordEvent {
    within("a record event", rx.recv())
        .await
        .expect("gossip alive")
}

#[tokio::test]
async fn three_nodes_over_udp_and_tcp_on_loopback() {
    let keys = Keyring::new(vec![(1, [42; 32])]).unwrap();
    let mut nodes: Vec<(Gossip, JoinHandle<()>)> = Vec::new();
    for i in 0..3 {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let started = Gossip::start(fast(), &format!("n{i}"), bind, None, keys.clone())
            .await
            .expect("gossip starts on an ephemeral port");
        nodes.push(started);
    }
    let peers: Vec<Peer> = nodes
        .iter()
        .enumerate()
        .map(|(i, (g, _))| Peer {
            node_id: format!("n{i}"),
            addr: g.local_addr(),
        })
        .collect();
    for (g, _) in &nodes {
        g.set_peers(peers.clone());
    }
    for (g, _) in &nodes {
        let mut watch = g.watch_membership();
        within(
            "all three up",
            watch.wait_for(|m| m.len() == 3 && m.values().all(|l| *l == Liveness::Up)),
        )
        .await
        .expect("watch open");
    }

    // Records: n0 and n1 share a scope, n2 does not.
    let mut events1 = nodes[1].0.subscribe();
    let mut events2 = nodes[2].0.subscribe();
    nodes[0].0.join_scope("net").unwrap();
    nodes[1].0.join_scope("net").unwrap();
    nodes[2].0.join_scope("other").unwrap();
    // Wait for scope membership to be known before writing (a write before that is repaired
    // by anti-entropy, but this checks the push path).
    eventually("n0 and n1 know each other joined net", || {
        nodes[0].0.scope_members("net") == ["n0", "n1"]
            && nodes[1].0.scope_members("net") == ["n0", "n1"]
    })
    .await;
    nodes[0]
        .0
        .upsert_local("net", "ep-1", b"10.0.0.2".to_vec())
        .unwrap();
    loop {
        let e = next_event(&mut events1).await;
        if e.key == "ep-1" {
            assert_eq!(e.owner, "n0");
            assert_eq!(e.kind, RecordEventKind::Upsert(b"10.0.0.2".to_vec()));
            break;
        }
    }
    assert!(events2.try_recv().is_err(), "n2 is outside the scope");
    assert!(nodes[2].0.records("net").is_empty());

    // Anti-entropy runs over tcp.
    eventually("a tcp sync completed", || {
        nodes.iter().any(|(g, _)| g.stats().syncs_completed > 0)
    })
    .await;

    // Kill n0 (no goodbye): n1 declares it down and withdraws its records.
    let (dead, task) = nodes.remove(0);
    task.abort();
    let _ = task.await;
    drop(dead);
    let mut watch = nodes[0].0.watch_membership();
    within(
        "n0 down on n1",
        watch.wait_for(|m| m.get("n0") == Some(&Liveness::Down)),
    )
    .await
    .expect("watch open");
    eventually("n0's records withdrawn on n1", || {
        nodes[0].0.records("net").is_empty()
    })
    .await;
    let mut removed = false;
    while let Ok(e) = events1.try_recv() {
        removed |= e.owner == "n0" && e.kind == RecordEventKind::Removed;
    }
    assert!(removed, "n1 emitted Removed for n0's records");

    // Graceful leave of n2: n1 learns at once, not by probing.
    let (leaver, task) = nodes.remove(1);
    within("leave", leaver.leave()).await;
    within("task ends after leave", task)
        .await
        .expect("task did not panic");
    let mut watch = nodes[0].0.watch_membership();
    within(
        "n2 down on n1",
        watch.wait_for(|m| m.get("n2") == Some(&Liveness::Down)),
    )
    .await
    .expect("watch open");
    let stats = nodes[0].0.stats();
    assert_eq!(stats.auth_failures, 0);
    assert!(stats.packets_in > 0 && stats.packets_out > 0);
    assert_eq!(stats.members_alive, 1);
}
