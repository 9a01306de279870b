//! Sealing in the running protocol: foreign keys, tampered and truncated packets, and a key
//! rotation without a flag day.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::sim::{FIRST_INCARNATION, Sim, keyring};
use crate::{Core, GossipConfig, Liveness, NodeIdentity, Peer, TransmitKind};

const NET: &str = "net";

#[tokio::test(start_paused = true)]
async fn node_with_a_foreign_key_is_refused_and_counted() {
    let mut sim = Sim::new(4, GossipConfig::default(), 21);
    sim.start_with_keys(3, FIRST_INCARNATION, keyring(&[9]));
    for n in 0..4 {
        sim.core_mut(n).join_scope(NET, Instant::now()).unwrap();
    }
    sim.core_mut(3)
        .upsert_local(NET, "intruder", b"x".to_vec(), Instant::now())
        .unwrap();
    sim.run_for(Duration::from_secs(20)).await;
    for n in 0..3 {
        for m in 0..3 {
            assert_eq!(sim.sees(n, m), Liveness::Up);
        }
        assert_eq!(
            sim.sees(n, 3),
            Liveness::Down,
            "node {n} accepted a foreign-key node"
        );
        assert!(
            sim.core(n).stats().auth_failures > 0,
            "node {n} counted nothing"
        );
        assert!(sim.core(n).records(NET).iter().all(|r| r.owner != "node-3"));
    }
    assert!(sim.core(3).stats().auth_failures > 0);
    assert_eq!(sim.core(3).stats().members_alive, 1);
}

fn pair() -> (Core, Core, Instant) {
    let now = Instant::now();
    let a_addr: SocketAddr = "127.0.2.1:7946".parse().unwrap();
    let b_addr: SocketAddr = "127.0.2.2:7946".parse().unwrap();
    let config = GossipConfig::default();
    let peers = vec![
        Peer {
            node_id: "a".into(),
            addr: a_addr,
        },
        Peer {
            node_id: "b".into(),
            addr: b_addr,
        },
    ];
    let a_id = NodeIdentity::new("a", a_addr, 1).unwrap();
    let b_id = NodeIdentity::new("b", b_addr, 1).unwrap();
    let mut a = Core::new(config.clone(), a_id, keyring(&[1]), 1, now).unwrap();
    let mut b = Core::new(config, b_id, keyring(&[1]), 2, now).unwrap();
    b.set_peers(peers.clone(), now);
    while b.poll_transmit().is_some() {}
    a.set_peers(peers, now);
    (a, b, now)
}

#[tokio::test(start_paused = true)]
async fn tampered_truncated_and_garbage_packets_are_dropped_and_counted() {
    let (mut a, mut b, now) = pair();
    let announce = a.poll_transmit().expect("a announces to b");
    assert_eq!(announce.kind, TransmitKind::Swim);
    let from = a.identity().addr;
    let good = announce.data;

    let mut bad: Vec<Vec<u8>> = Vec::new();
    for i in [0, 1, 4, 5, 16, 17, good.len() / 2, good.len() - 1] {
        let mut p = good.clone();
        p[i] ^= 0x80;
        bad.push(p);
    }
    bad.push(good[..good.len() - 1].to_vec());
    bad.push(good[..20].to_vec());
    bad.push(Vec::new());
    bad.push(vec![0xAB; good.len()]);
    let mut appended = good.clone();
    appended.push(0);
    bad.push(appended);

    for (n, packet) in bad.iter().enumerate() {
        b.handle_datagram(from, packet, now);
        assert_eq!(
            b.stats().auth_failures,
            n as u64 + 1,
            "bad packet {n} not counted"
        );
        assert!(b.poll_transmit().is_none(), "bad packet {n} got an answer");
        assert_eq!(
            b.liveness("a"),
            Liveness::Down,
            "bad packet {n} changed state"
        );
    }
    // The same frames on the sync port: refused, counted, no reply.
    for packet in &bad {
        assert!(b.handle_sync_request(from, packet, now).is_none());
    }
    assert_eq!(b.stats().auth_failures, 2 * bad.len() as u64);
    // A genuine swim datagram replayed into the sync port is authentic but the wrong body.
    assert!(b.handle_sync_request(from, &good, now).is_none());
    assert_eq!(b.stats().malformed, 1);

    // The untouched packet works.
    b.handle_datagram(from, &good, now);
    assert_eq!(b.stats().auth_failures, 2 * bad.len() as u64);
    assert_eq!(b.liveness("a"), Liveness::Up);
    assert!(
        b.poll_transmit().is_some(),
        "b answers the genuine announce"
    );
}

#[tokio::test(start_paused = true)]
async fn key_rotation_keeps_the_cluster_converged() {
    let mut sim = Sim::new(5, GossipConfig::default(), 22);
    sim.run_until(Duration::from_secs(10), Sim::all_running_up)
        .await
        .expect("converge");
    for n in 0..5 {
        sim.core_mut(n).join_scope(NET, Instant::now()).unwrap();
    }
    sim.run_for(Duration::from_secs(1)).await;
    let mut counter = 0u32;
    let mut any_down = false;
    // Step 1: learn the new key (old still seals). Step 2: seal with the new key. Step 3: drop
    // the old one. Nodes move one at a time, with traffic in between.
    for ring in [keyring(&[1, 2]), keyring(&[2, 1]), keyring(&[2])] {
        for n in 0..5 {
            sim.core_mut(n).set_keys(ring.clone());
            counter += 1;
            let key = format!("ep-{counter}");
            sim.core_mut(n)
                .upsert_local(NET, &key, b"v".to_vec(), Instant::now())
                .unwrap();
            let owner = sim.nodes[n].id.clone();
            let got = sim
                .run_until(Duration::from_secs(2), |s| {
                    any_down |= !s.all_running_up();
                    (0..5).all(|m| {
                        s.core(m)
                            .records(NET)
                            .iter()
                            .any(|r| r.owner == owner && r.key == key)
                    })
                })
                .await;
            assert!(got.is_some(), "record {key} did not spread mid-rotation");
            sim.run_until(Duration::from_millis(700), |s| {
                any_down |= !s.all_running_up();
                false
            })
            .await;
        }
    }
    assert!(!any_down, "a node was seen down during the rotation");
    let failures: u64 = (0..5).map(|n| sim.core(n).stats().auth_failures).sum();
    assert_eq!(
        failures, 0,
        "a packet was sealed under a key its receiver lacked"
    );

    // Control: a node that skips ahead to a key nobody has falls out of the cluster.
    sim.core_mut(4).set_keys(keyring(&[3]));
    sim.run_until(Duration::from_secs(15), |s| {
        (0..4).all(|n| s.sees(n, 4) == Liveness::Down)
    })
    .await
    .expect("a node sealing under an unknown key is declared down");
}
