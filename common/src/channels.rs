//! gRPC channels between nodes: one cached, lazily connected channel per
//! peer address (not one per RPC), plain or through rustls.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_proto::NodeRole;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pki::{MANAGER_SAN, WORKER_SAN};
use crate::tls::{Credentials, TlsError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Hands out a channel to `addr` (`host:port`). Implementations cache one
/// channel per address; the channel reconnects by itself when the peer
/// comes back.
pub trait ChannelProvider: Send + Sync + 'static {
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error>;

    /// A channel to the control port of any node, dialled as a node of
    /// `role` (a worker presents a worker certificate).
    fn node_channel(
        &self,
        addr: &str,
        _role: NodeRole,
    ) -> Result<Channel, tonic::transport::Error> {
        self.channel(addr)
    }
}

/// Plain-text channels, for in-process tests of components that do not
/// care about TLS.
#[derive(Default)]
pub struct PlainChannels {
    cache: Mutex<HashMap<String, Channel>>,
}

impl ChannelProvider for PlainChannels {
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut cache = self.cache.lock().expect("channel cache lock poisoned");
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

pub type SharedChannels = Arc<dyn ChannelProvider>;

/// A lazily connected channel to a manager at `addr` (`host:port`) through
/// rustls with `config`; the server must present a manager certificate.
pub fn manager_channel(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    node_channel(addr, config, MANAGER_SAN)
}

/// A lazily connected channel to the control port of any node; the server
/// must present a certificate naming `san` (the role it is dialled as).
fn node_channel(
    addr: &str,
    config: Arc<ClientConfig>,
    san: &'static str,
) -> Result<Channel, tonic::transport::Error> {
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: Uri| {
        let config = config.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target))
                .await
                .map_err(|_elapsed| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {target} timed out"),
                    )
                })??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(san).expect("static DNS name is valid");
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(connector))
}

/// mTLS channels to nodes, one cached per address and role.
pub struct TlsChannels {
    config: Arc<ClientConfig>,
    cache: Mutex<std::collections::HashMap<(String, &'static str), Channel>>,
}

impl TlsChannels {
    pub fn new(creds: &Arc<Credentials>) -> Result<Arc<TlsChannels>, TlsError> {
        Ok(Arc::new(TlsChannels {
            config: creds.client_config()?,
            cache: Mutex::default(),
        }))
    }

    /// Forgets every cached channel. Call it after the node's certificate
    /// changed: an open connection keeps presenting the certificate it was
    /// made with, so a promoted node would still be a worker on it.
    pub fn reset(&self) {
        self.cache
            .lock()
            .expect("channel cache lock poisoned")
            .clear();
    }
}

impl ChannelProvider for TlsChannels {
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.node_channel(addr, NodeRole::Manager)
    }

    fn node_channel(&self, addr: &str, role: NodeRole) -> Result<Channel, tonic::transport::Error> {
        let san = if role == NodeRole::Manager {
            MANAGER_SAN
        } else {
            WORKER_SAN
        };
        let mut cache = self.cache.lock().expect("channel cache lock poisoned");
        let key = (addr.to_string(), san);
        if let Some(ch) = cache.get(&key) {
            return Ok(ch.clone());
        }
        let ch = node_channel(addr, self.config.clone(), san)?;
        cache.insert(key, ch.clone());
        Ok(ch)
    }
}
