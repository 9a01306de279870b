//! Errors of the raft store, and their one mapping to `tonic::Status`.

use std::time::Duration;

use tonic::metadata::MetadataValue;

use super::LeaderInfo;

/// Boxed cause of a storage failure (redb, codec, or a blocking task).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// This manager is not the raft leader. `leader` is who is, when known.
    #[error("{}", not_leader_display(.leader))]
    NotLeader { leader: Option<LeaderInfo> },

    /// A write or consistent read did not commit within the write timeout:
    /// the leader cannot reach a quorum of managers. A timed-out write may
    /// still commit later, once the quorum is back.
    #[error("{}", no_quorum_display(*.waited))]
    NoQuorum { waited: Duration },

    /// An `expect_version` precondition failed; nothing was applied.
    #[error("transaction conflict: {0}")]
    Conflict(String),

    /// The transaction is malformed (an op without operation, an object
    /// without id).
    #[error("invalid transaction: {0}")]
    Invalid(String),

    /// The transaction is bigger than one write may be (`[limits] max_write_bytes`).
    #[error(
        "the request is too large: {size} bytes, more than the {limit} bytes one write may be ([limits] max_write_bytes)"
    )]
    TooLarge { size: u64, limit: u64 },

    /// Removing this voter would leave the cluster without any.
    #[error("refusing to remove raft voter {raft_id}: it is the last voter")]
    LastVoter { raft_id: u64 },

    /// A new manager did not catch up with the leader's log in time to be
    /// made a voter. It stays a learner; calling `add_voter` again resumes.
    #[error("raft learner {raft_id} did not catch up within {waited:?}")]
    CatchUp { raft_id: u64, waited: Duration },

    /// Reading or writing the store's files failed.
    #[error("raft storage: {op}")]
    Storage {
        op: &'static str,
        #[source]
        source: BoxError,
    },

    /// Any other raft failure (membership change refused, fatal core error).
    #[error("raft: {0}")]
    Raft(String),

    /// The store was shut down.
    #[error("raft store is shut down")]
    Shutdown,
}

impl StoreError {
    pub(crate) fn storage(op: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Storage {
            op,
            source: source.into(),
        }
    }
}

/// `err: cause: cause...`, so a status carries the whole story in one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn no_quorum_display(waited: Duration) -> String {
    if waited < Duration::from_millis(100) {
        "the cluster has no quorum: a majority of managers is unreachable".to_string()
    } else {
        format!(
            "the cluster has no quorum: not committed within {:.1}s (a majority of managers is unreachable)",
            waited.as_secs_f64()
        )
    }
}

fn not_leader_display(leader: &Option<LeaderInfo>) -> String {
    match leader {
        Some(l) => format!(
            "this manager is not the raft leader (leader: {} at {})",
            l.raft_id, l.addr
        ),
        None => "no raft leader is known: a majority of managers may be unreachable (quorum lost)"
            .to_string(),
    }
}

impl From<StoreError> for tonic::Status {
    /// The one place store errors become gRPC statuses. `NotLeader` is
    /// FAILED_PRECONDITION with the leader's address in the
    /// [`mesh_proto::LEADER_METADATA_KEY`] metadata, so clients can follow it.
    fn from(err: StoreError) -> Self {
        let msg = error_chain(&err);
        match err {
            // No leader at all is transient (an election): UNAVAILABLE, so
            // clients retry. A known leader is a redirect.
            StoreError::NotLeader { leader: None } => tonic::Status::unavailable(msg),
            StoreError::NotLeader { leader } => {
                let mut status = tonic::Status::failed_precondition(msg);
                if let Some(l) = leader
                    && let Ok(v) = MetadataValue::try_from(l.addr.as_str())
                {
                    status
                        .metadata_mut()
                        .insert(mesh_proto::LEADER_METADATA_KEY, v);
                }
                status
            }
            StoreError::NoQuorum { .. } | StoreError::CatchUp { .. } | StoreError::Shutdown => {
                tonic::Status::unavailable(msg)
            }
            StoreError::Conflict(_) => tonic::Status::aborted(msg),
            StoreError::LastVoter { .. } => tonic::Status::failed_precondition(msg),
            StoreError::Invalid(_) => tonic::Status::invalid_argument(msg),
            StoreError::TooLarge { .. } => tonic::Status::resource_exhausted(msg),
            StoreError::Storage { .. } | StoreError::Raft(_) => tonic::Status::internal(msg),
        }
    }
}
