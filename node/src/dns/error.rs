//! Errors of the embedded DNS server: every variant names the task, namespace or address it
//! was about.
//!
//! Messages are lower-case with no trailing period and do not repeat their `source`, so
//! `anyhow`'s `{:#}` prints each cause once.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Result of the DNS module.
///
/// Dataplane errors are boxed: they are large, and this result is returned on every attach.
pub type Result<T, E = DnsError> = std::result::Result<T, E>;

/// What can go wrong when attaching a task's DNS server or reading the host's resolvers.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The task's network namespace file could not be opened.
    #[error("open network namespace {} of task {task}", path.display())]
    OpenNetns {
        task: String,
        path: PathBuf,
        #[source]
        source: Box<mesh_dataplane::Error>,
    },

    /// A socket could not be created, bound or set up inside a task's namespace.
    #[error("{op} {addr} in the network namespace of task {task}")]
    Socket {
        op: &'static str,
        task: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// `lo` of a task's namespace could not be brought up (needed to bind 127.0.0.11).
    #[error("bring up lo in the network namespace of task {task}")]
    Loopback {
        task: String,
        #[source]
        source: Box<mesh_dataplane::Error>,
    },

    /// The redirect of port 53 to the server's real ports could not be installed.
    #[error("redirect {addr} to the dns server in the network namespace of task {task}")]
    Redirect {
        task: String,
        addr: SocketAddr,
        #[source]
        source: Box<mesh_dataplane::Error>,
    },

    /// Bringing up `lo` panicked (a bug, reported rather than propagated).
    #[error("bringing up lo in the network namespace of task {task} panicked")]
    LoopbackPanicked { task: String },

    /// The host's resolver configuration could not be read.
    #[error("read {}", path.display())]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
