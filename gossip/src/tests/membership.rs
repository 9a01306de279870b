//! SWIM membership over the in-memory network: convergence, time to down with the default
//! config, rejoin after restart, and suspicion absorbing short blips.

use std::time::Duration;

use super::sim::{FIRST_INCARNATION, Sim};
use crate::{GossipConfig, Liveness};

/// What the brief promises operators: a killed node is down everywhere within this.
const DOWN_BOUND: Duration = Duration::from_secs(5);

async fn converged(n: usize, config: GossipConfig, seed: u64) -> Sim {
    let mut sim = Sim::new(n, config, seed);
    let took = sim
        .run_until(Duration::from_secs(10), Sim::all_running_up)
        .await;
    assert!(
        took.is_some(),
        "seed {seed}: {n} nodes did not converge in 10s"
    );
    sim
}

#[tokio::test(start_paused = true)]
async fn five_nodes_converge_and_agree_everyone_is_up() {
    let mut sim = Sim::new(5, GossipConfig::default(), 1);
    let took = sim
        .run_until(Duration::from_secs(10), Sim::all_running_up)
        .await
        .expect("5 nodes converge");
    // Announces go out at set_peers: a few round trips, not a probe period.
    assert!(took < Duration::from_secs(1), "took {took:?}");
    for i in 0..5 {
        assert_eq!(sim.core(i).stats().members_alive, 5);
        assert_eq!(sim.core(i).membership().len(), 5);
    }
    // Stays converged with no false suspicion over a quiet minute.
    let broke = sim
        .run_until(Duration::from_secs(60), |s| !s.all_running_up())
        .await;
    assert_eq!(broke, None, "a node was declared down on a healthy network");
}

#[tokio::test(start_paused = true)]
async fn killed_node_is_down_everywhere_within_bound() {
    let mut worst = Duration::ZERO;
    let mut all = Vec::new();
    for seed in 0..24u64 {
        let mut sim = converged(5, GossipConfig::default(), seed).await;
        // Let probing settle into its round-robin before the kill.
        sim.run_for(Duration::from_millis(3000 + 137 * seed)).await;
        let victim = (seed % 5) as usize;
        sim.kill(victim);
        let others = sim.running_except(victim);
        let took = sim
            .run_until(Duration::from_secs(30), |s| {
                others.iter().all(|o| s.sees(*o, victim) == Liveness::Down)
            })
            .await
            .unwrap_or_else(|| panic!("seed {seed}: node {victim} never declared down everywhere"));
        for o in &others {
            for s in &others {
                assert_eq!(
                    sim.sees(*o, *s),
                    Liveness::Up,
                    "seed {seed}: collateral down"
                );
            }
        }
        worst = worst.max(took);
        all.push(took.as_millis());
    }
    println!("time to down everywhere, default config, 24 runs (ms): {all:?}; worst {worst:?}");
    assert!(
        worst < DOWN_BOUND,
        "worst time to down {worst:?} >= {DOWN_BOUND:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn restarted_node_is_up_again_with_new_incarnation() {
    let mut sim = converged(5, GossipConfig::default(), 7).await;
    sim.kill(2);
    let others = sim.running_except(2);
    sim.run_until(Duration::from_secs(10), |s| {
        others.iter().all(|o| s.sees(*o, 2) == Liveness::Down)
    })
    .await
    .expect("killed node declared down");
    // Same id, same address, a later start.
    sim.start(2, FIRST_INCARNATION + 60_000);
    let took = sim
        .run_until(Duration::from_secs(10), Sim::all_running_up)
        .await
        .expect("restarted node is accepted again");
    assert!(took < Duration::from_secs(1), "rejoin took {took:?}");
    // And stays up: the old identity's death does not haunt the new one.
    assert_eq!(
        sim.run_until(Duration::from_secs(30), |s| !s.all_running_up())
            .await,
        None
    );
}

#[tokio::test(start_paused = true)]
async fn fast_restart_before_detection_replaces_identity_without_down() {
    let mut sim = converged(3, GossipConfig::default(), 3).await;
    sim.kill(1);
    sim.start(1, FIRST_INCARNATION + 1);
    let took = sim
        .run_until(Duration::from_secs(10), |s| {
            s.all_running_up() && (0..3).all(|o| o == 1 || s.core(o).stats().members_alive == 3)
        })
        .await;
    assert!(took.is_some());
    assert_eq!(
        sim.run_until(Duration::from_secs(20), |s| !s.all_running_up())
            .await,
        None,
        "the restarted node must not be declared down for its old identity"
    );
}

#[tokio::test(start_paused = true)]
async fn short_blip_is_absorbed_by_suspicion() {
    let config = GossipConfig::default();
    // Shorter than the suspicion timeout: probes fail, suspicion is raised and refuted.
    let blip = Duration::from_millis(config.suspect_to_down_ms * 3 / 4);
    for seed in 0..6u64 {
        let mut sim = converged(5, config.clone(), 100 + seed).await;
        sim.run_for(Duration::from_millis(2000 + 211 * seed)).await;
        let victim = (seed % 5) as usize;
        sim.cut.insert(victim);
        let mut saw_down = None;
        let mut check = |s: &Sim| {
            for o in 0..5 {
                for t in 0..5 {
                    if s.sees(o, t) == Liveness::Down {
                        saw_down = Some((o, t));
                    }
                }
            }
            saw_down.is_some()
        };
        assert_eq!(
            sim.run_until(blip, &mut check).await,
            None,
            "seed {seed}: down during blip"
        );
        sim.cut.clear();
        assert_eq!(
            sim.run_until(Duration::from_secs(15), &mut check).await,
            None,
            "seed {seed}: a {blip:?} blip produced a down: {saw_down:?}"
        );
        assert!(
            sim.dropped > 0,
            "the blip dropped nothing: the test proves nothing"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn long_cut_is_down_then_heals_with_renewed_identity() {
    let mut sim = converged(5, GossipConfig::default(), 9).await;
    let before = sim.core(4).identity().incarnation;
    sim.cut.insert(4);
    sim.run_until(Duration::from_secs(15), |s| {
        (0..4).all(|o| s.sees(o, 4) == Liveness::Down)
    })
    .await
    .expect("a cut node is declared down");
    sim.cut.clear();
    sim.run_until(Duration::from_secs(15), Sim::all_running_up)
        .await
        .expect("the cut node rejoins after the link heals");
    assert!(
        sim.core(4).identity().incarnation > before,
        "it renewed its identity"
    );
}

#[tokio::test(start_paused = true)]
async fn stats_count_a_killed_node_suspect_then_down() {
    let mut sim = converged(3, GossipConfig::default(), 7).await;
    let healthy = sim.core(0).stats();
    assert_eq!(
        (
            healthy.members_alive,
            healthy.members_suspect,
            healthy.members_down
        ),
        (3, 0, 0)
    );
    sim.kill(2);
    let suspected = sim
        .run_until(Duration::from_secs(10), |s| {
            s.core(0).stats().members_suspect == 1
        })
        .await;
    assert!(
        suspected.is_some(),
        "node 0 never suspected the killed node"
    );
    // A suspect still counts as alive until it is declared down.
    assert_eq!(sim.core(0).stats().members_alive, 3);
    let down = sim
        .run_until(Duration::from_secs(10), |s| {
            s.core(0).stats().members_down == 1
        })
        .await;
    assert!(down.is_some(), "node 0 never declared the killed node down");
    let after = sim.core(0).stats();
    assert_eq!(
        (
            after.members_alive,
            after.members_suspect,
            after.members_down
        ),
        (2, 0, 1)
    );
}
