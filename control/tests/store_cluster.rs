//! In-process raft clusters over real tonic on 127.0.0.1: election,
//! replication, leader redirects, failover, lost quorum, restarts,
//! snapshot catch-up, membership changes and JoinRaft authorization.
//!
//! Every wait is for a condition with a deadline ([`PATIENCE`]); nothing
//! sleeps a fixed time and hopes.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mesh_common::auth::Caller;
use mesh_common::channels::{ChannelProvider, PlainChannels};
use mesh_common::metrics::Metrics;
use mesh_control::config::RaftConfig;
use mesh_control::store::txn::{create, expect, of, put_cluster, put_node};
use mesh_control::store::{RaftStatus, ServerState, Store, StoreError, StoreOptions};
use mesh_lab::wait::wait_for_async;
use mesh_proto::raft_client::RaftClient;
use mesh_proto::{Cluster, JoinRaftRequest, Node, NodeRole, NodeSpec};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn fast_config() -> RaftConfig {
    RaftConfig {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_logs: 1000,
        keep_logs: 100,
        write_timeout_ms: 1500,
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Test metadata the interceptor turns into a [`Caller`]: which node calls,
/// and with what role. Raft peers send none and are taken as managers.
const TEST_NODE_ID: &str = "test-node-id";
const TEST_ROLE: &str = "test-role";

/// Stands in for the certificate-reading interceptor of the real server.
fn test_caller(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let md = req.metadata();
    let node_id = md
        .get(TEST_NODE_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let role = md
        .get(TEST_ROLE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let caller = match (node_id, role.as_deref()) {
        (None, None) => Some(Caller::Node {
            node_id: "peer".into(),
            role: NodeRole::Manager,
            cluster_id: "c".into(),
        }),
        (_, Some("none")) => None,
        (id, role) => Some(Caller::Node {
            node_id: id.unwrap_or_default(),
            role: if role == Some("worker") {
                NodeRole::Worker
            } else {
                NodeRole::Manager
            },
            cluster_id: "c".into(),
        }),
    };
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
    }
    Ok(req)
}

/// Plain channels, except to addresses this node is cut off from: those
/// get a channel to a closed port, so every RPC fails as unreachable.
#[derive(Default)]
struct CuttableChannels {
    plain: PlainChannels,
    cut: Mutex<HashSet<String>>,
}

impl ChannelProvider for CuttableChannels {
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        if self.cut.lock().unwrap().contains(addr) {
            // Port 1 on loopback: connection refused at once.
            return Ok(Endpoint::from_static("http://127.0.0.1:1").connect_lazy());
        }
        self.plain.channel(addr)
    }
}

struct Member {
    addr: String,
    dir: PathBuf,
    channels: Arc<CuttableChannels>,
    store: Option<Store>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// What its store exports, across restarts.
    metrics: Arc<Metrics>,
}

struct TestCluster {
    tmp: tempfile::TempDir,
    config: RaftConfig,
    members: BTreeMap<u64, Member>,
}

impl TestCluster {
    fn new(config: RaftConfig) -> Self {
        init_tracing();
        TestCluster {
            tmp: tempfile::tempdir().expect("temp dir"),
            config,
            members: BTreeMap::new(),
        }
    }

    /// Starts a fresh manager (not yet in any cluster) on a free port.
    async fn start(&mut self, raft_id: u64) -> Result<Store> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let member = Member {
            addr,
            dir: self.tmp.path().join(format!("m{raft_id}")),
            channels: Arc::new(CuttableChannels::default()),
            store: None,
            server: None,
            metrics: Arc::new(Metrics::new()),
        };
        self.members.insert(raft_id, member);
        self.run(raft_id, listener).await
    }

    /// Opens the member's store (from its directory) and serves it.
    async fn run(&mut self, raft_id: u64, listener: TcpListener) -> Result<Store> {
        let config = self.config.clone();
        let m = self.members.get_mut(&raft_id).context("no such member")?;
        let store = Store::open(StoreOptions {
            dir: m.dir.clone(),
            raft_id,
            addr: m.addr.clone(),
            config,
            channels: m.channels.clone(),
            max_write_bytes: mesh_control::config::LimitsConfig::default().max_write_bytes,
            force_new_cluster: false,
            metrics: m.metrics.raft.clone(),
        })
        .await
        .with_context(|| format!("open store {raft_id}"))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let svc = InterceptedService::new(store.service(), test_caller);
        let server = tokio::spawn(async move {
            let res = Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "test raft server failed");
            }
        });
        m.store = Some(store.clone());
        m.server = Some((stop_tx, server));
        Ok(store)
    }

    /// Stops serving and shuts the store down; its directory stays.
    async fn stop(&mut self, raft_id: u64) {
        let m = self.members.get_mut(&raft_id).expect("member");
        if let Some((stop, server)) = m.server.take() {
            let _ = stop.send(());
            let abort = server.abort_handle();
            if tokio::time::timeout(PATIENCE, server).await.is_err() {
                abort.abort();
            }
        }
        if let Some(store) = m.store.take() {
            store.shutdown().await;
        }
    }

    /// Starts a stopped member again, same directory and address.
    async fn restart(&mut self, raft_id: u64) -> Result<Store> {
        let addr = self.members[&raft_id].addr.clone();
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("rebind {addr}"))?;
        self.run(raft_id, listener).await
    }

    fn store(&self, raft_id: u64) -> Store {
        self.members[&raft_id]
            .store
            .clone()
            .expect("member is running")
    }

    fn addr(&self, raft_id: u64) -> String {
        self.members[&raft_id].addr.clone()
    }

    fn running(&self) -> Vec<Store> {
        self.members
            .values()
            .filter_map(|m| m.store.clone())
            .collect()
    }

    /// Cuts the links between `a` and `b`, both ways.
    fn cut(&self, a: u64, b: u64) {
        self.members[&a]
            .channels
            .cut
            .lock()
            .unwrap()
            .insert(self.addr(b));
        self.members[&b]
            .channels
            .cut
            .lock()
            .unwrap()
            .insert(self.addr(a));
    }

    fn heal_all(&self) {
        for m in self.members.values() {
            m.channels.cut.lock().unwrap().clear();
        }
    }

    /// Bootstraps member `first` and adds the others as voters.
    async fn form(&mut self, ids: &[u64]) -> Result<()> {
        for &id in ids {
            self.start(id).await?;
        }
        let first = self.store(ids[0]);
        first.initialize().await.context("initialize")?;
        for &id in &ids[1..] {
            first
                .add_voter(id, self.addr(id))
                .await
                .with_context(|| format!("add voter {id}"))?;
        }
        Ok(())
    }

    /// Waits until some running member leads and all running members
    /// agree on it; returns it.
    async fn leader(&self) -> Result<Store> {
        eventually("a leader all running members agree on", || async {
            let stores = self.running();
            let leader = stores.iter().find(|s| s.is_leader())?;
            let agreed = stores
                .iter()
                .all(|s| s.leader().map(|l| l.raft_id) == Some(leader.raft_id()));
            agreed.then(|| leader.clone())
        })
        .await
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Polls `check` until it yields `Some`, for at most [`PATIENCE`] (scaled by
/// `MESH_TEST_PATIENCE`).
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_async(what, PATIENCE, async || Ok(check().await)).await
}

async fn wait_status(
    store: &Store,
    what: &str,
    pred: impl Fn(&RaftStatus) -> bool,
) -> Result<RaftStatus> {
    store
        .wait_status(PATIENCE, pred)
        .await
        .map_err(|last| anyhow!("waiting for {what}, last status: {last:?}"))
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: format!("{id}.test"),
        ..Default::default()
    }
}

