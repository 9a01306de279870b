//! Who is calling: derived from the TLS client certificate on 2377, or the
//! local administrator on the unix socket. Inserted into request extensions
//! by the server's interceptors; handlers read it with [`Caller::of`].

use mesh_proto::NodeRole;

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
