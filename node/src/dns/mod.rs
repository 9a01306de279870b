//! The embedded DNS server of every task: 127.0.0.11:53 (UDP and TCP) inside the task's own
//! network namespace, as in Docker.
//!
//! A task resolves, on the overlay networks it is attached to: a service name or alias to the
//! service's VIP (or to its task IPs, shuffled, in `dnsrr` mode), `tasks.<service>` to every
//! task IP, and a task name (`web.1`) or id to its IP. A name of the cluster that the task may
//! not see (its service is on other networks only) is NXDOMAIN, answered here and never asked
//! upstream; only names unknown to the cluster are forwarded to the host's upstream resolvers,
//! from inside the task's namespace. Mesh answers have a short TTL ([`MESH_TTL`], 5 s: they
//! change as services scale), and negative ones an SOA so resolvers cache them as briefly.
//!
//! # Layout
//! - [`table`]: the pure name table and its query semantics ([`NameTable::resolve`]).
//! - [`config`]: upstreams and limits ([`DnsConfig`]), from the host's resolv.conf.
//! - [`manager`]: [`DnsManager`], one server per task namespace (`attach`/`detach`).
//! - `handler`: hickory's request handler of one task: table first, then forwarding.
//! - `forward`: the upstream client (hickory's), in the task's namespace.
//! - `sockets`: creating sockets inside namespaces without a runtime thread entering one.
//! - [`error`]: what can fail ([`DnsError`]).
//!
//! # Use
//! ```no_run
//! # async fn demo() -> mesh_node::dns::Result<()> {
//! use mesh_node::dns::{DnsConfig, DnsManager, EndpointMode, ServiceInfo, TaskEntry};
//! let dns = DnsManager::new(DnsConfig::from_host()?);
//! dns.table().update(|t| {
//!     t.upsert_service("net1", ServiceInfo {
//!         id: "s1".into(),
//!         name: "web".into(),
//!         aliases: vec![],
//!         mode: EndpointMode::Vip("10.0.1.2".parse().unwrap()),
//!     });
//!     t.upsert_task("net1", "s1", TaskEntry {
//!         id: "t1".into(),
//!         name: "web.1".into(),
//!         ip: "10.0.1.3".parse().unwrap(),
//!     });
//! });
//! dns.attach("t1", "/proc/4242/ns/net".as_ref(), vec!["net1".into()]).await?;
//! // ... the task writes mesh_node::dns::RESOLV_CONF as its /etc/resolv.conf ...
//! dns.detach("t1").await;
//! # Ok(()) }
//! ```
//!
//! # Logging
//! hickory-server logs every request it answers at `info` (target `hickory_server`): the
//! agent's filter should hold that target at `warn`.

pub mod config;
pub mod error;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handler;
pub mod manager;
mod sockets;
pub mod table;

#[cfg(test)]
mod tests;

pub use config::DnsConfig;
pub use error::{DnsError, Result};
pub use handler::{MESH_TTL, NEGATIVE_TTL, SharedTable};
pub use manager::{DNS_ADDR, DnsManager};
pub use table::{Answer, EndpointMode, NameTable, ServiceEntry, ServiceInfo, TaskEntry};

/// The `/etc/resolv.conf` of every task: the embedded server only. `ndots:0` makes a resolver
/// try every name as given first, so `web` and `tasks.web` are asked as they are.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";
