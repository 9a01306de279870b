//! Changing who is in the cluster and in what role: promote and demote (and the demotions
//! refused because they would cost the quorum or the last manager), `node rm` of a dead node
//! (and the refusals for live nodes and managers), `leave`, and gossip key rotation with every
//! node staying up. Real `mesh` daemons, one per host namespace; needs root.

use std::time::{Duration, Instant};

use mesh_tests::ops::{self, CLI_BOUND, mentions, refused, row, summary};
use mesh_tests::wait::watch;
use mesh_tests::{Host, Lab, NodeRow, Poll, grpc, info};

/// Waits until every running node's view satisfies `check`.
fn wait_views(
    lab: &Lab,
    what: &str,
    deadline: Duration,
    check: impl FnMut(&Host, &[NodeRow]) -> Option<String>,
) {
    let live = ops::running(lab);
    ops::wait_every_view(lab, what, &live, deadline, check).unwrap();
}

/// A view where `managers` (hostnames) are the reachable managers (one of them leading), every
/// other listed node a worker, and all `total` nodes ready.
fn roles_are(rows: &[NodeRow], total: usize, managers: &[&str]) -> Option<String> {
    let ok = rows.len() == total
        && rows.iter().all(NodeRow::is_up)
        && rows.iter().filter(|r| r.is_leader()).count() == 1
        && rows.iter().all(|r| {
            let manager = managers.contains(&r.hostname.as_str());
            if manager {
                r.is_manager()
                    && r.desired_role() == "manager"
                    && matches!(r.manager_status(), "reachable" | "leader")
            } else {
                !r.is_manager() && r.desired_role() == "worker" && r.manager_status().is_empty()
            }
        });
    (!ok).then(|| summary(rows))
}

fn cli_ok(host: &Host, args: &[&str]) -> String {
    host.cli_with_timeout(args, Duration::from_secs(70))
        .unwrap()
        .ok_stdout()
        .unwrap_or_else(|e| panic!("mesh {args:?} on {}: {e:#}", host.name()))
}

#[test]
fn promoted_workers_count_for_quorum_and_are_demoted_back() {
    let lab = mesh_tests::cluster(3, 2).unwrap();
    let originals = ops::first(&lab, 3);
    let (n4, n5) = (lab.host(4), lab.host(5));

    // Promote both workers: five managers. `promote` waits until they are voters.
    cli_ok(lab.host(2), &["node", "promote", "node4", "node5"]);
    wait_views(
        &lab,
        "node4 and node5 managers everywhere",
        Duration::from_secs(20),
        |_, rows| roles_are(rows, 5, &["node1", "node2", "node3", "node4", "node5"]),
    );
    lab.wait_for(
        "node4's and node5's certificates to say manager",
        Duration::from_secs(10),
        || Ok(info(n4)?["role"] == "manager" && info(n5)?["role"] == "manager"),
    )
    .unwrap();

    // Kill the original leader and one more original manager: three of five voters are left,
    // two of them the promoted ones. Writes only commit if those count.
    let leader = ops::wait_leader(&lab, &originals, Duration::from_secs(10)).unwrap();
    let second = originals
        .iter()
        .find(|h| h.name() != leader.name())
        .unwrap();
    let survivor = originals
        .iter()
        .find(|h| h.name() != leader.name() && h.name() != second.name())
        .unwrap();
    leader.kill().unwrap();
    second.kill().unwrap();
    let killed = Instant::now();
    let (token, _) = ops::rotate_until_ok(&lab, n4, Duration::from_secs(15)).unwrap();
    eprintln!(
        "measured: 2 of 5 managers killed (leader included) -> write committed in {:?}",
        killed.elapsed()
    );
    let new_leader = ops::wait_leader(&lab, &[survivor, n4, n5], Duration::from_secs(10)).unwrap();
    assert_eq!(
        ops::join_token(n5, "worker").unwrap(),
        token,
        "leader now {}",
        new_leader.name()
    );

    leader.start().unwrap();
    second.start().unwrap();
    wait_views(
        &lab,
        "five ready managers after the restarts",
        Duration::from_secs(30),
        |_, rows| roles_are(rows, 5, &["node1", "node2", "node3", "node4", "node5"]),
    );

    // Demote them back to workers.
    cli_ok(lab.host(1), &["node", "demote", "node4", "node5"]);
    wait_views(
        &lab,
        "node4 and node5 workers again everywhere",
        Duration::from_secs(20),
        |_, rows| roles_are(rows, 5, &["node1", "node2", "node3"]),
    );
    lab.wait_for(
        "node4's and node5's certificates to say worker",
        Duration::from_secs(10),
        || Ok(info(n4)?["role"] == "worker" && info(n5)?["role"] == "worker"),
    )
    .unwrap();
    let r = refused(n4, ["join-token", "worker", "--rotate"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["worker"]), "{r:?}");
}

