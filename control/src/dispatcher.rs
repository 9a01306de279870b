//! Agent sessions. Every node keeps one `Session` stream open to the
//! leader; the first message is the node's full view, and a new one follows
//! each store change that alters it. A follower refuses sessions with the
//! leader's address, and a leader that loses leadership ends them, so agents
//! always talk to the current leader.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use mesh_proto::dispatcher_server::Dispatcher;
use mesh_proto::{
    Assignments, LeaveClusterRequest, LeaveClusterResponse, Network, Peer, PublishMode, RoutedPort,
    SessionMessage, SessionRequest, StoreOp, Task, TaskState, TaskStatus, Transaction,
    UpdateTaskStatusRequest, UpdateTaskStatusResponse, store_op::Op,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use mesh_common::auth::caller;
use mesh_common::task::observed_state;
use mesh_common::time::now_ms;

use crate::error::ControlError;
use crate::objects::manager_addrs;
use crate::store::txn::Batch;
use crate::store::{Store, StoreError, StoreState, txn};

/// The dispatcher needs the store only.
pub struct DispatcherService {
    store: Store,
    /// Bounds of one write of reported statuses.
    batch: Batch,
}

impl DispatcherService {
    pub fn new(store: Store, batch: Batch) -> Self {
        DispatcherService { store, batch }
    }
}

/// Most status updates one report may carry (an agent sends larger sets in several).
pub const MAX_STATUS_UPDATES: usize = 1024;
/// Longest status message or error kept; longer ones are cut (at a character boundary).
pub const MAX_STATUS_TEXT: usize = 1024;

/// `status` with its free text cut to [`MAX_STATUS_TEXT`].
fn bounded_status(mut status: TaskStatus) -> TaskStatus {
    for text in [&mut status.message, &mut status.err] {
        if text.len() > MAX_STATUS_TEXT {
            let mut end = MAX_STATUS_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
    }
    status
}

fn not_leader(store: &Store) -> Status {
    ControlError::Store(StoreError::NotLeader {
        leader: store.leader(),
    })
    .into()
}

/// Tasks assigned to `node_id` (whatever their desired state: the agent
/// must see a shutdown to act on it) and the networks they use. A task
/// placed on the node before it has its addresses (global services) is
/// held back until the allocator gave them.
fn assigned(s: &StoreState, node_id: &str) -> (BTreeMap<String, Task>, BTreeMap<String, Network>) {
    let tasks: BTreeMap<String, Task> = s
        .tasks
        .values()
        .filter(|t| t.node_id == node_id && observed_state(t) != TaskState::New)
        .map(|t| (t.id.clone(), t.clone()))
        .collect();
    // Every node has its ingress sandbox on the ingress network.
    let ingress = s.nodes.get(node_id).and_then(|n| n.ingress.as_ref());
    let networks = tasks
        .values()
        .flat_map(|t| t.networks.iter())
        .chain(ingress)
        .filter_map(|a| s.networks.get(&a.network_id))
        .map(|n| (n.id.clone(), n.clone()))
        .collect();
    (tasks, networks)
}

/// What the agent was last sent: object id -> version.
#[derive(Default)]
struct Sent {
    tasks: BTreeMap<String, u64>,
    networks: BTreeMap<String, u64>,
}

impl Sent {
    /// The delta from what was sent to `now` (everything when `full`).
    fn delta(
        &mut self,
        full: bool,
        tasks: BTreeMap<String, Task>,
        networks: BTreeMap<String, Network>,
    ) -> Assignments {
        let mut a = Assignments {
            full,
            ..Default::default()
        };
        a.removed_tasks = self
            .tasks
            .keys()
            .filter(|id| !tasks.contains_key(*id))
            .cloned()
            .collect();
        a.removed_networks = self
            .networks
            .keys()
            .filter(|id| !networks.contains_key(*id))
            .cloned()
            .collect();
        self.tasks.retain(|id, _| tasks.contains_key(id));
        self.networks.retain(|id, _| networks.contains_key(id));
        for (id, t) in tasks {
            if full || self.tasks.get(&id) != Some(&t.version) {
                self.tasks.insert(id, t.version);
                a.tasks.push(t);
            }
        }
        for (id, n) in networks {
            if full || self.networks.get(&id) != Some(&n.version) {
                self.networks.insert(id, n.version);
                a.networks.push(n);
            }
        }
        if full {
            a.removed_tasks.clear();
            a.removed_networks.clear();
        }
        a
    }
}

fn is_empty(a: &Assignments) -> bool {
    a.tasks.is_empty()
        && a.removed_tasks.is_empty()
        && a.networks.is_empty()
        && a.removed_networks.is_empty()
}

/// What node `node_id` should know, or `None` once it is no member.
pub fn session_message(s: &StoreState, node_id: &str) -> Option<SessionMessage> {
    let node = s.nodes.get(node_id)?.clone();
    let cluster = s.cluster.as_ref()?;
    let peers = s
        .nodes
        .values()
        .map(|n| Peer {
            node_id: n.id.clone(),
            addr: n.addr.clone(),
            gossip_port: n.gossip_port,
            control_port: n.control_port,
            role: n.role,
            ingress: n.ingress.clone(),
        })
        .collect();
    Some(SessionMessage {
        node: Some(node),
        cluster_id: cluster.id.clone(),
        managers: manager_addrs(s),
        gossip_keys: cluster.gossip_keys.clone(),
        peers,
        data_path_port: cluster
            .spec
            .as_ref()
            .map(|c| c.data_path_port)
            .unwrap_or_default(),
        assignments: None,
        routed_ports: routed_ports(s),
        service_names: service_names(s),
    })
}

/// The names and aliases of every service, lower-case, sorted and once each.
fn service_names(s: &StoreState) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for spec in s.services.values().filter_map(|v| v.spec.as_ref()) {
        names.insert(spec.name.to_ascii_lowercase());
        for alias in spec.networks.iter().flat_map(|n| &n.aliases) {
            names.insert(alias.to_ascii_lowercase());
        }
    }
    names.into_iter().collect()
}

/// Every port published through the routing mesh, with its service's ingress VIP.
fn routed_ports(s: &StoreState) -> Vec<RoutedPort> {
    let Some(ingress) = crate::allocator::ingress_network(s) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in s.services.values() {
        let Some(vip) = v.vips.iter().find(|vip| vip.network_id == ingress.id) else {
            continue;
        };
        for p in v
            .ports
            .iter()
            .filter(|p| p.publish_mode() == PublishMode::Ingress)
        {
            out.push(RoutedPort {
                protocol: p.protocol,
                published: p.published_port,
                target: p.target_port,
                vip: vip.addr.clone(),
            });
        }
    }
    out.sort_by_key(|p| (p.published, p.protocol));
    out
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;

fn node_caller<T>(req: &Request<T>, what: &str) -> Result<String, Status> {
    let caller = caller(req)?;
    caller
        .node_id()
        .map(str::to_string)
        .ok_or_else(|| Status::permission_denied(format!("only nodes {what}")))
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let node_id = node_caller(&req, "open sessions")?;
        if !self.store.is_leader() {
            return Err(not_leader(&self.store));
        }
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        debug!(node = %node_id, "agent session opened");
        // The task owns the only sender: it ends when the agent hangs up
        // (send fails / closed), when the node is removed, or when this
        // manager stops leading (the agent then reconnects to the leader).
        tokio::spawn(async move {
            let mut changes = store.subscribe();
            let mut leader = store.watch_leader();
            let mut last: Option<SessionMessage> = None;
            let mut sent = Sent::default();
            loop {
                if !store.is_leader() {
                    let _ = tx.send(Err(not_leader(&store))).await;
                    break;
                }
                let (msg, tasks, networks) = store.read(|s| {
                    let (tasks, networks) = assigned(s, &node_id);
                    (session_message(s, &node_id), tasks, networks)
                });
                let Some(msg) = msg else {
                    let removed = store.read(|s| {
                        s.cluster
                            .as_ref()
                            .is_some_and(|c| c.removed_nodes.contains(&node_id))
                    });
                    let gone = if removed {
                        Status::unauthenticated(format!(
                            "node {node_id} was removed from the cluster"
                        ))
                    } else {
                        Status::unavailable(format!(
                            "node {node_id} is not known to this manager yet; retry"
                        ))
                    };
                    let _ = tx.send(Err(gone)).await;
                    break;
                };
                let full = last.is_none();
                let delta = sent.delta(full, tasks, networks);
                if full || last.as_ref() != Some(&msg) || !is_empty(&delta) {
                    let mut out = msg.clone();
                    out.assignments = Some(delta);
                    if tx.send(Ok(out)).await.is_err() {
                        break;
                    }
                    last = Some(msg);
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    r = leader.changed() => if r.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            debug!(node = %node_id, "agent session closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let node_id = node_caller(&req, "report task status")?;
        let updates = req.into_inner().updates;
        if updates.len() > MAX_STATUS_UPDATES {
            return Err(Status::invalid_argument(format!(
                "{} status updates in one report; at most {MAX_STATUS_UPDATES}",
                updates.len()
            )));
        }
        let now = now_ms();
        // Written in bounded batches: each pass writes the updates not yet stored.
        loop {
            let mut more = false;
            self.store
                .update(|s| {
                    let mut ops: Vec<StoreOp> = updates
                        .iter()
                        .filter_map(|u| {
                            // A node reports only its own tasks; reports of deleted tasks are moot.
                            let t = s.tasks.get(&u.task_id).filter(|t| t.node_id == node_id)?;
                            let status = bounded_status(u.status.clone()?);
                            let same = t.status.as_ref().is_some_and(|cur| {
                                cur.state == status.state
                                    && cur.message == status.message
                                    && cur.err == status.err
                                    && cur.exit_code == status.exit_code
                                    && cur.restarts == status.restarts
                            });
                            if same {
                                return None;
                            }
                            let mut t = t.clone();
                            t.status = Some(status);
                            t.updated_at_ms = now;
                            Some(txn::put_if_unchanged(t))
                        })
                        .collect();
                    let all = ops.len();
                    self.batch.limit(&mut ops);
                    more = ops.len() < all;
                    Ok::<_, ControlError>(Transaction { ops })
                })
                .await?;
            if !more {
                break;
            }
        }
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    /// Removes the calling node; a manager also gives up its raft vote
    /// (after its node object is gone, so the leader can still commit if
    /// the leaver is the leader itself).
    async fn leave(
        &self,
        req: Request<LeaveClusterRequest>,
    ) -> Result<Response<LeaveClusterResponse>, Status> {
        let node_id = node_caller(&req, "leave")?;
        let node = self
            .store
            .read(|s| s.nodes.get(&node_id).cloned())
            .ok_or_else(|| {
                Status::not_found(format!("node {node_id} is not a member of this cluster"))
            })?;
        let voters = self.store.status().voters;
        let is_voter = voters.iter().any(|(id, _)| *id == node.raft_id);
        if is_voter && voters.len() <= 1 {
            return Err(Status::failed_precondition(
                "the last manager cannot leave through the cluster",
            ));
        }
        self.store
            .update(|s| {
                let Some(n) = s.nodes.get(&node_id) else {
                    return Ok::<_, ControlError>(Transaction { ops: vec![] });
                };
                let mut cluster = s
                    .cluster
                    .clone()
                    .ok_or_else(|| ControlError::Internal("cluster object missing".into()))?;
                cluster.removed_nodes.push(node_id.clone());
                Ok(Transaction {
                    ops: vec![
                        StoreOp {
                            op: Some(Op::DeleteNode(node_id.clone())),
                            expect_version: Some(n.version),
                        },
                        txn::put_if_unchanged(cluster),
                    ],
                })
            })
            .await?;
        if is_voter {
            // The roles loop would do it too; doing it now makes leave prompt.
            if let Err(e) = self.store.remove_voter(node.raft_id).await {
                debug!(error = %e, "leaving manager's vote will be removed by the roles loop");
            }
        }
        info!(node = %node_id, "node left the cluster");
        Ok(Response::new(LeaveClusterResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::{NetworkAttachmentConfig, Service, ServiceSpec};

    use super::*;

    #[test]
    fn every_service_name_and_alias_is_sent_once_in_lower_case() {
        let mut s = StoreState::default();
        let service = |id: &str, name: &str, aliases: &[&str]| Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                networks: vec![NetworkAttachmentConfig {
                    target: "appnet".into(),
                    aliases: aliases.iter().map(|a| a.to_string()).collect(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        for svc in [
            service("s1", "Web", &["www", "front"]),
            service("s2", "db", &["WWW"]),
        ] {
            s.services.insert(svc.id.clone(), svc);
        }
        assert_eq!(service_names(&s), ["db", "front", "web", "www"]);
        assert!(service_names(&StoreState::default()).is_empty());
    }
}
