//! Domain types both sides of mesh use: the manager (`mesh-control`) and the agent
//! (`mesh-node`). Nothing here holds state of its own or talks to the kernel.
//!
//! # Layout
//! - [`ids`]: id newtypes ([`NodeId`], [`TaskId`], [`ServiceId`], [`NetworkId`]) and fresh
//!   random ids.
//! - [`time`]: wall-clock time as the objects store it (unix milliseconds).
//! - [`task`]: task-state predicates ([`task::is_terminal`], [`task::observed_state`]).
//! - [`leader`]: reading the leader's address out of a redirecting status.
//! - [`liveness`]: the [`Liveness`] view of nodes (what SWIM says of them).
//! - [`pki`]: node keys and CSRs, what a node certificate says ([`pki::CertIdentity`]), join
//!   tokens and the CA digest they carry.
//! - [`tls`]: rustls configurations for the control port with swappable certificates, the
//!   TLS accept loop, and the join handshake's bootstrap client configurations.
//! - [`channels`]: cached gRPC channels to other nodes ([`channels::ChannelProvider`]),
//!   plain or over mTLS.
//! - [`metrics`]: the daemon's Prometheus metrics: one registry of every family, and the
//!   handles each part updates its own with.
//! - [`auth`]: who is calling ([`auth::Caller`]) and the checks every node can make without
//!   the store.

pub mod auth;
pub mod channels;
pub mod ids;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod pki;
pub mod task;
pub mod time;
pub mod tls;

pub use ids::{NetworkId, NodeId, ServiceId, TaskId};

/// The subnet of every node's gateway bridge (`mesh_gwbridge`), which tasks reach the outside
/// world through: no overlay network may overlap it.
pub const GATEWAY_BRIDGE_SUBNET: &str = "172.30.0.0/16";
pub use liveness::Liveness;
