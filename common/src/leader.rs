//! Following the leader: a manager that is not the raft leader answers with the leader's
//! control address in the [`mesh_proto::LEADER_METADATA_KEY`] metadata of its status.

use mesh_proto::LEADER_METADATA_KEY;
use tonic::Status;

/// The leader's address a status redirects to, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
