//! The scheduler: places allocated, unassigned tasks on ready, active nodes that satisfy
//! the task's constraints and hold fewer than its `--replicas-max-per-node`, spreading each
//! service (over its `spread=` label groups first, then fewest tasks of that service on the
//! node, then fewest tasks overall, then node id, so the choice is deterministic). A task no
//! node can take stays pending with Docker's reason (`no suitable node (...)`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_common::Liveness;
use mesh_common::task::{is_terminal, observed_state};
use mesh_common::time::now_ms;
use mesh_proto::{
    Node, NodeAvailability, NodeStatus, PublishMode, StoreOp, Task, TaskState, TaskStatus,
    Transaction,
};

use crate::allocator::tasks::is_allocated;
use crate::component::Component;
use crate::error::ControlError;
use crate::objects::availability;
use crate::placement::Rules;
use crate::store::txn::Batch;
use crate::store::{Store, StoreState, txn};

/// The (port, protocol) pairs a task publishes in host mode.
fn host_ports_of(t: &Task) -> Vec<(u32, i32)> {
    t.ports
        .iter()
        .filter(|p| p.publish_mode() == PublishMode::Host)
        .map(|p| (p.published_port, p.protocol))
        .collect()
}

/// Why no node could take a task, counted per node as Docker reports it.
#[derive(Default)]
struct Refusals {
    /// Nodes that fail a constraint, and the first such constraint seen.
    constraint: usize,
    first_unmet: Option<String>,
    /// Nodes that already hold `--replicas-max-per-node` tasks of the service.
    full: usize,
    /// Nodes where a host-mode port of the task is taken.
    ports: usize,
}

