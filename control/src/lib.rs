//! The mesh manager: everything that holds or changes the cluster's desired
//! state. No netlink here.
//!
//! # Layout
//! - [`store`]: the raft store (openraft over tonic, log and snapshots in redb)
//!   and the typed state machine every other component reads and writes.
//! - [`manager`]: a manager node: the services it serves on 2377 and the
//!   loops only the leader runs (raft membership follows desired roles).
//! - [`controlapi`]: the CLI's API; followers forward to the leader.
//! - [`ca_service`] and [`ca`]: the join handshake, node certificates, tokens.
//! - [`dispatcher`]: agent sessions streaming each node its view.
//! - [`server`] and [`auth`]: who is calling, and what they may call.
//! - [`tls`]: rustls configurations for 2377 with swappable certificates.
//! - [`net`]: cached gRPC channels to other nodes.
//! - [`config`]: timing knobs; [`error`]: errors and their gRPC status.

pub mod allocator;
pub mod auth;
pub mod ca;
pub mod ca_service;
pub mod config;
pub mod controlapi;
pub mod dispatcher;
pub mod error;
pub mod manager;
pub mod net;
pub mod orchestrator;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod tls;
