//! Endpoint records over the in-memory network: scoping, deletes, anti-entropy repair,
//! withdrawal on death, republishing on restart and rejoin.

use std::time::Duration;

use tokio::time::Instant;

use super::sim::{FIRST_INCARNATION, Sim};
use crate::records::{MAX_NAME_LEN, MAX_VALUE_LEN};
use crate::wire::{Body, Envelope};
use crate::{GossipConfig, Liveness, Record, RecordEventKind, TransmitKind, Version};

const NET_A: &str = "net-a";
const NET_B: &str = "net-b";

fn has(sim: &Sim, node: usize, scope: &str, owner: usize, key: &str, value: &[u8]) -> bool {
    let owner = &sim.nodes[owner].id;
    sim.core(node)
        .records(scope)
        .iter()
        .any(|r| r.owner == *owner && r.key == key && r.value == value)
}

fn owned_by(sim: &Sim, node: usize, scope: &str, owner: usize) -> usize {
    let owner = &sim.nodes[owner].id;
    sim.core(node)
        .records(scope)
        .iter()
        .filter(|r| r.owner == *owner)
        .count()
}

async fn cluster(n: usize, config: GossipConfig, seed: u64) -> Sim {
    let mut sim = Sim::new(n, config, seed);
    sim.run_until(Duration::from_secs(10), Sim::all_running_up)
        .await
        .expect("cluster converges");
    sim
}

fn join(sim: &mut Sim, node: usize, scope: &str) {
    sim.core_mut(node)
        .join_scope(scope, Instant::now())
        .expect("join scope");
}

fn upsert(sim: &mut Sim, node: usize, scope: &str, key: &str, value: &[u8]) {
    sim.core_mut(node)
        .upsert_local(scope, key, value.to_vec(), Instant::now())
        .expect("upsert");
}

/// Waits until every node in `nodes` knows every node in `members` joined `scope`.
async fn scope_known(sim: &mut Sim, nodes: &[usize], members: &[usize], scope: &str) {
    let ids: Vec<String> = members.iter().map(|m| sim.nodes[*m].id.clone()).collect();
    let scope = scope.to_owned();
    let nodes = nodes.to_vec();
    sim.run_until(Duration::from_secs(5), |s| {
        nodes.iter().all(|n| {
            let known = s.core(*n).scope_members(&scope);
            ids.iter().all(|id| known.contains(id))
        })
    })
    .await
    .expect("scope membership spreads");
}

#[tokio::test(start_paused = true)]
async fn records_out_of_bounds_are_refused_and_the_rest_of_the_packet_merges() {
    let mut sim = cluster(2, GossipConfig::default(), 5).await;
    join(&mut sim, 0, NET_A);
    join(&mut sim, 1, NET_A);
    scope_known(&mut sim, &[0, 1], &[0, 1], NET_A).await;
    // What a peer holding the cluster key could send: its own records, some out of bounds.
    let owner = sim.nodes[1].id.clone();
    let incarnation = sim.core(1).identity().incarnation;
    let record = |key: &str, value: Vec<u8>| Record {
        scope: NET_A.into(),
        key: key.into(),
        owner: owner.clone(),
        version: Version {
            incarnation,
            counter: 1_000_000,
        },
        value,
        deleted: false,
    };
    let body = Body::Push(vec![
        record("fine", b"v".to_vec()),
        record("", b"v".to_vec()),
        record(&"k".repeat(MAX_NAME_LEN + 1), b"v".to_vec()),
        record("big", vec![7; MAX_VALUE_LEN + 1]),
    ]);
    let envelope = Envelope {
        from: owner.as_str().into(),
        body,
    };
    let sealed = sim
        .keys
        .seal(&postcard::to_stdvec(&envelope).unwrap())
        .unwrap();
    let from = sim.nodes[1].addr;
    let before = sim.core(0).stats().records_rejected;
    sim.core_mut(0)
        .handle_datagram(from, &sealed, Instant::now());
    assert!(has(&sim, 0, NET_A, 1, "fine", b"v"));
    let keys: Vec<usize> = sim
        .core(0)
        .records(NET_A)
        .iter()
        .map(|r| r.key.len())
        .collect();
    assert!(
        keys.iter().all(|len| (1..=MAX_NAME_LEN).contains(len)),
        "keys held: {keys:?}"
    );
    assert!(!has(&sim, 0, NET_A, 1, "big", &[7; MAX_VALUE_LEN + 1]));
    assert_eq!(sim.core(0).stats().records_rejected - before, 3);
}

