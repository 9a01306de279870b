//! The mesh agent and the `mesh` binary.
//!
//! # Layout
//! - [`daemon`]: `mesh daemon`: the unix-socket API, cluster lifecycle
//!   (init, join, leave, restart), and the manager when the node is one.
//! - [`agent`]: the session with the leader and certificate renewal.
//! - [`dns`]: the embedded DNS server at 127.0.0.11 inside every task's namespace.
//! - [`membership`]: what the daemon needs from gossip ([`mesh_gossip`]: liveness, peers, keys).
//! - [`cli`]: the command line.
//! - [`sandbox`]: `mesh sandbox`, a demo cluster on this machine, built as a detached lab of
//!   [`mesh_lab`] (hosts as network namespaces, each running its own daemon).
//! - [`config`]: the daemon's config file (timing knobs).
//! - [`metrics`]: `--metrics-addr`, the daemon's metrics over HTTP (the families themselves
//!   are in [`mesh_common::metrics`]).
//! - [`runtime`]: tasks as processes under per-task shims that outlive the agent; `mesh exec`.
//! - [`whoami`]: `mesh whoami`, the small server tasks run in demos and tests.
//! - [`worker`]: turns assignments and gossiped endpoints into sandboxes, processes, load
//!   balancers, DNS and the routing mesh; generic over the kernel, runtime, DNS and gossip it
//!   is handed (fakes behind the `test-util` feature).
//! - [`state_dir`]: what a node keeps on disk to come back after a restart.
//! - [`version`]: what a binary is (release, API version, build), for `mesh version`.

pub mod agent;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod membership;
pub mod metrics;
pub mod runtime;
pub mod sandbox;
pub mod state_dir;
pub mod version;
pub mod whoami;
pub mod worker;
