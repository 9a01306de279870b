//! The handle itself: one rtnetlink socket, bound to the namespace it was opened in, and the
//! two error rules every operation follows.

use crate::error::{Error, Result, errno_of};
use crate::netns::Netns;

/// A route-netlink handle bound to the namespace it was opened in. Its operations are grouped
/// by kernel object in the sibling modules of this one.
pub struct Netlink {
    pub(super) handle: rtnetlink::Handle,
    /// Name of the namespace, for error messages.
    netns: String,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's namespace, which messages call `netns`.
    /// Must be called inside a tokio runtime (the connection runs as a task on it).
    pub fn connect(netns: impl Into<String>) -> Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns: netns.into(),
        })
    }

    /// The name of the namespace, as given to [`Netlink::connect`].
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A refusal of `op` on `what` (an interface, or `*` for a dump).
    pub(super) fn err(
        &self,
        op: &'static str,
        what: impl ToString,
        source: rtnetlink::Error,
    ) -> Error {
        Error::Netlink {
            op,
            ifname: what.to_string(),
            source,
        }
    }

    /// The link `name` is missing in this namespace.
    pub(super) fn not_found(&self, name: impl ToString) -> Error {
        Error::LinkNotFound {
            ifname: name.to_string(),
            netns: self.netns.clone(),
        }
    }
}

/// Opens a [`Netlink`] handle inside `ns` and runs `f` with it, on a thread of that namespace
/// (see [`Netns::run_async`]).
pub fn in_netns<T, F>(ns: &Netns, f: F) -> Result<T>
where
    F: AsyncFnOnce(&Netlink) -> Result<T> + Send,
    T: Send,
{
    let name = ns.name().to_owned();
    ns.run_async(async move || {
        let nl = Netlink::connect(name)?;
        f(&nl).await
    })?
}

/// `Ok` if the request succeeded or failed with one of `errnos`: the idempotent outcome
/// (EEXIST for an `ensure`, ENOENT and friends for a `remove`).
pub(super) fn ok_if(
    result: Result<(), rtnetlink::Error>,
    errnos: &[i32],
) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno_of(&e).is_some_and(|n| errnos.contains(&n)) => Ok(()),
        other => other,
    }
}
