//! The managers' raft store: desired state replicated with openraft over
//! tonic, durable in one redb file, read and written through [`Store`].
//!
//! # Layout
//! - [`state`]: the typed state machine ([`StoreState`]) and transaction
//!   semantics: pure, unit tested.
//! - `raft`: openraft glue: its config, leader and errors; [`RaftStatus`], [`LeaderInfo`].
//! - `types`: openraft type config and the postcard codec for openraft's own types.
//! - `disk`, `log_store`, `state_machine`: openraft's v2 storage traits on redb.
//! - `network`: openraft's network over gRPC ([`mesh_common::channels::ChannelProvider`]).
//! - `service`: the `mesh.v1.Raft` gRPC service ([`RaftService`]).
//! - [`error`]: [`StoreError`] and its mapping to `tonic::Status`.
//!
//! # Concurrency
//! openraft owns the log store and state machine (its core task and state
//! machine worker). The state machine writes [`StoreState`] under a
//! `std::sync::RwLock` that [`Store::read`] takes briefly; nothing holds it
//! across an await. [`Store::update`] serializes local read-compute-propose
//! cycles with an async mutex; conflicts with writes from elsewhere are
//! caught by version preconditions and retried. Membership changes are
//! serialized by a second mutex, since openraft refuses a change while
//! another is in progress.
//!
//! # Removing a leader (openraft 0.9)
//! A leader may remove itself ([`Store::remove_voter`] of its own id).
//! openraft keeps it leading until the new membership is committed and
//! applied, so followers learn the commit; at its next heartbeat tick the
//! leader steps down to learner, stops sending heartbeats, and the
//! remaining voters elect a new leader after an election timeout. The
//! removed node is dropped from the membership (`retain = false`), so
//! nobody replicates to it any more. A removed leader has the final config
//! in its own log, so it never campaigns; it keeps its vote for itself
//! (openraft's `current_leader` still names it), so [`Store::leader`]
//! reports no leader for a node that names itself but does not lead. A
//! removed follower may miss the final config and campaign; voters refuse
//! it while their leader lease holds, and its log is behind, so it cannot
//! win. Either way a removed manager should shut its store down.

mod disk;
pub mod error;
mod log_store;
mod network;
mod raft;
mod recover;
mod service;
pub mod state;
mod state_machine;
mod types;

#[cfg(test)]
mod suite_tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_common::metrics::RaftSample;
use mesh_proto::Transaction;
use mesh_proto::raft_server::RaftServer;
use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use tokio::sync::watch;
use tokio::time::Instant;

pub use error::StoreError;
pub use openraft::ServerState;
pub use raft::{LeaderInfo, RaftStatus};
pub use service::RaftService;
pub use state::{StoreState, StoredObject, txn};

/// The raft codec (openraft's messages and log entries, as managers exchange and store them),
/// for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub mod codec {
    pub use super::types::{
        Entry, LogId, SnapshotMeta, StoreRequest, StoreResponse, TypeConfig, Vote, decode, encode,
    };
}

use crate::config::RaftConfig;
use disk::Disk;
use log_store::LogStore;
use mesh_common::channels::ChannelProvider;
use network::NetworkFactory;
use raft::{fatal, leader_of, openraft_config, write_error};
use state_machine::{Shared, StateMachine};
use types::{Raft, StoreRequest};

/// Largest raft message accepted or sent (entries batches, snapshot chunks).
pub(crate) const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// How many times [`Store::update`] recomputes a transaction that lost a
/// version race before giving up with the conflict.
const UPDATE_ATTEMPTS: usize = 8;

/// A new voter gets this many write timeouts to catch up (possibly by
/// snapshot) as a learner before it is made a voter.
const CATCH_UP_WRITE_TIMEOUTS: u32 = 4;

/// Name of the database file in the store directory.
pub const DB_FILE: &str = "raft.redb";

pub struct StoreOptions {
    /// Directory of the store's files (created if missing).
    pub dir: PathBuf,
    /// This manager's raft id; unique in the cluster, never reused.
    pub raft_id: u64,
    /// `host:port` other managers reach this node's raft service on.
    pub addr: String,
    pub config: RaftConfig,
    pub channels: Arc<dyn ChannelProvider>,
    /// Largest encoded transaction [`Store::propose`] accepts.
    pub max_write_bytes: u64,
    /// Recover from a lost quorum: become the only voter, keeping the state (see
    /// `recover`). Fails if the store holds no cluster state.
    pub force_new_cluster: bool,
    /// Where the store reports its term, indexes, leadership and write latency.
    pub metrics: mesh_common::metrics::RaftMetrics,
}

