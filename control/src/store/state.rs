//! The typed state machine: what the store holds, and how a
//! [`Transaction`] applies to it. Pure: no I/O, no raft; the raft state
//! machine calls [`StoreState::apply`] with the entry's log index.
//!
//! Semantics of a transaction:
//! - every op's `expect_version` is checked first, against the state
//!   *before* the transaction (unset = no check; `0` = the object must not
//!   exist; `n` = its current version must be `n`);
//! - if any check fails nothing is applied and the result names the first
//!   failure: `"<kind> <id>: expected version X, found Y"` (`found 0` = absent);
//! - otherwise every op applies in order, and every object put gets the
//!   entry's log index as its `version`. Deleting an absent object is a no-op.
//!
//! Adding an object kind: a map field, a [`StoredObject`] impl, one line per
//! op in `StoreState::target` and `StoreState::apply_op`, and a field in
//! the snapshot conversion.

use std::collections::BTreeMap;

use mesh_proto::{
    Cluster, Network, Node, Service, StoreOp, StoreSnapshot, Task, Transaction, TransactionResult,
    store_op::Op,
};
use prost::Message;

/// The managers' desired state, as applied from the raft log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreState {
    /// The singleton cluster object (absent until `mesh init` writes it).
    pub cluster: Option<Cluster>,
    /// Nodes by node id.
    pub nodes: BTreeMap<String, Node>,
    /// Networks by network id.
    pub networks: BTreeMap<String, Network>,
    /// Services by service id.
    pub services: BTreeMap<String, Service>,
    /// Tasks by task id.
    pub tasks: BTreeMap<String, Task>,
}

/// An object kept in the store: identified by `id`, versioned by the log
/// index of the write that last changed it.
pub trait StoredObject: Clone {
    /// Name used in conflict messages.
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn version(&self) -> u64;
    fn set_version(&mut self, version: u64);
    /// The op that puts this object.
    fn put_op(self) -> Op;
    /// The op that deletes the object `id` of this kind.
    fn delete_op(id: String) -> Op;
}

macro_rules! stored_object {
    ($ty:ty, $kind:literal, $put:ident, $delete:ident) => {
        impl StoredObject for $ty {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn set_version(&mut self, version: u64) {
                self.version = version;
            }
            fn put_op(self) -> Op {
                Op::$put(self)
            }
            fn delete_op(id: String) -> Op {
                Op::$delete(id)
            }
        }
    };
}

stored_object!(Node, "node", PutNode, DeleteNode);
stored_object!(Network, "network", PutNetwork, DeleteNetwork);
stored_object!(Service, "service", PutService, DeleteService);
stored_object!(Task, "task", PutTask, DeleteTask);

impl StoredObject for Cluster {
    const KIND: &'static str = "cluster";
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, version: u64) {
        self.version = version;
    }
    fn put_op(self) -> Op {
        Op::PutCluster(self)
    }
    fn delete_op(_id: String) -> Op {
        unreachable!("the cluster object is never deleted")
    }
}

/// The object an op touches and its current version (0 = absent).
struct Target<'a> {
    kind: &'static str,
    id: &'a str,
    current: u64,
}

fn current_in<T: StoredObject>(map: &BTreeMap<String, T>, id: &str) -> u64 {
    map.get(id).map_or(0, StoredObject::version)
}

fn put_in<T: StoredObject>(map: &mut BTreeMap<String, T>, mut obj: T, index: u64) {
    obj.set_version(index);
    map.insert(obj.id().to_string(), obj);
}

fn delete_in<T: StoredObject>(map: &mut BTreeMap<String, T>, id: &str) {
    map.remove(id);
}

