//! In-process gRPC clients of a lab's daemons, for what the CLI cannot show (status codes) or
//! would distort (one process spawn per call, in a benchmark).
//!
//! - [`unix_channel`]: a daemon's unix socket (a file, so reachable from the root namespace).
//! - [`manager_channel_without_cert`]: 2377 of a manager with the CA pinned and no client
//!   certificate, as a joiner talks before it has one.
//! - [`manager_channel_as`]: 2377 presenting the certificate a node keeps in its state dir.
//!
//! 2377 listens inside a host's namespace: run those clients there
//! ([`crate::Netns::run_async`], or [`in_host`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use mesh_common::tls::{self, Credentials};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Host;

pub use mesh_proto::control_client::ControlClient;
pub use mesh_proto::local_client::LocalClient;

/// A channel to the daemon listening on the unix socket `socket`.
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    let target: PathBuf = socket.to_owned();
    Endpoint::from_static("http://mesh.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .with_context(|| format!("connect to the daemon socket {}", socket.display()))
}

/// The control API of `host`'s daemon over its unix socket.
pub async fn control(host: &Host) -> Result<ControlClient<Channel>> {
    Ok(ControlClient::new(unix_channel(&host.socket_path()).await?))
}

/// The node-local API of `host`'s daemon over its unix socket.
pub async fn local(host: &Host) -> Result<LocalClient<Channel>> {
    Ok(LocalClient::new(unix_channel(&host.socket_path()).await?))
}

/// The cluster CA a node keeps in its state dir (`certs/ca.pem`).
pub fn ca_pem(host: &Host) -> Result<String> {
    let path = host.state_dir().join("certs").join("ca.pem");
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The certificate, key and CA a node keeps in its state dir.
pub fn credentials(host: &Host) -> Result<Arc<Credentials>> {
    let certs = host.state_dir().join("certs");
    let read = |name: &str| {
        let path = certs.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    };
    Ok(Credentials::new(
        &read("ca.pem")?,
        &read("node.pem")?,
        &read("node.key")?,
    )?)
}

/// A TLS channel to the manager at `addr` (ip:port) trusting `ca_pem` and presenting no
/// client certificate. Connects lazily: call from inside a host namespace.
pub fn manager_channel_without_cert(ca_pem: &str, addr: &str) -> Result<Channel> {
    let cfg = tls::bootstrap_client_config(ca_pem)?;
    Ok(mesh_common::channels::manager_channel(addr, cfg)?)
}

/// A TLS channel to the manager at `addr` presenting `creds` (a node's certificate).
pub fn manager_channel_as(creds: &Arc<Credentials>, addr: &str) -> Result<Channel> {
    let cfg = creds.client_config()?;
    Ok(mesh_common::channels::manager_channel(addr, cfg)?)
}

/// Runs the async `f` on a fresh runtime on a thread inside `host`'s namespace.
pub fn in_host<T: Send>(host: &Host, f: impl AsyncFnOnce() -> T + Send) -> Result<T> {
    Ok(host.netns().run_async(f)?)
}

/// Runs `f` to completion on a fresh current-thread runtime here (root namespace: unix
/// sockets only).
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime")?;
    Ok(rt.block_on(f))
}