#[tokio::test(start_paused = true)]
async fn records_reach_scope_members_only() {
    let mut sim = cluster(5, GossipConfig::default(), 11).await;
    for n in [0, 1, 2] {
        join(&mut sim, n, NET_A);
    }
    join(&mut sim, 3, NET_B);
    scope_known(&mut sim, &[0, 1, 2, 3, 4], &[0, 1, 2], NET_A).await;
    upsert(&mut sim, 0, NET_A, "ep-1", b"10.0.0.2");
    upsert(&mut sim, 3, NET_B, "ep-9", b"10.1.0.2");
    let took = sim
        .run_until(Duration::from_secs(5), |s| {
            has(s, 1, NET_A, 0, "ep-1", b"10.0.0.2") && has(s, 2, NET_A, 0, "ep-1", b"10.0.0.2")
        })
        .await
        .expect("scope members get the record");
    assert!(
        took < Duration::from_millis(50),
        "a push is one hop, took {took:?}"
    );
    // Several anti-entropy rounds later, outsiders still hold nothing of the scope.
    sim.run_for(Duration::from_secs(45)).await;
    for outsider in [3, 4] {
        assert!(
            !sim.core(outsider).held_scopes().contains(&NET_A.to_owned()),
            "node {outsider} received records of a scope it did not join"
        );
        assert!(sim.events(outsider).iter().all(|e| e.scope != NET_A));
    }
    for member in [0, 1, 2] {
        assert!(!sim.core(member).held_scopes().contains(&NET_B.to_owned()));
    }
    assert_eq!(sim.core(3).records(NET_B).len(), 1);
    assert!(sim.core(3).records(NET_A).is_empty());
}

#[tokio::test(start_paused = true)]
async fn upsert_replaces_and_delete_propagates() {
    let mut sim = cluster(4, GossipConfig::default(), 12).await;
    for n in 0..4 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2, 3], &[0, 1, 2, 3], NET_A).await;
    upsert(&mut sim, 2, NET_A, "ep", b"v1");
    upsert(&mut sim, 2, NET_A, "ep", b"v2");
    sim.run_until(Duration::from_secs(2), |s| {
        (0..4).all(|n| has(s, n, NET_A, 2, "ep", b"v2"))
    })
    .await
    .expect("the newer value wins everywhere");
    for n in 0..4 {
        sim.events(n);
    }
    sim.core_mut(2)
        .delete_local(NET_A, "ep", Instant::now())
        .expect("delete");
    sim.run_until(Duration::from_secs(2), |s| {
        (0..4).all(|n| s.core(n).records(NET_A).is_empty())
    })
    .await
    .expect("the delete reaches everyone");
    for n in 0..4 {
        let events = sim.events(n);
        assert!(
            events
                .iter()
                .any(|e| e.key == "ep" && e.kind == RecordEventKind::Removed),
            "node {n} got no Removed event: {events:?}"
        );
    }
    // Deleting what is not there is fine.
    sim.core_mut(2)
        .delete_local(NET_A, "ep", Instant::now())
        .expect("idempotent delete");
    // The tombstone outlives anti-entropy rounds: nothing comes back.
    sim.run_for(Duration::from_secs(40)).await;
    assert!((0..4).all(|n| sim.core(n).records(NET_A).is_empty()));
}

#[tokio::test(start_paused = true)]
async fn dropped_push_is_repaired_by_anti_entropy() {
    let config = GossipConfig::default();
    let mut sim = cluster(4, config.clone(), 13).await;
    for n in 0..4 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2, 3], &[0, 1, 2, 3], NET_A).await;
    // Every record push to node 3 is lost; SWIM and tcp sync still work.
    sim.drop_rule = Some(Box::new(|_, to, kind| {
        to == 3 && kind == TransmitKind::Records
    }));
    upsert(&mut sim, 0, NET_A, "ep", b"v");
    sim.run_until(Duration::from_secs(1), |s| has(s, 1, NET_A, 0, "ep", b"v"))
        .await
        .expect("others get the push");
    assert!(
        !has(&sim, 3, NET_A, 0, "ep", b"v"),
        "the push to node 3 should be lost"
    );
    let dropped = sim.dropped;
    assert!(dropped > 0);
    let took = sim
        .run_until(Duration::from_secs(60), |s| has(s, 3, NET_A, 0, "ep", b"v"))
        .await
        .expect("anti-entropy repairs the lost push");
    println!("lost push repaired after {took:?}");
    assert!(took <= Duration::from_millis(3 * config.anti_entropy_interval_ms));
    assert!(sim.core(3).stats().syncs_completed + sim.core(0).stats().syncs_completed > 0);
}