impl StoreState {
    /// Which object `op` touches. `Err` for a malformed op.
    fn target<'a>(&self, op: &'a StoreOp) -> Result<Target<'a>, String> {
        let target = match op.op.as_ref() {
            None => return Err("op without operation".to_string()),
            Some(Op::PutCluster(c)) => Target {
                kind: Cluster::KIND,
                id: &c.id,
                current: self.cluster.as_ref().map_or(0, StoredObject::version),
            },
            Some(Op::PutNode(n)) => Target {
                kind: Node::KIND,
                id: &n.id,
                current: current_in(&self.nodes, &n.id),
            },
            Some(Op::DeleteNode(id)) => Target {
                kind: Node::KIND,
                id,
                current: current_in(&self.nodes, id),
            },
            Some(Op::PutNetwork(n)) => Target {
                kind: Network::KIND,
                id: &n.id,
                current: current_in(&self.networks, &n.id),
            },
            Some(Op::DeleteNetwork(id)) => Target {
                kind: Network::KIND,
                id,
                current: current_in(&self.networks, id),
            },
            Some(Op::PutService(v)) => Target {
                kind: Service::KIND,
                id: &v.id,
                current: current_in(&self.services, &v.id),
            },
            Some(Op::DeleteService(id)) => Target {
                kind: Service::KIND,
                id,
                current: current_in(&self.services, id),
            },
            Some(Op::PutTask(t)) => Target {
                kind: Task::KIND,
                id: &t.id,
                current: current_in(&self.tasks, &t.id),
            },
            Some(Op::DeleteTask(id)) => Target {
                kind: Task::KIND,
                id,
                current: current_in(&self.tasks, id),
            },
        };
        if target.id.is_empty() {
            return Err(format!("{} op without id", target.kind));
        }
        Ok(target)
    }

    fn apply_op(&mut self, op: Op, index: u64) {
        match op {
            Op::PutCluster(mut c) => {
                c.set_version(index);
                self.cluster = Some(c);
            }
            Op::PutNode(n) => put_in(&mut self.nodes, n, index),
            Op::DeleteNode(id) => delete_in(&mut self.nodes, &id),
            Op::PutNetwork(n) => put_in(&mut self.networks, n, index),
            Op::DeleteNetwork(id) => delete_in(&mut self.networks, &id),
            Op::PutService(v) => put_in(&mut self.services, v, index),
            Op::DeleteService(id) => delete_in(&mut self.services, &id),
            Op::PutTask(t) => put_in(&mut self.tasks, t, index),
            Op::DeleteTask(id) => delete_in(&mut self.tasks, &id),
        }
    }

    /// Checks every precondition of `txn` against the current state.
    /// `Err` carries the conflict message of the first failing op.
    pub fn check(&self, txn: &Transaction) -> Result<(), String> {
        for op in &txn.ops {
            let target = self.target(op)?;
            if let Some(expected) = op.expect_version
                && expected != target.current
            {
                return Err(format!(
                    "{} {}: expected version {}, found {}",
                    target.kind, target.id, expected, target.current
                ));
            }
        }
        Ok(())
    }

    /// Applies `txn` as the log entry at `index`: all ops or none.
    pub fn apply(&mut self, txn: Transaction, index: u64) -> TransactionResult {
        if let Err(conflict) = self.check(&txn) {
            return TransactionResult { conflict };
        }
        for op in txn.ops.into_iter().filter_map(|op| op.op) {
            self.apply_op(op, index);
        }
        TransactionResult::default()
    }

    /// Encodes the whole state as a snapshot payload.
    pub fn to_snapshot(&self) -> Vec<u8> {
        StoreSnapshot {
            cluster: self.cluster.clone(),
            nodes: self.nodes.values().cloned().collect(),
            networks: self.networks.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            tasks: self.tasks.values().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// Decodes a snapshot payload made by [`StoreState::to_snapshot`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<StoreState, prost::DecodeError> {
        let snap = StoreSnapshot::decode(bytes)?;
        Ok(StoreState {
            cluster: snap.cluster,
            nodes: by_id(snap.nodes),
            networks: by_id(snap.networks),
            services: by_id(snap.services),
            tasks: by_id(snap.tasks),
        })
    }
}

fn by_id<T: StoredObject>(objects: Vec<T>) -> BTreeMap<String, T> {
    objects
        .into_iter()
        .map(|o| (o.id().to_string(), o))
        .collect()
}

/// Checks that `txn` is well formed (every op has an operation and an
/// object id), independent of the state.
pub fn validate(txn: &Transaction) -> Result<(), String> {
    let empty = StoreState::default();
    txn.ops
        .iter()
        .try_for_each(|op| empty.target(op).map(|_| ()))
}

/// Small constructors for transactions, so callers and tests read like
/// what they mean.
pub mod txn {
    use mesh_proto::{Cluster, Node, StoreOp, Transaction, store_op::Op};

    use super::StoredObject;

    /// Put `obj` only if nobody changed it since it was read (its current
    /// version is still `obj.version`; 0 = it must not exist yet).
    pub fn put_if_unchanged<T: StoredObject>(obj: T) -> StoreOp {
        let version = obj.version();
        StoreOp {
            op: Some(obj.put_op()),
            expect_version: Some(version),
        }
    }