fn manager_node(id: &str, raft_id: u64) -> Node {
    Node {
        id: id.into(),
        raft_id,
        spec: Some(NodeSpec {
            desired_role: NodeRole::Manager as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes through whoever leads, retrying while there is no leader or no
/// quorum, until [`PATIENCE`] runs out.
async fn write_eventually(cluster: &TestCluster, txn: mesh_proto::Transaction) -> Result<u64> {
    let last_err = Mutex::new(None);
    let res = eventually("a successful write", || async {
        for s in cluster.running().into_iter().filter(|s| s.is_leader()) {
            match s.propose(txn.clone()).await {
                Ok(index) => return Some(index),
                Err(e) => *last_err.lock().unwrap() = Some(e.to_string()),
            }
        }
        None
    })
    .await;
    res.with_context(|| format!("last error: {:?}", last_err.lock().unwrap()))
}

async fn wait_applied(store: &Store, index: u64) -> Result<()> {
    wait_status(
        store,
        &format!("applied >= {index} on {}", store.raft_id()),
        |s| s.applied.is_some_and(|a| a >= index),
    )
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_replicate() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let leader = c.leader().await?;
    let status = leader.status();
    assert_eq!(
        status.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(status.learners.is_empty());

    let cluster = Cluster {
        id: "c1".into(),
        ..Default::default()
    };
    let i1 = leader
        .propose(of([
            create(put_cluster(cluster)),
            create(put_node(node("a"))),
        ]))
        .await?;
    let i2 = leader.propose(of([put_node(node("b"))])).await?;
    assert!(i2 > i1);
    for id in [1, 2, 3] {
        let s = c.store(id);
        wait_applied(&s, i2).await?;
        s.read(|st| {
            assert_eq!(
                st.cluster.as_ref().map(|c| c.version),
                Some(i1),
                "cluster version on {id}"
            );
            assert_eq!(st.nodes["a"].version, i1, "node a version on {id}");
            assert_eq!(st.nodes["b"].version, i2, "node b version on {id}");
        });
    }
    // A consistent read on the leader sees everything committed.
    assert_eq!(leader.read_consistent(|s| s.nodes.len()).await?, 2);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_metrics_follow_term_indexes_leadership_and_writes() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let leader = c.leader().await?;
    let index = leader.propose(of([put_node(node("a"))])).await?;
    let exported: BTreeMap<u64, Arc<Metrics>> = c
        .members
        .iter()
        .map(|(id, m)| (*id, m.metrics.clone()))
        .collect();
    let metrics = |id: u64| exported[&id].raft.clone();
    for id in [1, 2, 3] {
        wait_applied(&c.store(id), index).await?;
    }
    eventually("every member's metrics at the write", || async {
        [1, 2, 3]
            .iter()
            .all(|id| {
                let s = metrics(*id).sample();
                s.applied_index >= index && s.commit_index >= index
            })
            .then_some(())
    })
    .await?;
    let leaders: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| metrics(*id).sample().leader)
        .collect();
    assert_eq!(leaders, vec![leader.raft_id()]);
    for id in [1, 2, 3] {
        let m = metrics(id);
        assert!(m.sample().term >= 1, "term of {id}: {:?}", m.sample());
        assert!(m.leader_changes() >= 1, "no leader change seen by {id}");
    }
    // The write's latency, as a scrape shows it.
    let scrape = exported[&leader.raft_id()].encode();
    let timed = scrape
        .lines()
        .find_map(|l| l.strip_prefix("mesh_raft_apply_latency_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(timed.is_some_and(|n| n >= 1), "{scrape}");

    // The leader stops: it leads nothing any more, and the others see a new leader.
    let old = leader.raft_id();
    let before: BTreeMap<u64, u64> = [1, 2, 3]
        .into_iter()
        .map(|id| (id, metrics(id).leader_changes()))
        .collect();
    c.stop(old).await;
    let new = c.leader().await?;
    assert!(!metrics(old).sample().leader);
    eventually("the new leader's metrics to say so", || async {
        metrics(new.raft_id()).sample().leader.then_some(())
    })
    .await?;
    for id in [1, 2, 3].into_iter().filter(|id| *id != old) {
        assert!(
            metrics(id).leader_changes() > before[&id],
            "{id} counted no leader change"
        );
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_follower_returns_not_leader_with_the_leaders_addr() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let leader = c.leader().await?;
    let follower = c
        .running()
        .into_iter()
        .find(|s| !s.is_leader())
        .context("a follower")?;

    let err = follower
        .propose(of([put_node(node("x"))]))
        .await
        .expect_err("a follower must refuse writes");
    match &err {
        StoreError::NotLeader { leader: Some(l) } => {
            assert_eq!(l.raft_id, leader.raft_id());
            assert_eq!(l.addr, c.addr(leader.raft_id()));
        }
        other => bail!("expected NotLeader with the leader, got {other:?}"),
    }
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let md = status
        .metadata()
        .get(mesh_proto::LEADER_METADATA_KEY)
        .context("leader metadata")?;
    assert_eq!(md.to_str()?, c.addr(leader.raft_id()));

    let err = follower
        .read_consistent(|s| s.nodes.len())
        .await
        .expect_err("follower consistent read");
    assert!(
        matches!(err, StoreError::NotLeader { leader: Some(_) }),
        "{err:?}"
    );
    assert!(matches!(
        follower.add_voter(9, "127.0.0.1:9".into()).await,
        Err(StoreError::NotLeader { .. })
    ));
    assert!(follower.read(|s| s.nodes.is_empty()), "nothing was written");
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shutdown_elects_a_new_leader_that_takes_writes() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let old = c.leader().await?;
    let before = old.propose(of([put_node(node("before"))])).await?;
    let old_term = old.status().term;
    c.stop(old.raft_id()).await;

    let new = c.leader().await?;
    assert_ne!(new.raft_id(), old.raft_id());
    assert!(new.status().term > old_term);
    let after = write_eventually(&c, of([put_node(node("after"))])).await?;
    assert!(after > before);
    for s in c.running() {
        wait_applied(&s, after).await?;
        assert!(s.read(|st| st.nodes.contains_key("before") && st.nodes.contains_key("after")));
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_without_quorum_fails_writes_in_time_and_recovers_when_a_peer_returns() -> Result<()>
{
    let config = fast_config();
    let write_timeout = config.write_timeout();
    let mut c = TestCluster::new(config);
    c.form(&[1, 2, 3]).await?;
    let leader = c.leader().await?;
    leader.propose(of([put_node(node("a"))])).await?;
    let followers: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|&id| id != leader.raft_id())
        .collect();
    for &id in &followers {
        c.stop(id).await;
    }

    // Bounded here too, so a store that hangs fails the test instead.
    let start = Instant::now();
    let err = tokio::time::timeout(PATIENCE, leader.propose(of([put_node(node("lost"))])))
        .await
        .context("propose without quorum hung")?
        .expect_err("no quorum");
    let took = start.elapsed();
    assert!(matches!(err, StoreError::NoQuorum { .. }), "{err:?}");
    assert!(
        took < write_timeout + Duration::from_millis(500),
        "write failed after {took:?}"
    );

    let start = Instant::now();
    let err = tokio::time::timeout(PATIENCE, leader.read_consistent(|s| s.nodes.len()))
        .await
        .context("consistent read without quorum hung")?
        .expect_err("no quorum for reads");
    assert!(matches!(err, StoreError::NoQuorum { .. }), "{err:?}");
    assert!(start.elapsed() < write_timeout + Duration::from_millis(500));

    c.restart(followers[0]).await?;
    let index = write_eventually(&c, of([put_node(node("back"))])).await?;
    let returned = c.store(followers[0]);
    wait_applied(&returned, index).await?;
    assert!(returned.read(|s| s.nodes.contains_key("a") && s.nodes.contains_key("back")));
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_loses_writes_and_rejoins_the_majority() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let old = c.leader().await?;
    let others: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|&id| id != old.raft_id())
        .collect();
    for &id in &others {
        c.cut(old.raft_id(), id);
    }

    let err = old
        .propose(of([put_node(node("minority"))]))
        .await
        .expect_err("isolated leader");
    assert!(matches!(err, StoreError::NoQuorum { .. }), "{err:?}");
    let majority = eventually("a leader on the majority side", || async {
        others.iter().map(|&id| c.store(id)).find(|s| s.is_leader())
    })
    .await?;
    let index = majority.propose(of([put_node(node("majority"))])).await?;

    c.heal_all();
    let old_id = old.raft_id();
    wait_status(&old, "old leader following the new one", |s| {
        s.state == ServerState::Follower && s.leader.as_ref().is_some_and(|l| l.raft_id != old_id)
    })
    .await?;
    wait_applied(&old, index).await?;
    old.read(|s| {
        assert!(s.nodes.contains_key("majority"));
        assert!(
            !s.nodes.contains_key("minority"),
            "the minority write was never committed"
        );
    });
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_the_same_dir_keeps_state_term_and_vote() -> Result<()> {
    // Small snapshot interval: the restart restores a snapshot and replays
    // the log after it.
    let mut c = TestCluster::new(RaftConfig {
        snapshot_logs: 5,
        keep_logs: 2,
        ..fast_config()
    });
    c.form(&[1]).await?;
    let s = c.store(1);
    let mut last = 0;
    for i in 0..12 {
        last = s.propose(of([put_node(node(&format!("n{i}")))])).await?;
    }
    wait_status(&s, "a snapshot", |st| {
        st.snapshot.is_some() && st.purged.is_some()
    })
    .await?;
    let before_state = s.read(Clone::clone);
    let before = s.status();
    c.stop(1).await;

    let s = c.restart(1).await?;
    let after = s.status();
    assert!(
        after.term >= before.term,
        "term went back: {} -> {}",
        before.term,
        after.term
    );
    assert!(
        after.applied >= before.snapshot,
        "restored from the snapshot: {after:?}"
    );
    wait_applied(&s, last).await?;
    assert_eq!(s.read(Clone::clone), before_state);
    c.leader().await?;
    let next = s
        .propose(of([expect(
            put_node(node("n0")),
            before_state.nodes["n0"].version,
        )]))
        .await?;
    assert!(next > last);
    assert!(s.status().term >= before.term);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_restart_keeps_its_vote_and_catches_up() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let leader = c.leader().await?;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader.raft_id())
        .context("follower")?;
    let first = leader.propose(of([put_node(node("a"))])).await?;
    wait_applied(&c.store(follower), first).await?;
    let term = c.store(follower).status().term;
    c.stop(follower).await;
    let second = leader.propose(of([put_node(node("b"))])).await?;

    let s = c.restart(follower).await?;
    assert!(s.status().term >= term);
    wait_applied(&s, second).await?;
    assert!(s.read(|st| st.nodes.contains_key("a") && st.nodes.contains_key("b")));
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_voter_catches_up_by_snapshot_after_the_log_was_purged() -> Result<()> {
    let mut c = TestCluster::new(RaftConfig {
        snapshot_logs: 10,
        keep_logs: 2,
        ..fast_config()
    });
    c.form(&[1]).await?;
    let leader = c.store(1);
    let mut last = 0;
    for i in 0..30 {
        last = leader
            .propose(of([put_node(node(&format!("n{i}")))]))
            .await?;
    }
    let st = wait_status(&leader, "a purged log", |s| {
        s.purged.is_some_and(|p| p >= 10)
    })
    .await?;
    let purged = st.purged.unwrap_or_default();
    // The purge keeps `keep_logs` entries behind the snapshot.
    let snapshot = st.snapshot.context("a snapshot")?;
    assert!(snapshot >= purged + 2, "kept too few logs: {st:?}");

    let joiner = c.start(2).await?;
    leader.add_voter(2, c.addr(2)).await?;
    let status = wait_status(&joiner, "joiner applied everything", |s| {
        s.applied.is_some_and(|a| a >= last)
    })
    .await?;
    // Entries up to `purged` exist only in the snapshot: the joiner must
    // have installed one.
    assert!(
        status.snapshot.is_some_and(|s| s >= purged),
        "no snapshot installed: {status:?}"
    );
    assert_eq!(joiner.read(|s| s.nodes.len()), 30);
    assert_eq!(joiner.read(Clone::clone), leader.read(Clone::clone));
    assert_eq!(leader.status().voters.len(), 2);
    // And the two-voter cluster still commits.
    let more = leader.propose(of([put_node(node("more"))])).await?;
    wait_applied(&joiner, more).await?;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_to_three() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let leader = c.leader().await?;
    for id in [4, 5] {
        c.start(id).await?;
        leader.add_voter(id, c.addr(id)).await?;
    }
    // Adding again is a no-op.
    leader.add_voter(5, c.addr(5)).await?;
    let voters = |s: &Store| s.status().voters.iter().map(|v| v.0).collect::<Vec<_>>();
    assert_eq!(voters(&leader), vec![1, 2, 3, 4, 5]);
    let index = leader.propose(of([put_node(node("five"))])).await?;
    for id in 1..=5 {
        wait_applied(&c.store(id), index).await?;
    }

    // With 5 voters, two may be down.
    let down: Vec<u64> = (1..=5)
        .filter(|&id| id != leader.raft_id())
        .take(2)
        .collect();
    for &id in &down {
        c.stop(id).await;
    }
    leader.propose(of([put_node(node("two-down"))])).await?;
    for &id in &down {
        leader.remove_voter(id).await?;
    }
    // Removing again (absent) is success.
    leader.remove_voter(down[0]).await?;
    assert_eq!(voters(&leader).len(), 3);
    let index = leader.propose(of([put_node(node("three"))])).await?;
    for s in c.running() {
        wait_applied(&s, index).await?;
        assert_eq!(voters(&s).len(), 3, "membership on {}", s.raft_id());
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_leader_steps_down_and_the_rest_elect_a_new_one() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2, 3]).await?;
    let old = c.leader().await?;
    let old_id = old.raft_id();
    old.remove_voter(old_id).await?;
    wait_status(&old, "the removed leader stepping down", |s| {
        s.state != ServerState::Leader
    })
    .await?;

    let remaining: Vec<Store> = c
        .running()
        .into_iter()
        .filter(|s| s.raft_id() != old_id)
        .collect();
    let new = eventually("a new leader among the remaining voters", || async {
        remaining.iter().find(|s| s.is_leader()).cloned()
    })
    .await?;
    assert_eq!(
        new.status()
            .voters
            .iter()
            .map(|v| v.0)
            .filter(|&id| id == old_id)
            .count(),
        0
    );
    let index = new.propose(of([put_node(node("after-removal"))])).await?;
    for s in &remaining {
        wait_applied(s, index).await?;
    }
    assert!(!old.is_leader());
    assert!(
        old.leader().is_none_or(|l| l.raft_id != old_id),
        "removed node must not report itself as leader"
    );
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_voter_is_refused() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1]).await?;
    let s = c.store(1);
    let err = s.remove_voter(1).await.expect_err("last voter");
    assert!(
        matches!(err, StoreError::LastVoter { raft_id: 1 }),
        "{err:?}"
    );
    assert_eq!(s.status().voters.len(), 1);
    s.propose(of([put_node(node("still-works"))])).await?;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_recomputes_after_a_conflict_and_gives_up_eventually() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1]).await?;
    let s = c.store(1);
    s.propose(of([put_node(node("a"))])).await?;

    // The first computation uses a stale version, as if another writer
    // got in between; the retry reads the current one and succeeds.
    let calls = AtomicUsize::new(0);
    let index = s
        .update(|st| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let current = st.nodes["a"].version;
            let mut a = st.nodes["a"].clone();
            a.hostname = "renamed".into();
            Ok::<_, StoreError>(of([expect(
                put_node(a),
                if n == 0 { current - 1 } else { current },
            )]))
        })
        .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.read(|st| (st.nodes["a"].version, st.nodes["a"].hostname.clone())),
        (index, "renamed".into())
    );

    let calls = AtomicUsize::new(0);
    let err = s
        .update(|_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, StoreError>(of([create(put_node(node("a")))]))
        })
        .await
        .expect_err("always conflicts");
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("node a: expected version 0")),
        "{err:?}"
    );
    assert!(calls.load(Ordering::SeqCst) > 1);

    // Concurrent updates through one manager are serialized: no lost update.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.update(|st| {
                    let mut a = st.nodes["a"].clone();
                    a.control_port += 1;
                    Ok::<_, StoreError>(of([expect(put_node(a), st.nodes["a"].version)]))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    assert_eq!(s.read(|st| st.nodes["a"].control_port), 10);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_bumps_after_every_apply() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2]).await?;
    let leader = c.leader().await?;
    let follower = c
        .running()
        .into_iter()
        .find(|s| !s.is_leader())
        .context("follower")?;
    let mut rx = follower.subscribe();
    rx.borrow_and_update();
    let index = leader.propose(of([put_node(node("a"))])).await?;
    tokio::time::timeout(PATIENCE, rx.wait_for(|&i| i >= index)).await??;
    assert!(
        follower.read(|s| s.nodes.contains_key("a")),
        "state is applied when the index is announced"
    );
    c.shutdown().await;
    Ok(())
}

