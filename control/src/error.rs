//! Errors of the manager's RPC handlers, and the one place they become a
//! `tonic::Status` (the CLI prints the status message as one line).

use mesh_common::pki::PkiError;
use tonic::Status;

use crate::ca::CaError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A request field is wrong; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the cluster is not in a state to do it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{0}")]
    Internal(String),
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        let msg = e.to_string();
        match e {
            ControlError::InvalidArgument(_) => Status::invalid_argument(msg),
            ControlError::NotFound(_) => Status::not_found(msg),
            ControlError::AlreadyExists(_) => Status::already_exists(msg),
            ControlError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ControlError::PermissionDenied(_) => Status::permission_denied(msg),
            ControlError::Unauthenticated(_) => Status::unauthenticated(msg),
            ControlError::Ca(CaError::InvalidCsr(_) | CaError::Pki(PkiError::InvalidToken(_))) => {
                Status::invalid_argument(msg)
            }
            ControlError::Ca(_) | ControlError::Internal(_) => Status::internal(msg),
            ControlError::Store(e) => e.into(),
        }
    }
}

impl From<PkiError> for ControlError {
    fn from(e: PkiError) -> ControlError {
        ControlError::Ca(CaError::Pki(e))
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;
