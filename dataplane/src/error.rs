//! Errors of the kernel-facing code: every variant names the operation and the input it was about.
//!
//! Messages are lower-case with no trailing period and do not repeat their `source`, so
//! `anyhow`'s `{:#}` prints each cause once: `netlink add veth eth0: File exists (os error 17)`.

use std::io;
use std::path::PathBuf;

/// Result of the dataplane crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when touching the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An interface name the kernel would refuse (empty, longer than 15 bytes, `/`, whitespace...).
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfName { name: String, reason: &'static str },

    /// A namespace name that cannot be a file name under `/run/netns`.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidNetnsName { name: String, reason: &'static str },

    /// An address that is not `a.b.c.d/len`.
    #[error("invalid ipv4 cidr {input:?}: {reason}")]
    InvalidCidr { input: String, reason: &'static str },

    /// A netlink request the kernel refused (after EEXIST/ENOENT were taken as success where
    /// that is the idempotent meaning).
    #[error("netlink {op} {ifname}")]
    Netlink {
        op: &'static str,
        ifname: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// The netlink socket could not be opened.
    #[error("open netlink socket")]
    NetlinkSocket(#[source] io::Error),

    /// A link that must exist does not.
    #[error("link {ifname} not found in {netns}")]
    LinkNotFound { ifname: String, netns: String },

    /// Creating, opening, entering or removing a network namespace failed.
    #[error("{op} network namespace {name}")]
    Netns {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },

    /// A file or directory operation on a namespace path failed.
    #[error("{op} {}", path.display())]
    Path {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The thread doing work inside a namespace panicked or could not be started.
    #[error("worker thread in network namespace {name}: {reason}")]
    NetnsThread { name: String, reason: String },

    /// A desired overlay state the planner refuses: `item` names the offending input.
    #[error("invalid overlay spec {item}: {reason}")]
    InvalidSpec { item: String, reason: String },

    /// One operation of a plan failed; `op` describes it (namespace, link, entry).
    #[error("apply {op}")]
    Apply {
        op: String,
        #[source]
        source: Box<Error>,
    },

    /// An external program could not be started.
    #[error("spawn {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },

    /// An external program (`nft`) exited with a failure.
    #[error("{program} {args} failed: {stderr}")]
    Command {
        program: &'static str,
        args: String,
        stderr: String,
    },

    /// No interface of the namespace holds the given address.
    #[error("no interface holds address {addr} in {netns}")]
    NoInterfaceWithAddress {
        addr: std::net::Ipv4Addr,
        netns: String,
    },

    /// A node-local address pool has no free address left.
    #[error("address pool {pool} exhausted")]
    PoolExhausted { pool: String },

    /// Something not ours stands where we would create or change something.
    #[error("{what} {reason}")]
    Conflict { what: String, reason: &'static str },

    /// A load-balancer backend name that is neither `ipvs` nor `nftables`.
    #[error("unknown load-balancer backend {input:?}: expected \"ipvs\" or \"nftables\"")]
    UnknownLbBackend { input: String },

    /// A request to the kernel's IPVS generic-netlink family failed (`op` names the command and
    /// the service or destination).
    #[error("ipvs {op} in {netns}")]
    Ipvs {
        op: String,
        netns: String,
        #[source]
        source: io::Error,
    },

    /// A message of the IPVS family (or its generic-netlink controller) that cannot be decoded.
    #[error("decode ipvs message {what}: {reason}")]
    IpvsDecode { what: String, reason: String },

    /// What `nft -j list table` printed for our load-balancer table cannot be understood.
    #[error("parse nftables load-balancer table in {netns}: {reason}")]
    LbObserve { netns: String, reason: String },
}

impl Error {
    /// Whether this says a named namespace does not exist: no such name, or a name left by a
    /// crash before its namespace was mounted (`EINVAL`).
    pub fn is_missing_netns(&self) -> bool {
        match self {
            Error::Netns { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::EINVAL)
            }
            _ => false,
        }
    }

    /// The errno of a refused netlink request, if this is one.
    pub fn netlink_errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => errno_of(source),
            _ => None,
        }
    }
}

/// The (positive) errno carried by a netlink error message.
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}
