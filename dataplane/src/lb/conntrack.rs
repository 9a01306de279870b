//! Deleting conntrack entries of flows that went to removed backends (or to a DNAT target
//! that moved), with the `conntrack` binary (conntrack-tools) run inside the namespace.
//!
//! After DNAT, an entry's *reply* source is the backend, whatever VIP the client dialled, so
//! `conntrack -D --reply-src IP` finds exactly the flows served by that backend (TCP and UDP).
//! The next packet of a deleted UDP flow is a new flow and is balanced again: this is what
//! keeps a UDP client that never stops sending from being black-holed (moby#8795).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::netns::Netns;

const CONNTRACK: &str = "conntrack";

/// Deletes, in `netns`, every conntrack entry whose reply comes from one of `backends`.
/// Returns how many were deleted. None to delete is success.
pub fn flush_backends(netns: &Netns, backends: &BTreeSet<Ipv4Addr>) -> Result<u64> {
    let mut deleted = 0;
    for ip in backends {
        deleted += delete(netns, &["--reply-src", &ip.to_string()])?;
    }
    if deleted > 0 {
        tracing::debug!(
            netns = netns.name(),
            deleted,
            "flushed conntrack of removed backends"
        );
    }
    Ok(deleted)
}

/// Deletes, in `netns`, every conntrack entry of a flow sent to `dst` (as the client
/// addressed it, before any DNAT): after the target of a DNAT changed, so that flows that
/// keep sending are translated anew. Returns how many were deleted.
pub fn flush_destination(netns: &Netns, dst: Ipv4Addr) -> Result<u64> {
    delete(netns, &["--orig-dst", &dst.to_string()])
}

/// `conntrack -D -f ipv4 FILTER...` in `netns`: how many entries it deleted.
/// Deletes the destination-NATed flows of `protocol` (`tcp`, `udp`) to port `port` in
/// `netns`: what a published port translated.
pub fn flush_dnat_port(netns: &Netns, protocol: &str, port: u16) -> Result<u64> {
    let port = port.to_string();
    delete(
        netns,
        &["-p", protocol, "--orig-port-dst", &port, "--dst-nat"],
    )
}

fn delete(netns: &Netns, filter: &[&str]) -> Result<u64> {
    let mut args = vec!["-D", "-f", "ipv4"];
    args.extend_from_slice(filter);
    let mut cmd = Command::new(CONNTRACK);
    cmd.args(&args).stdin(Stdio::null());
    netns.enter_on_exec(&mut cmd)?;
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: CONNTRACK,
        source,
    })?;
    // conntrack-tools prints "N flow entries have been deleted." on stderr and exits 1
    // when N is 0: both are success here.
    let stderr = String::from_utf8_lossy(&out.stderr);
    match deleted_count(&stderr) {
        Some(n) => Ok(n),
        None if out.status.success() => Ok(0),
        None => Err(Error::Command {
            program: CONNTRACK,
            args: format!("{} (in {})", args.join(" "), netns.name()),
            stderr: stderr.trim().to_owned(),
        }),
    }
}

/// N from conntrack's "N flow entries have been deleted." line.
fn deleted_count(stderr: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("flow entries have been deleted"))?;
    let before = line.split(" flow entries").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_count_is_read_from_conntrack_output() {
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n"
            ),
            Some(3)
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted."),
            Some(0)
        );
        assert_eq!(deleted_count("conntrack: Operation not permitted"), None);
    }
}