#[tokio::test(start_paused = true)]
async fn down_node_records_vanish_everywhere_at_once() {
    let mut sim = cluster(5, GossipConfig::default(), 14).await;
    for n in 0..5 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], NET_A).await;
    for k in ["a", "b", "c"] {
        upsert(&mut sim, 3, NET_A, k, b"x");
    }
    upsert(&mut sim, 1, NET_A, "keep", b"y");
    sim.run_until(Duration::from_secs(2), |s| {
        [0, 1, 2, 4].iter().all(|n| owned_by(s, *n, NET_A, 3) == 3)
    })
    .await
    .expect("records spread");
    for n in 0..5 {
        sim.events(n);
    }
    sim.kill(3);
    let others = [0usize, 1, 2, 4];
    // At every step: whoever sees node 3 down holds none of its records, and whoever still
    // holds them sees it up.
    let mut violated = None;
    sim.run_until(Duration::from_secs(10), |s| {
        for o in others {
            if s.sees(o, 3) == Liveness::Down && owned_by(s, o, NET_A, 3) != 0 {
                violated = Some(o);
            }
        }
        others.iter().all(|o| s.sees(*o, 3) == Liveness::Down)
    })
    .await
    .expect("node 3 declared down");
    assert_eq!(violated, None, "records outlived their owner's death");
    for o in others {
        assert_eq!(owned_by(&sim, o, NET_A, 3), 0);
        assert!(has(&sim, o, NET_A, 1, "keep", b"y"), "others' records stay");
        let removed = sim
            .events(o)
            .into_iter()
            .filter(|e| e.kind == RecordEventKind::Removed && e.owner == "node-3")
            .count();
        assert_eq!(removed, 3, "node {o}: one Removed event per record");
    }
    // Anti-entropy with nodes that knew the records does not bring them back.
    sim.run_for(Duration::from_secs(40)).await;
    for o in others {
        assert_eq!(owned_by(&sim, o, NET_A, 3), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn restarted_node_republishes_and_stale_copies_do_not_return() {
    let mut sim = cluster(3, GossipConfig::default(), 15).await;
    for n in 0..3 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2], &[0, 1, 2], NET_A).await;
    upsert(&mut sim, 2, NET_A, "old", b"1");
    sim.run_until(Duration::from_secs(2), |s| has(s, 0, NET_A, 2, "old", b"1"))
        .await
        .expect("spread");
    sim.kill(2);
    sim.run_until(Duration::from_secs(10), |s| {
        s.sees(0, 2) == Liveness::Down && s.sees(1, 2) == Liveness::Down
    })
    .await
    .expect("down");
    // A new start: the agent joins its scopes and publishes what it has now.
    sim.start(2, FIRST_INCARNATION + 30_000);
    join(&mut sim, 2, NET_A);
    upsert(&mut sim, 2, NET_A, "new", b"2");
    sim.run_until(Duration::from_secs(5), |s| {
        has(s, 0, NET_A, 2, "new", b"2") && has(s, 1, NET_A, 2, "new", b"2")
    })
    .await
    .expect("the restarted node's records spread");
    sim.run_for(Duration::from_secs(40)).await;
    for n in 0..2 {
        assert!(
            !has(&sim, n, NET_A, 2, "old", b"1"),
            "a record of the old start came back"
        );
    }
    assert_eq!(
        owned_by(&sim, 2, NET_A, 2),
        1,
        "the new start holds only what it wrote"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_restart_drops_old_records_before_detection() {
    let mut sim = cluster(3, GossipConfig::default(), 16).await;
    for n in 0..3 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2], &[0, 1, 2], NET_A).await;
    upsert(&mut sim, 2, NET_A, "old", b"1");
    sim.run_until(Duration::from_secs(2), |s| has(s, 0, NET_A, 2, "old", b"1"))
        .await
        .expect("spread");
    // Restart before anyone could notice the death: the new start renames the member.
    sim.kill(2);
    sim.start(2, FIRST_INCARNATION + 5);
    join(&mut sim, 2, NET_A);
    upsert(&mut sim, 2, NET_A, "new", b"2");
    sim.run_until(Duration::from_secs(5), |s| {
        (0..2).all(|n| has(s, n, NET_A, 2, "new", b"2") && !has(s, n, NET_A, 2, "old", b"1"))
    })
    .await
    .expect("old start's records withdrawn, new ones in");
}