async fn join_client(addr: &str) -> Result<RaftClient<Channel>> {
    Ok(RaftClient::new(
        Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy(),
    ))
}

fn join_request(
    raft_id: u64,
    addr: &str,
    node_id: Option<&str>,
    role: &str,
) -> tonic::Request<JoinRaftRequest> {
    let mut req = tonic::Request::new(JoinRaftRequest {
        raft_id,
        addr: addr.to_string(),
    });
    if let Some(id) = node_id {
        req.metadata_mut()
            .insert(TEST_NODE_ID, id.parse().expect("ascii"));
    }
    req.metadata_mut()
        .insert(TEST_ROLE, role.parse().expect("ascii"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_raft_checks_the_caller_redirects_to_the_leader_and_adds_a_voter() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1, 2]).await?;
    let leader = c.leader().await?;
    let follower = c
        .running()
        .into_iter()
        .find(|s| !s.is_leader())
        .context("follower")?;
    let joiner = c.start(3).await?;
    let joiner_addr = c.addr(3);
    let index = leader
        .propose(of([
            put_node(manager_node("mgr3", 3)),
            put_node(Node {
                raft_id: 4,
                ..node("worker4")
            }),
        ]))
        .await?;
    wait_applied(&follower, index).await?;

    let mut to_leader = join_client(&c.addr(leader.raft_id())).await?;
    let denied = |r: Result<tonic::Response<_>, tonic::Status>, why: &str| match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(()),
        other => Err(anyhow!("{why}: expected PERMISSION_DENIED, got {other:?}")),
    };
    denied(
        to_leader
            .join_raft(join_request(3, &joiner_addr, None, "none"))
            .await,
        "no caller",
    )?;
    denied(
        to_leader
            .join_raft(join_request(3, &joiner_addr, Some("mgr3"), "worker"))
            .await,
        "worker cert",
    )?;
    denied(
        to_leader
            .join_raft(join_request(3, &joiner_addr, Some("ghost"), "manager"))
            .await,
        "unknown node",
    )?;
    denied(
        to_leader
            .join_raft(join_request(5, &joiner_addr, Some("mgr3"), "manager"))
            .await,
        "wrong raft id",
    )?;
    denied(
        to_leader
            .join_raft(join_request(4, &joiner_addr, Some("worker4"), "manager"))
            .await,
        "not desired manager",
    )?;
    assert_eq!(
        leader.status().voters.len(),
        2,
        "refused joins change nothing"
    );

    let mut to_follower = join_client(&c.addr(follower.raft_id())).await?;
    let redirect = to_follower
        .join_raft(join_request(3, &joiner_addr, Some("mgr3"), "manager"))
        .await
        .expect_err("a follower redirects");
    assert_eq!(redirect.code(), tonic::Code::FailedPrecondition);
    let to = redirect
        .metadata()
        .get(mesh_proto::LEADER_METADATA_KEY)
        .context("mesh-leader metadata")?;
    assert_eq!(to.to_str()?, c.addr(leader.raft_id()));

    let mut followed = join_client(to.to_str()?).await?;
    followed
        .join_raft(join_request(3, &joiner_addr, Some("mgr3"), "manager"))
        .await?;
    // Idempotent.
    followed
        .join_raft(join_request(3, &joiner_addr, Some("mgr3"), "manager"))
        .await?;
    assert_eq!(
        leader
            .status()
            .voters
            .iter()
            .map(|v| v.0)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    wait_applied(&joiner, index).await?;
    assert!(joiner.read(|s| s.nodes.contains_key("mgr3")));
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_from_non_managers_are_refused() -> Result<()> {
    let mut c = TestCluster::new(fast_config());
    c.form(&[1]).await?;
    let mut client = join_client(&c.addr(1)).await?;
    for role in ["none", "worker"] {
        let mut req = tonic::Request::new(mesh_proto::RaftPayload { data: vec![] });
        req.metadata_mut().insert(TEST_ROLE, role.parse()?);
        let err = client.append_entries(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "role {role}");
    }
    // A manager with garbage gets a decode error, not a crash.
    let err = client
        .vote(mesh_proto::RaftPayload {
            data: vec![0xff; 3],
        })
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    c.shutdown().await;
    Ok(())
}
