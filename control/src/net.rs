//! gRPC channels between nodes: one cached, lazily connected channel per
//! peer address (not one per RPC).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::transport::{Channel, Endpoint};

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
        _role: mesh_proto::NodeRole,
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