#[test]
fn demotions_keep_a_quorum_and_a_last_manager() {
    let lab = mesh_tests::cluster(3, 1).unwrap();
    let managers = ops::first(&lab, 3);
    let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(10)).unwrap();
    let followers: Vec<&Host> = managers
        .iter()
        .copied()
        .filter(|h| h.name() != leader.name())
        .collect();

    // With one of three managers down, demoting another would leave 1 of 2 reachable.
    followers[0].kill().unwrap();
    lab.wait_for(
        &format!("{} unreachable on the leader", followers[0].name()),
        Duration::from_secs(10),
        || {
            Ok(row(&mesh_tests::nodes(leader)?, followers[0].name())
                .is_some_and(|r| r.manager_status() == "unreachable"))
        },
    )
    .unwrap();
    for via in [leader, followers[1]] {
        let r = refused(via, ["node", "demote", followers[1].name()], CLI_BOUND).unwrap();
        assert!(
            mentions(&r.message, &["quorum"]),
            "via {}: {r:?}",
            via.name()
        );
    }
    followers[0].start().unwrap();
    wait_views(
        &lab,
        "three ready managers",
        Duration::from_secs(20),
        |_, rows| roles_are(rows, 4, &["node1", "node2", "node3"]),
    );

    // Demote the two followers (through one of them): the leader is then the last manager.
    cli_ok(
        followers[1],
        &["node", "demote", followers[0].name(), followers[1].name()],
    );
    wait_views(
        &lab,
        "one manager left",
        Duration::from_secs(20),
        |_, rows| roles_are(rows, 4, &[leader.name()]),
    );
    for f in &followers {
        lab.wait_for(
            &format!("{}'s certificate to say worker", f.name()),
            Duration::from_secs(10),
            || Ok(info(f)?["role"] == "worker"),
        )
        .unwrap();
        // A demoted node is a worker for good: manager-only writes are refused on it.
        let r = refused(f, ["join-token", "worker", "--rotate"], CLI_BOUND).unwrap();
        assert!(mentions(&r.message, &["worker"]), "{}: {r:?}", f.name());
    }
    let r = refused(leader, ["node", "demote", leader.name()], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["last manager"]), "{r:?}");
    // The one-manager cluster writes, even with both demoted nodes dead: they are no voters
    // any more (were they, one of three would be no quorum).
    followers[0].kill().unwrap();
    followers[1].kill().unwrap();
    ops::rotate_until_ok(&lab, leader, Duration::from_secs(10)).unwrap();
}

