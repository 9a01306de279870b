//! What mesh's sandbox and tests share. The multi-host lab, for `mesh sandbox` and the
//! end-to-end tests: hosts are network namespaces wired to one switch namespace, each running
//! the real `mesh` daemon as its own process. Waits with deadlines and namespace scopes, for
//! every crate's tests (the dataplane's, as a dev-dependency).
//!
//! # Layout
//! - [`lab`]: [`Lab`]: build the switch and the hosts, start every daemon, form a cluster,
//!   wait with diagnostics; removal on drop (also on panic) unless detached.
//! - [`host`]: [`Host`]: one host's namespace, directory and daemon (start, kill, restart,
//!   stop), cut off the switch and healed, the CLI or any command run inside it.
//! - [`switch`]: the underlay (10.77.0.0/24 on a bridge in the switch namespace) and how a
//!   namespace is plugged into it.
//! - [`wait`]: polling with deadlines scaled by `MESH_TEST_PATIENCE`: [`wait::wait_for`]
//!   (blocking), [`wait::wait_for_async`] (tokio's clock, paused time included),
//!   [`wait::wait_for_async_every`] (at a steady pace, for benchmarks), [`wait::watch`]
//!   (something must not happen within a window). [`Lab::wait_for`] adds a diagnostics dump of
//!   every host to the timeout error.
//! - [`diag`]: that dump (`ip -d link`, `ip addr`, `bridge fdb`, `ip neigh`, `nft list
//!   ruleset`, daemon log tails, `mesh node ls`).
//! - `process`: running commands with timeouts; who kills which process and when.
//! - [`netns`]: [`NetnsScope`], a unique prefix owning the namespaces named under it, removed
//!   on drop: for tests that build their own topology (the dataplane's).
//! - `cleanup`: lab naming (`mt<pid>x<n>`, other tags for namespace scopes), removal, and
//!   removal of crashed runs' leftovers.
//!
//! Shelling out (`ip`, `nft`) happens only in [`diag`]; the lab's own links go through
//! `mesh_dataplane::link`.

mod cleanup;
pub mod diag;
pub mod host;
pub mod lab;
pub mod netns;
mod process;
pub mod switch;
pub mod wait;

pub use cleanup::{
    DEFAULT_LAB_ROOT, cleanup_lock, lab_root, remove_lab, remove_stale_labs, unique_prefix,
};
pub use host::{CONTROL_PORT, Host};
pub use lab::{Lab, LabOptions};
pub use netns::NetnsScope;
pub use process::{CmdOutput, pid_alive};
pub use switch::host_ip;
pub use wait::{IntoPoll, Poll, wait_for};