#[tokio::test(start_paused = true)]
async fn rejoined_node_republishes_its_records_by_itself() {
    let mut sim = cluster(4, GossipConfig::default(), 17).await;
    for n in 0..4 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2, 3], &[0, 1, 2, 3], NET_A).await;
    upsert(&mut sim, 3, NET_A, "ep", b"v");
    sim.run_until(Duration::from_secs(2), |s| {
        (0..3).all(|n| has(s, n, NET_A, 3, "ep", b"v"))
    })
    .await
    .expect("spread");
    sim.cut.insert(3);
    sim.run_until(Duration::from_secs(15), |s| {
        (0..3).all(|n| s.sees(n, 3) == Liveness::Down && owned_by(s, n, NET_A, 3) == 0)
    })
    .await
    .expect("cut node down and its records withdrawn");
    sim.cut.clear();
    // No agent action: the core renews its identity and republishes, by push (well before
    // the next anti-entropy round).
    sim.run_until(Duration::from_secs(15), |s| {
        (0..3).all(|n| s.sees(n, 3) == Liveness::Up)
    })
    .await
    .expect("the cut node rejoins");
    let took = sim
        .run_until(Duration::from_secs(15), |s| {
            (0..3).all(|n| has(s, n, NET_A, 3, "ep", b"v"))
        })
        .await
        .expect("records back after the rejoin");
    assert!(took < Duration::from_millis(500), "republish took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn leaving_a_scope_withdraws_own_records_there() {
    let mut sim = cluster(3, GossipConfig::default(), 18).await;
    for n in 0..3 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2], &[0, 1, 2], NET_A).await;
    upsert(&mut sim, 1, NET_A, "ep1", b"v");
    upsert(&mut sim, 2, NET_A, "ep2", b"v");
    sim.run_until(Duration::from_secs(2), |s| {
        has(s, 0, NET_A, 1, "ep1", b"v") && has(s, 1, NET_A, 2, "ep2", b"v")
    })
    .await
    .expect("spread");
    sim.core_mut(1)
        .leave_scope(NET_A, Instant::now())
        .expect("leave");
    assert!(sim.core(1).records(NET_A).is_empty());
    assert!(!sim.core(1).held_scopes().contains(&NET_A.to_owned()));
    sim.run_until(Duration::from_secs(2), |s| {
        owned_by(s, 0, NET_A, 1) == 0 && owned_by(s, 2, NET_A, 1) == 0
    })
    .await
    .expect("others withdraw the leaver's records");
    upsert(&mut sim, 2, NET_A, "ep3", b"w");
    sim.run_for(Duration::from_secs(30)).await;
    assert!(has(&sim, 0, NET_A, 2, "ep3", b"w"));
    assert!(
        !sim.core(1).held_scopes().contains(&NET_A.to_owned()),
        "the leaver still got records"
    );
    assert!(
        sim.core_mut(1)
            .upsert_local(NET_A, "x", vec![], Instant::now())
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn node_removed_from_the_list_is_forgotten() {
    let mut sim = cluster(4, GossipConfig::default(), 19).await;
    for n in 0..4 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2, 3], &[0, 1, 2, 3], NET_A).await;
    upsert(&mut sim, 3, NET_A, "ep", b"v");
    sim.run_until(Duration::from_secs(2), |s| {
        (0..3).all(|n| has(s, n, NET_A, 3, "ep", b"v"))
    })
    .await
    .expect("spread");
    // The managers removed node 3; it keeps running with its old list.
    let peers: Vec<_> = sim
        .peers()
        .into_iter()
        .filter(|p| p.node_id != "node-3")
        .collect();
    for n in 0..3 {
        sim.core_mut(n).set_peers(peers.clone(), Instant::now());
        assert_eq!(owned_by(&sim, n, NET_A, 3), 0, "withdrawn at once");
        assert!(!sim.core(n).membership().contains_key("node-3"));
    }
    upsert(&mut sim, 3, NET_A, "ep2", b"v");
    let before: u64 = (0..3).map(|n| sim.core(n).stats().ignored).sum();
    sim.run_for(Duration::from_secs(30)).await;
    let after: u64 = (0..3).map(|n| sim.core(n).stats().ignored).sum();
    assert!(after > before, "node 3 kept talking and was ignored");
    for n in 0..3 {
        assert_eq!(sim.core(n).liveness("node-3"), Liveness::Down);
        assert_eq!(owned_by(&sim, n, NET_A, 3), 0);
        assert_eq!(sim.core(n).stats().members_alive, 3);
    }
    // Listed again: it comes back.
    let all = sim.peers();
    for n in 0..3 {
        sim.core_mut(n).set_peers(all.clone(), Instant::now());
    }
    sim.run_until(Duration::from_secs(10), |s| {
        (0..3).all(|n| s.sees(n, 3) == Liveness::Up)
    })
    .await
    .expect("re-listed node is accepted again");
}