impl Refusals {
    /// The pending reason shown by `service ps`.
    fn reason(&self, candidates: usize) -> String {
        if candidates == 0 {
            return "no suitable node (no node is ready and active)".into();
        }
        let mut parts = Vec::new();
        if self.constraint > 0 {
            parts.push(format!(
                "scheduling constraints not satisfied on {} node{}: {}",
                self.constraint,
                plural(self.constraint),
                self.first_unmet.as_deref().unwrap_or_default()
            ));
        }
        if self.full > 0 {
            parts.push(format!(
                "max replicas per node reached on {} node{}",
                self.full,
                plural(self.full)
            ));
        }
        if self.ports > 0 {
            parts.push(format!(
                "host-mode port already in use on {} node{}",
                self.ports,
                plural(self.ports)
            ));
        }
        format!("no suitable node ({})", parts.join("; "))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Ops assigning every unplaced task; `ready` says which nodes may take
/// tasks (the leader's liveness view).
pub fn plan(state: &StoreState, ready: &dyn Fn(&str) -> bool, now_ms: i64) -> Vec<StoreOp> {
    // Paused and drained nodes take nothing new.
    let candidates: Vec<&Node> = state
        .nodes
        .values()
        .filter(|n| availability(n) == NodeAvailability::Active)
        .filter(|n| ready(&n.id))
        .collect();
    // Load per node: all active tasks, and per service.
    let mut total: BTreeMap<&str, usize> = candidates.iter().map(|n| (n.id.as_str(), 0)).collect();
    let mut per_service: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    // Host-mode ports taken per node: two tasks cannot bind the same one.
    let mut host_ports: BTreeSet<(String, u32, i32)> = BTreeSet::new();
    for t in state.tasks.values().filter(|t| !t.node_id.is_empty()) {
        if t.desired_state() != TaskState::Running || is_terminal(observed_state(t)) {
            continue;
        }
        if let Some(n) = total.get_mut(t.node_id.as_str()) {
            *n += 1;
        }
        for (port, proto) in host_ports_of(t) {
            host_ports.insert((t.node_id.clone(), port, proto));
        }
        *per_service
            .entry((t.service_id.as_str(), t.node_id.as_str()))
            .or_default() += 1;
    }
    let mut ops = Vec::new();
    let mut unplaced: Vec<_> = state
        .tasks
        .values()
        .filter(|t| t.node_id.is_empty() && t.desired_state() == TaskState::Running)
        // Addresses first: the allocator moves a task on from `New` once it has them.
        .filter(|t| observed_state(t) != TaskState::New && is_allocated(t))
        .collect();
    unplaced.sort_by(|a, b| (&a.service_id, a.slot).cmp(&(&b.service_id, b.slot)));
    for task in unplaced {
        let rules = Rules::of(task.spec.as_ref().and_then(|s| s.placement.as_ref()));
        let wanted = host_ports_of(task);
        let service = task.service_id.as_str();
        let mut refused = Refusals::default();
        let fit: Vec<&Node> = candidates
            .iter()
            .copied()
            .filter(|n| {
                if let Some(c) = rules.unmet(n) {
                    refused.constraint += 1;
                    refused.first_unmet.get_or_insert_with(|| c.to_string());
                    return false;
                }
                let held = per_service.get(&(service, n.id.as_str())).copied();
                if rules.max_per_node > 0 && held.unwrap_or(0) as u64 >= rules.max_per_node {
                    refused.full += 1;
                    return false;
                }
                if wanted
                    .iter()
                    .any(|(port, proto)| host_ports.contains(&(n.id.clone(), *port, *proto)))
                {
                    refused.ports += 1;
                    return false;
                }
                true
            })
            .collect();
        // Spread preferences first (fewest tasks of the service in the node's group, level
        // by level), then fewest of the service on the node, then fewest tasks overall.
        let spread = |n: &Node| -> Vec<usize> {
            (0..rules.spread.len())
                .map(|level| {
                    let group = rules.group(n, level);
                    state
                        .nodes
                        .values()
                        .filter(|m| rules.group(m, level) == group)
                        .map(|m| {
                            per_service
                                .get(&(service, m.id.as_str()))
                                .copied()
                                .unwrap_or(0)
                        })
                        .sum()
                })
                .collect()
        };
        let best = fit.into_iter().min_by_key(|n| {
            (
                spread(n),
                per_service
                    .get(&(service, n.id.as_str()))
                    .copied()
                    .unwrap_or(0),
                total[n.id.as_str()],
                n.id.as_str(),
            )
        });
        let mut t = task.clone();
        t.updated_at_ms = now_ms;
        match best {
            Some(node) => {
                let node = node.id.as_str();
                *total.get_mut(node).expect("candidate has a load entry") += 1;
                for (port, proto) in &wanted {
                    host_ports.insert((node.to_string(), *port, *proto));
                }
                *per_service.entry((service, node)).or_default() += 1;
                t.node_id = node.to_string();
                t.status = Some(TaskStatus {
                    state: TaskState::Assigned as i32,
                    message: "assigned".into(),
                    timestamp_ms: now_ms,
                    ..Default::default()
                });
            }
            None => {
                let why = refused.reason(candidates.len());
                if task
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state() == TaskState::Pending && s.err == why)
                {
                    continue;
                }
                t.status = Some(TaskStatus {
                    state: TaskState::Pending as i32,
                    message: "pending".into(),
                    err: why,
                    timestamp_ms: now_ms,
                    ..Default::default()
                });
            }
        }
        ops.push(txn::put_if_unchanged(t));
    }
    ops
}

/// The scheduler as a leader component; nodes are ready when this leader's gossip says so.
pub struct Scheduler {
    store: Store,
    self_id: String,
    liveness: Arc<dyn Liveness>,
    /// Most objects written at once.
    batch: Batch,
}

impl Scheduler {
    pub fn new(
        store: Store,
        self_id: String,
        liveness: Arc<dyn Liveness>,
        batch: Batch,
    ) -> Scheduler {
        Scheduler {
            store,
            self_id,
            liveness,
            batch,
        }
    }
}

impl Component for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    async fn reconcile(&mut self) -> Result<(), ControlError> {
        let ready = |id: &str| id == self.self_id || self.liveness.status(id) == NodeStatus::Ready;
        self.store
            .update(|s| {
                let mut ops = plan(s, &ready, now_ms());
                self.batch.limit(&mut ops);
                Ok::<_, ControlError>(Transaction { ops })
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::Task;

    use super::*;

    fn node(s: &mut StoreState, id: &str) {
        s.nodes.insert(
            id.into(),
            Node {
                id: id.into(),
                ..Default::default()
            },
        );
    }

    fn task(s: &mut StoreState, id: &str, service: &str, slot: u64, node_id: &str) {
        let mut t = Task {
            id: id.into(),
            service_id: service.into(),
            slot,
            node_id: node_id.into(),
            version: 1,
            ..Default::default()
        };
        t.set_desired_state(TaskState::Running);
        t.status = Some(TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        });
        s.tasks.insert(id.into(), t);
    }

    fn placed(s: &StoreState, ops: Vec<StoreOp>) -> Vec<(String, String)> {
        let mut s = s.clone();
        assert_eq!(s.apply(txn::of(ops), 9).conflict, "");
        let mut v: Vec<_> = s
            .tasks
            .values()
            .map(|t| (t.id.clone(), t.node_id.clone()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spreads_a_service_over_ready_nodes() {
        let mut s = StoreState::default();
        for n in ["a", "b", "c"] {
            node(&mut s, n);
        }
        for (i, id) in ["t1", "t2", "t3", "t4"].iter().enumerate() {
            task(&mut s, id, "web", i as u64 + 1, "");
        }
        let got = placed(&s, plan(&s, &|_| true, 1));
        let on = |n: &str| got.iter().filter(|(_, node)| node == n).count();
        assert_eq!((on("a"), on("b"), on("c")), (2, 1, 1));
    }

    #[test]
    fn prefers_nodes_without_the_service_then_least_loaded() {
        let mut s = StoreState::default();
        for n in ["a", "b", "c"] {
            node(&mut s, n);
        }
        task(&mut s, "x1", "other", 1, "b");
        task(&mut s, "x2", "other", 2, "b");
        task(&mut s, "w1", "web", 1, "a");
        task(&mut s, "w2", "web", 2, "");
        let got = placed(&s, plan(&s, &|_| true, 1));
        assert!(got.contains(&("w2".into(), "c".into())), "{got:?}");
    }

    #[test]
    fn down_nodes_get_nothing_and_no_ready_node_leaves_tasks_pending() {
        let mut s = StoreState::default();
        node(&mut s, "a");
        node(&mut s, "b");
        task(&mut s, "w1", "web", 1, "");
        let got = placed(&s, plan(&s, &|n| n == "b", 1));
        assert_eq!(got, [("w1".to_string(), "b".to_string())]);
        let ops = plan(&s, &|_| false, 1);
        assert_eq!(ops.len(), 1);
        let mut s2 = s.clone();
        s2.apply(txn::of(ops), 9);
        assert_eq!(
            s2.tasks["w1"].status.as_ref().unwrap().state(),
            TaskState::Pending
        );
        assert!(
            plan(&s2, &|_| false, 2).is_empty(),
            "pending tasks are not rewritten every pass"
        );
    }

    #[test]
    fn host_mode_ports_are_never_doubled_on_a_node() {
        let mut s = StoreState::default();
        node(&mut s, "a");
        node(&mut s, "b");
        let host = mesh_proto::PortConfig {
            target_port: 80,
            published_port: 9090,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        };
        for (id, slot) in [("e1", 1), ("e2", 2), ("e3", 3)] {
            task(&mut s, id, "edge", slot, "");
            s.tasks.get_mut(id).unwrap().ports = vec![host];
        }
        let ops = plan(&s, &|_| true, 1);
        let mut s2 = s.clone();
        s2.apply(txn::of(ops), 9);
        let nodes: Vec<&str> = ["e1", "e2"]
            .iter()
            .map(|id| s2.tasks[*id].node_id.as_str())
            .collect();
        assert_eq!(nodes, ["a", "b"]);
        let e3 = &s2.tasks["e3"];
        assert!(e3.node_id.is_empty());
        assert_eq!(e3.status.as_ref().unwrap().state(), TaskState::Pending);
        assert!(
            e3.status.as_ref().unwrap().err.contains("port"),
            "{:?}",
            e3.status
        );
    }

    fn place(s: &mut StoreState, placement: mesh_proto::Placement, n: u64) {
        for slot in 1..=n {
            let id = format!("w{slot}");
            task(s, &id, "web", slot, "");
            s.tasks.get_mut(&id).unwrap().spec = Some(mesh_proto::TaskSpec {
                placement: Some(placement.clone()),
                ..Default::default()
            });
        }
        let ops = plan(s, &|_| true, 1);
        assert_eq!(s.apply(txn::of(ops), 9).conflict, "");
    }

    fn labelled(s: &mut StoreState, id: &str, labels: &[(&str, &str)]) {
        node(s, id);
        s.nodes.get_mut(id).unwrap().spec = Some(mesh_proto::NodeSpec {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        });
    }

    fn count_on(s: &StoreState, nodes: &[&str]) -> usize {
        s.tasks
            .values()
            .filter(|t| nodes.contains(&t.node_id.as_str()))
            .count()
    }

    #[test]
    fn replicas_max_per_node_leaves_the_rest_pending_with_the_reason() {
        let mut s = StoreState::default();
        node(&mut s, "a");
        node(&mut s, "b");
        let p = mesh_proto::Placement {
            max_replicas: 2,
            ..Default::default()
        };
        place(&mut s, p, 5);
        assert_eq!((count_on(&s, &["a"]), count_on(&s, &["b"])), (2, 2));
        let pending: Vec<&Task> = s.tasks.values().filter(|t| t.node_id.is_empty()).collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending[0].status.as_ref().unwrap().err,
            "no suitable node (max replicas per node reached on 2 nodes)"
        );
    }

    #[test]
    fn spread_balances_label_groups_not_nodes() {
        // Zone a has three nodes, zone b one, and one node has no zone (a group of its own):
        // six tasks go two to each group, not one or two to each node.
        let mut s = StoreState::default();
        for n in ["a1", "a2", "a3"] {
            labelled(&mut s, n, &[("zone", "a")]);
        }
        labelled(&mut s, "b1", &[("zone", "b")]);
        labelled(&mut s, "x", &[]);
        let p = mesh_proto::Placement {
            spread: vec!["node.labels.zone".into()],
            ..Default::default()
        };
        place(&mut s, p, 6);
        assert_eq!(count_on(&s, &["a1", "a2", "a3"]), 2);
        assert_eq!(count_on(&s, &["b1"]), 2);
        assert_eq!(count_on(&s, &["x"]), 2);
    }
}