    /// Delete `obj` only if nobody changed it since it was read.
    pub fn delete_if_unchanged<T: StoredObject>(obj: &T) -> StoreOp {
        StoreOp {
            op: Some(T::delete_op(obj.id().to_string())),
            expect_version: Some(obj.version()),
        }
    }

    /// Put `cluster`, no precondition.
    pub fn put_cluster(cluster: Cluster) -> StoreOp {
        StoreOp {
            op: Some(Op::PutCluster(cluster)),
            expect_version: None,
        }
    }

    /// Put `node`, no precondition.
    pub fn put_node(node: Node) -> StoreOp {
        StoreOp {
            op: Some(Op::PutNode(node)),
            expect_version: None,
        }
    }

    /// Delete node `id`, no precondition.
    pub fn delete_node(id: impl Into<String>) -> StoreOp {
        StoreOp {
            op: Some(Op::DeleteNode(id.into())),
            expect_version: None,
        }
    }

    /// Adds the precondition "current version is `version`" (0 = absent).
    pub fn expect(mut op: StoreOp, version: u64) -> StoreOp {
        op.expect_version = Some(version);
        op
    }

    /// Adds the precondition "the object does not exist yet".
    pub fn create(op: StoreOp) -> StoreOp {
        expect(op, 0)
    }

