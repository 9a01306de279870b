//! Route netlink: one handle type, [`Netlink`], with small operations named by verb and
//! idempotent at the lowest layer.
//!
//! A handle talks to the namespace its socket was opened in, so open it on a thread inside
//! that namespace: [`in_netns`] does exactly that, and a [`Session`] keeps one handle per
//! namespace for a thread that works in several. `ensure_*`/`replace_*` take EEXIST as success
//! (or replace), `remove_*` take an absent object, or an absent device, as success; every other
//! refusal is an [`Error::Netlink`](crate::Error::Netlink) naming the operation and the
//! interface.
//!
//! ```no_run
//! # use mesh_dataplane::{netlink, netns::Netns, types::IfName};
//! # fn demo(ns: &Netns) -> mesh_dataplane::Result<()> {
//! let lo = IfName::new("lo")?;
//! netlink::in_netns(ns, async |nl| nl.set_up(&lo).await)?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! The handle is defined in [`handle`]; its operations are grouped by kernel object, each file
//! an `impl Netlink` block that depends only on the handle (and on the link lookups):
//! - [`handle`]: [`Netlink`] (connect, errors), [`in_netns`].
//! - [`links`]: links and addresses: lookup, veth pairs across namespaces, bridges and ports,
//!   state, MTU, MAC, isolation, moving and deleting links, addresses.
//! - [`vxlan`]: VXLAN devices ([`VxlanParams`]).
//! - [`neighbours`]: FDB entries of VXLAN devices and permanent neighbour entries.
//! - [`routes`]: IPv4 routes in any table ([`Route`]) and fwmark policy rules.
//! - [`dump`]: whole-namespace dumps (links, addresses, neighbours) and the MTU of the link
//!   holding an address.
//! - [`session`]: [`Session`], handles of one thread in several namespaces.

pub mod dump;
pub mod handle;
pub mod links;
pub mod neighbours;
pub mod routes;
pub mod session;
pub mod vxlan;

pub use handle::{Netlink, in_netns};
pub use routes::{MAIN_TABLE, Route};
pub use session::Session;
pub use vxlan::VxlanParams;

#[cfg(test)]
mod tests;
