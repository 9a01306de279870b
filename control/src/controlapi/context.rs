//! What the control API's handlers share: a narrow view of the manager they run on.

use std::sync::Arc;

use mesh_common::Liveness;
use mesh_common::auth::{Caller, require_manager};
use mesh_common::channels::SharedChannels;

use crate::config::ManagerConfig;
use crate::error::{ControlError, Result};
use crate::store::Store;

/// The store, this node's identity, its SWIM view and channels to other nodes.
pub struct ApiContext {
    pub node_id: String,
    pub store: Store,
    pub liveness: Arc<dyn Liveness>,
    pub channels: SharedChannels,
    pub config: ManagerConfig,
}

/// Refuses callers that are not managers (or the local administrator).
pub fn manager_check(caller: &Caller) -> Result<()> {
    require_manager(caller).map_err(|s| ControlError::PermissionDenied(s.message().to_string()))
}