#[tokio::test(start_paused = true)]
async fn stale_copy_met_after_tombstone_sweep_is_retombstoned_by_its_owner() {
    let config = GossipConfig {
        tombstone_ttl_ms: 4000,
        anti_entropy_interval_ms: 2000,
        ..GossipConfig::default()
    };
    let mut sim = cluster(3, config, 20).await;
    for n in 0..3 {
        join(&mut sim, n, NET_A);
    }
    scope_known(&mut sim, &[0, 1, 2], &[0, 1, 2], NET_A).await;
    upsert(&mut sim, 0, NET_A, "ep", b"v");
    sim.run_until(Duration::from_secs(2), |s| {
        (0..3).all(|n| has(s, n, NET_A, 0, "ep", b"v"))
    })
    .await
    .expect("spread");
    // Node 2 misses the delete and every sync while the tombstone lives and is swept.
    sim.drop_rule = Some(Box::new(|from, to, kind| {
        (to == 2 || from == 2) && kind != TransmitKind::Swim
    }));
    sim.core_mut(0)
        .delete_local(NET_A, "ep", Instant::now())
        .unwrap();
    sim.run_for(Duration::from_secs(12)).await;
    assert!(
        has(&sim, 2, NET_A, 0, "ep", b"v"),
        "node 2 holds the stale copy"
    );
    assert!(sim.core(1).records(NET_A).is_empty());
    assert!(
        !sim.core(1).held_scopes().contains(&NET_A.to_owned()),
        "node 1 swept the tombstone"
    );
    // Node 2 syncs again: its stale copy spreads, and the owner answers with a new tombstone.
    sim.drop_rule = None;
    sim.run_until(Duration::from_secs(20), |s| {
        (0..3).all(|n| s.core(n).records(NET_A).is_empty())
    })
    .await
    .expect("the owner re-tombstones a record it deleted");
    sim.run_for(Duration::from_secs(20)).await;
    assert!(
        (0..3).all(|n| sim.core(n).records(NET_A).is_empty()),
        "it came back again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_scope_is_synced_alone_at_once_and_with_others_after_an_exchange() {
    let mut sim = cluster(3, GossipConfig::default(), 17).await;
    join(&mut sim, 0, NET_A);
    assert!(
        sim.core(0).scope_synced(NET_A),
        "no other member: nothing more to learn"
    );
    upsert(&mut sim, 0, NET_A, "ep-1", b"10.0.0.2");
    scope_known(&mut sim, &[1], &[0], NET_A).await;
    join(&mut sim, 1, NET_A);
    assert!(
        !sim.core(1).scope_synced(NET_A),
        "others hold records of it: not synced before an exchange"
    );
    sim.run_until(Duration::from_secs(5), |s| s.core(1).scope_synced(NET_A))
        .await
        .expect("the exchange completes");
    assert!(
        has(&sim, 1, NET_A, 0, "ep-1", b"10.0.0.2"),
        "synced means it has them"
    );
    sim.core_mut(1)
        .leave_scope(NET_A, Instant::now())
        .expect("leave");
    assert!(!sim.core(1).scope_synced(NET_A));
}
