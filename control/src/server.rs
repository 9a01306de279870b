//! Authentication on 2377: turns the TLS client certificate into a
//! [`Caller`] in the request extensions, and refuses calls a policy does
//! not allow before they reach a handler.

use mesh_proto::NodeRole;
use tonic::{Request, Status};

use crate::store::Store;
use mesh_common::auth::Caller;
use mesh_common::pki;

/// Metadata naming the node a manager relays a control request for.
pub const ON_BEHALF_OF_KEY: &str = "mesh-on-behalf-of";

/// What a service requires of its callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No certificate needed (the join handshake); a caller is still
    /// identified when it presents one.
    Open,
    /// A certificate of a current member of the cluster.
    Member,
    /// A manager certificate (raft traffic between managers).
    Manager,
}

/// Checks client certificates against the cluster id and the store.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    cluster_id: String,
}

impl Authenticator {
    pub fn new(store: Store, cluster_id: String) -> Authenticator {
        Authenticator { store, cluster_id }
    }

    /// An interceptor enforcing `policy`.
    pub fn interceptor(
        &self,
        policy: Policy,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let auth = self.clone();
        move |mut req: Request<()>| {
            match auth.identify(&req, policy)? {
                Some(caller) => {
                    let caller = auth.relayed_for(&req, caller)?;
                    req.extensions_mut().insert(caller);
                }
                None if policy != Policy::Open => {
                    return Err(Status::unauthenticated(
                        "a client certificate of this cluster is required",
                    ));
                }
                None => {}
            }
            Ok(req)
        }
    }

    /// A manager relaying a request for another node: the request is that
    /// node's, with the role the store gives it. Only managers may relay;
    /// the header from anyone else is refused.
    fn relayed_for(&self, req: &Request<()>, caller: Caller) -> Result<Caller, Status> {
        let Some(origin) = req.metadata().get(ON_BEHALF_OF_KEY) else {
            return Ok(caller);
        };
        let origin = origin
            .to_str()
            .map_err(|_| Status::invalid_argument("malformed relayed caller"))?;
        if !caller.is_manager() {
            return Err(Status::permission_denied(
                "only managers relay requests for other nodes",
            ));
        }
        let role = self
            .store
            .read(|s| s.nodes.get(origin).map(|n| n.role()))
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "node {origin} is not known to this manager yet; retry"
                ))
            })?;
        Ok(Caller::Node {
            node_id: origin.to_string(),
            role,
            cluster_id: self.cluster_id.clone(),
        })
    }

    fn identify(&self, req: &Request<()>, policy: Policy) -> Result<Option<Caller>, Status> {
        let Some(certs) = req.peer_certs() else {
            return Ok(None);
        };
        let Some(leaf) = certs.first() else {
            return Ok(None);
        };
        let id = pki::parse_cert_der(leaf)
            .map_err(|e| Status::unauthenticated(format!("unusable client certificate: {e}")))?;
        if id.cluster_id != self.cluster_id {
            return Err(Status::unauthenticated(format!(
                "client certificate is for cluster {}, not {}",
                id.cluster_id, self.cluster_id
            )));
        }
        let (removed, stored) = self.store.read(|s| {
            let removed = s
                .cluster
                .as_ref()
                .is_some_and(|c| c.removed_nodes.contains(&id.node_id));
            let stored = s
                .nodes
                .get(&id.node_id)
                .map(|n| (n.role(), n.spec.as_ref().map(|s| s.desired_role())));
            (removed, stored)
        });
        if removed {
            return Err(Status::unauthenticated(format!(
                "node {} was removed from the cluster",
                id.node_id
            )));
        }
        // The store has the last word on roles: a demoted node keeps a
        // manager certificate until it renews, but is a worker already.
        let role = match stored {
            Some((role, desired)) => {
                let store_says_manager =
                    role == NodeRole::Manager || desired == Some(NodeRole::Manager);
                if id.role == NodeRole::Manager && store_says_manager {
                    NodeRole::Manager
                } else {
                    NodeRole::Worker
                }
            }
            // A manager that is joining has an empty store until raft has
            // replicated it: its raft peers are trusted on their certificate.
            None if policy == Policy::Manager && self.store.read(|s| s.cluster.is_none()) => {
                id.role
            }
            // Not removed, but not in this manager's store: it may be behind
            // (restarting, or the join not applied yet). Retryable, and not
            // a reason for the node to forget its membership.
            None => {
                return Err(Status::unavailable(format!(
                    "node {} is not known to this manager yet; retry",
                    id.node_id
                )));
            }
        };
        if policy == Policy::Manager && role != NodeRole::Manager {
            return Err(Status::permission_denied(format!(
                "node {} is not a manager",
                id.node_id
            )));
        }
        Ok(Some(Caller::Node {
            node_id: id.node_id,
            role,
            cluster_id: id.cluster_id,
        }))
    }
}
