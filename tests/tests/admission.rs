//! Who gets in, and who may do what on 2377: join refusals (malformed, rotated and foreign
//! tokens, joining twice, an unreachable manager) that leave no trace, and the control port's
//! authentication (no certificate, a worker's certificate, another cluster's certificate).
//! Real `mesh` daemons, one per host namespace; needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_proto::ca_client::CaClient;
use mesh_proto::{GetRootCaRequest, ListNodesRequest, RotateGossipKeyRequest};
use mesh_tests::ops::{self, CLI_BOUND, mentions, refusal_of};
use mesh_tests::{ClusterOptions, FAST_JOIN_TIMEOUT, Host, Lab, grpc};
use tonic::Code;

/// A join on `joiner` that must be refused without a trace: one line mentioning `words`,
/// within `bound`; afterwards `joiner` is in no cluster (restarted too) and `cluster` lists
/// exactly `ids`.
fn join_refused(
    lab: &Lab,
    joiner: &Host,
    token: &str,
    manager: &str,
    words: &[&str],
    bound: Duration,
    ids: &BTreeSet<String>,
) -> String {
    let start = std::time::Instant::now();
    let out = ops::join(joiner, token, manager).unwrap();
    let took = start.elapsed();
    let r = refusal_of(&out, took)
        .unwrap_or_else(|e| panic!("join with {token:?} via {manager}: {e:#}"));
    assert!(
        words.iter().all(|w| mentions(&r.message, &[w])),
        "join via {manager}: {:?} does not mention all of {words:?}",
        r.message
    );
    assert!(
        took <= bound,
        "join via {manager} refused only after {took:?}: {}",
        r.message
    );
    assert_eq!(
        ops::node_id(joiner).unwrap(),
        "",
        "the joiner thinks it is in a cluster"
    );
    assert!(
        !joiner.state_dir().join("node.json").exists(),
        "the joiner kept a membership"
    );
    assert_eq!(
        &ops::ids(&mesh_tests::nodes(lab.host(1)).unwrap()),
        ids,
        "the cluster's members changed"
    );
    eprintln!("refused in {took:?}: {}", r.message);
    r.message
}