#[test]
fn node_rm_removes_a_dead_worker_for_good() {
    let lab = mesh_tests::cluster(3, 2).unwrap();
    let victim = lab.host(5);
    let victim_id = ops::node_id(victim).unwrap();
    let all_ids = ops::ids(&mesh_tests::nodes(lab.host(1)).unwrap());

    // Refused: a ready node without --force, and a manager with or without it.
    let r = refused(lab.host(2), ["node", "rm", "node5"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["ready", "--force"]), "{r:?}");
    for args in [
        &["node", "rm", "node3"][..],
        &["node", "rm", "--force", "node3"],
    ] {
        let r = refused(lab.host(1), args, CLI_BOUND).unwrap();
        assert!(
            mentions(&r.message, &["manager", "demote"]),
            "{args:?}: {r:?}"
        );
    }
    let r = refused(lab.host(1), ["node", "rm", "node9"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["node9", "not found"]), "{r:?}");
    assert_eq!(
        ops::ids(&mesh_tests::nodes(lab.host(3)).unwrap()),
        all_ids,
        "nothing removed"
    );

    victim.kill().unwrap();
    let others = ops::others(&lab, &[victim]);
    ops::wait_every_view(
        &lab,
        "node5 down everywhere",
        &others,
        Duration::from_secs(10),
        |_, rows| (!row(rows, "node5").is_some_and(NodeRow::is_down)).then(|| summary(rows)),
    )
    .unwrap();
    // Through a follower (forwarded to the leader).
    lab.host(3)
        .cli_with_timeout(["node", "rm", "node5"], CLI_BOUND)
        .unwrap()
        .ok_stdout()
        .unwrap();
    ops::wait_every_view(
        &lab,
        "node5 gone from every list",
        &others,
        Duration::from_secs(10),
        |_, rows| {
            let ok = rows.len() == 4
                && rows.iter().all(|r| r.id != victim_id)
                && rows.iter().all(NodeRow::is_up);
            (!ok).then(|| summary(rows))
        },
    )
    .unwrap();

    // Its daemon comes back with its old certificate: refused, it forgets the cluster.
    victim.start().unwrap();
    lab.wait_ready(victim, Duration::from_secs(20)).unwrap();
    lab.wait_for(
        "the removed node to forget its cluster",
        Duration::from_secs(15),
        || {
            let id = ops::node_id(victim)?;
            Ok(if id.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("node id {id}"))
            })
        },
    )
    .unwrap();
    assert!(
        !victim.state_dir().join("node.json").exists(),
        "membership wiped"
    );
    // Never listed again: not after it forgot, nor after a write the managers commit later.
    ops::rotate_until_ok(&lab, lab.host(1), Duration::from_secs(10)).unwrap();
    for (host, rows) in ops::views(&others).unwrap() {
        assert!(
            rows.iter().all(|r| r.id != victim_id),
            "{} lists the removed node: {}",
            host.name(),
            summary(&rows)
        );
        assert_eq!(rows.len(), 4, "{}: {}", host.name(), summary(&rows));
    }
    // It can join again, as a new node.
    let token = ops::join_token(lab.host(1), "worker").unwrap();
    ops::join(victim, &token, &lab.host(2).control_addr())
        .unwrap()
        .ok_stdout()
        .unwrap();
    let new_id = ops::node_id(victim).unwrap();
    assert!(!new_id.is_empty() && new_id != victim_id, "{new_id}");
    let all: Vec<&Host> = lab.hosts().iter().collect();
    ops::wait_every_view(
        &lab,
        "the rejoined node5 ready everywhere",
        &all,
        Duration::from_secs(15),
        |_, rows| {
            let ok = rows.len() == 5
                && rows.iter().all(NodeRow::is_up)
                && row(rows, "node5").is_some_and(|r| r.id == new_id);
            (!ok).then(|| summary(rows))
        },
    )
    .unwrap();
}

#[test]
fn worker_leave_removes_it_and_manager_leave_needs_force() {
    let lab = mesh_tests::cluster(3, 1).unwrap();
    let worker = lab.host(4);
    let worker_id = ops::node_id(worker).unwrap();

    worker
        .cli_with_timeout(["leave"], CLI_BOUND)
        .unwrap()
        .ok_stdout()
        .unwrap();
    assert_eq!(
        ops::node_id(worker).unwrap(),
        "",
        "the worker forgot its cluster"
    );
    let managers = ops::first(&lab, 3);
    ops::wait_every_view(
        &lab,
        "the worker gone from every list",
        &managers,
        Duration::from_secs(10),
        |_, rows| {
            let ok = rows.len() == 3
                && rows.iter().all(|r| r.id != worker_id)
                && rows.iter().all(NodeRow::is_up);
            (!ok).then(|| summary(rows))
        },
    )
    .unwrap();
    let r = refused(worker, ["node", "ls"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["not part of a cluster"]), "{r:?}");

    let r = refused(lab.host(2), ["leave"], CLI_BOUND).unwrap();
    assert!(
        mentions(&r.message, &["manager"]) && mentions(&r.message, &["--force"]),
        "{r:?}"
    );
    assert!(!ops::node_id(lab.host(2)).unwrap().is_empty());
    ops::wait_every_view(
        &lab,
        "three managers unchanged",
        &managers,
        Duration::from_secs(5),
        |_, rows| {
            let ok = rows.len() == 3 && rows.iter().all(|r| r.is_manager() && r.is_up());
            (!ok).then(|| summary(rows))
        },
    )
    .unwrap();
    // The worker left for good: restarting its daemon does not bring it back.
    worker.restart().unwrap();
    lab.wait_ready(worker, Duration::from_secs(20)).unwrap();
    assert_eq!(ops::node_id(worker).unwrap(), "");
}

