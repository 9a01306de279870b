//! `/proc/sys` files. Those under `net` are per network namespace: each is read or written by
//! a thread inside the namespace it is about ([`Netns::run`]).

use std::io;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// `net.ipv4.ip_forward`.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The value of `path` in the calling thread's namespace, trimmed; `None` if there is no such
/// file (a per-interface file of an interface that does not exist).
pub fn read(path: &str) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(value) => Ok(Some(value.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Path {
            op: "read",
            path: path.into(),
            source,
        }),
    }
}

/// Writes `value` to `path` in the calling thread's namespace.
pub fn write(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Path {
        op: "write",
        path: path.into(),
        source,
    })
}

/// [`write()`] from a thread inside `ns`.
pub fn write_in(ns: &Netns, path: &str, value: &str) -> Result<()> {
    ns.run(|| write(path, value))?
}

/// [`read()`] of each of `paths` from one thread inside `ns`, in order.
pub fn read_in(ns: &Netns, paths: &[String]) -> Result<Vec<Option<String>>> {
    ns.run(|| paths.iter().map(|p| read(p)).collect())?
}
