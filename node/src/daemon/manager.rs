//! The manager role of a node: its raft store, the services it serves on the control port
//! and the leader's components, started when the node is a manager (init, join as a
//! manager, restart, promotion) and stopped when it no longer is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_common::Liveness;
use mesh_common::channels::{ChannelProvider, SharedChannels, TlsChannels};
use mesh_common::leader::leader_hint;
use mesh_common::metrics::Metrics;
use mesh_common::tls::Credentials;
use mesh_control::manager::{Manager, ManagerOptions};
use mesh_control::store::{Store, StoreOptions};
use mesh_proto::raft_client::RaftClient;
use mesh_proto::{JoinRaftRequest, NodeRole, Transaction};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{error, info, warn};

use super::logs;
use crate::config::DaemonConfig;
use crate::membership::Membership;
use crate::state_dir::{NodeState, StateDir};

/// How a manager's raft store comes up.
pub enum ManagerStart {
    /// First manager of a new cluster: bootstrap raft and write this.
    Bootstrap(Transaction),
    /// Joined as a manager: become a voter before returning.
    Join,
    /// Restart or promotion: become a voter in the background if needed.
    Resume,
    /// Restart after the cluster lost its quorum: become the only voter with the state this
    /// store holds, then demote the other managers.
    ForceNewCluster,
}

/// A running manager: its store, its server and components (stopped by `shutdown`).
pub struct RunningManager {
    pub mgr: Arc<Manager>,
    pub store: Store,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

/// What starting a manager needs from its node.
pub struct ManagerParams<'a> {
    pub dir: &'a StateDir,
    pub config: &'a DaemonConfig,
    pub state: &'a NodeState,
    pub creds: &'a Arc<Credentials>,
    pub channels: &'a Arc<TlsChannels>,
    pub membership: &'a Membership,
    /// This node's worker, for what every node serves on its control port.
    pub worker: logs::WorkerCell,
    pub metrics: &'a Metrics,
}

impl RunningManager {
    /// Opens the raft store, serves the control port and starts the components; returns
    /// once the store is up as `how` says.
    pub async fn start(p: ManagerParams<'_>, how: ManagerStart) -> anyhow::Result<RunningManager> {
        let ManagerParams {
            dir,
            config,
            state,
            creds,
            channels,
            membership,
            worker,
            metrics,
        } = p;
        let listener = logs::bind_control_port(&state.listen_addr).await?;
        let raft_addr = format!("{}:{}", state.advertise_addr, state.control_port);
        let shared: SharedChannels = channels.clone();
        let store = Store::open(StoreOptions {
            dir: dir.raft_dir(),
            raft_id: state.raft_id,
            addr: raft_addr.clone(),
            config: config.raft.clone(),
            channels: shared.clone(),
            max_write_bytes: config.limits.max_write_bytes,
            force_new_cluster: matches!(how, ManagerStart::ForceNewCluster),
            metrics: metrics.raft.clone(),
        })
        .await
        .context("cannot open the raft store")?;
        let liveness: Arc<dyn Liveness> = Arc::new(membership.clone());
        let mgr = Manager::new(ManagerOptions {
            node_id: state.node_id.clone(),
            cluster_id: state.cluster_id.clone(),
            store: store.clone(),
            creds: creds.clone(),
            channels: shared,
            config: config.manager(),
            liveness,
            api_metrics: metrics.api.clone(),
        });
        let shutdown = CancellationToken::new();
        let server = {
            let mgr = mgr.clone();
            let shutdown = shutdown.clone();
            let node = logs::LogsService::routes(
                dir.tasks_dir(),
                &state.cluster_id,
                shutdown.clone(),
                worker,
            );
            tokio::spawn(async move {
                if let Err(e) = mgr.serve(listener, node, shutdown).await {
                    error!(error = %e, "control port server failed");
                }
            })
        };
        mgr.spawn_components(&shutdown);
        let running = RunningManager {
            mgr,
            store: store.clone(),
            shutdown,
            server,
        };
        let ready = match how {
            ManagerStart::Bootstrap(txn) => {
                bootstrap(&store, txn, config.raft.write_timeout()).await
            }
            ManagerStart::Join => {
                let deadline = config.agent.join_timeout();
                tokio::time::timeout(
                    deadline,
                    become_voter(
                        store.clone(),
                        channels.clone(),
                        state.managers.clone(),
                        raft_addr,
                    ),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!("joined, but did not become a raft voter within {deadline:?}")
                })
            }
            ManagerStart::ForceNewCluster => {
                demote_the_others(&store, &state.node_id, config.raft.write_timeout()).await
            }
            ManagerStart::Resume => {
                tokio::spawn(become_voter(
                    store.clone(),
                    channels.clone(),
                    state.managers.clone(),
                    raft_addr,
                ));
                Ok(())
            }
        };
        if let Err(e) = ready {
            running.stop().await;
            return Err(e);
        }
        info!(node = %state.node_id, "manager running");
        Ok(running)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.store.shutdown().await;
        let _ = self.server.await;
        drop(self.mgr);
    }
}

