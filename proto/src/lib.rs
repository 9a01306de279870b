//! Protobuf messages and gRPC services of mesh, generated from `mesh/v1/*.proto`.
//!
//! The files are split by audience: `objects` (what the raft store holds),
//! `raft` (between managers), `ca` (join handshake and certificate renewal),
//! `dispatcher` (agent sessions), `control` (the CLI's API), `logs` (task
//! output, from a node to a manager) and `local` (node-local calls on the
//! unix socket). No logic lives here.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mesh.v1");
}

pub use v1::*;

/// Version of the API the daemons serve: the major version of the `mesh.v1` package.
pub const API_VERSION: &str = "1";

/// Metadata key carrying the leader's control address on a redirect.
pub const LEADER_METADATA_KEY: &str = "mesh-leader";