#[test]
fn bad_joins_are_refused_in_one_line_and_leave_no_trace() {
    // node1 leads a cluster with node2 as a worker; node3 will join; node4 makes its own cluster.
    let lab = mesh_tests::cluster_with(ClusterOptions {
        spares: 2,
        ..ClusterOptions::new(1, 1)
    })
    .unwrap();
    let (leader, joiner, stranger) = (lab.host(1), lab.host(3), lab.host(4));
    let manager = leader.control_addr();
    let ids = ops::ids(&mesh_tests::nodes(leader).unwrap());
    assert_eq!(ids.len(), 2);
    let quick = CLI_BOUND;

    // Malformed tokens: refused before anything is sent.
    let good = ops::join_token(leader, "worker").unwrap();
    let mangled = format!("{}x", good);
    for token in ["hello", "MESH-2-abc-def", mangled.as_str()] {
        join_refused(&lab, joiner, token, &manager, &["--token"], quick, &ids);
    }
    // A well-formed token whose secret is wrong, and a rotated (old) worker token.
    let (digest, _) = good.rsplit_once('-').unwrap();
    let forged = format!("{digest}-{}", "a".repeat(26));
    join_refused(
        &lab,
        joiner,
        &forged,
        &manager,
        &["token", "not valid"],
        quick,
        &ids,
    );
    ops::rotate_until_ok(&lab, leader, Duration::from_secs(5)).unwrap();
    join_refused(
        &lab,
        joiner,
        &good,
        &manager,
        &["token", "rotated"],
        quick,
        &ids,
    );

    // A token of another cluster: the CA digest does not match.
    ops::init(stranger).unwrap();
    let foreign = ops::join_token(stranger, "worker").unwrap();
    join_refused(
        &lab,
        joiner,
        &foreign,
        &manager,
        &["CA digest mismatch"],
        quick,
        &ids,
    );
    // ... nor does our token fit the other cluster's manager.
    let current = ops::join_token(leader, "worker").unwrap();
    join_refused(
        &lab,
        joiner,
        &current,
        &stranger.control_addr(),
        &["CA digest mismatch"],
        quick,
        &ids,
    );

    // Unreachable managers, in bounded time: nothing listening there, and no host there.
    let bound = FAST_JOIN_TIMEOUT + Duration::from_secs(4);
    join_refused(
        &lab,
        joiner,
        &current,
        &joiner.control_addr(),
        &["cannot reach", "10.77.0.13"],
        bound,
        &ids,
    );
    join_refused(
        &lab,
        joiner,
        &current,
        "10.77.0.250:2377",
        &["cannot reach", "10.77.0.250"],
        bound,
        &ids,
    );
    // A manager address that is not an address.
    join_refused(
        &lab,
        joiner,
        &current,
        "manager.example",
        &["manager.example"],
        quick,
        &ids,
    );

    // After all that the joiner still has no membership once restarted, and joins fine.
    joiner.restart().unwrap();
    lab.wait_ready(joiner, Duration::from_secs(20)).unwrap();
    assert_eq!(ops::node_id(joiner).unwrap(), "");
    ops::join(joiner, &current, &manager)
        .unwrap()
        .ok_stdout()
        .unwrap();
    let id = ops::node_id(joiner).unwrap();
    assert!(!id.is_empty());
    let mut with_joiner = ids.clone();
    with_joiner.insert(id.clone());
    assert_eq!(ops::ids(&mesh_tests::nodes(leader).unwrap()), with_joiner);

    // Joining twice: refused, nothing changes on either side.
    for (token, via) in [(&current, &manager), (&foreign, &stranger.control_addr())] {
        let out = ops::join(joiner, token, via).unwrap();
        let r = refusal_of(&out, Duration::ZERO).unwrap();
        assert!(
            mentions(&r.message, &["already part of a cluster"]),
            "{r:?}"
        );
        assert_eq!(ops::node_id(joiner).unwrap(), id);
    }
    // A manager of another cluster is already in one, too.
    let out = ops::join(stranger, &current, &manager).unwrap();
    assert!(mentions(
        &refusal_of(&out, Duration::ZERO).unwrap().message,
        &["already part of a cluster"]
    ));
    assert_eq!(ops::ids(&mesh_tests::nodes(leader).unwrap()), with_joiner);
    assert_eq!(
        mesh_tests::nodes(stranger).unwrap().len(),
        1,
        "the other cluster is unchanged"
    );
}