    /// How much one write of a leader component may hold: at most `objects` operations and
    /// `bytes` encoded (the store refuses larger writes). Bigger changes go in several writes,
    /// each committed before the next is planned.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Batch {
        pub objects: usize,
        pub bytes: usize,
    }

    impl Batch {
        /// Keeps the longest prefix of `ops` within the bounds, and always the first op (a
        /// single op larger than the byte bound is refused by the store, loudly).
        pub fn limit(&self, ops: &mut Vec<StoreOp>) {
            let mut size = 0usize;
            let keep = ops
                .iter()
                .take(self.objects.max(1))
                .take_while(|op| {
                    let len = prost::Message::encoded_len(*op);
                    // Field tag plus length prefix of the op inside the transaction.
                    size += 1 + prost::length_delimiter_len(len) + len;
                    size <= self.bytes
                })
                .count()
                .max(1);
            ops.truncate(keep);
        }
    }

    /// A transaction of `ops`.
    pub fn of(ops: impl IntoIterator<Item = StoreOp>) -> Transaction {
        Transaction {
            ops: ops.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::{NodeRole, NodeSpec};

    use super::txn::*;
    use super::*;

    fn node(id: &str, version: u64) -> Node {
        Node {
            id: id.into(),
            version,
            spec: Some(NodeSpec {
                desired_role: NodeRole::Worker as i32,
                ..Default::default()
            }),
            hostname: format!("{id}.example"),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_keeps_within_its_object_and_byte_bounds_and_never_empties() {
        let ops: Vec<StoreOp> = (0..10)
            .map(|i| put_node(node(&format!("n{i}"), 0)))
            .collect();
        let one = prost::Message::encoded_len(&of([ops[0].clone()]));
        let mut by_count = ops.clone();
        Batch {
            objects: 3,
            bytes: usize::MAX,
        }
        .limit(&mut by_count);
        assert_eq!(by_count.len(), 3);
        let mut by_bytes = ops.clone();
        Batch {
            objects: 100,
            bytes: one * 4,
        }
        .limit(&mut by_bytes);
        assert_eq!(by_bytes.len(), 4);
        assert!(prost::Message::encoded_len(&of(by_bytes)) <= one * 4);
        let mut tiny = ops;
        Batch {
            objects: 100,
            bytes: 1,
        }
        .limit(&mut tiny);
        assert_eq!(
            tiny.len(),
            1,
            "the first op always goes (the store judges it)"
        );
    }

    #[test]
    fn put_sets_version_to_the_log_index() {
        let mut s = StoreState::default();
        let r = s.apply(of([put_node(node("a", 99))]), 7);
        assert_eq!(r.conflict, "");
        assert_eq!(s.nodes["a"].version, 7);
        let r = s.apply(
            of([put_cluster(Cluster {
                id: "c".into(),
                ..Default::default()
            })]),
            8,
        );
        assert_eq!(r.conflict, "");
        assert_eq!(s.cluster.as_ref().map(|c| c.version), Some(8));
    }

    #[test]
    fn create_only_succeeds_once() {
        let mut s = StoreState::default();
        assert_eq!(
            s.apply(of([create(put_node(node("a", 0)))]), 3).conflict,
            ""
        );
        let r = s.apply(of([create(put_node(node("a", 0)))]), 4);
        assert_eq!(r.conflict, "node a: expected version 0, found 3");
        assert_eq!(s.nodes["a"].version, 3);
    }

    #[test]
    fn versioned_update_needs_the_current_version() {
        let mut s = StoreState::default();
        s.apply(of([put_node(node("a", 0))]), 5);
        let mut changed = node("a", 0);
        changed.hostname = "renamed".into();
        let r = s.apply(of([expect(put_node(changed.clone()), 4)]), 6);
        assert_eq!(r.conflict, "node a: expected version 4, found 5");
        assert_eq!(s.nodes["a"].hostname, "a.example");
        let r = s.apply(of([expect(put_node(changed), 5)]), 7);
        assert_eq!(r.conflict, "");
        assert_eq!(s.nodes["a"].hostname, "renamed");
        assert_eq!(s.nodes["a"].version, 7);
    }

    #[test]
    fn conflict_leaves_state_untouched() {
        let mut s = StoreState::default();
        s.apply(of([put_node(node("a", 0)), put_node(node("b", 0))]), 2);
        let before = s.clone();
        // The first two ops would succeed; the last one fails, so none applies.
        let r = s.apply(
            of([
                put_cluster(Cluster {
                    id: "c".into(),
                    ..Default::default()
                }),
                delete_node("a"),
                expect(put_node(node("b", 0)), 1),
            ]),
            3,
        );
        assert_eq!(r.conflict, "node b: expected version 1, found 2");
        assert_eq!(s, before);
    }

    #[test]
    fn cluster_is_a_singleton_checked_by_version() {
        let mut s = StoreState::default();
        let c = Cluster {
            id: "c1".into(),
            ..Default::default()
        };
        assert_eq!(
            s.apply(of([create(put_cluster(c.clone()))]), 1).conflict,
            ""
        );
        let r = s.apply(
            of([create(put_cluster(Cluster {
                id: "c2".into(),
                ..c.clone()
            }))]),
            2,
        );
        assert_eq!(r.conflict, "cluster c2: expected version 0, found 1");
        assert_eq!(s.apply(of([expect(put_cluster(c), 1)]), 3).conflict, "");
        assert_eq!(s.cluster.map(|c| c.version), Some(3));
    }

    #[test]
    fn delete_checks_version_and_absent_is_a_no_op() {
        let mut s = StoreState::default();
        s.apply(of([put_node(node("a", 0))]), 2);
        assert_eq!(
            s.apply(of([expect(delete_node("a"), 1)]), 3).conflict,
            "node a: expected version 1, found 2"
        );
        assert!(s.nodes.contains_key("a"));
        assert_eq!(s.apply(of([expect(delete_node("a"), 2)]), 4).conflict, "");
        assert!(!s.nodes.contains_key("a"));
        assert_eq!(s.apply(of([delete_node("a")]), 5).conflict, "");
    }

    #[test]
    fn malformed_ops_are_refused_without_applying() {
        let mut s = StoreState::default();
        let r = s.apply(
            of([
                put_node(node("a", 0)),
                StoreOp {
                    op: None,
                    expect_version: None,
                },
            ]),
            2,
        );
        assert_eq!(r.conflict, "op without operation");
        let r = s.apply(of([put_node(node("", 0))]), 3);
        assert_eq!(r.conflict, "node op without id");
        assert_eq!(s, StoreState::default());
    }

    #[test]
    fn snapshot_round_trips() {
        let mut s = StoreState::default();
        s.apply(
            of([
                put_cluster(Cluster {
                    id: "c".into(),
                    worker_secret: "w".into(),
                    ..Default::default()
                }),
                put_node(node("a", 0)),
                put_node(node("b", 0)),
            ]),
            9,
        );
        let back = StoreState::from_snapshot(&s.to_snapshot()).expect("decode");
        assert_eq!(back, s);
        assert_eq!(
            StoreState::from_snapshot(&StoreState::default().to_snapshot()).unwrap(),
            StoreState::default()
        );
        assert!(StoreState::from_snapshot(&[0xff, 0xff, 0xff]).is_err());
    }
}
