//! How the CLI reaches its daemon: gRPC over the daemon's unix socket,
//! found by `--host unix:///path`, `MESH_HOST`, or the default.

use std::io;
use std::path::PathBuf;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const DEFAULT_HOST: &str = "unix:///run/mesh/mesh.sock";

/// The socket path of a `unix:///path` host.
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => bail!("--host: {host:?} is not of the form unix:///path/to/mesh.sock"),
    }
}

pub async fn connect(host: &str) -> anyhow::Result<Channel> {
    let path = socket_path(host)?;
    // A plain connect first, for an error that says what is wrong.
    UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot connect to the mesh daemon at {}; is `mesh daemon` running?",
            path.display()
        )
    })?;
    let target = path.clone();
    let channel = Endpoint::from_static("http://mesh.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to the mesh daemon at {}", path.display()))?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_must_be_a_unix_url() {
        assert_eq!(
            socket_path("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        for bad in ["tcp://1.2.3.4:2375", "/run/x.sock", "unix://relative"] {
            let err = socket_path(bad).unwrap_err().to_string();
            assert!(err.starts_with("--host:"), "{err}");
        }
    }
}