/// Handle to the raft store. Cheap to clone; all clones share one raft node.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    raft_id: u64,
    addr: String,
    config: RaftConfig,
    raft: Raft,
    shared: Arc<Shared>,
    committed: Arc<Mutex<Option<u64>>>,
    leader: watch::Receiver<Option<LeaderInfo>>,
    update_lock: tokio::sync::Mutex<()>,
    membership_lock: tokio::sync::Mutex<()>,
    max_write_bytes: u64,
    /// Closed when the database is dropped (its file lock released).
    disk_closed: watch::Receiver<()>,
    metrics: mesh_common::metrics::RaftMetrics,
}

impl Store {
    /// Opens the store in `opts.dir`, resuming from its files when present
    /// (snapshot, log, vote), and starts the raft node. A fresh store is
    /// not part of any cluster until [`Store::initialize`] or until a
    /// leader adds it.
    pub async fn open(opts: StoreOptions) -> Result<Store, StoreError> {
        let config = openraft_config(&opts.config)?;
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| StoreError::storage("create store directory", e))?;
        let (closed_tx, disk_closed) = watch::channel(());
        let disk = Disk::open(&opts.dir.join(DB_FILE), closed_tx)
            .map_err(|e| StoreError::storage("open raft database", e))?;
        if opts.force_new_cluster {
            match recover::force_single_voter(&disk, opts.raft_id, &opts.addr)
                .await
                .map_err(|e| StoreError::storage("write the forced membership", e))?
            {
                recover::Recovered::At(log_id) => tracing::warn!(
                    raft_id = opts.raft_id,
                    %log_id,
                    "forcing a new cluster: this manager is now the only voter, with the state it holds"
                ),
                recover::Recovered::Empty => {
                    return Err(StoreError::storage(
                        "force a new cluster",
                        "this manager's raft store holds no cluster state",
                    ));
                }
            }
        }
        let log_store = LogStore::new(Arc::clone(&disk))
            .map_err(|e| StoreError::storage("read raft log state", e))?;
        let committed = log_store.committed_index();
        let (sm, shared) = StateMachine::open(Arc::clone(&disk))
            .map_err(|e| StoreError::storage("restore raft snapshot", e))?;
        drop(disk);
        let network = NetworkFactory {
            channels: opts.channels,
            // Retry an unreachable peer at twice the heartbeat: quick to
            // notice a manager coming back, without spinning on a dead one.
            backoff: opts.config.heartbeat() * 2,
        };
        let raft = Raft::new(opts.raft_id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(fatal)?;
        // The raft core publishes its restored state (term, vote, log,
        // membership) before it serves its first request: after this round
        // trip, metrics and status() no longer show a blank placeholder.
        raft.with_raft_state(|_| ()).await.map_err(fatal)?;

        let mut metrics = raft.metrics();
        let (leader_tx, leader) = watch::channel(leader_of(&metrics.borrow_and_update()));
        let raft_id = opts.raft_id;
        let exported = opts.metrics.clone();
        exported.set(sample_of(&raft.metrics().borrow(), &committed));
        let committed_index = committed.clone();
        // Follows openraft's metrics until the raft core drops its sender
        // (shutdown), then reports "no leader". The exported metrics follow
        // the same changes: every commit is followed by an apply, which
        // openraft's metrics report.
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let (now, sample) = {
                    let m = metrics.borrow_and_update();
                    (leader_of(&m), sample_of(&m, &committed_index))
                };
                exported.set(sample);
                leader_tx.send_if_modified(|cur| {
                    if *cur == now {
                        return false;
                    }
                    match &now {
                        Some(l) => tracing::info!(raft_id, leader = l.raft_id, addr = %l.addr, "raft leader changed"),
                        None => tracing::info!(raft_id, "raft leader unknown"),
                    }
                    exported.leader_changed();
                    *cur = now;
                    true
                });
            }
            leader_tx.send_replace(None);
            exported.stopped();
        });

        tracing::info!(raft_id, addr = %opts.addr, dir = %opts.dir.display(), "raft store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                raft_id,
                addr: opts.addr,
                config: opts.config,
                raft,
                shared,
                committed,
                leader,
                update_lock: tokio::sync::Mutex::new(()),
                membership_lock: tokio::sync::Mutex::new(()),
                max_write_bytes: opts.max_write_bytes,
                disk_closed,
                metrics: opts.metrics,
            }),
        })
    }

    /// Bootstraps a cluster whose only voter is this manager (the first
    /// manager, at `mesh init`), and waits until it leads. A store that is
    /// already part of a cluster is left as it is.
    pub async fn initialize(&self) -> Result<(), StoreError> {
        let members = BTreeMap::from([(self.inner.raft_id, BasicNode::new(&self.inner.addr))]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::debug!(error = %e, "raft store already initialized");
                return Ok(());
            }
            Err(RaftError::APIError(e)) => {
                return Err(StoreError::Raft(format!("initialize raft cluster: {e}")));
            }
            Err(RaftError::Fatal(f)) => return Err(fatal(f)),
        }
        let timeout = self.inner.config.write_timeout();
        match self
            .inner
            .raft
            .wait(Some(timeout))
            .state(ServerState::Leader, "initialize")
            .await
        {
            Ok(_) => Ok(()),
            Err(WaitError::Timeout(..)) => Err(StoreError::NoQuorum { waited: timeout }),
            Err(WaitError::ShuttingDown) => Err(StoreError::Shutdown),
        }
    }

    pub fn raft_id(&self) -> u64 {
        self.inner.raft_id
    }

    /// `host:port` of this manager's raft endpoint.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Reads the locally applied state: no round trip, possibly behind the
    /// leader. `f` runs under the state's read lock: keep it short, do not
    /// block, and do not call back into the store.
    pub fn read<R>(&self, f: impl FnOnce(&StoreState) -> R) -> R {
        self.inner.shared.read(f)
    }

    /// Reads the state after confirming with a quorum that this manager
    /// still leads and has applied everything committed before the call:
    /// linearizable. Leader only; bounded by the write timeout.
    pub async fn read_consistent<R>(
        &self,
        f: impl FnOnce(&StoreState) -> R,
    ) -> Result<R, StoreError> {
        let timeout = self.inner.config.write_timeout();
        let start = Instant::now();
        // A quorum that did not answer one round of heartbeats in time (a busy machine, a
        // lost packet) is asked again until the write timeout: only a quorum still missing
        // then means there is none.
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.inner.raft.ensure_linearizable()).await {
                Err(_) => return Err(StoreError::NoQuorum { waited: timeout }),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(StoreError::NotLeader {
                        leader: f
                            .leader_id
                            .zip(f.leader_node)
                            .map(|(raft_id, n)| LeaderInfo {
                                raft_id,
                                addr: n.addr,
                            }),
                    });
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    tracing::debug!(error = %e, "consistent read without quorum yet");
                    if start.elapsed() + self.inner.config.heartbeat() >= timeout {
                        return Err(StoreError::NoQuorum {
                            waited: start.elapsed(),
                        });
                    }
                    tokio::time::sleep(self.inner.config.heartbeat()).await;
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(fatal(f)),
                Ok(Ok(_)) => return Ok(self.read(f)),
            }
        }
    }

    /// Replicates `txn` and returns the log index it applied at (the new
    /// `version` of every object it put). Leader only. `Err(Conflict)` when
    /// a precondition failed (nothing applied); `Err(NoQuorum)` when it
    /// could not commit within the write timeout (it may still commit
    /// later). An empty transaction is not replicated: it returns the
    /// current applied index.
    pub async fn propose(&self, txn: Transaction) -> Result<u64, StoreError> {
        if txn.ops.is_empty() {
            return Ok(*self.inner.shared.applied.borrow());
        }
        state::validate(&txn).map_err(StoreError::Invalid)?;
        let size = prost::Message::encoded_len(&txn) as u64;
        if size > self.inner.max_write_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.inner.max_write_bytes,
            });
        }
        let timeout = self.inner.config.write_timeout();
        let start = Instant::now();
        let resp =
            match tokio::time::timeout(timeout, self.inner.raft.client_write(StoreRequest(txn)))
                .await
            {
                Err(_) => return Err(StoreError::NoQuorum { waited: timeout }),
                Ok(res) => res.map_err(write_error)?,
            };
        // client_write returns once the entry is applied here (a failed precondition is
        // an applied entry too).
        self.inner.metrics.write_applied(start.elapsed());
        if resp.data.0.conflict.is_empty() {
            Ok(resp.log_id.index)
        } else {
            Err(StoreError::Conflict(resp.data.0.conflict))
        }
    }

    /// Read-compute-propose: runs `f` on the local state and proposes the
    /// transaction it returns, recomputing when a precondition lost a race
    /// (up to a few times). Updates on this manager are serialized, so
    /// they do not race each other. `f` must set `expect_version` on what
    /// it read, or a retry cannot help. `f` runs as in [`Store::read`].
    pub async fn update<F, E>(&self, mut f: F) -> Result<u64, E>
    where
        F: FnMut(&StoreState) -> Result<Transaction, E>,
        E: From<StoreError>,
    {
        let _serialized = self.inner.update_lock.lock().await;
        let mut attempt = 1;
        loop {
            let txn = self.read(&mut f)?;
            match self.propose(txn).await {
                Err(StoreError::Conflict(c)) if attempt < UPDATE_ATTEMPTS => {
                    tracing::debug!(attempt, conflict = %c, "store update lost a race, retrying");
                    attempt += 1;
                }
                res => return res.map_err(E::from),
            }
        }
    }

    /// Last applied log index; changes after every apply, including a
    /// snapshot install. Use it to wake loops that re-read the state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.applied.subscribe()
    }

    pub fn leader(&self) -> Option<LeaderInfo> {
        self.inner.leader.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader as it changes (`None` while unknown or after shutdown).
    pub fn watch_leader(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.inner.leader.clone()
    }

    pub fn status(&self) -> RaftStatus {
        let committed = *self
            .inner
            .committed
            .lock()
            .expect("committed index lock poisoned");
        status_of(&self.inner.raft.metrics().borrow(), committed)
    }

    /// Waits until `pred` holds for [`Store::status`], up to `timeout`.
    /// Returns the last status seen, in `Err` if the wait timed out or the
    /// store shut down.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&RaftStatus) -> bool,
    ) -> Result<RaftStatus, RaftStatus> {
        let mut metrics = self.inner.raft.metrics();
        let mut applied = self.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if pred(&status) {
                return Ok(status);
            }
            // The committed index is not in openraft's metrics: wake on
            // applies too, which follow every commit.
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return Err(status) },
                _ = applied.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(self.status()),
            }
        }
    }

    /// Makes `raft_id` (reachable at `addr`) a voter. Leader only;
    /// idempotent. A new node first joins as a learner and must catch up
    /// (by log or snapshot) before it becomes a voter, so it does not hold
    /// up commits. An address change of an existing member is recorded.
    pub async fn add_voter(&self, raft_id: u64, addr: String) -> Result<(), StoreError> {
        let _serialized = self.inner.membership_lock.lock().await;
        self.ensure_leader()?;
        let raft = &self.inner.raft;
        let timeout = self.inner.config.write_timeout();
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let node = BasicNode::new(&addr);

        if let Some(known) = membership.get_node(&raft_id)
            && known.addr != addr
        {
            tracing::info!(raft_id, old = %known.addr, new = %addr, "raft member address changed");
            let change = ChangeMembers::SetNodes(BTreeMap::from([(raft_id, node.clone())]));
            self.change_membership(change, "update raft member address")
                .await?;
        }
        if membership.voter_ids().any(|id| id == raft_id) {
            return Ok(());
        }

        let added =
            match tokio::time::timeout(timeout, raft.add_learner(raft_id, node, false)).await {
                Err(_) => return Err(StoreError::NoQuorum { waited: timeout }),
                Ok(res) => res.map_err(write_error)?,
            };
        let wanted = added.log_id.index;
        let catch_up = timeout * CATCH_UP_WRITE_TIMEOUTS;
        tracing::info!(raft_id, %addr, "raft learner added, waiting for it to catch up");
        let caught_up = raft
            .wait(Some(catch_up))
            .metrics(
                |m| {
                    m.state != ServerState::Leader
                        || m.replication
                            .as_ref()
                            .and_then(|r| r.get(&raft_id).cloned().flatten())
                            .is_some_and(|matched| matched.index >= wanted)
                },
                "learner caught up",
            )
            .await;
        match caught_up {
            Ok(m) if m.state != ServerState::Leader => {
                return Err(StoreError::NotLeader {
                    leader: leader_of(&m),
                });
            }
            Ok(_) => {}
            Err(WaitError::Timeout(..)) => {
                return Err(StoreError::CatchUp {
                    raft_id,
                    waited: catch_up,
                });
            }
            Err(WaitError::ShuttingDown) => return Err(StoreError::Shutdown),
        }
        self.change_membership(
            ChangeMembers::AddVoterIds([raft_id].into()),
            "add raft voter",
        )
        .await?;
        tracing::info!(raft_id, %addr, "raft voter added");
        Ok(())
    }

    /// Removes `raft_id` from the cluster (voter or learner). Leader only;
    /// absent is success; refuses to remove the last voter. The leader may
    /// remove itself: see the module docs for what follows.
    pub async fn remove_voter(&self, raft_id: u64) -> Result<(), StoreError> {
        let _serialized = self.inner.membership_lock.lock().await;
        self.ensure_leader()?;
        let membership = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        if !voters.contains(&raft_id) {
            if membership.get_node(&raft_id).is_some() {
                let change = ChangeMembers::RemoveNodes([raft_id].into());
                self.change_membership(change, "remove raft learner")
                    .await?;
            }
            return Ok(());
        }
        if voters.len() == 1 {
            return Err(StoreError::LastVoter { raft_id });
        }
        self.change_membership(
            ChangeMembers::RemoveVoters([raft_id].into()),
            "remove raft voter",
        )
        .await?;
        tracing::info!(raft_id, "raft voter removed");
        Ok(())
    }

    /// The `mesh.v1.Raft` gRPC service of this store, to mount on 2377
    /// behind the interceptor that sets [`mesh_common::auth::Caller`].
    pub fn service(&self) -> RaftServer<RaftService> {
        RaftServer::new(RaftService::new(self.clone()))
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }

    /// Stops the raft node and waits (bounded) until its database file is
    /// closed, so the same directory can be opened again. Idempotent.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core ended with an error");
        }
        // The raft core's helper tasks (state machine worker, replication)
        // drop their database handles as they wind down.
        let mut closed = self.inner.disk_closed.clone();
        let wait = self.inner.config.write_timeout();
        if tokio::time::timeout(wait, async { while closed.changed().await.is_ok() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                raft_id = self.inner.raft_id,
                ?wait,
                "raft database still open after shutdown"
            );
        } else {
            tracing::info!(raft_id = self.inner.raft_id, "raft store shut down");
        }
    }

    fn ensure_leader(&self) -> Result<(), StoreError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(StoreError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    /// One bounded membership change: a joint and a uniform config, each a
    /// write, hence twice the write timeout.
    async fn change_membership(
        &self,
        change: ChangeMembers<u64, BasicNode>,
        what: &str,
    ) -> Result<(), StoreError> {
        let timeout = self.inner.config.write_timeout() * 2;
        match tokio::time::timeout(timeout, self.inner.raft.change_membership(change, false)).await
        {
            Err(_) => Err(StoreError::NoQuorum { waited: timeout }),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, what, "raft membership change failed");
                Err(write_error(e))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// What the exported metrics show of `m`.
fn sample_of(m: &RaftMetrics<u64, BasicNode>, committed: &Mutex<Option<u64>>) -> RaftSample {
    let commit_index = committed
        .lock()
        .expect("committed index lock poisoned")
        .unwrap_or(0);
    RaftSample {
        term: m.current_term,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        leader: m.state == ServerState::Leader,
    }
}

fn status_of(m: &RaftMetrics<u64, BasicNode>, committed: Option<u64>) -> RaftStatus {
    let membership = m.membership_config.membership();
    let addr_of = |id: u64| {
        membership
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default()
    };
    let mut voters: Vec<u64> = membership.voter_ids().collect();
    voters.sort_unstable();
    voters.dedup();
    RaftStatus {
        raft_id: m.id,
        state: m.state,
        term: m.current_term,
        last_log_index: m.last_log_index,
        committed,
        applied: m.last_applied.map(|l| l.index),
        snapshot: m.snapshot.map(|l| l.index),
        purged: m.purged.map(|l| l.index),
        leader: leader_of(m),
        voters: voters.into_iter().map(|id| (id, addr_of(id))).collect(),
        learners: membership
            .learner_ids()
            .map(|id| (id, addr_of(id)))
            .collect(),
    }
}