/// The gossip key id the cluster encrypts with, from the control API.
fn gossip_key_id(host: &Host) -> u32 {
    grpc::block_on(async {
        let mut c = grpc::control(host).await?;
        anyhow::Ok(
            c.get_cluster_info(mesh_proto::GetClusterInfoRequest {})
                .await?
                .into_inner()
                .gossip_key_id,
        )
    })
    .unwrap()
    .unwrap()
}

/// `gossip.auth_failures` of every node, by hostname.
fn auth_failures(lab: &Lab) -> Vec<(String, u64)> {
    lab.hosts()
        .iter()
        .map(|h| {
            (
                h.name().to_owned(),
                info(h).unwrap()["gossip"]["auth_failures"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect()
}

/// Watches every view for `window` (at least three rounds): every node must stay ready
/// throughout.
fn stays_ready(lab: &Lab, window: Duration) {
    let all: Vec<&Host> = lab.hosts().iter().collect();
    let start = Instant::now();
    watch(window, || {
        for (host, rows) in ops::views(&all)? {
            assert!(
                rows.len() == 5 && rows.iter().all(NodeRow::is_up),
                "{} after {:?}: {}",
                host.name(),
                start.elapsed(),
                summary(&rows)
            );
        }
        Ok(None::<()>)
    })
    .unwrap();
}

#[test]
fn gossip_key_rotations_keep_every_node_ready() {
    let lab = mesh_tests::cluster(3, 2).unwrap();
    let before = auth_failures(&lab);
    assert_eq!(gossip_key_id(lab.host(1)), 1);
    // Refused on a worker (manager-only); then once through a follower (forwarded to the
    // leader) and once on the leader.
    let managers = ops::first(&lab, 3);
    let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(10)).unwrap();
    let follower = managers.iter().find(|h| h.name() != leader.name()).unwrap();
    let r = refused(lab.host(4), ["cluster", "rotate-gossip-key"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["worker"]), "{r:?}");

    for (n, host) in [(2, *follower), (3, leader)] {
        let out = host
            .cli_with_timeout(["cluster", "rotate-gossip-key"], CLI_BOUND)
            .unwrap()
            .ok_stdout()
            .unwrap();
        assert!(out.contains(&format!("key {n}")), "{out}");
        assert_eq!(gossip_key_id(lab.host(5)), n);
        // Three suspicion windows (900 ms each) and more: a node that could not decrypt would be
        // declared down meanwhile.
        stays_ready(&lab, Duration::from_secs(4));
    }
    // The keys really changed hands: a worker restarted now (it learns the keys anew from its
    // session) is seen down and back up by everyone.
    let w = lab.host(5);
    w.restart().unwrap();
    let all: Vec<&Host> = lab.hosts().iter().collect();
    ops::wait_every_view(
        &lab,
        "node5 ready everywhere after its restart",
        &all,
        Duration::from_secs(20),
        |_, rows| {
            let ok = rows.len() == 5 && rows.iter().all(NodeRow::is_up);
            (!ok).then(|| summary(rows))
        },
    )
    .unwrap();
    stays_ready(&lab, Duration::from_secs(2));
    let after = auth_failures(&lab);
    eprintln!(
        "measured: gossip auth failures before {before:?}, after two rotations and a restart {after:?}"
    );
    for (name, n) in &after {
        assert!(
            *n <= 20,
            "{name}: {n} gossip packets failed authentication ({after:?})"
        );
    }
    // The counter does count: packets sealed with no key of ours are dropped and counted, and
    // nobody is disturbed by them.
    let target = std::net::SocketAddr::from((lab.host(1).ip(), 7946));
    lab.host(5)
        .run(move || -> std::io::Result<()> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..5u8 {
                sock.send_to(&[i; 64], target)?;
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    let base = after[0].1;
    lab.wait_for(
        "node1 to count 5 forged gossip packets",
        Duration::from_secs(5),
        || {
            let n = auth_failures(&lab)[0].1;
            Ok(if n >= base + 5 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{n}"))
            })
        },
    )
    .unwrap();
    stays_ready(&lab, Duration::from_secs(1));
}
