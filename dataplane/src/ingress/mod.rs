//! The routing mesh's kernel state: published ports on the node, and the reply routing that
//! lets tasks see (and answer) the real client address.
//!
//! # The path of a routed connection
//! 1. **Node** (the daemon's namespace): our table `ip <table>` (default `mesh_ingress`) holds
//!    one DNAT rule per published port, for packets addressed to one of the node's own
//!    addresses (`fib daddr type local`). Ingress mode rewrites the destination to the
//!    service's VIP on the `ingress` network and target port; host mode to the local task's
//!    gateway address and target port. The node routes the ingress subnet to its ingress
//!    sandbox's gateway address. Published ports also answer on 127.0.0.1: the gateway bridge
//!    gets `route_localnet` while something is published.
//! 2. **Ingress sandbox** (a namespace with an address on the `ingress` overlay and one on the
//!    gateway bridge): forwarding on, and the service load balancer (nftables or IPVS, the
//!    same as in tasks) rewrites the VIP to one task's ingress address anywhere in the cluster.
//! 3. **Task**: a TCP connection arrives with the client's own source address (nothing was
//!    source-NATed); UDP arrives from the sandbox's address ([`nft::udp_snat_script`] says
//!    why). Our table `ip mesh_reply` marks the connection by the MAC of the sandbox it came
//!    from ([`reply_mark`]); `tcp_fwmark_accept` makes the accepted socket carry the mark, and
//!    a route chain copies it onto every other reply packet. A policy rule per sandbox sends
//!    marked replies to a routing table whose default route is that sandbox, so the reply goes
//!    back through the node that did the DNAT, where conntrack undoes both rewrites.
//!
//! Every table here is ours, replaced as a whole in one `nft -f` transaction; no other table
//! is read, flushed or changed.
//!
//! # Layout
//! - [`model`]: the intent model ([`NodeMesh`] and its parts, the sysctls each needs).
//! - [`observed`]: what the kernel holds in a [`Scope`], read into one shape by both
//!   implementations, and what a converged kernel shows ([`Observed::converged`]).
//! - [`plan`](mod@plan): the pure planner, desired + observed -> [`Op`]s.
//! - [`nft`]: our three tables: the scripts that write them and the parsers that read them.
//! - [`linux`]: [`LinuxMesh`], which observes and applies with `nft`, rtnetlink and sysctls.
//! - `fake` (feature `fake`): `FakeMesh`, the routing mesh's view of the
//!   shared in-memory kernel (`crate::fake`).
//! - `conformance` (feature `fake`): the suite both implementations pass (the Linux run is
//!   the `ingress_conformance` integration test).
//!
//! # Use
//! The agent builds its [`NodeMesh`] from its assignments and records, and keeps an
//! [`Applied`]: the first [`Applied::sync`] observes the kernel, later ones plan against what
//! was last applied (no observation), and a failure makes the next one observe again. The
//! methods block (`nft` and netlink on threads of their own): from async code call them inside
//! `tokio::task::spawn_blocking`. Calls for one node must not overlap.

pub mod linux;
pub mod model;
pub mod nft;
pub mod observed;
pub mod plan;

#[cfg(any(test, feature = "fake"))]
pub mod conformance;
#[cfg(any(test, feature = "fake"))]
pub mod fake;

use crate::error::Result;

pub use linux::LinuxMesh;
pub use model::{
    IngressRoute, IngressSandbox, NodeMesh, PUBLISH_TABLE_SUFFIX, Protocol, Publication,
    REPLY_RULE_PRIORITY, REPLY_TABLE, ReplyRouting, SANDBOX_SNAT_TABLE, Scope, Sysctl, reply_mark,
};
pub use observed::{Observed, Table};
pub use plan::{Op, plan};

/// A kernel the routing mesh can be observed in and changed: Linux, or the fake. Object-safe.
pub trait RoutingMesh {
    /// Reads everything in `scope` (and nothing else).
    fn observe(&self, scope: &Scope) -> Result<Observed>;

    /// Applies `ops` in order; stops at the first that fails, with an
    /// [`Error::Apply`](crate::Error::Apply) naming it.
    fn apply(&self, ops: &[Op]) -> Result<()>;
}

/// Observes, plans and applies: afterwards the kernel matches `desired` (a second call finds
/// nothing to do). Returns the ops applied.
pub fn reconcile(mesh: &(impl RoutingMesh + ?Sized), desired: &NodeMesh) -> Result<Vec<Op>> {
    let observed = mesh.observe(&desired.scope())?;
    let ops = plan(desired, &observed)?;
    mesh.apply(&ops)?;
    Ok(ops)
}

/// What the kernel holds of the routing mesh as far as the agent knows: observed once, then
/// kept as what was last applied, so each change is planned without reading the kernel and
/// costs only what differs.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    known: Option<Observed>,
}

impl Applied {
    /// Nothing known yet: the first sync observes.
    pub fn new() -> Applied {
        Applied::default()
    }

    /// Brings the kernel to `desired`: plans against what was last applied (observing first
    /// if nothing is known) and applies. Returns the ops applied. If applying fails, what is
    /// known is dropped, so the next sync observes again.
    ///
    /// A task or sandbox new to the model is planned as holding nothing of it (its namespace
    /// is new); one that left is forgotten (see [`NodeMesh`]).
    pub fn sync(
        &mut self,
        mesh: &(impl RoutingMesh + ?Sized),
        desired: &NodeMesh,
    ) -> Result<Vec<Op>> {
        let known = match self.known.take() {
            Some(known) => known,
            None => mesh.observe(&desired.scope())?,
        };
        let ops = match plan(desired, &known) {
            Ok(ops) => ops,
            Err(e) => {
                self.known = Some(known);
                return Err(e);
            }
        };
        mesh.apply(&ops)?;
        self.known = Some(Observed::converged(desired));
        Ok(ops)
    }

    /// Forgets what is known: the next sync observes (after the kernel was changed elsewhere).
    pub fn forget(&mut self) {
        self.known = None;
    }
}
