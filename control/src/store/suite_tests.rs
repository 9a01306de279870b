//! openraft's storage test Suite against the redb log store and state
//! machine, plus reopen tests the Suite does not cover.

use std::sync::Arc;

use mesh_proto::{Cluster, Node};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;
use tokio::sync::watch;

use super::disk::Disk;
use super::log_store::LogStore;
use super::state::txn::{of, put_cluster, put_node};
use super::state_machine::{Shared, StateMachine};
use super::types::{Entry, LogId, StorageError, StoreRequest, TypeConfig, Vote};

struct Builder;

fn open_at(dir: &TempDir) -> (LogStore, StateMachine, Arc<Shared>) {
    let disk =
        Disk::open(&dir.path().join("raft.redb"), watch::channel(()).0).expect("open database");
    let log = LogStore::new(Arc::clone(&disk)).expect("open log store");
    let (sm, shared) = StateMachine::open(disk).expect("open state machine");
    (log, sm, shared)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm, _) = open_at(&dir);
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId {
        leader_id: CommittedLeaderId::new(term, 1),
        index,
    }
}

fn normal(term: u64, index: u64, txn: mesh_proto::Transaction) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(StoreRequest(txn)),
    }
}

/// Appends through openraft's callback path and waits for the flush.
async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn log_vote_committed_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (mut log, mut sm, shared) = open_at(&dir);
        log.save_vote(&Vote::new_committed(4, 1))
            .await
            .expect("save vote");
        let entries = vec![
            normal(
                4,
                1,
                of([put_cluster(Cluster {
                    id: "c".into(),
                    ..Default::default()
                })]),
            ),
            normal(
                4,
                2,
                of([put_node(Node {
                    id: "a".into(),
                    ..Default::default()
                })]),
            ),
            normal(
                4,
                3,
                of([put_node(Node {
                    id: "b".into(),
                    ..Default::default()
                })]),
            ),
        ];
        append(&mut log, entries.clone()).await;
        log.save_committed(Some(log_id(4, 3)))
            .await
            .expect("save committed");
        sm.apply(entries[..2].to_vec()).await.expect("apply");
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(4, 2)));
        log.purge(log_id(4, 1)).await.expect("purge");
        assert_eq!(*shared.applied.borrow(), 2);
    }

    let (mut log, mut sm, shared) = open_at(&dir);
    assert_eq!(
        log.read_vote().await.expect("read vote"),
        Some(Vote::new_committed(4, 1))
    );
    assert_eq!(
        log.read_committed().await.expect("read committed"),
        Some(log_id(4, 3))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(4, 1)));
    assert_eq!(state.last_log_id, Some(log_id(4, 3)));
    let entries = log.try_get_log_entries(0..10).await.expect("read logs");
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![2, 3]
    );

    // The state machine comes back from the snapshot, not from the log.
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(4, 2)));
    assert_eq!(*shared.applied.borrow(), 2);
    shared.read(|s| {
        assert_eq!(s.cluster.as_ref().map(|c| c.version), Some(1));
        assert_eq!(s.nodes.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(s.nodes["a"].version, 2);
    });
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(4, 2)));
}

#[tokio::test]
async fn older_built_snapshot_does_not_replace_an_installed_newer_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm, _) = open_at(&dir);
    sm.apply(vec![normal(
        1,
        1,
        of([put_node(Node {
            id: "old".into(),
            ..Default::default()
        })]),
    )])
    .await
    .expect("apply");
    // A builder taken now, run after a newer snapshot got installed.
    let mut stale = sm.get_snapshot_builder().await;

    let (_l2, mut leader_sm, _) = open_at(&tempfile::tempdir().expect("temp dir"));
    leader_sm
        .apply(vec![normal(
            2,
            5,
            of([put_node(Node {
                id: "new".into(),
                ..Default::default()
            })]),
        )])
        .await
        .expect("apply");
    let newer = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    sm.install_snapshot(&newer.meta, newer.snapshot)
        .await
        .expect("install");

    stale.build_snapshot().await.expect("stale build");
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(2, 5)));
}

#[tokio::test]
async fn empty_and_inverted_log_ranges_read_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, _, _) = open_at(&dir);
    let entries: Vec<Entry> = (1..=5)
        .map(|i| Entry {
            log_id: log_id(1, i),
            payload: EntryPayload::Blank,
        })
        .collect();
    append(&mut log, entries).await;
    assert!(
        log.try_get_log_entries(3..3)
            .await
            .expect("empty")
            .is_empty()
    );
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = log.try_get_log_entries(5..3).await.expect("inverted");
    assert!(inverted.is_empty());
    assert_eq!(log.try_get_log_entries(4..).await.expect("tail").len(), 2);
}