#[test]
fn control_port_requires_a_member_certificate_and_a_manager_for_writes() {
    // node1 manager, node2 worker, node3 the manager of another cluster.
    let lab = mesh_tests::cluster_with(ClusterOptions {
        spares: 1,
        ..ClusterOptions::new(1, 1)
    })
    .unwrap();
    let (manager, worker, stranger) = (lab.host(1), lab.host(2), lab.host(3));
    ops::init(stranger).unwrap();
    let ca = grpc::ca_pem(manager).unwrap();
    let addr = manager.control_addr();
    let worker_creds = grpc::credentials(worker).unwrap();
    let stranger_creds = grpc::credentials(stranger).unwrap();

    // From the worker's host, as any client on the underlay would.
    let (no_cert_list, no_cert_ca, worker_list, worker_rotate, foreign_list) =
        grpc::in_host(worker, async || {
            let anon = grpc::manager_channel_without_cert(&ca, &addr).unwrap();
            let no_cert_list = grpc::ControlClient::new(anon.clone())
                .list_nodes(ListNodesRequest {})
                .await;
            let no_cert_ca = CaClient::new(anon).get_root_ca(GetRootCaRequest {}).await;
            let as_worker = grpc::manager_channel_as(&worker_creds, &addr).unwrap();
            let worker_list = grpc::ControlClient::new(as_worker.clone())
                .list_nodes(ListNodesRequest {})
                .await;
            let worker_rotate = grpc::ControlClient::new(as_worker)
                .rotate_gossip_key(RotateGossipKeyRequest {})
                .await;
            let foreign = grpc::manager_channel_as(&stranger_creds, &addr).unwrap();
            let foreign_list = grpc::ControlClient::new(foreign)
                .list_nodes(ListNodesRequest {})
                .await;
            (
                no_cert_list,
                no_cert_ca,
                worker_list,
                worker_rotate,
                foreign_list,
            )
        })
        .unwrap();

    let status = no_cert_list.expect_err("ListNodes without a certificate answered");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(mentions(status.message(), &["certificate"]), "{status:?}");
    let root = no_cert_ca
        .expect("GetRootCa without a certificate")
        .into_inner()
        .ca_cert_pem;
    assert_eq!(root.trim(), ca.trim());

    // A worker's certificate may read, not write.
    let rows = worker_list
        .expect("ListNodes with a worker certificate")
        .into_inner()
        .nodes;
    assert_eq!(rows.len(), 2);
    let status = worker_rotate.expect_err("RotateGossipKey with a worker certificate answered");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(mentions(status.message(), &["worker"]), "{status:?}");

    // Another cluster's certificate does not get through (its CA is not ours).
    match foreign_list {
        Ok(r) => panic!(
            "a certificate of another cluster listed nodes: {:?}",
            r.into_inner()
        ),
        Err(s) => eprintln!(
            "foreign certificate refused: {:?} {}",
            s.code(),
            s.message()
        ),
    }

    // The same through the worker's own socket and CLI: writes refused with the reason.
    for args in [
        &["cluster", "rotate-gossip-key"][..],
        &["join-token", "worker"],
        &["join-token", "manager", "--rotate"],
        &["node", "promote", "node2"],
        &["node", "rm", "--force", "node1"],
    ] {
        let out = worker.cli_with_timeout(args, CLI_BOUND).unwrap();
        let r = refusal_of(&out, Duration::ZERO).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
        assert!(
            mentions(&r.message, &["worker"]) && mentions(&r.message, &["manager"]),
            "{args:?}: {r:?}"
        );
    }
    // Reads work there.
    assert_eq!(mesh_tests::nodes(worker).unwrap().len(), 2);
    assert_eq!(mesh_tests::info(worker).unwrap()["role"], "worker");
    // And nothing was changed by the refused calls.
    assert_eq!(gossip_key(manager), 1);
}

fn gossip_key(host: &Host) -> u32 {
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

#[test]
fn a_worker_request_relayed_by_a_follower_is_still_a_workers() {
    // A follower forwards control calls to the leader with its own (manager)
    // certificate: the leader must still judge the request as the worker's.
    let lab = mesh_tests::cluster(3, 1).unwrap();
    let managers = ops::first(&lab, 3);
    let leader = ops::wait_leader(&lab, &managers, Duration::from_secs(10)).unwrap();
    let follower = *managers.iter().find(|h| h.name() != leader.name()).unwrap();
    let worker = lab.host(4);
    let worker_creds = grpc::credentials(worker).unwrap();
    let addr = follower.control_addr();
    let (rotate, list) = grpc::in_host(worker, async || {
        let ch = grpc::manager_channel_as(&worker_creds, &addr).unwrap();
        let rotate = grpc::ControlClient::new(ch.clone())
            .rotate_gossip_key(RotateGossipKeyRequest {})
            .await;
        let list = grpc::ControlClient::new(ch)
            .list_nodes(ListNodesRequest {})
            .await;
        (rotate, list)
    })
    .unwrap();
    let status = rotate.expect_err("a worker's write relayed by a follower was accepted");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(mentions(status.message(), &["worker"]), "{status:?}");
    assert_eq!(
        list.expect("reads are open to workers")
            .into_inner()
            .nodes
            .len(),
        4
    );
}
