//! The overlay data path of one node: network sandboxes with a bridge and a VXLAN device per
//! overlay network, static FDB and neighbor entries per remote endpoint (no multicast, no
//! flooding, no learning), task sandboxes with one veth per attached network, and a gateway
//! bridge with masquerade for egress.
//!
//! # Layout
//! - [`ids`]: the overlay's ids ([`Vni`], [`TaskId`], the namespace [`Prefix`]) and the kernel
//!   names derived from them.
//! - [`model`]: the intent model ([`NodeDataplane`] and its parts).
//! - [`observed`]: what the kernel holds in our [`Scope`], read into one shape by both
//!   implementations.
//! - [`op`]: the operations ([`Op`]) a plan is made of.
//! - [`plan`](mod@plan): the pure planner, desired + observed -> [`Op`]s.
//! - [`linux`]: [`LinuxDataplane`], which observes and applies over rtnetlink (and `nft`), and
//!   [`overlay_mtu`].
//! - `fake` (feature `fake`): `FakeDataplane`, the overlay's view of the
//!   shared in-memory kernel (`crate::fake`).
//! - `conformance` (feature `fake`): the suite both implementations pass.
//! - [`gateway`]: the node-local allocator of gateway-bridge addresses.
//!
//! # Names in the kernel
//! | what | where | name |
//! |---|---|---|
//! | network sandbox | `/run/netns` | `{prefix}n{vni}` |
//! | its bridge (gateway address) | network sandbox | `br0` |
//! | its VXLAN device | network sandbox (created in the daemon's namespace as `mvx{vni}`) | `vxlan0` |
//! | task sandbox | `/run/netns` | `{prefix}t{first 12 chars of the task id}` |
//! | endpoint veth, task end | task sandbox | as given (`eth0`, `eth1`...) |
//! | endpoint veth, bridge end | network sandbox | `vn{short id}` |
//! | gateway veth, task end | task sandbox | `gw0` |
//! | gateway veth, bridge end | daemon's namespace | `vg{short id}` |
//! | gateway bridge | daemon's namespace | config, `mesh_gwbridge` by default |
//! | masquerade rule | daemon's namespace | nftables `table ip mesh` by default |
//!
//! # Use
//! The agent keeps a [`NodeDataplane`], calls [`reconcile`] at start and whenever tasks or
//! networks change, and [`ensure_remote`] / [`remove_remote`] on each gossip event (two netlink
//! requests each, no observation). Both end in the same kernel state: a [`reconcile`] after any
//! sequence of incremental calls plans nothing.
//!
//! The [`Dataplane`] methods block (they run netlink on threads of their own, see
//! [`crate::netns`]): from async code call them inside `tokio::task::spawn_blocking`. Calls for
//! one node must not overlap: a reconcile planned from an older [`NodeDataplane`] would undo an
//! incremental change applied meanwhile, so keep the desired state and the dataplane behind one
//! lock (or one task) and change both together.

pub mod gateway;
pub mod ids;
pub mod linux;
pub mod model;
pub mod observed;
pub mod op;
pub mod plan;

#[cfg(any(test, feature = "fake"))]
pub mod conformance;
#[cfg(any(test, feature = "fake"))]
pub mod fake;

use std::net::Ipv4Addr;

use crate::error::Result;

pub use crate::netns::At;
pub use crate::types::Mac;
pub use gateway::GatewayAllocator;
pub use ids::{OwnedName, Prefix, TaskId, Vni};
pub use linux::{LinuxDataplane, overlay_mtu};
pub use model::{
    BRIDGE_IFNAME, DEFAULT_DATA_PORT, GatewayConfig, LocalEndpoint, NetworkSpec, NodeDataplane,
    RemoteEndpoint, Scope, TASK_GATEWAY_IFNAME, TaskSandbox, VXLAN_IFNAME, VXLAN_OVERHEAD,
};
pub use observed::{
    FdbEntry, LinkKind, LinkState, NsSnapshot, Observed, ObservedHost, VxlanConfig,
};
pub use op::{Op, VxlanSpec};
pub use plan::{plan, plan_remote_change};

/// A kernel the overlay can be observed in and changed: Linux, or the fake.
pub trait Dataplane {
    /// Reads everything in `scope` (and nothing else).
    fn observe(&self, scope: &Scope) -> Result<Observed>;

    /// Applies `ops` in order; stops at the first that fails, with an
    /// [`Error::Apply`](crate::Error::Apply) naming it.
    fn apply(&self, ops: &[Op]) -> Result<()>;
}

/// Observes, plans and applies: afterwards the kernel matches `desired` (a second call finds
/// nothing to do). Returns the ops applied.
pub fn reconcile(dp: &(impl Dataplane + ?Sized), desired: &NodeDataplane) -> Result<Vec<Op>> {
    let observed = dp.observe(&desired.scope())?;
    let ops = plan(desired, &observed)?;
    if !ops.is_empty() {
        tracing::debug!(ops = ops.len(), prefix = %desired.prefix, "reconcile overlay");
    }
    dp.apply(&ops)?;
    Ok(ops)
}

/// Records `remote` in `desired` (replacing the endpoint that had its network and address) and
/// programs its neighbor and FDB entries, replacing what the replaced one had. Nothing is
/// programmed for a network without local endpoints. If applying fails, `desired` keeps the
/// change and the next [`reconcile`] completes it.
pub fn ensure_remote(
    dp: &(impl Dataplane + ?Sized),
    desired: &mut NodeDataplane,
    remote: RemoteEndpoint,
) -> Result<()> {
    plan::check_remote(desired, &remote)?;
    let old = desired.upsert_remote(remote);
    if old == Some(remote) {
        return Ok(());
    }
    dp.apply(&plan_remote_change(desired, old.as_ref(), Some(&remote)))
}

/// Forgets the remote endpoint at (`vni`, `ip`) and removes its neighbor and FDB entries.
/// Absent is success.
pub fn remove_remote(
    dp: &(impl Dataplane + ?Sized),
    desired: &mut NodeDataplane,
    vni: Vni,
    ip: Ipv4Addr,
) -> Result<()> {
    let Some(old) = desired.remove_remote(vni, ip) else {
        return Ok(());
    };
    dp.apply(&plan_remote_change(desired, Some(&old), None))
}
