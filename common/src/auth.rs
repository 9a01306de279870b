//! Who is calling: derived from the TLS client certificate on 2377, or the
//! local administrator on the unix socket. Inserted into request extensions
//! by the server's interceptors; handlers read it with [`Caller::of`]. The
//! checks here need no store (the manager's own, store-backed interceptor is
//! in `mesh-control`).

use mesh_proto::NodeRole;
use tonic::{Request, Status};

use crate::pki;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The local CLI over the daemon's unix socket (file permissions guard it).
    Local,
    /// Another node, authenticated by its certificate.
    Node {
        node_id: String,
        role: NodeRole,
        cluster_id: String,
    },
}

impl Caller {
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Caller> {
        req.extensions().get::<Caller>()
    }

    pub fn is_manager(&self) -> bool {
        match self {
            Caller::Local => true,
            Caller::Node { role, .. } => *role == NodeRole::Manager,
        }
    }

    pub fn node_id(&self) -> Option<&str> {
        match self {
            Caller::Local => None,
            Caller::Node { node_id, .. } => Some(node_id),
        }
    }
}

/// The interceptor of services every node serves on its control port, also
/// workers (task output): the caller must present a manager certificate of
/// cluster `cluster_id`. It needs no store, so the certificate's role is
/// trusted as issued: a demoted manager keeps this access until its agent
/// renews into a worker certificate (within one renewal check).
pub fn managers_by_certificate(
    cluster_id: String,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let leaf = req
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| Status::unauthenticated("a manager certificate is required"))?;
        let id = pki::parse_cert_der(&leaf)
            .map_err(|e| Status::unauthenticated(format!("unusable client certificate: {e}")))?;
        if id.cluster_id != cluster_id {
            return Err(Status::unauthenticated(format!(
                "client certificate is for cluster {}, not {cluster_id}",
                id.cluster_id
            )));
        }
        if id.role != NodeRole::Manager {
            return Err(Status::permission_denied(format!(
                "node {} is not a manager",
                id.node_id
            )));
        }
        Ok(req)
    }
}

/// The caller a handler was given by the interceptor.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    Caller::of(req)
        .cloned()
        .ok_or_else(|| Status::unauthenticated("a client certificate of this cluster is required"))
}

/// Refuses callers that are not managers (or the local administrator).
pub fn require_manager(caller: &Caller) -> Result<(), Status> {
    if caller.is_manager() {
        return Ok(());
    }
    let who = caller.node_id().unwrap_or("caller");
    Err(Status::permission_denied(format!(
        "node {who} is a worker: run this command on a manager node"
    )))
}
