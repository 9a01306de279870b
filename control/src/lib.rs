//! The mesh manager: everything that holds or changes the cluster's desired
//! state. No netlink here.
//!
//! # Layout
//! - [`store`]: the raft store (openraft over tonic, log and snapshots in redb)
//!   and the typed state machine every other component reads and writes.
//! - [`manager`]: builds a manager node's services and components and runs them.
//! - [`component`]: how the leader's components run: each its own loop over
//!   store changes, committing with preconditions on what it read.
//! - [`allocator`]: every allocation (subnets, VNIs, addresses, VIPs, published
//!   ports) and the allocator component that addresses new tasks and nodes.
//! - [`orchestrator`]: the replicated and global orchestrators, rolling updates
//!   and the task reaper.
//! - [`scheduler`]: places allocated tasks on ready nodes.
//! - [`placement`]: constraints, spread preferences and per-node limits, parsed.
//! - [`roles`]: makes raft membership follow the nodes' desired roles.
//! - [`controlapi`]: the CLI's API, one handler per area; followers forward to
//!   the leader.
//! - [`dispatcher`]: agent sessions streaming each node its view.
//! - [`ca_service`] and [`ca`]: the join handshake, node certificates, tokens.
//! - [`bootstrap`]: what `mesh init` writes first.
//! - [`server`]: who is calling on the control port, checked against the store.
//! - [`objects`]: what the stored objects say (names, roles, addresses).
//! - [`config`]: timing knobs; [`error`]: errors and their gRPC status.

pub mod allocator;
pub mod bootstrap;
pub mod ca;
pub mod ca_service;
pub mod component;
pub mod config;
pub mod controlapi;
pub mod dispatcher;
pub mod error;
pub mod manager;
pub mod objects;
pub mod orchestrator;
pub mod placement;
pub mod roles;
pub mod scheduler;
pub mod server;
pub mod store;
