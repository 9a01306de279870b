//! The multi-host lab, shared by `mesh sandbox` and the end-to-end tests: hosts are network
//! namespaces wired to one switch namespace, each running the real `mesh` daemon as its own
//! process.
//!
//! # Layout
//! - [`lab`]: [`Lab`] and [`Host`]: build the namespaces and links, start/kill/restart/stop
//!   daemons, cut a host off the switch and heal it, run the CLI or any command on a host.
//! - [`wait`]: polling with deadlines ([`wait::wait_for`]); [`Lab::wait_for`] adds a
//!   diagnostics dump of every host to the timeout error.
//! - [`diag`]: that dump (`ip -d link`, `ip addr`, `bridge fdb`, `ip neigh`, `nft list
//!   ruleset`, daemon log tails, `mesh node ls`).
//! - `process`: running commands with timeouts; who kills which process and when.
//! - `cleanup`: lab naming (`mt<pid>x<n>`), removal, and removal of crashed runs' leftovers.
//!
//! Shelling out (`ip`, `nft`) happens only in [`diag`]; the lab's own links go through
//! `mesh_dataplane::link`.

mod cleanup;
pub mod diag;
pub mod lab;
mod process;
pub mod wait;

pub use cleanup::{DEFAULT_LAB_ROOT, lab_root, remove_lab, remove_stale_labs, unique_prefix};
pub use lab::{CONTROL_PORT, Host, Lab, LabOptions, host_ip};
pub use process::{CmdOutput, pid_alive};
pub use wait::{IntoPoll, Poll, wait_for};