/// Waits until this manager leads, or `timeout` passes (`Err`), or the store shuts down.
async fn wait_leading(store: &Store, timeout: Duration) -> Result<(), tokio::time::error::Elapsed> {
    let mut leader = store.watch_leader();
    tokio::time::timeout(timeout, async {
        while !store.is_leader() {
            if leader.changed().await.is_err() {
                break;
            }
        }
    })
    .await
}

/// Starts a one-voter raft cluster and writes the initial objects.
async fn bootstrap(store: &Store, txn: Transaction, timeout: Duration) -> anyhow::Result<()> {
    store.initialize().await.context("cannot initialize raft")?;
    wait_leading(store, timeout)
        .await
        .map_err(|_| anyhow::anyhow!("this node did not become raft leader within {timeout:?}"))?;
    store
        .propose(txn)
        .await
        .context("cannot write the new cluster")?;
    Ok(())
}

/// After a forced new cluster: waits until this manager leads (it is the only voter), then
/// records every other manager as a worker, so the node list tells the truth and the role
/// reconciler does not wait for voters that will not come back.
async fn demote_the_others(store: &Store, me: &str, timeout: Duration) -> anyhow::Result<()> {
    // An election first: one election timeout, a few write timeouts at most.
    let deadline = timeout * 4;
    wait_leading(store, deadline).await.map_err(|_| {
        anyhow::anyhow!(
            "--force-new-cluster: this manager did not become leader within {deadline:?}"
        )
    })?;
    let mut demoted = Vec::new();
    store
        .update(
            |s| -> Result<Transaction, mesh_control::store::StoreError> {
                demoted.clear();
                let mut ops = Vec::new();
                for n in s.nodes.values() {
                    if n.id != me && mesh_control::objects::desired_role(n) == NodeRole::Manager {
                        let mut next = n.clone();
                        next.spec.get_or_insert_default().desired_role = NodeRole::Worker as i32;
                        next.updated_at_ms = mesh_common::time::now_ms();
                        demoted.push(n.hostname.clone());
                        ops.push(mesh_control::store::txn::put_if_unchanged(next));
                    }
                }
                Ok(Transaction { ops })
            },
        )
        .await
        .context("--force-new-cluster: cannot demote the other managers")?;
    warn!(
        ?demoted,
        "forced a new cluster: this node is its only manager; the others were demoted and rejoin with a manager token once their state is cleared"
    );
    Ok(())
}

/// Asks the leader to make this manager a voter until the local raft log
/// shows it is one. The leader is found through the known managers and
/// `mesh-leader` redirects.
async fn become_voter(
    store: Store,
    channels: Arc<TlsChannels>,
    managers: Vec<String>,
    addr: String,
) {
    let raft_id = store.raft_id();
    let is_voter = |s: &Store| s.status().voters.iter().any(|(id, _)| *id == raft_id);
    let mut i = 0usize;
    let mut hint: Option<String> = None;
    let mut delay = Duration::from_millis(100);
    while !is_voter(&store) {
        let target = match hint.take() {
            Some(h) => h,
            None if managers.is_empty() => return,
            None => {
                i += 1;
                managers[i % managers.len()].clone()
            }
        };
        let result = match channels.channel(&target) {
            Ok(ch) => RaftClient::new(ch)
                .join_raft(JoinRaftRequest {
                    raft_id,
                    addr: addr.clone(),
                })
                .await
                .map(|_| ()),
            Err(e) => Err(Status::unavailable(e.to_string())),
        };
        match result {
            Ok(()) => {
                // Replication of the new membership reaches us shortly.
                let mut changes = store.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while !is_voter(&store) && changes.changed().await.is_ok() {}
                })
                .await;
            }
            Err(s) => {
                hint = leader_hint(&s).filter(|h| *h != target);
                if hint.is_none() {
                    warn!(manager = %target, error = %s.message(), "cannot become a raft voter yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    info!(raft_id, "this manager is a raft voter");
}
